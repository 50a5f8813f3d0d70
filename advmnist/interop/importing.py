"""Import an MNIST classifier trained elsewhere (Keras 3, tf-keras, a SavedModel, ONNX) as a frozen graph.

The conversion runs in another process (:mod:`advmnist.interop.convert`, eager TensorFlow and
Keras 3), since this one runs in graph mode with the legacy Keras. It hands back a
GraphDef with advmnist's own interface, ``input:0`` (N, 28, 28) pixels in [0, 1] and
``logits:0`` (N, 10), so every attack works in [0, 1] pixel space whatever the model
expects. Before the graph is accepted, it is loaded here as a :class:`FrozenModel`
and its probabilities on the check images must equal those of the model itself,
called by the converter the way a user would call it. This module returns the graph;
the run layer (:func:`advmnist.model.runs.write_frozen`) writes it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from advmnist.interop.convert import OUTPUT_KINDS, PIXEL_SCALES
from advmnist.errors import InvalidInput

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
OUTPUT_CHOICES = ("auto", "logits", "probabilities")
EXPECTED_MODEL = ("expected a Keras model file (.keras, .h5), a TensorFlow SavedModel folder (with "
                  "saved_model.pb) or an ONNX file (.onnx)")
#: the largest difference in any probability between the imported graph and the model itself
PROBABILITY_TOLERANCE = 1e-4
#: the usual MNIST normalization (torchvision's examples), the default of --mean / --std
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


@dataclasses.dataclass(frozen=True)
class ImportSettings:
    """How the model expects its input and what it outputs."""

    input_range: str = "0-1"      # one of PIXEL_SCALES
    mean: float = MNIST_MEAN      # for input_range "mean-std": the model sees (pixel - mean) / std
    std: float = MNIST_STD
    output: str = "auto"          # one of OUTPUT_CHOICES

    def __post_init__(self):
        if self.input_range not in PIXEL_SCALES:
            raise InvalidInput(f"expected an input range among {PIXEL_SCALES}, got {self.input_range!r}")
        if self.output not in OUTPUT_CHOICES:
            raise InvalidInput(f"expected an output among {OUTPUT_CHOICES}, got {self.output!r}")
        if not (np.isfinite(self.mean) and np.isfinite(self.std) and self.std > 0):
            raise InvalidInput(f"expected a finite mean and a standard deviation > 0, got {self.mean}, {self.std}")

    def convention(self) -> dict:
        record = {"input_range": self.input_range}
        if self.input_range == "mean-std":
            record.update(mean=self.mean, std=self.std)
        return record


@dataclasses.dataclass(frozen=True)
class ImportedModel:
    """A converted model, checked; ``meta`` is what ``model.json`` records besides the tensor names."""

    graph_def: object
    meta: dict
    largest_difference: float  # between its probabilities and the model's own, on the check images


def model_format(source: Path) -> str:
    """``keras``, ``savedmodel`` or ``onnx``, from what ``source`` is.

    Raises:
        InvalidInput: not a file or folder of one of these kinds.
    """
    source = Path(source)
    if source.is_dir():
        if (source / "saved_model.pb").is_file() or (source / "saved_model.pbtxt").is_file():
            return "savedmodel"
        what = "an empty folder" if not any(source.iterdir()) else "a folder without saved_model.pb"
        raise InvalidInput(f"{EXPECTED_MODEL}; got {what}: {source}")
    if not source.exists():
        raise InvalidInput(f"{EXPECTED_MODEL}; {source} does not exist")
    suffix = source.suffix.lower()
    if suffix in KERAS_SUFFIXES:
        return "keras"
    if suffix == ".onnx":
        return "onnx"
    raise InvalidInput(f"{EXPECTED_MODEL}; got {source}")


def source_sha256(source: Path) -> str:
    """SHA-256 of a model file, or of a folder's files (their relative paths and bytes, in order)."""
    digest = hashlib.sha256()
    files = sorted(p for p in Path(source).rglob("*") if p.is_file()) if Path(source).is_dir() else [Path(source)]
    for path in files:
        if Path(source).is_dir():
            digest.update(str(path.relative_to(source)).encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def check_images(count: int = 32, seed: int = 0) -> np.ndarray:
    """Images in [0, 1] on which the imported graph must agree with the model: seeded, no MNIST needed.

    Half are uniform noise, half sparse strokes-like noise (most pixels 0, as in digits).
    """
    rng = np.random.default_rng(seed)
    uniform = rng.uniform(0, 1, (count // 2, 28, 28))
    sparse = rng.uniform(0, 1, (count - count // 2, 28, 28)) * (rng.uniform(0, 1, (count - count // 2, 28, 28)) < 0.2)
    return np.concatenate([uniform, sparse]).astype(np.float32)


def converter_env() -> dict:
    """The environment of the conversion process: Keras 3 on TensorFlow, advmnist importable."""
    env = {key: value for key, value in os.environ.items() if key != "TF_USE_LEGACY_KERAS"}
    env["KERAS_BACKEND"] = "tensorflow"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([package_root] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def run_converter(args: list[str], workdir: Path) -> dict:
    """Run ``python -m advmnist.interop.convert ARGS``; its report, or InvalidInput with its one-line error."""
    report = workdir / "report.json"
    done = subprocess.run([sys.executable, "-m", "advmnist.interop.convert", *args, "--report", str(report)],
                          env=converter_env(), capture_output=True, text=True)
    if done.returncode == 2 and report.is_file():
        raise InvalidInput(json.loads(report.read_text())["error"])
    if done.returncode != 0 or not report.is_file():
        tail = "\n".join(done.stderr.strip().splitlines()[-8:])
        raise RuntimeError(f"the conversion process failed (exit status {done.returncode}):\n{tail}")
    return json.loads(report.read_text())


def import_model(source: os.PathLike | str, settings: ImportSettings = ImportSettings()) -> ImportedModel:
    """Convert ``source``, load it as advmnist would, and check it against the model itself.

    Raises:
        InvalidInput: not a model, not one for 28x28 grayscale images, not 10 outputs, or the
            converted graph disagrees with the model (the message says which).
    """
    from advmnist.model.freezing import TENSOR_NAMES
    from advmnist.model.frozen import FrozenModel
    from advmnist.tfcompat import tf1

    source = Path(source)
    fmt = model_format(source)
    digest = source_sha256(source)  # before the conversion, which must leave the file as it was
    images = check_images()
    with tempfile.TemporaryDirectory(prefix="advmnist-import-") as tmp:
        workdir = Path(tmp)
        np.savez(workdir / "check.npz", images=images)
        report = run_converter(["import", "--source", str(source), "--format", fmt,
                                "--input-range", settings.input_range, "--mean", repr(settings.mean),
                                "--std", repr(settings.std), "--output", settings.output,
                                "--check", str(workdir / "check.npz"), "--out-pb", str(workdir / "model.pb"),
                                "--out-reference", str(workdir / "reference.npy")], workdir)
        blob = (workdir / "model.pb").read_bytes()
        reference = np.load(workdir / "reference.npy")
    if source_sha256(source) != digest:
        raise RuntimeError(f"the conversion changed {source}: a bug in advmnist or its converter")
    graph_def = tf1().GraphDef()
    graph_def.ParseFromString(blob)
    ours = FrozenModel(graph_def, TENSOR_NAMES, source).predict_proba(images)
    difference = float(np.abs(ours - reference).max())
    if difference > PROBABILITY_TOLERANCE or not np.array_equal(ours.argmax(1), reference.argmax(1)):
        raise InvalidInput(f"the imported graph disagrees with {source} itself on {len(images)} check images "
                           f"(probabilities differ by up to {difference:.3g}, expected at most "
                           f"{PROBABILITY_TOLERANCE}); the model may have state or randomness at inference")
    meta = {"source": {"path": str(source), "format": fmt, "reader": report["reader"],
                       "sha256": digest, "input_shape": report["model_input_shape"],
                       "input_dtype": report["input_dtype"]},
            "input_convention": {"layout": report["layout"], **settings.convention()},
            "outputs": report["outputs"], "logits_from": OUTPUT_KINDS[report["outputs"]],
            "checked_on": f"{len(images)} check images, probabilities within {difference:.2g}"}
    return ImportedModel(graph_def, meta, difference)


def export_model(model_pb: Path, meta_json: Path, fmt: str, out: Path) -> dict:
    """Write a frozen model as a SavedModel folder or an ONNX file at ``out`` (through the converter).

    The converter reloads what it wrote and compares its probabilities with the frozen
    graph's on the check images; ``out`` appears only when they agree (written beside it
    under a temporary name, then renamed).

    Raises:
        InvalidInput: ``out`` exists, or the converter cannot write this format here.
    """
    import shutil

    out = Path(out)
    if out.exists():
        raise InvalidInput(f"expected a new path for the exported model, {out} exists; pass another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True) if partial.is_dir() else partial.unlink(missing_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix="advmnist-export-") as tmp:
            np.savez(Path(tmp) / "check.npz", images=check_images())
            report = run_converter(["export", "--model-pb", str(model_pb), "--meta", str(meta_json),
                                    "--format", fmt, "--check", str(Path(tmp) / "check.npz"),
                                    "--out", str(partial)], Path(tmp))
        if report["largest_difference"] > PROBABILITY_TOLERANCE:
            raise RuntimeError(f"the exported {fmt} model disagrees with {model_pb}: probabilities differ by "
                               f"up to {report['largest_difference']:.3g}")
        os.replace(partial, out)
    finally:
        shutil.rmtree(partial, ignore_errors=True) if partial.is_dir() else partial.unlink(missing_ok=True)
    return report
