"""Minimal-norm attack: the smallest perturbation, per image, that reaches the target.

The search is Fast Minimum-Norm (FMN, Pintor et al. 2021), run for a whole batch of
images inside one TensorFlow graph (a ``tf.while_loop``, ``check_every`` steps per
session call): every image carries its own perturbation ``delta``, its own radius
``epsilon`` and its own best result, and each step

1. evaluates the network at ``x + delta`` and at its rounding to 8-bit pixels;
2. keeps the rounded image as the image's best if it succeeds and its effective
   change is smaller, in the norm, than the best so far;
3. adapts ``epsilon``: shrink it by a factor ``1 - gamma`` while the 8-bit image fools
   the network (never above the best norm found), grow it by ``1 + gamma`` while it does
   not; before the first success take the larger of that growth and FMN's linear
   estimate of the boundary (``||delta|| + margin / ||gradient||_dual``: alone, it left
   45 of 1000 untargeted test images stalled just short of the boundary);
4. steps along the L2-normalized gradient of the logit margin, projects onto the
   ``epsilon``-ball of the norm, and clips to valid pixels.

Step size and ``gamma`` follow a cosine schedule from large to small. After the steps,
a binary search along the norm's shrinking path (:meth:`~advmnist.attacks.norms.Norm.shrink`)
moves each best result towards the original as long as its 8-bit rounding still
succeeds; its norm can only fall. Every result is an 8-bit image, so a saved PNG fools
the network exactly as reported. An image that never succeeds is returned with its
closest attempt (the smallest logit margin seen), rounded.

``starts`` runs several searches per image side by side in the same batch, the first
from the image itself and the others from random points at ``START_RADIUS`` (in the
norm), and keeps the smallest success. On MNIST the search settles in a local minimum
within about a hundred steps, and starts from elsewhere find smaller ones more often
than longer searches do; the default spends Foolbox's 1000 gradient steps per image as
8 starts of 125.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from advmnist.attacks.base import (UNTARGETED, Attack, AttackInterrupted, AttackResult, is_targeted, progress_bar,
                                   rounded_to_8bit)
from advmnist.attacks.eps_search import SEARCH_NORMS, TIE, search_eps
from advmnist.attacks.norms import L1, L2, NORMS, Linf, get_norm
from advmnist.data.mnist import NUM_CLASSES
from advmnist.errors import InvalidInput
from advmnist.tfcompat import session_config, tf1

#: FMN's first step size (its L2 length), for images in [0, 1]; the last step is 1/100 of it
MAX_STEP = 1.0
#: the size, in the norm, of the random perturbation each start but the first begins from
START_RADIUS = {L2.name: 2.0, L1.name: 20.0, Linf.name: 0.1}


class MinimalNorm(Attack):
    """The smallest perturbation in ``norm`` that reaches the target (or any wrong class).

    Args:
        norm: ``l2``, ``l1`` or ``linf``: the norm of the effective change that is minimized.
        steps: search steps of each start.
        starts: searches per image run side by side; the smallest success is kept.
        max_step: the first step's length; the last is 1/100 of it.
        gamma: the first step's relative change of the radius; it falls to 0.001.
        refine_steps: binary-search steps of the final shrinking towards the original.
        batch_rows: images times starts in one graph; bounds memory for any count.
        check_every: steps per session call (the progress bar's and Ctrl-C's granularity).
        search_rounds: after FMN, rounds of a bisection over eps with APGD-CE and APGD-T from each image's
            best norm (:mod:`advmnist.attacks.eps_search`); only for the untargeted criterion in ``linf`` and
            ``l2``, where AutoAttack's members apply. 0 keeps FMN's results.

    Example:
        >>> attack = MinimalNorm("l2", steps=125, starts=8)
        >>> result = attack(model.logits, images, labels, targets=(labels + 1) % 10, seed=0)
        >>> result.success_8bit.mean(), result.norms["l2"].mean()
    """

    NORMS = (L2.name, L1.name, Linf.name)

    def __init__(self, norm: str = L2.name, *, steps: int = 125, starts: int = 8, max_step: float = MAX_STEP,
                 gamma: float = 0.05, refine_steps: int = 12, batch_rows: int = 512, check_every: int = 25,
                 search_rounds: int = 0):
        self.norm = get_norm(norm)
        if steps < 1 or starts < 1 or refine_steps < 0:
            raise InvalidInput(f"expected steps >= 1, starts >= 1, refine_steps >= 0, got {steps}, {starts}, "
                               f"{refine_steps}")
        if search_rounds < 0:
            raise InvalidInput(f"expected search_rounds >= 0, got {search_rounds}")
        if batch_rows < 1 or check_every < 1:
            raise InvalidInput(f"expected batch_rows and check_every >= 1, got {batch_rows}, {check_every}")
        if not 0 < gamma < 1 or not max_step > 0:
            raise InvalidInput(f"expected 0 < gamma < 1 and max_step > 0, got {gamma}, {max_step}")
        self.steps = steps
        self.starts = starts
        self.max_step = float(max_step)
        self.gamma = gamma
        self.refine_steps = refine_steps
        self.batch_rows = batch_rows
        self.check_every = check_every
        self.search_rounds = search_rounds

    @property
    def chunk_size(self) -> int:
        """Images per graph: ``batch_rows`` rows hold that many images times their starts."""
        return max(1, self.batch_rows // self.starts)

    def run(self, logits_fn, images, labels, targets, *, draws, progress) -> AttackResult:
        if not len(images):
            empty = np.zeros(0, np.int64)
            searched = {"searched_smaller": np.zeros(0, bool)} if self.searches(targets) else {}
            return AttackResult(originals=images, adversarial=images, noise=images, labels=labels, targets=targets,
                                predictions=empty, predictions_8bit=empty,
                                info={"found": np.zeros(0, bool), "norm_history": np.zeros((0, 0), np.float32),
                                      **searched})
        initial = self._start_points(images, draws)
        parts = []
        bar = progress_bar(self.steps * self.starts * len(images), f"minimal {self.norm.name}", progress)
        try:
            with bar:
                for start in range(0, len(images), self.chunk_size):
                    part = slice(start, start + self.chunk_size)
                    parts.append(self._run_chunk(logits_fn, images[part], labels[part], targets[part],
                                                 initial[:, part], bar))
        except KeyboardInterrupt:
            if not parts:
                raise
            raise AttackInterrupted(AttackResult.concatenate(parts)) from None
        result = AttackResult.concatenate(parts)
        if not self.searches(targets):
            return result
        try:
            return self._search_eps(logits_fn, result, draws, progress)
        except KeyboardInterrupt:  # FMN's results stand
            raise AttackInterrupted(result) from None

    def searches(self, targets) -> bool:
        """Whether the bisection with APGD follows FMN for these targets (None or all UNTARGETED: untargeted),
        in this norm (linf or l2) and with rounds > 0."""
        untargeted = targets is None or not is_targeted(np.asarray(targets))
        return self.search_rounds > 0 and self.norm.name in SEARCH_NORMS and untargeted

    def _search_eps(self, logits_fn, result: AttackResult, draws, progress) -> AttackResult:
        """FMN's results, each replaced by a smaller one that the APGD bisection finds and :func:`refine`
        shrinks; ``info["searched_smaller"]`` marks those."""
        found = result.info["found"]
        with progress_bar(self.search_rounds, f"minimal {self.norm.name}: APGD search over eps (rounds)",
                          progress) as bar:
            def on_round(searched: int) -> None:
                bar.update(1)
                bar.set_postfix(searched=searched, refresh=False)

            delta = search_eps(logits_fn, result.originals, result.labels, result.adversarial - result.originals,
                               found, self.norm.name, rounds=self.search_rounds, draws=draws, on_round=on_round)
        # smaller by more than float rounding (the same 8-bit change can differ in its last bits)
        smaller = found & (self.norm.measure(delta) < result.norms[self.norm.name] - TIE)
        adversarial, predictions = result.adversarial.copy(), result.predictions.copy()
        if smaller.any():
            part = np.flatnonzero(smaller)
            adversarial[part], predictions[part] = refine(
                logits_fn, result.originals[part], result.labels[part], result.targets[part], delta[part].reshape(
                    len(part), -1), found[part], self.norm.name, self.refine_steps)
        return dataclasses.replace(result, adversarial=adversarial, noise=adversarial - result.originals,
                                   predictions=predictions, predictions_8bit=predictions.copy(),
                                   info={**result.info, "searched_smaller": smaller})

    def _start_points(self, images: np.ndarray, draws) -> np.ndarray:
        """(starts, N, 28, 28): zero for the first start, random points of the norm's START_RADIUS after."""
        deltas = np.zeros((self.starts,) + images.shape, np.float32)
        normal = draws.normal_rows(images.shape[1:], blocks=self.starts - 1)
        for k in range(1, self.starts):
            noise = normal[k - 1].astype(np.float32)
            noise *= START_RADIUS[self.norm.name] / self.norm.measure(noise)[:, None, None]
            deltas[k] = np.clip(images + noise, 0.0, 1.0) - images
        return deltas

    def _run_chunk(self, logits_fn, images, labels, targets, initial, bar) -> AttackResult:
        tf = tf1()
        count, starts = len(images), self.starts
        graph = tf.Graph()
        with graph.as_default():
            search = FMNSearch(logits_fn, np.tile(images, (starts, 1, 1)), np.tile(labels, starts),
                               np.tile(targets, starts), self.norm.name, max_step=self.max_step,
                               total_steps=self.steps, gamma=self.gamma)
        graph.finalize()
        history = []
        with tf.Session(graph=graph, config=session_config(tf)) as sess:
            search.start(sess, initial.reshape((starts * count,) + images.shape[1:]))
            for begin in range(0, self.steps, self.check_every):
                end = min(begin + self.check_every, self.steps)
                best = search.run(sess, begin, end).reshape(starts, count).min(0)
                history.append(best)
                found = np.isfinite(best)
                bar.update(starts * count * (end - begin))
                bar.set_postfix(found=f"{int(found.sum())}/{count}",
                                **({f"median_{self.norm.name}": f"{np.median(best[found]):.4g}"} if found.any()
                                   else {}), refresh=False)
            best_delta, best_norm, closest_delta, closest_margin = sess.run(
                [search.best_delta, search.best_norm, search.closest_delta, search.closest_margin])
        # each image's smallest success over its starts, or its closest attempt if none succeeded
        best_norm, closest_margin = best_norm.reshape(starts, count), closest_margin.reshape(starts, count)
        columns = np.arange(count)
        best_rows = np.argmin(best_norm, axis=0) * count + columns
        closest_rows = np.argmin(closest_margin, axis=0) * count + columns
        found = np.isfinite(best_norm.min(0))
        delta = np.where(found[:, None], best_delta[best_rows], closest_delta[closest_rows])
        adversarial, predictions = refine(logits_fn, images, labels, targets, delta, found, self.norm.name,
                                          self.refine_steps)
        # the results are 8-bit images already: rounding them again changes nothing
        return AttackResult(originals=images, adversarial=adversarial, noise=adversarial - images, labels=labels,
                            targets=targets, predictions=predictions, predictions_8bit=predictions.copy(),
                            info={"found": found, "norm_history": np.stack(history, 1).astype(np.float32)})


def margin_and_success(logits, labels, targets, targeted: bool):
    """The logit margin to minimize (< 0 once the criterion holds) and the criterion itself."""
    tf = tf1()
    chosen = targets if targeted else labels
    chosen_logit = tf.gather(logits, chosen, batch_dims=1)
    best_other = tf.reduce_max(logits - 1e9 * tf.one_hot(chosen, NUM_CLASSES), axis=1)
    predictions = tf.argmax(logits, 1, output_type=tf.int32)
    if targeted:
        return best_other - chosen_logit, tf.equal(predictions, targets)
    return chosen_logit - best_other, tf.not_equal(predictions, labels)


class FMNSearch:
    """The in-graph search state of a batch and the loop that advances it (see the module's text).

    ``best_norm`` is inf, and ``best_delta`` zero, for a row without a success yet;
    ``closest_delta`` is the (unrounded) attempt with the smallest logit margin.
    """

    def __init__(self, logits_fn, images: np.ndarray, labels: np.ndarray, targets: np.ndarray, norm: str, *,
                 max_step: float, total_steps: int, gamma: float, min_gamma: float = 0.001):
        tf = tf1()
        norm = NORMS[norm]
        batch, pixels = len(images), int(np.prod(images.shape[1:]))
        shape = (batch,) + images.shape[1:]
        targeted = bool((targets != UNTARGETED).all())
        x = tf.constant(images.reshape(batch, pixels), name="images")
        labels = tf.constant(np.maximum(labels, 0).astype(np.int32))
        targets = tf.constant(np.maximum(targets, 0).astype(np.int32))
        worst = norm.size(tf.maximum(x, 1.0 - x))  # the largest change any pixel values allow

        state = self._state_variables(batch, pixels)

        def cosine(i, high, low):
            return low + (high - low) * (1.0 + tf.cos(math.pi * tf.cast(i, tf.float32) / total_steps)) / 2.0

        def body(i, delta, epsilon, best_delta, best_norm, closest_delta, closest_margin):
            step_size = cosine(i, max_step, max_step / 100.0)
            rate = cosine(i, gamma, min_gamma)
            on_grid = rounded_to_8bit(x + delta)
            logits = logits_fn(tf.reshape(x + delta, shape))
            margin, success = margin_and_success(logits, labels, targets, targeted)
            (gradient,) = tf.gradients(tf.reduce_sum(margin), [delta])
            # the best so far: an 8-bit image that succeeds, measured by its effective change
            grid_logits = logits_fn(tf.reshape(on_grid, shape))
            _, success_8bit = margin_and_success(grid_logits, labels, targets, targeted)
            grid_delta = on_grid - x
            grid_norm = norm.size(grid_delta)
            better = tf.logical_and(success_8bit, grid_norm < best_norm)
            best_norm = tf.where(better, grid_norm, best_norm)
            best_delta = tf.where(better, grid_delta, best_delta)
            closer = margin < closest_margin
            closest_margin = tf.where(closer, margin, closest_margin)
            closest_delta = tf.where(closer, delta, closest_delta)
            # the radius
            found = tf.math.is_finite(best_norm)
            boundary = norm.size(delta) + tf.abs(margin) / tf.maximum(norm.dual_size(gradient), 1e-12)
            epsilon = tf.where(success_8bit, tf.minimum(epsilon * (1.0 - rate), best_norm),
                               tf.where(found, epsilon * (1.0 + rate), tf.maximum(boundary, epsilon * (1.0 + rate))))
            epsilon = tf.minimum(epsilon, worst)
            # the step, inside the radius and the valid pixels
            direction = gradient / tf.maximum(tf.norm(gradient, axis=1, keepdims=True), 1e-12)
            delta = norm.project(delta - step_size * direction, epsilon)
            delta = tf.clip_by_value(x + delta, 0.0, 1.0) - x
            return i + 1, delta, epsilon, best_delta, best_norm, closest_delta, closest_margin

        with tf.variable_scope("minimal"):
            loop = tf.while_loop(lambda i, *_: i < self.end, body, [self.begin] + [v.read_value() for v in state],
                                 parallel_iterations=1, name="fmn_steps")
            with tf.control_dependencies([v.assign(value) for v, value in zip(state, loop[1:])]):
                self.best_after = tf.identity(loop[4])
            self.init = tf.variables_initializer(state)
            self.set_delta = self.delta.assign(self.initial)

    def _state_variables(self, batch: int, pixels: int) -> list:
        """The search's per-row state (graph variables) and the placeholders of a call: the state, in order."""
        tf = tf1()

        def variable(name, value):
            return tf.get_variable(name, initializer=value, trainable=False, use_resource=True)

        zeros, infinite = np.zeros((batch, pixels), np.float32), np.full(batch, np.inf, np.float32)
        with tf.variable_scope("minimal"):
            self.delta = variable("delta", zeros)
            self.epsilon = variable("epsilon", np.zeros(batch, np.float32))
            self.best_delta = variable("best_delta", zeros)
            self.best_norm = variable("best_norm", infinite)
            self.closest_delta = variable("closest_delta", zeros)
            self.closest_margin = variable("closest_margin", infinite)
            self.begin = tf.placeholder(tf.int32, (), name="begin")
            self.end = tf.placeholder(tf.int32, (), name="end")
            self.initial = tf.placeholder(tf.float32, (batch, pixels), name="initial")
        return [self.delta, self.epsilon, self.best_delta, self.best_norm, self.closest_delta, self.closest_margin]

    def start(self, sess, initial: np.ndarray) -> None:
        sess.run(self.init)
        sess.run(self.set_delta, {self.initial: initial.reshape(len(initial), -1)})

    def run(self, sess, begin: int, end: int) -> np.ndarray:
        """Steps ``begin`` .. ``end`` - 1; every row's best norm after them (inf: no success yet)."""
        return sess.run(self.best_after, {self.begin: begin, self.end: end})


def refine(logits_fn, images, labels, targets, delta, found, norm: str, steps: int):
    """Binary search along the norm's shrinking path while the 8-bit image succeeds.

    ``delta`` (N, 784) are the perturbations: for ``found`` images effective 8-bit changes
    that succeed, which the search only ever shrinks (the norm never grows); the others
    are kept as they are. Returns the final 8-bit images and the network's predictions.
    """
    tf = tf1()
    count = len(images)
    graph = tf.Graph()
    with graph.as_default():
        x = tf.constant(images.reshape(count, -1))
        fraction = tf.placeholder(tf.float32, (count,))
        given = tf.placeholder(tf.float32, (count, x.shape[1]))
        candidate = rounded_to_8bit(x + NORMS[norm].shrink(given, fraction))
        logits = logits_fn(tf.reshape(candidate, images.shape))
        _, success = margin_and_success(logits, tf.constant(np.maximum(labels, 0).astype(np.int32)),
                                        tf.constant(np.maximum(targets, 0).astype(np.int32)),
                                        bool((targets != UNTARGETED).all()))
        predictions = tf.argmax(logits, 1, output_type=tf.int32)
    graph.finalize()
    delta = delta.astype(np.float32)
    low, high = np.zeros(count, np.float32), np.ones(count, np.float32)
    with tf.Session(graph=graph, config=session_config(tf)) as sess:
        for _ in range(steps if found.any() else 0):
            middle = (low + high) / 2
            ok = sess.run(success, {fraction: middle, given: delta}) & found
            high, low = np.where(ok, middle, high), np.where(ok, low, middle)
        final, predicted = sess.run([candidate, predictions], {fraction: high, given: delta})
    # a pixel the search left alone is the original, exactly (the graph's k / 255 may differ from it in the last bit)
    final = np.where(np.abs(final.reshape(images.shape) - images) < 0.5 / 255, images, final.reshape(images.shape))
    return final, predicted.astype(np.int64)
