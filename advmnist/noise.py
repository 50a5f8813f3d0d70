"""Adversarial noise against a fixed network: one optimization core, two uses.

The network sees ``clip(image + noise, 0, 1)``; the only variable the optimizer may
change is the noise. :class:`PerImageNoise` (one noise per image, the first reference
experiment) runs its Adam steps inside the graph, many per session call
(:class:`AdamLoop`); :class:`UniversalNoise` (one noise for every image, the second)
draws a new batch of images at every step and so takes one step per call
(:class:`NoiseGraph`). Both use TensorFlow's Adam kernel and the same loss: the
cross-entropy towards the target plus the regularizer's cost.

Both take ``logits_fn``: a function from an image tensor to logits. For attacks it
imports the frozen graph (:meth:`advmnist.frozen.FrozenModel.logits`); for
adversarial training it is the live network, whose variables the noise optimizer
leaves alone.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Callable

import numpy as np

from advmnist.data import IMAGE_SIZE, NUM_CLASSES
from advmnist.errors import InvalidInput
from advmnist.tfcompat import tf1

#: The reference averaged the cross-entropy over a batch of 16 images and summed the
#: regularization over the same 16 noises. Each image's objective is kept exactly that,
#: ``CE_i / 16 + weight * R(noise_i)``, whatever --count is, so an image's gradient does
#: not depend on how many others are attacked with it, and Adam updates every element
#: on its own gradient history. Its noise is the same up to float rounding (kernels sum
#: in other orders for other batch sizes), which Adam's normalized steps can enlarge in
#: pixels whose gradient is nearly zero.
REFERENCE_BATCH = 16

LogitsFn = Callable[[object], object]


# ---------------------------------------------------------------------------- regularizers

class Regularizer(abc.ABC):
    """The regularization cost of the noise: ``weight * penalty(noise)``."""

    name: str = ""

    def __init__(self, weight: float = 1e-2):
        if not weight >= 0:
            raise InvalidInput(f"expected a regularization weight >= 0, got {weight}")
        self.weight = float(weight)

    @abc.abstractmethod
    def penalty(self, noise):
        """Unweighted penalty of a noise tensor, summed over all its elements."""

    def cost(self, noise):
        return self.weight * self.penalty(noise)

    @abc.abstractmethod
    def penalty_value(self, noise: np.ndarray) -> float:
        """:meth:`penalty` of a NumPy array (for reports)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(weight={self.weight})"


class L2(Regularizer):
    """``weight * sum(noise^2) / 2``: small, spread-out noise."""

    name = "l2"

    def penalty(self, noise):
        return tf1().nn.l2_loss(noise)

    def penalty_value(self, noise: np.ndarray) -> float:
        return float((np.asarray(noise, np.float64) ** 2).sum() / 2)


class L1(Regularizer):
    """``weight * sum(|noise|)``: sparse noise with a few strong pixels."""

    name = "l1"

    def penalty(self, noise):
        tf = tf1()
        return tf.reduce_sum(tf.abs(noise))

    def penalty_value(self, noise: np.ndarray) -> float:
        return float(np.abs(np.asarray(noise, np.float64)).sum())


class NoRegularization(Regularizer):
    """No cost: the noise grows as large as the cross-entropy wants."""

    name = "none"

    def __init__(self, weight: float = 0.0):
        super().__init__(weight)

    def penalty(self, noise):
        return tf1().constant(0.0)

    def penalty_value(self, noise: np.ndarray) -> float:
        return 0.0

    def cost(self, noise):
        return tf1().constant(0.0)


REGULARIZERS: dict[str, type[Regularizer]] = {cls.name: cls for cls in (L2, L1, NoRegularization)}


def make_regularizer(name: str, weight: float) -> Regularizer:
    if name not in REGULARIZERS:
        raise InvalidInput(f"expected a regularizer in {sorted(REGULARIZERS)}, got {name!r}")
    return REGULARIZERS[name](weight) if name != "none" else NoRegularization()


# ---------------------------------------------------------------------------- the shared graph

class NoiseGraph:
    """``clip(images + noise)`` through ``logits_fn``, a loss, and an Adam step on the noise only.

    Args:
        logits_fn: image tensor -> logits tensor, built into the current graph.
        images, targets: tensors (N, 28, 28) float32 and (N,) int32.
        noise_shape: (N, 28, 28) for one noise per image, (28, 28) for a shared one.
        regularizer: cost added to the loss.
        ce_weight: the loss is ``ce_weight * sum(CE_i) + regularizer.cost(noise)``.
        noise_limit: if set, the noise is clipped to [-limit, +limit] after every step.
    """

    def __init__(self, logits_fn: LogitsFn, images, targets, noise_shape: tuple[int, ...], *,
                 regularizer: Regularizer, ce_weight: float, noise_limit: float | None = None,
                 scope: str = "adversarial_noise"):
        tf = tf1()
        with tf.variable_scope(scope):
            self.noise_value = tf.placeholder(tf.float32, noise_shape, name="noise_value")
            self.noise = tf.get_variable("noise", noise_shape, tf.float32, tf.zeros_initializer(), trainable=False)
            self.learning_rate = tf.get_variable("learning_rate", (), tf.float32, tf.zeros_initializer(),
                                                 trainable=False)
            self.new_learning_rate = tf.placeholder(tf.float32, (), name="new_learning_rate")
            self.set_learning_rate = tf.assign(self.learning_rate, self.new_learning_rate)
            self.adversarial = tf.clip_by_value(images + self.noise, 0.0, 1.0, name="adversarial")
        self.logits = logits_fn(self.adversarial)
        with tf.variable_scope(scope):
            self.cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=self.logits)
            self.regularize_cost = regularizer.cost(self.noise)
            self.loss = ce_weight * tf.reduce_sum(self.cross_entropy) + self.regularize_cost
            self.predictions = tf.argmax(self.logits, 1, output_type=tf.int32)
            self.probabilities = tf.nn.softmax(self.logits)
            optimizer = tf.train.AdamOptimizer(self.learning_rate)
            step = optimizer.minimize(self.loss, var_list=[self.noise])
            if noise_limit is not None:
                with tf.control_dependencies([step]):
                    step = tf.assign(self.noise, tf.clip_by_value(self.noise, -noise_limit, noise_limit))
            self.step = step
            self.assign_noise = tf.assign(self.noise, self.noise_value)
            self.reset = tf.group(self.assign_noise, tf.variables_initializer(optimizer.variables()))

    def start(self, sess, initial_noise: np.ndarray, learning_rate: float) -> None:
        """Set the noise to ``initial_noise`` and forget Adam's moments."""
        sess.run([self.reset, self.set_learning_rate],
                 {self.noise_value: initial_noise, self.new_learning_rate: learning_rate})

    def set_noise(self, sess, noise: np.ndarray) -> None:
        sess.run(self.assign_noise, {self.noise_value: noise})


def progress_bar(total: int, description: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=description, disable=not enabled, leave=False, dynamic_ncols=True,
                mininterval=0.5)


def late_lr_from(steps: int) -> int:
    """The step from which the late learning rate applies: two thirds in (the reference's schedule)."""
    return (2 * steps) // 3


# ---------------------------------------------------------------------------- per-image noise

@dataclasses.dataclass
class PerImageResult:
    """Arrays of one per-image attack; ``noise`` is the optimized variable, before clipping."""

    originals: np.ndarray
    noise: np.ndarray
    adversarial: np.ndarray
    labels: np.ndarray
    targets: np.ndarray
    predictions: np.ndarray
    target_probability: np.ndarray
    cross_entropy: np.ndarray
    steps_run: np.ndarray
    predictions_8bit: np.ndarray  # for the adversarial images rounded to 8-bit pixels, as a saved PNG holds them


class PerImageNoise:
    """One targeted noise per image (the reference's first experiment).

    Each image i gets its own 28x28 noise, initialized from N(0, ``init_std``) and
    optimized by Adam on ``CE(f(clip(x_i + noise_i)), target_i) / 16 + R(noise_i)``
    (see :data:`REFERENCE_BATCH`): ``lr`` for two thirds of ``steps``, then ``late_lr``.

    Args:
        logits_fn: image tensor -> logits of the fixed network.
        regularizer: :class:`L2`, :class:`L1` or :class:`NoRegularization`.
        steps: Adam steps (6000 in the reference: 30 x 200).
        early_stop_margin: if set, stop a batch once every image's target logit beats
            every other logit by this margin (checked every 100 steps).
        chunk_size: images optimized together; bounds memory for any count.

    Example:
        >>> attack = PerImageNoise(model.logits, L1(1e-2))
        >>> result = attack.run(images, targets, seed=0)
    """

    def __init__(self, logits_fn: LogitsFn, regularizer: Regularizer, *, steps: int = 6000,
                 lr: float = 3e-3, late_lr: float = 1e-3, init_std: float = 0.01,
                 early_stop_margin: float | None = None, chunk_size: int = 256, check_every: int = 100):
        if steps < 1:
            raise InvalidInput(f"expected steps >= 1, got {steps}")
        if chunk_size < 1:
            raise InvalidInput(f"expected chunk_size >= 1, got {chunk_size}")
        self.logits_fn = logits_fn
        self.regularizer = regularizer
        self.steps = steps
        self.lr, self.late_lr = lr, late_lr
        self.init_std = init_std
        self.early_stop_margin = early_stop_margin
        self.chunk_size = chunk_size
        self.check_every = check_every

    def run(self, images: np.ndarray, targets: np.ndarray, *, labels: np.ndarray | None = None,
            seed: int = 0, progress: bool = False) -> PerImageResult:
        images = np.asarray(images, np.float32)
        targets = np.asarray(targets, np.int32)
        if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise InvalidInput(f"expected images of shape (N, 28, 28), got {images.shape}")
        if images.min() < 0 or images.max() > 1:
            raise InvalidInput("expected image values in [0, 1]")
        if targets.shape != (len(images),) or targets.min() < 0 or targets.max() >= NUM_CLASSES:
            raise InvalidInput(f"expected {len(images)} targets in 0..9, got {targets}")
        labels = np.asarray(labels if labels is not None else np.full(len(images), -1), np.int64)
        initial = np.random.default_rng(seed).normal(0.0, self.init_std, images.shape).astype(np.float32)
        parts = []
        bar = progress_bar(self.steps * len(images), f"{self.regularizer.name} noise", progress)
        try:
            with bar:
                for start in range(0, len(images), self.chunk_size):
                    part = slice(start, start + self.chunk_size)
                    parts.append(self._run_chunk(images[part], targets[part], initial[part], bar))
        except KeyboardInterrupt:
            if not parts:
                raise
            done = sum(len(part[0]) for part in parts)
            raise AttackInterrupted(_assemble(images[:done], targets[:done], labels[:done], parts)) from None
        return _assemble(images, targets, labels, parts)

    def _run_chunk(self, images, targets, initial, bar):
        """Optimize one chunk's noise in its own graph and session; the arrays of :func:`_assemble`."""
        tf = tf1()
        from advmnist.tfcompat import session_config

        graph = tf.Graph()
        with graph.as_default():
            loop = AdamLoop(self.logits_fn, images, targets, regularizer=self.regularizer,
                            ce_weight=1.0 / REFERENCE_BATCH)
            init = tf.global_variables_initializer()
        graph.finalize()
        with tf.Session(graph=graph, config=session_config(tf)) as sess:
            sess.run(init)
            loop.start(sess, initial)
            switch = late_lr_from(self.steps)
            step = 0
            while step < self.steps:
                # one session call runs up to the next check, never across the learning-rate switch
                end = min(step + self.check_every - step % self.check_every, self.steps)
                if step < switch < end:
                    end = switch
                loss, margins = loop.run(sess, end - step, self.lr if step < switch else self.late_lr)
                bar.update(len(images) * (end - step))
                step = end
                if step % self.check_every == 0 or step == self.steps:
                    reached = int((margins > 0).sum())
                    bar.set_postfix(loss=f"{loss:.4g}", at_target=f"{reached}/{len(images)}", refresh=False)
                    if self.early_stop_margin is not None and margins.min() >= self.early_stop_margin:
                        bar.update(len(images) * (self.steps - step))
                        break
            noise, predictions, probabilities, cross_entropy, predictions_8bit = sess.run(
                [loop.noise, loop.predictions, loop.probabilities, loop.cross_entropy, loop.predictions_8bit])
        return (noise, predictions, probabilities, cross_entropy, np.full(len(images), step, np.int64),
                predictions_8bit)


def _assemble(images, targets, labels, parts) -> PerImageResult:
    noise, predictions, probabilities, cross_entropy, steps_run, predictions_8bit = (
        np.concatenate(x) for x in zip(*parts))
    return PerImageResult(
        originals=images, noise=noise, adversarial=np.clip(images + noise, 0.0, 1.0), labels=labels,
        targets=targets.astype(np.int64), predictions=predictions.astype(np.int64),
        target_probability=probabilities[np.arange(len(targets)), targets],
        cross_entropy=cross_entropy, steps_run=steps_run, predictions_8bit=predictions_8bit.astype(np.int64))


class AttackInterrupted(KeyboardInterrupt):
    """Ctrl-C after at least one chunk finished: ``partial`` holds those images' results.

    Chunks run in order with the same boundaries as an uninterrupted run, so the
    partial result is exactly the first images of the full run.
    """

    def __init__(self, partial: PerImageResult):
        super().__init__(f"interrupted after {len(partial.noise)} images")
        self.partial = partial


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
            cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits)
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
        # what a saved 8-bit PNG holds (advmnist.attack.to_8bit, in the graph: no second session)
        rounded = tf.round(tf.clip_by_value(images + noise, 0.0, 1.0) * 255.0) / 255.0
        self.predictions_8bit = tf.argmax(logits_fn(rounded), 1, output_type=tf.int32)
        target_logit = tf.gather(logits, targets, batch_dims=1)
        others = logits - 1e9 * tf.one_hot(targets, NUM_CLASSES)
        self.margin = target_logit - tf.reduce_max(others, axis=1)
        self.predictions = tf.argmax(logits, 1, output_type=tf.int32)
        self.probabilities = tf.nn.softmax(logits)

    def start(self, sess, initial_noise: np.ndarray) -> None:
        """Set the noise and forget Adam's moments."""
        sess.run(self.reset, {self.noise_value: initial_noise})

    def run(self, sess, steps: int, learning_rate: float) -> tuple[float, np.ndarray]:
        """``steps`` Adam steps; the loss of the last one and every image's margin after them."""
        _, loss = sess.run([self.advance, self.loss], {self.step_count: steps, self.learning_rate: learning_rate})
        return float(loss), sess.run(self.margin)


# ---------------------------------------------------------------------------- universal noise

class UniversalNoise:
    """One noise shared by every image, pushing all of them to one target class.

    As in Hvass-Labs' tutorial #12: the loss is the mean cross-entropy towards the
    target over a batch of training images plus ``l2_weight * sum(noise^2) / 2``;
    Adam; the noise is clipped to [-noise_limit, noise_limit] after every step.

    The graph is built into the current default graph so that adversarial training
    can alternate noise steps and network steps in one session.
    """

    def __init__(self, logits_fn: LogitsFn, *, noise_limit: float = 0.35, l2_weight: float = 0.02,
                 lr: float = 1e-2, batch_size: int = 64, scope: str = "universal_noise"):
        if not 0 < noise_limit <= 1:
            raise InvalidInput(f"expected a noise limit in (0, 1], got {noise_limit}")
        tf = tf1()
        self.lr = lr
        self.batch_size = batch_size
        self.noise_limit = noise_limit
        self.images = tf.placeholder(tf.float32, (None, IMAGE_SIZE, IMAGE_SIZE), name=f"{scope}_images")
        self.target = tf.placeholder(tf.int32, (), name=f"{scope}_target")
        targets = tf.fill(tf.shape(self.images)[:1], self.target)
        self.net = NoiseGraph(logits_fn, self.images, targets, (IMAGE_SIZE, IMAGE_SIZE),
                              regularizer=L2(l2_weight), ce_weight=1.0 / batch_size, noise_limit=noise_limit,
                              scope=scope)

    def optimize(self, sess, images: np.ndarray, target: int, *, steps: int, seed: int,
                 progress: bool = False, initial: np.ndarray | None = None) -> np.ndarray:
        """Optimize the noise for ``target`` on random batches of ``images``; return it."""
        rng = np.random.default_rng(seed)
        start = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.float32) if initial is None else initial
        self.net.start(sess, start, self.lr)
        with progress_bar(steps, f"universal noise -> {target}", progress) as bar:
            for step in range(steps):
                batch = images[rng.integers(0, len(images), self.batch_size)]
                _, loss = sess.run([self.net.step, self.net.loss], {self.images: batch, self.target: target})
                bar.update(1)
                if step % 50 == 0:
                    bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
        return sess.run(self.net.noise)

    def predict(self, sess, images: np.ndarray, noise: np.ndarray | None = None, batch_size: int = 1000):
        """Predictions for ``clip(images + noise)`` (the current noise if ``noise`` is None)."""
        if noise is not None:
            self.net.set_noise(sess, noise)
        out = [sess.run(self.net.predictions, {self.images: images[i:i + batch_size]})
               for i in range(0, len(images), batch_size)]
        return np.concatenate(out)
