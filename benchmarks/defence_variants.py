"""The defence variants at Linf 0.3, side by side: the cost of a training step and where a short run gets.

Usage::

    python benchmarks/defence_variants.py --model runs/cnn --epochs 0.3 --out /tmp/defence/variants
    python benchmarks/defence_variants.py --variants pgd-10,fgsm-rs --epochs 0.1

Each variant is ``advmnist immunize pgd --eps 0.3`` (the library call, one after
the other in this process) for ``--epochs`` from the same run's checkpoint, its network
saved under ``--out/VARIANT``:

- ``pgd-40``, ``pgd-10``: Madry et al.'s PGD training with 40 or 10 steps of 2.5 eps / steps;
- ``fgsm-rs``: one FGSM step of 1.25 eps from a random start (Wong et al. 2020);
- ``trades-10``: TRADES (beta 6), the KL maximized by 10 steps of 0.25 eps.

Printed per variant: seconds per 100 training steps (the steps alone, measurements
excluded; the machine's load average beside them, since the cores may be shared), the
ratio to ``fgsm-rs``'s when it ran, clean test accuracy, robust accuracy on the first
``--monitor`` test images under the variant's own monitor PGD, and under one common
attack for all (``advmnist.attacks.PGD``, 40 steps of 0.1 eps, on the same images).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

VARIANTS = {
    "pgd-40": {"pgd_steps": 40},
    "pgd-10": {"pgd_steps": 10},
    "fgsm-rs": {"attack": "fgsm-rs"},
    "trades-10": {"loss": "trades", "pgd_steps": 10},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/cnn", help="the run to start from (it needs its checkpoint)")
    parser.add_argument("--epochs", type=float, default=0.3)
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--monitor", type=int, default=500, help="test images the robust accuracy is measured on")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"some of {', '.join(VARIANTS)}")
    parser.add_argument("--out", type=Path, default=Path("/tmp/defence/variants"))
    args = parser.parse_args()
    unknown = sorted(set(args.variants.split(",")) - set(VARIANTS))
    if unknown:
        sys.exit(f"expected variants among {', '.join(VARIANTS)}, got {', '.join(unknown)}")

    from advmnist.attacks import PGD
    from advmnist.data.mnist import load_train_test
    from advmnist.model.frozen import FrozenModel
    from advmnist.defences.pgd_training import PGDTrainingSettings, train_against_pgd
    from advmnist.report.figures import format_table

    model = FrozenModel.load(args.model)
    train, test = load_train_test(None, print)
    images, labels = test.images[:args.monitor], test.labels[:args.monitor]
    rows, record = [], {}
    for name in args.variants.split(","):
        settings = PGDTrainingSettings(eps=args.eps, epochs=args.epochs, monitor=args.monitor, **VARIANTS[name])
        out_dir = args.out / name
        if out_dir.exists():
            sys.exit(f"{out_dir} exists: pass another --out")
        load_before = os.getloadavg()[0]
        result = train_against_pgd(model, train, test, settings, out_dir=out_dir, log=lambda m: print(f"{name}: {m}"))
        load = (load_before + os.getloadavg()[0]) / 2
        trained = FrozenModel.load(out_dir)
        attack = PGD("linf", args.eps, steps=40, rel_step=0.1)
        common = 1 - attack(trained.logits, images, labels, seed=0).success.mean()
        per_100 = 100 * result.step_seconds / result.steps
        record[name] = {**result.to_dict(), "seconds_per_100_steps": per_100, "load_average": load,
                        "common_pgd40_accuracy": float(common), "settings": settings.__dict__}
        rows.append([name, result.steps, f"{per_100:.1f}", f"{load:.1f}", f"{result.clean_before:.2%}",
                     f"{result.clean_after:.2%}", f"{result.robust_after:.2%}", f"{common:.2%}"])
        print(f"{name}: done", flush=True)
    if "fgsm-rs" in record:
        base = record["fgsm-rs"]["seconds_per_100_steps"]
        for row in rows:
            row[2] += f" ({float(row[2]) / base:.1f}x)"
    print(format_table(["variant", "steps", "s / 100 steps (x fgsm-rs)", "load", "clean before", "clean after",
                        "own monitor PGD", "common PGD-40"], rows))
    (args.out / "variants.json").write_text(json.dumps(record, indent=1, default=str))


if __name__ == "__main__":
    main()
