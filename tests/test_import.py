"""`advmnist import` and `export --format`: models trained elsewhere give their own predictions here.

The models are built and trained for a few epochs by tests/make_import_models.py in its own
process (Keras 3 and tf-keras in eager mode), on the 600 training digits of tests/data;
each one saves its own outputs on the test digits, fed in its own convention.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from advmnist.cli import main
from advmnist.interop.convert import softmax
from advmnist.errors import InvalidInput
from advmnist.model.freezing import TENSOR_NAMES
from advmnist.model.frozen import FrozenModel
from advmnist.interop.importing import ImportSettings, converter_env, import_model

BUILDER = Path(__file__).with_name("make_import_models.py")
#: what each model's last layer gives -> what the import must find
OUTPUTS = {"logits": "logits", "softmax": "Softmax", "probabilities": "probabilities"}


def build_models(out: Path, train, test_images: np.ndarray, only=None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "digits.npz", train_images=train.images, train_labels=train.labels, test_images=test_images)
    subprocess.run([sys.executable, str(BUILDER), "--digits", str(out / "digits.npz"), "--out", str(out),
                    *(["--only", *only] if only else [])], env=converter_env(), check=True, capture_output=True)
    return json.loads((out / "models.json").read_text())


@pytest.fixture(scope="module")
def models(tmp_path_factory, mnist_small):
    """Every model of make_import_models.py, with its own outputs on the 300 test digits (slow tests)."""
    train, test = mnist_small
    folder = tmp_path_factory.mktemp("import-models")
    return folder, build_models(folder, train, test.images)


@pytest.fixture(scope="module")
def savedmodel(tmp_path_factory, mnist_small):
    """The SavedModel taking (N, 1, 28, 28) normalized pixels, alone: the fast tests' model."""
    train, test = mnist_small
    folder = tmp_path_factory.mktemp("import-savedmodel")
    return folder, build_models(folder, train, test.images, only=["savedmodel-chw"])


def settings_of(spec: dict) -> ImportSettings:
    return ImportSettings(spec["input_range"], spec["mean"], spec["std"])


def own_probabilities(folder: Path, name: str, spec: dict) -> np.ndarray:
    outputs = np.load(folder / f"{name}.predictions.npy").astype(np.float64)
    return outputs if spec["last"] in ("softmax", "probabilities") else softmax(outputs)


@pytest.mark.slow  # a conversion process each (TensorFlow and Keras start in it): seconds, not a unit test
@pytest.mark.parametrize("name", ["keras3", "keras3-hw-255", "keras3-softmax", "tf-keras-h5", "savedmodel-chw",
                                  "savedmodel-probabilities"])
def test_every_format_and_convention_gives_the_models_own_predictions(models, mnist_small, name):
    """Keras 3 / tf-keras .h5 / SavedModel; layouts (28, 28, 1), (28, 28), (784,), (1, 28, 28); pixels 0-1,
    0-255, mean-std; logits, a final softmax, probabilities without a softmax op."""
    folder, specs = models
    spec = specs[name]
    imported = import_model(folder / spec["file"], settings_of(spec))
    ours = FrozenModel(imported.graph_def, TENSOR_NAMES, folder).predict_proba(mnist_small[1].images)
    own = own_probabilities(folder, name, spec)
    np.testing.assert_array_equal(ours.argmax(1), own.argmax(1))
    assert np.abs(ours - own).max() < 1e-4
    assert (own.argmax(1) == mnist_small[1].labels).mean() > 0.5  # a trained model, not a constant one
    assert imported.meta["outputs"] == OUTPUTS[spec["last"]]
    assert imported.meta["input_convention"]["layout"] == str(tuple(spec["layout"]))
    assert imported.meta["input_convention"]["input_range"] == spec["input_range"]


@pytest.mark.slow  # a conversion process each (TensorFlow and Keras start in it): seconds, not a unit test
def test_attacks_work_on_an_imported_model_in_pixel_space(models, mnist_small):
    """The 0-255 model imported: PGD's images stay in [0, 1] and the ball, and fool it more at a larger eps."""
    from advmnist.attacks import PGD

    folder, specs = models
    imported = import_model(folder / specs["keras3-hw-255"]["file"], ImportSettings("0-255"))
    model = FrozenModel(imported.graph_def, TENSOR_NAMES, folder)
    images, labels = mnist_small[1].images[:32], mnist_small[1].labels[:32]
    fooled = []
    for eps in (0.05, 0.2):
        result = PGD("linf", eps, steps=10)(model.logits, images, labels, seed=0)
        assert result.adversarial.min() >= 0 and result.adversarial.max() <= 1
        assert np.abs(result.adversarial - images).max() <= eps + 1e-6
        fooled.append(result.success.mean())
    assert fooled[0] < fooled[1] and fooled[1] > 0.5


@pytest.mark.slow
def test_import_command_writes_a_run_that_every_command_loads(savedmodel, mnist_small, monkeypatch, tmp_path):
    from advmnist.data.mnist import Split

    folder, specs = savedmodel
    test = mnist_small[1]
    monkeypatch.setattr("advmnist.data.mnist.load_split", lambda *a, rows=None, **k: Split(test.images, test.labels))
    out = tmp_path / "mine"
    result = CliRunner().invoke(main, ["import", str(folder / specs["savedmodel-chw"]["file"]), "--run-dir", str(out),
                                       "--input-range", "mean-std", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    meta = json.loads((out / "model.json").read_text())
    own = own_probabilities(folder, "savedmodel-chw", specs["savedmodel-chw"])
    assert meta["test_accuracy"] == record["test_accuracy"] == pytest.approx((own.argmax(1) == test.labels).mean())
    assert meta["input_convention"] == {"layout": "(1, 28, 28)", "input_range": "mean-std", "mean": 0.1307,
                                        "std": 0.3081}
    assert meta["source"]["format"] == "savedmodel" and len(meta["source"]["sha256"]) == 64
    assert "checkpoint" not in meta and sorted(p.name for p in out.iterdir()) == ["model.json", "model.pb"]
    loaded = FrozenModel.load(out)  # checks the SHA-256 that model.json records
    np.testing.assert_array_equal(loaded.predict_proba(test.images).argmax(1), own.argmax(1))


def _refused(args: list, out: Path, expected: str):
    result = CliRunner().invoke(main, ["import", *args, "--run-dir", str(out)])
    assert result.exit_code == 2, result.output
    (error,) = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert expected in error  # on one line
    assert not out.exists()


def test_what_is_not_a_model_is_refused_before_any_conversion(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "weights.bin").write_bytes(b"\0")
    out = tmp_path / "run"
    expected = "expected a Keras model file (.keras, .h5), a TensorFlow SavedModel folder"
    _refused([str(tmp_path / "notes.txt")], out, expected)
    _refused([str(tmp_path / "empty")], out, "got an empty folder")
    _refused([str(tmp_path / "other")], out, "a folder without saved_model.pb")
    _refused([str(tmp_path / "missing.keras")], out, "does not exist")
    _refused([str(tmp_path / "notes.txt"), "--mean", "0.5"], out, "--mean and --std only apply to --input-range "
                                                                  "mean-std")
    (out / "sub").mkdir(parents=True)
    result = CliRunner().invoke(main, ["import", str(tmp_path / "empty"), "--run-dir", str(out)])
    assert result.exit_code == 2 and "expected a new or empty folder" in result.output


@pytest.mark.slow  # a conversion process each
@pytest.mark.parametrize("name, expected", [
    ("wrong-shape", "expected a model for 28x28 grayscale images: input (N, 28, 28), (N, 28, 28, 1), "
                    "(N, 1, 28, 28) or (N, 784); got input shape (N, 32, 32, 3)"),
    ("eleven-outputs", "expected a model with 10 outputs, one per digit: output shape (N, 10); got (N, 11)"),
    ("broken", "expected a Keras model file that Keras 3 or tf-keras can read"),
])
def test_models_of_other_shapes_and_unreadable_files_exit_2_naming_what_was_expected(models, tmp_path, name,
                                                                                    expected):
    folder, specs = models
    if name == "broken":
        source = tmp_path / "broken.keras"
        source.write_text("these are not weights")
    else:
        source = folder / specs[name]["file"]
    _refused([str(source)], tmp_path / "run", expected)


@pytest.mark.slow  # a conversion process each (TensorFlow and Keras start in it): seconds, not a unit test
def test_output_logits_on_a_softmax_model_is_refused(models, tmp_path):
    folder, specs = models
    with pytest.raises(InvalidInput, match="--output logits, but the model ends in a Softmax"):
        import_model(folder / specs["keras3-softmax"]["file"], ImportSettings(output="logits"))


def needs_onnx_extra():
    """Skip without the extra; looked up, not imported (onnx2tf turns on TensorFlow's op determinism)."""
    import importlib.util

    for module in ("onnx2tf", "onnxruntime", "tf2onnx"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"the [onnx] extra (pip install '.[onnx]') is not installed: no {module}")


def test_a_pytorch_network_exported_to_onnx_gives_its_own_predictions(mnist_small):
    """tests/data/torch_mnist.onnx: (N, 1, 28, 28) normalized input, from PyTorch (make_torch_onnx.py)."""
    needs_onnx_extra()
    data = Path(__file__).with_name("data")
    before = (data / "torch_mnist.onnx").read_bytes()
    imported = import_model(data / "torch_mnist.onnx", ImportSettings("mean-std", 0.1307, 0.3081))
    assert (data / "torch_mnist.onnx").read_bytes() == before  # onnx2tf rewrites the file it is given
    ours = FrozenModel(imported.graph_def, TENSOR_NAMES, data).predict_proba(mnist_small[1].images)
    torch_own = softmax(np.load(data / "torch_mnist_outputs.npy").astype(np.float64))
    np.testing.assert_array_equal(ours.argmax(1), torch_own.argmax(1))
    assert np.abs(ours - torch_own).max() < 1e-4
    assert imported.meta["input_convention"]["layout"] == "(1, 28, 28)"
    assert imported.meta["source"]["format"] == "onnx" and "ONNX Runtime" in imported.meta["source"]["reader"]


@pytest.mark.parametrize("fmt", ["savedmodel", "onnx"])
@pytest.mark.slow
def test_export_and_import_back_gives_the_same_network(tiny_run, tiny_model, mnist_small, tmp_path, fmt):
    if fmt == "onnx":
        needs_onnx_extra()
    out = tmp_path / ("exported.onnx" if fmt == "onnx" else "exported")
    result = CliRunner().invoke(main, ["export", "--run-dir", str(tiny_run[0]), "--format", fmt, "--out", str(out),
                                       "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["largest_difference"] < 1e-5
    again = CliRunner().invoke(main, ["export", "--run-dir", str(tiny_run[0]), "--format", fmt, "--out", str(out)])
    assert again.exit_code == 2 and "exists" in again.output
    imported = import_model(out)
    images = mnist_small[1].images
    back = FrozenModel(imported.graph_def, TENSOR_NAMES, out).predict_proba(images)
    ours = tiny_model.predict_proba(images)
    np.testing.assert_array_equal(back.argmax(1), ours.argmax(1))
    assert np.abs(back - ours).max() < 1e-5


def test_export_pb_takes_no_out(tiny_run, tmp_path):
    result = CliRunner().invoke(main, ["export", "--run-dir", str(tiny_run[0]), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "--out only applies to --format savedmodel or onnx" in result.output


@pytest.mark.slow
@pytest.mark.parametrize("name", ["keras3", "tf-keras-h5", "savedmodel-chw"])
def test_evaluate_on_an_imported_model_is_the_models_own_on_the_10000_test_images(tmp_path, mnist_small, name):
    from advmnist.data.mnist import load_split

    test = load_split("test")
    specs = build_models(tmp_path / "models", mnist_small[0], test.images, only=[name])
    spec = specs[name]
    own = np.load(tmp_path / "models" / f"{name}.predictions.npy").argmax(1)
    run = tmp_path / "run"
    args = ["import", str(tmp_path / "models" / spec["file"]), "--run-dir", str(run), "--input-range",
            spec["input_range"]]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    evaluated = CliRunner().invoke(main, ["evaluate", "--model", str(run), "--out", str(tmp_path), "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    record = json.loads(evaluated.stdout)
    expected = np.zeros((10, 10), np.int64)
    np.add.at(expected, (test.labels, own), 1)
    np.testing.assert_array_equal(np.array(record["confusion_matrix"]), expected)
    assert record["test_accuracy"] == (own == test.labels).mean()
    np.testing.assert_array_equal(FrozenModel.load(run).predict_proba(test.images).argmax(1), own)
