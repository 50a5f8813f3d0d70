"""The reproduction report: ``report.json``, ``report.md`` and a self-contained ``index.html``.

The page needs no network and no JavaScript: figures are inlined as ``data:`` URIs and
the styling is a short ``<style>`` block. Every reference number stands beside ours,
with the difference. Part of the output layer: it writes files (atomically).
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from advmnist import fileio


def _number(value, unit: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if unit == "%":
        return f"{100 * value:.2f} %"
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}"


def _difference(row: dict) -> str:
    if row["difference"] is None:
        return "-"
    if row["unit"] == "%":
        return f"{100 * row['difference']:+.2f} pp"
    if isinstance(row["difference"], int):
        return f"{row['difference']:+d}"
    return f"{row['difference']:+.4g}"


def _versions(report: dict) -> str:
    """Who made the report with what: advmnist now; the libraries the model was trained with."""
    model = report.get("model") or {}
    trained = ", ".join(f"{k} {v}" for k, v in report["versions"].items() if k != "advmnist")
    return (f"Report by advmnist {report['advmnist']}. Model: test accuracy "
            f"{_number(model.get('test_accuracy'), '%')}, seed {model.get('seed', '-')}, "
            f"{model.get('epochs', '-')} epochs; trained with {trained or 'unknown versions'}.")


def markdown(report: dict) -> str:
    lines = ["# advmnist: both reference experiments, reproduced", "",
             _versions(report), "",
             *[f"**Warning:** {w}" for w in report.get("warnings", [])], "",
             "## Ours beside the reference", "",
             "| quantity | ours | reference | difference | note |", "|---|---|---|---|---|"]
    for row in report["rows"]:
        lines.append(f"| {row['quantity']} | {_number(row['ours'], row['unit'])} | "
                     f"{_number(row['reference'], row['unit'])} | {_difference(row)} | {row['note']} |")
    differences = report.get("differences") or []
    lines += ["", "## Settings that differ from the reference's", ""]
    if differences:
        lines += ["Numbers above come from these settings, not the reference's: read them with that in mind.", "",
                  "| step | setting | ours | reference |", "|---|---|---|---|"]
        lines += [f"| {d['step']} | {d['setting']} | {d['ours']} | {d['reference']} |" for d in differences]
    else:
        lines += ["None: every step the reference also ran used the reference's settings."]
    lines += ["", "## Measures", ""]
    lines += [f"- **{name}**: {text}." for name, text in (report.get("measures") or {}).items()]
    lines += ["", "## Steps", "", "| step | wall time | finished | results |", "|---|---|---|---|"]
    lines += [f"| {s['name']} | {s['seconds']:.0f} s | {s['finished']} | {s['folder']} |" for s in report["steps"]]
    lines += ["", "## Figures", ""]
    lines += [f"![{title}]({Path(path).as_posix()})" for title, path in report["figures"]]
    lines += ["", "## Settings", "", "```json", json.dumps(report["settings"], indent=2, sort_keys=True), "```",
              "", "## Hardware", "", "```json", json.dumps(report["hardware"], indent=2, sort_keys=True), "```",
              "", "## References", ""]
    lines += [f"- {text}" for text in report["sources"].values()]
    return "\n".join(lines) + "\n"


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child, td.note, th:last-child { text-align: left; }
figure { margin: 1.5em 0; }
img { max-width: 100%; border: 1px solid #eee; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: 85%; }
"""


def page(report: dict, base: Path) -> str:
    """``index.html`` with every figure inlined (paths in ``report`` are relative to ``base``)."""
    e = html.escape
    rows = "".join(f"<tr><td>{e(r['quantity'])}</td><td>{e(_number(r['ours'], r['unit']))}</td>"
                   f"<td>{e(_number(r['reference'], r['unit']))}</td><td>{e(_difference(r))}</td>"
                   f"<td class=note>{e(r['note'])}</td></tr>" for r in report["rows"])
    steps = "".join(f"<tr><td>{e(s['name'])}</td><td>{s['seconds']:.0f} s</td><td>{e(s['finished'])}</td></tr>"
                    for s in report["steps"])
    figures = ""
    for title, path in report["figures"]:
        data = base64.b64encode((base / path).read_bytes()).decode("ascii")
        figures += (f"<figure><img alt=\"{e(title)}\" src=\"data:image/png;base64,{data}\">"
                    f"<figcaption>{e(title)}</figcaption></figure>")
    differences = "".join(f"<tr><td>{e(d['step'])}</td><td>{e(d['setting'])}</td><td>{e(str(d['ours']))}</td>"
                          f"<td>{e(str(d['reference']))}</td></tr>" for d in report.get("differences") or [])
    differences = (f"<p>Numbers above come from these settings, not the reference's.</p><table><tr><th>step</th>"
                   f"<th>setting</th><th>ours</th><th>reference</th></tr>{differences}</table>" if differences
                   else "<p>None: every step the reference also ran used the reference's settings.</p>")
    measures = "".join(f"<li><strong>{e(name)}</strong>: {e(text)}.</li>"
                       for name, text in (report.get("measures") or {}).items())
    versions = _versions(report)
    sources = "".join(f"<li>{e(text)}</li>" for text in report["sources"].values())
    return (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>advmnist report</title>"
            f"<style>{STYLE}</style></head><body>"
            f"<h1>advmnist: both reference experiments, reproduced</h1><p>{e(versions)}</p>"
            + "".join(f"<p><strong>Warning:</strong> {e(w)}</p>" for w in report.get("warnings", [])) +
            f"<h2>Ours beside the reference</h2><table><tr><th>quantity</th><th>ours</th><th>reference</th>"
            f"<th>difference</th><th>note</th></tr>{rows}</table>"
            f"<h2>Settings that differ from the reference's</h2>{differences}<h2>Measures</h2><ul>{measures}</ul>"
            f"<h2>Figures</h2>{figures}"
            f"<h2>Steps</h2><table><tr><th>step</th><th>wall time</th><th>finished</th></tr>{steps}</table>"
            f"<h2>Settings</h2><pre>{e(json.dumps(report['settings'], indent=2, sort_keys=True))}</pre>"
            f"<h2>Hardware</h2><pre>{e(json.dumps(report['hardware'], indent=2, sort_keys=True))}</pre>"
            f"<h2>References</h2><ul>{sources}</ul></body></html>\n")


def write(report: dict, out: Path) -> dict[str, Path]:
    """Write the three files into ``out``; figure paths become relative to it."""
    out = Path(out)
    report = {**report, "figures": [(title, str(Path(path).resolve().relative_to(out.resolve())))
                                    for title, path in report["figures"]]}
    files = {"json": out / "report.json", "markdown": out / "report.md", "html": out / "index.html"}
    fileio.write_json(files["json"], report)
    fileio.write_bytes(files["markdown"], markdown(report).encode())
    fileio.write_bytes(files["html"], page(report, out).encode())
    return files
