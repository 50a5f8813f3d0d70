"""PGD and the robust-accuracy curve: the ball is respected, the curve falls, more effort never hurts."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from advmnist.experiments import robustness
from advmnist.attacks import PGD
from advmnist.cli import main
from advmnist.errors import InvalidInput
from advmnist.tfcompat import resolve_precision


@pytest.fixture(scope="module")
def test_digits(mnist_small):
    _, test = mnist_small
    return test.images[:40], test.labels[:40]


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.5)])
@pytest.mark.slow
def test_pgd_stays_in_the_ball_and_in_valid_pixels(tiny_model, test_digits, norm, eps):
    images, labels = test_digits
    result = PGD(norm, eps, steps=20)(tiny_model.logits, images, labels, seed=0)
    delta = (result.adversarial - images).reshape(len(images), -1)
    size = np.abs(delta).max(1) if norm == "linf" else np.sqrt((delta ** 2).sum(1))
    assert (size <= eps * (1 + 1e-5) + 1e-6).all()
    assert result.adversarial.min() >= 0 and result.adversarial.max() <= 1
    assert result.success.any() and not result.success.all()  # a real attack on a weak model, not a trivial one
    # the 8-bit check is the network on the rounded images
    rounded = np.round(result.adversarial * 255) / 255
    np.testing.assert_array_equal(tiny_model.predict_proba(rounded.astype(np.float32)).argmax(1),
                                  result.predictions_8bit)


@pytest.mark.slow
def test_more_steps_or_restarts_never_make_pgd_weaker(tiny_model, test_digits):
    images, labels = test_digits
    runs = {(steps, restarts): PGD("linf", 0.05, steps=steps, restarts=restarts)(tiny_model.logits, images, labels,
                                                                                   seed=3).success
            for steps, restarts in ((5, 1), (15, 1), (40, 1), (15, 3))}
    assert (runs[(15, 1)] >= runs[(5, 1)]).all() and (runs[(40, 1)] >= runs[(15, 1)]).all()
    assert (runs[(15, 3)] >= runs[(15, 1)]).all()
    assert runs[(40, 1)].sum() > runs[(5, 1)].sum()


@pytest.mark.slow
def test_a_fooled_image_stops_costing_steps(tiny_model, test_digits):
    images, labels = test_digits
    result = PGD("linf", 0.2, steps=40, check_every=5)(tiny_model.logits, images, labels, seed=0)
    steps = result.info["steps_run"]
    assert steps[result.success].min() < 40  # fooled early, dropped from the batch
    assert (steps[~result.success] == 40).all()


@pytest.mark.slow
def test_robust_accuracy_is_non_increasing_in_eps_and_starts_at_clean_accuracy(tiny_model, test_digits):
    images, labels = test_digits
    settings = robustness.RobustnessSettings(eps=(0.0, 0.02, 0.05, 0.1, 0.2), steps=10)
    curve = robustness.robustness_curve(tiny_model.logits, images, labels, settings, model="tiny")
    clean = float((tiny_model.predict_proba(images).argmax(1) == labels).mean())
    assert curve.robust_accuracy[0] == pytest.approx(clean)
    assert all(b <= a for a, b in zip(curve.robust_accuracy, curve.robust_accuracy[1:]))
    assert curve.robust_accuracy[-1] < curve.robust_accuracy[0]
    # each image's recorded example fools the network at the eps recorded for it
    fooled = np.isfinite(curve.eps_fooled) & (curve.eps_fooled > 0)
    predictions = tiny_model.predict_proba(curve.adversarial[fooled]).argmax(1)
    assert (predictions != labels[fooled]).all()
    linf = np.abs(curve.adversarial[fooled] - images[fooled]).reshape(int(fooled.sum()), -1).max(1)
    assert (linf <= curve.eps_fooled[fooled] + 1e-6).all()


def test_pgd_and_eps_are_checked():
    for kwargs in ({"norm": "l1"}, {"eps": -0.1}, {"eps": 1.5}, {"eps": float("nan")}, {"steps": 0},
                   {"restarts": 0}, {"rel_step": 0.0}):
        with pytest.raises(InvalidInput, match="expected"):
            PGD(**{"norm": "linf", "eps": 0.1, **kwargs})
    assert robustness.parse_eps("0.1, 0,0.1", "linf") == (0.0, 0.1)
    for text in ("0.1,x", "1.5", "-1", ""):
        with pytest.raises(InvalidInput, match="expected"):
            robustness.parse_eps(text, "linf")
    assert robustness.parse_eps("2.5", "l2") == (2.5,)


def test_the_default_attack_is_autoattack_and_says_so(tiny_run, commands_on_small_mnist, tmp_path):
    common = ["robustness", "--model", str(tiny_run[0]), "--count", "2", "--eps", "0", "--json"]  # eps 0: no attack work
    default = CliRunner().invoke(main, common + ["--out", str(tmp_path / "default")])
    assert default.exit_code == 0, default.output
    assert json.loads(default.stdout)["settings"]["attack"] == "auto"
    assert "the default (minutes per 100 images" in default.stderr and "--attack pgd" in default.stderr
    assert (tmp_path / "default" / "robustness_linf_auto.json").is_file()
    chosen = CliRunner().invoke(main, common + ["--attack", "auto", "--out", str(tmp_path / "chosen")])
    assert chosen.exit_code == 0 and "the default" not in chosen.stderr


@pytest.mark.parametrize("args", [["--eps", "0,1.5"], ["--eps", "0,abc"], ["--norm", "l1"], ["--count", "0"],
                                  ["--starts", "0"]])
def test_robustness_bad_input_is_a_clear_error(bad_input, args):
    bad_input(["robustness"] + args, "robustness_linf_auto.png")


def test_models_of_different_input_shapes_are_refused(tiny_run, other_shape_run, bad_input):
    bad_input(["robustness", "--model", str(tiny_run[0]), "--model", str(other_shape_run)], "robustness_linf_auto.png",
              "same input shape")


@pytest.mark.slow
def test_robustness_command_two_models_and_the_minimal_curve(tiny_run, tmp_path):
    runner = CliRunner()
    common = ["--split", "test", "--offset", "0", "--count", "12", "--out", str(tmp_path)]
    done = runner.invoke(main, ["minimal", "--norm", "linf", "--target", "untargeted", "--steps", "30", "--starts",
                                "1", "--search-rounds", "0", "--model", str(tiny_run[0])] + common)
    assert done.exit_code == 0, done.output
    result = runner.invoke(main, ["robustness", "--attack", "pgd", "--eps", "0,0.05,0.2", "--steps", "10", "--model",
                                  str(tiny_run[0]), "--model", str(tiny_run[0] / "model.pb"), "--json"] + common)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert len(payload["models"]) == 2
    first, second = payload["models"]
    assert first["robust_accuracy"] == second["robust_accuracy"]  # the same network twice, same seed
    assert first["eps"] == [0.0, 0.05, 0.2]
    assert list(payload["minimal"]) == [first["model"]]
    # how many images PGD fooled within an eps below the norm that minimal found for them (reported, not judged:
    # minimal's results are 8-bit images, PGD's are not)
    assert len(payload["minimal"][first["model"]]["pgd_below_minimal"]) == 3
    arrays = np.load(tmp_path / "robustness_linf.npz")
    assert arrays["eps_fooled"].shape == (2, 12) and arrays["adversarial"].shape == (2, 12, 28, 28)
    assert (tmp_path / "robustness_linf.png").read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------------------- PGD training

@pytest.mark.slow
def test_pgd_training_raises_robust_accuracy_on_held_apart_images(tiny_run, mnist_small, tmp_path):
    from advmnist.model.frozen import FrozenModel
    from advmnist.defences.pgd_training import PGDTrainingSettings, train_against_pgd

    train, test = mnist_small
    before_model = FrozenModel.load(tiny_run[0])
    settings = PGDTrainingSettings(eps=0.1, epochs=6, batch_size=32, pgd_steps=5, monitor=100)
    result = train_against_pgd(before_model, train, test, settings, out_dir=tmp_path / "pgd")
    after_model = FrozenModel.load(tmp_path / "pgd")
    assert after_model.meta["immunized_against"] == "pgd" and after_model.meta["eps"] == 0.1
    # held apart: test images, never trained on; measured by the attack of `robustness`, not the training one
    images, labels = test.images[100:300], test.labels[100:300]
    robust = {name: 1 - PGD("linf", 0.1, steps=20)(model.logits, images, labels, seed=1).success.mean()
              for name, model in (("before", before_model), ("after", after_model))}
    assert robust["after"] > robust["before"] + 0.1, robust
    assert len(result.history) == 6 and result.robust_after > result.robust_before
    # the defaults every training loop shares with `train`: shifted images, the precision chosen for this CPU
    assert after_model.meta["shift"] == 2 and after_model.meta["precision"] == resolve_precision("auto")[0]


def test_training_loops_shift_their_images_reproducibly():
    from advmnist.defences.universal_immunization import ImmunizeSettings
    from advmnist.model.training import Augmenter
    from advmnist.defences.pgd_training import PGDTrainingSettings

    images = np.random.RandomState(0).rand(64, 28, 28).astype(np.float32)
    first, again = Augmenter(2, seed=5)(images), Augmenter(2, seed=5)(images)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, images) and not np.array_equal(first, Augmenter(2, seed=6)(images))
    assert Augmenter(0, seed=5)(images) is images
    for settings in (ImmunizeSettings, PGDTrainingSettings):
        assert settings().shift == 2 and settings().precision == "auto"
        for bad in ({"shift": 5}, {"precision": "fp16"}):
            with pytest.raises(InvalidInput, match="expected"):
                settings(**bad)


@pytest.mark.parametrize("args", [["pgd", "--rounds", "3"], ["pgd", "--target", "5"], ["universal", "--eps", "0.2"],
                                  ["pgd", "--eps", "0"], ["pgd", "--eps", "1.5"],
                                  ["--against", "pgd", "--rounds", "3"], ["--eps", "0.2"]])  # the old form too
def test_immunize_options_of_the_other_adversary_are_refused(tmp_path, args):
    result = CliRunner().invoke(main, ["immunize", *args, "--out", str(tmp_path), "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert "No such option" in result.output or "Invalid value" in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_ctrl_c_keeps_the_models_already_measured(tiny_run, mnist_small, monkeypatch, tmp_path):
    import advmnist.cli.robustness  # noqa: F401 (the command module whose library call is patched)
    from advmnist.experiments import robustness as robustness_lib
    from advmnist.data.mnist import Split

    real = robustness_lib.robustness_curve
    calls = []

    def second_model_interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    _, test = mnist_small
    monkeypatch.setattr(robustness_lib, "robustness_curve", second_model_interrupted)
    monkeypatch.setattr("advmnist.data.mnist.load_split", lambda *a, rows=None, **k: Split(test.images[rows],
                                                                                     test.labels[rows]))
    result = CliRunner().invoke(main, ["robustness", "--attack", "pgd", "--count", "10", "--eps", "0,0.1", "--steps",
                                       "5", "--model", str(tiny_run[0]), "--model", str(tiny_run[0] / "model.pb"),
                                       "--out", str(tmp_path)])
    assert result.exit_code == 130, result.output
    assert "1 of 2 models were measured" in result.output
    record = json.loads((tmp_path / "robustness_linf_partial.json").read_text())
    assert len(record["models"]) == 1
    assert not (tmp_path / "robustness_linf.json").exists()
