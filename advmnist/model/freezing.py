"""Freeze a training checkpoint into an inference graph: constants, no dropout.

tensorpack 0.11's ``ModelExporter.export_compact`` calls
``graph_util.convert_variables_to_constants``, which TensorFlow 2 only keeps under
``tf.compat.v1.graph_util``; so the freezing is done here. This module returns the
graph; the run layer (:func:`advmnist.model.runs.write_frozen`) writes it.
"""
from __future__ import annotations

import os
import platform

from advmnist.data.mnist import IMAGE_SIZE
from advmnist.model.network import AVERAGE_SUFFIX, INPUT_NAME, LOGITS_NAME, PROB_NAME, cnn_logits
from advmnist.tfcompat import tf1


def library_versions() -> dict:
    import numpy
    import tensorpack

    import advmnist
    tf = tf1()
    return {"advmnist": advmnist.__version__, "tensorflow": tf.VERSION if hasattr(tf, "VERSION") else "",
            "tensorpack": tensorpack.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}


def inference_graph_def(checkpoint: os.PathLike | str, *, averaged: bool = True):
    """Build the CNN with dropout off, restore ``checkpoint`` and return a frozen GraphDef.

    When the checkpoint holds moving averages of the weights (``train`` with
    ``average_decay``) and ``averaged`` is true, the averages are frozen; otherwise the
    weights themselves.
    """
    tf = tf1()
    stored = {name for name, _ in tf.train.list_variables(str(checkpoint))}
    graph = tf.Graph()
    with graph.as_default():
        image = tf.placeholder(tf.float32, (None, IMAGE_SIZE, IMAGE_SIZE), name=INPUT_NAME)
        logits = tf.identity(cnn_logits(image, training=False), name=LOGITS_NAME)
        tf.nn.softmax(logits, name=PROB_NAME)
        names = {f"{v.op.name}/{AVERAGE_SUFFIX}": v for v in tf.global_variables()}
        if not (averaged and names and set(names) <= stored):
            names = {v.op.name: v for v in tf.global_variables()}
        saver = tf.train.Saver(names)
        with tf.Session(graph=graph) as sess:
            saver.restore(sess, str(checkpoint))
            frozen = tf.graph_util.convert_variables_to_constants(
                sess, graph.as_graph_def(), [LOGITS_NAME, PROB_NAME])
    return tf.graph_util.extract_sub_graph(frozen, [LOGITS_NAME, PROB_NAME])


TENSOR_NAMES = {"input": f"{INPUT_NAME}:0", "logits": f"{LOGITS_NAME}:0", "prob": f"{PROB_NAME}:0"}
