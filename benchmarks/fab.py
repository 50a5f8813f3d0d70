"""FAB-T (``advmnist.attacks.FAB``) against PGD within a budget, and against ``MinimalNorm`` as a minimal-norm search.

Usage::

    python benchmarks/fab.py --model runs/cnn
    python benchmarks/fab.py --model runs/cnn --count 200 --json bench-fab.json

One process, test images ``0 .. count-1``, every attack called in turn on the same
images and timed alone (graph building included):

- within a budget: for each (norm, eps) of ``--budgets``, ``PGD(norm, eps, steps=40)`` (the
  ``robustness`` command's default) and ``FAB(norm, eps)`` (FAB-T as in AutoAttack's
  standard version: 9 targets, 100 steps each, one start); robust accuracy is the share
  still classified correctly;
- minimal norm (L-infinity): ``FAB("linf", early_stop=False)`` (every image searched for all
  9 targets: 900 iterations) against ``MinimalNorm("linf")`` untargeted (its defaults:
  8 starts of 125 steps). Means are over the images both fooled, and exclude the images
  misclassified without any change. MinimalNorm's results are 8-bit images (its norms
  include the rounding); FAB's are floats.

As a check, the FAB minimal-norm search also gives the robust accuracy at each Linf eps
(the share whose smallest norm found is above eps): a broken image's search in the budgeted
run is a prefix of its full search, and a standing image's is the whole of it, so the two
must agree exactly.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from advmnist.attacks import PGD, MinimalNorm
from advmnist.attacks.fab import FAB
from advmnist.data.mnist import load_split
from advmnist.model.frozen import FrozenModel
from advmnist.report.figures import format_table


def timed(attack, model, data, seed: int):
    started = time.perf_counter()
    result = attack(model.logits, data.images, data.labels, seed=seed)
    return result, time.perf_counter() - started


def parse_budget(text: str) -> tuple[str, float]:
    norm, eps = text.split(":")
    return norm, float(eps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/cnn", help="run folder or model.pb")
    parser.add_argument("--count", type=int, default=200, help="test images 0 .. count-1")
    parser.add_argument("--budgets", nargs="+", type=parse_budget, default=[("linf", 0.1), ("linf", 0.3), ("l2", 1.5)],
                        help="norm:eps pairs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-minimal", action="store_true", help="skip the minimal-norm comparison")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    model = FrozenModel.load(args.model)
    data = load_split("test", None, rows=slice(0, args.count))
    report = {"count": args.count, "budgets": [], "minimal": None}
    rows, budgeted = [], {}
    for norm, eps in args.budgets:
        pgd, pgd_seconds = timed(PGD(norm, eps, steps=40), model, data, args.seed)
        fab, fab_seconds = timed(FAB(norm, eps), model, data, args.seed)
        robust = [float(1 - r.success.mean()) for r in (pgd, fab)]
        both = float(np.mean(~pgd.success & ~fab.success))
        budgeted[(norm, eps)] = fab
        report["budgets"].append({"norm": norm, "eps": eps, "pgd_robust": robust[0], "fab_robust": robust[1],
                                  "robust_against_both": both, "pgd_seconds": pgd_seconds, "fab_seconds": fab_seconds,
                                  "fab_steps_run": int(fab.info["steps_run"].sum())})
        rows.append([f"{norm} {eps:g}", f"{100 * robust[0]:.1f} %", f"{100 * robust[1]:.1f} %", f"{100 * both:.1f} %",
                     f"{pgd_seconds:.1f}", f"{fab_seconds:.1f}", f"{fab_seconds / pgd_seconds:.1f}x"])
        print(f"{norm} {eps:g}: PGD {100 * robust[0]:.1f} % in {pgd_seconds:.1f} s, FAB-T {100 * robust[1]:.1f} % "
              f"in {fab_seconds:.1f} s", flush=True)
    print(f"\n{args.count} test images, robust accuracy (PGD: 40 steps, 1 start; FAB-T: 9 targets x 100 steps):")
    print(format_table(["budget", "PGD", "FAB-T", "both", "PGD s", "FAB-T s", "FAB / PGD time"], rows))
    if not args.no_minimal:
        report["minimal"] = minimal_norms(model, data, args.seed, budgeted)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


def minimal_norms(model, data, seed: int, budgeted: dict) -> dict:
    fab, fab_seconds = timed(FAB("linf", 0.3, early_stop=False), model, data, seed)
    fmn, fmn_seconds = timed(MinimalNorm("linf"), model, data, seed)
    clean = fab.info["broken_at"] != 0  # classified correctly without any change
    fab_norm, fmn_norm = fab.info["norm_found"], fmn.norms["linf"]
    both = clean & np.isfinite(fab_norm) & fmn.success
    fab_mean, fmn_mean = float(fab_norm[both].mean()), float(fmn_norm[both].mean())
    rows = [["FAB-T, 900 iterations", f"{int((clean & np.isfinite(fab_norm)).sum())}/{int(clean.sum())}",
             f"{fab_mean:.4f}", f"{np.median(fab_norm[both]):.4f}", f"{fab_seconds:.1f}"],
            ["MinimalNorm, 8 x 125 steps", f"{int((clean & fmn.success).sum())}/{int(clean.sum())}",
             f"{fmn_mean:.4f}", f"{np.median(fmn_norm[both]):.4f}", f"{fmn_seconds:.1f}"]]
    print(f"\nLinf minimal norm over the {int(both.sum())} images both fooled:")
    print(format_table(["search", "found", "mean linf", "median", "wall s"], rows))
    smaller = float(np.mean(fab_norm[both] < fmn_norm[both]))
    print(f"FAB-T smaller on {100 * smaller:.1f} % of them; mean ratio FAB / MinimalNorm {fab_mean / fmn_mean:.3f}")
    checks = {}
    for (norm, eps), result in budgeted.items():
        if norm == "linf":
            checks[eps] = bool(np.array_equal(fab_norm > eps, ~result.success))
            print(f"check at linf {eps:g}: robust accuracy from the minimal search "
                  f"{100 * np.mean(fab_norm > eps):.1f} % (budgeted run {100 * (1 - result.success.mean()):.1f} %), "
                  f"same images: {checks[eps]}")
    return {"images_both_fooled": int(both.sum()), "fab_mean": fab_mean, "fmn_mean": fmn_mean,
            "fab_median": float(np.median(fab_norm[both])), "fmn_median": float(np.median(fmn_norm[both])),
            "fab_smaller_share": smaller, "fab_seconds": fab_seconds, "fmn_seconds": fmn_seconds,
            "budgeted_runs_agree": checks}


if __name__ == "__main__":
    main()
