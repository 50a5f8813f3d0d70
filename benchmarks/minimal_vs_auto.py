"""``advmnist minimal``'s robust-accuracy curve against ``advmnist robustness --attack auto``, same images.

The minimal norms of ``minimal --target untargeted`` imply a robust accuracy at every
eps (the share of images whose smallest 8-bit change found is larger than eps). It is an
upper bound, as AutoAttack's is; this script measures how far above AutoAttack it sits
(issue: never more than 1 point, in Linf and L2)::

    python benchmarks/minimal_vs_auto.py --model runs/cnn --norm linf --count 100 \\
        --eps 0.0470588,0.05,0.0980392,0.1 --json bench-minimal-auto.json

Three whole commands, timed from process start to exit, one after the other in the same
run, on test images ``offset .. offset+count-1``: ``advmnist minimal --target untargeted``
with its default search (FMN, then the APGD bisection over eps), the same with
``--search-rounds 0`` (FMN alone; ``--no-fmn-alone`` skips it) and ``advmnist
robustness --attack auto`` at every eps. The table gives, per eps, AutoAttack's robust
accuracy, the minimal curve's (with and without the search) and the gap in points
(minimal - AutoAttack; above 0: the minimal search missed images AutoAttack broke).

Every ``minimal`` result is an 8-bit image, so in L-infinity its change is a whole number
of 1/255 steps, while AutoAttack attacks float images: at an eps between two steps (0.05
is 12.75/255, 0.1 is 25.5/255) AutoAttack may use a fraction of a step that no 8-bit image
has. The column ``8-bit step`` says whether eps is one (the comparison on equal terms; "-" in L2,
where no budget is a whole number of steps).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from autoattack import advmnist_command  # noqa: E402
from minimal_norm import log, timed  # noqa: E402 (the same whole-command timing)

from advmnist.report.figures import format_table  # noqa: E402

TARGET_POINTS = 1.0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/cnn", help="run folder or model.pb")
    parser.add_argument("--norm", choices=["linf", "l2"], default="linf")
    parser.add_argument("--count", type=int, default=100, help="test images from --offset")
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--eps", default="0.0470588,0.05,0.0980392,0.1",
                        help="comma-separated budgets for AutoAttack and the curve (default: Linf values around 0.05 "
                             "and 0.1, on and between 8-bit steps)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-fmn-alone", action="store_true", help="skip the run with --search-rounds 0")
    parser.add_argument("--json", type=Path, help="also write the table here")
    parser.add_argument("--work", type=Path, help="keep both commands' outputs and logs here (default: temporary)")
    return parser


def implied(rows: list[dict], norm: str, eps: list[float]) -> list[float]:
    """The robust accuracy the minimal norms imply at each eps: images not fooled by a change of size <= eps."""
    sizes = np.array([r[norm] if r["adversarial_8bit"] else np.inf for r in rows], np.float64)
    return [float((sizes > e + 1e-7).mean()) for e in eps]  # 1e-7: a change of exactly eps is within it


def on_8bit_step(eps: float) -> bool:
    return abs(eps * 255 - round(eps * 255)) < 1e-3


def main() -> None:
    args = make_parser().parse_args()
    eps = [float(e) for e in args.eps.split(",")]
    advmnist = advmnist_command()
    images = ["--split", "test", "--offset", str(args.offset), "--count", str(args.count), "--model", args.model,
              "--seed", str(args.seed), "--norm", args.norm, "--json"]
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        runs = {"minimal": []}  # its defaults: FMN, then the search
        if not args.no_fmn_alone:
            runs["fmn alone"] = ["--search-rounds", "0"]
        seconds, curves = {}, {}
        for name, extra in runs.items():
            out = work / name.replace(" ", "-")
            seconds[name] = timed(advmnist + ["minimal", "--target", "untargeted", *images, *extra, "--out", str(out)],
                                  work / f"{out.name}.log")
            record = json.loads((out / f"minimal_{args.norm}.json").read_text())
            curves[name] = implied(record["rows"], args.norm, eps)
        out = work / "auto"
        seconds["auto"] = timed(advmnist + ["robustness", "--attack", "auto", *images, "--eps", ",".join(map(str, eps)),
                                            "--out", str(out)], work / "auto.log")
        record = json.loads((out / f"robustness_{args.norm}_auto.json").read_text())
        auto = record["models"][0]["robust_accuracy"]
    result = {"settings": vars(args) | {"json": str(args.json), "work": str(args.work)}, "eps": eps,
              "auto": auto, "curves": curves, "seconds": seconds,
              "gap_points": [round(100 * (m - a), 1) for m, a in zip(curves["minimal"], auto)]}
    headers = ["eps", "8-bit step", "AutoAttack", *[f"minimal ({n})" if n != "minimal" else "minimal" for n in curves],
               "gap (points)"]
    rows = [[e, ("yes" if on_8bit_step(e) else "no") if args.norm == "linf" else "-", f"{100 * a:.1f} %",
             *[f"{100 * curves[n][k]:.1f} %" for n in curves], f"{result['gap_points'][k]:+.1f}"]
            for k, (e, a) in enumerate(zip(eps, auto))]
    print(f"{args.norm}, test images {args.offset}..{args.offset + args.count - 1}, model {args.model}")
    print(format_table(headers, rows))
    print("wall seconds: " + ", ".join(f"{n} {s:.1f}" for n, s in seconds.items()))
    worst = max(result["gap_points"])
    on_steps = [g for g, e in zip(result["gap_points"], eps) if on_8bit_step(e) or args.norm != "linf"]
    print(f"largest gap {worst:+.1f} points (target <= {TARGET_POINTS:+.1f}); on 8-bit steps "
          + (f"{max(on_steps):+.1f}" if on_steps else "-"))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        log(f"wrote {args.json}")


if __name__ == "__main__":
    main()
