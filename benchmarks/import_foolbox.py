"""``advmnist robustness`` on an imported Keras model against Foolbox's ``LinfPGD`` on the Keras model itself.

Usage (Foolbox 3.3.4 with Keras 3 in some Python: ``pip install '.[peer]'``, or a venv of its own)::

    python benchmarks/import_foolbox.py [--keras my_mnist.keras] [--count 500] [--eps 0.1] \\
        [--steps 40 100] [--peer-python /path/to/venv/bin/python]

Without ``--keras``, a Keras 3 convnet with advmnist's architecture (conv 32 3x3, conv 64
3x3, max-pool 2, dropout, dense 128, dropout, dense 10, logits; input (28, 28, 1) in [0, 1]) is
trained for ``--epochs`` on the 60,000 training images, in its own process.

Then, one after the other in the same run: ``advmnist import`` of the Keras file,
``advmnist robustness --norm linf --eps 0,EPS`` on the imported run (40 steps of 0.1 eps,
one random start), and, in the peer's process, Foolbox's ``LinfPGD`` with its defaults
(40 steps of 0.01/0.3 eps, a random start) on the Keras model, called by Foolbox directly
(``benchmarks/peer_foolbox.py --model FILE.keras``). Both attack the first ``--count``
test images, untargeted; robust accuracy is the share still classified correctly (an
image wrong without any change counts as fooled), on the float images as each attack
returns them. The clean accuracies must agree: it is the
same network. ``--steps 40 100`` runs both sides with 40, then 100 steps (step sizes
unchanged). The last lines say, for each number of steps, whether ours is at least as
strong (a lower or equal robust accuracy).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PEER_SCRIPT = Path(__file__).with_name("peer_foolbox.py")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def eager_env() -> dict:
    """Keras 3 on TensorFlow, for the training worker and the peer (never advmnist's legacy Keras)."""
    env = {key: value for key, value in os.environ.items() if key != "TF_USE_LEGACY_KERAS"}
    return {**env, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}


def timed(command: list[str], env: dict | None = None) -> tuple[float, str]:
    log("$ " + shlex.join(command))
    started = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    seconds = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"failed ({done.returncode}): {shlex.join(command)}\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def train_worker(out: Path, epochs: int, seed: int) -> None:
    """In its own process: a Keras 3 CNN trained on MNIST, saved as ``out``."""
    import keras

    from advmnist.data.mnist import load_split

    keras.utils.set_random_seed(seed)
    train, test = load_split("train"), load_split("test")
    layers = keras.layers
    model = keras.Sequential([layers.Input((28, 28, 1)), layers.Conv2D(32, 3, activation="relu"),
                              layers.Conv2D(64, 3, activation="relu"), layers.MaxPooling2D(2), layers.Dropout(0.25),
                              layers.Flatten(), layers.Dense(128, activation="relu"), layers.Dropout(0.5),
                              layers.Dense(10)])
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(train.images[..., None], train.labels, epochs=epochs, batch_size=128, verbose=0)
    accuracy = model.evaluate(test.images[..., None], test.labels, verbose=0)[1]
    log(f"Keras model: test accuracy {accuracy:.2%} after {epochs} epoch(s)")
    model.save(out)


def ours(run: Path, eps: float, steps: int, count: int, work: Path) -> dict:
    seconds, stdout = timed(["advmnist", "robustness", "--attack", "pgd", "--model", str(run), "--norm", "linf", "--eps", f"0,{eps}",
                             "--steps", str(steps), "--count", str(count), "--out", str(work / f"ours_{steps}"),
                             "--json"])
    (curve,) = json.loads(stdout)["models"]
    return {"method": f"advmnist robustness on the imported run ({steps} steps of 0.1 eps)", "steps": steps,
            "clean": curve["robust_accuracy"][0], "robust": curve["robust_accuracy"][1], "seconds": seconds}


def foolbox(keras_file: Path, eps: float, steps: int, count: int, peer_python: str, work: Path) -> dict:
    from advmnist.data.mnist import load_split

    test = load_split("test", rows=slice(0, count))
    inputs = work / "inputs.npz"
    np.savez(inputs, images=test.images, labels=test.labels, targets=np.full(len(test.labels), -1))
    result = work / f"foolbox_{steps}.npz"
    seconds, _ = timed([peer_python, str(PEER_SCRIPT), "--model", str(keras_file), "--inputs", str(inputs),
                        "--attack", "LinfPGD", "--steps", str(steps), "--epsilons", "0", str(eps),
                        "--out", str(result)], env=eager_env())
    predictions = np.load(result)["predictions"]   # (2, N): at eps 0 and at eps
    clean, robust = (predictions == test.labels).mean(1)
    return {"method": f"Foolbox 3.3.4 LinfPGD on the Keras model ({steps} steps of 0.033 eps)", "steps": steps,
            "clean": float(clean), "robust": float(robust), "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keras", type=Path, help="a Keras model taking (N, 28, 28, 1) pixels in [0, 1]")
    parser.add_argument("--epochs", type=int, default=1, help="without --keras: epochs of the Keras model")
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--steps", type=int, nargs="+", default=[40], help="PGD steps, on both sides (40: "
                        "both defaults)")
    parser.add_argument("--peer-python", default=sys.executable, help="a Python with Foolbox 3.3.4 and Keras 3")
    parser.add_argument("--worker", choices=["train"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return train_worker(args.out, args.epochs, 0)
    with tempfile.TemporaryDirectory(prefix="advmnist-import-bench-") as tmp:
        work = Path(tmp)
        keras_file = args.keras
        if keras_file is None:
            keras_file = work / "keras_mnist.keras"
            timed([sys.executable, __file__, "--worker", "train", "--epochs", str(args.epochs), "--out",
                   str(keras_file)], env=eager_env())
        run = work / "imported"
        import_seconds, _ = timed(["advmnist", "import", str(keras_file), "--run-dir", str(run)])
        rows = []
        for steps in args.steps:
            rows += [ours(run, args.eps, steps, args.count, work),
                     foolbox(keras_file, args.eps, steps, args.count, args.peer_python, work)]
    print(f"\nLinf eps {args.eps}, first {args.count} test images, untargeted (advmnist import: "
          f"{import_seconds:.1f} s):")
    for row in rows:
        print(f"  {row['method']}: clean {row['clean']:.1%}, robust {row['robust']:.1%}, {row['seconds']:.1f} s")
    for mine, peer in zip(rows[::2], rows[1::2]):
        verdict = "at least as strong" if mine["robust"] <= peer["robust"] else "WEAKER"
        print(f"{mine['steps']} steps: ours {mine['robust']:.1%} vs Foolbox {peer['robust']:.1%}: advmnist is "
              f"{verdict}")


if __name__ == "__main__":
    main()
