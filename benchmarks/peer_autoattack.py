"""Run the reference AutoAttack (pyautoattack, PyTorch) on a copy of a frozen advmnist CNN: the peer side.

AutoAttack needs PyTorch, which advmnist never imports, so ``benchmarks/autoattack.py``
runs this script with the Python of a separate environment (``--peer-python``)::

    /work/venvs/peer/bin/python benchmarks/peer_autoattack.py --inputs peer_inputs.npz \\
        --norm linf --eps 0.1 --seed 0 --out reference.json

``--inputs`` is an ``.npz`` with the eight weight arrays of :func:`cnn_weights.export_weights`,
``images`` (N, 28, 28) in [0, 1], ``labels`` and ``logits``: the frozen graph's logits for the
images, computed by advmnist. The PyTorch copy of the network (channels-first, its pooled
features moved back to NHWC order before they are flattened, as the graph flattens them)
must reproduce those logits within ``--tolerance``; otherwise the script stops with the
numbers (exit 3) before attacking. Then ``AutoAttack(version="standard")`` attacks the
images at ``--eps``. ``--out`` receives each image's robust flag, the robust accuracy after
each attack as AutoAttack logs it, the largest perturbation, and the attack's own seconds.
It imports nothing from advmnist (only numpy and ``cnn_weights`` beside it).
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from pathlib import Path

import numpy as np

from cnn_weights import LAYERS, NCHW_TO_NHWC, channels_first

NORMS = {"linf": "Linf", "l2": "L2"}
#: AutoAttack's log lines with a robust accuracy, e.g. "initial accuracy: 99.00%" and
#: "robust accuracy after APGD-CE: 12.00% (total time 41.2 s)"
ACCURACY_LINE = re.compile(r"^(?:initial accuracy|robust accuracy after (?P<attack>\S+)): (?P<percent>[\d.]+)%")


def torch_network(arrays):
    """The CNN in PyTorch with the exported weights; takes (N, 1, 28, 28), returns logits (N, 10)."""
    import torch
    import torch.nn.functional as F

    class FrozenCNN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            weights = channels_first({f"{name}_{part}": arrays[f"{name}_{part}"]
                                      for name, *_ in LAYERS for part in "wb"})
            for key, value in weights.items():
                self.register_buffer(key, torch.from_numpy(np.asarray(value, np.float32)))

        def forward(self, x):
            x = F.relu(F.conv2d(x, self.conv0_w, self.conv0_b))
            x = F.relu(F.conv2d(x, self.conv1_w, self.conv1_b))
            x = F.max_pool2d(x, 2)
            x = x.permute(*NCHW_TO_NHWC).reshape(x.shape[0], -1)  # the graph's flatten order
            x = F.relu(x @ self.fc0_w + self.fc0_b)
            return x @ self.fc1_w + self.fc1_b

    return FrozenCNN().eval()


class AccuracyLog(logging.Handler):
    """Keeps the robust accuracies AutoAttack logs, in order, and echoes every line to stderr."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.accuracy: list[list] = []   # [after, robust accuracy], in the order logged

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        print(f"[autoattack] {message}", file=sys.stderr, flush=True)
        found = ACCURACY_LINE.match(message)
        if found:
            self.accuracy.append([(found["attack"] or "clean").lower(), float(found["percent"]) / 100])


def check_copy(model, images, logits, tolerance: float) -> float:
    """The largest difference between the copy's logits and the graph's; exits 3 if above ``tolerance``."""
    import torch

    with torch.no_grad():
        mine = model(torch.from_numpy(images)).numpy()
    difference = float(np.abs(mine.astype(np.float64) - logits).max())
    if not difference <= tolerance:
        worst = np.unravel_index(np.argmax(np.abs(mine - logits)), logits.shape)
        print(f"the PyTorch copy does not reproduce the frozen graph: max |logit difference| "
              f"{difference:.3g} > {tolerance:g} (image {worst[0]}, class {worst[1]}: "
              f"{mine[worst]:.6g} here, {logits[worst]:.6g} in the graph); not attacking",
              file=sys.stderr)
        sys.exit(3)
    return difference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=Path, required=True, help=".npz with the weights, images, labels, logits")
    parser.add_argument("--norm", choices=sorted(NORMS), required=True)
    parser.add_argument("--eps", type=float, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=250, help="AutoAttack's batch (its default: 250)")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest |logit difference| accepted")
    parser.add_argument("--out", type=Path, required=True, help="JSON results")
    args = parser.parse_args()

    import pyautoattack
    import torch
    from pyautoattack import AutoAttack

    arrays = np.load(args.inputs)
    images = arrays["images"].astype(np.float32)[:, None]
    labels = arrays["labels"].astype(np.int64)
    model = torch_network(arrays)
    difference = check_copy(model, images, arrays["logits"].astype(np.float64), args.tolerance)
    print(f"PyTorch copy: max |logit difference| to the frozen graph {difference:.3g}", file=sys.stderr)

    log = AccuracyLog()
    logger = logging.getLogger("auto-attack")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(log)
    attack = AutoAttack(model, norm=NORMS[args.norm], eps=args.eps, version="standard", device="cpu",
                        seed=args.seed)
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    started = time.perf_counter()
    x_adv, y_adv = attack.run_standard_evaluation(x, y, batch_size=args.batch_size)
    seconds = time.perf_counter() - started
    with torch.no_grad():
        robust_now = (model(x_adv).argmax(1) == y).numpy()
    delta = (x_adv - x).reshape(len(x), -1)
    size = delta.abs().max(1)[0] if args.norm == "linf" else delta.norm(dim=1)
    result = {"robust": (y_adv == y).numpy().tolist(), "robust_recomputed": robust_now.tolist(),
              "per_attack": log.accuracy, "attacks": list(attack.attacks_to_run),
              "max_perturbation": float(size.max()), "logit_difference": difference, "attack_seconds": seconds,
              "versions": {"pyautoattack": pyautoattack.__version__, "torch": torch.__version__},
              "threads": torch.get_num_threads(), "seed": args.seed, "eps": args.eps, "norm": args.norm}
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
