"""Square attack (Andriushchenko, Croce, Flammarion, Hein, ECCV 2020): random search on scores, no gradient.

"Square Attack: a query-efficient black-box adversarial attack via random search"
(arXiv:1912.00049). It asks the network for logits only, never for a gradient, and
minimizes the margin loss ``z_y - max_{i != y} z_i`` (below 0 once the image is
misclassified) by random search, one forward pass of the images still standing per query:

- query 1: L-infinity, vertical stripes of +-eps (a sign per column); L2, a 5x5 grid of
  5-pixel "centred squares", each with a random sign and orientation, scaled to norm eps;
- each later query changes one window of side ``s`` at a uniformly drawn place and keeps
  the change if it lowers the margin. ``s = round(sqrt(p * 784))``, ``p`` is ``p_init``
  halved at the checkpoints 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 of a 10000-query
  budget, rescaled to ``queries`` (:func:`square_sides`). L-infinity: the window becomes
  +-eps (one sign). L2: the mass of the window and of a second window (emptied) goes to the
  first, as its old content plus the centred square with a random sign, and the whole is
  scaled back to norm eps.

Queries run in a ``tf.while_loop``, ``check_every`` per session call; a fooled image keeps
its perturbation and leaves the batch after the call. Each image draws from its own
generator (:meth:`Draws.generator <advmnist.attacks.base.Draws.generator>`, keyed by its
position and the restart), in query order, so its result depends neither on the images
beside it nor on ``check_every`` or ``chunk_size``: a shard computes what the whole run does.
Choices of ours: each image draws its own windows (the authors' code draws one place per
query for the batch), windows may touch the last row and column (the paper's ``{0, ...,
w - h}``), and a window whose new signs equal its old ones is not drawn again.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from advmnist.attacks.base import (Attack, AttackResult, check_counts, check_eps, is_targeted, progress_bar,
                                   rounded_to_8bit)
from advmnist.attacks.fmn import margin_and_success
from advmnist.attacks.norms import L2, Linf, get_norm
from advmnist.attacks.pgd import PGDLoop
from advmnist.attacks.square_proposals import CORNERS, first_directions, pattern_table, query_draws, square_sides
from advmnist.data.mnist import IMAGE_SIZE
from advmnist.errors import InvalidInput
from advmnist.tfcompat import session_config, tf1

SQUARE_NORMS = (Linf.name, L2.name)
DRAW_KEY = 0x5C  # keys Square's generators apart from other attacks' on the same seed


class Square(Attack):
    """The Square attack: score-based random search within a budget ``eps`` per image, untargeted, no gradient.

    Args:
        norm: ``linf`` or ``l2``: the ball the perturbation stays in.
        eps: the ball's radius: a number, or one per image (an array of N).
        queries: forward passes per image and start, the first query (stripes or grid) included.
        p_init: the share of the image's pixels the first windows cover (0.8: 25 x 25 pixels).
        restarts: starts per image (the first included) while it is still standing; each start has its own
            draws, and an image never fooled keeps the attempt with the lowest margin.
        rescale_schedule: rescale the checkpoints where ``p`` halves from 10000 queries to ``queries`` (as the
            authors do); without it a budget's queries are the first queries of any larger budget's.
        check_every: queries per session call; fooled images leave the batch between calls.
        chunk_size: images in one session call at most; bounds memory for any count.

    ``info``: ``steps_run``, the queries spent on each image (up to the one that fooled it; 0 when the
    network already misclassifies it); ``broken_at``, the query that first fooled it (counted over the
    restarts; 0 if already misclassified, -1 if never).

    Example:
        >>> result = Square("linf", 0.1, queries=5000)(model.logits, images, labels, seed=0)
        >>> 1 - result.success.mean()   # robust accuracy against Square at Linf eps = 0.1
    """

    NORMS = SQUARE_NORMS

    def __init__(self, norm: str = Linf.name, eps=0.3, *, queries: int = 5000, p_init: float = 0.8, restarts: int = 1,
                 rescale_schedule: bool = True, check_every: int = 20, chunk_size: int = 1024):
        if norm not in self.NORMS:
            raise InvalidInput(f"expected a Square norm in {list(self.NORMS)}, got {norm!r}")
        check_eps(norm, eps)
        check_counts(queries=queries, restarts=restarts, check_every=check_every, chunk_size=chunk_size)
        if not 0 < p_init <= 1:
            raise InvalidInput(f"expected 0 < p_init <= 1, got {p_init}")
        self.norm = norm
        self.eps = eps
        self.queries = queries
        self.p_init = p_init
        self.restarts = restarts
        self.rescale_schedule = rescale_schedule
        self.check_every = check_every
        self.chunk_size = chunk_size

    def sides(self, iterations) -> np.ndarray:
        """The window sides of these iterations (0-based, after the first query)."""
        return square_sides(iterations, self.queries if self.rescale_schedule else 10000, self.p_init, self.norm)

    def run(self, logits_fn, images, labels, targets, *, draws, progress) -> AttackResult:
        with SquareSession(logits_fn, self.norm) as session:
            return self.run_in(session, images, labels, targets, draws=draws, progress=progress)

    def run_in(self, session: "SquareSession", images, labels, targets, *, draws, progress) -> AttackResult:
        """The attack in an open :class:`SquareSession` of this norm (checked inputs)."""
        if is_targeted(targets):
            raise InvalidInput("Square supports only the untargeted criterion, got targets")
        if session.norm != self.norm:
            raise InvalidInput(f"expected a {self.norm} Square session, got a {session.norm} one")
        count = len(images)
        eps = np.asarray(self.eps, np.float32)
        if eps.ndim and eps.shape != (count,):
            raise InvalidInput(f"expected eps as a number or one per image ({count}), got shape {eps.shape}")
        eps = np.broadcast_to(eps, (count,)).copy()
        outcome = Outcome.of(images)
        with progress_bar(count, f"Square {self.norm} (images decided)", progress) as bar:
            fooled = session.loop.fooled(session.sess, images, labels)
            outcome.broken_at[fooled] = 0
            bar.update(int(fooled.sum()))
            for start in range(0, count, self.chunk_size):
                chunk = np.arange(start, min(start + self.chunk_size, count))
                standing = chunk[~fooled[chunk] & (eps[chunk] > 0)]  # a ball of radius 0 holds nothing else
                for restart in range(self.restarts):
                    if len(standing):
                        standing = self._search(session, Batch.of(standing, images, labels, eps), restart, draws,
                                                outcome, bar)
                bar.update(len(standing))
            predictions, predictions_8bit = session.loop.predict(session.sess, outcome.adversarial)
        return AttackResult(originals=images, adversarial=outcome.adversarial, noise=outcome.adversarial - images,
                            labels=labels, targets=targets, predictions=predictions,
                            predictions_8bit=predictions_8bit,
                            info={"steps_run": outcome.steps_run, "broken_at": outcome.broken_at})

    def _search(self, session, batch: "Batch", restart: int, draws, outcome: "Outcome", bar) -> np.ndarray:
        """One start of the search on ``batch``; returns the images it left standing."""
        loop, sess = session.loop, session.sess
        rngs = [draws.generator(index, DRAW_KEY, restart) for index in batch.indices]
        spent = restart * self.queries  # queries of the earlier starts
        delta, margin, hit = loop.start(sess, batch, first_directions(self.norm, rngs))
        outcome.steps_run[batch.indices] += 1
        broken_at = np.full(len(batch), spent + 1)
        done = 1  # queries of this start so far
        while True:
            outcome.fooled(batch.indices[hit], delta[hit], broken_at[hit])
            bar.update(int(hit.sum()))
            batch, delta, margin = batch.take(~hit), delta[~hit], margin[~hit]
            rngs = [rng for rng, fooled in zip(rngs, hit) if not fooled]
            bar.set_postfix(standing=len(batch), restart=restart + 1, refresh=False)
            if done >= self.queries or not len(batch):
                break
            sides = self.sides(np.arange(done - 1, min(done - 1 + self.check_every, self.queries - 1)))
            delta, margin, broken = loop.run(sess, batch, delta, margin, sides, query_draws(self.norm, rngs, sides))
            hit = broken >= 0
            outcome.steps_run[batch.indices] += np.where(hit, broken + 1, len(sides))
            broken_at = spent + done + broken + 1
            done += len(sides)
        outcome.attempted(batch.indices, delta, margin)
        return batch.indices


@dataclasses.dataclass
class Batch:
    """The images of one session call: their places among the attacked images, pixels, labels and radii."""

    indices: np.ndarray
    images: np.ndarray
    labels: np.ndarray
    eps: np.ndarray

    @classmethod
    def of(cls, indices, images, labels, eps) -> "Batch":
        return cls(indices, images[indices], labels[indices], eps[indices])

    def __len__(self) -> int:
        return len(self.indices)

    def take(self, keep) -> "Batch":
        return Batch(*(getattr(self, field.name)[keep] for field in dataclasses.fields(self)))


@dataclasses.dataclass
class Outcome:
    """What the attack found for each image so far: its example, queries spent, the query that fooled it, and
    (for an image not fooled yet) the margin of its best attempt."""

    originals: np.ndarray
    adversarial: np.ndarray
    steps_run: np.ndarray
    broken_at: np.ndarray
    margin: np.ndarray

    @classmethod
    def of(cls, images) -> "Outcome":
        count = len(images)
        return cls(images, images.copy(), np.zeros(count, np.int64), np.full(count, -1, np.int64),
                   np.full(count, np.inf, np.float32))

    def fooled(self, indices, delta, broken_at) -> None:
        self.adversarial[indices] = np.clip(self.originals[indices] + delta, 0.0, 1.0)
        self.broken_at[indices] = broken_at

    def attempted(self, indices, delta, margin) -> None:
        """An image's attempt replaces its earlier one if its margin is lower (the attack's loss)."""
        better = margin < self.margin[indices]
        self.adversarial[indices[better]] = np.clip(self.originals[indices[better]] + delta[better], 0.0, 1.0)
        self.margin[indices[better]] = margin[better]


class SquareSession:
    """A Square graph (:class:`SquareLoop`) and its session, for ``with``: one per network and norm."""

    def __init__(self, logits_fn, norm: str):
        tf = tf1()
        self.norm = norm
        self.graph = tf.Graph()
        with self.graph.as_default():
            self.loop = SquareLoop(logits_fn, norm)
        self.graph.finalize()
        self.sess = tf.Session(graph=self.graph, config=session_config(tf))

    def __enter__(self) -> "SquareSession":
        return self

    def __exit__(self, *exc) -> None:
        self.sess.close()


def window(rows, cols, side):
    """(B, 28, 28) bool: each image's square of ``side`` pixels with its top-left corner at (rows, cols)."""
    tf = tf1()
    line = tf.range(IMAGE_SIZE)[None, :]

    def inside(first):
        return tf.logical_and(line >= first[:, None], line < first[:, None] + side)

    return tf.logical_and(inside(rows)[:, :, None], inside(cols)[:, None, :])


class SquareLoop:
    """The queries of a batch of any size, in one session call: the state goes in and out as arrays.

    No gradient: the graph holds forward passes of the network and the search's own arithmetic only.
    """

    def __init__(self, logits_fn, norm: str):
        tf = tf1()
        self.norm = norm
        shape = (None, IMAGE_SIZE, IMAGE_SIZE)
        self.images = tf.placeholder(tf.float32, shape, name="images")
        self.labels = tf.placeholder(tf.int32, (None,), name="labels")
        self.eps = tf.placeholder(tf.float32, (None,), name="eps")
        self.direction = tf.placeholder(tf.float32, shape, name="direction")  # of the first query
        self.delta = tf.placeholder(tf.float32, shape, name="delta")
        self.margin = tf.placeholder(tf.float32, (None,), name="margin")
        self.sides = tf.placeholder(tf.int32, (None,), name="sides")  # one per query
        self.corners = tf.placeholder(tf.int32, (None, None, CORNERS[norm]), name="corners")
        self.signs = tf.placeholder(tf.float32, (None, None), name="signs")
        self.flips = tf.placeholder(tf.int32, (None, None), name="flips") if norm == L2.name else None
        self.table = tf.constant(pattern_table().reshape(-1, IMAGE_SIZE, IMAGE_SIZE)) if norm == L2.name else None
        x, radius = self.images, self.eps[:, None, None]

        def score(delta):
            return margin_and_success(logits_fn(x + delta), self.labels, self.labels, targeted=False)

        size = get_norm(norm).size(tf.reshape(self.direction, (-1, IMAGE_SIZE * IMAGE_SIZE)))[:, None, None]
        self.start_delta = tf.clip_by_value(x + self.direction * (radius / size), 0.0, 1.0) - x
        self.start_margin, self.start_hit = score(self.start_delta)
        self.final_delta, self.final_margin, self.broken = self._queries(score)
        logits = logits_fn(x)
        self.predictions = tf.argmax(logits, 1, output_type=tf.int32)
        self.reached_now = tf.not_equal(self.predictions, self.labels)
        self.predictions_8bit = tf.argmax(logits_fn(rounded_to_8bit(x)), 1, output_type=tf.int32)

    predict = PGDLoop.predict  # the network's predictions for adversarial images, also after 8-bit rounding

    def _queries(self, score):
        """The loop: each query one candidate per image, kept if it lowers the margin; a fooled image stays."""
        tf = tf1()

        def body(i, delta, margin, hit, broken):
            candidate = self._candidate(delta, i)
            candidate_margin, fooled = score(candidate)
            fooled = tf.logical_and(fooled, tf.logical_not(hit))
            better = tf.logical_or(fooled, tf.logical_and(tf.logical_not(hit), candidate_margin < margin))
            return (i + 1, tf.where_v2(better[:, None, None], candidate, delta),
                    tf.where_v2(better, candidate_margin, margin), tf.logical_or(hit, fooled),
                    tf.where_v2(fooled, i, broken))

        count = tf.shape(self.images)[0]
        start = [tf.constant(0), self.delta, self.margin, tf.zeros([count], tf.bool), tf.fill([count], -1)]
        _, delta, margin, _, broken = tf.while_loop(lambda i, *_: i < tf.shape(self.sides)[0], body, start,
                                                    parallel_iterations=1, name="square_queries")
        return delta, margin, broken

    def _candidate(self, delta, i):
        """Query ``i``'s candidate perturbation of each image (inside its ball and valid pixels)."""
        tf = tf1()
        x, radius = self.images, self.eps[:, None, None]
        side, corners, sign = self.sides[i], self.corners[:, i], self.signs[:, i][:, None, None]
        first = window(corners[:, 0], corners[:, 1], side)
        if self.norm == Linf.name:
            return tf.where_v2(first, tf.clip_by_value(x + radius * sign, 0.0, 1.0) - x, delta)
        second = window(corners[:, 2], corners[:, 3], side)

        def size(t):
            return tf.norm(tf.reshape(t, (-1, IMAGE_SIZE * IMAGE_SIZE)), axis=1)[:, None, None]

        inside = tf.where_v2(first, delta, 0.0)
        # the mass of both windows, and what the ball has left, goes to the first window: its old content
        # (unit norm) plus the centred pattern, scaled to that mass
        budget = tf.sqrt(tf.maximum(radius ** 2 - size(delta) ** 2, 0.0)
                         + size(tf.where_v2(tf.logical_or(first, second), delta, 0.0)) ** 2)
        moved = self._pattern(corners, side, self.flips[:, i], first) * sign + inside / (size(inside) + 1e-12)
        moved = moved * (budget / tf.maximum(size(moved), 1e-12))
        new = tf.where_v2(first, moved, tf.where_v2(second, 0.0, delta))
        return tf.clip_by_value(x + new * (radius / tf.maximum(size(new), 1e-12)), 0.0, 1.0) - x

    def _pattern(self, corners, side, flips, first):
        """The centred-square pattern of ``side`` (transposed where ``flips``) moved onto each image's window."""
        tf = tf1()
        patterns = tf.gather(self.table, flips * (IMAGE_SIZE + 1) + side)  # pattern in the top-left corner
        line = tf.range(IMAGE_SIZE)[None, :]
        rows = tf.clip_by_value(line - corners[:, 0:1], 0, IMAGE_SIZE - 1)
        cols = tf.clip_by_value(line - corners[:, 1:2], 0, IMAGE_SIZE - 1)
        moved = tf.gather(tf.gather(patterns, rows, axis=1, batch_dims=1), cols, axis=2, batch_dims=1)
        return tf.where_v2(first, moved, 0.0)

    def _feed(self, batch: Batch) -> dict:
        return {self.images: batch.images, self.labels: batch.labels, self.eps: batch.eps}

    def fooled(self, sess, images, labels) -> np.ndarray:
        """Which images the network already misclassifies."""
        if not len(images):
            return np.zeros(0, bool)
        return sess.run(self.reached_now, {self.images: images, self.labels: labels})

    def start(self, sess, batch: Batch, directions):
        """The first query: the perturbations, their margins and which images they fool."""
        return sess.run([self.start_delta, self.start_margin, self.start_hit],
                        {**self._feed(batch), self.direction: directions})

    def run(self, sess, batch: Batch, delta, margin, sides, draws: dict):
        """One query per side: the new perturbations, margins, and the query (0-based) that fooled each image
        (-1 if none did; a fooled image keeps the perturbation that fooled it)."""
        feed = {**self._feed(batch), self.delta: delta, self.margin: margin, self.sides: sides,
                self.corners: draws["corners"], self.signs: draws["signs"]}
        if self.norm == L2.name:
            feed[self.flips] = draws["flips"]
        return sess.run([self.final_delta, self.final_margin, self.broken], feed)
