"""``advmnist export``: freeze a run's last checkpoint (again), or write its model for other tools."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from advmnist.cli.options import (Output, data_dir_option, json_option, load_model, no_verify_option,
                                  take_renamed, translate_errors, writable_folder)
from advmnist.model.frozen import DEFAULT_RUN_DIR

FORMATS = ("pb", "savedmodel", "onnx")
DEFAULT_NAMES = {"savedmodel": "savedmodel", "onnx": "model.onnx"}


@click.command(short_help="Freeze a run's last checkpoint into model.pb, or write it as a SavedModel / ONNX.")
@click.option("--run-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              callback=writable_folder, help="The run folder.  [default: runs/cnn]")
@click.argument("old_run_dir", required=False, metavar="", type=click.Path(exists=True, file_okay=False,
                                                                         path_type=Path), callback=writable_folder)
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="pb", show_default=True,
              help="pb: freeze the last checkpoint into RUN_DIR/model.pb (again). savedmodel: write RUN_DIR's "
                   "model.pb as a TensorFlow SavedModel; onnx: as an ONNX file (`pip install 'advmnist[onnx]'`).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="With --format savedmodel or onnx: a new path for it.  [default: RUN_DIR/savedmodel, "
                   "RUN_DIR/model.onnx]")
@no_verify_option
@data_dir_option
@json_option
@translate_errors
def export(run_dir, old_run_dir, fmt, out, no_verify, data_dir, json_mode) -> None:
    """Freeze RUN_DIR's last checkpoint into model.pb + model.json (dropout off), or export its model.

    `advmnist train` does this at the end of training; use `export` when that step
    was interrupted, or to re-freeze a run whose model.pb was lost or damaged. The
    test accuracy is measured on the frozen graph. RUN_DIR defaults to runs/cnn.

    With --format savedmodel or onnx, RUN_DIR's model.pb (any run: trained,
    immunized, PGD-trained or imported) is written for other tools, in a separate
    process: a SavedModel whose serving_default signature takes `image`, float32
    (N, 28, 28) in [0, 1], and returns `logits` and `probabilities`; or an ONNX file
    with the same input and outputs. The written model is loaded again and must give
    the probabilities of model.pb on 32 check images.
    """
    run_dir = take_renamed(run_dir, old_run_dir, "export", "RUN_DIR", "--run-dir RUN_DIR",
                           "as in train and immunize") or DEFAULT_RUN_DIR
    if not run_dir.is_dir():
        raise click.BadParameter(f"expected a run folder, {run_dir} is not one", param_hint="--run-dir")
    if fmt != "pb":
        return _export_for_others(run_dir, fmt, out, no_verify, json_mode)
    if out is not None:
        raise click.BadParameter("--out only applies to --format savedmodel or onnx (model.pb is written "
                                 "in RUN_DIR)", param_hint="--out")
    from advmnist.data.mnist import load_split
    from advmnist.model.runs import RunDirError, inspect_run, run_dir_lock
    from advmnist.model.training import freeze_run

    output = Output(json_mode)
    if not inspect_run(run_dir).has_checkpoint:  # before loading anything
        raise RunDirError(f"{run_dir} has no checkpoint to freeze; train it with "
                          f"`advmnist train --run-dir {run_dir}`")
    test_split = load_split("test", data_dir, log=output.say)
    try:
        with run_dir_lock(run_dir):  # not while a training writes its checkpoints
            result = freeze_run(run_dir, test_split)
    except KeyboardInterrupt:
        click.echo(f"\nInterrupted while freezing; run `advmnist export --run-dir {run_dir}` again.", err=True)
        sys.exit(130)
    output.say(f"froze {run_dir} after {result.epochs} epochs: test accuracy {result.test_accuracy:.2%}; "
               f"model: {result.model}")
    output.result(result.to_dict())


def _export_for_others(run_dir: Path, fmt: str, out: Path | None, no_verify: bool, json_mode: bool) -> None:
    from advmnist.fileio import display_path
    from advmnist.model.frozen import META_FILE
    from advmnist.interop.importing import export_model

    output = Output(json_mode)
    out = out if out is not None else run_dir / DEFAULT_NAMES[fmt]
    if out.exists():
        raise click.BadParameter(f"expected a new path for the exported model, {out} exists", param_hint="--out")
    model = load_model(run_dir, no_verify, output)
    report = export_model(model.path, model.path.with_name(META_FILE), fmt, out)
    output.say(f"wrote {out} ({report['writer']}); it gives the probabilities of {display_path(model.path)} "
               f"to within {report['largest_difference']:.2g} on 32 check images")
    output.result({"model": display_path(model.path), "format": fmt, "out": display_path(out), **report})
