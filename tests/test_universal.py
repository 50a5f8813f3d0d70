"""Universal noise and immunization, on the tiny real model with few steps."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from advmnist.cli import main
from advmnist.fileio import display_path
from advmnist.defences.universal_immunization import ImmunizeSettings, immunize
from advmnist.tfcompat import resolve_precision
from advmnist.experiments.universal import UniversalSettings, universal_attack


@pytest.mark.slow
def test_universal_noise_pushes_images_to_the_target(tiny_model, mnist_small):
    train, test = mnist_small
    settings = UniversalSettings(steps=150, noise_limit=0.35)
    result = universal_attack(tiny_model, train.images, test, [3], settings)
    effect = result.effects[0]
    share_of_threes = float((test.labels == 3).mean())
    assert effect.fooled > share_of_threes + 0.3
    assert effect.accuracy < result.clean_accuracy - 0.2
    assert np.abs(result.noise).max() <= 0.35 + 1e-6
    assert effect.confusion.sum() == len(test) and effect.confusion[:, 3].sum() == round(effect.fooled * len(test))


@pytest.mark.slow
def test_smaller_noise_limit_fools_less(tiny_model, mnist_small):
    train, test = mnist_small
    fooled = {limit: universal_attack(tiny_model, train.images, test, [5],
                                      UniversalSettings(steps=150, noise_limit=limit)).effects[0].fooled
              for limit in (0.02, 0.35)}
    assert fooled[0.02] < fooled[0.35]


def test_given_noise_is_measured_not_optimized(tiny_model, mnist_small):
    train, test = mnist_small
    zero = np.zeros((1, 28, 28), np.float32)
    result = universal_attack(tiny_model, train.images, test, [7], UniversalSettings(steps=1), given_noise=zero)
    assert result.effects[0].accuracy == pytest.approx(result.clean_accuracy)
    assert np.array_equal(result.noise, zero)


def test_bad_universal_settings_are_rejected(tiny_model, mnist_small):
    train, test = mnist_small
    with pytest.raises(ValueError, match="0..9"):
        universal_attack(tiny_model, train.images, test, [10], UniversalSettings(steps=1))
    with pytest.raises(ValueError, match="noise limit"):
        universal_attack(tiny_model, train.images, test, [1], UniversalSettings(steps=1, noise_limit=0))
    with pytest.raises(ValueError, match="schedule"):
        ImmunizeSettings(schedule="random")


def _tiny_immunize(seed: int = 0, **overrides) -> ImmunizeSettings:
    options = dict(rounds=1, train_steps=40, refresh_every=20, refresh_steps=5,
                   noise=UniversalSettings(steps=40, seed=seed))
    options.update(overrides)
    return ImmunizeSettings(**options)


@pytest.mark.slow
def test_immunize_saves_a_new_run_and_leaves_the_original(tiny_run, tiny_model, mnist_small, tmp_path):
    train, test = mnist_small
    original = {p.name: p.read_bytes() for p in tiny_run[0].iterdir() if p.is_file()}
    out = tmp_path / "immune"
    result = immunize(tiny_model, train, test, [3], _tiny_immunize(), out_dir=out)
    assert {p.name: p.read_bytes() for p in tiny_run[0].iterdir() if p.is_file()} == original
    meta = json.loads((out / "model.json").read_text())
    assert meta["immunized_against"] == [3] and meta["base_model"] == display_path(tiny_model.path)
    assert meta["shift"] == 2 and meta["precision"] == resolve_precision("auto")[0]
    assert (out / "model.pb").read_bytes() != original["model.pb"]
    assert len(result.history) == 1 and result.history[0]["target"] == 3
    # one phase ends with the fresh noise that measures it: the two numbers are one measurement
    assert result.after[3] == result.after_own_training[3] == result.history[0]["accuracy_fresh_noise"]
    assert result.lost == {3: 0.0}
    assert result.clean_after > 0.5  # 40 steps with half the images clean do not wreck the network
    from advmnist.model.frozen import FrozenModel

    immune = FrozenModel.load(out)
    accuracy = float((immune.predict_proba(test.images).argmax(1) == test.labels).mean())
    assert accuracy == pytest.approx(result.clean_after)


@pytest.mark.slow
def test_training_on_the_noise_makes_it_harmless(tiny_model, mnist_small):
    """The network trained against a noise is far more accurate under that noise than before."""
    train, test = mnist_small
    result = immunize(tiny_model, train, test, [3], _tiny_immunize(seed=1, train_steps=150, clean_fraction=0.25))
    entry = result.history[0]
    assert entry["accuracy_trained_noise"] > result.before[3] + 0.2


@pytest.mark.parametrize("schedule, order", [
    ("sequential", [(1, 1), (2, 1), (1, 2), (2, 2)]),
    ("interleaved", [(1, 1), (1, 2), (2, 1), (2, 2)]),
])
@pytest.mark.slow
def test_schedules_order_rounds_and_targets(tiny_model, mnist_small, schedule, order):
    train, test = mnist_small
    settings = _tiny_immunize(rounds=2, train_steps=2, refresh_every=0, schedule=schedule,
                              noise=UniversalSettings(steps=2))
    result = immunize(tiny_model, train, test, [1, 2], settings)
    assert [(h["round"], h["target"]) for h in result.history] == order
    assert set(result.before) == set(result.after) == {1, 2}


@pytest.mark.slow
def test_universal_cli_saves_reusable_noise(tiny_run, commands_on_small_mnist, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["universal", "--target", "3", "--steps", "60", "--model", str(tiny_run[0]),
                                  "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["effects"][0]["target"] == 3
    noise = np.load(tmp_path / "universal_noise_3.npy")
    assert noise.shape == (28, 28) and np.abs(noise).max() <= 0.35 + 1e-6
    for name in ("universal_noise_3.png", "universal_samples_3.png", "universal_confusion_3.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    again = runner.invoke(main, ["universal", "--target", "3", "--noise", str(tmp_path / "universal_noise_3.npy"),
                                 "--model", str(tiny_run[0]), "--out", str(tmp_path), "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["effects"][0]["accuracy"] == pytest.approx(payload["effects"][0]["accuracy"])
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((3, 3)))
    bad = runner.invoke(main, ["universal", "--noise", str(wrong), "--model", str(tiny_run[0])])
    assert bad.exit_code == 2 and "expected a noise of shape (28, 28)" in bad.output
    corrupt = tmp_path / "corrupt.npy"
    corrupt.write_bytes(b"not numpy")
    bad = runner.invoke(main, ["universal", "--noise", str(corrupt), "--model", str(tiny_run[0])])
    assert bad.exit_code == 2 and "not a readable .npy" in bad.output


def test_immunize_cli_refuses_to_overwrite_its_own_model(tiny_run):
    result = CliRunner().invoke(main, ["immunize", "universal", "--model", str(tiny_run[0]), "--run-dir", str(tiny_run[0])])
    assert result.exit_code == 2 and "new folder" in result.output


@pytest.mark.slow
def test_same_seed_same_universal_noise(tiny_model, mnist_small):
    train, test = mnist_small
    run = lambda seed: universal_attack(tiny_model, train.images, test, [4],  # noqa: E731
                                        UniversalSettings(steps=40, seed=seed)).noise
    first, second, other = run(0), run(0), run(1)
    assert first.tobytes() == second.tobytes()
    assert not np.array_equal(first, other)


@pytest.mark.slow
def test_given_noise_starts_immunization_and_is_measured(tiny_model, mnist_small):
    train, test = mnist_small
    noise = universal_attack(tiny_model, train.images, test, [6], UniversalSettings(steps=120)).noise
    result = immunize(tiny_model, train, test, [6], _tiny_immunize(train_steps=150, refresh_every=0,
                                                                  clean_fraction=0.25), given_noise=noise)
    assert result.given_before[6] < 0.6
    assert result.given_after[6] > result.given_before[6] + 0.2
    assert result.history[0]["accuracy_trained_noise"] == pytest.approx(result.given_after[6])


@pytest.mark.slow
def test_immunize_cli_end_to_end(tiny_run, commands_on_small_mnist, tmp_path):
    runner = CliRunner()
    run_dir, out = tmp_path / "immune", tmp_path / "assets"
    args = ["immunize", "universal", "--target", "all", "--schedule", "sequential", "--rounds", "1", "--train-steps", "3",
            "--refresh-every", "0", "--noise-steps", "3", "--model", str(tiny_run[0]), "--run-dir", str(run_dir),
            "--out", str(out), "--json"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["targets"] == list(range(10)) and len(payload["history"]) == 10
    assert sorted(payload["lost_since_own_training"], key=int) == [str(t) for t in range(10)]
    # the name says what distinguishes the run: target, schedule, rounds, no refresh
    assert (out / "immunize_all_sequential_rounds1_fixed.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "immunize_all_sequential_rounds1_fixed.json").read_text())["run_dir"] == str(run_dir)
    assert json.loads((run_dir / "model.json").read_text())["immunized_against"] == list(range(10))
    again = runner.invoke(main, args)
    assert again.exit_code == 2 and "already holds a model" in again.output and "--resume" not in again.output
    for bad_dir in (tiny_run[0], tiny_run[0].parent):
        refused = runner.invoke(main, ["immunize", "universal", "--model", str(tiny_run[0]), "--run-dir", str(bad_dir),
                                       "--overwrite"])
        assert refused.exit_code == 2 and "new folder" in refused.output
    assert (tiny_run[0] / "model.pb").is_file()


@pytest.mark.slow
def test_universal_all_and_given_noise_limits(tiny_run, commands_on_small_mnist, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["universal", "--target", "all", "--steps", "3", "--model", str(tiny_run[0]),
                                  "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    assert [e["target"] for e in json.loads(result.stdout)["effects"]] == list(range(10))
    assert np.load(tmp_path / "universal_noise_all.npy").shape == (10, 28, 28)
    assert (tmp_path / "universal_noise_all.png").is_file()
    loud = tmp_path / "loud.npy"
    np.save(loud, np.full((28, 28), 0.5, np.float32))
    refused = runner.invoke(main, ["universal", "--noise", str(loud), "--model", str(tiny_run[0])])
    assert refused.exit_code == 2 and "--noise-limit" in refused.output
    accepted = runner.invoke(main, ["universal", "--noise", str(loud), "--noise-limit", "0.5",
                                    "--model", str(tiny_run[0]), "--out", str(tmp_path), "--json"])
    assert accepted.exit_code == 0, accepted.output
    archive = tmp_path / "archive.npz"
    np.savez(archive, noise=np.zeros((28, 28)))
    refused = runner.invoke(main, ["universal", "--noise", str(archive), "--model", str(tiny_run[0])])
    assert refused.exit_code == 2 and "archive" in refused.output
    not_numbers = tmp_path / "nan.npy"
    np.save(not_numbers, np.full((28, 28), np.nan, np.float32))
    refused = runner.invoke(main, ["universal", "--noise", str(not_numbers), "--model", str(tiny_run[0])])
    assert refused.exit_code == 2 and "expected finite numbers, got 784 NaN" in refused.output


@pytest.mark.slow
def test_interrupted_immunize_keeps_the_network_and_the_finished_rounds(tiny_run, commands_on_small_mnist, tmp_path, monkeypatch):
    from advmnist.defences import universal_immunization as immunize_module
    from advmnist.model.frozen import FrozenModel

    original, calls = immunize_module._noise_batch, []

    def interrupted_in_round_two(*args):
        calls.append(1)
        if len(calls) == 5:  # 3 training steps a round: the second step of round 2
            raise KeyboardInterrupt
        return original(*args)

    monkeypatch.setattr(immunize_module, "_noise_batch", interrupted_in_round_two)
    run_dir, out = tmp_path / "immune", tmp_path / "out"
    result = CliRunner().invoke(main, [
        "immunize", "universal", "--target", "3", "--rounds", "2", "--train-steps", "3", "--noise-steps", "3",
        "--refresh-every", "0", "--model", str(tiny_run[0]), "--run-dir", str(run_dir), "--out", str(out)])
    assert result.exit_code == 130, result.output
    assert "in round 2, target 3 after 1 finished phase(s)" in result.output
    partial = json.loads((out / "immunize_3_rounds2_fixed_partial.json").read_text())
    assert [h["round"] for h in partial["history"]] == [1] and partial["interrupted_in"] == {"round": 2, "target": 3}
    meta = json.loads((run_dir / "model.json").read_text())
    assert meta["interrupted"] is True and meta["finished_phases"] == 1 and "test_accuracy" not in meta
    from advmnist.defences.universal_immunization import checkpoint_of

    assert checkpoint_of(FrozenModel.load(run_dir))  # a later run can go on from it with --model
    probabilities = FrozenModel.load(run_dir).predict_proba(np.zeros((2, 28, 28), np.float32))
    assert probabilities.shape == (2, 10) and np.allclose(probabilities.sum(1), 1, atol=1e-5)
    assert not (out / "immunize_3_rounds2_fixed.json").exists()


@pytest.mark.slow
def test_interrupted_universal_all_keeps_the_finished_targets_apart(tiny_run, commands_on_small_mnist, tmp_path,
                                                                    monkeypatch):
    from advmnist.attacks.universal_noise import UniversalNoise

    original, calls = UniversalNoise.run, []

    def interrupted_at_the_third_target(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(UniversalNoise, "run", interrupted_at_the_third_target)
    (tmp_path / "universal_all.json").write_text("{}")  # an earlier whole run's record: left alone
    result = CliRunner().invoke(main, ["universal", "--target", "all", "--steps", "3", "--model", str(tiny_run[0]),
                                       "--out", str(tmp_path)])
    assert result.exit_code == 130, result.output
    assert "Interrupted after 2 of 10 targets (0, 1)" in result.output and "were not fitted" in result.output
    partial = tmp_path / "universal_partial"
    record = json.loads((partial / "universal_partial.json").read_text())
    assert [e["target"] for e in record["effects"]] == [0, 1]
    assert np.load(partial / "universal_noise_1.npy").shape == (28, 28)
    assert not (partial / "universal_noise_all.npy").exists() and not (tmp_path / "universal_noise_0.npy").exists()
    assert (tmp_path / "universal_all.json").read_text() == "{}"
