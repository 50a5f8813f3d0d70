"""Immunize the network against universal noise by adversarial training.

Rounds of: (a) optimize a universal noise for a target against the *current* network
(:class:`advmnist.noise.UniversalNoise`, the same mechanism as ``advmnist universal``);
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

from advmnist.data import IMAGE_SIZE, Split
from advmnist.errors import InvalidInput
from advmnist.export import inference_graph_def, write_frozen
from advmnist.frozen import FrozenModel
from advmnist.model import cnn_logits
from advmnist.noise import UniversalNoise, progress_bar
from advmnist.tfcompat import session_config, tf1
from advmnist.universal import UniversalSettings, check_targets, noise_effect

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

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise InvalidInput(f"expected schedule in {SCHEDULES}, got {self.schedule!r}")
        if not 0 <= self.clean_fraction < 1:
            raise InvalidInput(f"expected a clean fraction in [0, 1), got {self.clean_fraction}")
        if self.rounds < 1 or self.train_steps < 0:
            raise InvalidInput(f"expected rounds >= 1 and train steps >= 0, got {self.rounds}, {self.train_steps}")
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
                "run_dir": str(self.saved_to) if self.saved_to else None}


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


def immunize(model: FrozenModel, train: Split, test: Split, targets, settings: ImmunizeSettings, *,
             seed: int = 0, progress: bool = False, log: Callable[[str], None] = lambda message: None,
             out_dir: os.PathLike | str | None = None, given_noise: np.ndarray | None = None) -> ImmunizeResult:
    """Adversarially train the network of ``model``'s run against universal noise for ``targets``.

    ``sequential``: all rounds for target 0, then for target 1, ... (the reference's way).
    ``interleaved``: each round cycles through every target.
    If ``out_dir`` is given, the immunized network is saved there as a new run
    (checkpoint, model.pb, model.json). ``given_noise`` (one per target, e.g. saved by
    ``advmnist universal``) is the noise of each target's first training phase, and is
    measured before and after.
    """
    targets = check_targets(targets)
    checkpoint = checkpoint_of(model)
    started = time.time()
    tf = tf1()
    graph = tf.Graph()
    with graph.as_default():
        tf.set_random_seed(seed)
        with tf.variable_scope(tf.get_variable_scope(), reuse=tf.AUTO_REUSE):
            universal = UniversalNoise(lambda x: cnn_logits(x, training=False),
                                       noise_limit=settings.noise.noise_limit, l2_weight=settings.noise.l2_weight,
                                       lr=settings.noise.lr, batch_size=settings.noise.batch_size)
            network_vars = [v for v in tf.global_variables() if v.name.split("/")[0] in
                            ("conv0", "conv1", "fc0", "fc1")]
            images = tf.placeholder(tf.float32, (None, IMAGE_SIZE, IMAGE_SIZE))
            labels = tf.placeholder(tf.int32, (None,))
            noise_batch = tf.placeholder(tf.float32, (None, IMAGE_SIZE, IMAGE_SIZE))  # zeros: clean image
            inputs = tf.clip_by_value(images + noise_batch, 0.0, 1.0)
            logits = cnn_logits(inputs, training=True)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
        optimizer = tf.train.AdamOptimizer(settings.train_lr)
        train_step = optimizer.minimize(loss, var_list=network_vars)
        restore = tf.train.Saver(network_vars)
        saver = tf.train.Saver(network_vars, max_to_keep=1)
        init = tf.global_variables_initializer()
    graph.finalize()
    rng = np.random.default_rng(seed)
    zero = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.float32)

    with tf.Session(graph=graph, config=session_config(tf)) as sess:
        sess.run(init)
        restore.restore(sess, checkpoint)

        def effect_of(noise: np.ndarray, target: int):
            return noise_effect(universal.predict(sess, test.images, noise), test.labels, target)

        def fresh(target: int):
            noise = universal.optimize(sess, train.images, target, steps=settings.noise.steps,
                                       seed=int(rng.integers(2**31)), progress=progress)
            return noise, effect_of(noise, target)

        def clean_accuracy() -> float:
            return float((universal.predict(sess, test.images, zero) == test.labels).mean())

        clean_before = clean_accuracy()
        before, current = {}, {}
        for target in targets:
            current[target], effect = fresh(target)
            before[target] = effect.accuracy
            log(f"before: target {target}: accuracy under fresh noise {effect.accuracy:.2%} "
                f"({effect.fooled:.2%} read as {target}); clean {clean_before:.2%}")

        if settings.schedule == "sequential":
            order = [(r, t) for t in targets for r in range(1, settings.rounds + 1)]
        else:
            order = [(r, t) for r in range(1, settings.rounds + 1) for t in targets]
        history, after_own = [], {}
        given_before = {}
        if given_noise is not None:
            for target, noise in zip(targets, given_noise):
                current[target] = noise
                given_before[target] = effect_of(noise, target).accuracy
                log(f"before: target {target}: accuracy under the given noise {given_before[target]:.2%}")
        pool = {target: [current[target]] for target in targets}
        stale: set[int] = set()  # targets whose noise predates the network's latest training
        phase = None  # the (round, target) being trained, for an interruption's report
        try:
            for round_number, target in order:
                phase = (round_number, target)
                scope = [target] if settings.schedule == "sequential" else targets
                if target in stale:
                    # (a): the network has learnt other targets since; find this target's noise again
                    current[target] = universal.optimize(sess, train.images, target, steps=settings.noise.steps,
                                                         seed=int(rng.integers(2**31)), initial=current[target],
                                                         progress=progress)
                    pool[target].append(current[target])
                description = f"round {round_number}, target {target}: training"
                with progress_bar(settings.train_steps, description, progress) as bar:
                    for step in range(settings.train_steps):
                        bar.update(1)
                        if (settings.refresh_every and step and step % settings.refresh_every == 0
                                and settings.refresh_steps):
                            # the adversary keeps up with the network instead of waiting for the next round
                            current[target] = universal.optimize(sess, train.images, target,
                                                                 steps=settings.refresh_steps,
                                                                 seed=int(rng.integers(2**31)),
                                                                 initial=current[target])
                            pool[target].append(current[target])
                        batch = rng.integers(0, len(train.images), settings.train_batch_size)
                        sess.run(train_step, {images: train.images[batch],
                                              labels: train.labels[batch].astype(np.int32),
                                              noise_batch: _noise_batch(rng, settings, current[target], pool,
                                                                        scope)})
                trained_on = effect_of(current[target], target)
                clean = clean_accuracy()
                current[target], effect = fresh(target)
                pool[target].append(current[target])
                stale = set(targets) - {target}
                after_own[target] = effect.accuracy
                entry = {"round": round_number, "target": target, "clean_accuracy": clean,
                         "accuracy_trained_noise": trained_on.accuracy, "accuracy_fresh_noise": effect.accuracy,
                         "fooled_fresh_noise": effect.fooled}
                history.append(entry)
                log(f"round {round_number}, target {target}: clean {clean:.2%}, under the noise it trained on "
                    f"{trained_on.accuracy:.2%}, under fresh noise {effect.accuracy:.2%}")
            phase = None

            clean_after = clean_accuracy()
            after, final_noise = {}, []
            for target in targets:
                # The last phase already measured its target against the final network.
                if order[-1][1] == target:
                    after[target] = after_own[target]
                else:
                    current[target], effect = fresh(target)
                    after[target] = effect.accuracy
                final_noise.append(current[target])
            given_after = {target: effect_of(noise, target).accuracy
                           for target, noise in zip(targets, given_noise if given_noise is not None else [])}
        except KeyboardInterrupt:
            # keep the training done so far: the network as it is now, and the finished phases
            stopped = ImmunizeInterrupted(targets=targets, before=before, clean_before=clean_before,
                                          history=history, phase=phase, seconds=round(time.time() - started, 1))
        else:
            stopped = None
        if out_dir is not None:
            out_dir = Path(out_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
            saved = saver.save(sess, str(out_dir / "model-immunized"), write_meta_graph=False)
    if out_dir is not None:
        state = ({"test_accuracy": clean_after} if stopped is None else
                 {"interrupted": True, "finished_phases": len(history),
                  "interrupted_in": stopped.interrupted_in})
        write_frozen(inference_graph_def(saved), out_dir, saved, **state,
                     immunized_against=targets, schedule=settings.schedule, rounds=settings.rounds,
                     train_steps=settings.train_steps, clean_fraction=settings.clean_fraction, seed=seed,
                     base_model=str(model.path))
        if stopped is not None:
            stopped.saved_to = out_dir
    if stopped is not None:
        raise stopped
    return ImmunizeResult(targets=targets, before=before, after=after, clean_before=clean_before,
                          clean_after=clean_after, history=history, after_own_training=after_own,
                          final_noise=np.stack(final_noise), seconds=round(time.time() - started, 1),
                          given_before=given_before, given_after=given_after)


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
