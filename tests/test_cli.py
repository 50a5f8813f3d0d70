"""The command line through click's CliRunner: exit codes, messages, files written."""
from __future__ import annotations

import json
import shutil

import click
import numpy as np
import pytest
from click.testing import CliRunner

from advmnist.cli import main


@pytest.fixture
def runner():
    return CliRunner()


def _json(result) -> dict:
    return json.loads(result.stdout)


@pytest.mark.parametrize("command", sorted(main.commands))
def test_every_command_has_help_that_explains_every_option(runner, command):
    result = runner.invoke(main, [command, "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    summary = main.commands[command].help.strip().splitlines()[0]
    assert " ".join(summary.split()) in text  # the docstring's first line leads the help
    for param in main.commands[command].params:
        if isinstance(param, click.Option) and not param.hidden:  # hidden: an old spelling kept for one release
            assert param.opts[0] in result.output, param.opts[0]
            assert param.help, f"{command} {param.opts[0]} has no help text"


def test_top_level_help_names_every_command(runner):
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in main.commands:
        assert f"\n  {command} " in result.output


@pytest.mark.parametrize("args, expected", [
    (["train", "--epochs", "0"], "1<=x<=1000"),
    (["train", "--lr", "-1"], "--lr"),
    (["train", "--schedule", "cosine"], "'step', 'linear'"),
    (["train", "--average-decay", "1"], "0<=x<1"),
    (["train", "--shift", "5"], "0<=x<=4"),
    (["train", "--gpus", "64", "--run-dir", "/nonexistent-never-made"], "GPUs TensorFlow sees here"),
    (["merge"], "Missing argument"),
    (["attack", "--reg", "l3"], "'l2', 'l1', 'none', 'all'"),
    (["attack", "--count", "0"], "x>=1"),
    (["attack", "--weight", "-0.5"], "x>=0"),
    (["attack", "--steps", "0"], "x>=1"),
    (["attack", "--target", "nine"], "is not one of '9-d', 'd+1', 'random'"),
    (["universal", "--target", "10"], "'0', '1'"),
    (["universal", "--noise-limit", "0"], "0<x<=1"),
    (["universal", "--noise-limit", "1.5"], "0<x<=1"),
    (["universal", "--noise", "/nonexistent/noise.npy"], "does not exist"),
    (["immunize", "universal", "--schedule", "random"], "'sequential', 'interleaved'"),
    (["immunize", "universal", "--clean-fraction", "1"], "0<=x<1"),
    (["immunize", "pgd", "--rounds", "3"], "it is an option of `advmnist immunize universal`"),
    (["immunize", "universal", "--eps", "0.2"], "it is an option of `advmnist immunize pgd`"),
    (["immunize", "pgd", "--frobnicate"], "No such option"),
    (["immunize", "--against", "fgsm"], "expected one of universal, pgd, got 'fgsm'"),
    (["attack", "--frobnicate"], "No such option"),
])
def test_bad_input_exits_2_naming_what_was_expected(runner, args, expected):
    result = runner.invoke(main, args)
    assert result.exit_code == 2, result.output
    assert expected in result.output


def test_missing_model_names_the_missing_path(runner, tmp_path):
    for command in (["attack"], ["universal"], ["evaluate"], ["immunize", "universal"], ["immunize", "pgd"]):
        result = runner.invoke(main, command + ["--model", str(tmp_path / "nothing"), "--out", str(tmp_path)])
        assert result.exit_code == 2
        assert f"--model {tmp_path / 'nothing'} does not exist" in result.output
        assert "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


def test_default_model_missing_says_to_train_first(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(main, ["evaluate", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "run `advmnist train` first" in result.output
    assert "runs/cnn/model.pb" in result.output


def _copy_run(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run[0], run)
    return run


@pytest.mark.parametrize("damage", ["truncate_pb", "garbage_pb", "garbage_json", "drop_json"])
def test_corrupt_model_is_a_one_line_error(runner, tiny_run, tmp_path, damage):
    run = _copy_run(tiny_run, tmp_path)
    pb, meta = run / "model.pb", run / "model.json"
    if damage == "truncate_pb":
        pb.write_bytes(pb.read_bytes()[:1000])
    elif damage == "garbage_pb":
        pb.write_bytes(b"\xff" * 5000)
    elif damage == "garbage_json":
        meta.write_text("{not json")
    else:
        meta.unlink()
    result = runner.invoke(main, ["evaluate", "--model", str(run), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_train_never_overwrites_a_finished_run(runner, tiny_run, tmp_path):
    run = _copy_run(tiny_run, tmp_path)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    result = runner.invoke(main, ["train", "--run-dir", str(run), "--epochs", "1"])
    assert result.exit_code == 2
    assert "already holds a trained model" in result.output
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


@pytest.mark.slow
def test_train_refuses_an_interrupted_run_without_resume(runner, tiny_run, tmp_path):
    run = _copy_run(tiny_run, tmp_path)
    (run / "model.pb").unlink()
    planned = json.loads((run / "run.json").read_text())
    done = planned["epochs"]
    (run / "run.json").write_text(json.dumps({**planned, "epochs": done + 2}))  # it meant to go on
    result = runner.invoke(main, ["train", "--run-dir", str(run)])
    assert result.exit_code == 2
    assert f"interrupted run (last checkpoint after epoch {done})" in result.output
    assert f"advmnist train --resume --run-dir {run} --epochs {done + 2}" in result.output


@pytest.mark.slow
def test_evaluate_json_and_confusion_figure(runner, tiny_run, tmp_path):
    result = runner.invoke(main, ["evaluate", "--model", str(tiny_run[0]), "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    payload = _json(result)
    matrix = np.array(payload["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == 10000
    assert payload["test_accuracy"] == pytest.approx(np.trace(matrix) / 10000)
    assert (tmp_path / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"


ATTACK = ["attack", "--count", "4", "--steps", "60"]


@pytest.mark.slow
def test_attack_writes_grids_arrays_and_metrics(runner, tiny_run, tmp_path):
    result = runner.invoke(main, ATTACK + ["--reg", "l1", "--model", str(tiny_run[0]), "--out", str(tmp_path),
                                           "--json"])
    assert result.exit_code == 0, result.output
    payload = _json(result)
    assert set(payload["summary"]) >= {"pred_label", "L1Norm", "L2Norm", "cross_entropy_loss", "regularize_cost",
                                       "train_error"}
    assert [row["index"] for row in payload["rows"]] == [16, 17, 18, 19]
    assert [row["label"] for row in payload["rows"]] == [2, 8, 6, 9]
    assert [row["target"] for row in payload["rows"]] == [7, 1, 3, 0]
    for name in ("mnist_adv_sample_l1.png", "mnist_adv_sample_l1_noise.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    arrays = np.load(tmp_path / "mnist_adv_l1.npz")
    assert arrays["noise"].shape == (4, 28, 28)
    assert arrays["adversarial"].min() >= 0 and arrays["adversarial"].max() <= 1
    assert json.loads((tmp_path / "mnist_adv_l1.json").read_text())["summary"] == payload["summary"]


@pytest.mark.slow
def test_attack_same_seed_same_bytes(runner, tiny_run, tmp_path):
    outputs = []
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        result = runner.invoke(main, ATTACK + ["--model", str(tiny_run[0]), "--out", str(tmp_path / name),
                                               "--seed", seed])
        assert result.exit_code == 0, result.output
        outputs.append((tmp_path / name / "mnist_adv_l2.npz").read_bytes())
    assert outputs[0] == outputs[1]
    assert outputs[0] != outputs[2]


@pytest.mark.slow
def test_attack_all_compares_the_three_regularizers(runner, tiny_run, tmp_path):
    result = runner.invoke(main, ATTACK + ["--reg", "all", "--model", str(tiny_run[0]), "--out", str(tmp_path),
                                           "--json"])
    assert result.exit_code == 0, result.output
    table = _json(result)["comparison"]
    assert [row["reg"] for row in table] == ["l2", "l1", "none"]
    assert (tmp_path / "mnist_adv_comparison.png").is_file()
    for reg in ("l2", "l1", "none"):
        assert (tmp_path / f"mnist_adv_sample_{reg}.png").is_file()


@pytest.mark.slow
def test_attack_bad_input_leaves_existing_files_alone(runner, tiny_run, tmp_path):
    keep = tmp_path / "mnist_adv_sample_l2.png"
    keep.write_bytes(b"earlier result")
    for args in (["--count", "70000"], ["--target", "3"], ["--offset", "59999", "--count", "2"]):
        result = runner.invoke(main, ["attack", "--model", str(tiny_run[0]), "--out", str(tmp_path)] + args)
        assert result.exit_code == 2, result.output
        assert "expected" in result.output
    assert keep.read_bytes() == b"earlier result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mnist_adv_sample_l2.png"]


@pytest.mark.slow
def test_config_file_sets_defaults_and_flags_override(runner, tiny_run, tmp_path):
    config = tmp_path / "exp.toml"
    config.write_text('[attack]\nreg = "none"\ncount = 3\nsteps = 30\noffset = 0\n')
    result = runner.invoke(main, ["attack", "--config", str(config), "--count", "2", "--model", str(tiny_run[0]),
                                  "--out", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 0, result.output
    payload = _json(result)
    assert payload["reg"] == "none" and payload["summary"]["count"] == 2
    assert payload["settings"]["steps"] == 30 and payload["settings"]["offset"] == 0
    config.write_text('[attack]\nregularizer = "none"\n')
    result = runner.invoke(main, ["attack", "--config", str(config), "--model", str(tiny_run[0])])
    assert result.exit_code == 2 and "unknown key" in result.output


def test_reference_configs_are_valid(runner):
    from pathlib import Path

    configs = sorted((Path(__file__).parent.parent / "configs").glob("*.toml"))
    assert len(configs) >= 4
    assert {"reference-targeted.toml", "reference-universal.toml", "reference-immunize.toml"} <= \
        {c.name for c in configs}
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    for config in configs:
        tables = tomllib.loads(config.read_text())
        # every table, for the command it names; [immunize.pgd] for `immunize pgd`
        commands = [[name] if not isinstance(main.commands[name], click.Group) else [name, sub]
                    for name in tables for sub in (tables[name] if name == "immunize" else [None])]
        for command in commands:
            if command == ["reproduce"]:
                result = runner.invoke(main, [*command, "--config", str(config), "--model", "/nonexistent"])
                assert result.exit_code == 2 and "'/nonexistent' does not exist" in result.output, result.output
                continue
            # an unknown model stops the command after the config was read and checked
            result = runner.invoke(main, [*command, "--config", str(config), "--model", "/nonexistent"])
            assert result.exit_code == 2
            assert "--model /nonexistent does not exist" in result.output, (config, command, result.output)


@pytest.mark.slow
@pytest.mark.parametrize("args", [
    ["--count", "1", "--offset", "0"],
    ["--split", "test", "--count", "3", "--offset", "9997"],
    ["--target", "random", "--count", "5"],
    ["--target", "d+1", "--early-stop", "--margin", "0.5", "--steps", "2000", "--reg", "none", "--count", "4"],
])
def test_attack_edge_cases(runner, tiny_run, tmp_path, args):
    base = ["attack", "--steps", "40", "--model", str(tiny_run[0]), "--out", str(tmp_path), "--json"]
    result = runner.invoke(main, base + args)
    assert result.exit_code == 0, result.output
    payload = _json(result)
    rows = payload["rows"]
    assert all(r["target"] != r["label"] for r in rows)
    if "--early-stop" in args:
        # whether every image gets there depends on the tiny model (training is not bit-for-bit
        # reproducible); what must hold is that an image stops early only at a check (every 100
        # steps), once it has reached its target
        for row in rows:
            assert row["steps"] == 2000 or (row["steps"] % 100 == 0 and row["prediction"] == row["target"]), row
    if "--split" in args:
        assert [r["index"] for r in rows] == [9997, 9998, 9999]


@pytest.mark.slow
def test_attack_grid_shows_at_most_64_tiles_but_keeps_every_array(runner, tiny_run, tmp_path):
    result = runner.invoke(main, ["attack", "--count", "70", "--offset", "0", "--steps", "2",
                                  "--model", str(tiny_run[0]), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "6 more rows" in result.output
    assert np.load(tmp_path / "mnist_adv_l2.npz")["noise"].shape == (70, 28, 28)


@pytest.mark.slow
def test_interrupted_attack_keeps_finished_chunks_beside_earlier_results(runner, tiny_run, tmp_path, monkeypatch):
    from advmnist.attacks import PerImageNoise

    (tmp_path / "mnist_adv_l2.npz").write_bytes(b"an earlier, complete run")
    original, calls = PerImageNoise._run_chunk, []

    def second_chunk_interrupted(self, *args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, *args)

    monkeypatch.setattr(PerImageNoise, "_run_chunk", second_chunk_interrupted)
    result = runner.invoke(main, ["attack", "--count", "300", "--offset", "0", "--steps", "2",
                                  "--model", str(tiny_run[0]), "--out", str(tmp_path)])
    assert result.exit_code == 130, result.output
    assert "the first 256 of 300 images were done" in result.output
    partial = np.load(tmp_path / "mnist_adv_l2_partial.npz")
    assert partial["noise"].shape == (256, 28, 28) and partial["indices"].tolist() == list(range(256))
    record = json.loads((tmp_path / "mnist_adv_l2_partial.json").read_text())
    assert record["settings"]["completed"] == 256 and record["summary"]["count"] == 256
    assert (tmp_path / "mnist_adv_sample_l2_partial.png").exists()
    assert (tmp_path / "mnist_adv_l2.npz").read_bytes() == b"an earlier, complete run"


@pytest.mark.slow
def test_interrupt_in_the_first_chunk_writes_nothing(runner, tiny_run, tmp_path, monkeypatch):
    from advmnist.attacks import PerImageNoise

    def interrupted(self, *args):
        raise KeyboardInterrupt

    monkeypatch.setattr(PerImageNoise, "_run_chunk", interrupted)
    result = runner.invoke(main, ["attack", "--count", "3", "--steps", "2", "--model", str(tiny_run[0]),
                                  "--out", str(tmp_path / "out")])
    assert result.exit_code == 130 and "Interrupted during l2 before its first 3 images" in result.output
    assert "nothing of l2 was written" in result.output and "Run the same command again" in result.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.slow
def test_resume_needs_a_checkpoint_and_more_epochs(runner, tiny_run, tmp_path):
    result = runner.invoke(main, ["train", "--resume", "--run-dir", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "has no run to resume" in result.output
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    result = runner.invoke(main, ["train", "--resume", "--run-dir", str(tmp_path / "other")])
    assert result.exit_code == 2 and "not an advmnist run" in result.output
    run = _copy_run(tiny_run, tmp_path)
    done = json.loads((run / "model.json").read_text())["epochs"]
    result = runner.invoke(main, ["train", "--resume", "--run-dir", str(run), "--epochs", "1"])
    assert result.exit_code == 2 and f"already trained {done} epochs and is frozen" in result.output
    assert f"advmnist export --run-dir {run}" in result.output


@pytest.mark.slow
def test_config_keys_may_be_spelled_like_options(runner, tiny_run, tmp_path):
    config = tmp_path / "exp.toml"
    config.write_text('[attack]\nreg = "l1"\ncount = 2\nsteps = 20\nearly-stop = true\n"--margin" = 0.25\n')
    result = runner.invoke(main, ["attack", "--config", str(config), "--model", str(tiny_run[0]),
                                  "--out", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 0, result.output
    settings = _json(result)["settings"]
    assert settings["early_stop"] is True and settings["margin"] == 0.25 and settings["count"] == 2


def test_model_json_with_wrong_types_is_a_one_line_error(runner, tiny_run, tmp_path):
    run = _copy_run(tiny_run, tmp_path)
    meta = json.loads((run / "model.json").read_text())
    meta["input"] = 1
    (run / "model.json").write_text(json.dumps(meta))
    result = runner.invoke(main, ["evaluate", "--model", str(run)])
    assert result.exit_code == 2 and "corrupt" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("shape", ["abc", 5, [None, 28], [None, -1, 28], [None, "a", 28], [28, 28, 28]])
def test_model_json_with_a_malformed_input_shape_is_a_one_line_error(runner, tiny_run, tmp_path, shape):
    run = _copy_run(tiny_run, tmp_path)
    meta = json.loads((run / "model.json").read_text())
    meta["input_shape"] = shape
    (run / "model.json").write_text(json.dumps(meta))
    result = runner.invoke(main, ["robustness", "--model", str(run), "--model", str(tiny_run[0]), "--out",
                                  str(tmp_path / "out")])
    assert result.exit_code == 2 and "expected input_shape" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_a_truncated_checkpoint_is_a_one_line_error_for_export_and_resume(runner, tiny_run, mnist_small, tmp_path,
                                                                          monkeypatch):
    from pathlib import Path

    from advmnist.tfcompat import tf1

    monkeypatch.setattr("advmnist.data.mnist.load_split", lambda split, *a, **k: mnist_small[split == "test"])
    monkeypatch.setattr("advmnist.data.mnist.load_train_test", lambda *a, **k: mnist_small)
    run = _copy_run(tiny_run, tmp_path)
    checkpoint = tf1().train.latest_checkpoint(str(run))
    data = next(run.glob(Path(checkpoint).name + ".data-*"))
    data.write_bytes(data.read_bytes()[:1000])
    before = sorted(p.name for p in run.iterdir())
    for args in (["export", "--run-dir", str(run)], ["train", "--resume", "--epochs", "9", "--run-dir", str(run)]):
        result = runner.invoke(main, args)
        assert result.exit_code == 2, result.output
        assert "cannot be read" in result.output and "truncated or damaged" in result.output
        assert "Traceback" not in result.output
        assert sorted(p.name for p in run.iterdir()) == before


def test_nan_is_not_a_learning_rate(runner):
    result = runner.invoke(main, ["train", "--lr", "nan"])
    assert result.exit_code == 2 and "finite" in result.output


@pytest.mark.slow
def test_console_entry_keeps_exit_status_output_and_files(tiny_run, tmp_path):
    """``entry`` (the installed ``advmnist`` script) skips interpreter teardown: nothing may be lost."""
    import subprocess
    import sys

    run = [sys.executable, "-c", "from advmnist.cli import entry; entry()"]
    ok = subprocess.run(run + ["attack", "--count", "2", "--steps", "3", "--model", str(tiny_run[0]),
                               "--out", str(tmp_path), "--json"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "tensorflow" not in ok.stderr.lower() and "warning" not in ok.stderr.lower()  # a quiet TF import
    payload = json.loads(ok.stdout.strip().splitlines()[-1])
    assert payload["summary"]["count"] == 2
    assert np.load(tmp_path / "mnist_adv_l2.npz")["noise"].shape == (2, 28, 28)
    assert json.loads((tmp_path / "mnist_adv_l2.json").read_text())["summary"] == payload["summary"]
    usage = subprocess.run(run + ["attack", "--count", "0"], capture_output=True, text=True)
    assert usage.returncode == 2 and "x>=1" in usage.stderr
    missing = subprocess.run(run + ["attack", "--model", str(tmp_path / "nothing")], capture_output=True, text=True)
    assert missing.returncode == 2 and "does not exist" in missing.stderr


@pytest.mark.parametrize("args, expected", [
    (["universal", "--config", "configs/reference-targeted.toml"], "has no [universal] table (it has [attack])"),
    (["attack", "--margin", "0.5"], "only matters with --early-stop"),
    (["tradeoff", "--target", "nine"], "'9-d', 'd+1', 'random', '0'"),
])
def test_new_user_mistakes_get_a_clear_error(runner, args, expected, monkeypatch):
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).parent.parent)  # the configs/ folder
    result = runner.invoke(main, args + ["--model", "/nonexistent"])
    assert result.exit_code == 2 and expected in result.output, result.output


def test_a_wrong_type_in_a_config_names_the_file_and_key(runner, tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('[attack]\nsteps = "many"\n')
    result = runner.invoke(main, ["attack", "--config", str(config)])
    assert result.exit_code == 2 and f"{config}, key 'steps'" in result.output and "many" in result.output


def test_verbose_is_accepted_after_the_command(runner, monkeypatch):
    from advmnist import tfcompat

    for args in (["--verbose", "data", "--help"], ["data", "--verbose", "--help"], ["data", "--help"]):
        monkeypatch.setattr(tfcompat, "_verbose", False)
        result = runner.invoke(main, args)
        assert result.exit_code == 0 and "--data-dir" in result.output
        assert tfcompat._verbose is ("--verbose" in args)


def test_json_is_accepted_before_the_command(runner, tmp_path):
    for args in (["--json", "data", "--data-dir", str(tmp_path / "none")],
                 ["data", "--json", "--data-dir", str(tmp_path / "none")]):
        result = runner.invoke(main, args)
        assert result.exit_code == 2, result.output
        assert json.loads(result.stdout)["exit_code"] == 2  # the error as one JSON object on stdout


def test_data_dir_that_does_not_exist_is_an_error(runner, tmp_path):
    result = runner.invoke(main, ["data", "--data-dir", str(tmp_path / "no" / "such")])
    assert result.exit_code == 2 and "is not a folder" in result.output


def test_a_pickled_noise_file_is_refused_with_what_it_must_be(runner, tmp_path):
    pickled = tmp_path / "noise.npy"
    np.save(pickled, np.array([{"not": "numbers"}], dtype=object), allow_pickle=True)
    result = runner.invoke(main, ["universal", "--noise", str(pickled), "--model", "/nonexistent"])
    assert result.exit_code == 2 and "holds Python objects" in result.output and "allow_pickle" not in result.output


@pytest.mark.parametrize("old, new, tail, refusal", [
    (["robustness", "--targeted", "9-d"], ["robustness", "--target", "9-d"], ["--attack", "auto"],
     "supports only the untargeted criterion"),
    (["robustness", "--restarts", "2"], ["robustness", "--starts", "2"], ["--attack", "auto"], "expected no --starts"),
])
def test_old_spellings_work_for_one_release_with_a_note(runner, tmp_path, old, new, tail, refusal):
    """The renamed options still mean what they meant (the same refusal as the new name), with a note."""
    renamed = runner.invoke(main, old + tail + ["--out", str(tmp_path)])
    current = runner.invoke(main, new + tail + ["--out", str(tmp_path)])
    assert renamed.exit_code == current.exit_code == 2
    assert refusal in renamed.output and refusal in current.output
    assert f"`{old[0]} {old[1]}` is now `{new[1]}`" in renamed.output and "is now" not in current.output
    both = runner.invoke(main, old + new[1:] + tail + ["--out", str(tmp_path)])
    assert both.exit_code == 2 and "not both" in both.output
    assert list(tmp_path.iterdir()) == []


def test_transfer_from_and_to_are_model_and_evaluate_on(runner, tiny_run, tmp_path):
    run = str(tiny_run[0])
    old = runner.invoke(main, ["transfer", "--from", run, "--to", run, "--out", str(tmp_path)])
    new = runner.invoke(main, ["transfer", "--model", run, "--evaluate-on", run, "--out", str(tmp_path)])
    assert old.exit_code == new.exit_code == 2
    assert "expected at least two different networks" in old.output and "expected at least two" in new.output
    assert "`transfer --from` is now `--model`" in old.output and "`transfer --to` is now `--evaluate-on`" in old.output
    nothing = runner.invoke(main, ["transfer", "--out", str(tmp_path)])
    assert nothing.exit_code == 2 and "--model" in nothing.output


def test_export_takes_run_dir_and_still_the_old_positional_folder(runner, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    old = runner.invoke(main, ["export", str(empty)])
    new = runner.invoke(main, ["export", "--run-dir", str(empty)])
    assert old.exit_code == new.exit_code == 2
    assert "has no checkpoint to freeze" in old.output and "has no checkpoint to freeze" in new.output
    assert "`export RUN_DIR` is now `--run-dir RUN_DIR`" in old.output and "is now" not in new.output
    assert list(empty.iterdir()) == []


def test_immunize_old_form_runs_the_subcommand_with_a_note(runner, tmp_path):
    """`immunize [--against X] ...` (earlier versions) runs `immunize X ...`, saying so; a flat [immunize] table
    with `against` in a --config file picks the subcommand too; `--json` before the subcommand still counts."""
    missing = ["--model", str(tmp_path / "nothing"), "--out", str(tmp_path / "out")]
    for args, now in ((["--against", "pgd"], "pgd"), (["--against=universal"], "universal"), ([], "universal")):
        result = runner.invoke(main, ["immunize", *args, *missing])
        assert result.exit_code == 2 and "does not exist" in result.output, result.output
        assert f"is now `advmnist immunize {now}`" in result.stderr
    old = tmp_path / "old.toml"
    old.write_text('[immunize]\nagainst = "pgd"\neps = 1.5\n')
    result = runner.invoke(main, ["immunize", "--config", str(old), *missing])
    assert result.exit_code == 2 and "is now `advmnist immunize pgd`" in result.stderr
    assert "key 'eps'" in result.output  # read as the pgd subcommand's table: its --eps range refuses 1.5
    new = tmp_path / "new.toml"
    new.write_text('[immunize.universal]\nrounds = 0\n')
    result = runner.invoke(main, ["immunize", "universal", "--config", str(new), *missing])
    assert result.exit_code == 2 and "key 'rounds'" in result.output and "is now" not in result.stderr
    result = runner.invoke(main, ["immunize", "pgd", "--config", str(new), *missing])
    assert result.exit_code == 2 and "has no [immunize.pgd] table (it has [immunize], [immunize.universal])" in \
        result.output
    result = runner.invoke(main, ["--json", "immunize", "pgd", *missing])
    assert result.exit_code == 2 and json.loads(result.stdout)["exit_code"] == 2
    assert sorted(tmp_path.iterdir()) == sorted([old, new])  # nothing written by the refused runs
