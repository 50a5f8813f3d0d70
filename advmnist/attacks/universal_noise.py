"""Universal noise (the second reference experiment): one pattern for every image, per target class.

As in Hvass-Labs' TensorFlow tutorial #12: one 28x28 noise is added to every image
(``clip(image + noise, 0, 1)``) and optimized with Adam on random batches of
*training* images towards one target class; the loss is the mean cross-entropy
towards the target plus ``l2_weight * sum(noise^2) / 2``, and the noise is clipped to
[-noise_limit, +noise_limit] after every step.

:class:`UniversalNoiseGraph` is the optimizer, built into the current graph so that
adversarial training (:mod:`advmnist.defences.universal_immunization`) can alternate noise steps and network
steps in one session; :class:`UniversalNoise` is the attack of the contract, which
applies one noise per target class to the images it is given.
"""
from __future__ import annotations

import numpy as np

from advmnist.attacks.base import Attack, AttackResult, LogitsFn, progress_bar, rounded_to_8bit
from advmnist.attacks.norms import L2, Linf, Regularizer
from advmnist.data.mnist import IMAGE_SIZE
from advmnist.errors import InvalidInput
from advmnist.tfcompat import session_config, tf1


class UniversalNoiseGraph:
    """One noise shared by every image of a batch, pushing all of them to one target class.

    One session step (:meth:`optimize`) takes one Adam step on a new random batch, so
    steps are ``sess.run`` calls; :meth:`predict` measures a noise on any images.
    """

    def __init__(self, logits_fn: LogitsFn, *, noise_limit: float = 0.35, l2_weight: float = 0.02,
                 lr: float = 1e-2, batch_size: int = 64, scope: str = "universal_noise", with_8bit: bool = False):
        if not 0 < noise_limit <= 1:
            raise InvalidInput(f"expected a noise limit in (0, 1], got {noise_limit}")
        tf = tf1()
        self.lr = lr
        self.batch_size = batch_size
        self.noise_limit = noise_limit
        shape = (IMAGE_SIZE, IMAGE_SIZE)
        self.images = tf.placeholder(tf.float32, (None,) + shape, name=f"{scope}_images")
        self.target = tf.placeholder(tf.int32, (), name=f"{scope}_target")
        targets = tf.fill(tf.shape(self.images)[:1], self.target)
        regularizer = Regularizer(L2(), l2_weight)
        with tf.variable_scope(scope):
            self.noise_value = tf.placeholder(tf.float32, shape, name="noise_value")
            self.noise = tf.get_variable("noise", shape, tf.float32, tf.zeros_initializer(), trainable=False)
            self.learning_rate = tf.get_variable("learning_rate", (), tf.float32, tf.zeros_initializer(),
                                                 trainable=False)
            self.new_learning_rate = tf.placeholder(tf.float32, (), name="new_learning_rate")
            self.set_learning_rate = tf.assign(self.learning_rate, self.new_learning_rate)
            adversarial = tf.clip_by_value(self.images + self.noise, 0.0, 1.0, name="adversarial")
        logits = logits_fn(adversarial)
        with tf.variable_scope(scope):
            cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits)
            self.loss = (1.0 / batch_size) * tf.reduce_sum(cross_entropy) + regularizer.cost(self.noise)
            self.predictions = tf.argmax(logits, 1, output_type=tf.int32)
            optimizer = tf.train.AdamOptimizer(self.learning_rate)
            step = optimizer.minimize(self.loss, var_list=[self.noise])
            with tf.control_dependencies([step]):
                self.step = tf.assign(self.noise, tf.clip_by_value(self.noise, -noise_limit, noise_limit))
            self.assign_noise = tf.assign(self.noise, self.noise_value)
            self.reset = tf.group(self.assign_noise, tf.variables_initializer(optimizer.variables()))
        # only on request: extra ops would shift the op-level seeds of a live network built after it
        self.predictions_8bit = (tf.argmax(logits_fn(rounded_to_8bit(self.images + self.noise)), 1,
                                           output_type=tf.int32) if with_8bit else None)

    def optimize(self, sess, images: np.ndarray, target: int, *, steps: int, seed: int,
                 progress: bool = False, initial: np.ndarray | None = None) -> np.ndarray:
        """Optimize the noise for ``target`` on random batches of ``images``; return it."""
        rng = np.random.default_rng(seed)
        start = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.float32) if initial is None else initial
        sess.run([self.reset, self.set_learning_rate], {self.noise_value: start, self.new_learning_rate: self.lr})
        with progress_bar(steps, f"universal noise -> {target}", progress) as bar:
            for step in range(steps):
                batch = images[rng.integers(0, len(images), self.batch_size)]
                _, loss = sess.run([self.step, self.loss], {self.images: batch, self.target: target})
                bar.update(1)
                if step % 50 == 0:
                    bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
        return sess.run(self.noise)

    def predict(self, sess, images: np.ndarray, noise: np.ndarray, *, rounded: bool = False,
                batch_size: int = 1000) -> np.ndarray:
        """Predictions for ``clip(images + noise)`` (``rounded``: after rounding to 8-bit pixels)."""
        sess.run(self.assign_noise, {self.noise_value: noise})
        fetch = self.predictions_8bit if rounded else self.predictions
        out = [sess.run(fetch, {self.images: images[i:i + batch_size]}) for i in range(0, len(images), batch_size)]
        return np.concatenate(out) if out else np.zeros(0, np.int32)


class UniversalNoise(Attack):
    """One universal noise per target class, fitted on ``fit_images`` and applied to the attacked images.

    Args:
        fit_images: the images the noise is optimized on (random batches; the training split).
        steps: Adam steps per noise (learning rate ``lr``, batches of ``batch_size``).
        noise_limit: the noise is clipped to [-noise_limit, +noise_limit] after every step.
        l2_weight: loss = mean cross-entropy + l2_weight * sum(noise^2) / 2.
        given: target -> a noise to apply instead of optimizing one (e.g. found against
            another network).

    The noise for target t is seeded by ``seed * 100 + t``. Every image needs a target
    (untargeted use is not defined), and images of the target class are attacked too:
    success is then the share of all images read as the target, as in the reference.

    Example:
        >>> attack = UniversalNoise(train.images, steps=1000)
        >>> result = attack(model.logits, test.images, test.labels, targets=np.full(len(test), 3))
        >>> result.success.mean()  # share of test images read as 3
    """

    target_may_be_label = True  # every image gets the noise, those already of the target class too
    NORMS = (Linf.name,)  # the noise is clipped to a Linf bound

    def __init__(self, fit_images: np.ndarray, *, steps: int = 1000, noise_limit: float = 0.35,
                 l2_weight: float = 0.02, lr: float = 1e-2, batch_size: int = 64,
                 given: dict[int, np.ndarray] | None = None):
        if steps < 1:
            raise InvalidInput(f"expected steps >= 1, got {steps}")
        self.fit_images = np.asarray(fit_images, np.float32)
        self.steps, self.noise_limit, self.l2_weight = steps, noise_limit, l2_weight
        self.lr, self.batch_size = lr, batch_size
        self.given = dict(given or {})

    def run(self, logits_fn, images, labels, targets, *, draws, progress) -> AttackResult:
        if (targets < 0).any():
            raise InvalidInput("expected a target for every image: a universal noise is made for one target class")
        tf = tf1()
        graph = tf.Graph()
        with graph.as_default():
            universal = UniversalNoiseGraph(logits_fn, noise_limit=self.noise_limit, l2_weight=self.l2_weight,
                                            lr=self.lr, batch_size=self.batch_size, with_8bit=True)
            init = tf.global_variables_initializer()
        graph.finalize()
        noise = np.zeros_like(images)
        predictions = np.zeros(len(images), np.int64)
        predictions_8bit = np.zeros(len(images), np.int64)
        with tf.Session(graph=graph, config=session_config(tf)) as sess:
            sess.run(init)
            for target in sorted(set(targets.tolist())):
                chosen = np.flatnonzero(targets == target)
                if target in self.given:
                    pattern = np.asarray(self.given[target], np.float32)
                else:
                    pattern = universal.optimize(sess, self.fit_images, target, steps=self.steps,
                                                 seed=draws.seed * 100 + target, progress=progress)
                noise[chosen] = pattern
                predictions[chosen] = universal.predict(sess, images[chosen], pattern)
                predictions_8bit[chosen] = universal.predict(sess, images[chosen], pattern, rounded=True)
        return AttackResult(originals=images, adversarial=np.clip(images + noise, 0.0, 1.0), noise=noise,
                            labels=labels, targets=targets, predictions=predictions,
                            predictions_8bit=predictions_8bit)
