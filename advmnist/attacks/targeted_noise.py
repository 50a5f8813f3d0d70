"""Per-image targeted noise (the first reference experiment): one learned noise per image.

Each image i gets its own 28x28 noise, initialized from N(0, ``init_std``); the network
sees ``clip(x_i + noise_i, 0, 1)`` and Adam minimizes
``CE(f(clip(x_i + noise_i)), target_i) / 16 + weight * R(noise_i)`` over the noise
only, ``lr`` for two thirds of the steps and ``late_lr`` after. The division by 16
keeps each image's objective the reference's 16-image batch objective whatever the
number of images (see :data:`REFERENCE_BATCH`).
"""
from __future__ import annotations

import numpy as np

from advmnist.attacks.base import (Attack, AttackInterrupted, AttackResult, LogitsFn, progress_bar, rounded_to_8bit,
                                   row_cross_entropy, row_softmax)
from advmnist.attacks.norms import L1, L2, Regularizer
from advmnist.data.mnist import NUM_CLASSES
from advmnist.errors import InvalidInput
from advmnist.tfcompat import session_config, tf1

#: The reference averaged the cross-entropy over a batch of 16 images and summed the
#: regularization over the same 16 noises. Each image's objective is kept exactly that,
#: ``CE_i / 16 + weight * R(noise_i)``, whatever the number of images, so an image's
#: gradient does not depend on how many others are attacked with it, and Adam updates
#: every element on its own gradient history. Its noise is the same bit for bit (the
#: cross-entropy is :func:`~advmnist.attacks.base.row_cross_entropy`), so chunks and
#: shards reproduce the whole run exactly.
REFERENCE_BATCH = 16


def late_lr_from(steps: int) -> int:
    """The step from which the late learning rate applies: two thirds in (the reference's schedule)."""
    return (2 * steps) // 3


import time


class PerImageNoise(Attack):
    """One targeted noise per image, optimized by Adam under a regularizer.

    Args:
        regularizer: the noise's cost (:func:`advmnist.attacks.make_regularizer`: l2, l1, none).
        steps: Adam steps (6000 in the reference: 30 x 200).
        lr, late_lr: Adam's learning rate for the first two thirds of the steps, and after.
        init_std: standard deviation of the initial noise.
        early_stop_margin: if set, an image keeps the noise of the first check (every
            ``check_every`` steps) at which its target logit beats every other logit by
            this margin, and a chunk stops once all its images have.
        chunk_size: images optimized in one graph; bounds memory for any count.

    Example:
        >>> attack = PerImageNoise(make_regularizer("l1", 1e-2))
        >>> result = attack(model.logits, images, labels, targets=9 - labels, seed=0)
        >>> result.success.mean(), result.norms["l1"].mean()
    """

    #: Seconds a session call aims at: the progress bar moves and Ctrl-C takes effect about this often. How the
    #: steps are split into calls changes nothing in the result (the steps are the same, in the same order).
    call_seconds = 0.5
    #: the norms whose penalty it can take (the regularizer ``none`` has no norm)
    NORMS = (L2.name, L1.name)

    def __init__(self, regularizer: Regularizer, *, steps: int = 6000, lr: float = 3e-3, late_lr: float = 1e-3,
                 init_std: float = 0.01, early_stop_margin: float | None = None, chunk_size: int = 256,
                 check_every: int = 100):
        if steps < 1:
            raise InvalidInput(f"expected steps >= 1, got {steps}")
        if chunk_size < 1 or check_every < 1:
            raise InvalidInput(f"expected chunk_size and check_every >= 1, got {chunk_size}, {check_every}")
        self.regularizer = regularizer
        self.steps = steps
        self.lr, self.late_lr = lr, late_lr
        self.init_std = init_std
        self.early_stop_margin = early_stop_margin
        self.chunk_size = chunk_size
        self.check_every = check_every

    def run(self, logits_fn, images, labels, targets, *, draws, progress) -> AttackResult:
        if (targets < 0).any():
            raise InvalidInput("expected a target for every image: per-image noise is a targeted attack")
        if not len(images):
            empty = np.zeros(0, np.int64)
            return AttackResult(originals=images, adversarial=images, noise=images, labels=labels, targets=targets,
                                predictions=empty, predictions_8bit=empty,
                                info={"target_probability": np.zeros(0, np.float32),
                                      "cross_entropy": np.zeros(0, np.float32), "steps_run": empty})
        initial = (self.init_std * draws.normal_rows(images.shape[1:])[0]).astype(np.float32)  # N(0, init_std)
        parts = []
        bar = progress_bar(self.steps * len(images), f"{self.regularizer.name} noise", progress)
        try:
            with bar:
                for start in range(0, len(images), self.chunk_size):
                    part = slice(start, start + self.chunk_size)
                    parts.append(self._run_chunk(logits_fn, images[part], labels[part], targets[part],
                                                 initial[part], bar))
        except KeyboardInterrupt:
            if not parts:
                raise
            raise AttackInterrupted(AttackResult.concatenate(parts)) from None
        return AttackResult.concatenate(parts)

    def _run_chunk(self, logits_fn, images, labels, targets, initial, bar) -> AttackResult:
        """Optimize one chunk's noise in its own graph and session."""
        tf = tf1()
        graph = tf.Graph()
        with graph.as_default():
            loop = AdamLoop(logits_fn, images, targets.astype(np.int32), regularizer=self.regularizer,
                            ce_weight=1.0 / REFERENCE_BATCH)
            init = tf.global_variables_initializer()
        graph.finalize()
        with tf.Session(graph=graph, config=session_config(tf)) as sess:
            sess.run(init)
            loop.start(sess, initial)
            switch = late_lr_from(self.steps)
            step = 0
            # with an early stop, each image's noise and step count from the check where it reached the margin
            kept, steps_run = np.zeros_like(initial), np.zeros(len(images), np.int64)
            done = np.zeros(len(images), bool)
            per_call = 1  # steps per session call, grown to about call_seconds
            while step < self.steps:
                # one session call runs at most up to the next check, never across the learning-rate switch
                end = min(step + self.check_every - step % self.check_every, self.steps, step + per_call)
                if step < switch < end:
                    end = switch
                started = time.perf_counter()
                check = end % self.check_every == 0 or end == self.steps
                loss, margins = loop.run(sess, end - step, self.lr if step < switch else self.late_lr, margins=check)
                seconds_per_step = (time.perf_counter() - started) / (end - step)
                per_call = max(1, min(self.check_every, int(self.call_seconds / max(seconds_per_step, 1e-6))))
                bar.update(len(images) * (end - step))
                step = end
                if check:
                    reached = int((margins > 0).sum())
                    bar.set_postfix(loss=f"{loss:.4g}", at_target=f"{reached}/{len(images)}", refresh=False)
                    if self.early_stop_margin is not None:
                        now = ~done & (margins >= self.early_stop_margin)
                        if now.any():
                            kept[now], steps_run[now], done[now] = sess.run(loop.noise)[now], step, True
                        if done.all():
                            bar.update(len(images) * (self.steps - step))
                            break
            steps_run[~done] = step
            if done.any():  # evaluate each image at the noise it kept
                loop.start(sess, np.where(done[:, None, None], kept, sess.run(loop.noise)))
            noise, predictions, probabilities, cross_entropy, predictions_8bit = sess.run(
                [loop.noise, loop.predictions, loop.probabilities, loop.cross_entropy, loop.predictions_8bit])
        return AttackResult(
            originals=images, adversarial=np.clip(images + noise, 0.0, 1.0), noise=noise, labels=labels,
            targets=targets, predictions=predictions.astype(np.int64),
            predictions_8bit=predictions_8bit.astype(np.int64),
            info={"target_probability": probabilities[np.arange(len(targets)), targets],
                  "cross_entropy": cross_entropy, "steps_run": steps_run})


class AdamLoop:
    """Many Adam steps on a per-image noise in one session call (a ``tf.while_loop``).

    A Python loop of ``sess.run(train_op)`` pays the session's overhead, and a fetch,
    at every step; here the loop runs inside the graph, ``steps`` at a time. Each
    iteration reads the noise, builds ``clip(images + noise)`` through ``logits_fn``,
    takes the gradient of ``ce_weight * sum(CE) + regularizer`` and applies TensorFlow's
    own Adam kernel (``ResourceApplyAdam``, the one ``tf.train.AdamOptimizer`` uses),
    so the noise is bit for bit what that optimizer would produce.
    """

    BETA1, BETA2, EPSILON = 0.9, 0.999, 1e-8

    def __init__(self, logits_fn: LogitsFn, images: np.ndarray, targets: np.ndarray, *,
                 regularizer: Regularizer, ce_weight: float, scope: str = "adversarial_noise"):
        tf = tf1()
        import tensorflow

        shape = images.shape
        images = tf.constant(images, name="images")
        targets = tf.constant(targets, name="targets")
        with tf.variable_scope(scope):
            def variable(name, value):
                return tf.get_variable(name, initializer=value, trainable=False, use_resource=True)

            self.noise = variable("noise", np.zeros(shape, np.float32))
            moments = [variable(name, np.zeros(shape, np.float32)) for name in ("m", "v")]
            powers = [variable(name, np.float32(beta)) for name, beta in
                      (("beta1_power", self.BETA1), ("beta2_power", self.BETA2))]
            self.step_count = tf.placeholder(tf.int32, (), name="step_count")
            self.learning_rate = tf.placeholder(tf.float32, (), name="learning_rate")
            self.noise_value = tf.placeholder(tf.float32, shape, name="noise_value")

        def network(noise):
            logits = logits_fn(tf.clip_by_value(images + noise, 0.0, 1.0))
            cross_entropy = row_cross_entropy(logits, targets)
            return logits, cross_entropy

        def body(step, beta1_power, beta2_power, _loss):
            with tf.control_dependencies([step]):
                noise = self.noise.read_value()
            _, cross_entropy = network(noise)
            loss = ce_weight * tf.reduce_sum(cross_entropy) + regularizer.cost(noise)
            (gradient,) = tf.gradients(loss, [noise])
            update = tensorflow.raw_ops.ResourceApplyAdam(
                var=self.noise.handle, m=moments[0].handle, v=moments[1].handle, beta1_power=beta1_power,
                beta2_power=beta2_power, lr=self.learning_rate, beta1=self.BETA1, beta2=self.BETA2,
                epsilon=self.EPSILON, grad=gradient)
            with tf.control_dependencies([update]):
                return step + 1, beta1_power * self.BETA1, beta2_power * self.BETA2, tf.identity(loss)

        with tf.variable_scope(scope):
            _, beta1_end, beta2_end, self.loss = tf.while_loop(
                lambda step, *_: step < self.step_count, body,
                [tf.constant(0), powers[0].read_value(), powers[1].read_value(), tf.constant(0.0)],
                parallel_iterations=1, name="adam_steps")
            with tf.control_dependencies([self.loss]):
                self.advance = tf.group(powers[0].assign(beta1_end), powers[1].assign(beta2_end))
            self.reset = tf.group(self.noise.assign(self.noise_value),
                                  *[m.initializer for m in moments], *[p.initializer for p in powers])
        noise = self.noise.read_value()
        logits, self.cross_entropy = network(noise)
        # what a saved 8-bit PNG holds, checked in this graph: no second session
        self.predictions_8bit = tf.argmax(logits_fn(rounded_to_8bit(images + noise)), 1, output_type=tf.int32)
        target_logit = tf.gather(logits, targets, batch_dims=1)
        others = logits - 1e9 * tf.one_hot(targets, NUM_CLASSES)
        self.margin = target_logit - tf.reduce_max(others, axis=1)
        self.predictions = tf.argmax(logits, 1, output_type=tf.int32)
        self.probabilities = row_softmax(logits)

    def start(self, sess, initial_noise: np.ndarray) -> None:
        """Set the noise and forget Adam's moments."""
        sess.run(self.reset, {self.noise_value: initial_noise})

    def run(self, sess, steps: int, learning_rate: float, *, margins: bool = True) -> tuple[float, np.ndarray | None]:
        """``steps`` Adam steps; the loss of the last one and (if ``margins``) every image's margin after them."""
        _, loss = sess.run([self.advance, self.loss], {self.step_count: steps, self.learning_rate: learning_rate})
        return float(loss), sess.run(self.margin) if margins else None
