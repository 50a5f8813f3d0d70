"""Immunize the network against universal noise by adversarial training.

Rounds of: (a) optimize a universal noise for a target against the *current* network
(:class:`advmnist.attacks.UniversalNoiseGraph`, the same mechanism as ``advmnist universal``);
(b) train the network's variables (restored from the run's checkpoint, dropout on) on
training images with that noise and their true labels, mixing in clean images.
After every round the network is measured on the test set: clean, under the noise it
was just trained against, and under a freshly optimized noise (the honest measure).
"""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np

from advmnist.attacks import UniversalNoiseGraph
from advmnist.attacks.base import progress_bar
from advmnist.data.mnist import IMAGE_SIZE, Split
from advmnist.errors import InvalidInput
from advmnist.fileio import display_path
from advmnist.model.frozen import DEFAULT_RUN_DIR, FrozenModel
from advmnist.model.network import cnn_logits, network_variables
from advmnist.tfcompat import resolve_precision, session_config, tf1
from advmnist.model.training import Augmenter, check_training_options
from advmnist.experiments.universal import NoiseEffect, UniversalSettings, target_classes, noise_effect

SCHEDULES = ("sequential", "interleaved")


@dataclasses.dataclass(frozen=True)
class ImmunizeSettings:
    rounds: int = 2
    train_steps: int = 1000
    train_batch_size: int = 64
    train_lr: float = 1e-4
    clean_fraction: float = 0.5
    schedule: str = "interleaved"
    refresh_every: int = 100
    refresh_steps: int = 50
    replay: bool = True
    noise: UniversalSettings = UniversalSettings()
    #: training images moved by up to this many pixels (:func:`advmnist.model.training.shifted`), as ``train`` does
    shift: int = 2
    #: ``auto``, ``fp32`` or ``bf16``, as for ``train`` (:func:`advmnist.tfcompat.resolve_precision`)
    precision: str = "auto"

    @property
    def seed(self) -> int:
        """The one seed of a run: the universal noise settings' (noises, batches and dropout)."""
        return self.noise.seed

    def file_stem(self, target: str) -> str:
        """What distinguishes runs: ``immunize_3_rounds2``, ``immunize_all_interleaved_rounds4``;
        ``_fixed`` without refresh (the reference's recipe), ``_noreplay`` without replay."""
        name = f"immunize_{target}" + (f"_{self.schedule}" if target == "all" else "") + f"_rounds{self.rounds}"
        fixed = not (self.refresh_every and self.refresh_steps)  # no refresh happens during training
        return name + ("_fixed" if fixed else "") + ("" if self.replay else "_noreplay")

    def default_run_dir(self, target: str) -> Path:
        """``runs/cnn-immune-3``, ``runs/cnn-immune-all-interleaved``."""
        return DEFAULT_RUN_DIR.with_name(f"cnn-immune-{target}" + (f"-{self.schedule}" if target == "all" else ""))

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise InvalidInput(f"expected schedule in {SCHEDULES}, got {self.schedule!r}")
        if not 0 <= self.clean_fraction < 1:
            raise InvalidInput(f"expected a clean fraction in [0, 1), got {self.clean_fraction}")
        if self.rounds < 1 or self.train_steps < 0:
            raise InvalidInput(f"expected rounds >= 1 and train steps >= 0, got {self.rounds}, {self.train_steps}")
        check_training_options(self.shift, self.precision)
        if self.refresh_every < 0 or self.refresh_steps < 0:
            raise InvalidInput(f"expected refresh_every and refresh_steps >= 0, got "
                               f"{self.refresh_every}, {self.refresh_steps}")


@dataclasses.dataclass
class ImmunizeResult:
    targets: list[int]
    before: dict          # target -> accuracy under fresh noise, original network
    after: dict           # target -> accuracy under fresh noise, immunized network
    clean_before: float
    clean_after: float
    history: list[dict]   # one entry per (round, target) training phase
    after_own_training: dict  # target -> fresh-noise accuracy right after its last training phase
    final_noise: np.ndarray   # (T, 28, 28) fresh noises against the final network
    seconds: float
    given_before: dict = dataclasses.field(default_factory=dict)  # target -> accuracy under a given noise
    given_after: dict = dataclasses.field(default_factory=dict)

    @property
    def lost(self) -> dict:
        """Accuracy under fresh noise lost since the target's own training (> 0: immunity faded)."""
        return {t: self.after_own_training[t] - self.after[t] for t in self.targets}

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data.pop("final_noise")
        data["lost_since_own_training"] = self.lost
        return data


class ImmunizeInterrupted(KeyboardInterrupt):
    """Ctrl-C once training had begun: what was done is kept.

    ``history`` holds the finished phases (as in :class:`ImmunizeResult`); ``phase`` the
    (round, target) cut short (None if every phase had finished and the final
    measurements were running). When the run had an ``out_dir``, the network as it was
    when stopped is saved there (``saved_to``), its ``model.json`` marked ``interrupted``.
    """

    def __init__(self, *, targets: list[int], before: dict, clean_before: float, history: list[dict],
                 phase: tuple[int, int] | None, seconds: float):
        super().__init__(f"immunization interrupted after {len(history)} finished phase(s)")
        self.targets, self.before, self.clean_before = targets, before, clean_before
        self.history, self.phase, self.seconds = history, phase, seconds
        self.saved_to: Path | None = None

    @property
    def interrupted_in(self) -> dict | None:
        """The phase cut short as {"round": r, "target": t}, or None."""
        return dict(zip(("round", "target"), self.phase)) if self.phase else None

    def to_dict(self) -> dict:
        return {"interrupted": True, "targets": self.targets, "before": self.before,
                "clean_before": self.clean_before, "history": self.history,
                "interrupted_in": self.interrupted_in, "seconds": self.seconds,
                "run_dir": display_path(self.saved_to) if self.saved_to else None}


def checkpoint_of(model: FrozenModel) -> str:
    """The training checkpoint of ``model``'s run (immunize trains variables, not constants)."""
    checkpoint = model.meta.get("checkpoint")
    if not checkpoint:
        raise InvalidInput(f"{model.path.with_name('model.json')} names no checkpoint; immunize needs the "
                           "run folder of `advmnist train` (its checkpoint, not only model.pb)")
    path = model.path.parent / checkpoint
    if not Path(f"{path}.index").is_file():
        raise InvalidInput(f"checkpoint {path} is missing: immunize trains the network from the checkpoint "
                           "of the run, not from model.pb")
    return str(path)


class RestoredNetwork:
    """Base of the trainers: a session on ``self.graph`` with the run's network restored; a context manager."""

    graph = None
    sess = None

    def _open_session(self, init, restore, checkpoint: str | None, precision: str) -> None:
        """Finalize the graph, open its session (``precision`` as ``train`` takes it), initialize every variable,
        then restore the network's (``restore`` None: keep the initial weights)."""
        tf = tf1()
        self.graph.finalize()
        self.precision = resolve_precision(precision)[0]
        self.sess = tf.Session(graph=self.graph, config=session_config(tf, bfloat16=self.precision == "bf16"))
        try:
            self.sess.run(init)
            if restore is not None:
                restore.restore(self.sess, checkpoint)
        except BaseException:
            self.sess.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.sess.close()


class AdversarialTrainer(RestoredNetwork):
    """The network of a training run, in a session, with a universal-noise adversary beside it.

    Built from a checkpoint: the CNN's variables (:data:`advmnist.model.network.LAYER_SCOPES`)
    are restored and then trained with Adam (``settings.train_lr``, dropout on) on
    batches where most images carry the adversary's noise. One seed
    (``settings.seed``) drives everything drawn at random. Use as a context manager;
    :meth:`run` plays a whole schedule, the other methods are its steps.
    """

    def __init__(self, checkpoint: str, test: Split, train: Split, settings: ImmunizeSettings, *,
                 progress: bool = False, log: Callable[[str], None] = lambda message: None):
        tf = tf1()
        self.settings, self.train, self.test = settings, train, test
        self.progress, self.log = progress, log
        self.rng = np.random.default_rng(settings.seed)
        self.augment = Augmenter(settings.shift, settings.seed)
        self.graph = tf.Graph()
        noise = settings.noise
        with self.graph.as_default():
            tf.set_random_seed(settings.seed)
            with tf.variable_scope(tf.get_variable_scope(), reuse=tf.AUTO_REUSE):
                self.adversary = UniversalNoiseGraph(lambda x: cnn_logits(x, training=False),
                                                     noise_limit=noise.noise_limit, l2_weight=noise.l2_weight,
                                                     lr=noise.lr, batch_size=noise.batch_size)
                network_vars = network_variables(tf.global_variables())
                self.images = tf.placeholder(tf.float32, (None, IMAGE_SIZE, IMAGE_SIZE))
                self.labels = tf.placeholder(tf.int32, (None,))
                self.noise_batch = tf.placeholder(tf.float32, (None, IMAGE_SIZE, IMAGE_SIZE))  # zeros: clean
                logits = cnn_logits(tf.clip_by_value(self.images + self.noise_batch, 0.0, 1.0), training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=self.labels, logits=logits))
            self.train_step = tf.train.AdamOptimizer(settings.train_lr).minimize(loss, var_list=network_vars)
            restore = tf.train.Saver(network_vars)
            #: what the run layer saves (advmnist.model.runs.save_trained): the network's variables only
            self.saver = tf.train.Saver(network_vars, max_to_keep=1)
            init = tf.global_variables_initializer()
        self._open_session(init, restore, checkpoint, settings.precision)

    # ------------------------------------------------------------------ measurements

    def measure(self, noise: np.ndarray, target: int) -> NoiseEffect:
        """The effect of ``noise`` on the test set, for the network as it is now."""
        return noise_effect(self.adversary.predict(self.sess, self.test.images, noise), self.test.labels, target)

    def clean_accuracy(self) -> float:
        zero = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.float32)
        return float((self.adversary.predict(self.sess, self.test.images, zero) == self.test.labels).mean())

    def optimize_noise(self, target: int, *, steps: int, initial: np.ndarray | None = None,
                       progress: bool = False) -> np.ndarray:
        return self.adversary.optimize(self.sess, self.train.images, target, steps=steps,
                                       seed=int(self.rng.integers(2**31)), initial=initial, progress=progress)

    def fresh_noise(self, target: int) -> tuple[np.ndarray, NoiseEffect]:
        """A noise optimized from scratch against the current network, and its effect: the honest measure."""
        noise = self.optimize_noise(target, steps=self.settings.noise.steps, progress=self.progress)
        return noise, self.measure(noise, target)

    # ------------------------------------------------------------------ training

    def train_phase(self, target: int, noise: np.ndarray, pool: dict, scope: list[int],
                    description: str) -> np.ndarray:
        """``settings.train_steps`` network steps against ``target``'s noise; returns the noise it ended with.

        Every ``refresh_every`` steps the noise is re-optimized (``refresh_steps``) from
        where it was: the adversary keeps up with the network. Each new noise joins
        ``pool[target]``, from which replay draws earlier noises of the targets in ``scope``.
        """
        settings = self.settings
        with progress_bar(settings.train_steps, description, self.progress) as bar:
            for step in range(settings.train_steps):
                bar.update(1)
                if settings.refresh_every and step and step % settings.refresh_every == 0 and settings.refresh_steps:
                    noise = self.optimize_noise(target, steps=settings.refresh_steps, initial=noise)
                    pool[target].append(noise)
                batch = self.rng.integers(0, len(self.train.images), settings.train_batch_size)
                self.sess.run(self.train_step, {
                    self.images: self.augment(self.train.images[batch]),
                    self.labels: self.train.labels[batch].astype(np.int32),
                    self.noise_batch: _noise_batch(self.rng, settings, noise, pool, scope)})
        return noise

    def run(self, targets: list[int], given_noise: np.ndarray | None = None) -> ImmunizeResult:
        """Play the schedule: measure, train phase after phase, measure again.

        ``sequential``: all rounds for target 0, then for target 1, ... (the reference's way);
        ``interleaved``: each round cycles through every target.

        Raises:
            ImmunizeInterrupted: on Ctrl-C once measuring had begun, with what was finished.
        """
        settings, log = self.settings, self.log
        started = time.time()
        clean_before, before, current, given_before = self._measure_before(targets, given_noise)
        order = schedule_order(targets, settings)
        history, after_own = [], {}
        pool = {target: [current[target]] for target in targets}
        stale: set[int] = set()  # targets whose noise predates the network's latest training
        phase = None  # the (round, target) being trained, for an interruption's report
        try:
            for round_number, target in order:
                phase = (round_number, target)
                if target in stale:
                    # the network has learnt other targets since: find this target's noise again
                    current[target] = self.optimize_noise(target, steps=settings.noise.steps,
                                                          initial=current[target], progress=self.progress)
                    pool[target].append(current[target])
                scope = [target] if settings.schedule == "sequential" else targets
                current[target] = self.train_phase(target, current[target], pool, scope,
                                                   f"round {round_number}, target {target}: training")
                trained_on = self.measure(current[target], target)
                clean = self.clean_accuracy()
                current[target], effect = self.fresh_noise(target)
                pool[target].append(current[target])
                stale = set(targets) - {target}
                after_own[target] = effect.accuracy
                history.append({"round": round_number, "target": target, "clean_accuracy": clean,
                                "accuracy_trained_noise": trained_on.accuracy,
                                "accuracy_fresh_noise": effect.accuracy, "fooled_fresh_noise": effect.fooled})
                log(f"round {round_number}, target {target}: clean {clean:.2%}, under the noise it trained on "
                    f"{trained_on.accuracy:.2%}, under fresh noise {effect.accuracy:.2%}")
            phase = None
            clean_after = self.clean_accuracy()
            after, final_noise, given_after = self._measure_after(targets, order[-1][1], current, after_own,
                                                                  given_noise)
        except KeyboardInterrupt:
            raise ImmunizeInterrupted(targets=targets, before=before, clean_before=clean_before, history=history,
                                      phase=phase, seconds=round(time.time() - started, 1)) from None
        return ImmunizeResult(targets=targets, before=before, after=after, clean_before=clean_before,
                              clean_after=clean_after, history=history, after_own_training=after_own,
                              final_noise=np.stack(final_noise), seconds=round(time.time() - started, 1),
                              given_before=given_before, given_after=given_after)


    def _measure_before(self, targets: list[int], given_noise):
        """Clean accuracy, accuracy under a fresh noise per target (and under the given noise, which then starts
        each target's training instead of the fresh one)."""
        clean_before = self.clean_accuracy()
        before, current = {}, {}
        for target in targets:
            current[target], effect = self.fresh_noise(target)
            before[target] = effect.accuracy
            self.log(f"before: target {target}: accuracy under fresh noise {effect.accuracy:.2%} "
                     f"({effect.fooled:.2%} read as {target}); clean {clean_before:.2%}")
        given_before = {}
        if given_noise is not None:
            for target, noise in zip(targets, given_noise):
                current[target] = noise
                given_before[target] = self.measure(noise, target).accuracy
                self.log(f"before: target {target}: accuracy under the given noise {given_before[target]:.2%}")
        return clean_before, before, current, given_before

    def _measure_after(self, targets: list[int], last_target: int, current: dict, after_own: dict, given_noise):
        """Accuracy under a fresh noise per target against the final network, the final noises, and accuracy
        under the given noise."""
        after, final_noise = {}, []
        for target in targets:
            if last_target == target:  # the last phase already measured it against the final network
                after[target] = after_own[target]
            else:
                current[target], effect = self.fresh_noise(target)
                after[target] = effect.accuracy
            final_noise.append(current[target])
        given_after = {target: self.measure(noise, target).accuracy
                       for target, noise in zip(targets, given_noise if given_noise is not None else [])}
        return after, final_noise, given_after


def schedule_order(targets: list[int], settings: ImmunizeSettings) -> list[tuple[int, int]]:
    """The training phases as (round, target), in the order of ``settings.schedule``."""
    rounds = range(1, settings.rounds + 1)
    if settings.schedule == "sequential":
        return [(r, t) for t in targets for r in rounds]
    return [(r, t) for r in rounds for t in targets]


def immunize(model: FrozenModel, train: Split, test: Split, targets, settings: ImmunizeSettings, *,
             progress: bool = False, log: Callable[[str], None] = lambda message: None,
             out_dir: os.PathLike | str | None = None, given_noise: np.ndarray | None = None) -> ImmunizeResult:
    """Adversarially train the network of ``model``'s run against universal noise for ``targets``.

    If ``out_dir`` is given, the network is saved there as a new run by the run layer
    (:func:`advmnist.model.runs.save_trained`: checkpoint, model.pb, model.json), also when
    interrupted (marked so). ``given_noise`` (one per target, e.g. saved by ``advmnist
    universal``) is the noise of each target's first training phase, and is measured
    before and after.
    """
    from advmnist.model.runs import save_trained

    targets = target_classes(targets)
    checkpoint = checkpoint_of(model)
    meta = {"immunized_against": targets, "schedule": settings.schedule, "rounds": settings.rounds,
            "train_steps": settings.train_steps, "clean_fraction": settings.clean_fraction,
            "seed": settings.seed, "shift": settings.shift, "base_model": display_path(model.path)}
    with AdversarialTrainer(checkpoint, test, train, settings, progress=progress, log=log) as trainer:
        meta["precision"] = trainer.precision
        try:
            result = trainer.run(targets, given_noise)
        except ImmunizeInterrupted as stopped:
            if out_dir is not None:
                save_trained(trainer.saver, trainer.sess, out_dir, "model-immunized", interrupted=True,
                             finished_phases=len(stopped.history), interrupted_in=stopped.interrupted_in, **meta)
                stopped.saved_to = Path(out_dir)
            raise
        if out_dir is not None:
            save_trained(trainer.saver, trainer.sess, out_dir, "model-immunized", test_accuracy=result.clean_after,
                         **meta)
    return result


def _noise_batch(rng, settings: ImmunizeSettings, current: np.ndarray, pool: dict, scope) -> np.ndarray:
    """Per-sample noise for one training batch: clean, the current noise, or (with replay)
    an earlier noise of a target in ``scope``, so that old immunities are rehearsed."""
    size = settings.train_batch_size
    batch = np.zeros((size, IMAGE_SIZE, IMAGE_SIZE), np.float32)
    noisy = np.flatnonzero(rng.random(size) >= settings.clean_fraction)
    earlier = [noise for target in scope for noise in pool[target]] if settings.replay else []
    for i in noisy:
        batch[i] = earlier[rng.integers(len(earlier))] if earlier and rng.random() < 0.5 else current
    return batch
