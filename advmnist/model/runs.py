"""Run folders, the run layer: what they hold, what can be done with them, never losing a finished one.

A training run folder holds ``run.json`` (written when training starts: the settings),
tensorpack's checkpoints, ``stats.json`` (one entry per finished epoch) and, once
frozen, ``model.pb`` + ``model.json``. From what is there, :func:`inspect_run` tells
which state the run is in, and :func:`prepare_run_dir` what a new command may do with
it; every refusal names the command that works. This layer writes what a run folder
holds besides tensorpack's own files: ``run.json``, ``model.pb`` + ``model.json``
(:func:`write_frozen`) and the weights of a network trained outside tensorpack
(:func:`save_trained`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import os
import re
from pathlib import Path

from advmnist import fileio
from advmnist.fileio import read_json
from advmnist.data.mnist import IMAGE_SIZE
from advmnist.errors import InvalidInput
from advmnist.model.freezing import TENSOR_NAMES, inference_graph_def, library_versions
from advmnist.model.frozen import META_FILE, MODEL_FILE

RUN_FILE = "run.json"


class RunDirError(InvalidInput):
    """The run folder's state does not allow what was asked; the message says what to do."""


def check_checkpoint(checkpoint: str, run_dir: os.PathLike | str) -> None:
    """Read every tensor of ``checkpoint``: a truncated or damaged file is one line (exit 2), not a traceback
    from deep inside a restore."""
    from advmnist.tfcompat import tf1

    tf = tf1()
    try:
        reader = tf.train.load_checkpoint(checkpoint)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except (tf.errors.OpError, ValueError, IndexError) as err:  # a short read surfaces as an IndexError
        why = (str(getattr(err, "message", err)).strip().splitlines() or [type(err).__name__])[0]
        raise RunDirError(f"checkpoint {checkpoint} cannot be read ({why}): it is truncated or damaged; restore "
                          f"it from a copy, or train the run again (`advmnist train --run-dir {run_dir} "
                          "--overwrite` moves this one aside)") from err


STATS_FILE = "stats.json"


def completed_epochs(run_dir: Path) -> int:
    """Epochs the run's last checkpoint holds (:func:`checkpoint_epoch`), else those ``stats.json`` records."""
    found = checkpoint_epoch(run_dir)
    return found[1] if found else _stats_epoch(_stats(run_dir))


def _stats(run_dir: Path) -> list:
    try:
        stats = read_json(Path(run_dir) / STATS_FILE, list)
    except ValueError:  # damaged (e.g. cut short by a full disk): what it says cannot be trusted
        return []
    return [s for s in stats if isinstance(s, dict) and isinstance(s.get("epoch_num"), int)]


def _stats_epoch(stats: list) -> int:
    return stats[-1]["epoch_num"] if stats else 0


def checkpoint_epoch(run_dir: Path) -> tuple[int, int] | None:
    """``(global step, epochs done)`` of the run's last checkpoint, or None without one.

    tensorpack writes the checkpoint at the end of an epoch, then validates (several
    seconds), then appends the epoch to ``stats.json``: the checkpoint is the truth about
    how far training got. Its epoch is its step over the steps per epoch that ``run.json``
    records (older runs: that ``stats.json`` implies).
    """
    run_dir = Path(run_dir)
    try:
        text = (run_dir / "checkpoint").read_text()
        step = int(re.search(r'^model_checkpoint_path: "[^"]*-(\d+)"', text, re.M).group(1))
    except (OSError, AttributeError, ValueError):
        return None
    per_epoch = read_json(run_dir / RUN_FILE).get("steps_per_epoch")
    if not isinstance(per_epoch, int) or per_epoch < 1:
        recorded = [s for s in _stats(run_dir) if s.get("global_step") and s["epoch_num"] > 0]
        if not recorded:
            return None
        per_epoch = recorded[-1]["global_step"] // recorded[-1]["epoch_num"]
    return step, step // per_epoch


def reconcile_stats(run_dir: Path) -> int:
    """Make ``stats.json`` end at the epoch of the last checkpoint, so that tensorpack resumes right after it;
    return that epoch.

    A kill between the checkpoint and the validation leaves the epoch out of ``stats.json``:
    it gets an entry of its own saying it was not validated. Entries past the checkpoint
    (none in practice) are dropped, so no finished epoch is trained twice and none is skipped.
    """
    found = checkpoint_epoch(run_dir)
    if found is None:
        return 0
    step, epoch = found
    stats = _stats(run_dir)
    kept = [s for s in stats if s["epoch_num"] <= epoch]
    if _stats_epoch(kept) < epoch:
        kept.append({"epoch_num": epoch, "global_step": step,
                     "note": "interrupted after this epoch's checkpoint, before its validation"})
    if kept != stats or not (Path(run_dir) / STATS_FILE).is_file():
        fileio.write_json(Path(run_dir) / STATS_FILE, kept)
    return epoch


def read_run_file(run_dir: Path) -> dict:
    """The settings recorded when the run started (empty for runs of older versions)."""
    return read_json(Path(run_dir) / RUN_FILE)


def mark_run(run_dir: Path, settings: dict) -> None:
    """Record that ``run_dir`` is an advmnist training run, before its first checkpoint exists."""
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    fileio.write_json(Path(run_dir) / RUN_FILE, {**settings, "started": started})


@dataclasses.dataclass(frozen=True)
class RunState:
    """What a run folder holds."""

    exists: bool           # the folder exists and is not empty
    is_run: bool           # written by advmnist (run.json, a checkpoint or a model)
    has_checkpoint: bool
    has_model: bool
    epochs_done: int       # finished epochs: those of the last checkpoint (completed_epochs)
    epochs_planned: int | None  # from run.json, when the run recorded it


def inspect_run(run_dir: Path) -> RunState:
    run_dir = Path(run_dir)
    exists = run_dir.is_dir() and any(run_dir.iterdir())
    has_checkpoint = (run_dir / "checkpoint").is_file()
    has_model = (run_dir / MODEL_FILE).is_file() and (run_dir / META_FILE).is_file()
    record = read_run_file(run_dir)
    planned = record.get("epochs")
    return RunState(exists=exists, is_run=bool(record) or has_checkpoint or has_model,
                    has_checkpoint=has_checkpoint, has_model=has_model, epochs_done=completed_epochs(run_dir),
                    epochs_planned=planned if isinstance(planned, int) else None)


@contextlib.contextmanager
def run_dir_lock(run_dir: os.PathLike | str):
    """Hold ``run_dir`` for this process: a second process that asks for it meanwhile gets a RunDirError.

    The lock is an advisory ``flock`` on a file named after the folder's absolute path in
    the system's temporary folder (so nothing is written beside the run, which may not exist
    yet or be moved aside by ``--overwrite``); the system releases it when the process ends,
    however it ends. Where ``fcntl`` is missing (Windows) nothing is locked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover (not on Linux or macOS)
        yield
        return
    import tempfile

    run_dir = Path(run_dir)
    folder = Path(tempfile.gettempdir()) / "advmnist-locks"
    folder.mkdir(exist_ok=True)
    key = hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:24]
    with open(folder / f"{key}.lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip()
            raise RunDirError(f"{run_dir} is in use by another advmnist process{' (' + holder + ')' if holder else ''};"
                              " wait for it to finish, or pass another --run-dir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def train_command(run_dir: Path, epochs: int, *extra: str) -> str:
    return " ".join(["advmnist", "train", *extra, "--run-dir", str(run_dir), "--epochs", str(epochs)])


def prepare_run_dir(run_dir: Path, *, resume: bool, overwrite: bool, epochs: int | None = None,
                    command: str = "train") -> str | None:
    """Check what ``run_dir`` holds; move it aside on ``overwrite``. Returns a note for the user.

    ``command`` is ``"train"`` (which can ``--resume``) or another command that writes a
    new run (``"immunize"``), whose messages then offer only what it can do.

    Raises:
        RunDirError: the folder holds a run that this request would overwrite or cannot continue.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"{run_dir} is a file; expected a folder for the run (pass another --run-dir)")
    state = inspect_run(run_dir)
    if resume:
        return _resume_note(run_dir, state, epochs)
    if not state.exists:
        return None
    if overwrite:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        backup = run_dir.with_name(f"{run_dir.name}.old-{stamp}")
        os.replace(run_dir, backup)
        return f"moved the previous run to {backup}"
    if command != "train":
        what = "a model" if state.has_model else "an advmnist run" if state.is_run else "other files"
        raise RunDirError(f"{run_dir} already holds {what}; pass --run-dir NEW_DIR for a new run, "
                          "or --overwrite to move it aside")
    epochs = state.epochs_planned or epochs or 1  # what the run itself set out to do, when it says
    if state.has_model:
        raise RunDirError(f"{run_dir} already holds a trained model ({MODEL_FILE}); pass --run-dir NEW_DIR "
                          f"for a new run, `--resume --epochs N` with N > {state.epochs_done} to train it "
                          "further, or --overwrite to move it aside")
    if state.has_checkpoint:
        if state.epochs_done >= epochs:
            raise RunDirError(f"{run_dir} holds a run that finished {state.epochs_done} epochs but was not "
                              f"frozen; freeze it with `advmnist export --run-dir {run_dir}`, or pass --overwrite "
                              "to move it aside")
        raise RunDirError(f"{run_dir} holds an interrupted run (last checkpoint after epoch "
                          f"{state.epochs_done}); continue it with `{train_command(run_dir, epochs, '--resume')}`, "
                          "or pass --overwrite to move it aside")
    if state.is_run:
        raise RunDirError(f"{run_dir} holds a run interrupted before its first checkpoint; start it again "
                          f"there with `{train_command(run_dir, epochs, '--resume')}` (from scratch), "
                          "or pass --overwrite to move it aside")
    raise RunDirError(f"{run_dir} exists and is not an advmnist run; pass another --run-dir, "
                      "or --overwrite to move it aside")


def _resume_note(run_dir: Path, state: RunState, epochs: int | None) -> str:
    if state.has_checkpoint:
        done = state.epochs_done
        if epochs is not None and done >= epochs:
            if state.has_model:
                raise RunDirError(f"--resume: {run_dir} has already trained {done} epochs and is frozen; "
                                  f"pass --epochs larger than {done} to train it further "
                                  f"(`advmnist export --run-dir {run_dir}` re-freezes it)")
            return f"{run_dir} finished its {done} epochs before it was frozen; freezing it"
        return f"resuming {run_dir} after epoch {done}"
    if state.is_run:
        return f"{run_dir} was interrupted before its first checkpoint; training it from the start"
    if state.exists:
        raise RunDirError(f"--resume: {run_dir} is not an advmnist run (no run.json, no checkpoint); "
                          "pass another --run-dir")
    raise RunDirError(f"--resume: {run_dir} has no run to resume; start one with "
                      f"`advmnist train --run-dir {run_dir}`")


def interrupt_message(run_dir: Path, epochs: int) -> str:
    """After Ctrl-C in ``train``: what the folder holds and the command that goes on from it."""
    state = inspect_run(run_dir)
    frozen_epochs = read_json(Path(run_dir) / META_FILE).get("epochs") if state.has_model else None
    if state.has_model and isinstance(frozen_epochs, int) and frozen_epochs >= epochs:
        return f"Interrupted after training and freezing had finished: {run_dir / MODEL_FILE} is complete."
    if not state.is_run:
        return (f"Interrupted before training began: nothing was written to {run_dir}. Start again with "
                f"`{train_command(run_dir, epochs)}`.")
    if not state.has_checkpoint:
        return (f"Interrupted in epoch 1, before the first checkpoint: {run_dir} holds no weights yet. "
                f"Start again with `{train_command(run_dir, epochs, '--resume')}` (from scratch, same folder) "
                "or pass --overwrite.")
    done = state.epochs_done
    if done >= epochs:
        if state.has_model:  # the model.pb there is an older freeze, of fewer epochs
            return (f"Interrupted after the last epoch ({done}), while freezing: {run_dir / MODEL_FILE} is still "
                    f"the earlier model of {frozen_epochs} epochs. Freeze the new weights with "
                    f"`advmnist export --run-dir {run_dir}`.")
        return (f"Interrupted after the last epoch ({done}), while freezing: the trained weights are in "
                f"{run_dir}'s checkpoint. Freeze them with `advmnist export --run-dir {run_dir}` "
                f"(or `{train_command(run_dir, epochs, '--resume')}`).")
    older = (f" ({run_dir / MODEL_FILE} is still the earlier model of {frozen_epochs} epochs)"
             if state.has_model else "")
    return (f"Interrupted in epoch {done + 1}: {run_dir} has a checkpoint after epoch {done}{older}. "
            f"Continue with `{train_command(run_dir, epochs, '--resume')}`.")


def write_frozen(graph_def, out_dir: os.PathLike | str, checkpoint: os.PathLike | str | None, **meta) -> Path:
    """Write ``model.pb`` and ``model.json`` (tensor names, SHA-256 of model.pb, versions, ``meta``).

    ``checkpoint`` is the one frozen, or None for a network imported from elsewhere.

    ``model.json`` is written last: a folder with ``model.pb`` but no ``model.json`` was
    interrupted while freezing.
    """
    out_dir = Path(out_dir)
    blob = graph_def.SerializeToString(deterministic=True)  # map fields in a fixed order
    fileio.write_bytes(out_dir / MODEL_FILE, blob)
    record = dict(TENSOR_NAMES,
                  model_sha256=hashlib.sha256(blob).hexdigest(),
                  input_shape=[None, IMAGE_SIZE, IMAGE_SIZE],
                  input_range=[0.0, 1.0],
                  versions=library_versions(),
                  created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    if checkpoint is not None:
        record["checkpoint"] = os.path.relpath(str(checkpoint), str(out_dir))
    record.update(meta)
    fileio.write_json(out_dir / META_FILE, record)
    return out_dir / MODEL_FILE


def save_trained(saver, sess, out_dir: os.PathLike | str, name: str, **meta) -> Path:
    """Save a session's network as a new run: a checkpoint (``saver``), ``model.pb`` and ``model.json``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    then = (f"the training's state is kept in {out_dir / RESUME_DIR}: free some space and continue with --resume"
            if has_resume_state(out_dir) else "free some space and run the command again")
    checkpoint = save_checkpoint(saver, sess, out_dir / name, "the trained network", then)
    return write_frozen(inference_graph_def(checkpoint), out_dir, checkpoint, **meta)


def save_checkpoint(saver, sess, prefix: os.PathLike | str, what: str, then: str, global_step=None) -> str:
    """``saver.save(sess, prefix)``; a full disk (or any other write error) is an OSError whose message names
    ``what`` and says ``then``, with TensorFlow's partial ``*.tempstate*`` files removed (TensorFlow raises
    its own error types, which the commands would show as a traceback)."""
    import errno

    from advmnist.tfcompat import tf1

    tf = tf1()
    try:
        return saver.save(sess, str(prefix), global_step=global_step, write_meta_graph=False)
    except (OSError, tf.errors.OpError) as err:
        folder = Path(prefix).parent
        for partial in folder.glob("*.tempstate*"):
            partial.unlink(missing_ok=True)
        reason = str(getattr(err, "message", None) or getattr(err, "strerror", None) or err).splitlines()[0]
        raise OSError(getattr(err, "errno", None) or errno.EIO, f"{what} could not be written ({reason}); {then}",
                      str(folder)) from err


#: Where a training that can be resumed keeps its state when interrupted: a checkpoint of every variable
#: (the optimizer's too) and ``state.json`` (what the training measured and decided, its settings).
RESUME_DIR = "resume"
RESUME_FILE = "state.json"


def save_resume_state(saver, sess, out_dir: os.PathLike | str, record: dict) -> Path:
    """Save what an interrupted training needs to go on: ``saver``'s variables under a new name, then
    ``record`` naming them (written last: until it is, the previous state stays whole and is what a resume
    takes), then the previous variables are removed. ``saver`` must not delete old checkpoints itself."""
    folder = Path(out_dir) / RESUME_DIR
    folder.mkdir(parents=True, exist_ok=True)
    name = f"state-{int(record.get('step', 0))}"
    then = ("the state saved before it is kept: free some space and continue with --resume"
            if has_resume_state(out_dir) else "nothing resumable was kept: free some space and run the command again")
    save_checkpoint(saver, sess, folder / name, f"the training's state at step {int(record.get('step', 0))}", then)
    fileio.write_json(folder / RESUME_FILE, {**record, "checkpoint": name})
    for old in folder.glob("state*"):
        if old.name != RESUME_FILE and old.name.split(".")[0] != name:
            old.unlink(missing_ok=True)
    return folder


def has_resume_state(run_dir: os.PathLike | str) -> bool:
    return (Path(run_dir) / RESUME_DIR / RESUME_FILE).is_file()


def read_resume_state(run_dir: os.PathLike | str) -> dict:
    """The record of :func:`save_resume_state`; a RunDirError when there is none."""
    if not has_resume_state(run_dir):
        raise RunDirError(f"--resume: {run_dir} holds no interrupted training to resume (no "
                          f"{RESUME_DIR}/{RESUME_FILE}); start a new one without --resume")
    return read_json(Path(run_dir) / RESUME_DIR / RESUME_FILE)


def resume_checkpoint(run_dir: os.PathLike | str) -> str:
    """The variables the resume record names (``state`` in records of earlier versions)."""
    return str(Path(run_dir) / RESUME_DIR / read_resume_state(run_dir).get("checkpoint", "state"))


def clear_resume_state(run_dir: os.PathLike | str) -> None:
    """Once the training has finished: the state file first, so a half-removed folder is not resumable."""
    import shutil

    folder = Path(run_dir) / RESUME_DIR
    if folder.is_dir():
        (folder / RESUME_FILE).unlink(missing_ok=True)
        shutil.rmtree(folder)
