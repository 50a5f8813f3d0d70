"""Faults as users meet them: Ctrl-C at unlucky moments, folders that cannot be written, damaged models.

Every case must leave a way forward: a message that says what is there and a command that works.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from advmnist.cli import main


@pytest.fixture
def runner():
    return CliRunner()


# ---------------------------------------------------------------------------- Ctrl-C during train

def _interrupt_at(epoch: int, step: int):
    """A tensorpack callback that presses Ctrl-C at ``step`` of ``epoch``."""
    from advmnist.tfcompat import load_tensorpack

    tensorpack = load_tensorpack()

    class Interrupt(tensorpack.Callback):
        def _trigger_step(self):
            if self.epoch_num == epoch and self.local_step >= step:
                raise KeyboardInterrupt

    return Interrupt()


@pytest.fixture
def short_training(monkeypatch, mnist_small):
    """`advmnist train` on the small MNIST subset, 5 steps per epoch; ``interrupt`` arms one Ctrl-C."""
    import advmnist.data.mnist
    import advmnist.model.training

    monkeypatch.setattr(advmnist.data.mnist, "load_train_test", lambda data_dir=None, log=None: mnist_small)
    real_train = advmnist.model.training.train
    armed = {}

    def train(*args, **kwargs):
        callbacks = (armed.pop("callback"),) if "callback" in armed else ()
        return real_train(*args, steps_per_epoch=5, callbacks=callbacks, **kwargs)

    monkeypatch.setattr(advmnist.model.training, "train", train)

    def interrupt(epoch: int, step: int) -> None:
        armed["callback"] = _interrupt_at(epoch, step)

    return interrupt


@pytest.mark.slow
def test_train_is_quiet_but_for_a_line_per_epoch_unless_verbose(runner, short_training, tmp_path):
    result = runner.invoke(main, ["train", "--run-dir", str(tmp_path / "run"), "--epochs", "2", "--batch-size", "32"])
    assert result.exit_code == 0, result.output
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert not any("it/s]" in line or "%|" in line for line in lines), lines  # not a terminal: no progress bar
    assert [line.split(":")[0] for line in lines if line.startswith("epoch")] == ["epoch 1/2", "epoch 2/2"]
    assert "validation accuracy" in lines[-2] and not any("@" in line and "]" in line for line in lines), lines
    assert not any("gpu" in line.lower() for line in lines) and len(lines) <= 8, lines
    # everything tensorpack said is still in the run's own log
    assert "Start Epoch 2" in (tmp_path / "run" / "log.log").read_text()


HOLD_LOCK = """
import sys, time
from advmnist.model.runs import run_dir_lock
with run_dir_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


@pytest.mark.parametrize("command", [["train", "--epochs", "1"], ["immunize", "universal", "--train-steps", "1"],
                                     ["immunize", "pgd"]])
def test_a_second_process_on_the_same_run_folder_is_refused(runner, short_training, tmp_path, command):
    import subprocess
    import sys

    run = tmp_path / "runs" / "busy"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = runner.invoke(main, command + ["--run-dir", str(run), "--out", str(tmp_path / "out")]
                               if command[0] == "immunize" else command + ["--run-dir", str(run)])
    finally:
        holder.kill()
        holder.wait()
    assert result.exit_code == 2, result.output
    assert f"{run} is in use by another advmnist process (pid {holder.pid})" in result.output
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()  # nothing written


@pytest.mark.slow
def test_ctrl_c_before_training_began_advises_the_command_that_works(runner, short_training, monkeypatch, tmp_path):
    import advmnist.model.training

    run = tmp_path / "run"
    training = advmnist.model.training.train

    def interrupted_at_once(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(advmnist.model.training, "train", interrupted_at_once)
    result = runner.invoke(main, ["train", "--run-dir", str(run), "--epochs", "2", "--batch-size", "32"])
    assert result.exit_code == 130, result.output
    command = f"advmnist train --run-dir {run} --epochs 2"
    assert "nothing was written" in result.stderr and f"`{command}`" in result.stderr
    monkeypatch.setattr(advmnist.model.training, "train", training)
    again = runner.invoke(main, command.split()[1:] + ["--batch-size", "32"])
    assert again.exit_code == 0, again.output


@pytest.mark.slow
def test_ctrl_c_before_the_first_checkpoint_can_be_resumed_from_scratch(runner, short_training, tmp_path):
    run = tmp_path / "run"
    short_training(epoch=1, step=2)
    result = runner.invoke(main, ["train", "--run-dir", str(run), "--epochs", "2", "--batch-size", "32"])
    assert result.exit_code == 130, result.output
    command = f"advmnist train --resume --run-dir {run} --epochs 2"
    assert "before the first checkpoint" in result.stderr and command in result.stderr
    assert not (run / "checkpoint").exists() and (run / "run.json").is_file()

    plain = runner.invoke(main, ["train", "--run-dir", str(run), "--epochs", "2"])
    assert plain.exit_code == 2
    assert "interrupted before its first checkpoint" in plain.output and "--overwrite" in plain.output
    assert command in plain.output

    resumed = runner.invoke(main, ["train", "--resume", "--run-dir", str(run), "--epochs", "2",
                                   "--batch-size", "32", "--json"])
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["epochs"] == 2 and (run / "model.pb").is_file()


@pytest.mark.slow
def test_ctrl_c_in_a_later_epoch_resumes_from_the_last_checkpoint(runner, short_training, tmp_path):
    run = tmp_path / "run"
    short_training(epoch=2, step=1)
    result = runner.invoke(main, ["train", "--run-dir", str(run), "--epochs", "3", "--batch-size", "32"])
    assert result.exit_code == 130
    assert "checkpoint after epoch 1" in result.stderr
    assert f"advmnist train --resume --run-dir {run} --epochs 3" in result.stderr
    resumed = runner.invoke(main, ["train", "--resume", "--run-dir", str(run), "--epochs", "3",
                                   "--batch-size", "32", "--json"])
    assert resumed.exit_code == 0, resumed.output
    assert [h["epoch"] for h in json.loads(resumed.stdout)["history"]] == [1, 2, 3]


@pytest.mark.slow
def test_a_full_disk_at_a_checkpoint_stops_training_with_one_line_and_resume_goes_on(runner, short_training,
                                                                                     tmp_path, monkeypatch):
    from advmnist.tfcompat import tf1

    tf = tf1()
    real_save, calls = tf.train.Saver.save, []

    def save(self, sess, save_path, global_step=None, **kwargs):
        calls.append(save_path)
        if len(calls) == 2:  # the checkpoint of epoch 2: a partial file, then the disk is full
            Path(f"{save_path}-10.data-00000-of-00001.tempstate123").write_bytes(b"partial")
            raise tf.errors.ResourceExhaustedError(None, None, "No space left on device")
        return real_save(self, sess, save_path, global_step=global_step, **kwargs)

    monkeypatch.setattr(tf.train.Saver, "save", save)
    run = tmp_path / "run"
    result = runner.invoke(main, ["train", "--run-dir", str(run), "--epochs", "3", "--batch-size", "32"])
    assert result.exit_code == 1, result.output
    message = result.stderr.strip().splitlines()[-1]
    assert "the checkpoint of epoch 2 could not be written (No space left on device)" in message
    assert "continue with --resume" in message and "Traceback" not in result.output, result.output
    assert not list(run.glob("*tempstate*")) and not (run / "model.pb").exists()
    monkeypatch.setattr(tf.train.Saver, "save", real_save)  # space freed
    resumed = runner.invoke(main, ["train", "--resume", "--run-dir", str(run), "--epochs", "3", "--batch-size", "32",
                                   "--json"])
    assert resumed.exit_code == 0, resumed.output
    assert [h["epoch"] for h in json.loads(resumed.stdout)["history"]] == [1, 2, 3]


@pytest.mark.slow
def test_ctrl_c_while_freezing_leaves_a_run_that_resume_or_export_freezes(runner, short_training, tmp_path,
                                                                        monkeypatch):
    import advmnist.model.training

    run = tmp_path / "run"
    real_freeze = advmnist.model.training.inference_graph_def

    def interrupted(checkpoint):
        raise KeyboardInterrupt

    monkeypatch.setattr(advmnist.model.training, "inference_graph_def", interrupted)
    result = runner.invoke(main, ["train", "--run-dir", str(run), "--epochs", "1", "--batch-size", "32"])
    assert result.exit_code == 130
    assert "while freezing" in result.stderr and f"advmnist export --run-dir {run}" in result.stderr
    assert not (run / "model.pb").exists()
    monkeypatch.setattr(advmnist.model.training, "inference_graph_def", real_freeze)

    plain = runner.invoke(main, ["train", "--run-dir", str(run), "--epochs", "1"])
    assert plain.exit_code == 2 and f"advmnist export --run-dir {run}" in plain.output

    resumed = runner.invoke(main, ["train", "--resume", "--run-dir", str(run), "--epochs", "1", "--json"])
    assert resumed.exit_code == 0, resumed.output
    assert "freezing it" in resumed.stderr
    first = (run / "model.pb").read_bytes()

    (run / "model.pb").write_bytes(b"damaged")
    exported = runner.invoke(main, ["export", "--run-dir", str(run), "--json"])
    assert exported.exit_code == 0, exported.output
    assert (run / "model.pb").read_bytes() == first  # the same checkpoint freezes to the same graph
    meta = json.loads((run / "model.json").read_text())
    assert meta["epochs"] == 1 and meta["batch_size"] == 32  # settings from the run's run.json
    assert json.loads(exported.stdout)["test_accuracy"] == pytest.approx(meta["test_accuracy"])


def test_export_of_a_folder_without_checkpoint_says_so(runner, tmp_path):
    (tmp_path / "empty").mkdir()
    result = runner.invoke(main, ["export", "--run-dir", str(tmp_path / "empty")])
    assert result.exit_code == 2 and "has no checkpoint to freeze" in result.output


# ---------------------------------------------------------------------------- unwritable folders

def test_out_below_a_file_is_refused_before_any_work(runner, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    # the model does not exist either: the --out check must come first, before any loading
    result = runner.invoke(main, ["attack", "--out", str(blocker / "sub"), "--model", str(tmp_path / "none")])
    assert result.exit_code == 2
    assert f"{blocker} is a file, expected a folder" in result.output and "--out" in result.output
    assert blocker.read_text() == "not a folder"


def _without_write_override() -> list[str]:
    """A command prefix under which root cannot write to read-only folders, or a skip."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("runs as root, who can write anywhere, and setpriv (util-linux) is not there to drop that")
    return ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search", "--"]


def _read_only_folder(path: Path) -> tuple[Path, list[str]]:
    path.mkdir()
    path.chmod(0o555)
    prefix = _without_write_override()
    probe = subprocess.run(prefix + ["sh", "-c", f"touch '{path}/probe'"], capture_output=True)
    if probe.returncode == 0:
        (path / "probe").unlink()
        path.chmod(0o755)
        pytest.skip(f"this user can write to the read-only folder {path} anyway")
    return path, prefix


@pytest.mark.parametrize("command", [["attack", "--out"], ["train", "--run-dir"], ["evaluate", "--out"]])
def test_read_only_output_folder_is_refused_before_any_work(tmp_path, command):
    folder, prefix = _read_only_folder(tmp_path / "readonly")
    try:
        target = folder / "sub" if command[0] == "train" else folder
        result = subprocess.run(prefix + [sys.executable, "-c", "from advmnist.cli import entry; entry()",
                                          *command, str(target), "--json"], capture_output=True, text=True)
    finally:
        folder.chmod(0o755)
    assert result.returncode == 2, result.stderr
    assert f"cannot write to {command[1]} {target}" in result.stderr and "Permission denied" in result.stderr
    assert ".tmp" not in result.stderr and "Traceback" not in result.stderr
    assert json.loads(result.stdout)["exit_code"] == 2
    assert list(folder.iterdir()) == []


# ---------------------------------------------------------------------------- damaged models

def _copy_run(tiny_run, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(tiny_run[0], run)
    return run


def _flip_weight_bytes(pb: Path, count: int = 2000) -> None:
    """Damage the weights (the bulk of the file) but keep the protobuf parseable."""
    blob = bytearray(pb.read_bytes())
    middle = np.linspace(len(blob) // 4, 3 * len(blob) // 4, count).astype(int)
    for i in middle:
        blob[i] ^= 0x40
    pb.write_bytes(bytes(blob))


@pytest.mark.slow
def test_damaged_weights_are_refused_unless_no_verify(runner, tiny_run, tmp_path):
    run = _copy_run(tiny_run, tmp_path)
    _flip_weight_bytes(run / "model.pb")
    refused = runner.invoke(main, ["evaluate", "--model", str(run), "--out", str(tmp_path / "out")])
    assert refused.exit_code == 2
    assert "does not match the SHA-256" in refused.output and "--no-verify" in refused.output
    assert len(refused.output.strip().splitlines()) == 1 and not (tmp_path / "out").exists()

    used = runner.invoke(main, ["evaluate", "--model", str(run), "--out", str(tmp_path / "out"), "--no-verify",
                                "--json"])
    assert used.exit_code == 0, used.output  # parseable, so it runs, with whatever accuracy it has now
    assert "not verified" in used.stderr


@pytest.mark.slow
def test_model_json_without_checksum_still_loads_with_a_note(runner, tiny_run, tmp_path):
    run = _copy_run(tiny_run, tmp_path)
    meta = json.loads((run / "model.json").read_text())
    assert len(meta.pop("model_sha256")) == 64
    (run / "model.json").write_text(json.dumps(meta))
    result = runner.invoke(main, ["evaluate", "--model", str(run), "--out", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 0, result.output
    assert "records no SHA-256" in result.stderr


def test_wrong_tensor_name_is_named(runner, tiny_run, tmp_path):
    run = _copy_run(tiny_run, tmp_path)
    meta = json.loads((run / "model.json").read_text())
    meta["logits"] = "logitz:0"
    (run / "model.json").write_text(json.dumps(meta))
    result = runner.invoke(main, ["evaluate", "--model", str(run)])
    assert result.exit_code == 2
    assert "'logitz:0'" in result.output and "corrupt" not in result.output


@pytest.mark.slow
def test_model_json_path_is_accepted_as_model(runner, tiny_run, tmp_path):
    result = runner.invoke(main, ["evaluate", "--model", str(tiny_run[0] / "model.json"), "--out", str(tmp_path),
                                  "--json"])
    assert result.exit_code == 0, result.output


# ---------------------------------------------------------------------------- smaller

@pytest.mark.slow
def test_immunize_into_a_used_folder_does_not_suggest_resume(runner, tiny_run, tmp_path):
    used = _copy_run(tiny_run, tmp_path)
    result = runner.invoke(main, ["immunize", "universal", "--model", str(tiny_run[0]), "--run-dir", str(used),
                                  "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "--resume" not in result.output and "--overwrite" in result.output and "--run-dir" in result.output


@pytest.mark.parametrize("args, code", [
    (["attack", "--count", "0", "--json"], 2),                    # a usage error from click
    (["evaluate", "--model", "/no/such/run", "--json"], 2),       # the library's InvalidInput
    (["train", "--resume", "--overwrite", "--json"], 2),          # a usage error raised by the command
])
def test_json_errors_leave_one_object_on_stdout(runner, args, code):
    result = runner.invoke(main, args)
    assert result.exit_code == code
    error = json.loads(result.stdout)
    assert error["exit_code"] == code and error["error"] and error["error"] in result.stderr


@pytest.mark.slow
def test_json_interrupt_leaves_one_object_on_stdout(runner, tiny_run, tmp_path, monkeypatch):
    import advmnist.model.frozen

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(advmnist.model.frozen.FrozenModel, "predict_proba", interrupted)
    result = runner.invoke(main, ["evaluate", "--model", str(tiny_run[0]), "--out", str(tmp_path), "--json"])
    assert result.exit_code == 130
    assert json.loads(result.stdout) == {"error": "interrupted", "exit_code": 130}


def test_errors_without_json_leave_stdout_empty(runner):
    result = runner.invoke(main, ["evaluate", "--model", "/no/such/run"])
    assert result.exit_code == 2 and result.stdout == ""



@pytest.mark.slow
def test_read_only_cache_missing_a_file_still_works_with_a_valid_data_dir(tmp_path):
    from advmnist.data.mnist import FILES, ensure_mnist, fallback_cache_dir

    real = ensure_mnist()  # the full MNIST (a slow test may fetch it)
    cache, given = tmp_path / "cache", tmp_path / "given"
    cache.mkdir()
    given.mkdir()
    missing = FILES["test-labels"].name
    for spec in FILES.values():
        shutil.copy(real / spec.name, (given if spec.name == missing else cache) / spec.name)
    cache.chmod(0o555)
    try:
        probe = subprocess.run(_without_write_override() + ["sh", "-c", f"touch '{cache}/probe'"],
                               capture_output=True)
        if probe.returncode == 0:
            pytest.skip(f"this user can write to the read-only folder {cache} anyway")
        env = {**os.environ, "ADVMNIST_CACHE": str(cache)}
        result = subprocess.run(_without_write_override() + [
            sys.executable, "-c", "from advmnist.cli import entry; entry()", "data", "--data-dir", str(given),
            "--json"], capture_output=True, text=True, env=env)
    finally:
        cache.chmod(0o755)
        fallback = fallback_cache_dir(cache)
    try:
        assert result.returncode == 0, result.stderr
        assert f"cannot write to the MNIST cache {cache}" in result.stderr and "ADVMNIST_CACHE" in result.stderr
        assert ".tmp" not in result.stderr
        assert json.loads(result.stdout)["cache_dir"] == str(fallback)
        assert sorted(p.name for p in fallback.iterdir()) == sorted(s.name for s in FILES.values())
    finally:
        shutil.rmtree(fallback, ignore_errors=True)


@pytest.mark.parametrize("command", [
    ["attack", "--reg", "l1", "--count", "2", "--steps", "5"],
    pytest.param(["universal", "--target", "3", "--steps", "3"], marks=pytest.mark.slow),
    pytest.param(["robustness", "--attack", "pgd", "--eps", "0,0.1", "--count", "4", "--steps", "2"],
                 marks=pytest.mark.slow),
    ["minimal", "--norm", "l1", "--count", "2", "--steps", "5", "--starts", "1"],
    pytest.param(["matrix", "--per-class", "1", "--steps", "5"], marks=pytest.mark.slow),
    pytest.param(["tradeoff", "--reg", "l1", "--weights", "0,0.05", "--count", "2", "--steps", "5"],
                 marks=pytest.mark.slow),
    pytest.param(["transfer", "--attack", "pgd", "--count", "4", "--steps", "2", "--evaluate-on", "SECOND"],
                 marks=pytest.mark.slow),
])
@pytest.mark.parametrize("full_at", ["first", "last"])
def test_a_full_disk_while_results_are_written_is_one_line_and_leaves_no_record(
        runner, tiny_run, commands_on_small_mnist, tmp_path, monkeypatch, request, command, full_at):
    """The disk fills up at the first file of a result set, or at its last (the record, written last as the
    manifest of the set): exit 1 with one line naming the file, no temporary file left, no record."""
    import contextlib
    import errno

    from advmnist import fileio

    if "SECOND" in command:  # transfer's other model
        second = str(request.getfixturevalue("second_model").path.parent)
        command = [second if arg == "SECOND" else arg for arg in command]
    count = 1  # the set's first file; its last: the count of files a whole run writes
    if full_at == "last":
        whole = tmp_path / "whole"
        assert runner.invoke(main, [*command, "--model", str(tiny_run[0]), "--out", str(whole)]).exit_code == 0
        count = len([p for p in whole.iterdir() if p.is_file()])
        assert count > 1
    real, calls = fileio.atomic_path, []

    @contextlib.contextmanager
    def filling_up(path):
        calls.append(path)
        with real(path) as tmp:
            yield tmp
            if len(calls) == count:
                raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(fileio, "atomic_path", filling_up)
    out = tmp_path / "out"
    result = runner.invoke(main, [*command, "--model", str(tiny_run[0]), "--out", str(out)])
    assert result.exit_code == 1, result.output
    last = result.output.strip().splitlines()[-1]
    assert "No space left on device" in last and str(calls[-1]) in last and "Traceback" not in result.output
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]  # no partial file
    assert not list(out.glob("*.json"))  # no record: a reader sees no result set
