"""The ``minimal`` command's experiment: settings, the per-image table and the robust-accuracy curve.

The attack itself is :class:`advmnist.attacks.MinimalNorm`; this module turns its
:class:`~advmnist.attacks.AttackResult` into a summary, a per-image table and the curve
that the minimal norms give for free: for every budget eps, the share of images whose
smallest successful perturbation is larger than eps (an image the search never fooled
counts as larger than any eps). It prints nothing; its files are written
through :mod:`advmnist.experiments.results` (``merge_shards``: the merge of its shards).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from advmnist.experiments.targeted import AttackSettings
from advmnist.attacks import AttackResult, MinimalNorm
from advmnist.attacks.norms import L1, L2, Linf
from advmnist.attacks.registry import get_entry
from advmnist.fileio import display_path
from advmnist.report import figures
from advmnist import fileio
from advmnist.experiments import results

#: the registry's minimal-norm attack, and the norms it supports
ATTACK = get_entry("minimal")
NORM_CHOICES = ATTACK.norms
UNTARGETED_RULE = "untargeted"


@dataclasses.dataclass(frozen=True)
class MinimalSettings:
    """The ``minimal`` command's defaults: the reference's 16 training images and 9 - d, 8 starts of 125 steps;
    untargeted in linf or l2, 5 rounds of the APGD search over eps after them."""

    norm: str = L2.name
    count: int = AttackSettings.count
    offset: int = AttackSettings.offset
    split: str = AttackSettings.split
    target: str = AttackSettings.target
    steps: int = 125
    starts: int = 8
    search_rounds: int = 5
    seed: int = AttackSettings.seed

    def attack(self) -> MinimalNorm:
        return ATTACK.make(self.norm, steps=self.steps, starts=self.starts, search_rounds=self.search_rounds)

    @property
    def file_stem(self) -> str:
        """``minimal_<norm>``: its figures start with it too."""
        return f"minimal_{self.norm}"


@dataclasses.dataclass
class MinimalReport:
    norm: str
    summary: dict
    rows: list[dict]
    curve: dict
    seconds: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def robust_curve(norms: np.ndarray, fooled: np.ndarray, *, points: int = 101) -> dict:
    """``eps`` from 0 to a little past the largest minimal norm, and the share of images not fooled within each.

    An image is fooled within eps when its minimal perturbation (``norms``, where
    ``fooled``) is at most eps.
    """
    sizes = np.where(fooled, norms, np.inf).astype(np.float64)
    finite = sizes[np.isfinite(sizes)]
    top = 1.1 * float(finite.max()) if len(finite) and finite.max() > 0 else 1.0
    eps = np.linspace(0.0, top, points)
    robust = (sizes[None, :] > eps[:, None]).mean(1) if len(sizes) else np.zeros(points)
    return {"eps": [round(float(e), 6) for e in eps], "robust_accuracy": [float(r) for r in robust]}


def summarize(result: AttackResult, norm: str, *, indices: np.ndarray, seconds: float) -> MinimalReport:
    """Success (the results are 8-bit images: both counts are the same check), norms over the fooled images."""
    count = len(result)
    fooled = result.success_8bit
    norms = result.norms

    def over_fooled(values: np.ndarray, how) -> float | None:
        return float(how(values[fooled])) if fooled.any() else None

    summary = {
        "count": count,
        "success": int(result.success.sum()),
        "success_8bit": int(fooled.sum()),
        "targeted": result.targeted,
        **{f"mean_{name}": over_fooled(norms[name], np.mean) for name in (L1.name, L2.name, Linf.name)},
        f"median_{norm}": over_fooled(norms[norm], np.median),
    }
    rows = [{"index": int(indices[i]), "label": int(result.labels[i]), "target": int(result.targets[i]),
             "prediction": int(result.predictions_8bit[i]),
             **{name: float(norms[name][i]) for name in (L1.name, L2.name, Linf.name)},
             "adversarial_8bit": bool(fooled[i])} for i in range(count)]
    return MinimalReport(norm=norm, summary=summary, rows=rows, curve=robust_curve(norms[norm], fooled),
                         seconds=round(seconds, 2))


#: The command, and the start of its result files' names (for ``merge``: :mod:`advmnist.experiments.shards`).
COMMAND, SHARD_PREFIX = "minimal", "minimal_"


def merge_shards(out: Path, stem: str, parts: list):
    """The shards of one search, merged into the files a whole run writes; its record and merged result."""
    from advmnist.experiments.shards import merged_result, total_seconds

    result, indices = merged_result(parts)
    settings = parts[0].record["settings"]
    report = summarize(result, settings["norm"], indices=indices, seconds=total_seconds(parts))
    return write_minimal(out, stem, result, report, indices, settings), result


# ---------------------------------------------------------------------------- its files and figures

def write_minimal(out: Path, stem: str, result, summary, indices: np.ndarray, settings: dict, *,
                  shard=None) -> dict:
    """``minimal``: the grids and the curve, the arrays, the metrics; returns the record."""
    files = minimal_figures(result, summary, out)
    files["arrays"] = results.write_arrays(out, stem, result, indices)
    record = {**summary.to_dict(), **results.record_files(files), "settings": settings, **results.shard_entry(shard)}
    fileio.write_json(out / f"{stem}.json", record)
    return record


def matching_minimal(out: Path, norm: str, indices: np.ndarray, models: list[str]) -> dict:
    """``minimal_<norm>.json`` in ``out`` if it is an untargeted run on these images of one of ``models``:
    {model: its curve}."""
    path = out / f"minimal_{norm}.json"
    try:
        record = fileio.read_json(path)  # {} if absent or unreadable
        rows, model = record["rows"], record["settings"]["model"]
        curve = record["curve"]
    except (KeyError, TypeError):  # not a minimal record: nothing to draw
        return {}
    same_images = [r["index"] for r in rows] == indices.tolist() and all(r["target"] < 0 for r in rows)
    if not (same_images and model in models):
        return {}
    norms = [r[norm] if r["adversarial_8bit"] else float("inf") for r in rows]
    return {model: {**curve, "file": display_path(path), "norms": norms}}


def minimal_figures(result, report, out_dir) -> dict[str, str]:
    """``minimal``: grids of the originals, the 8-bit adversarial images and the changes; the robust curve."""
    from pathlib import Path

    out_dir, norm = Path(out_dir), report.norm
    stem = out_dir / f"minimal_{norm}"
    shown = slice(0, figures.MAX_TILES)
    first = f" (first {figures.MAX_TILES} shown)" if len(result) > figures.MAX_TILES else ""
    fooled = result.success_8bit
    sizes = result.norms[norm]
    aim = ["any" if t < 0 else str(t) for t in result.targets[shown]]
    files = {"originals": f"{stem}_originals.png", "adversarial": f"{stem}.png",
             "perturbation": f"{stem}_perturbation.png", "curve": f"{stem}_curve.png"}
    figures.digit_grid(result.originals[shown], [f"{lab} -> {a}" for lab, a in zip(result.labels[shown], aim)],
                       files["originals"], suptitle=f"the original images and their targets{first}")
    figures.digit_grid(result.adversarial[shown],
                       [f"pred {p}, {norm} {s:.2f}" for p, s in zip(result.predictions_8bit[shown], sizes[shown])],
                       files["adversarial"], title_colors=["tab:green" if ok else "tab:red" for ok in fooled[shown]],
                       suptitle=f"smallest {norm} change found: {int(fooled.sum())}/{len(result)} fooled as 8-bit "
                        f"images (green){first}")
    change = result.adversarial[shown] - result.originals[shown]
    figures.noise_grid(change, [f"{norm} {s:.2f}" for s in sizes[shown]], files["perturbation"],
                       limit=max(float(np.abs(change).max()), 1 / 255), label="adversarial - original",
                       suptitle=f"the {norm} perturbations (red adds ink, blue removes it){first}")
    minimal_curve_figure(report, files["curve"], targeted=result.targeted)
    return files


def minimal_curve_figure(report, path, *, targeted: bool) -> None:
    """The share of images that no perturbation of norm <= eps fooled, against eps."""
    fig, ax = figures.subplots(figsize=(6.0, 4.0))
    curve, norm = report.curve, report.norm
    ax.plot(curve["eps"], [100 * r for r in curve["robust_accuracy"]], drawstyle="steps-post")
    ax.set_xlabel(f"eps ({norm} norm of the change)")
    ax.set_ylabel("not fooled into the target (%)" if targeted else "robust accuracy (%)")
    ax.set_ylim(-3, 103)
    ax.set_xlim(0, curve["eps"][-1])
    ax.grid(alpha=0.3)
    s = report.summary
    median = s[f"median_{norm}"]
    ax.set_title(f"{s['count']} images, {'targeted' if targeted else 'untargeted'}; median minimal {norm} "
                 + (f"{median:.3g}" if median is not None else "-"), fontsize=10)
    fig.tight_layout()
    figures.save_figure(fig, path)
