"""Build and briefly train the small MNIST classifiers that tests/test_import.py imports.

Runs in its own process, in eager TensorFlow with Keras 3 and tf-keras (never the
legacy Keras that advmnist's process uses)::

    python tests/make_import_models.py --digits digits.npz --out DIR [--only NAME ...]

``digits.npz`` holds ``train_images``/``train_labels`` (training, a few epochs) and
``test_images`` (N, 28, 28) in [0, 1]. For every model it writes the model file (the
name below) and ``NAME.predictions.npy``: the model's own outputs on the test images,
given to it in its own convention. ``models.json`` lists what each one expects.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

os.environ.pop("TF_USE_LEGACY_KERAS", None)
os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

MEAN, STD = 0.1307, 0.3081
#: name -> (file, reader, input layout, pixel scale, what the last layer gives)
MODELS = {
    "keras3": ("keras3.keras", "keras", (28, 28, 1), "0-1", "logits"),
    "keras3-softmax": ("keras3-softmax.keras", "keras", (28, 28, 1), "0-1", "softmax"),
    "keras3-hw-255": ("keras3-hw-255.keras", "keras", (28, 28), "0-255", "logits"),
    "tf-keras-h5": ("tf-keras.h5", "tf_keras", (784,), "0-255", "softmax"),
    "savedmodel-chw": ("savedmodel-chw", "export", (1, 28, 28), "mean-std", "logits"),
    "savedmodel-probabilities": ("savedmodel-probabilities", "module", (28, 28, 1), "0-1", "probabilities"),
    "wrong-shape": ("wrong-shape.keras", "keras", (32, 32, 3), "0-1", "logits"),
    "eleven-outputs": ("eleven-outputs.keras", "keras", (28, 28, 1), "0-1", "logits"),
}


def model_input(images: np.ndarray, layout: tuple, scale: str) -> np.ndarray:
    x = images * 255.0 if scale == "0-255" else (images - MEAN) / STD if scale == "mean-std" else images
    return x.astype(np.float32).reshape(-1, *layout)


def build(layers, layout: tuple, last: str, classes: int = 10):
    """A small convnet (or dense net for flat inputs) from a Keras layers module."""
    body = [layers.Input(layout)]
    if layout == (784,):
        body += [layers.Dense(64, activation="relu")]
    else:
        if layout == (28, 28):
            body.append(layers.Reshape((28, 28, 1)))
        elif layout == (1, 28, 28):
            body.append(layers.Permute((2, 3, 1)))  # TensorFlow's CPU convolutions are channels-last
        body += [layers.Conv2D(8, 3, activation="relu"), layers.BatchNormalization(), layers.MaxPooling2D(2),
                 layers.Flatten(), layers.Dropout(0.2)]
    body.append(layers.Dense(classes, activation="softmax" if last == "softmax" else None))
    return body


def train(module, layout: tuple, scale: str, last: str, digits, classes: int = 10):
    model = module.Sequential(build(module.layers, layout, last, classes))
    loss = module.losses.SparseCategoricalCrossentropy(from_logits=last != "softmax")
    model.compile(optimizer=module.optimizers.Adam(1e-3), loss=loss)
    if layout[-1] == 3:  # only its shape matters: it must be refused
        return model
    x = model_input(digits["train_images"], layout, scale)  # trained in its own convention
    model.fit(x, digits["train_labels"] % classes, epochs=2, batch_size=32, verbose=0)
    return model


def probabilities_module(tf, keras_model):
    """A SavedModel whose output is probabilities computed without a softmax op (exp / sum)."""
    class Probabilities(tf.Module):
        def __init__(self):
            super().__init__()
            self.model = keras_model

        @tf.function(input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.float32, name="pixels")])
        def __call__(self, pixels):
            logits = self.model(pixels, training=False)
            scores = tf.exp(logits - tf.reduce_max(logits, axis=1, keepdims=True))
            return {"probs": scores / tf.reduce_sum(scores, axis=1, keepdims=True)}

    return Probabilities()


def make(name: str, out: Path, digits) -> None:
    import keras
    import tensorflow as tf

    file, reader, layout, scale, last = MODELS[name]
    keras.utils.set_random_seed(0)
    classes = 11 if name == "eleven-outputs" else 10
    if reader == "tf_keras":
        import tf_keras

        model = train(tf_keras, layout, scale, last, digits, classes)
        model.save(out / file)
    else:
        model = train(keras, layout, scale, last, digits, classes)
        if reader == "keras":
            model.save(out / file)
        elif reader == "export":
            model.export(str(out / file), verbose=False)
        else:
            module = probabilities_module(tf, model)
            tf.saved_model.save(module, str(out / file), signatures={"serving_default": module.__call__})
    if layout[-1] != 3:
        def predict(x):
            return np.asarray(module(x)["probs"] if reader == "module" else model(x, training=False))

        x = model_input(digits["test_images"], layout, scale)
        outputs = np.concatenate([predict(x[i:i + 1000]) for i in range(0, len(x), 1000)])
        np.save(out / f"{name}.predictions.npy", outputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--digits", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", nargs="*", choices=sorted(MODELS), default=sorted(MODELS))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with np.load(args.digits) as data:
        digits = {key: data[key] for key in data.files}
    for name in args.only:
        make(name, args.out, digits)
    listing = {name: {"file": MODELS[name][0], "layout": MODELS[name][2], "input_range": MODELS[name][3],
                      "last": MODELS[name][4], "mean": MEAN, "std": STD} for name in args.only}
    (args.out / "models.json").write_text(json.dumps(listing, indent=1))


if __name__ == "__main__":
    main()
