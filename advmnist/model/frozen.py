"""Load a frozen inference graph (``model.pb`` + ``model.json``) and run it.

Attacks and evaluation only ever see this artifact: constant weights, no dropout,
an ``input`` placeholder that :meth:`FrozenModel.logits` can rewire to any tensor.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from advmnist.model import gradients
from advmnist.model.rowwise import in_blocks, padded_rows
from advmnist.tfcompat import session_config, tf1
from advmnist.errors import InvalidInput

MODEL_FILE = "model.pb"
META_FILE = "model.json"
DEFAULT_RUN_DIR = Path("runs") / "cnn"


class ModelError(InvalidInput):
    """A model file is missing or unreadable; the message is one line for the user."""


def resolve_model_path(path: os.PathLike | str | None) -> Path:
    """``model.pb`` for a run folder, a ``.pb`` path, its ``model.json``, or the default run."""
    path = Path(path) if path is not None else DEFAULT_RUN_DIR
    if path.is_file() and path.name == META_FILE:
        return path.with_name(MODEL_FILE)
    return path / MODEL_FILE if path.is_dir() or path.suffix != ".pb" else path


def _missing_model_message(given, pb: Path) -> str:
    if given is None:
        return f"no trained model at {pb}: run `advmnist train` first (or pass --model RUN_DIR or a model.pb)"
    given = Path(given)
    if not given.exists():
        return f"--model {given} does not exist; expected a run folder or a model.pb file"
    if given.is_file() and given.name == META_FILE:
        return f"--model {given}: expected the run folder or its {MODEL_FILE}, not {META_FILE} ({pb} is missing)"
    return f"{pb} is missing: expected a frozen model there (`advmnist train --run-dir {pb.parent}` writes one)"


class FrozenModel:
    def __init__(self, graph_def, meta: dict, path: Path, notes: tuple[str, ...] = (), sha256: str | None = None):
        self.graph_def = graph_def
        self.meta = meta
        self.path = path
        self.notes = notes  # what the user should know about how it was loaded
        #: SHA-256 of model.pb's bytes: results record it, so a merge can tell models apart at the same path
        self.sha256 = sha256 or hashlib.sha256(graph_def.SerializeToString()).hexdigest()

    @classmethod
    def load(cls, path: os.PathLike | str | None = None, *, verify: bool = True) -> "FrozenModel":
        """Load ``model.pb`` with its ``model.json``.

        With ``verify``, ``model.pb`` must match the SHA-256 that ``model.json`` records
        (files of older versions have none: they load with a note in ``notes``).

        Raises:
            ModelError: a file is missing, unreadable, damaged or does not match the other.
        """
        pb = resolve_model_path(path)
        if not pb.is_file():
            raise ModelError(_missing_model_message(path, pb))
        meta_path = pb.with_name(META_FILE)
        if not meta_path.is_file():
            raise ModelError(f"{meta_path} is missing: expected it beside {pb.name} (written by advmnist train)")
        try:
            meta = json.loads(meta_path.read_text())
            for key in ("input", "logits", "prob"):
                if not isinstance(meta[key], str):
                    raise TypeError(f"{key} is {meta[key]!r}, not a tensor name")
        except (ValueError, KeyError, TypeError) as err:
            raise ModelError(f"{meta_path} is corrupt: expected JSON with input/logits/prob names ({err})") from err
        shape = meta.get("input_shape")
        if shape is not None and not (isinstance(shape, list) and len(shape) in (3, 4) and shape[0] is None
                                      and all(type(n) is int and n > 0 for n in shape[1:])):
            raise ModelError(f"{meta_path} is corrupt: expected input_shape [null, height, width] (or with "
                             f"channels) of positive integers, got {shape!r}")
        blob = pb.read_bytes()
        notes = []
        recorded = meta.get("model_sha256")
        if not verify:
            notes.append(f"{pb} not verified (--no-verify)")
        elif recorded is None:
            notes.append(f"note: {meta_path} records no SHA-256 (written by an older advmnist); "
                         f"{pb.name} was not verified")
        elif hashlib.sha256(blob).hexdigest() != recorded:
            raise ModelError(f"{pb} does not match the SHA-256 recorded in {meta_path.name}: the file is damaged "
                             "or was replaced; re-freeze the run with `advmnist export --run-dir RUN_DIR` if it has a "
                             "checkpoint, or pass --no-verify to use it anyway")
        tf = tf1()
        graph_def = tf.GraphDef()
        try:
            graph_def.ParseFromString(blob)
        except Exception as err:  # protobuf raises its own DecodeError
            raise ModelError(f"{pb} is corrupt: not a TensorFlow GraphDef ({err})") from err
        names = {node.name for node in graph_def.node}
        for key in ("input", "logits", "prob"):
            if meta[key].split(":")[0] not in names:
                raise ModelError(f"{meta_path} names the {key} tensor {meta[key]!r}, which {pb.name} does not "
                                 f"have (its graph has {len(names)} nodes); expected a name from the same "
                                 "run, such as those `advmnist train` writes (input:0, logits:0, prob:0)")
        return cls(graph_def, meta, pb, tuple(notes), hashlib.sha256(blob).hexdigest())

    def logits(self, image_tensor, name: str = "net"):
        """Import the graph into the default graph with ``image_tensor`` as its input.

        The network runs on blocks of :data:`~advmnist.model.rowwise.ROW_BLOCK` images
        (:func:`advmnist.model.rowwise.in_blocks`), so an image's logits and gradient are the
        same bit for bit whatever the images beside it. Its weights are constants, so
        gradients with respect to the input (the attacks' only gradients) use the faster
        forms of :mod:`advmnist.model.gradients`.
        """
        tf = tf1()

        def network(block):
            with gradients.constant_weight_gradients():
                (logits,) = tf.import_graph_def(self.graph_def, input_map={self.meta["input"]: block},
                                                return_elements=[self.meta["logits"]], name="graph")
            return logits

        return in_blocks(network, image_tensor, name=name)

    def predict_proba(self, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
        """Softmax probabilities, shape (N, 10), for images (N, 28, 28) in [0, 1].

        The softmax runs on rows padded to a multiple of 16 (:func:`advmnist.model.rowwise.padded_rows`), so an
        image's probabilities, as its logits, do not depend on the images beside it.
        """
        tf = tf1()
        graph = tf.Graph()
        with graph.as_default():
            image = tf.placeholder(tf.float32, (None,) + images.shape[1:], name="image")
            (padded,) = padded_rows(self.logits(image))
            prob = tf.nn.softmax(padded)[:tf.shape(image)[0]]
        with tf.Session(graph=graph, config=session_config(tf)) as sess:
            out = [sess.run(prob, {image: images[i:i + batch_size]})
                   for i in range(0, len(images), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, 10), np.float32)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int = 10) -> np.ndarray:
    """Rows: true label; columns: predicted label."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix
