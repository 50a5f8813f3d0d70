"""``advmnist minimal`` against Foolbox 3.3.4's minimal-norm attacks, on the same model, images and targets.

Usage (Foolbox comes with the optional extra: ``pip install '.[peer]'``)::

    python benchmarks/minimal_norm.py --model runs/cnn
    python benchmarks/minimal_norm.py --model runs/cnn --sets reference --norms l1 --json bench-minimal.json

Image sets: ``reference`` is the reference experiment's 16 training images (16..31) with
targets ``9 - d``; ``test64`` is test images 0..63 with targets ``d + 1``.

Every side is a whole command timed from process start to exit, one after the other on
the same machine in the same run: ``advmnist minimal`` (with ``--ours`` options, default
its own defaults) and, in its own process, each Foolbox attack of the norm through
``benchmarks/peer_foolbox.py`` with the settings below (``steps=1000``):

- L2: ``L2CarliniWagnerAttack(binary_search_steps=9, stepsize=0.01)``, ``DDNAttack()``, ``L2FMNAttack()``;
- L1: ``EADAttack(binary_search_steps=9)`` with ``decision_rule`` ``"EN"`` and ``"L1"``, ``L1FMNAttack()``.

Columns: success of the returned images as they are (Foolbox returns floats), success
after rounding them to 8-bit pixels, mean and median norm of the effective change over
the images that succeed as returned (ours are 8-bit images already, so both successes
are the same), wall time. ``norm ratio`` is a mean against the best Foolbox mean (the
lowest among the attacks that fooled every image) and ``time ratio`` a wall time
against the fastest Foolbox attack.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from advmnist.attacks import choose_targets, get_norm
from advmnist.data.mnist import load_split
from advmnist.model.frozen import resolve_model_path
from advmnist.report.figures import format_table

SETS = {"reference": ("train", 16, 16, "9-d"), "test64": ("test", 0, 64, "d+1")}
PEERS = {"l2": ["L2CarliniWagnerAttack", "DDNAttack", "L2FMNAttack"],
         "l1": ["EADAttack-EN", "EADAttack-L1", "L1FMNAttack"]}
PEER_SCRIPT = Path(__file__).with_name("peer_foolbox.py")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def timed(command: list[str], log_file: Path | None = None) -> float:
    """The command's wall seconds; exits with its stderr's end if it fails.

    ``log_file``: its stdout and stderr go there as they come (a long run can be followed,
    and it does not depend on this process to read a pipe), instead of into memory.
    """
    log("$ " + shlex.join(command) + (f"  (log: {log_file})" if log_file else ""))
    started = time.perf_counter()
    if log_file is None:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        stderr = done.stderr
    else:
        with open(log_file, "w") as sink:
            done = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT)
        stderr = Path(log_file).read_text(errors="replace")
    seconds = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"failed ({done.returncode}): {shlex.join(command)}\n{stderr[-3000:]}")
    return seconds


def row(method: str, norm: str, adversarial, originals, reached, reached_8bit, seconds: float) -> dict:
    sizes = get_norm(norm).measure(np.clip(adversarial, 0, 1) - originals)
    ok = reached
    return {"method": method, "success": int(ok.sum()), "success_8bit": int(reached_8bit.sum()), "count": len(ok),
            "mean": float(sizes[ok].mean()) if ok.any() else None,
            "median": float(np.median(sizes[ok])) if ok.any() else None, "seconds": seconds}


def run_set(name: str, norm: str, model: Path, ours: list[str], steps: int, work: Path) -> dict:
    split, offset, count, rule = SETS[name]
    data = load_split(split, None, rows=slice(offset, offset + count))
    targets = choose_targets(data.labels, rule)
    inputs = work / f"{name}.npz"
    np.savez(inputs, images=data.images, labels=data.labels, targets=targets)
    rows, commands = [], {}

    out = work / f"ours_{name}_{norm}"
    command = ["advmnist", "minimal", "--norm", norm, "--split", split, "--offset", str(offset), "--count",
               str(count), "--target", rule, "--model", str(model), "--out", str(out), *ours]
    seconds = timed(command)
    commands["advmnist minimal"] = shlex.join(command)
    arrays = np.load(out / f"minimal_{norm}.npz")
    reached = arrays["predictions"] == targets
    rows.append(row("advmnist minimal", norm, arrays["adversarial"], data.images, reached, reached, seconds))

    for attack in PEERS[norm]:
        result = work / f"foolbox_{attack}_{name}.npz"
        command = [sys.executable, str(PEER_SCRIPT), "--model", str(model), "--inputs", str(inputs), "--attack",
                   attack, "--steps", str(steps), "--out", str(result)]
        seconds = timed(command)
        commands[f"Foolbox {attack}"] = shlex.join(command)
        arrays = np.load(result)
        rows.append(row(f"Foolbox {attack}", norm, arrays["adversarial"], data.images,
                        arrays["predictions"] == targets, arrays["predictions_8bit"] == targets, seconds))

    peers = rows[1:]
    complete = [r for r in peers if r["success"] == r["count"]]
    best = min(complete or peers, key=lambda r: r["mean"] if r["mean"] is not None else np.inf)
    fastest = min(peers, key=lambda r: r["seconds"])
    for r in rows:
        r["norm_ratio"] = r["mean"] / best["mean"] if r["mean"] is not None else None
        r["time_ratio"] = r["seconds"] / fastest["seconds"]
    return {"set": name, "norm": norm, "split": split, "offset": offset, "count": count, "target": rule,
            "rows": rows, "best_foolbox": best["method"], "fastest_foolbox": fastest["method"],
            "commands": commands}


def print_table(result: dict) -> None:
    print(f"\n{result['set']} ({result['count']} {result['split']} images from {result['offset']}, "
          f"target {result['target']}), {result['norm']}:")
    headers = ["method", "success", "8-bit ok", f"mean {result['norm']}", "median", "wall s",
               f"norm / {result['best_foolbox'].split()[-1]}", f"time / {result['fastest_foolbox'].split()[-1]}"]
    rows = [[r["method"], f"{r['success']}/{r['count']}", f"{r['success_8bit']}/{r['count']}",
             "-" if r["mean"] is None else f"{r['mean']:.4g}", "-" if r["median"] is None else f"{r['median']:.4g}",
             f"{r['seconds']:.1f}", "-" if r["norm_ratio"] is None else f"{r['norm_ratio']:.3f}x",
             f"{r['time_ratio']:.2f}x"] for r in result["rows"]]
    print(format_table(headers, rows), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/cnn", help="run folder or model.pb")
    parser.add_argument("--sets", nargs="+", choices=sorted(SETS), default=["reference", "test64"])
    parser.add_argument("--norms", nargs="+", choices=sorted(PEERS), default=["l2", "l1"])
    parser.add_argument("--ours", default="", help="extra options for advmnist minimal, e.g. '--starts 4'")
    parser.add_argument("--steps", type=int, default=1000, help="Foolbox's steps")
    parser.add_argument("--json", type=Path, help="also write every row here")
    args = parser.parse_args()
    model = resolve_model_path(args.model)
    check = subprocess.run([sys.executable, "-c", "import foolbox"], capture_output=True)
    if check.returncode:
        sys.exit("Foolbox is not installed: pip install '.[peer]' (Foolbox 3.3.4 runs in its own process)")
    results = []
    with tempfile.TemporaryDirectory(prefix="advmnist-minimal-bench-") as work:
        for name in args.sets:
            for norm in args.norms:
                results.append(run_set(name, norm, model, shlex.split(args.ours), args.steps, Path(work)))
                print_table(results[-1])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
