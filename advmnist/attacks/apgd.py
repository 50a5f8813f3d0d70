"""APGD (Croce & Hein, ICML 2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks"): PGD with momentum whose step size halves by itself, per image, within a budget eps.

Each image starts at a random point of its eps-ball with step size ``2 eps``. A step goes
to ``z = P(x_k + eta * d)`` (``d`` the sign of the gradient for L-infinity, the
L2-normalized gradient for L2; ``P`` projects onto the ball and onto valid pixels
[0, 1]), then ``x_{k+1} = P(x_k + alpha (z - x_k) + (1 - alpha)(x_k - x_{k-1}))``; the
first step has no momentum. At the checkpoints ``w_j = ceil(p_j * steps)`` (p_0 = 0,
p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06); :func:`checkpoints`) an
image's step size halves and it goes back to its best point when (1) fewer than ``rho``
of the steps since the last checkpoint increased its loss, or (2) its step size was not
halved at the last checkpoint and its best loss has not changed since. Every image has
its own step size, counters and best point, so its trajectory does not depend on the
images beside it.

The losses: ``ce``, the cross-entropy of the true label (APGD-CE); ``dlr-targeted``,
``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)`` (z the logits, pi their
descending order) for each target class t in turn, the classes of the 2nd, 3rd, ...
highest logits of the clean image (APGD-T), ``steps`` iterations each, only on the
images still standing. The criterion is untargeted either way.

Where the authors' code (fra31/auto-attack, ``autopgd_base.py``) and the paper differ,
this follows the paper: condition (2) may already halve at the first checkpoint (the
code starts as if a halving had just happened), condition (1) is a strict "fewer
than", and the checkpoints are ``ceil(p_j * steps)`` (the code's intervals,
``int(0.22 steps)`` shrinking by ``int(0.03 steps)`` down to ``int(0.06 steps)``, give
the same iterations at 100 steps, not at every count). Details of our own: the random
start is uniform in the ball (as :class:`~advmnist.attacks.pgd.PGD`'s; the code's
L-infinity start lies on the ball's surface), and after going back to its best point an
image's next rise is measured from that point's loss.

Cost follows the images still standing, as in :class:`~advmnist.attacks.pgd.PGD`: the
iterations run in the graph, ``check_every`` per session call, and the images fooled
leave the batch between calls, each keeping the first point that fooled it.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from advmnist.attacks.base import Attack, AttackResult, check_counts, is_targeted, progress_bar, row_cross_entropy
from advmnist.attacks.norms import L2, Linf, get_norm
from advmnist.attacks.pgd import GraphSession, Predictions, check_budget, random_start
from advmnist.data.mnist import IMAGE_SIZE, NUM_CLASSES
from advmnist.errors import InvalidInput
from advmnist.tfcompat import tf1

APGD_NORMS = (Linf.name, L2.name)
LOSSES = ("ce", "dlr-targeted")
_LOSS_KEYS = {"ce": 0, "dlr-targeted": 1}  # part of each random start's key: the two losses start apart

#: An image's state between session calls, one row per image.
STATE = ("delta", "previous", "best", "best_gradient", "step_size", "best_loss", "checked_loss", "halved",
         "increases", "last_loss")


def checkpoints(steps: int) -> list[int]:
    """The iterations ``0 < w_1 < w_2 < ... < steps`` at which APGD may halve an image's step size.

    ``w_j = ceil(p_j * steps)``, ``p_0 = 0``, ``p_1 = 0.22``, ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``
    while ``p_j <= 1``, in hundredths (integers), so ``p_2`` is 41/100 exactly and not
    0.41000000000000003 (whose ceiling at 100 steps would be 42). Checkpoints that fall on
    the same iteration (few steps) count once.
    """
    found: list[int] = []
    previous, current = 0, 22
    while current <= 100:
        iteration = -(-current * steps // 100)
        if 0 < iteration < steps and (not found or iteration > found[-1]):
            found.append(iteration)
        previous, current = current, current + max(current - previous - 3, 6)
    return found


def checkpoint_windows(steps: int) -> np.ndarray:
    """(steps + 1,) int32: ``w_j - w_{j-1}`` at each checkpoint ``w_j`` (``w_0 = 0``), 0 elsewhere."""
    windows = np.zeros(steps + 1, np.int32)
    marks = checkpoints(steps)
    windows[marks] = np.diff([0] + marks)
    return windows


def call_ranges(steps: int, check_every: int) -> list[tuple[int, int]]:
    """The evaluations ``[begin, end)`` of each session call: points ``x_0 .. x_steps``, the first call also
    evaluating the start, ``check_every`` steps per call."""
    ends = list(range(check_every + 1, steps + 1, check_every)) + [steps + 1]
    return list(zip([0] + ends[:-1], ends))


class APGD(Attack):
    """APGD-CE (``loss="ce"``) or APGD-T (``loss="dlr-targeted"``) within a budget ``eps`` per image.

    Args:
        norm: ``linf`` or ``l2``: the ball the perturbation stays in.
        eps: the ball's radius: a number, or one per image (an array of N).
        loss: ``ce`` (cross-entropy of the true label) or ``dlr-targeted`` (the targeted DLR
            loss, towards each of ``n_target_classes`` classes in turn).
        steps: iterations per start (and per target class).
        restarts: random starts per image (per target class) while it is still standing.
        n_target_classes: APGD-T's target classes: those of the 2nd .. (n+1)-th highest clean logits.
        rho: condition (1)'s share of steps that must increase the loss.
        alpha: momentum: the weight of the new step against the last one.
        check_every: iterations per session call; fooled images leave the batch between calls.
        chunk_size: images in one session call at most; bounds memory for any count.

    Returns an :class:`AttackResult` (untargeted: success is any class but the label) whose
    ``adversarial`` is each image's first fooling point, or its best-loss point if never
    fooled; ``info["steps_run"]`` the iterations spent on it (all starts and target
    classes), ``info["broken_at"]`` the iteration at which it was first fooled (0 if
    misclassified without any change or at its first random start, -1 if never).

    Example:
        >>> result = APGD("linf", 0.3, loss="dlr-targeted")(model.logits, images, labels, seed=0)
        >>> 1 - result.success.mean()   # robust accuracy against APGD-T at Linf eps = 0.3
    """

    NORMS = APGD_NORMS

    def __init__(self, norm: str = Linf.name, eps=0.3, *, loss: str = "ce", steps: int = 100, restarts: int = 1,
                 n_target_classes: int = 9, rho: float = 0.75, alpha: float = 0.75, check_every: int = 10,
                 chunk_size: int = 1024):
        check_budget("APGD", APGD_NORMS, norm, eps)
        if loss not in LOSSES:
            raise InvalidInput(f"expected an APGD loss in {list(LOSSES)}, got {loss!r}")
        check_counts(steps=steps, restarts=restarts, check_every=check_every, chunk_size=chunk_size)
        if not 1 <= n_target_classes <= NUM_CLASSES - 1:
            raise InvalidInput(f"expected n_target_classes in 1..{NUM_CLASSES - 1}, got {n_target_classes}")
        if not (0 < rho <= 1 and 0 < alpha <= 1):
            raise InvalidInput(f"expected 0 < rho <= 1 and 0 < alpha <= 1, got {rho}, {alpha}")
        self.norm, self.eps, self.loss = norm, eps, loss
        self.steps, self.restarts, self.n_target_classes = steps, restarts, n_target_classes
        self.rho, self.alpha = rho, alpha
        self.check_every, self.chunk_size = check_every, chunk_size

    @property
    def name(self) -> str:
        return "APGD-CE" if self.loss == "ce" else "APGD-T"

    def run(self, logits_fn, images, labels, targets, *, draws, progress) -> AttackResult:
        self._check_untargeted(targets)
        with APGDSession(logits_fn, self.norm, self.loss) as session:
            return self.run_in(session, images, labels, targets, draws=draws, progress=progress)

    def _check_untargeted(self, targets) -> None:
        if is_targeted(targets):
            raise InvalidInput(f"expected no targets: {self.name} supports only the untargeted criterion")

    def run_in(self, session: "APGDSession", images, labels, targets, *, draws, progress) -> AttackResult:
        """The attack in an open :class:`APGDSession` of this norm and loss (checked inputs): several budgets
        or batches can share one graph and session."""
        self._check_untargeted(targets)
        if (session.norm, session.loss) != (self.norm, self.loss):
            raise InvalidInput(f"expected a {self.norm} {self.loss} APGD session, got a {session.norm} "
                               f"{session.loss} one")
        count = len(images)
        eps = np.broadcast_to(np.asarray(self.eps, np.float32), (count,)).copy()
        logits = session.loop.clean.logits_of(session.sess, images)
        tally = Tally.start(images, fooled=logits.argmax(1) != labels)
        # APGD-T's targets: the classes of the 2nd, 3rd, ... highest clean logits; APGD-CE has one pass
        ranked = np.argsort(-logits, axis=1, kind="stable")
        passes = [(0, labels)] if self.loss == "ce" else [(rank, ranked[:, rank])
                                                          for rank in range(1, self.n_target_classes + 1)]
        with progress_bar(count, f"{self.name} {self.norm} (images decided)", progress) as bar:
            bar.update(int(tally.fooled.sum()))
            for start in range(0, count, self.chunk_size):
                chunk = np.arange(start, min(start + self.chunk_size, count))
                standing = chunk[~tally.fooled[chunk] & (eps[chunk] > 0)]  # a ball of radius 0 holds nothing else
                for rank, classes in passes:
                    for restart in range(self.restarts):
                        if len(standing):
                            inputs = Inputs(images, labels, classes, eps, draws)
                            standing = self._run_once(session, inputs, standing, (rank, restart), tally, bar)
                bar.update(len(standing))
            predictions, predictions_8bit = session.loop.clean.predict(session.sess, tally.adversarial)
        return AttackResult(originals=images, adversarial=tally.adversarial, noise=tally.adversarial - images,
                            labels=labels, targets=targets, predictions=predictions,
                            predictions_8bit=predictions_8bit,
                            info={"steps_run": tally.steps_run, "broken_at": tally.broken_at})

    def _run_once(self, session, inputs: "Inputs", standing, key: tuple[int, int], tally: "Tally", bar):
        """One start (of one target class) for the images ``standing``; those it does not fool are returned."""
        images = inputs.images
        delta = random_start(self.norm, images[standing], inputs.eps[standing], inputs.draws, standing,
                             _LOSS_KEYS[self.loss], *key)
        state = initial_state(delta, inputs.eps[standing])
        before = tally.steps_run[standing]
        windows = checkpoint_windows(self.steps)
        for begin, end in call_ranges(self.steps, self.check_every):
            if not len(standing):
                break
            state, hit, fooling, broken = session.loop.run(session.sess, state, inputs.take(standing), begin, end,
                                                           windows, self.rho, self.alpha)
            tally.steps_run[standing] += min(end, self.steps) - begin
            won = standing[hit]
            tally.adversarial[won] = np.clip(images[won] + fooling[hit], 0.0, 1.0)
            tally.broken_at[won] = before[hit] + broken[hit]
            tally.fooled[won] = True
            standing, before, state = standing[~hit], before[~hit], {k: v[~hit] for k, v in state.items()}
            bar.update(int(hit.sum()))
        # the ones still standing keep their best point over all their starts
        better = state["best_loss"] > tally.best_loss[standing]
        kept = standing[better]
        tally.adversarial[kept] = np.clip(images[kept] + state["best"][better], 0.0, 1.0)
        tally.best_loss[kept] = state["best_loss"][better]
        return standing


@dataclasses.dataclass
class Inputs:
    """The images of an attack and what goes with each: label, the class its loss aims at, budget, draws."""

    images: np.ndarray
    labels: np.ndarray
    classes: np.ndarray   # APGD-T's target class per image (APGD-CE: the label, unused)
    eps: np.ndarray
    draws: object

    def take(self, index) -> "Inputs":
        return Inputs(self.images[index], self.labels[index], self.classes[index], self.eps[index],
                      self.draws.take(index))


@dataclasses.dataclass
class Tally:
    """What the attack found so far, per image."""

    adversarial: np.ndarray
    best_loss: np.ndarray
    steps_run: np.ndarray
    broken_at: np.ndarray
    fooled: np.ndarray

    @classmethod
    def start(cls, images, fooled) -> "Tally":
        count = len(images)
        return cls(adversarial=images.copy(), best_loss=np.full(count, -np.inf, np.float32),
                   steps_run=np.zeros(count, np.int64), broken_at=np.where(fooled, 0, -1).astype(np.int64),
                   fooled=fooled.copy())


def initial_state(delta: np.ndarray, eps: np.ndarray) -> dict[str, np.ndarray]:
    """The state of images starting at ``delta``: step size 2 eps, no best point yet, nothing halved."""
    rows = len(delta)
    minus_inf = np.full(rows, -np.inf, np.float32)
    return {"delta": delta, "previous": delta, "best": delta, "best_gradient": np.zeros_like(delta),
            "step_size": 2 * eps.astype(np.float32), "best_loss": minus_inf, "checked_loss": minus_inf,
            "halved": np.zeros(rows, bool), "increases": np.zeros(rows, np.int32), "last_loss": minus_inf}


class APGDSession(GraphSession):
    """An APGD graph (:class:`APGDLoop`) and its session, for ``with``: one per network, norm and loss."""

    def __init__(self, logits_fn, norm: str, loss: str):
        self.norm, self.loss = norm, loss
        super().__init__(lambda: APGDLoop(logits_fn, norm, loss))


class APGDLoop:
    """APGD's iterations on a batch of any size, in one session call: the state goes in and out as arrays."""

    def __init__(self, logits_fn, norm: str, loss: str):
        tf = tf1()
        self.logits_fn, self.norm, self.loss = logits_fn, get_norm(norm), loss
        image_shape = (None, IMAGE_SIZE, IMAGE_SIZE)
        self.images = tf.placeholder(tf.float32, image_shape, name="images")
        self.eps = tf.placeholder(tf.float32, (None,), name="eps")
        self.labels = tf.placeholder(tf.int32, (None,), name="labels")
        self.classes = tf.placeholder(tf.int32, (None,), name="classes")
        self.begin = tf.placeholder(tf.int32, (), name="begin")
        self.end = tf.placeholder(tf.int32, (), name="end")
        self.windows = tf.placeholder(tf.int32, (None,), name="windows")
        self.rho = tf.placeholder(tf.float32, (), name="rho")
        self.alpha = tf.placeholder(tf.float32, (), name="alpha")
        kinds = {"step_size": tf.float32, "best_loss": tf.float32, "checked_loss": tf.float32,
                 "last_loss": tf.float32, "halved": tf.bool, "increases": tf.int32}
        self.state = {name: tf.placeholder(kinds.get(name, tf.float32), (None,) if name in kinds else image_shape,
                                           name=name) for name in STATE}
        start = [self.begin, tf.zeros(tf.shape(self.eps), tf.bool), tf.zeros_like(self.images),
                 tf.fill(tf.shape(self.eps), -1)] + [self.state[name] for name in STATE]
        out = tf.while_loop(lambda k, *_: k < self.end, self._iteration, start, parallel_iterations=1,
                            name="apgd_steps")
        self.hit, self.fooling, self.broken = out[1:4]
        self.final = dict(zip(STATE, out[4:]))
        self.clean = Predictions(logits_fn, self.images)

    def _iteration(self, k, hit, fooling, broken, *values):
        """Evaluate ``x_k``; note a first fooling point; keep the best point; at a checkpoint maybe halve the step
        size and go back to the best point; then (``k`` < the last iteration) step to ``x_{k+1}``."""
        tf = tf1()
        state = dict(zip(STATE, values))
        logits = self.logits_fn(self.images + state["delta"])
        loss = self._loss(logits)
        (gradient,) = tf.gradients(tf.reduce_sum(loss), [state["delta"]], unconnected_gradients="zero")
        fooled = tf.logical_and(tf.logical_not(hit),
                                tf.not_equal(tf.argmax(logits, 1, output_type=tf.int32), self.labels))
        fooling = _rows_where(fooled, state["delta"], fooling)
        broken = tf.where(fooled, tf.fill(tf.shape(broken), k), broken)
        state, gradient = self._checkpoint(k, state, loss, gradient)
        last = tf.equal(k, tf.shape(self.windows)[0] - 1)  # x_steps: evaluated, no step after it
        moved = tf.cond(last, lambda: state["delta"], lambda: self._step(k, state, gradient))
        state["previous"], state["delta"] = state["delta"], moved
        return [k + 1, tf.logical_or(hit, fooled), fooling, broken] + [state[name] for name in STATE]

    def _checkpoint(self, k, state: dict, loss, gradient):
        """The best point, the count of rising steps and, at a checkpoint, the two conditions of the paper."""
        tf = tf1()
        rose = tf.logical_and(k > 0, loss > state["last_loss"])
        increases = state["increases"] + tf.cast(rose, tf.int32)
        better = loss > state["best_loss"]
        best = _rows_where(better, state["delta"], state["best"])
        best_gradient = _rows_where(better, gradient, state["best_gradient"])
        best_loss = tf.where(better, loss, state["best_loss"])
        window = self.windows[k]
        at_checkpoint = tf.fill(tf.shape(loss), window > 0)
        too_few_rises = tf.cast(increases, tf.float32) < self.rho * tf.cast(window, tf.float32)
        unchanged = tf.logical_and(tf.logical_not(state["halved"]), tf.equal(best_loss, state["checked_loss"]))
        halve = tf.logical_and(at_checkpoint, tf.logical_or(too_few_rises, unchanged))
        checked = tf.logical_or(at_checkpoint, tf.fill(tf.shape(loss), tf.equal(k, 0)))  # w_0 = 0 included
        new = {"delta": _rows_where(halve, best, state["delta"]), "previous": state["previous"], "best": best,
               "best_gradient": best_gradient,
               "step_size": tf.where(halve, state["step_size"] / 2, state["step_size"]),
               "best_loss": best_loss, "checked_loss": tf.where(checked, best_loss, state["checked_loss"]),
               "halved": tf.where(at_checkpoint, halve, state["halved"]),
               "increases": tf.where(at_checkpoint, tf.zeros_like(increases), increases),
               # the next step's rise is measured from the point it starts from
               "last_loss": tf.where(halve, best_loss, loss)}
        return new, _rows_where(halve, best_gradient, gradient)

    def _step(self, k, state: dict, gradient):
        tf = tf1()
        if self.norm.name == Linf.name:
            direction = tf.sign(gradient)
        else:
            length = self.norm.size(tf.reshape(gradient, (-1, IMAGE_SIZE * IMAGE_SIZE)))
            direction = gradient / tf.maximum(length, 1e-12)[:, None, None]
        delta = state["delta"]
        towards = self._project(delta + state["step_size"][:, None, None] * direction)
        with_momentum = self._project(delta + self.alpha * (towards - delta)
                                      + (1 - self.alpha) * (delta - state["previous"]))
        return tf.cond(tf.equal(k, 0), lambda: towards, lambda: with_momentum)

    def _project(self, delta):
        """Onto each image's ball, then onto valid pixels [0, 1] (which keeps it in the ball)."""
        tf = tf1()
        flat = self.norm.project(tf.reshape(delta, (-1, IMAGE_SIZE * IMAGE_SIZE)), self.eps)
        return tf.clip_by_value(self.images + tf.reshape(flat, tf.shape(delta)), 0.0, 1.0) - self.images

    def _loss(self, logits):
        """Each image's loss to maximize, computed row by row."""
        tf = tf1()
        if self.loss == "ce":
            return row_cross_entropy(logits, self.labels)
        top = tf.nn.top_k(logits, 4).values
        own = tf.gather(logits, self.labels, batch_dims=1)
        target = tf.gather(logits, self.classes, batch_dims=1)
        return -(own - target) / (top[:, 0] - (top[:, 2] + top[:, 3]) / 2 + 1e-12)

    def run(self, sess, state: dict, inputs: Inputs, begin: int, end: int, windows, rho: float, alpha: float):
        """Evaluations ``begin .. end - 1``: the new state, which images were fooled, where (perturbation), and
        at which evaluation."""
        feed = {self.images: inputs.images, self.eps: inputs.eps, self.labels: inputs.labels,
                self.classes: inputs.classes, self.begin: begin, self.end: end, self.windows: windows,
                self.rho: rho, self.alpha: alpha, **{self.state[name]: state[name] for name in STATE}}
        final, hit, fooling, broken = sess.run([self.final, self.hit, self.fooling, self.broken], feed)
        return final, hit, fooling, broken.astype(np.int64)


def _rows_where(condition, yes, no):
    """Row by row: ``yes`` where ``condition`` (B,) holds, else ``no`` (B, ...)."""
    tf = tf1()
    return tf.where_v2(tf.reshape(condition, [-1] + [1] * (yes.shape.rank - 1)), yes, no)
