"""``advmnist export``: freeze a run's last checkpoint (again)."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from advmnist.cli.options import Output, data_dir_option, json_option, translate_errors, writable_folder
from advmnist.frozen import DEFAULT_RUN_DIR


@click.command(short_help="Freeze a run's last checkpoint into model.pb.")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
                default=DEFAULT_RUN_DIR, callback=writable_folder)
@data_dir_option
@json_option
@translate_errors
def export(run_dir, data_dir, json_mode) -> None:
    """Freeze RUN_DIR's last checkpoint into model.pb + model.json (dropout off).

    `advmnist train` does this at the end of training; use `export` when that step
    was interrupted, or to re-freeze a run whose model.pb was lost or damaged. The
    test accuracy is measured on the frozen graph. RUN_DIR defaults to runs/cnn.
    """
    from advmnist.data import load_split
    from advmnist.runs import RunDirError, inspect_run, run_dir_lock
    from advmnist.train import freeze_run

    out = Output(json_mode)
    if not inspect_run(run_dir).has_checkpoint:  # before loading anything
        raise RunDirError(f"{run_dir} has no checkpoint to freeze; train it with "
                          f"`advmnist train --run-dir {run_dir}`")
    test_split = load_split("test", data_dir, log=out.say)
    try:
        with run_dir_lock(run_dir):  # not while a training writes its checkpoints
            result = freeze_run(run_dir, test_split)
    except KeyboardInterrupt:
        click.echo(f"\nInterrupted while freezing; run `advmnist export {run_dir}` again.", err=True)
        sys.exit(130)
    out.say(f"froze {run_dir} after {result.epochs} epochs: test accuracy {result.test_accuracy:.2%}; "
            f"model: {result.model}")
    out.result(result.to_dict())
