"""``advmnist robustness`` against Foolbox 3.3.4's ``LinfPGD()`` on the same model, images and eps values.

Usage (Foolbox comes with the optional extra: ``pip install '.[peer]'``)::

    python benchmarks/robustness.py --model runs/cnn
    python benchmarks/robustness.py --model runs/cnn --count 1000 --eps 0.05 0.1 0.2 0.3 --json bench-pgd.json

Both sides are whole commands timed from process start to exit, one after the other in
the same run, on test images ``0 .. count-1``: ``advmnist robustness --norm linf`` (with
``--ours`` options) and, in its own process (``benchmarks/peer_foolbox.py``), Foolbox's
``LinfPGD()`` with its defaults (40 steps of 0.01/0.3 eps, a random start) called
once with every eps. Robust accuracy: the share of images the network still classifies
correctly after the attack (for Foolbox, its returned images clipped to [0, 1]).
``difference`` is ours minus Foolbox's in points: at most 0 means our attack is at least
as strong.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from advmnist.data.mnist import load_split
from advmnist.model.frozen import resolve_model_path
from advmnist.report.figures import format_table

sys.path.insert(0, str(Path(__file__).parent))
from minimal_norm import PEER_SCRIPT, timed  # noqa: E402 (the same timing and peer runner)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/cnn", help="run folder or model.pb")
    parser.add_argument("--count", type=int, default=500, help="test images 0 .. count-1")
    parser.add_argument("--eps", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.3])
    parser.add_argument("--ours", default="", help="extra options for advmnist robustness, e.g. '--starts 2'")
    parser.add_argument("--json", type=Path, help="also write the table here")
    args = parser.parse_args()
    model = resolve_model_path(args.model)
    if subprocess.run([sys.executable, "-c", "import foolbox"], capture_output=True).returncode:
        sys.exit("Foolbox is not installed: pip install '.[peer]' (Foolbox 3.3.4 runs in its own process)")
    data = load_split("test", None, rows=slice(0, args.count))
    eps_text = ",".join(f"{e:g}" for e in args.eps)
    with tempfile.TemporaryDirectory(prefix="advmnist-robustness-bench-") as work:
        work = Path(work)
        ours_command = ["advmnist", "robustness", "--attack", "pgd", "--norm", "linf", "--eps", eps_text, "--split", "test", "--offset",
                        "0", "--count", str(args.count), "--model", str(model), "--out", str(work / "ours"),
                        *shlex.split(args.ours)]
        ours_seconds = timed(ours_command)
        ours = json.loads((work / "ours" / "robustness_linf.json").read_text())["models"][0]["robust_accuracy"]

        inputs = work / "inputs.npz"
        np.savez(inputs, images=data.images, labels=data.labels, targets=np.full(args.count, -1))
        peer_command = [sys.executable, str(PEER_SCRIPT), "--model", str(model), "--inputs", str(inputs),
                        "--attack", "LinfPGD", "--epsilons", *[f"{e:g}" for e in args.eps],
                        "--out", str(work / "foolbox.npz")]
        peer_seconds = timed(peer_command)
        predictions = np.load(work / "foolbox.npz")["predictions"]  # (eps, N)
        theirs = (predictions == data.labels[None, :]).mean(1).tolist()

    headers = ["eps", "advmnist robustness", "Foolbox LinfPGD()", "difference (points)"]
    rows = [[f"{e:g}", f"{100 * o:.1f} %", f"{100 * t:.1f} %", f"{100 * (o - t):+.1f}"]
            for e, o, t in zip(args.eps, ours, theirs)]
    rows.append(["wall s", f"{ours_seconds:.1f}", f"{peer_seconds:.1f}",
                 f"ratio ours / Foolbox {ours_seconds / peer_seconds:.2f}x"])
    print(f"\n{args.count} test images, Linf PGD, robust accuracy:")
    print(format_table(headers, rows))
    print(f"\nours:    {shlex.join(ours_command)}\nFoolbox: {shlex.join(peer_command)}")
    if args.json:
        args.json.write_text(json.dumps({"eps": args.eps, "ours": ours, "foolbox": theirs, "ours_seconds": ours_seconds,
                                         "foolbox_seconds": peer_seconds, "commands": {
                                             "ours": shlex.join(ours_command),
                                             "foolbox": shlex.join(peer_command)}}, indent=2))


if __name__ == "__main__":
    main()
