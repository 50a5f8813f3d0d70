"""Run one Foolbox 3 attack on a frozen advmnist model: the peer side of the benchmarks.

Foolbox needs eager TensorFlow while advmnist runs in graph mode, so the benchmarks run
this script in a subprocess (installed with ``pip install '.[peer]'``)::

    python benchmarks/peer_foolbox.py --model runs/cnn/model.pb --inputs images.npz \\
        --attack DDNAttack --steps 1000 --out foolbox_ddn.npz

``--model`` may also be a Keras 3 model file (``.keras``, ``.h5``) whose input is pixels in
[0, 1] of any MNIST layout: Foolbox then attacks the Keras model itself (Keras 3 needs
``TF_USE_LEGACY_KERAS`` unset). ``--inputs`` is an ``.npz`` with ``images`` (N, 28, 28) in
[0, 1], ``labels`` and ``targets`` (all -1: untargeted). The frozen graph becomes a Foolbox model through
``tf.compat.v1.wrap_function`` (import the GraphDef) and ``.prune(input, logits)``.
``--out`` receives the adversarial images exactly as Foolbox returns them (float32), the
network's predictions for them and for their 8-bit rounding, and the attack's own seconds.
It imports nothing from advmnist: this process is Foolbox's alone.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

#: name -> (Foolbox class, keyword arguments besides steps); the settings of the issue's measurements
ATTACKS = {
    "L2CarliniWagnerAttack": ("L2CarliniWagnerAttack", {"binary_search_steps": 9, "stepsize": 0.01}),
    "DDNAttack": ("DDNAttack", {}),
    "L2FMNAttack": ("L2FMNAttack", {}),
    "EADAttack-EN": ("EADAttack", {"binary_search_steps": 9, "decision_rule": "EN"}),
    "EADAttack-L1": ("EADAttack", {"binary_search_steps": 9, "decision_rule": "L1"}),
    "L1FMNAttack": ("L1FMNAttack", {}),
    "LinfPGD": ("LinfPGD", {}),
}


def load_model(path: Path):
    """The logits of a frozen advmnist model.pb, or of a Keras model (.keras / .h5) taking pixels in [0, 1]."""
    import tensorflow as tf

    if path.suffix in (".keras", ".h5"):
        import keras

        model = keras.models.load_model(path, compile=False)
        shape = tuple(model.inputs[0].shape[1:])
        return lambda x: model(tf.reshape(x, (-1, *shape)), training=False)
    meta = json.loads(path.with_name("model.json").read_text())
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(path.read_bytes())

    def imported():
        tf.compat.v1.import_graph_def(graph_def, name="")

    wrapped = tf.compat.v1.wrap_function(imported, [])
    graph = wrapped.graph
    return wrapped.prune(graph.as_graph_element(meta["input"]), graph.as_graph_element(meta["logits"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True,
                        help="the frozen model.pb (model.json beside it), or a Keras .keras / .h5 model")
    parser.add_argument("--inputs", type=Path, required=True, help=".npz with images, labels, targets")
    parser.add_argument("--attack", choices=sorted(ATTACKS), required=True)
    parser.add_argument("--steps", type=int, default=None, help="the attack's steps (Foolbox's default if absent)")
    parser.add_argument("--epsilons", type=float, nargs="*", default=None,
                        help="for a fixed-budget attack (LinfPGD): the budgets")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import foolbox as fb
    import tensorflow as tf

    data = np.load(args.inputs)
    images = tf.constant(data["images"].astype(np.float32))
    labels, targets = data["labels"].astype(np.int64), data["targets"].astype(np.int64)
    logits_fn = load_model(args.model)
    model = fb.TensorFlowModel(lambda x: logits_fn(x), bounds=(0.0, 1.0))
    criterion = (fb.criteria.Misclassification(tf.constant(labels)) if (targets < 0).all()
                 else fb.criteria.TargetedMisclassification(tf.constant(targets)))
    name, kwargs = ATTACKS[args.attack]
    if args.steps is not None:
        kwargs = {**kwargs, "steps": args.steps}
    attack = getattr(fb.attacks, name)(**kwargs)
    started = time.perf_counter()
    if args.epsilons:
        _, adversarial, _ = attack(model, images, criterion, epsilons=args.epsilons)
        adversarial = np.stack([a.numpy() for a in adversarial])   # (E, N, 28, 28)
    else:
        _, adversarial, _ = attack(model, images, criterion, epsilons=None)
        adversarial = adversarial.numpy()
    seconds = time.perf_counter() - started

    def predict(x):
        flat = x.reshape(-1, 28, 28).astype(np.float32)
        return np.argmax(logits_fn(tf.constant(flat)).numpy(), 1).reshape(x.shape[:-2])

    rounded = np.round(np.clip(adversarial, 0, 1) * 255) / 255
    np.savez(args.out, adversarial=adversarial.astype(np.float32), predictions=predict(adversarial),
             predictions_8bit=predict(rounded), seconds=seconds, attack=args.attack,
             settings=json.dumps({"class": name, **kwargs}))


if __name__ == "__main__":
    main()
