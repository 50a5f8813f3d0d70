"""Convert an MNIST classifier from Keras, a SavedModel or ONNX into advmnist's frozen graph, and back.

This module runs in its own process, in eager TensorFlow 2 with Keras 3 (``python -m
advmnist.interop.convert``, started by :mod:`advmnist.interop.importing`), because advmnist itself runs
in graph mode with the legacy Keras and a process cannot hold both. It never imports
:mod:`advmnist.tfcompat`.

``import`` writes a frozen GraphDef whose ``input:0`` is a float32 (N, 28, 28) image in
[0, 1] and whose ``logits:0`` is (N, 10): the model's own input convention (pixel scale,
layout) is built into the graph, and so is the step from its output to logits (a final
softmax is skipped, probabilities become their log). Beside it, the model's own outputs
on the check images, computed the way a user would feed the model, for the parent to
compare with. ``export`` writes a run's frozen graph as a SavedModel or an ONNX file.

A problem with the model itself ends the process with status 2 and one line in the
report file's ``error``; anything else is a traceback (status 1).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

SIZE = 28
CLASSES = 10
#: a model's input shape without the batch -> what it holds (its layout)
LAYOUTS = {(SIZE, SIZE): "(28, 28)", (SIZE, SIZE, 1): "(28, 28, 1)", (1, SIZE, SIZE): "(1, 28, 28)",
           (SIZE * SIZE,): "(784,)"}
PIXEL_SCALES = ("0-1", "0-255", "mean-std")
#: what a model outputs -> what advmnist takes as its logits
OUTPUT_KINDS = {"logits": "its outputs, as they are",
                "Softmax": "the input of its final softmax",
                "LogSoftmax": "the input of its final log-softmax",
                "probabilities": "the log of its probabilities (no softmax op to skip)"}
EXPECTED_INPUT = "a model for 28x28 grayscale images: input (N, 28, 28), (N, 28, 28, 1), (N, 1, 28, 28) or (N, 784)"


class ConversionError(Exception):
    """The model cannot be used as it is; the message is one line for the user."""


def _tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    return tf


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


def _shape_text(shape) -> str:
    return "(" + ", ".join("N" if i == 0 and d is None else str(d) for i, d in enumerate(shape)) + ")"


# ---------------------------------------------------------------------------- reading a model

@dataclasses.dataclass
class Loaded:
    """A model as a TensorFlow callable, and how to call the original to check the conversion."""

    call: Callable            # a tensor in the model's convention -> its output
    shape: tuple              # its input shape, batch first
    dtype: str
    reader: str
    own_call: Callable | None = None   # the original model (ONNX Runtime for ONNX), on numpy arrays
    own_shape: tuple | None = None


def load_keras(path: Path) -> Loaded:
    """A .keras / .h5 file, read by Keras 3 or, if Keras 3 cannot, by tf-keras."""
    tried = []
    for reader in ("keras", "tf_keras"):
        try:
            module = __import__(reader)
            model = module.models.load_model(str(path), compile=False)
        except Exception as err:  # each reader raises its own types for files it cannot read
            tried.append(f"{'Keras 3' if reader == 'keras' else 'tf-keras'}: {_first_line(err)}")
            continue
        inputs, outputs = getattr(model, "inputs", None) or [], getattr(model, "outputs", None) or []
        if len(inputs) != 1 or len(outputs) != 1:
            raise ConversionError(f"expected a Keras model with one input and one output of known shapes (a "
                                  f"Sequential or functional model), got {len(inputs)} and {len(outputs)}")
        shape = tuple(_tf().TensorShape(model.inputs[0].shape).as_list())
        name = f"{'Keras' if reader == 'keras' else 'tf-keras'} {module.__version__}"
        dtype = _tf().as_dtype(model.inputs[0].dtype).name
        return Loaded(lambda x: model(x, training=False), shape, dtype, name)
    raise ConversionError(f"expected a Keras model file that Keras 3 or tf-keras can read, got {path} "
                          f"({'; '.join(tried)})")


def load_savedmodel(path: Path, key: str | None = None, shown: Path | None = None) -> Loaded:
    """A SavedModel's serving signature, its output ``key`` (else its one output, or ``logits``)."""
    tf = _tf()
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as err:
        raise ConversionError(f"expected a TensorFlow SavedModel in {path}, could not load it "
                              f"({_first_line(err)})") from err
    signatures = dict(loaded.signatures)
    if not signatures:
        raise ConversionError(f"expected a SavedModel with a serving signature, {path} has none")
    function = signatures.get("serving_default") or next(iter(signatures.values()))
    args, inputs = function.structured_input_signature
    if args or len(inputs) != 1:
        raise ConversionError(f"expected a model with one input, the signature of {shown or path} has "
                              f"{len(args) + len(inputs)}")
    (name, spec), = inputs.items()
    outputs = function.structured_outputs
    if key is None and len(outputs) != 1 and "logits" not in outputs:
        raise ConversionError(f"expected a model with one output (or one named logits), the signature of "
                              f"{shown or path} has {len(outputs)}: {sorted(outputs)}")
    key = key or ("logits" if len(outputs) != 1 else next(iter(outputs)))

    def call(x):
        return function(**{name: x})[key]

    call.keep = loaded  # the functions need their object alive
    return Loaded(call, tuple(spec.shape.as_list()), spec.dtype.name, f"TensorFlow {tf.__version__} SavedModel")


def load_onnx(path: Path, workdir: Path) -> Loaded:
    """An ONNX file through onnx2tf (the ``[onnx]`` extra), converted to a SavedModel first."""
    try:
        import onnx2tf
    except ImportError as err:
        raise ConversionError("expected the [onnx] extra for an ONNX model: pip install 'advmnist[onnx]' "
                              f"(onnx2tf could not be imported: {_first_line(err)})") from err
    out = workdir / "onnx2tf"
    copy = workdir / "model.onnx"  # onnx2tf rewrites the file it is given (measured: 55,619 -> 55,864 bytes)
    shutil.copyfile(path, copy)
    try:
        onnx2tf.convert(input_onnx_file_path=str(copy), output_folder_path=str(out), non_verbose=True,
                        output_signaturedefs=True, disable_model_save=False)
    except (Exception, SystemExit) as err:  # onnx2tf exits on some models it cannot convert
        raise ConversionError(f"expected an ONNX model that onnx2tf {onnx2tf.__version__} can convert, "
                              f"got {path} ({_first_line(err)})") from err
    import onnx

    names = [output.name for output in onnx.load(str(path)).graph.output]
    chosen = [i for i, name in enumerate(names) if name.split(":")[0] == "logits"] if len(names) > 1 else [0]
    if not chosen:
        raise ConversionError(f"expected an ONNX model with one output (or one named logits), {path} has "
                              f"{len(names)}: {names}")
    # onnx2tf names a signature's outputs output_0, output_1, ... in the ONNX file's order
    loaded = load_savedmodel(out, f"output_{chosen[0]}" if len(names) > 1 else None, shown=path)
    loaded.reader = f"onnx2tf {onnx2tf.__version__}"
    try:  # the reference is the ONNX file itself, run by ONNX Runtime, in its own layout
        import onnxruntime
    except ImportError:
        return loaded
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (given,) = session.get_inputs()
    loaded.own_shape = tuple(d if isinstance(d, int) else None for d in given.shape)
    loaded.own_call = lambda x: session.run([names[chosen[0]]], {given.name: x})[0]
    loaded.reader += f", checked with ONNX Runtime {onnxruntime.__version__}"
    return loaded


def load_model(path: Path, fmt: str, workdir: Path) -> Loaded:
    if fmt == "keras":
        return load_keras(path)
    if fmt == "savedmodel":
        return load_savedmodel(path)
    return load_onnx(path, workdir)


# ---------------------------------------------------------------------------- input convention

def match_layout(shape: tuple) -> tuple:
    """The entry of :data:`LAYOUTS` that a model's input shape (batch first) fits."""
    if len(shape) >= 1:
        for layout in LAYOUTS:
            if len(shape) == len(layout) + 1 and all(d is None or d == e for d, e in zip(shape[1:], layout)):
                return layout
    raise ConversionError(f"expected {EXPECTED_INPUT}; got input shape {_shape_text(shape)}")


def convention_steps(scale: str, mean: float, std: float, layout: tuple):
    """What the model expects: its pixel scale (with ``mean`` and ``std`` for ``mean-std``) and layout."""
    return scale, np.float32(mean), np.float32(std), layout


def _scaled(pixels, steps):
    """Pixels in [0, 1] on the model's scale: the same expression for a tensor and an array."""
    scale, mean, std, _ = steps
    if scale == "0-255":
        return pixels * np.float32(255)
    if scale == "mean-std":
        return (pixels - mean) / std
    return pixels


def model_input_tensor(pixels, steps, dtype):
    """The model's input from (N, 28, 28) pixels in [0, 1], in TensorFlow (built into the graph)."""
    tf = _tf()
    x = tf.reshape(_scaled(pixels, steps), [-1, *steps[3]])
    return tf.cast(x, dtype) if dtype != "float32" else x


def model_input_array(pixels: np.ndarray, steps, dtype) -> np.ndarray:
    """The same in numpy: how a user would prepare the images to call the model directly."""
    return _scaled(pixels, steps).reshape(-1, *steps[3]).astype(dtype)


# ---------------------------------------------------------------------------- freezing

def freeze(call, steps, dtype):
    """A frozen GraphDef from (N, 28, 28) pixels to the model's output; (graph_def, input name, output name)."""
    tf = _tf()
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    @tf.function(input_signature=[tf.TensorSpec([None, SIZE, SIZE], tf.float32, name="pixels")])
    def from_pixels(pixels):
        return call(model_input_tensor(pixels, steps, dtype))

    try:
        concrete = from_pixels.get_concrete_function()
    except Exception as err:
        raise ConversionError(f"expected {EXPECTED_INPUT} that runs on any number of images; calling it "
                              f"failed ({_first_line(err)})") from err
    (output,) = tf.nest.flatten(concrete.structured_outputs)
    shape = tuple(output.shape.as_list())
    if len(shape) != 2 or shape[1] != CLASSES:
        raise ConversionError(f"expected a model with {CLASSES} outputs, one per digit: output shape (N, 10); "
                              f"got {_shape_text(shape)}")
    frozen = convert_variables_to_constants_v2(concrete, aggressive_inlining=True)
    return frozen.graph.as_graph_def(), frozen.inputs[0].name, frozen.outputs[0].name


def _producer(tensor):
    while tensor.op.type == "Identity":
        tensor = tensor.op.inputs[0]
    return tensor


def looks_like_probabilities(values: np.ndarray) -> bool:
    return bool(values.min() >= 0 and values.max() <= 1 and np.allclose(values.sum(1), 1, atol=1e-3))


def with_logits(graph_def, input_name: str, output_name: str, output: str, raw: np.ndarray):
    """advmnist's graph: ``input`` (N, 28, 28) -> the model -> ``logits`` (N, 10) -> ``prob``.

    Returns (graph_def, what the model outputs: one of :data:`OUTPUT_KINDS`).
    """
    tf = _tf()
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        image = v1.placeholder(tf.float32, [None, SIZE, SIZE], name="input")
        (out,) = v1.import_graph_def(graph_def, input_map={input_name: image}, return_elements=[output_name],
                                     name="model")
        last = _producer(out)
        if last.op.type in ("Softmax", "LogSoftmax"):
            if output == "logits":
                raise ConversionError(f"--output logits, but the model ends in a {last.op.type}: expected "
                                      "--output probabilities or auto")
            logits, kind = last.op.inputs[0], last.op.type
        elif output == "probabilities" or (output == "auto" and looks_like_probabilities(raw)):
            if not looks_like_probabilities(raw):
                raise ConversionError("--output probabilities, but the outputs are not probabilities (from "
                                      f"{raw.min():.3g} to {raw.max():.3g}); expected --output logits or auto")
            logits, kind = tf.math.log(tf.maximum(out, np.finfo(np.float32).tiny)), "probabilities"
        else:
            logits, kind = out, "logits"
        tf.nn.softmax(tf.identity(logits, name="logits"), name="prob")
    return v1.graph_util.extract_sub_graph(graph.as_graph_def(), ["logits", "prob"]), kind


def softmax(values: np.ndarray) -> np.ndarray:
    shifted = np.exp(values - values.max(1, keepdims=True))
    return shifted / shifted.sum(1, keepdims=True)


def own_outputs(loaded: Loaded, images: np.ndarray, args) -> np.ndarray:
    """The original model's outputs on ``images``, fed in its own convention the way a user would."""
    shape = loaded.own_shape or loaded.shape
    steps = convention_steps(args.input_range, args.mean, args.std, match_layout(shape))
    x = model_input_array(images, steps, loaded.dtype)
    try:
        out = loaded.own_call(x) if loaded.own_call else loaded.call(_tf().constant(x))
    except Exception as err:
        raise ConversionError(f"expected {EXPECTED_INPUT}; calling it on {len(images)} images failed "
                              f"({_first_line(err)})") from err
    return np.asarray(out, np.float64)


def run_import(args, workdir: Path) -> dict:
    loaded = load_model(Path(args.source), args.format, workdir)
    if not (loaded.dtype.startswith("float") or loaded.dtype == "bfloat16"):
        raise ConversionError(f"expected a model that takes floating-point pixels, got input dtype {loaded.dtype}")
    layout = match_layout(loaded.shape)
    images = np.load(args.check)["images"].astype(np.float32)
    raw = own_outputs(loaded, images, args)
    steps = convention_steps(args.input_range, args.mean, args.std, layout)
    graph_def, input_name, output_name = freeze(loaded.call, steps, loaded.dtype)
    graph_def, kind = with_logits(graph_def, input_name, output_name, args.output, raw)
    Path(args.out_pb).write_bytes(graph_def.SerializeToString(deterministic=True))
    np.save(args.out_reference, raw if kind in ("Softmax", "probabilities") else softmax(raw))
    own_shape = loaded.own_shape or loaded.shape
    return {"reader": loaded.reader, "model_input_shape": list(own_shape), "layout": LAYOUTS[match_layout(own_shape)],
            "input_dtype": loaded.dtype, "outputs": kind}


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m advmnist.interop.convert", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    read = commands.add_parser("import")
    read.add_argument("--source", required=True)
    read.add_argument("--format", choices=("keras", "savedmodel", "onnx"), required=True)
    read.add_argument("--input-range", choices=PIXEL_SCALES, default="0-1")
    read.add_argument("--mean", type=float, default=0.0)
    read.add_argument("--std", type=float, default=1.0)
    read.add_argument("--output", choices=("auto", "logits", "probabilities"), default="auto")
    read.add_argument("--check", required=True, help=".npz with images (N, 28, 28) in [0, 1]")
    read.add_argument("--out-pb", required=True)
    read.add_argument("--out-reference", required=True, help=".npy: the model's own probabilities")
    write = commands.add_parser("export")
    write.add_argument("--model-pb", required=True)
    write.add_argument("--meta", required=True)
    write.add_argument("--format", choices=("savedmodel", "onnx"), required=True)
    write.add_argument("--opset", type=int, default=13)
    write.add_argument("--check", required=True, help=".npz with images (N, 28, 28) in [0, 1]")
    write.add_argument("--out", required=True)
    for sub in (read, write):
        sub.add_argument("--report", required=True, help="JSON file for what was done, or the error")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="advmnist-convert-") as workdir:
        try:
            if args.command == "import":
                report = run_import(args, Path(workdir))
            else:
                from advmnist.interop.convert_export import run_export

                report = run_export(args, Path(workdir))
            status = 0
        except ConversionError as err:
            report, status = {"error": str(err)}, 2
    Path(args.report).write_text(json.dumps(report))
    return status


if __name__ == "__main__":
    sys.exit(main())
