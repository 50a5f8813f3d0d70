"""Write ``tiny_run/``: the trained network the fast tests attack, so that they train nothing.

Four epochs of advmnist's own tensorpack training (``advmnist.model.training.train``) on the
600 training digits of ``mnist_small.npz``, seed 0, batches of 32, no augmentation
(``shift=0``: on 600 digits, 4 epochs of the default ``--shift 2`` reach about 69 % instead of
85 %, and the attack tests want a network that reads digits well). The folder keeps what
`advmnist train` writes except the checkpoints: ``model.pb``, ``model.json``, ``run.json`` and
``stats.json``. The tests' ``tiny_run`` fixture writes the checkpoint back from the frozen
graph's constants (same names, same values), for the commands that start from one
(``immunize``, ``export``). Run from the repository root:

    python tests/data/make_tiny_model.py
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from advmnist.data.mnist import Split
from advmnist.model.training import TrainSettings, train

HERE = Path(__file__).parent
#: The recipe; tests/test_model.py trains it again (``--slow``) and checks what it gives.
SETTINGS = TrainSettings(epochs=4, batch_size=32, seed=0, shift=0)
KEPT = ("model.pb", "model.json", "run.json", "stats.json")


def small_splits() -> tuple[Split, Split]:
    with np.load(HERE / "mnist_small.npz") as small:
        def split(name):
            return Split(small[f"{name}_images"].astype(np.float32) / 255.0, small[f"{name}_labels"].astype(np.int64))

        return split("train"), split("test")


def main() -> None:
    out = HERE / "tiny_run"
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "tiny"
        result = train(*small_splits(), run_dir, SETTINGS)
        out.mkdir(exist_ok=True)
        for name in KEPT:
            shutil.copy2(run_dir / name, out / name)
    print(f"wrote {out}: test accuracy {result.test_accuracy:.2%} on the 300 test digits")


if __name__ == "__main__":
    main()
