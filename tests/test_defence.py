"""The defence at Linf 0.3 (`immunize pgd`): eps ramp, training attacks, TRADES, the guard, resume."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from advmnist.cli import main
from advmnist.defences.losses import ramped_eps
from advmnist.errors import InvalidInput
from advmnist.defences.pgd_training import GUARD_DROP, PGDTrainingInterrupted, PGDTrainingSettings, collapsed


def tiny(**overrides) -> PGDTrainingSettings:
    """A few steps on the 600 small training digits: 9 steps per epoch of 64 images, 2-step PGD."""
    return PGDTrainingSettings(**{"eps": 0.3, "epochs": 1.5, "batch_size": 64, "pgd_steps": 2, "monitor": 50,
                                  **overrides})


@pytest.fixture
def trainer_of(tiny_model):
    """``trainer_of(settings)``: a PGDTrainer on the tiny run's checkpoint, closed after the test."""
    from advmnist.defences.universal_immunization import checkpoint_of
    from advmnist.defences.pgd_trainer import PGDTrainer

    opened = []

    def make(settings):
        opened.append(PGDTrainer(checkpoint_of(tiny_model), settings))
        return opened[-1]

    yield make
    for trainer in opened:
        trainer.sess.close()


# ---------------------------------------------------------------------------- the eps schedule

@pytest.mark.parametrize("eps, ramp", [(0.3, 1), (0.3, 7), (0.1, 468), (1.0, 3)])
def test_eps_ramp_reaches_eps_exactly_at_its_last_step(eps, ramp):
    values = [ramped_eps(eps, step, ramp) for step in range(ramp + 5)]
    assert values[ramp - 1:] == [eps] * 6  # exactly, from the ramp's last step on
    assert all(a < b for a, b in zip(values[:ramp], values[1:ramp])) and all(v < eps for v in values[:ramp - 1])
    assert values[0] == pytest.approx(eps / ramp)
    assert [ramped_eps(eps, step, 0) for step in range(3)] == [eps] * 3  # no ramp


def test_trainer_feeds_the_ramped_eps(trainer_of, mnist_small):
    train, _ = mnist_small
    trainer = trainer_of(tiny(eps_ramp=1.0))
    ramp = trainer.ramp_steps(train)
    assert ramp == trainer.steps_per_epoch(train) == 9
    fed = [trainer._feed(train, step, trainer.total_steps(train), ramp)[trainer.eps] for step in range(11)]
    assert fed[:8] == pytest.approx([0.3 * (k + 1) / 9 for k in range(8)]) and fed[8:] == [0.3] * 3


def test_settings_refuse_what_cannot_be_trained():
    for bad in ({"eps": 0}, {"eps": 1.5}, {"beta": -1}, {"loss": "mart"}, {"attack": "fgsm"},
                {"eps_ramp": 4, "epochs": 3}, {"step_size": 0}):
        with pytest.raises(InvalidInput, match="expected"):
            PGDTrainingSettings(**bad)
    assert PGDTrainingSettings(eps_ramp=3, epochs=3).eps_ramp == 3  # the whole training may be the ramp
    # today's defaults are kept: Madry's PGD, 7 steps of 2.5 eps / 7, no ramp, from the run's checkpoint
    default = PGDTrainingSettings()
    assert (default.attack, default.loss, default.eps_ramp, default.from_scratch) == ("pgd", "pgd", 0, False)
    assert default.relative_step == pytest.approx(2.5 / 7) and default.file_stem() == "immunize_pgd_eps0.1"
    assert PGDTrainingSettings(attack="fgsm-rs").relative_step == 1.25


# ---------------------------------------------------------------------------- the training attacks and TRADES

@pytest.mark.parametrize("overrides", [{}, {"attack": "fgsm-rs"}, {"loss": "trades"},
                                       {"loss": "trades", "attack": "fgsm-rs"}, {"step_size": 3.0}])
@pytest.mark.parametrize("eps", [0.3, 0.05])
@pytest.mark.slow
def test_training_attacks_stay_in_the_ball_and_in_valid_pixels(trainer_of, mnist_small, overrides, eps):
    _, test = mnist_small
    trainer = trainer_of(tiny(**overrides))
    images, labels = test.images[:40], test.labels[:40].astype(np.int32)
    attacked = np.arange(40) % 4 != 0
    adversarial = trainer.sess.run(trainer.adversarial, {
        trainer.images: images, trainer.labels: labels, trainer.attacked: attacked, trainer.eps: eps,
        trainer.relative_step: trainer.settings.relative_step, trainer.seed: [0, 3]})
    change = np.abs(adversarial - images).reshape(40, -1).max(1)
    assert change.max() <= eps * (1 + 1e-6) and adversarial.min() >= 0 and adversarial.max() <= 1
    np.testing.assert_array_equal(adversarial[~attacked], images[~attacked])  # the clean share stays clean
    assert np.median(change[attacked]) > 0.9 * eps  # signed steps reach the ball's surface
    # and the attack's objective is higher there than at random points of the ball
    noise = np.random.default_rng(1).uniform(-eps, eps, images.shape).astype(np.float32)
    clean, found, random = (trainer.sess.run(trainer.logits, {trainer.images: x})[attacked].astype(np.float64)
                            for x in (images, adversarial, np.clip(images + noise, 0, 1)))
    if trainer.settings.loss == "trades":
        def objective(logits):  # KL(f(x) || f(x'))
            p, q = (np.exp(z - z.max(1, keepdims=True)) for z in (clean, logits))
            p, q = p / p.sum(1, keepdims=True), q / q.sum(1, keepdims=True)
            return (p * np.log(p / q)).sum(1).mean()
    else:
        def objective(logits):  # cross-entropy of the true labels
            z = logits - logits.max(1, keepdims=True)
            return (np.log(np.exp(z).sum(1)) - z[np.arange(len(z)), labels[attacked]]).mean()
    assert objective(found) > 1.2 * objective(random)


def test_trades_loss_is_its_formula(trainer_of, mnist_small):
    from advmnist.defences.losses import trades_loss
    from advmnist.tfcompat import tf1

    def formula(clean, adversarial, labels, beta):
        def log_softmax(z):
            z = z.astype(np.float64) - z.max(1, keepdims=True)
            return z - np.log(np.exp(z).sum(1, keepdims=True))

        log_p, log_q = log_softmax(clean), log_softmax(adversarial)
        cross_entropy = -log_p[np.arange(len(labels)), labels].mean()
        return cross_entropy + beta * (np.exp(log_p) * (log_p - log_q)).sum(1).mean()

    rng = np.random.default_rng(0)
    clean, adversarial = rng.normal(0, 3, (2, 21, 10)).astype(np.float32)
    labels = rng.integers(0, 10, 21).astype(np.int32)
    tf = tf1()
    with tf.Graph().as_default(), tf.Session() as sess:
        for beta in (0.0, 1.0, 6.0):
            value = sess.run(trades_loss(tf.constant(clean), tf.constant(adversarial), tf.constant(labels), beta))
            assert value == pytest.approx(formula(clean, adversarial, labels, beta), rel=1e-5)
        assert value > formula(clean, adversarial, labels, 1.0) > formula(clean, clean, labels, 1.0)
    # the trainer's loss is the formula of its own two passes (dropout on, the same masks)
    _, test = mnist_small
    trainer = trainer_of(tiny(loss="trades", beta=2.5))
    feed = {trainer.images: test.images[:24], trainer.labels: test.labels[:24].astype(np.int32),
            trainer.attacked: np.ones(24, bool), trainer.eps: 0.3, trainer.relative_step: 1.25,
            trainer.seed: [0, 11]}
    loss, logits = trainer.sess.run([trainer.loss, trainer.training_logits], feed)
    assert loss == pytest.approx(formula(logits["clean"], logits["adversarial"], test.labels[:24], 2.5), rel=1e-5)
    assert not np.array_equal(logits["clean"], logits["adversarial"])


# ---------------------------------------------------------------------------- the guard

def test_collapse_is_pgd_accuracy_falling_while_fgsm_accuracy_does_not():
    kept = {"clean_accuracy": 0.95, "robust_accuracy": 0.6, "fgsm_accuracy": 0.7}
    assert collapsed(kept, robust=0.6 - GUARD_DROP - 0.01, fgsm=0.7)
    assert collapsed(kept, robust=0.05, fgsm=0.98)
    assert not collapsed(kept, robust=0.05, fgsm=0.5)    # both fell: the network got weaker, not overfit
    assert not collapsed(kept, robust=0.45, fgsm=0.99)   # a fall within the noise of the monitor
    assert not collapsed(None, robust=0.0, fgsm=1.0)


@pytest.mark.slow
def test_guard_rolls_back_weights_and_optimizer_and_lowers_the_step(tiny_model, mnist_small, tmp_path, monkeypatch):
    import advmnist.defences.pgd_trainer as trainer_module
    from advmnist.defences.pgd_training import train_against_pgd
    from advmnist.tfcompat import tf1

    seen = []
    real_end = trainer_module.PGDTrainer._end_epoch

    def end_epoch(self, *args):
        real_end(self, *args)
        with self.graph.as_default():
            names = [v for v in tf1().global_variables() if not v.name.startswith(("guard", "pgd_training_step"))]
        seen.append(dict(zip([v.name for v in names], self.sess.run(names))))

    monkeypatch.setattr(trainer_module.PGDTrainer, "_end_epoch", end_epoch)
    monkeypatch.setattr(trainer_module, "collapsed", lambda reference, robust, fgsm: len(seen) == 1)
    train, test = mnist_small
    result = train_against_pgd(tiny_model, train, test, tiny(attack="fgsm-rs", epochs=2), out_dir=tmp_path / "run")
    first, second = result.history
    assert "rolled_back" not in first and second["rolled_back"] and second["step_size"] == pytest.approx(1.0)
    assert any("Adam" in name for name in seen[0])  # the optimizer's state is rolled back too
    assert all(np.array_equal(seen[0][name], seen[1][name]) for name in seen[0])
    assert (result.clean_after, result.robust_after) == (first["clean_accuracy"], first["robust_accuracy"])


# ---------------------------------------------------------------------------- Ctrl-C and --resume

def _weights(run_dir) -> dict:
    from advmnist.tfcompat import tf1

    reader = tf1().train.load_checkpoint(str(run_dir / "model-pgd"))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


@pytest.mark.parametrize("overrides, where", [
    ({"eps_ramp": 1.0}, ("_feed", 5)),                            # mid-epoch, during the ramp
    ({"loss": "trades", "clean_fraction": 0.25}, ("measure", 2)),  # after epoch 1, before its measurement
    ({"attack": "fgsm-rs"}, ("_feed", 12)),                       # in epoch 2, which the guard rolls back
])
@pytest.mark.slow
def test_resume_after_ctrl_c_ends_with_the_weights_of_an_uninterrupted_run(tiny_model, mnist_small, tmp_path,
                                                                           monkeypatch, overrides, where):
    import advmnist.defences.pgd_trainer as trainer_module
    from advmnist.defences.pgd_training import train_against_pgd
    from advmnist.model.runs import has_resume_state

    train, test = mnist_small
    settings = tiny(**overrides)
    # with fgsm-rs a collapse is declared at the end of epoch 2 (the first whose reference is an epoch's): the
    # resumed run must roll back to the snapshot it restored from the saved state
    monkeypatch.setattr(trainer_module, "collapsed", lambda reference, robust, fgsm: "epoch" in reference)
    whole = train_against_pgd(tiny_model, train, test, settings, out_dir=tmp_path / "whole")

    method, call = where
    real, calls = getattr(trainer_module.PGDTrainer, method), []

    def interrupted(self, *args):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return real(self, *args)

    monkeypatch.setattr(trainer_module.PGDTrainer, method, interrupted)
    run = tmp_path / "cut"
    with pytest.raises(PGDTrainingInterrupted) as stop:
        train_against_pgd(tiny_model, train, test, settings, out_dir=run)
    assert stop.value.step > 0 and stop.value.step < stop.value.total == 14
    assert json.loads((run / "model.json").read_text())["interrupted"] and has_resume_state(run)
    monkeypatch.setattr(trainer_module.PGDTrainer, method, real)
    resumed = train_against_pgd(None, train, test, settings, out_dir=run, resume=True)

    assert not has_resume_state(run) and not json.loads((run / "model.json").read_text()).get("interrupted")
    expected, found = _weights(tmp_path / "whole"), _weights(run)
    assert expected.keys() == found.keys() and all(np.array_equal(expected[k], found[k]) for k in expected)
    measured = [{k: v for k, v in entry.items() if k != "seconds"} for entry in whole.history]
    assert [{k: v for k, v in entry.items() if k != "seconds"} for entry in resumed.history] == measured
    assert (resumed.clean_before, resumed.steps) == (whole.clean_before, 14)


class Killed(BaseException):
    """Stands for SIGKILL: nothing in the process runs after it (no handler saves anything)."""


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_last_epoch_and_ends_as_an_uninterrupted_run(tiny_model, mnist_small, tmp_path,
                                                                                   monkeypatch):
    import advmnist.defences.pgd_trainer as trainer_module
    from advmnist.defences.pgd_training import train_against_pgd
    from advmnist.model.runs import has_resume_state, read_resume_state

    train, test = mnist_small
    settings = tiny(epochs=3.0)
    whole = train_against_pgd(tiny_model, train, test, settings, out_dir=tmp_path / "whole")
    kept = whole.history[1]["step"]  # the end of epoch 2
    real, calls = trainer_module.PGDTrainer._feed, []

    def killed(self, *args):
        calls.append(1)
        if len(calls) == kept + 3:  # in epoch 3: epochs 1 and 2 were kept
            raise Killed
        return real(self, *args)

    monkeypatch.setattr(trainer_module.PGDTrainer, "_feed", killed)
    run = tmp_path / "cut"
    with pytest.raises(Killed):
        train_against_pgd(tiny_model, train, test, settings, out_dir=run)
    assert has_resume_state(run) and read_resume_state(run)["step"] == kept
    assert {p.name.split(".")[0] for p in (run / "resume").glob("state-*")} == {f"state-{kept}"}
    monkeypatch.setattr(trainer_module.PGDTrainer, "_feed", real)
    resumed = train_against_pgd(None, train, test, settings, out_dir=run, resume=True)
    expected, found = _weights(tmp_path / "whole"), _weights(run)
    assert expected.keys() == found.keys() and all(np.array_equal(expected[k], found[k]) for k in expected)
    assert [e["step"] for e in resumed.history] == [e["step"] for e in whole.history]
    assert len(whole.history) >= 3
    assert not has_resume_state(run)


@pytest.mark.slow
def test_cli_ctrl_c_then_resume(tiny_run, mnist_small, tmp_path, monkeypatch):
    import advmnist.data.mnist
    import advmnist.defences.pgd_trainer as trainer_module

    import advmnist.cli.immunize_pgd
    from advmnist.data.mnist import Split

    monkeypatch.setattr(advmnist.data.mnist, "load_train_test", lambda data_dir=None, log=None: mnist_small)
    monkeypatch.setattr(advmnist.data.mnist, "load_split", lambda split, data_dir=None, log=None, rows=slice(None):
                        Split(mnist_small[1].images[rows], mnist_small[1].labels[rows]))
    monkeypatch.setattr(advmnist.cli.immunize_pgd, "EVALUATION_STEPS", 5)  # AutoAttack's members, 5 iterations
    real, calls = trainer_module.PGDTrainer._feed, []

    def interrupted(self, *args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, *args)

    monkeypatch.setattr(trainer_module.PGDTrainer, "_feed", interrupted)
    run, out, runner = tmp_path / "run", tmp_path / "out", CliRunner()
    args = ["immunize", "pgd", "--eps", "0.3", "--epochs", "1", "--pgd-steps", "1", "--loss", "trades",
            "--beta", "3", "--run-dir", str(run), "--out", str(out)]
    stopped = runner.invoke(main, args + ["--model", str(tiny_run[0])])
    assert stopped.exit_code == 130, stopped.output
    command = f"advmnist immunize pgd --resume --run-dir {run}"
    assert "after step 2 of 4" in stopped.stderr and command in stopped.stderr and not out.exists()
    again = runner.invoke(main, args + ["--model", str(tiny_run[0])])  # a new run would lose it: refused
    assert again.exit_code == 2 and "--resume" in again.output
    other = runner.invoke(main, command.split()[1:] + ["--eps", "0.2", "--out", str(out)])
    assert other.exit_code == 2 and "expected the interrupted run's 0.3" in other.output
    resumed = runner.invoke(main, command.split()[1:] + ["--out", str(out), "--json", "--evaluate", "6"])
    assert resumed.exit_code == 0, resumed.output
    record = json.loads(resumed.stdout)
    assert record["settings"]["loss"] == "trades" and record["settings"]["beta"] == 3
    assert len(record["history"]) == 1 and record["base_model"] == str(tiny_run[0] / "model.pb")
    assert (out / "immunize_trades_eps0.3.json").is_file() and not (run / "resume").exists()
    # at the end, AutoAttack at eps/3, 2 eps/3, eps on the first 6 test images, as `robustness --attack auto` writes it
    final = record["autoattack"]
    assert final["settings"]["attack"] == "auto" and final["settings"]["eps"] == [0.1, 0.2, 0.3]
    assert final["settings"]["count"] == 6 and final["models"][0]["model"].endswith("model.pb")
    assert final == json.loads((out / "robustness_linf_auto.json").read_text())
    curve = final["models"][0]["robust_accuracy"]
    assert len(curve) == 3 and all(a >= b for a, b in zip(curve, curve[1:]))


@pytest.mark.slow
@pytest.mark.parametrize("full_at, what", [(2, "the training's state at step"), (3, "the trained network")])
def test_a_full_disk_while_saving_is_one_line_and_resume_finishes_the_run(tiny_run, mnist_small, tmp_path,
                                                                           monkeypatch, full_at, what):
    """Three epochs save the state after the first two (saves 1 and 2), then the network (3): the disk is full
    at save 2 or 3 (TensorFlow's own error, a partial file left): exit 1, one line, no partial file, no
    model.pb; once space is freed, --resume ends the run with all three epochs."""
    import advmnist.data.mnist
    from advmnist.tfcompat import tf1

    tf = tf1()
    monkeypatch.setattr(advmnist.data.mnist, "load_train_test", lambda data_dir=None, log=None: mnist_small)
    real_save, calls = tf.train.Saver.save, []

    def save(self, sess, save_path, *args, **kwargs):
        calls.append(save_path)
        if len(calls) == full_at:
            Path(f"{save_path}.data-00000-of-00001.tempstate42").write_bytes(b"partial")
            raise tf.errors.ResourceExhaustedError(None, None, "No space left on device")
        return real_save(self, sess, save_path, *args, **kwargs)

    monkeypatch.setattr(tf.train.Saver, "save", save)
    run, out, runner = tmp_path / "run", tmp_path / "out", CliRunner()
    args = ["immunize", "pgd", "--eps", "0.3", "--epochs", "3", "--pgd-steps", "1", "--evaluate", "0",
            "--run-dir", str(run), "--out", str(out)]
    full = runner.invoke(main, args + ["--model", str(tiny_run[0])])
    assert full.exit_code == 1, (full.output, full.exception)
    assert "Traceback" not in full.output and full.stderr, (full.output, repr(full.exception))
    last = full.stderr.strip().splitlines()[-1]
    assert what in last and "No space left on device" in last and "continue with --resume" in last, last
    assert not list(run.rglob("*tempstate*")) and not (run / "model.pb").exists() and not out.exists()
    monkeypatch.setattr(tf.train.Saver, "save", real_save)  # space freed
    resumed = runner.invoke(main, ["immunize", "pgd", "--resume", "--run-dir", str(run), "--out", str(out),
                                   "--evaluate", "0", "--json"])
    assert resumed.exit_code == 0, resumed.output
    assert [e["epoch"] for e in json.loads(resumed.stdout)["history"]] == [1, 2, 3]
    assert (run / "model.pb").is_file() and not (run / "resume").exists()


@pytest.mark.parametrize("args, message", [
    (["--eps", "0"], "0<x<=1"), (["--eps", "1.5"], "0<x<=1"), (["--eps", "0.1,0.3"], "expected one budget"),
    (["--beta", "-1", "--loss", "trades"], "x>=0"),
    (["--loss", "mart"], "'pgd', 'trades'"), (["--eps-ramp", "4", "--epochs", "3"], "expected an eps ramp of 0 to 3"),
    (["--beta", "2"], "only applies with --loss trades"), (["--no-guard"], "only applies with --attack fgsm-rs"),
    (["--resume", "--overwrite"], "does not apply"), (["--from-scratch", "--model", "runs/cnn"], "does not apply"),
    (["--resume"], "no interrupted training to resume"), (["--step-size", "0"], "0<x<=10"),
])
def test_bad_defence_options_exit_2_and_write_nothing(tmp_path, args, message):
    out, run = tmp_path / "out", tmp_path / "run"
    result = CliRunner().invoke(main, ["immunize", "pgd", "--run-dir", str(run), "--out", str(out)]
                                + args)
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) <= 4
    assert not out.exists() and not run.exists()


def test_defence_config_holds_a_linf_03_recipe():
    from pathlib import Path

    from advmnist.fileio import read_toml

    recipe = read_toml(Path(__file__).parent.parent / "configs" / "defence-linf0.3.toml")["immunize"]["pgd"]
    settings = PGDTrainingSettings(**{key.replace("-", "_"): value for key, value in recipe.items()
                                      if key != "run-dir"})
    assert settings.eps == 0.3 and 0 < settings.eps_ramp < settings.epochs
