"""The session of :mod:`advmnist.defences.pgd_training`: the network, the training attack and the loss in one graph.

Each training step is a pure function of the weights, the optimizer's state, the seed and
the step's index: the batch order is drawn per epoch, the shift, the clean images, the
attack's random start and the dropout masks per step, all from generators keyed by
(seed, step). The step counter is a variable of the graph, advanced by the training op
itself, so a checkpoint of every variable (:attr:`PGDTrainer.state_saver`) holds all
that a resumed run needs besides :class:`advmnist.defences.pgd_training.TrainingProgress`.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable

import numpy as np

from advmnist.attacks.base import progress_bar, row_cross_entropy
from advmnist.data.mnist import IMAGE_SIZE, Split
from advmnist.defences.losses import ball_attack, ramped_eps, trades_loss
from advmnist.defences.universal_immunization import RestoredNetwork
from advmnist.model.network import cnn_logits, network_variables
from advmnist.defences.pgd_training import (GUARD_STEP_FACTOR, PGDTrainingResult, PGDTrainingSettings, TrainingProgress,
                                   collapsed, interrupts_deferred)
from advmnist.tfcompat import tf1
from advmnist.model.training import shifted

#: The second half of the seed pair of every measurement (training steps use their index).
MEASURE_KEY = 2**40


class PGDTrainer(RestoredNetwork):
    """The network in a session, trained on adversarial examples against itself. Use as a context manager.

    ``checkpoint``: the run's network to start from (None: fresh weights, ``from_scratch``); with ``resume``,
    the checkpoint of every variable saved by an interrupted training.
    """

    def __init__(self, checkpoint: str | None, settings: PGDTrainingSettings, *, resume: bool = False):
        tf = tf1()
        self.settings = settings
        self.graph = tf.Graph()
        with self.graph.as_default():
            tf.set_random_seed(settings.seed)  # the initial weights, when they are not restored
            network_vars = self._build_graph(settings)
            self.global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="pgd_training_step")
            self.learning_rate = tf.placeholder(tf.float32, ())
            self.train_step = tf.train.AdamOptimizer(self.learning_rate).minimize(
                self.loss, var_list=network_vars, global_step=self.global_step)
            if settings.guarded:
                self._build_snapshot()
            self.saver = tf.train.Saver(network_vars, max_to_keep=1)  # what the run layer saves: the network
            # and all the rest; save_resume_state removes the old state itself, after the new one is complete
            self.state_saver = tf.train.Saver(tf.global_variables(), max_to_keep=None)
            restore = self.state_saver if resume else tf.train.Saver(network_vars) if checkpoint else None
            init = tf.global_variables_initializer()
        self._open_session(init, restore, checkpoint, settings.precision)
        self.progress = TrainingProgress(relative_step=settings.relative_step)
        self._order = (-1, None)

    def _build_graph(self, s: PGDTrainingSettings) -> list:
        """The placeholders, the training and monitor attacks, the predictions and the loss; the network's
        variables."""
        tf = tf1()
        self.images = tf.placeholder(tf.float32, (None, IMAGE_SIZE, IMAGE_SIZE))
        self.labels = tf.placeholder(tf.int32, (None,))
        self.attacked = tf.placeholder(tf.bool, (None,))  # which images of the batch get the attack
        self.eps = tf.placeholder(tf.float32, ())
        self.relative_step = tf.placeholder(tf.float32, ())
        self.seed = tf.placeholder(tf.int64, (2,))

        def keyed(key: int):
            return tf.random.experimental.stateless_fold_in(self.seed, key)

        def evaluated(x):
            return cnn_logits(x, training=False)

        trades = s.loss == "trades"
        with tf.variable_scope(tf.get_variable_scope(), reuse=tf.AUTO_REUSE):
            adversarial = ball_attack(evaluated, self.images, self.labels, eps=self.eps,
                                      step=self.relative_step * self.eps,
                                      steps=1 if s.attack == "fgsm-rs" else s.pgd_steps,
                                      objective="kl" if trades else "ce",
                                      start="normal" if trades and s.attack == "pgd" else "uniform", seed=keyed(0))
            self.adversarial = tf.where(self.attacked, adversarial, self.images)
            monitor = ball_attack(evaluated, self.images, self.labels, eps=s.eps, step=s.monitor_step * s.eps,
                                  steps=s.pgd_steps, objective="ce", start="uniform", seed=keyed(1))
            network_vars = network_variables(tf.global_variables())
            self.logits = evaluated(self.images)
            self.predictions = tf.argmax(self.logits, 1, output_type=tf.int32)
            self.adversarial_predictions = tf.argmax(evaluated(self.adversarial), 1, output_type=tf.int32)
            self.monitor_predictions = tf.argmax(evaluated(monitor), 1, output_type=tf.int32)
            # TRADES's two passes share their dropout masks: the KL term then measures the perturbation alone
            self.training_logits = {"adversarial": cnn_logits(self.adversarial, training=True,
                                                              dropout_seed=keyed(2))}
            if trades:
                self.training_logits["clean"] = cnn_logits(self.images, training=True, dropout_seed=keyed(2))
                self.loss = trades_loss(self.training_logits["clean"], self.training_logits["adversarial"],
                                        self.labels, s.beta)
            else:
                self.loss = tf.reduce_mean(row_cross_entropy(self.training_logits["adversarial"], self.labels))
        return network_vars

    def _build_snapshot(self) -> None:
        """Copies of every variable but the step counter, for the guard: taken after a kept epoch, put back
        after a collapsed one."""
        tf = tf1()
        tracked = [v for v in tf.global_variables() if v is not self.global_step]
        with tf.variable_scope("guard_snapshot"):
            copies = [tf.Variable(tf.zeros(v.shape, v.dtype.base_dtype), trainable=False, name=v.op.name)
                      for v in tracked]
        self.take_snapshot = tf.group(*[c.assign(v) for c, v in zip(copies, tracked)])
        self.roll_back = tf.group(*[v.assign(c) for c, v in zip(copies, tracked)])

    # ------------------------------------------------------------------ measurements

    def step(self) -> int:
        """Training steps done (the graph's own counter)."""
        return int(self.sess.run(self.global_step))

    def total_steps(self, train: Split) -> int:
        return max(1, int(round(self.settings.epochs * self.steps_per_epoch(train))))

    def steps_per_epoch(self, train: Split) -> int:
        return max(1, len(train.images) // self.settings.batch_size)

    def ramp_steps(self, train: Split) -> int:
        """The training steps of the eps ramp-up."""
        return int(round(self.settings.eps_ramp * self.steps_per_epoch(train)))

    def accuracy(self, split: Split, fetch, *, count: int | None = None, batch: int = 500) -> float:
        """Accuracy of ``fetch`` (clean, monitor or training-attack predictions) on the first ``count`` images."""
        s = self.settings
        images, labels = split.images[:count], split.labels[:count]
        correct = 0
        for i in range(0, len(images), batch):
            part = slice(i, i + batch)
            predicted = self.sess.run(fetch, {
                self.images: images[part], self.labels: labels[part].astype(np.int32),
                self.attacked: np.ones(len(images[part]), bool), self.eps: s.eps,
                self.relative_step: self.progress.relative_step, self.seed: [s.seed, MEASURE_KEY]})
            correct += int((predicted == labels[part]).sum())
        return correct / max(len(images), 1)

    def measure(self, test: Split) -> dict:
        """Clean test accuracy, and on the monitor images under the monitor's PGD (and, guarded, the training
        FGSM)."""
        s = self.settings
        found = {"clean_accuracy": self.accuracy(test, self.predictions),
                 "robust_accuracy": self.accuracy(test, self.monitor_predictions, count=s.monitor)}
        if s.guarded:
            found["fgsm_accuracy"] = self.accuracy(test, self.adversarial_predictions, count=s.monitor)
        return found

    # ------------------------------------------------------------------ training

    def _feed(self, train: Split, step: int, total: int, ramp: int) -> dict:
        """Everything training step ``step`` takes, drawn from generators keyed by the seed and the step."""
        s = self.settings
        per_epoch = self.steps_per_epoch(train)
        epoch, k = divmod(step, per_epoch)
        if self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([s.seed, 0, epoch]).permutation(len(train.images)))
        batch = self._order[1][k * s.batch_size:(k + 1) * s.batch_size]
        images = train.images[batch]
        if s.shift:
            images = shifted(images, s.shift, np.random.RandomState([s.seed, 1, step]))
        return {self.images: images, self.labels: train.labels[batch].astype(np.int32),
                self.attacked: np.random.default_rng([s.seed, 2, step]).random(len(batch)) >= s.clean_fraction,
                self.eps: ramped_eps(s.eps, step, ramp), self.relative_step: self.progress.relative_step,
                self.seed: [s.seed, step],
                self.learning_rate: s.lr * (0.01 + 0.99 * (1 + np.cos(np.pi * step / total)) / 2)}

    def run(self, train: Split, test: Split, progress_so_far: TrainingProgress, *, progress: bool = False,
            log: Callable[[str], None] = lambda message: None,
            keep: Callable[[int, TrainingProgress], None] | None = None) -> PGDTrainingResult:
        """Train up to ``settings.epochs`` epochs, from where ``progress_so_far`` and the restored step say.

        ``keep(step, progress)`` is called after every epoch's measurement (to save a state a killed run
        resumes from), ``progress`` with the seconds spent so far."""
        self.progress, started = progress_so_far, time.time()
        self.keep = keep
        try:
            self._train(train, test, progress, log, lambda: progress_so_far.seconds + time.time() - started)
        except KeyboardInterrupt:
            progress_so_far.seconds += time.time() - started  # what the resumed run adds to
            raise
        return progress_so_far.result(progress_so_far.seconds + time.time() - started, self.total_steps(train))

    def _train(self, train: Split, test: Split, progress: bool, log, elapsed: Callable[[], float]) -> None:
        s, state = self.settings, self.progress
        per_epoch, total = self.steps_per_epoch(train), self.total_steps(train)
        ramp = self.ramp_steps(train)
        if state.clean_before is None:
            self._measure_before(test, log)
        step = self.step()
        if step and (step % per_epoch == 0 or step == total) and (not state.history
                                                                  or state.history[-1]["step"] < step):
            self._end_epoch(test, step, per_epoch, elapsed(), log)  # interrupted before this epoch's measurement
        with progress_bar(total, f"{s.kind} training, eps {s.eps:g}", progress, initial=step) as bar:
            while step < total:
                feed = self._feed(train, step, total, ramp)
                begun = time.time()
                self.sess.run(self.train_step, feed)
                state.step_seconds += time.time() - begun
                step += 1
                bar.update(1)
                if step % per_epoch == 0 or step == total:
                    self._end_epoch(test, step, per_epoch, elapsed(), log)
                    if self.keep is not None and step < total:
                        with interrupts_deferred():
                            self.keep(step, dataclasses.replace(state, seconds=elapsed()))

    def _measure_before(self, test: Split, log: Callable[[str], None]) -> None:
        s, state = self.settings, self.progress
        found = self.measure(test)
        with interrupts_deferred():
            if s.guarded:
                self.sess.run(self.take_snapshot)
                state.reference = found
            state.clean_before, state.robust_before = found["clean_accuracy"], found["robust_accuracy"]
        log(f"before: clean {state.clean_before:.2%}, under PGD (eps {s.eps:g}, {s.pgd_steps} steps, first "
            f"{s.monitor} test images) {state.robust_before:.2%}")

    def _end_epoch(self, test: Split, step: int, per_epoch: int, seconds: float, log) -> None:
        """Measure; with the guard, keep the epoch (a new snapshot) or roll it back and lower the step."""
        s, state = self.settings, self.progress
        found = self.measure(test)
        entry = {"epoch": round(step / per_epoch, 2), "step": step, **found, "seconds": round(seconds, 1)}
        note = ""
        with interrupts_deferred():
            if s.guarded and collapsed(state.reference, found["robust_accuracy"], found["fgsm_accuracy"]):
                self.sess.run(self.roll_back)
                state.relative_step *= GUARD_STEP_FACTOR
                state.rollbacks += 1
                entry.update(rolled_back=True, step_size=state.relative_step)
                note = (f"; PGD accuracy collapsed while FGSM's did not: rolled back to the last kept weights, "
                        f"FGSM step now {state.relative_step:.3g} eps")
            elif s.guarded:
                self.sess.run(self.take_snapshot)
                state.reference = entry
            state.history.append(entry)
        fgsm = f", under the training FGSM {found['fgsm_accuracy']:.2%}" if s.guarded else ""
        log(f"epoch {entry['epoch']:g}: clean {found['clean_accuracy']:.2%}, under PGD "
            f"{found['robust_accuracy']:.2%}{fgsm} ({entry['seconds']:.0f} s){note}")
