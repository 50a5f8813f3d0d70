"""``advmnist robustness --attack auto`` against PGD and each of its members alone, in one run.

Usage::

    python benchmarks/robustness_attacks.py --model runs/cnn --count 100
    python benchmarks/robustness_attacks.py --model runs/cnn --norm l2 --eps 0.5 1 1.5 2 --json bench-auto.json

Every attack is one whole ``advmnist robustness --attack NAME`` command on the same test
images ``0 .. count-1``, eps list and seed, timed from process start to exit, one after
the other: ``pgd`` (its defaults: 40 steps of 0.1 eps, one start), every registered
member of the ensemble alone (its standard budget) and ``auto`` (AutoAttack's standard
version). The table gives the robust accuracy per eps, the wall time and the CPU time
of the command (user + system, the same whatever else the machine runs); ``auto -
best`` is the ensemble's robust accuracy minus that of the strongest single attack, in
points (at most 0 by construction of the ensemble; how far below 0 is what the ensemble
adds). The ensemble's robust accuracy after each member, its per-member seconds and its
warnings are printed from its record.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
from pathlib import Path

from advmnist.attacks.autoattack import AutoAttack
from advmnist.model.frozen import resolve_model_path
from advmnist.report.figures import format_table

sys.path.insert(0, str(Path(__file__).parent))
from minimal_norm import timed  # noqa: E402 (the same timing)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/cnn", help="run folder or model.pb")
    parser.add_argument("--count", type=int, default=100, help="test images 0 .. count-1")
    parser.add_argument("--norm", choices=["linf", "l2"], default="linf")
    parser.add_argument("--eps", type=float, nargs="+", default=[0.05, 0.1, 0.15, 0.2])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the table here")
    args = parser.parse_args()
    model = resolve_model_path(args.model)
    attacks = ["pgd", *AutoAttack(args.norm, max(args.eps)).members, "auto"]
    eps_text = ",".join(f"{e:g}" for e in args.eps)
    records, seconds, cpu = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="advmnist-autoattack-bench-") as work:
        for attack in attacks:
            out = Path(work) / attack
            command = ["advmnist", "robustness", "--attack", attack, "--norm", args.norm, "--eps", eps_text,
                       "--split", "test", "--offset", "0", "--count", str(args.count), "--seed", str(args.seed),
                       "--model", str(model), "--out", str(out)]
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            seconds[attack] = timed(command)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu[attack] = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
            stem = f"robustness_{args.norm}" + ("" if attack == "pgd" else f"_{attack}")
            records[attack] = json.loads((out / f"{stem}.json").read_text())
    curves = {attack: records[attack]["models"][0]["robust_accuracy"] for attack in attacks}
    best = [min(curves[a][k] for a in attacks if a != "auto") for k in range(len(args.eps))]
    rows = [[f"{e:g}"] + [f"{100 * curves[a][k]:.1f} %" for a in attacks]
            + [f"{100 * (curves['auto'][k] - best[k]):+.1f}"] for k, e in enumerate(args.eps)]
    rows.append(["wall s"] + [f"{seconds[a]:.1f}" for a in attacks] + [""])
    rows.append(["CPU s"] + [f"{cpu[a]:.1f}" for a in attacks] + [""])
    print(f"\n{args.count} test images, {args.norm}, robust accuracy (seed {args.seed}):")
    print(format_table(["eps", *attacks, "auto - best (points)"], rows))
    auto = records["auto"]["models"][0]
    print("\nthe ensemble, robust accuracy after each member per eps ('before': not fooled at a smaller eps):")
    print(format_table(["eps", "before", *auto["members"]],
                       [[f"{e:g}"] + [f"{100 * v:.1f} %" for v in row] for e, row in
                        zip(args.eps, auto["robust_accuracy_after"])]))
    print("seconds per member: " + ", ".join(f"{m} {s:.1f}" for m, s in zip(auto["members"], auto["member_seconds"])))
    print(f"unconfirmed verdicts: {auto['unconfirmed']}; warnings: {records['auto']['warnings'] or 'none'}")
    if args.json:
        args.json.write_text(json.dumps({"eps": args.eps, "count": args.count, "norm": args.norm,
                                         "robust_accuracy": curves, "seconds": seconds, "cpu_seconds": cpu,
                                         "auto": auto, "warnings": records["auto"]["warnings"]}, indent=2))


if __name__ == "__main__":
    main()
