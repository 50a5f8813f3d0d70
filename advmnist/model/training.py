"""Train the CNN with tensorpack, then freeze it into ``model.pb``.

A run folder holds tensorpack's checkpoints, ``stats.json``, TensorBoard events and
``log.log``, and at the end ``model.pb`` + ``model.json``. An interrupted run resumes
from its last checkpoint (``resume=True``); a finished run is never overwritten.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np

from advmnist.data.mnist import Split
from advmnist.errors import InvalidInput
from advmnist.model.freezing import TENSOR_NAMES, inference_graph_def
from advmnist.fileio import display_path, read_json
from advmnist.model.frozen import META_FILE, MODEL_FILE, FrozenModel
from advmnist.model.network import ACCURACY_NAME, COST_NAME, make_model
from advmnist.model.runs import (RunDirError, check_checkpoint, completed_epochs, mark_run, read_run_file,
                                 reconcile_stats, save_checkpoint, write_frozen)
from advmnist.tfcompat import (PRECISIONS, load_tensorpack, resolve_precision, session_config, tensorpack_logs,
                               tf1, verbose)


SCHEDULES = ("step", "linear")
#: MNIST's digits fit a 20x20 box centred (by mass) in the 28x28 image: about 4 pixels of margin.
MAX_SHIFT = 4


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    epochs: int = 12
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    #: ``step``: ``lr`` divided by 3 at half the epochs and by 10 at three quarters; ``linear``: warm-up from
    #: lr/10 to ``lr`` over the first epoch, then a straight line down to 0 at the last step.
    schedule: str = "step"
    #: ``bf16``: oneDNN's bfloat16 mixed precision on the CPU (:func:`advmnist.tfcompat.session_config`);
    #: ``auto``: bf16 on a CPU with native bfloat16, else fp32 (:func:`advmnist.tfcompat.resolve_precision`).
    precision: str = "auto"
    #: Towers of tensorpack's data-parallel trainer, one per GPU: each takes ``batch_size`` images per step.
    gpus: int = 1
    #: Decay of the moving average of the weights that is frozen into model.pb (0: the weights themselves).
    average_decay: float = 0.0
    #: Data augmentation: each training image moved by up to this many pixels across and up or down (0: off,
    #: the reference's recipe). 2 took five seeds from a median of 99.24 % to 99.35 % at no cost per epoch.
    shift: int = 2

    def __post_init__(self):
        if self.schedule not in SCHEDULES or self.precision not in PRECISIONS:
            raise InvalidInput(f"expected a schedule in {SCHEDULES} and a precision in {PRECISIONS}, got "
                               f"{self.schedule!r} and {self.precision!r}")
        if self.gpus < 1 or not 0 <= self.average_decay < 1 or not 0 <= self.shift <= MAX_SHIFT:
            raise InvalidInput(f"expected gpus >= 1, 0 <= average_decay < 1 and 0 <= shift <= {MAX_SHIFT}, got "
                               f"{self.gpus}, {self.average_decay} and {self.shift}")


@dataclasses.dataclass
class TrainResult:
    run_dir: str
    model: str
    test_accuracy: float
    epochs: int
    seed: int
    seconds: float
    history: list

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def lr_schedule(settings: TrainSettings) -> list[tuple[int, float]]:
    """``step``: Adam at ``lr``, divided by 3 at half the epochs and by 10 at three quarters (by epoch)."""
    half, late = math.ceil(settings.epochs * 0.5) + 1, math.ceil(settings.epochs * 0.75) + 1
    return [(1, settings.lr), (half, settings.lr / 3), (late, settings.lr / 10)]


def lr_setter(settings: TrainSettings, steps_per_epoch: int):
    """The tensorpack callback that sets the learning rate of ``settings.schedule``."""
    load_tensorpack()
    from tensorpack import ScheduledHyperParamSetter

    if settings.schedule == "step":
        return ScheduledHyperParamSetter("learning_rate", lr_schedule(settings))
    if settings.schedule == "linear":  # set at every step, interpolated between these (step, value) points
        last = steps_per_epoch * settings.epochs
        points = [(0, settings.lr / 10), (steps_per_epoch, settings.lr), (last, 0.0)]
        return ScheduledHyperParamSetter("learning_rate", points, interp="linear", step_based=True)
    raise InvalidInput(f"expected a schedule in {SCHEDULES}, got {settings.schedule!r}")


def shifted(images: np.ndarray, shift: int, rng: np.random.RandomState) -> np.ndarray:
    """``images`` (N, H, W), each moved by its own random offset of up to ``shift`` pixels
    across and up or down (uniform over -shift..shift); what moves out is lost, what comes in is 0."""
    n, height, width = images.shape
    padded = np.pad(images, ((0, 0), (shift, shift), (shift, shift)))
    down, across = rng.randint(-shift, shift + 1, size=(2, n))
    rows = (shift - down)[:, None] + np.arange(height)
    cols = (shift - across)[:, None] + np.arange(width)
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def batches(images: np.ndarray, labels: np.ndarray, batch_size: int, *, seed: int | None, shift: int = 0):
    """A tensorpack DataFlow of whole batches cut from in-memory arrays.

    Gathering a batch with one fancy-index is far cheaper than tensorpack's per-sample
    ``BatchData``; ``seed=None`` means no shuffling and a final partial batch. ``shift``
    moves every image of a batch by a random offset (:func:`shifted`), drawn from a
    stream of its own: the order of the images is the same with and without it.
    """
    load_tensorpack()
    from tensorpack.dataflow import DataFlow

    class ArrayBatches(DataFlow):
        def __init__(self):
            self.rng = np.random.RandomState(seed if seed is not None else 0)
            self.shift_rng = np.random.RandomState([seed if seed is not None else 0, 1])
            self.full = len(images) // batch_size

        def __len__(self):
            return self.full if seed is not None else math.ceil(len(images) / batch_size)

        def __iter__(self):
            order = self.rng.permutation(len(images)) if seed is not None else np.arange(len(images))
            for i in range(len(self)):
                index = np.sort(order[i * batch_size:(i + 1) * batch_size])
                batch = shifted(images[index], shift, self.shift_rng) if shift else images[index]
                yield [batch, labels[index].astype(np.int32)]

    return ArrayBatches()


def train(train_split: Split, test_split: Split, run_dir: os.PathLike | str, settings: TrainSettings, *,
          resume: bool = False, steps_per_epoch: int | None = None, callbacks: tuple = (),
          log: Callable[[str], None] = lambda message: None, progress: bool = True) -> TrainResult:
    """Train with tensorpack's ``SimpleTrainer`` (``SyncMultiGPUTrainerReplicated`` with ``gpus`` > 1);
    freeze the final weights to ``run_dir/model.pb``.

    With ``gpus`` > 1 the towers go to ``/gpu:0``, ``/gpu:1``, ...; on a machine with
    fewer GPUs TensorFlow places them on the CPU (soft placement), which is how the tests
    run this path.

    Validation on ``test_split`` runs after every epoch (``validation_accuracy`` in
    ``stats.json``). ``steps_per_epoch`` shortens epochs (tests only); ``callbacks`` are
    extra tensorpack callbacks; ``log`` gets one line per epoch; ``progress``: tensorpack's progress bars (an
    epoch's steps, its validation). With ``resume``, a run whose checkpoints already cover
    ``settings.epochs`` is only frozen; a run with no checkpoint yet starts from scratch.
    """
    tf = tf1()
    load_tensorpack()
    from tensorpack import SimpleTrainer, SyncMultiGPUTrainerReplicated, launch_train_with_config
    from tensorpack.utils import logger

    run_dir = Path(run_dir)
    started = time.time()
    precision, why = resolve_precision(settings.precision, gpus=None if settings.gpus == 1 else settings.gpus)
    settings = dataclasses.replace(settings, precision=precision)  # run.json and model.json record the choice
    if resume and (run_dir / "checkpoint").is_file():  # before anything is written into the run
        check_checkpoint(tf.train.latest_checkpoint(str(run_dir)), run_dir)
    tf.reset_default_graph()
    tf.set_random_seed(settings.seed)
    logger.set_logger_dir(str(run_dir), action="k")
    tensorpack_logs(verbose())
    flow = batches(train_split.images, train_split.labels, settings.batch_size, seed=settings.seed,
                   shift=settings.shift)
    # with several towers a step takes one batch per tower: an epoch stays one pass over the images
    steps_per_epoch = steps_per_epoch or max(1, len(flow) // settings.gpus)
    if resume and (run_dir / "checkpoint").is_file():
        reconcile_stats(run_dir)  # tensorpack then starts right after the last checkpoint's epoch
    else:
        mark_run(run_dir, {**dataclasses.asdict(settings), "steps_per_epoch": steps_per_epoch})
    config = _train_config(settings, flow, test_split, steps_per_epoch, resume, callbacks, log, progress)
    if config.starting_epoch <= settings.epochs:
        # replicated: a copy of the network per tower, gradients averaged over the towers at every step
        trainer = SimpleTrainer() if settings.gpus == 1 else SyncMultiGPUTrainerReplicated(settings.gpus)
        with _validation_bar(progress):
            launch_train_with_config(config, trainer)
    return freeze_run(run_dir, test_split, settings, started=started)


@contextlib.contextmanager
def _validation_bar(shown: bool):
    """tensorpack's InferenceRunner draws a tqdm bar with options from its module's ``get_tqdm_kwargs`` and no
    way to turn it off: while ``shown`` is false, those options disable it."""
    import tensorpack.callbacks.inference_runner as runner

    real = runner.get_tqdm_kwargs
    if not shown:
        runner.get_tqdm_kwargs = lambda **kwargs: {**real(**kwargs), "disable": True}
    try:
        yield
    finally:
        runner.get_tqdm_kwargs = real


def _train_config(settings: TrainSettings, flow, test_split: Split, steps_per_epoch: int, resume: bool,
                  callbacks: tuple, log, progress: bool = True):
    """tensorpack's config: the model, the batches, checkpoints, validation after every epoch, the learning
    rate, one log line per epoch (and, with ``progress``, tensorpack's progress bar); resumed from the run's last
    checkpoint when there is one."""
    tf = tf1()
    from tensorpack import AutoResumeTrainConfig, InferenceRunner, ProgressBar, QueueInput, ScalarStats
    from tensorpack.tfutils.sesscreate import NewSessionCreator
    from tensorpack.train.config import DEFAULT_CALLBACKS

    return AutoResumeTrainConfig(
        always_resume=resume,
        model=make_model(settings.lr, settings.average_decay),
        data=QueueInput(flow),
        callbacks=[
            checkpoint_saver(max_to_keep=3, keep_checkpoint_every_n_hours=1000),
            InferenceRunner(batches(test_split.images, test_split.labels, 500, seed=None),
                            [ScalarStats([COST_NAME, ACCURACY_NAME])]),
            lr_setter(settings, steps_per_epoch),
            epoch_line(settings.epochs, log),
            *callbacks,
        ],
        extra_callbacks=[c for c in DEFAULT_CALLBACKS() if progress or not isinstance(c, ProgressBar)],
        session_creator=NewSessionCreator(config=session_config(tf, bfloat16=settings.precision == "bf16")),
        steps_per_epoch=steps_per_epoch,
        max_epoch=settings.epochs,
    )


def checkpoint_saver(**kwargs):
    """tensorpack's ModelSaver, but a checkpoint that cannot be written (a full disk) stops the training with
    an OSError naming the folder, instead of a logged traceback and an epoch that leaves nothing to resume
    from; the temporary files of the failed write are removed."""
    tf = tf1()
    from tensorpack import ModelSaver

    class CheckpointSaver(ModelSaver):
        def _trigger(self):
            save_checkpoint(self.saver, tf.get_default_session(), self.path,
                            f"the checkpoint of epoch {self.epoch_num}",
                            "the earlier epochs' checkpoints are kept: free some space and continue with --resume",
                            global_step=tf.train.get_global_step())

    return CheckpointSaver(**kwargs)


def epoch_line(epochs: int, log: Callable[[str], None]):
    """A tensorpack callback that logs each epoch's validation (after the validation ran) and its time."""
    from tensorpack import Callback

    class EpochLine(Callback):
        def _before_epoch(self):
            self.started = time.time()

        def _trigger_epoch(self):
            monitors = self.trainer.monitors
            accuracy = monitors.get_latest(f"validation_{ACCURACY_NAME}")
            loss = monitors.get_latest(f"validation_{COST_NAME}")
            log(f"epoch {self.epoch_num}/{epochs}: validation accuracy {accuracy:.2%}, loss {loss:.4f} "
                f"({time.time() - self.started:.0f} s)")

    return EpochLine()


def freeze_run(run_dir: os.PathLike | str, test_split: Split, settings: TrainSettings | None = None, *,
               started: float | None = None) -> TrainResult:
    """Freeze ``run_dir``'s last checkpoint into ``model.pb`` + ``model.json`` (dropout off).

    The test accuracy is measured on the frozen graph. What an earlier ``model.json``
    recorded besides the graph (e.g. what an immunized network was immunized against)
    is kept; a training run's settings and epochs come from ``settings``, else from the
    ``run.json`` it recorded when it started.
    """
    tf = tf1()
    run_dir = Path(run_dir)
    started = time.time() if started is None else started
    checkpoint = tf.train.latest_checkpoint(str(run_dir))
    if checkpoint is None:
        raise RunDirError(f"{run_dir} has no checkpoint to freeze; train it with `advmnist train --run-dir {run_dir}`")
    meta = {key: value for key, value in read_json(run_dir / META_FILE).items() if key not in DERIVED_META}
    if settings is None and read_run_file(run_dir):
        settings = TrainSettings(**{k: v for k, v in read_run_file(run_dir).items() if k in TRAIN_FIELDS})
    if settings is not None:  # a training run: its settings and the epochs it has done
        meta.update(epochs=completed_epochs(run_dir), seed=settings.seed, batch_size=settings.batch_size,
                    lr=settings.lr, schedule=settings.schedule, gpus=settings.gpus, precision=settings.precision,
                    average_decay=settings.average_decay, shift=settings.shift)
    stats = read_json(run_dir / "stats.json", list)
    history = [{"epoch": s["epoch_num"], "validation_accuracy": s.get(f"validation_{ACCURACY_NAME}"),
                "validation_loss": s.get(f"validation_{COST_NAME}")} for s in stats]
    check_checkpoint(checkpoint, run_dir)
    graph_def = inference_graph_def(checkpoint)
    accuracy = frozen_accuracy(graph_def, test_split, run_dir)
    if settings is not None and settings.average_decay:  # the same checkpoint without the average, for comparison
        meta.update(test_accuracy_weights=frozen_accuracy(inference_graph_def(checkpoint, averaged=False),
                                                          test_split, run_dir))
    write_frozen(graph_def, run_dir, checkpoint, test_accuracy=accuracy, **meta)
    return TrainResult(run_dir=display_path(run_dir), model=display_path(run_dir / MODEL_FILE), test_accuracy=accuracy,
                       epochs=meta.get("epochs", 0), seed=meta.get("seed"), seconds=round(time.time() - started, 1),
                       history=history)


def frozen_accuracy(graph_def, split: Split, run_dir: Path) -> float:
    frozen = FrozenModel(graph_def, TENSOR_NAMES, run_dir / MODEL_FILE)
    return float(np.mean(frozen.predict_proba(split.images).argmax(1) == split.labels))


#: What ``write_frozen`` derives anew at every freeze; everything else in model.json is kept.
DERIVED_META = ("input", "logits", "prob", "model_sha256", "input_shape", "input_range", "checkpoint", "versions",
                "created", "test_accuracy", "test_accuracy_weights")
TRAIN_FIELDS = tuple(f.name for f in dataclasses.fields(TrainSettings))


class Augmenter:
    """``shift`` > 0: each batch's images moved by random offsets (:func:`advmnist.model.training.shifted`) from a
    stream of their own (seeded by ``seed``), so the other random draws of a run are those it makes without it."""

    def __init__(self, shift: int, seed: int):
        self.shift = shift
        self.rng = np.random.RandomState([seed, 1])

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return shifted(images, self.shift, self.rng) if self.shift else images


def check_training_options(shift: int, precision: str) -> None:
    """The options every training loop shares with ``train``: ``shift`` and ``precision``."""
    if not 0 <= shift <= MAX_SHIFT or precision not in PRECISIONS:
        raise InvalidInput(f"expected 0 <= shift <= {MAX_SHIFT} and a precision in {PRECISIONS}, got {shift} "
                           f"and {precision!r}")
