"""The ``export`` half of :mod:`advmnist.interop.convert`: a frozen model.pb as a SavedModel or an ONNX file.

Runs in the converter's process (eager TensorFlow). What it writes is loaded again and
its probabilities compared with the frozen graph's, run in a TensorFlow 1 session.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from advmnist.interop.convert import SIZE, ConversionError, _first_line, _tf


def graph_outputs(graph_def, meta: dict, images: np.ndarray) -> np.ndarray:
    """The frozen graph's probabilities on ``images``, in a TensorFlow 1 session."""
    tf = _tf()
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as sess:
        return sess.run(meta["prob"], {meta["input"]: images})


def save_savedmodel(graph_def, meta: dict, out: str):
    """A SavedModel whose ``serving_default`` takes ``image`` (N, 28, 28) in [0, 1]; returns a reloading callable."""
    tf = _tf()
    names = [meta["logits"], meta["prob"]]

    class Classifier(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, SIZE, SIZE], tf.float32, name="image")])
        def __call__(self, image):
            logits, prob = tf.graph_util.import_graph_def(graph_def, input_map={meta["input"]: image},
                                                          return_elements=names, name="advmnist")
            return {"logits": logits, "probabilities": prob}

    module = Classifier()
    tf.saved_model.save(module, out, signatures={"serving_default": module.__call__})
    serve = tf.saved_model.load(out).signatures["serving_default"]
    return lambda images: serve(image=tf.constant(images))["probabilities"].numpy()


def save_onnx(graph_def, meta: dict, out: str, opset: int):
    """An ONNX file (tf2onnx) with input ``image`` and outputs ``logits``, ``probabilities``."""
    try:
        import onnxruntime
        import tf2onnx
    except ImportError as err:
        raise ConversionError("expected the [onnx] extra for --format onnx: pip install 'advmnist[onnx]' "
                              f"({_first_line(err)})") from err
    tf = _tf()
    graph = tf.Graph()  # rename the tensors to what other tools will show
    with graph.as_default():
        image = tf.compat.v1.placeholder(tf.float32, [None, SIZE, SIZE], name="image")
        logits, prob = tf.compat.v1.import_graph_def(graph_def, input_map={meta["input"]: image},
                                                     return_elements=[meta["logits"], meta["prob"]], name="net")
        tf.identity(logits, name="logits"), tf.identity(prob, name="probabilities")
    tf2onnx.convert.from_graph_def(graph.as_graph_def(), input_names=["image:0"],
                                   output_names=["logits:0", "probabilities:0"], opset=opset, output_path=out)
    session = onnxruntime.InferenceSession(out, providers=["CPUExecutionProvider"])
    return lambda images: session.run(["probabilities:0"], {"image:0": images})[0]


def run_export(args, workdir: Path) -> dict:
    """A run's model.pb as a SavedModel or an ONNX file, reloaded and checked against the graph."""
    tf = _tf()
    meta = json.loads(Path(args.meta).read_text())
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(Path(args.model_pb).read_bytes())
    images = np.load(args.check)["images"].astype(np.float32)
    if args.format == "onnx":
        reload = save_onnx(graph_def, meta, args.out, args.opset)
        import tf2onnx
        writer = f"tf2onnx {tf2onnx.__version__}, opset {args.opset}"
    else:
        reload, writer = save_savedmodel(graph_def, meta, args.out), f"TensorFlow {tf.__version__}"
    difference = np.abs(reload(images) - graph_outputs(graph_def, meta, images)).max()
    return {"writer": writer, "largest_difference": float(difference)}
