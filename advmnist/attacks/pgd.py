"""Projected gradient descent (Madry et al. 2018): the strongest attack within a budget eps, per image.

Each image starts at a random point of its eps-ball (uniform in the L-infinity box; for
L2 uniform in the ball) and takes ``steps`` steps of size ``rel_step * eps`` (0.1 eps by
default) on the
cross-entropy (away from the true label, or, targeted, towards the target): the sign
of the gradient for L-infinity, the L2-normalized gradient for L2, each followed by the
projection onto the ball and onto valid pixels [0, 1].

The cost follows the images still standing. The steps run inside the graph,
``check_every`` per session call; after each call the images that are fooled leave the
batch with their adversarial example (a success is final: PGD asks whether *some*
point of the ball fools the network). The images still standing after ``steps`` start
again from a new random point, up to ``restarts`` times. Each image's random starts
are drawn from a generator seeded by the seed, the restart and the image's position,
so which other images share its batch changes nothing, and more steps or restarts
only ever add chances: on a fixed seed they never make the attack weaker.
"""
from __future__ import annotations

import numpy as np

from advmnist.attacks.base import (Attack, AttackResult, check_counts, check_eps, is_targeted, progress_bar,
                                   rounded_to_8bit, row_cross_entropy)
from advmnist.errors import InvalidInput
from advmnist.tfcompat import session_config, tf1
from advmnist.attacks.norms import L2, Linf

PGD_NORMS = (Linf.name, L2.name)


class PGD(Attack):
    """Projected gradient descent with random starts, within a budget ``eps`` per image.

    Args:
        norm: ``linf`` or ``l2``: the ball the perturbation stays in.
        eps: the ball's radius: a number, or one per image (an array of N).
        steps: gradient steps per start.
        restarts: starts per image (the first included) while it is still standing.
        rel_step: step size as a fraction of eps. Madry et al. took 1/30 (0.01 for eps 0.3); on our
            seed-0 CNN at Linf 0.1, 40 steps of 0.1 eps left 51 % of 1000 test images robust
            against 62 % with 1/30 (steps of 0.15-0.25 eps: 50.5-50.9 %).
        check_every: steps per session call; fooled images leave the batch between calls.
        chunk_size: images in one session call at most; bounds memory for any count.

    ``info``: ``steps_run`` (steps spent on each image) and ``broken_at`` (the step, counted over
    all its starts, after which it was first fooled; 0 if already misclassified or fooled by a
    random start, -1 if never).

    Example:
        >>> result = PGD("linf", 0.1)(model.logits, images, labels, seed=0)
        >>> 1 - result.success.mean()   # robust accuracy at Linf eps = 0.1
    """

    NORMS = PGD_NORMS

    def __init__(self, norm: str = Linf.name, eps=0.3, *, steps: int = 40, restarts: int = 1, rel_step: float = 0.1,
                 check_every: int = 10, chunk_size: int = 1024):
        check_budget("PGD", PGD_NORMS, norm, eps)
        check_counts(steps=steps, restarts=restarts, check_every=check_every, chunk_size=chunk_size)
        if not 0 < rel_step <= 1:
            raise InvalidInput(f"expected 0 < rel_step <= 1, got {rel_step}")
        self.norm = norm
        self.eps = eps
        self.steps = steps
        self.restarts = restarts
        self.rel_step = rel_step
        self.check_every = check_every
        self.chunk_size = chunk_size

    def run(self, logits_fn, images, labels, targets, *, draws, progress) -> AttackResult:
        targeted = is_targeted(targets)
        with PGDSession(logits_fn, self.norm, targeted=targeted) as session:
            return self.run_in(session, images, labels, targets, draws=draws, progress=progress)

    def run_in(self, session: "PGDSession", images, labels, targets, *, draws, progress) -> AttackResult:
        """The attack in an open :class:`PGDSession` (of this norm; checked inputs): several budgets or
        batches can share one graph and session."""
        count = len(images)
        targeted = is_targeted(targets)
        if session.norm != self.norm or (count and session.targeted != targeted):
            raise InvalidInput(f"expected a {self.norm} {'targeted' if targeted else 'untargeted'} PGD session, got "
                               f"a {session.norm} {'targeted' if session.targeted else 'untargeted'} one")
        loop, sess = session.loop, session.sess
        eps = np.broadcast_to(np.asarray(self.eps, np.float32), (count,)).copy()
        adversarial = images.copy()
        steps_run = np.zeros(count, np.int64)
        broken_at = np.full(count, -1, np.int64)
        bar = progress_bar(count, f"PGD {self.norm} (images decided)", progress)
        with bar:
            # images already fooled without any change need no attack
            fooled = loop.fooled(sess, images, labels, targets)
            broken_at[fooled] = 0
            bar.update(int(fooled.sum()))
            for start in range(0, count, self.chunk_size):
                chunk = np.arange(start, min(start + self.chunk_size, count))
                standing = chunk[~fooled[chunk] & (eps[chunk] > 0)]  # a ball of radius 0 holds nothing else
                for restart in range(self.restarts):
                    if not len(standing):
                        break
                    delta = self._random_start(images[standing], eps[standing], draws, restart, standing)
                    for begin in range(0, self.steps, self.check_every):
                        if not len(standing):
                            break
                        todo = min(self.check_every, self.steps - begin)
                        delta, hit, at = loop.run(sess, images[standing], delta, eps[standing], labels[standing],
                                                  targets[standing], todo, self.rel_step)
                        broken_at[standing[hit]] = steps_run[standing[hit]] + at[hit]
                        steps_run[standing] += todo
                        adversarial[standing[hit]] = images[standing[hit]] + delta[hit]
                        fooled[standing[hit]] = True
                        standing, delta = standing[~hit], delta[~hit]
                        bar.update(int(hit.sum()))
                        bar.set_postfix(standing=len(standing), restart=restart + 1, refresh=False)
                    # the ones still standing keep their last attempt (replaced if a restart fools them)
                    adversarial[standing] = images[standing] + delta
                bar.update(len(standing))
            predictions, predictions_8bit = loop.predict(sess, adversarial)
        return AttackResult(originals=images, adversarial=adversarial, noise=adversarial - images, labels=labels,
                            targets=targets, predictions=predictions, predictions_8bit=predictions_8bit,
                            info={"steps_run": steps_run, "broken_at": broken_at})

    def _random_start(self, images, eps, draws, restart: int, indices) -> np.ndarray:
        return random_start(self.norm, images, eps, draws, indices, restart)


def check_budget(attack: str, norms: tuple[str, ...], norm: str, eps) -> None:
    """Refuse a norm outside ``norms`` and an eps (a number or one per image) that is not finite, is
    negative, or (L-infinity) is above 1 (:func:`~advmnist.attacks.base.check_eps`)."""
    if norm not in norms:
        raise InvalidInput(f"expected a {attack} norm in {list(norms)}, got {norm!r}")
    check_eps(norm, eps)


def random_start(norm: str, images, eps, draws, indices, *key: int) -> np.ndarray:
    """A uniform point of each image's ball (then clipped to valid pixels), drawn from
    ``draws.generator(index, *key)`` for each image ``indices[k]``: the perturbations (N, 28, 28)."""
    pixels = images[0].size if len(images) else 0
    starts = np.empty(images.shape, np.float32)
    for k, (index, radius) in enumerate(zip(indices, eps)):
        rng = draws.generator(index, *key)
        if norm == Linf.name:
            starts[k] = rng.uniform(-radius, radius, images.shape[1:])
        else:
            direction = rng.standard_normal(images.shape[1:])
            starts[k] = direction / np.linalg.norm(direction) * radius * rng.uniform() ** (1 / pixels)
    return np.clip(images + starts, 0.0, 1.0) - images


class GraphSession:
    """A graph (``loop = build()``, built into a graph of its own and finalized) and its session, for ``with``."""

    def __init__(self, build):
        tf = tf1()
        self.graph = tf.Graph()
        with self.graph.as_default():
            self.loop = build()
        self.graph.finalize()
        self.sess = tf.Session(graph=self.graph, config=session_config(tf))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.sess.close()


class PGDSession(GraphSession):
    """A PGD graph (:class:`PGDLoop`) and its session, for ``with``: one per network, norm and criterion."""

    def __init__(self, logits_fn, norm: str, *, targeted: bool):
        self.norm, self.targeted = norm, targeted
        super().__init__(lambda: PGDLoop(logits_fn, norm, targeted=targeted))


class PGDLoop:
    """The PGD steps of a batch of any size, in one session call: the state goes in and out as arrays."""

    def __init__(self, logits_fn, norm: str, *, targeted: bool):
        tf = tf1()
        self.images = tf.placeholder(tf.float32, (None, 28, 28), name="images")
        self.delta = tf.placeholder(tf.float32, (None, 28, 28), name="delta")
        self.eps = tf.placeholder(tf.float32, (None,), name="eps")
        self.labels = tf.placeholder(tf.int32, (None,), name="labels")
        self.targets = tf.placeholder(tf.int32, (None,), name="targets")
        self.steps = tf.placeholder(tf.int32, (), name="steps")
        self.rel_step = tf.placeholder(tf.float32, (), name="rel_step")
        self.targeted = targeted
        x, radius = self.images, self.eps[:, None, None]
        step = self.rel_step * radius

        def reached(logits):
            predictions = tf.argmax(logits, 1, output_type=tf.int32)
            return tf.equal(predictions, self.targets) if targeted else tf.not_equal(predictions, self.labels)

        def body(i, delta, hit, hit_at):
            logits = logits_fn(x + delta)
            now = reached(logits)
            hit_at = tf.where(tf.logical_and(now, tf.logical_not(hit)), tf.fill(tf.shape(hit_at), i), hit_at)
            hit = tf.logical_or(hit, now)
            chosen = self.targets if targeted else self.labels
            loss = tf.reduce_sum(row_cross_entropy(logits, chosen))
            (gradient,) = tf.gradients(-loss if targeted else loss, [delta])
            if norm == Linf.name:
                moved = tf.clip_by_value(delta + step * tf.sign(gradient), -radius, radius)
            else:
                length = tf.norm(tf.reshape(gradient, (-1, 784)), axis=1)[:, None, None]
                moved = delta + step * gradient / tf.maximum(length, 1e-12)
                size = tf.norm(tf.reshape(moved, (-1, 784)), axis=1)[:, None, None]
                moved = moved * tf.minimum(1.0, radius / tf.maximum(size, 1e-12))
            moved = tf.clip_by_value(x + moved, 0.0, 1.0) - x
            # a fooled image stays where it was fooled
            return i + 1, tf.where(tf.broadcast_to(hit[:, None, None], tf.shape(delta)), delta, moved), hit, hit_at

        no_hit = tf.zeros(tf.shape(self.eps), tf.bool)
        start = [tf.constant(0), self.delta, no_hit, tf.fill(tf.shape(self.eps), -1)]
        _, delta, hit, hit_at = tf.while_loop(lambda i, *_: i < self.steps, body, start, parallel_iterations=1,
                                      name="pgd_steps")
        self.final_delta = delta
        self.final_hit = tf.logical_or(hit, reached(logits_fn(x + delta)))
        # the step after which each image was first fooled (``steps`` if only the last one fooled it)
        self.final_hit_at = tf.where(tf.logical_and(self.final_hit, tf.logical_not(hit)),
                                     tf.fill(tf.shape(hit_at), self.steps), hit_at)
        self.clean = Predictions(logits_fn, x)
        self.reached_now = reached(self.clean.logits)
        # main's names, which :meth:`predict` reads (Square's loop borrows it with its own ops of these names)
        self.predictions, self.predictions_8bit = self.clean.predictions, self.clean.predictions_8bit

    def _feed(self, images, labels, targets) -> dict:
        return {self.images: images, self.labels: np.maximum(labels, 0), self.targets: np.maximum(targets, 0)}

    def fooled(self, sess, images, labels, targets) -> np.ndarray:
        if not len(images):
            return np.zeros(0, bool)
        return sess.run(self.reached_now, self._feed(images, labels, targets))

    def run(self, sess, images, delta, eps, labels, targets, steps: int, rel_step: float):
        """``steps`` steps; the new perturbations, which images are fooled (those keep their perturbation) and
        after how many of these steps (-1: not fooled)."""
        return sess.run([self.final_delta, self.final_hit, self.final_hit_at],
                        {**self._feed(images, labels, targets), self.delta: delta, self.eps: eps, self.steps: steps,
                         self.rel_step: rel_step})

    def predict(self, sess, images, batch: int = 2000):
        """The predictions (as given, rounded to 8 bits) of ``images`` (int64): :meth:`Predictions.predict`,
        which needs only ``images``, ``predictions`` and ``predictions_8bit`` of the loop it is called on."""
        return Predictions.predict(self, sess, images, batch)


class Predictions:
    """Graph ops for a batch of images fed to ``images``: the logits, and the predicted classes as given and
    rounded to 8-bit pixels (what a saved PNG holds)."""

    def __init__(self, logits_fn, images):
        tf = tf1()
        self.images = images
        self.logits = logits_fn(images)
        self.predictions = tf.argmax(self.logits, 1, output_type=tf.int32)
        self.predictions_8bit = tf.argmax(logits_fn(rounded_to_8bit(images)), 1, output_type=tf.int32)

    def predict(self, sess, images, batch: int = 2000):
        """The predictions (as given, rounded to 8 bits) of ``images``, ``batch`` per session call (int64)."""
        outs = [sess.run([self.predictions, self.predictions_8bit], {self.images: images[i:i + batch]})
                for i in range(0, len(images), batch)]
        if not outs:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return tuple(np.concatenate([o[k] for o in outs]).astype(np.int64) for k in (0, 1))

    def logits_of(self, sess, images, batch: int = 2000) -> np.ndarray:
        """The logits of ``images`` (N, classes), ``batch`` per session call."""
        outs = [sess.run(self.logits, {self.images: images[i:i + batch]}) for i in range(0, len(images), batch)]
        return np.concatenate(outs) if outs else np.zeros((0, self.logits.shape[-1]), np.float32)
