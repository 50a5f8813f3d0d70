"""A network's predictions in a graph and session of their own, for attacks that need them outside their loop.

The ensemble (:mod:`advmnist.attacks.autoattack`) and the robustness curve ask which
images a network already gets wrong before any attack runs; the network runs on
blocks of 16 images (:meth:`advmnist.model.frozen.FrozenModel.logits`), so an image's
prediction does not depend on the others.
"""
from __future__ import annotations

import numpy as np

from advmnist.attacks.pgd import GraphSession, Predictions
from advmnist.tfcompat import tf1


def predict(logits_fn, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(predictions, predictions after rounding to 8-bit pixels), int64, for images (N, 28, 28) in [0, 1]."""
    if not len(images):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    tf = tf1()
    shape = (None,) + images.shape[1:]
    with GraphSession(lambda: Predictions(logits_fn, tf.placeholder(tf.float32, shape, name="images"))) as session:
        return session.loop.predict(session.sess, images)
