"""APGD-CE and APGD-T against PGD: robust accuracy and seconds on the same model, images and budgets, one process.

Usage::

    python benchmarks/apgd.py --model runs/cnn
    python benchmarks/apgd.py --model runs/cnn --count 200 --budgets linf:0.1 linf:0.3 l2:1.5 --json bench-apgd.json

Every attack runs on test images ``0 .. count-1`` with the same seed: PGD
(``advmnist.attacks.PGD(norm, eps, steps=40, restarts=1)``, the ``robustness`` command's
attack), APGD-CE with as many iterations (40) and with the paper's 100, and APGD-T
(100 iterations for each of its 9 target classes, on the images still standing). Each
attack's seconds include building its graph. Robust accuracy: the share of images still
classified correctly; "APGD-CE 40 - PGD 40" in points (below 0: APGD-CE is stronger at
equal iterations, as Croce & Hein (2020) report). "any" is the share that no attack of
the row fooled.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from advmnist.attacks import PGD
from advmnist.attacks.apgd import APGD
from advmnist.data.mnist import load_split
from advmnist.model.frozen import FrozenModel
from advmnist.report.figures import format_table

ATTACKS = {
    "PGD 40": lambda norm, eps: PGD(norm, eps, steps=40, restarts=1),
    "APGD-CE 40": lambda norm, eps: APGD(norm, eps, steps=40),
    "APGD-CE 100": lambda norm, eps: APGD(norm, eps, steps=100),
    "APGD-T 100 x 9": lambda norm, eps: APGD(norm, eps, loss="dlr-targeted", steps=100, n_target_classes=9),
}


def parse_budget(text: str) -> tuple[str, float]:
    norm, _, eps = text.partition(":")
    if norm not in ("linf", "l2") or not eps:
        raise argparse.ArgumentTypeError(f"expected NORM:EPS with NORM linf or l2, got {text!r}")
    return norm, float(eps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/cnn", help="run folder or model.pb")
    parser.add_argument("--count", type=int, default=200, help="test images 0 .. count-1")
    parser.add_argument("--budgets", type=parse_budget, nargs="+",
                        default=[("linf", 0.1), ("linf", 0.3), ("l2", 1.5)], help="NORM:EPS, e.g. linf:0.3")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the table here")
    args = parser.parse_args()
    model = FrozenModel.load(args.model)
    data = load_split("test", None, rows=slice(0, args.count))
    clean = float((model.predict_proba(data.images).argmax(1) == data.labels).mean())
    table = []
    for norm, eps in args.budgets:
        row = {"norm": norm, "eps": eps}
        fooled_by_any = np.zeros(args.count, bool)
        for name, make in ATTACKS.items():
            started = time.perf_counter()
            result = make(norm, eps)(model.logits, data.images, data.labels, seed=args.seed)
            row[name] = {"robust_accuracy": float(1 - result.success.mean()),
                         "seconds": time.perf_counter() - started}
            fooled_by_any |= result.success
        row["any"] = float(1 - fooled_by_any.mean())
        table.append(row)
    headers = ["budget"] + [f"{name}: robust, s" for name in ATTACKS] + ["any", "APGD-CE 40 - PGD 40"]
    rows = [[f"{r['norm']} {r['eps']:g}"]
            + [f"{100 * r[name]['robust_accuracy']:.1f} %, {r[name]['seconds']:.1f}" for name in ATTACKS]
            + [f"{100 * r['any']:.1f} %",
               f"{100 * (r['APGD-CE 40']['robust_accuracy'] - r['PGD 40']['robust_accuracy']):+.1f}"]
            for r in table]
    print(f"\n{args.count} test images, {args.model} (clean accuracy {100 * clean:.1f} %), seed {args.seed}:")
    print(format_table(headers, rows))
    if args.json:
        args.json.write_text(json.dumps({"model": str(args.model), "count": args.count, "seed": args.seed,
                                         "clean_accuracy": clean, "rows": table}, indent=2))


if __name__ == "__main__":
    main()
