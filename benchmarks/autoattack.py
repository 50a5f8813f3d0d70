"""``advmnist robustness`` against the reference AutoAttack (Croce & Hein 2020), same model, images and eps.

The reference is ``pyautoattack`` (the authors' code packaged for PyTorch), run in its
own process with the Python of a separate environment that has it (see
docs/benchmarks.md; ``pip install '.[peer]'`` also brings it)::

    python benchmarks/autoattack.py --model runs/cnn --count 100 --norm linf --eps 0.1 \\
        --peer-python /work/venvs/peer/bin/python --ours-attack pgd --json bench-autoattack.json

Steps, for the test images ``offset .. offset+count-1``:

1. the frozen graph's weights are read by op type and order (``cnn_weights.py``; any other
   architecture is refused) and written with the images, labels and the graph's own
   logits for them to an ``.npz``;
2. for each eps, in increasing order, two whole commands timed from process start to
   exit, one after the other: ``advmnist robustness --attack <--ours-attack> --eps E ...``
   (``--attack`` left out when this version's command has no such option and
   ``--ours-attack`` is ``pgd``, its only attack), then ``peer_autoattack.py``, which
   checks that its PyTorch copy gives the graph's logits (max |difference| <= 1e-4, else
   it stops) and runs ``AutoAttack(version="standard", seed=--seed)`` at eps E;
3. a table per eps: robust accuracy of both (the difference in points: below 0 means
   ours is the stronger attack), wall times and their ratio ours / reference, the images
   broken by one side only, and the robust accuracy after each attack (AutoAttack's as
   it logs it). ``--json`` writes all of it, with each image's flags.

Both sides attack float images (no rounding to 8-bit pixels) of the same frozen weights.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from advmnist import fileio
from advmnist.data.mnist import load_split
from advmnist.errors import InvalidInput
from advmnist.model.frozen import FrozenModel
from advmnist.report.figures import format_table
from advmnist.experiments.robustness import parse_eps
from advmnist.tfcompat import session_config, tf1

sys.path.insert(0, str(Path(__file__).parent))
from cnn_weights import ArchitectureError, export_weights  # noqa: E402
from minimal_norm import log, timed  # noqa: E402 (the same whole-command timing)

PEER_SCRIPT = Path(__file__).with_name("peer_autoattack.py")
REFERENCE = "AutoAttack standard"


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/cnn", help="run folder or model.pb")
    parser.add_argument("--count", type=int, default=100, help="test images from --offset")
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--norm", choices=["linf", "l2"], default="linf")
    parser.add_argument("--eps", default="0.1", help="comma-separated budgets, each > 0, e.g. 0.1,0.3")
    parser.add_argument("--seed", type=int, default=0, help="both sides' seed")
    parser.add_argument("--peer-python", default=sys.executable,
                        help="a Python with torch and pyautoattack (default: this one)")
    parser.add_argument("--ours-attack", default="auto",
                        help="advmnist robustness --attack (pgd: also runs a version without --attack)")
    parser.add_argument("--batch-size", type=int, default=250, help="AutoAttack's batch size (its default)")
    parser.add_argument("--json", type=Path, help="also write the tables and per-image flags here")
    parser.add_argument("--work", type=Path, help="keep the inputs, outputs and logs of both sides here "
                                                  "(default: a temporary folder, removed at the end)")
    return parser


def load_inputs(args) -> tuple[tuple[float, ...], FrozenModel, object, dict]:
    """The budgets, the model, the test images and the model's weights; InvalidInput for any bad one."""
    if args.count < 1 or args.offset < 0 or args.batch_size < 1:
        raise InvalidInput(f"expected --count >= 1, --offset >= 0, --batch-size >= 1, got {args.count}, "
                           f"{args.offset}, {args.batch_size}")
    eps = parse_eps(args.eps, args.norm)
    if eps[0] <= 0:
        raise InvalidInput(f"expected every eps > 0 (AutoAttack needs a budget), got {args.eps!r}")
    model = FrozenModel.load(args.model)
    try:
        weights = export_weights(model.graph_def, model.meta["input"], model.meta["logits"])
    except ArchitectureError as err:
        raise InvalidInput(f"{model.path} is not advmnist's CNN, so it has no PyTorch copy: {err}") from err
    data = load_split("test", None, rows=slice(args.offset, args.offset + args.count))
    if len(data.labels) != args.count:
        raise InvalidInput(f"expected --offset + --count within the test split, got {args.offset} + {args.count} "
                           f"({len(data.labels)} images there)")
    return eps, model, data, weights


def check_peer(parser: argparse.ArgumentParser, python: str) -> None:
    check = subprocess.run([python, "-c", "import torch, pyautoattack"], capture_output=True, text=True)
    if check.returncode:
        last = (check.stderr.strip().splitlines() or ["no output"])[-1]
        parser.error(f"--peer-python {python}: expected a Python with torch and pyautoattack "
                     f"(see docs/benchmarks.md), got: {last}")


def graph_logits(model: FrozenModel, images: np.ndarray) -> np.ndarray:
    """The frozen graph's logits for ``images``, as advmnist's attacks compute them."""
    tf = tf1()
    graph = tf.Graph()
    with graph.as_default():
        image = tf.placeholder(tf.float32, (None,) + images.shape[1:], name="image")
        logits = model.logits(image)
    with tf.Session(graph=graph, config=session_config(tf)) as sess:
        return sess.run(logits, {image: images})


def advmnist_command() -> list[str]:
    """The ``advmnist`` script of this Python's environment (it honours PYTHONPATH), else the one on PATH."""
    beside = Path(sys.executable).with_name("advmnist")
    found = str(beside) if beside.exists() else shutil.which("advmnist")
    if found is None:
        sys.exit("advmnist is not installed in this environment: pip install -e .")
    return [found]


def attack_option(advmnist: list[str], attack: str) -> list[str]:
    """``["--attack", attack]``, or nothing for ``pgd`` when this version's ``robustness`` has no ``--attack``."""
    help_text = subprocess.run([*advmnist, "robustness", "--help"], capture_output=True, text=True).stdout
    if re.search(r"(^|\s)--attack(\s|$)", help_text, re.MULTILINE):
        return ["--attack", attack]
    if attack == "pgd":
        return []
    raise InvalidInput(f"--ours-attack {attack}: expected pgd, as this version's `advmnist robustness` has no "
                       "--attack option (it runs PGD only)")


def ours_per_attack(summary: dict, attack: str) -> list[list]:
    """[after, robust accuracy] for ``clean``, then after each member of an ensemble in turn (the record's
    ``members`` and ``robust_accuracy_after`` of its one eps), else ``attack`` with the curve's robust accuracy."""
    stages = [["clean", summary["clean_accuracy"]]]
    members, after = summary.get("members") or [], summary.get("robust_accuracy_after") or []
    if len(members) > 1 and after:
        stages += [[name, float(value)] for name, value in zip(members, after[-1][1:])]
    else:
        stages.append([attack, summary["robust_accuracy"][-1]])
    return stages


def timed_with_load(command: list[str], log_file: Path) -> tuple[float, list[float]]:
    """The command's wall seconds, and the 1-minute load average before and after it (other jobs slow it)."""
    before = os.getloadavg()[0]
    seconds = timed(command, log_file)
    return seconds, [round(before, 2), round(os.getloadavg()[0], 2)]


def run_ours(advmnist: list[str], attack: list[str], args, eps: float, work: Path) -> dict:
    out = work / f"ours_{eps:g}"
    command = [*advmnist, "robustness", *attack, "--norm", args.norm, "--eps", f"{eps:g}", "--count",
               str(args.count), "--offset", str(args.offset), "--split", "test", "--model", str(args.model),
               "--seed", str(args.seed), "--json", "--out", str(out)]
    seconds, load = timed_with_load(command, work / f"ours_{eps:g}.log")
    stem = f"robustness_{args.norm}" + (f"_{attack[1]}" if attack and attack[1] != "pgd" else "")
    summary = json.loads((out / f"{stem}.json").read_text())["models"][0]
    eps_fooled = np.load(out / f"{stem}.npz")["eps_fooled"][0]
    return {"command": shlex.join(command), "seconds": seconds, "load": load, "robust": (eps_fooled > eps).tolist(),
            "robust_accuracy": float(np.mean(eps_fooled > eps)),
            "per_attack": ours_per_attack(summary, attack[1] if attack else "pgd")}


def run_reference(args, eps: float, inputs: Path, work: Path) -> dict:
    out = work / f"reference_{eps:g}.json"
    command = [args.peer_python, str(PEER_SCRIPT), "--inputs", str(inputs), "--norm", args.norm, "--eps",
               f"{eps:g}", "--seed", str(args.seed), "--batch-size", str(args.batch_size), "--out", str(out)]
    seconds, load = timed_with_load(command, work / f"reference_{eps:g}.log")
    result = json.loads(out.read_text())
    robust = np.asarray(result["robust"])
    if not np.array_equal(robust, result["robust_recomputed"]):
        log(f"note: AutoAttack's flags and its returned images disagree on "
            f"{int((robust != np.asarray(result['robust_recomputed'])).sum())} images; its flags are used")
    return {**result, "command": shlex.join(command), "seconds": seconds, "load": load,
            "robust_accuracy": float(robust.mean())}


def compare(eps: float, ours: dict, reference: dict, indices: np.ndarray) -> dict:
    mine, theirs = np.asarray(ours["robust"]), np.asarray(reference["robust"])
    return {"eps": eps, "ours": ours, "reference": reference,
            "difference_points": 100 * (ours["robust_accuracy"] - reference["robust_accuracy"]),
            "time_ratio": ours["seconds"] / reference["seconds"],
            "broken_by_ours_only": indices[~mine & theirs].tolist(),
            "broken_by_reference_only": indices[mine & ~theirs].tolist()}


def print_table(entry: dict, args, ours_name: str) -> None:
    ours, ref = entry["ours"], entry["reference"]
    print(f"\n{args.norm} eps {entry['eps']:g}, {args.count} test images from {args.offset}:")
    rows = [["robust accuracy", f"{100 * ours['robust_accuracy']:.1f} %", f"{100 * ref['robust_accuracy']:.1f} %",
             f"{entry['difference_points']:+.1f} points"],
            ["wall s", f"{ours['seconds']:.1f}", f"{ref['seconds']:.1f}", f"ratio {entry['time_ratio']:.3f}x"],
            ["load average before, after", "{:.1f}, {:.1f}".format(*ours["load"]),
             "{:.1f}, {:.1f}".format(*ref["load"]), ""],
            ["broken by this side only", str(len(entry["broken_by_ours_only"])),
             str(len(entry["broken_by_reference_only"])), ""]]
    print(format_table(["", ours_name, REFERENCE, "ours - reference"], rows))
    stages = [["ours", name, f"{100 * value:.1f} %"] for name, value in ours["per_attack"]]
    stages += [["reference", name, f"{100 * value:.2f} %"] for name, value in ref["per_attack"]]
    logged = {name for name, _ in ref["per_attack"]}
    stages += [["reference", name, "not run: no image left"] for name in ref["attacks"] if name not in logged]
    print("\nrobust accuracy after each attack (each side attacks only the images still standing):")
    print(format_table(["side", "after", "robust accuracy"], stages))
    if entry["broken_by_ours_only"] or entry["broken_by_reference_only"]:
        print(f"test images broken by ours only: {entry['broken_by_ours_only']}; "
              f"by the reference only: {entry['broken_by_reference_only']}")


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def main() -> None:
    parser = make_parser()
    args = parser.parse_args()
    advmnist = advmnist_command()
    try:
        eps_list, model, data, weights = load_inputs(args)
        attack = attack_option(advmnist, args.ours_attack)
    except InvalidInput as err:
        parser.error(str(err))
    check_peer(parser, args.peer_python)
    indices = np.arange(args.offset, args.offset + args.count)
    ours_name = "advmnist robustness " + (shlex.join(attack) if attack else "(PGD, no --attack)")
    load = os.getloadavg()
    entries = []
    if args.work:
        args.work.mkdir(parents=True, exist_ok=True)
    with contextlib.nullcontext(args.work) if args.work else tempfile.TemporaryDirectory(
            prefix="advmnist-autoattack-bench-") as work:
        work = Path(work)
        inputs = work / "peer_inputs.npz"
        np.savez(inputs, images=data.images, labels=data.labels, logits=graph_logits(model, data.images), **weights)
        for eps in eps_list:
            ours = run_ours(advmnist, attack, args, eps, work)
            reference = run_reference(args, eps, inputs, work)
            entries.append(compare(eps, ours, reference, indices))
            print_table(entries[-1], args, ours_name)
    print(f"\nload average at the start {load[0]:.2f} (1 min), {os.cpu_count()} cores: {cpu_model()}")
    if args.json:
        fileio.write_json(args.json, {
            "model": str(model.path), "split": "test", "offset": args.offset, "count": args.count,
            "norm": args.norm, "seed": args.seed, "ours_attack": args.ours_attack, "ours_name": ours_name,
            "cpu": cpu_model(), "cores": os.cpu_count(), "load_average_at_start": list(load),
            "indices": indices.tolist(), "labels": data.labels.tolist(), "results": entries})


if __name__ == "__main__":
    main()
