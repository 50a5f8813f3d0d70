"""A per-image defence: adversarial training in the L-infinity ball, from a trained run or from scratch.

Every training batch is replaced by adversarial examples against the network as it is
at that step, computed inside the training graph (:mod:`advmnist.defences.losses`): by
default Madry et al.'s (2018) PGD, a random start in the ball of radius ``eps`` and
``pgd_steps`` signed steps of ``2.5 * eps / pgd_steps``, the network trained on the
cross-entropy of the examples. Options: Wong et al.'s (2020) FGSM with a random start
(``attack="fgsm-rs"``, one step of 1.25 eps) and its guard against catastrophic
overfitting; Zhang et al.'s (2019) TRADES loss (``loss="trades"``); a linear ramp-up
of eps over the first ``eps_ramp`` epochs; the step size; fresh initial weights
(``from_scratch``). A fraction ``clean_fraction`` of each batch stays clean. Adam,
its learning rate falling by a cosine to 1 % of its start.

After every epoch the clean test accuracy and the robust accuracy of the first
``monitor`` test images under a PGD of the final eps (the training PGD, or with
``fgsm-rs`` a ``pgd_steps``-step one) are logged. Every random draw is keyed by the
seed and the step, so Ctrl-C can keep a resumable state (:func:`train_against_pgd`
with ``resume``) and the resumed run ends with the weights of an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
from pathlib import Path
from typing import Callable

from advmnist.data.mnist import Split
from advmnist.defences.losses import ATTACKS, LOSSES, PGD_STEP_SPAN, default_step_size
from advmnist.errors import InvalidInput
from advmnist.model.training import check_training_options
from advmnist.fileio import display_path
from advmnist.report import figures
from advmnist import fileio

#: The guard's sign of catastrophic overfitting: PGD accuracy falls by more than this (a share of the monitor
#: images) since the last kept epoch while the accuracy under the training FGSM does not fall.
GUARD_DROP = 0.2
#: After a rollback the FGSM step (relative to eps) is multiplied by this.
GUARD_STEP_FACTOR = 0.8


@dataclasses.dataclass(frozen=True)
class PGDTrainingSettings:
    eps: float = 0.1
    epochs: float = 3.0
    batch_size: int = 128
    lr: float = 1e-3
    pgd_steps: int = 7
    clean_fraction: float = 0.0
    monitor: int = 500
    seed: int = 0
    #: training images moved by up to this many pixels before the attack, as ``train`` does
    shift: int = 2
    #: ``auto``, ``fp32`` or ``bf16``, as for ``train``
    precision: str = "auto"
    #: epochs over which eps rises linearly to its value (:func:`advmnist.defences.losses.ramped_eps`); 0: none
    eps_ramp: float = 0.0
    #: the training attack's step relative to eps; None: 2.5 / pgd_steps (pgd) or 1.25 (fgsm-rs)
    step_size: float | None = None
    #: the training attack (:data:`advmnist.defences.losses.ATTACKS`)
    attack: str = "pgd"
    #: the loss (:data:`advmnist.defences.losses.LOSSES`); ``beta`` weighs TRADES's KL term
    loss: str = "pgd"
    beta: float = 6.0
    #: fresh initial weights instead of the run's checkpoint
    from_scratch: bool = False
    #: with fgsm-rs: roll an epoch back (and lower the step) when PGD accuracy collapses while FGSM's does not
    guard: bool = True

    def __post_init__(self):
        if not 0 < self.eps <= 1:
            raise InvalidInput(f"expected 0 < eps <= 1, got {self.eps}")
        if not self.epochs > 0 or self.batch_size < 1 or self.pgd_steps < 1 or not self.lr > 0:
            raise InvalidInput(f"expected epochs, lr > 0 and batch size, PGD steps >= 1, got {self.epochs}, "
                               f"{self.lr}, {self.batch_size}, {self.pgd_steps}")
        if not 0 <= self.clean_fraction < 1:
            raise InvalidInput(f"expected a clean fraction in [0, 1), got {self.clean_fraction}")
        if not 0 <= self.eps_ramp <= self.epochs:
            raise InvalidInput(f"expected an eps ramp of 0 to {self.epochs:g} epochs (the training's), "
                               f"got {self.eps_ramp:g}")
        if self.step_size is not None and not 0 < self.step_size <= 10:
            raise InvalidInput(f"expected a step size (relative to eps) in (0, 10], got {self.step_size}")
        if self.loss not in LOSSES or self.attack not in ATTACKS:
            raise InvalidInput(f"expected a loss in {LOSSES} and an attack in {ATTACKS}, got {self.loss!r} "
                               f"and {self.attack!r}")
        if not self.beta >= 0:
            raise InvalidInput(f"expected beta >= 0, got {self.beta}")
        check_training_options(self.shift, self.precision)

    @property
    def relative_step(self) -> float:
        """The training attack's step relative to eps (at the start: the guard may lower it)."""
        return self.step_size if self.step_size is not None else default_step_size(self.attack, self.pgd_steps)

    @property
    def monitor_step(self) -> float:
        """The step of the monitor's PGD, relative to eps: the training PGD's, or 2.5 / pgd_steps with fgsm-rs."""
        return self.relative_step if self.attack == "pgd" else PGD_STEP_SPAN / self.pgd_steps

    @property
    def guarded(self) -> bool:
        return self.attack == "fgsm-rs" and self.guard

    @property
    def kind(self) -> str:
        """``pgd`` (the default), ``trades``, ``fgsm-rs``, ``trades-fgsm-rs``."""
        return "-".join(name for name in (self.loss if self.loss != "pgd" else "",
                                          self.attack if self.attack != "pgd" else "") if name) or "pgd"

    def file_stem(self) -> str:
        return f"immunize_{self.kind}_eps{self.eps:g}" + ("_scratch" if self.from_scratch else "")

    def default_run_dir(self) -> Path:
        return Path("runs") / (f"cnn-{self.kind}-eps{self.eps:g}" + ("-scratch" if self.from_scratch else ""))


@dataclasses.dataclass
class PGDTrainingResult:
    clean_before: float
    robust_before: float          # on ``monitor`` test images, under the monitor's PGD
    history: list[dict]           # one entry per epoch
    clean_after: float
    robust_after: float
    seconds: float
    step_seconds: float = 0.0     # of ``seconds``, those spent in training steps (not in measurements)
    steps: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class TrainingProgress:
    """What a training has measured and decided so far, beside its variables: saved for ``resume``."""

    clean_before: float | None = None
    robust_before: float | None = None
    history: list[dict] = dataclasses.field(default_factory=list)
    relative_step: float | None = None  # the training attack's step now (the guard lowers it)
    reference: dict | None = None       # the guard's last kept measurement (clean, robust, fgsm accuracy)
    rollbacks: int = 0
    seconds: float = 0.0                # spent before this session
    step_seconds: float = 0.0

    def result(self, seconds: float, steps: int) -> PGDTrainingResult:
        last = self.reference if self.history[-1].get("rolled_back") else self.history[-1]
        return PGDTrainingResult(clean_before=self.clean_before, robust_before=self.robust_before,
                                 history=self.history, clean_after=last["clean_accuracy"],
                                 robust_after=last["robust_accuracy"], seconds=round(seconds, 1),
                                 step_seconds=round(self.step_seconds, 1), steps=steps)


def collapsed(reference: dict | None, robust: float, fgsm: float | None) -> bool:
    """Catastrophic overfitting (Wong et al. 2020): since the last kept epoch the PGD accuracy fell by more than
    :data:`GUARD_DROP` while the accuracy under the training FGSM did not fall."""
    return (reference is not None and fgsm is not None and robust < reference["robust_accuracy"] - GUARD_DROP
            and fgsm >= reference["fgsm_accuracy"])


@contextlib.contextmanager
def interrupts_deferred():
    """Ctrl-C during the block takes effect at its end, so what the block changes changes together."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pressed = []
    previous = signal.signal(signal.SIGINT, lambda *args: pressed.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pressed:
        raise KeyboardInterrupt


class PGDTrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during PGD training: the network as it was is saved in ``saved_to`` (marked interrupted), with
    the state that ``resume`` continues from; ``step`` of ``total`` training steps were done."""

    def __init__(self, saved_to, step: int = 0, total: int = 0):
        super().__init__("PGD training interrupted")
        self.saved_to, self.step, self.total = saved_to, step, total


def train_against_pgd(model, train: Split, test: Split, settings: PGDTrainingSettings, *, out_dir,
                      progress: bool = False, log: Callable[[str], None] = lambda message: None,
                      resume: bool = False) -> PGDTrainingResult:
    """Adversarially train ``model``'s run (or, ``from_scratch``, fresh weights: ``model`` may be None) and save
    the network as a new run in ``out_dir``.

    With ``resume``, continue the interrupted training saved in ``out_dir`` instead (``settings`` must be
    those it was started with; ``model`` is not used).

    Raises:
        PGDTrainingInterrupted: on Ctrl-C, once the network and the resumable state are saved.
    """
    from advmnist.fileio import display_path
    from advmnist.defences.universal_immunization import checkpoint_of
    from advmnist.defences.pgd_trainer import PGDTrainer
    from advmnist.model.runs import (clear_resume_state, read_resume_state, resume_checkpoint, save_resume_state,
                                     save_trained)

    if resume:
        record = read_resume_state(out_dir)
        if record.get("settings") != dataclasses.asdict(settings):
            raise InvalidInput(f"expected the settings the interrupted training in {out_dir} was started with")
        progress_so_far, base_model, checkpoint = (TrainingProgress(**record["progress"]), record["base_model"],
                                                   resume_checkpoint(out_dir))
    else:
        base_model = None if settings.from_scratch else display_path(model.path)
        checkpoint = None if settings.from_scratch else checkpoint_of(model)
        progress_so_far = TrainingProgress(relative_step=settings.relative_step)
    meta = {"immunized_against": "pgd", **{key: value for key, value in dataclasses.asdict(settings).items()
                                           if key not in ("batch_size", "lr", "monitor", "precision")},
            "step_size": settings.relative_step, "base_model": base_model}
    with PGDTrainer(checkpoint, settings, resume=resume) as trainer:
        meta["precision"] = trainer.precision

        def keep(step: int, progress_now: TrainingProgress) -> None:  # after every epoch: a kill loses one at most
            save_resume_state(trainer.state_saver, trainer.sess, out_dir, {
                "step": step, "settings": dataclasses.asdict(settings), "base_model": base_model,
                "progress": dataclasses.asdict(progress_now)})

        try:
            result = trainer.run(train, test, progress_so_far, progress=progress, log=log, keep=keep)
        except KeyboardInterrupt:
            step, total = trainer.step(), trainer.total_steps(train)
            save_resume_state(trainer.state_saver, trainer.sess, out_dir, {
                "step": step, "settings": dataclasses.asdict(settings), "base_model": base_model,
                "progress": dataclasses.asdict(trainer.progress)})
            save_trained(trainer.saver, trainer.sess, out_dir, "model-pgd", interrupted=True, step=step, **meta)
            raise PGDTrainingInterrupted(out_dir, step, total) from None
        save_trained(trainer.saver, trainer.sess, out_dir, "model-pgd", test_accuracy=result.clean_after, **meta)
    clear_resume_state(out_dir)
    return result


# ---------------------------------------------------------------------------- its files and figures

def write_pgd_training(out: Path, stem: str, result, *, run_dir: Path, base_model: Path, settings) -> dict:
    figure = out / f"{stem}.png"
    pgd_training_figure(result, figure, eps=settings.eps)
    record = {**result.to_dict(), "run_dir": display_path(run_dir), "model": display_path(run_dir / "model.pb"),
              "base_model": display_path(base_model) if base_model else None, "figure": display_path(figure),
              "settings": dataclasses.asdict(settings)}
    fileio.write_json(out / f"{stem}.json", record)
    return record


def pgd_training_figure(result, path, *, eps: float) -> None:
    """Clean accuracy and accuracy under the monitor's PGD (and the training FGSM), before and after every epoch."""
    fig, ax = figures.subplots(figsize=(6.0, 3.8))
    epochs = [0.0] + [h["epoch"] for h in result.history]
    ax.plot(epochs, [100 * result.clean_before] + [100 * h["clean_accuracy"] for h in result.history], marker="o",
            label="clean")
    ax.plot(epochs, [100 * result.robust_before] + [100 * h["robust_accuracy"] for h in result.history], marker="o",
            label=f"under PGD (eps {eps:g})")
    if result.history and "fgsm_accuracy" in result.history[0]:
        ax.plot([h["epoch"] for h in result.history], [100 * h["fgsm_accuracy"] for h in result.history],
                marker="x", linestyle=":", label="under the training FGSM")
    ax.set_xlabel("epoch of PGD training")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(-3, 103)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    figures.save_figure(fig, path)
