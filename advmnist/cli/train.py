"""``advmnist train``: train the CNN with tensorpack and freeze it."""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import click

from advmnist.cli.options import (SEED_RANGE, Output, config_option, data_dir_option, finite, json_option,
                                  progress_enabled, translate_errors, writable_folder)
from advmnist.model.frozen import DEFAULT_RUN_DIR
from advmnist.tfcompat import PRECISIONS, resolve_precision
from advmnist.model.training import MAX_SHIFT, SCHEDULES, TrainSettings

DEFAULTS = TrainSettings()
RESUMABLE = "{}; with --resume, the run's own"


@click.command(short_help="Train the CNN with tensorpack, freeze it.")
@config_option()
@click.option("--epochs", type=click.IntRange(1, 1000), default=None, show_default=RESUMABLE.format(DEFAULTS.epochs),
              help="Epochs over the 60,000 training images.")
@click.option("--batch-size", type=click.IntRange(1, 60000), default=None,
              show_default=RESUMABLE.format(DEFAULTS.batch_size), help="Images per training step.")
@click.option("--lr", type=click.FloatRange(0, 1, min_open=True), callback=finite, default=None,
              show_default=RESUMABLE.format(DEFAULTS.lr),
              help="Adam's (peak) learning rate; see --schedule.")
@click.option("--schedule", type=click.Choice(SCHEDULES), default=None,
              show_default=RESUMABLE.format(DEFAULTS.schedule),
              help="step: --lr, divided by 3 at half the epochs and by 10 at three quarters; linear: warm-up "
                   "from --lr/10 to --lr over the first epoch, then a straight line down to 0 at the end.")
@click.option("--average-decay", type=click.FloatRange(0, 1, max_open=True), callback=finite, default=None,
              show_default=RESUMABLE.format(DEFAULTS.average_decay),
              help="model.pb gets a moving average of the weights with this decay per step (0: the weights "
                   "themselves); model.json records the test accuracy of both.")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              show_default=RESUMABLE.format(DEFAULTS.precision),
              help="bf16: oneDNN's bfloat16 mixed precision for convolutions and matrix products (variables stay "
                   "float32): 2.6x faster on CPUs with AVX-512 BF16 or AMX, slower elsewhere. auto: bf16 on such "
                   "a CPU without a GPU, else fp32; the choice is printed and recorded in model.json.")
@click.option("--shift", type=click.IntRange(0, MAX_SHIFT), metavar="N", default=None,
              show_default=RESUMABLE.format(DEFAULTS.shift),
              help="Data augmentation: move each training image by a random offset of up to N pixels across and up "
                   "or down, anew every epoch. 2 gains about 0.1 point of test accuracy at no cost per epoch; 0 is "
                   "the reference experiment's recipe (no augmentation).")
@click.option("--gpus", type=click.IntRange(1, 64), default=None, show_default=RESUMABLE.format(DEFAULTS.gpus),
              help="Train on N GPUs with tensorpack's replicated data-parallel trainer: each GPU takes --batch-size "
                   "images per step and the gradients are averaged (an epoch is still one pass over the images).")
@click.option("--seed", type=SEED_RANGE, default=None, show_default=RESUMABLE.format(DEFAULTS.seed),
              help="Seeds the initial weights, dropout, the order of the training images and their --shift.")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_RUN_DIR,
              show_default=True, callback=writable_folder,
              help="Where checkpoints, logs and model.pb go; `attack` looks here by default.")
@click.option("--resume", is_flag=True,
              help="Continue the run in --run-dir from its last checkpoint (from scratch if it was interrupted "
                   "before the first one; only freeze it if its epochs are done).")
@click.option("--overwrite", is_flag=True, help="Move an existing run in --run-dir aside (RUN_DIR.old-TIME).")
@data_dir_option
@json_option
@translate_errors
def train(epochs, batch_size, lr, schedule, average_decay, precision, shift, gpus, seed, run_dir, resume, overwrite,
          data_dir, json_mode) -> None:
    """Train the CNN with tensorpack and freeze it into RUN_DIR/model.pb.

    The network: conv 32 3x3, conv 64 3x3, max-pool 2, dropout 0.25, dense 128,
    dropout 0.5, dense 10. Validation accuracy on the 10,000 test images is shown
    after every epoch; stats.json and TensorBoard events go to RUN_DIR. At the end the
    weights are frozen into model.pb (dropout removed) with model.json beside it.

    A run never overwrites a finished model: use a new --run-dir, --resume or --overwrite.
    Ctrl-C keeps the checkpoints of the finished epochs and says how to go on.
    """
    from advmnist.data.mnist import load_train_test
    from advmnist.model.runs import interrupt_message, prepare_run_dir, read_run_file, run_dir_lock
    from advmnist.model import training

    out = Output(json_mode)
    if resume and overwrite:
        raise click.UsageError("--resume and --overwrite exclude each other")
    # what the command line leaves open: the run's own settings when resuming, else the defaults
    recorded = read_run_file(run_dir) if resume else {}
    given = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "schedule": schedule,
             "average_decay": average_decay, "precision": precision, "shift": shift, "gpus": gpus, "seed": seed}
    settings = TrainSettings(**{name: value if value is not None else recorded.get(name, getattr(DEFAULTS, name))
                                for name, value in given.items()})
    epochs = settings.epochs
    if settings.gpus > 1:
        check_gpus(settings.gpus)
    precision, why = resolve_precision(settings.precision, gpus=None if settings.gpus == 1 else settings.gpus)
    settings = dataclasses.replace(settings, precision=precision)
    out.say(f"precision: {precision} ({why})")
    with run_dir_lock(run_dir):  # a second process on the same folder is refused until this one ends
        train_split, test_split = load_train_test(data_dir, out.say)
        note = prepare_run_dir(run_dir, resume=resume, overwrite=overwrite, epochs=epochs)
        if note:
            out.say(note)
        try:
            result = training.train(train_split, test_split, run_dir, settings, resume=resume, log=out.say,
                                    progress=progress_enabled())
        except KeyboardInterrupt:
            click.echo("\n" + interrupt_message(run_dir, epochs), err=True)
            sys.exit(130)
    out.say(f"test accuracy {result.test_accuracy:.2%} after {result.epochs} epochs "
            f"({result.seconds:.0f} s); frozen model: {result.model}")
    out.result(result.to_dict())


def check_gpus(wanted: int) -> None:
    """--gpus N needs N GPUs that TensorFlow sees."""
    from advmnist.tfcompat import tf1

    found = len(tf1().config.list_physical_devices("GPU"))
    if found < wanted:
        raise click.BadParameter(f"expected at most as many as the GPUs TensorFlow sees here, {found}; got {wanted} "
                                 "(check with `nvidia-smi` and `advmnist --verbose train`, which logs the devices "
                                 "TensorFlow found)", param_hint="--gpus")
