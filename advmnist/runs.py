"""Run folders: what they hold, and never losing a finished one."""
from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

from advmnist.frozen import MODEL_FILE
from advmnist.errors import InvalidInput


class RunDirError(InvalidInput):
    """The run folder's state does not allow what was asked; the message says what to do."""


def completed_epochs(run_dir: Path) -> int:
    stats = run_dir / "stats.json"
    try:
        return int(json.loads(stats.read_text())[-1]["epoch_num"])
    except (OSError, ValueError, IndexError, KeyError, TypeError):
        return 0


def prepare_run_dir(run_dir: Path, *, resume: bool, overwrite: bool, epochs: int | None = None) -> str | None:
    """Check what ``run_dir`` holds; move it aside on ``overwrite``. Returns a note for the user.

    Raises:
        RunDirError: the folder holds a run that this request would overwrite or cannot continue.
    """
    has_checkpoint = (run_dir / "checkpoint").is_file()
    has_model = (run_dir / MODEL_FILE).is_file()
    if resume:
        if not has_checkpoint:
            raise RunDirError(f"--resume: {run_dir} has no checkpoint to resume from")
        done = completed_epochs(run_dir)
        if epochs is not None and done >= epochs:
            raise RunDirError(f"--resume: {run_dir} has already trained {done} epochs; "
                              f"pass --epochs larger than {done} to train it further")
        return f"resuming {run_dir} after epoch {done}"
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return None
    if overwrite:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        backup = run_dir.with_name(f"{run_dir.name}.old-{stamp}")
        os.replace(run_dir, backup)
        return f"moved the previous run to {backup}"
    if has_model:
        raise RunDirError(f"{run_dir} already holds a trained model ({MODEL_FILE}); pass --run-dir NEW_DIR "
                          "for a new run, --resume to train it further, or --overwrite to move it aside")
    if has_checkpoint:
        raise RunDirError(f"{run_dir} holds an interrupted run (last checkpoint after epoch "
                          f"{completed_epochs(run_dir)}); pass --resume to continue it, "
                          "or --overwrite to move it aside")
    raise RunDirError(f"{run_dir} exists and is not an advmnist run; pass another --run-dir")
