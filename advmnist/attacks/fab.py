"""Fast Adaptive Boundary attack (Croce & Hein, ICML 2020): small adversarial perturbations by
projections onto the linearized decision boundary; FAB-T, its targeted form, is AutoAttack's member.

Each step linearizes, at the current point ``x``, the logit difference ``f = z_t - z_y``
between a class ``t`` and the true class ``y`` (FAB-T: ``t`` fixed; untargeted FAB: the
class whose linearized boundary is closest in the dual norm), and projects both ``x`` and
the original ``x0`` onto that hyperplane intersected with the box of valid pixels
(:func:`boundary_projection`: ``d1`` from ``x``, ``d2`` from ``x0``). The next point is the
biased extrapolation ``(x + eta d1) (1 - alpha) + (x0 + eta d2) alpha``, clipped to [0, 1],
with ``alpha = min(|d1| / (|d1| + |d2|), alpha_max)``: the closer ``x`` is to the boundary,
the more the step leans towards the original. When the point fools the network it is
kept if it is the smallest found so far, and ``x`` takes the backward step
``x0 + beta (x - x0)``, back to the correct side, to search closer to ``x0``.

FAB-T runs the search for each of ``n_target_classes`` targets in turn: the classes of
the 2nd, 3rd, ... highest logits at the clean image, each search starting at the clean
image (``restarts`` > 1 adds starts at random points of radius ``min(eps, best)/2``).
The criterion stays untargeted: any wrong class counts. As an AutoAttack member the
attack counts an image as broken when it found an adversarial point within ``eps``;
with ``early_stop`` (the default) a broken image leaves the batch at the next session
call and is not searched for the remaining targets. ``early_stop=False`` spends every
step of every target on every image: the minimal-norm search, ``info["norm_found"]``.

The steps run inside the graph, ``check_every`` per session call, for every image of
a chunk still standing; each image's search depends on its own rows only (the network
runs row-wise, the projection works row by row) and its random starts come from
``Draws``, so an image alone, in a batch or in a shard gets the same bytes. With
``early_stop``, more steps or restarts never make the attack weaker on a fixed seed: an
image still standing starts each search where it would anyway (the clean image, or its
random point at ``eps / 2``) and runs the same first steps.
"""
from __future__ import annotations

import numpy as np

from advmnist.attacks.base import Attack, AttackResult, check_counts, is_targeted, progress_bar, rounded_to_8bit
from advmnist.attacks.norms import L2, Linf, get_norm
from advmnist.attacks.pgd import Predictions
from advmnist.data.mnist import NUM_CLASSES
from advmnist.errors import InvalidInput
from advmnist.tfcompat import session_config, tf1

PIXELS = 28 * 28


class FAB(Attack):
    """FAB-T (``targeted=True``, AutoAttack's standard member) or untargeted FAB, in L-infinity or L2.

    Args:
        norm: ``linf`` or ``l2``: the norm of the perturbation searched for and of the ball.
        eps: the budget: a number, or one per image (an array of N). An image is broken when a
            point within eps fools the network.
        steps: iterations of each search (one per target and restart).
        restarts: searches per target (the first from the clean image, the others from random
            points at ``min(eps, best norm) / 2``).
        n_target_classes: FAB-T's targets: the classes of the 2nd .. (n+1)-th highest clean logits.
        targeted: FAB-T (one target class per search) or FAB (the closest boundary of any class,
            which takes the gradients of all ten logits at each step).
        alpha_max: the largest weight of the step from the original image.
        eta: overshoot of each projection (> 1 lands beyond the linearized boundary).
        beta: the backward step after a success: ``x0 + beta (x - x0)``.
        early_stop: a broken image leaves the batch (AutoAttack); False searches every image to the end.
        check_every: iterations per session call; broken images leave the batch between calls.
        chunk_size: images in one session call at most; bounds memory for any count.

    Input (N, 28, 28) in [0, 1], true labels (N,); untargeted criterion only. ``info``:
    ``steps_run`` and ``broken_at`` (iterations over all searches; 0 already misclassified,
    -1 never) and ``norm_found`` (the smallest adversarial perturbation found, inf if none).

    Example:
        >>> result = FAB("linf", 0.1)(model.logits, images, labels, seed=0)
        >>> 1 - result.success.mean()   # robust accuracy at Linf eps = 0.1 against FAB-T
    """

    NORMS = (Linf.name, L2.name)

    def __init__(self, norm: str = Linf.name, eps=0.3, *, steps: int = 100, restarts: int = 1,
                 n_target_classes: int = 9, targeted: bool = True, alpha_max: float = 0.1, eta: float = 1.05,
                 beta: float = 0.9, early_stop: bool = True, check_every: int = 10, chunk_size: int = 1024):
        if norm not in self.NORMS:
            raise InvalidInput(f"expected a FAB norm in {list(self.NORMS)}, got {norm!r}")
        eps_values = np.atleast_1d(np.asarray(eps, np.float64))
        if not np.all(np.isfinite(eps_values)) or eps_values.min(initial=0) < 0 or (
                norm == Linf.name and eps_values.max(initial=0) > 1):
            raise InvalidInput(f"expected eps >= 0{' and <= 1' if norm == 'linf' else ''}, got {eps}")
        check_counts(steps=steps, restarts=restarts, check_every=check_every, chunk_size=chunk_size)
        if not 1 <= n_target_classes <= NUM_CLASSES - 1:
            raise InvalidInput(f"expected n_target_classes in 1..{NUM_CLASSES - 1}, got {n_target_classes}")
        if not (0 <= alpha_max <= 1 and eta >= 1 and 0 < beta < 1):
            raise InvalidInput(f"expected 0 <= alpha_max <= 1, eta >= 1 and 0 < beta < 1, got {alpha_max}, {eta}, "
                               f"{beta}")
        self.norm, self.eps = norm, eps
        self.steps, self.restarts, self.n_target_classes = steps, restarts, n_target_classes
        self.targeted, self.early_stop = bool(targeted), bool(early_stop)
        self.alpha_max, self.eta, self.beta = float(alpha_max), float(eta), float(beta)
        self.check_every, self.chunk_size = check_every, chunk_size

    def run(self, logits_fn, images, labels, targets, *, draws, progress) -> AttackResult:
        if is_targeted(targets):
            raise InvalidInput("FAB supports only the untargeted criterion (FAB-T picks its target classes itself)")
        tf = tf1()
        count = len(images)
        eps = np.broadcast_to(np.asarray(self.eps, np.float32), (count,)).copy()
        graph = tf.Graph()
        with graph.as_default():
            loop = FABLoop(logits_fn, self.norm, targeted=self.targeted, alpha_max=self.alpha_max, eta=self.eta,
                           beta=self.beta)
        graph.finalize()
        with tf.Session(graph=graph, config=session_config(tf)) as sess:
            clean_logits = loop.logits(sess, images)
            state = SearchState(images, eps, fooled=clean_logits.argmax(1) != labels)
            # FAB-T's targets: the classes by falling clean logit, the highest (the label) left out
            ranked = np.argsort(-clean_logits, axis=1, kind="stable")[:, 1:]
            ranks = range(self.n_target_classes) if self.targeted else [0]
            with progress_bar(count, f"FAB{'-T' if self.targeted else ''} {self.norm} (images decided)",
                              progress) as bar:
                bar.update(int(state.fooled.sum()))
                for start in range(0, count, self.chunk_size):
                    chunk = np.arange(start, min(start + self.chunk_size, count))
                    searched = ~state.fooled[chunk] & ((eps[chunk] > 0) | (not self.early_stop))
                    bar.update(int((~state.fooled[chunk] & ~searched).sum()))  # radius 0: nothing to find
                    standing = chunk[searched]
                    for rank in ranks:
                        for restart in range(self.restarts):
                            standing = self._search(loop, sess, state, labels, ranked[:, rank], standing,
                                                    (rank, restart), draws, bar)
                    bar.update(len(standing))
            adversarial = np.where(state.broken[:, None, None], state.best, images)
            predictions, predictions_8bit = loop.predict(sess, adversarial)
        return AttackResult(originals=images, adversarial=adversarial, noise=adversarial - images, labels=labels,
                            targets=targets, predictions=predictions, predictions_8bit=predictions_8bit,
                            info={"steps_run": state.steps_run, "broken_at": state.broken_at,
                                  "norm_found": state.norm_found})

    def _search(self, loop, sess, state, labels, classes, standing, key, draws, bar) -> np.ndarray:
        """One search (a target and a restart) of the ``standing`` images; those still standing after it."""
        if not len(standing):
            return standing
        rank, restart = key
        x = self._start(state, standing, key, draws)
        for begin in range(0, self.steps, self.check_every):
            todo = min(self.check_every, self.steps - begin)
            x, best, best_norm, first = loop.run(sess, state.images[standing], x, state.best[standing],
                                                 state.norm_found[standing], state.eps[standing], labels[standing],
                                                 classes[standing], todo)
            state.update(standing, best, best_norm, first, todo)
            if self.early_stop:
                keep = ~state.broken[standing]
                bar.update(int((~keep).sum()))
                standing, x = standing[keep], x[keep]
            bar.set_postfix(standing=len(standing), target=rank + 1, restart=restart + 1, refresh=False)
            if not len(standing):
                break
        return standing

    def _start(self, state, indices, key, draws) -> np.ndarray:
        """The clean images (first restart), or random points at ``min(eps, best norm) / 2`` (seeded per image)."""
        images = state.images[indices]
        if key[1] == 0:
            return images.copy()
        radius = np.minimum(state.eps[indices], state.norm_found[indices]) / 2
        starts = np.empty_like(images)
        for k, index in enumerate(indices):
            rng = draws.generator(index, *key)
            if self.norm == Linf.name:
                direction = rng.uniform(-1.0, 1.0, images.shape[1:])
                direction /= np.abs(direction).max()
            else:
                direction = rng.standard_normal(images.shape[1:])
                direction /= np.linalg.norm(direction)
            starts[k] = images[k] + radius[k] * direction
        return np.clip(starts, 0.0, 1.0)


class SearchState:
    """What the searches found for every image: the smallest adversarial point, its norm, and the counters."""

    def __init__(self, images: np.ndarray, eps: np.ndarray, *, fooled: np.ndarray):
        count = len(images)
        self.images, self.eps, self.fooled = images, eps, fooled
        self.best = images.copy()
        self.norm_found = np.where(fooled, 0.0, np.inf).astype(np.float32)
        self.broken_at = np.where(fooled, 0, -1).astype(np.int64)
        self.steps_run = np.zeros(count, np.int64)

    @property
    def broken(self) -> np.ndarray:
        """Images with an adversarial point within their eps (those already misclassified included)."""
        return self.broken_at >= 0

    def update(self, indices, best, best_norm, first, steps: int) -> None:
        """A session call's results for ``indices``: ``first`` is the step of the call at which each image
        first had a point within eps (-1: none)."""
        self.best[indices], self.norm_found[indices] = best, best_norm
        new = (first >= 0) & (self.broken_at[indices] < 0)
        self.broken_at[indices[new]] = self.steps_run[indices[new]] + first[new]
        self.steps_run[indices] += steps


class FABLoop:
    """The FAB iterations of a batch of any size in one session call: the state goes in and out as arrays."""

    def __init__(self, logits_fn, norm: str, *, targeted: bool, alpha_max: float, eta: float, beta: float):
        tf = tf1()
        self.images = tf.placeholder(tf.float32, (None, 28, 28), name="images")
        self.start = tf.placeholder(tf.float32, (None, 28, 28), name="start")
        self.best = tf.placeholder(tf.float32, (None, 28, 28), name="best")
        self.best_norm = tf.placeholder(tf.float32, (None,), name="best_norm")
        self.eps = tf.placeholder(tf.float32, (None,), name="eps")
        self.labels = tf.placeholder(tf.int32, (None,), name="labels")
        self.targets = tf.placeholder(tf.int32, (None,), name="targets")
        self.steps = tf.placeholder(tf.int32, (), name="steps")
        self.logits_fn, self.targeted, self.norm_name = logits_fn, targeted, norm
        size = get_norm(norm).size
        x0 = tf.reshape(self.images, (-1, PIXELS))

        def body(i, x, best, best_norm, first):
            w, c = self._linearized(x)
            c0 = c + tf.reduce_sum(w * (x0 - x), axis=1)  # the linearized function at the original
            d1, d2 = tf.split(boundary_projection(norm, tf.concat([x, x0], 0), tf.concat([w, w], 0),
                                                  tf.concat([c, c0], 0)), 2)
            a1, a2 = tf.maximum(size(d1), 1e-8), tf.maximum(size(d2), 1e-8)
            alpha = tf.minimum(a1 / (a1 + a2), alpha_max)[:, None]
            x = tf.clip_by_value((x + eta * d1) * (1.0 - alpha) + (x0 + eta * d2) * alpha, 0.0, 1.0)
            fooled = tf.not_equal(tf.argmax(self._net(x), 1, output_type=tf.int32), self.labels)
            distance = size(x - x0)
            better = tf.logical_and(fooled, distance < best_norm)
            best = tf.where(better, x, best)
            best_norm = tf.where(better, distance, best_norm)
            first = tf.where(tf.logical_and(first < 0, best_norm <= self.eps), tf.fill(tf.shape(first), i + 1), first)
            x = tf.where(fooled, x0 + beta * (x - x0), x)  # back to the correct side, closer to the original
            return i + 1, x, best, best_norm, first

        start = [tf.constant(0), tf.reshape(self.start, (-1, PIXELS)), tf.reshape(self.best, (-1, PIXELS)),
                 self.best_norm, tf.fill(tf.shape(self.best_norm), -1)]
        _, x, best, best_norm, first = tf.while_loop(lambda i, *_: i < self.steps, body, start,
                                                     parallel_iterations=1, name="fab_steps")
        self.outputs = [tf.reshape(x, (-1, 28, 28)), tf.reshape(best, (-1, 28, 28)), best_norm, first]
        self.clean_logits = self._net(x0)
        self.predictions = tf.argmax(self.clean_logits, 1, output_type=tf.int32)
        self.predictions_8bit = tf.argmax(self.logits_fn(rounded_to_8bit(self.images)), 1, output_type=tf.int32)

    def _net(self, flat):
        return self.logits_fn(tf1().reshape(flat, (-1, 28, 28)))

    def _linearized(self, x):
        """``w``, ``c``: the gradient and value at ``x`` of the logit difference whose boundary is projected on."""
        tf = tf1()
        logits = self._net(x)
        own = tf.gather(logits, self.labels, batch_dims=1)
        if self.targeted:
            difference = tf.gather(logits, self.targets, batch_dims=1) - own
            (gradient,) = tf.gradients(tf.reduce_sum(difference), [x])
            return gradient, difference
        # untargeted FAB: every class's boundary, the closest in the dual norm chosen per image
        gradients = tf.stack([tf.gradients(tf.reduce_sum(logits[:, k]), [x])[0] for k in range(NUM_CLASSES)], 1)
        differences = logits - own[:, None]
        slopes = gradients - tf.gather(gradients, self.labels, batch_dims=1)[:, None]
        dual = get_norm(self.norm_name).dual_size(tf.reshape(slopes, (-1, PIXELS)))
        distance = tf.abs(differences) / (tf.reshape(dual, (-1, NUM_CLASSES)) + 1e-12)
        distance = tf.where(tf.one_hot(self.labels, NUM_CLASSES) > 0, tf.fill(tf.shape(distance), np.inf), distance)
        closest = tf.argmin(distance, 1, output_type=tf.int32)
        return tf.gather(slopes, closest, batch_dims=1), tf.gather(differences, closest, batch_dims=1)

    def run(self, sess, images, start, best, best_norm, eps, labels, targets, steps: int):
        """``steps`` iterations: the current points, the smallest adversarial points and their norms, and the
        step (1-based) at which each image first had one within eps (-1: not in these steps)."""
        return sess.run(self.outputs, {self.images: images, self.start: start, self.best: best,
                                       self.best_norm: best_norm, self.eps: eps, self.labels: labels,
                                       self.targets: targets, self.steps: steps})

    def logits(self, sess, images, batch: int = 2000) -> np.ndarray:
        outs = [sess.run(self.clean_logits, {self.images: images[i:i + batch]}) for i in range(0, len(images), batch)]
        return np.concatenate(outs) if outs else np.zeros((0, NUM_CLASSES), np.float32)

    #: the predictions (as given, rounded to 8 bits) of images: the same fetch as PGD's, on this loop's tensors
    predict = Predictions.predict


def boundary_projection(norm: str, points, w, c):
    """The smallest ``d`` (``linf`` or ``l2``) with ``w . d = -c`` and ``points + d`` in [0, 1], row by row.

    ``points``, ``w``: (R, n); ``c`` (R,): the linear function ``w . (y - points) + c`` at the
    points, whose zero set ``d`` reaches. With ``c >= 0`` (flip the signs of ``w`` and ``c``
    otherwise) a coordinate moves against the sign of ``w_i``, by at most its room in the box
    (``points_i`` or ``1 - points_i``). For L-infinity the move of radius ``rho`` is
    ``min(rho, room_i)`` and lowers ``w . d`` by ``sum |w_i| min(rho, room_i)``; for L2 (the
    KKT conditions) it is ``min(lambda |w_i|, room_i)``, lowering it by
    ``sum w_i^2 min(lambda, room_i / |w_i|)``. Both are ``sum a_i min(mu, k_i)``: piecewise
    linear and non-decreasing in ``mu``, with breakpoints at the ``k_i``. Sorting them and
    summing gives its value at every breakpoint, so the segment that reaches ``c`` and the
    exact ``mu`` on it come without iterations (in float64). A hyperplane out of the box's
    reach gives its closest corner (every coordinate moved by its full room).
    """
    tf = tf1()
    t, w, c = (tf.cast(v, tf.float64) for v in (points, w, c))
    flip = tf.where(c < 0, -tf.ones_like(c), tf.ones_like(c))
    w, c = w * flip[:, None], c * flip
    magnitude = tf.abs(w)
    moves = magnitude > 0
    room = tf.where(w > 0, t, 1.0 - t)
    if norm == Linf.name:
        weight, knee, scale = magnitude, room, tf.ones_like(w)
    else:
        weight, knee, scale = tf.square(w), tf.where(moves, room / tf.where(moves, magnitude, tf.ones_like(w)),
                                                    tf.zeros_like(w)), magnitude
    order = tf.argsort(knee, axis=1, stable=True)
    knee, weight = tf.gather(knee, order, batch_dims=1), tf.gather(weight, order, batch_dims=1)
    saturated = tf.cumsum(weight * knee, axis=1)  # from the coordinates at their knee by the k-th breakpoint
    free = tf.pad(tf.cumsum(weight, axis=1, reverse=True), [[0, 0], [0, 1]])  # from the ones past it
    reached = saturated + knee * free[:, 1:]  # the decrease at each breakpoint
    count = tf.reduce_sum(tf.cast(reached < c[:, None], tf.int32), axis=1)  # breakpoints short of c
    saturated_before = tf.gather(tf.pad(saturated, [[0, 0], [1, 0]]), count, batch_dims=1)
    free_after = tf.gather(free, count, batch_dims=1)
    ones = tf.ones_like(c)
    mu = tf.where(free_after > 0, (c - saturated_before) / tf.where(free_after > 0, free_after, ones), ones * np.inf)
    move = tf.where(moves, tf.minimum(mu[:, None] * tf.where(moves, scale, tf.ones_like(w)), room), tf.zeros_like(w))
    return tf.cast(-tf.sign(w) * move, points.dtype)
