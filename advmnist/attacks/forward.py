"""A network's predictions in a graph and session of their own, for attacks that need them outside their loop.

The ensemble (:mod:`advmnist.attacks.autoattack`) and the robustness curve ask which
images a network already gets wrong before any attack runs; the network runs on
blocks of 16 images (:meth:`advmnist.frozen.FrozenModel.logits`), so an image's
prediction does not depend on the others.
"""
from __future__ import annotations

import numpy as np

from advmnist.attacks.base import rounded_to_8bit
from advmnist.tfcompat import session_config, tf1


def predict(logits_fn, images: np.ndarray, batch: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """(predictions, predictions after rounding to 8-bit pixels), int64, for images (N, 28, 28) in [0, 1]."""
    if not len(images):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    tf = tf1()
    graph = tf.Graph()
    with graph.as_default():
        x = tf.placeholder(tf.float32, (None,) + images.shape[1:], name="images")
        outputs = [tf.argmax(logits_fn(x), 1), tf.argmax(logits_fn(rounded_to_8bit(x)), 1)]
    graph.finalize()
    with tf.Session(graph=graph, config=session_config(tf)) as sess:
        parts = [sess.run(outputs, {x: images[i:i + batch]}) for i in range(0, len(images), batch)]
    return tuple(np.concatenate([p[k] for p in parts]).astype(np.int64) for k in (0, 1))
