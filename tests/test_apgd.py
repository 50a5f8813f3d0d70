"""APGD-CE and APGD-T: the paper's step-size schedule, the exact boundary of a linear model, the ball, and results
that depend on the seed and each image's place only (not on its batch or shard)."""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from advmnist.attacks import Draws
from advmnist.attacks.apgd import APGD, APGDSession, Inputs, checkpoint_windows, checkpoints, initial_state
from advmnist.attacks.base import untargeted
from advmnist.errors import InvalidInput
from advmnist.tfcompat import tf1


@pytest.fixture(scope="module")
def digits(mnist_small):
    _, test = mnist_small
    return test.images[:24], test.labels[:24]


@pytest.fixture(scope="module")
def tiny_apgd(tiny_model):
    """``run(attack, images, labels, seed, positions=None, population=None)``: the attack on the tiny model in one
    graph and session per norm and loss for the whole module (building one costs more than a small attack)."""
    sessions = {}

    def run(attack: APGD, images, labels, seed: int, positions=None, population=None):
        key = (attack.norm, attack.loss)
        if key not in sessions:
            sessions[key] = APGDSession(tiny_model.logits, *key)
        draws = Draws.of(seed, len(images), positions, population)
        return attack.run_in(sessions[key], images, labels, untargeted(len(images)), draws=draws, progress=False)

    yield run
    for session in sessions.values():
        session.sess.close()


def paper_checkpoints(steps: int) -> list[int]:
    """The paper's w_j = ceil(p_j * steps) < steps, j >= 1, from its recursion in exact fractions."""
    p = [Fraction(0), Fraction(22, 100)]
    while p[-1] <= 1:
        p.append(p[-1] + max(p[-1] - p[-2] - Fraction(3, 100), Fraction(6, 100)))
    return sorted({math.ceil(value * steps) for value in p[1:] if value <= 1} - {steps})


def test_checkpoints_are_the_papers():
    assert paper_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]  # p = .22 .41 .57 .70 .80 .87 .93 .99
    for steps in (1, 5, 10, 37, 100, 250, 1000):
        assert checkpoints(steps) == paper_checkpoints(steps), steps
    windows = checkpoint_windows(100)
    assert np.flatnonzero(windows).tolist() == [22, 41, 57, 70, 80, 87, 93, 99]
    assert windows[[22, 41, 99]].tolist() == [22, 19, 6]


def constant_logits(images):
    """A network that ignores its input and reads every image as class 3: no step can raise its loss."""
    tf = tf1()
    row = tf.constant(np.eye(10, dtype=np.float32)[3] * 2.0)
    return tf.zeros_like(images[:, :1, 0]) + row[None, :]


def step_sizes(logits_fn, images, labels, norm, eps, steps):
    """Each image's step size after each evaluation k = 0 .. steps, driving the graph one iteration per call."""
    count = len(images)
    eps = np.full(count, eps, np.float32)
    inputs = Inputs(images, labels, labels, eps, Draws.of(0, count))
    state = initial_state(np.zeros_like(images), eps)
    trace = []
    with APGDSession(logits_fn, norm, "ce") as session:
        for k in range(steps + 1):
            state, *_ = session.loop.run(session.sess, state, inputs, k, k + 1, checkpoint_windows(steps), 0.75, 0.75)
            trace.append(state["step_size"])
    return np.array(trace)  # (steps + 1, count)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.slow
def test_a_stalled_images_step_size_halves_at_each_checkpoint(mnist_small, norm):
    images = mnist_small[1].images[:2]
    trace = step_sizes(constant_logits, images, np.array([3, 3]), norm, 0.2, 100)
    halvings = np.array([sum(w <= k for w in paper_checkpoints(100)) for k in range(101)])
    np.testing.assert_array_equal(trace, (0.4 / 2.0 ** halvings)[:, None].astype(np.float32).repeat(2, 1))


def test_step_sizes_change_only_by_halving_at_checkpoints(tiny_model, digits):
    images, labels = digits
    trace = step_sizes(tiny_model.logits, images[:8], labels[:8], "linf", 0.05, 40)
    changed = np.flatnonzero((trace[1:] != trace[:-1]).any(1)) + 1
    assert set(changed) <= set(checkpoints(40)) and len(changed)
    ratio = trace[1:] / trace[:-1]
    assert set(np.unique(ratio)) <= {0.5, 1.0}
    # the conditions are per image: at some checkpoint, some images halve and others do not
    assert any(0 < (ratio[k - 1] == 0.5).sum() < 8 for k in checkpoints(40))


def linear_model(seed: int = 0):
    """Logits ``z_0 = w . x + c``, ``z_1 = 0``, the others -50: the class-0 margin is the linear ``w . x + c``."""
    rng = np.random.default_rng(seed)
    w = (rng.choice([-1.0, 1.0], 784) * rng.uniform(0.5, 1.5, 784) / 16).astype(np.float32)  # |w|_1 about 50
    c = np.float32(-0.5 * w.sum())

    def logits_fn(images):
        tf = tf1()
        margin = tf.reduce_sum(tf.reshape(images, (-1, 784)) * w, axis=1) + c
        rest = tf.zeros_like(margin)[:, None] + np.array([0.0] + [-50.0] * 8, np.float32)
        return tf.concat([margin[:, None], rest], axis=1)

    return w.astype(np.float64), float(c), logits_fn


@pytest.mark.parametrize("loss", ["ce", "dlr-targeted"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.slow
def test_a_linear_model_is_fooled_just_beyond_its_exact_boundary_and_never_inside(norm, loss):
    w, c, logits_fn = linear_model()
    rng = np.random.default_rng(1)
    distances = np.array([0.03, 0.08, 0.15, 0.25]) if norm == "linf" else np.array([0.3, 0.8, 1.5, 2.5])
    size = np.abs(w).sum() if norm == "linf" else np.sqrt((w ** 2).sum())
    direction = np.sign(w) if norm == "linf" else w / np.sqrt((w ** 2).sum())
    images = 0.5 + rng.uniform(-0.1, 0.1, (4, 784))
    images += ((distances * size - (images @ w + c)) / size)[:, None] * direction[None, :]  # margins set
    images = images.astype(np.float32)
    # the exact distance to the boundary w . x + c = 0, with the closest point inside [0, 1]
    exact = (images.astype(np.float64) @ w + c) / size
    closest = images - 1.02 * exact[:, None] * direction[None, :]
    assert np.allclose(exact, distances, rtol=1e-3) and closest.min() > 0 and closest.max() < 1
    labels = np.zeros(4, np.int64)
    attack = dict(norm=norm, loss=loss, steps=30, n_target_classes=1)
    outside = APGD(eps=exact * 1.02, **attack)(logits_fn, images.reshape(4, 28, 28), labels, seed=0)
    inside = APGD(eps=exact * 0.98, restarts=2, **attack)(logits_fn, images.reshape(4, 28, 28), labels, seed=0)
    assert outside.success.all(), outside.info
    assert not inside.success.any() and (inside.info["broken_at"] == -1).all()
    assert (inside.info["steps_run"] == 60).all()


def decoy_model():
    """Logits ``(1, 0.9, w . x + c, -50, ...)``: class 1 has the 2nd highest logit but cannot move, class 2 (3rd)
    rises with ``w . x`` and passes class 0 beyond an L-infinity distance of 0.095 from the gray image."""
    rng = np.random.default_rng(2)
    w = (rng.choice([-1.0, 1.0], 784) * rng.uniform(0.5, 1.5, 784) / 16).astype(np.float32)
    c = np.float32(1.0 - 0.5 * w.sum() - 0.095 * np.abs(w).sum())  # w . 0.5 + c = 1 - 0.095 |w|_1, about -3.7

    def logits_fn(images):
        tf = tf1()
        rising = tf.reduce_sum(tf.reshape(images, (-1, 784)) * w, axis=1) + c
        fixed = tf.zeros_like(rising)[:, None] + np.array([1.0, 0.9], np.float32)
        return tf.concat([fixed, rising[:, None], tf.zeros_like(fixed[:, :1]) + np.full(7, -50.0, np.float32)], 1)

    return logits_fn


@pytest.mark.slow
def test_apgd_t_reaches_the_class_of_the_third_highest_logit_with_two_target_classes():
    images = np.full((1, 28, 28), 0.5, np.float32)
    logits_fn = decoy_model()
    runs = {n: APGD("linf", 0.1, loss="dlr-targeted", steps=20, n_target_classes=n)(logits_fn, images, [0], seed=0)
            for n in (1, 2, 9)}
    assert not runs[1].success[0] and runs[2].success[0] and runs[9].success[0]
    assert runs[2].predictions[0] == 2 and runs[2].info["broken_at"][0] > 20  # in the second target's pass
    assert runs[9].adversarial.tobytes() == runs[2].adversarial.tobytes()
    assert not APGD("linf", 0.09, loss="dlr-targeted", steps=20)(logits_fn, images, [0], seed=0).success[0]


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.5)])
@pytest.mark.slow
def test_apgd_stays_in_the_ball_and_in_valid_pixels(tiny_apgd, digits, norm, eps):
    images, labels = digits
    for loss in ("ce", "dlr-targeted"):
        result = tiny_apgd(APGD(norm, eps, loss=loss, steps=10, n_target_classes=2), images, labels, 0)
        delta = (result.adversarial - images).reshape(len(images), -1)
        size = np.abs(delta).max(1) if norm == "linf" else np.sqrt((delta ** 2).sum(1))
        assert (size <= eps * (1 + 1e-5) + 1e-6).all()
        assert result.adversarial.min() >= 0 and result.adversarial.max() <= 1
        assert result.success.any() and not result.success.all()  # a real attack, not a trivial one
        np.testing.assert_array_equal(result.success, result.info["broken_at"] >= 0)
        assert (result.info["broken_at"] <= result.info["steps_run"]).all()
        assert (result.info["steps_run"][~result.success] == 10 * (1 if loss == "ce" else 2)).all()


def test_same_seed_same_result_other_seed_other_result(tiny_apgd, digits):
    images, labels = digits
    runs = [tiny_apgd(APGD("l2", 1.0, steps=8), images, labels, seed) for seed in (4, 4, 5)]
    assert runs[0].adversarial.tobytes() == runs[1].adversarial.tobytes()
    np.testing.assert_array_equal(runs[0].info["broken_at"], runs[1].info["broken_at"])
    assert not np.array_equal(runs[0].adversarial, runs[2].adversarial)


@pytest.mark.slow
def test_more_steps_restarts_or_target_classes_never_make_apgd_weaker(tiny_apgd, digits):
    images, labels = digits

    def run(**kwargs):
        return tiny_apgd(APGD("linf", 0.05, **kwargs), images, labels, 3)

    few, more, restarted = run(steps=5), run(steps=25), run(steps=5, restarts=3)
    # the checkpoints scale with the steps, so more steps are another schedule: compared in number
    assert more.success.sum() >= few.success.sum() and more.success.sum() > 0
    # a restart only adds chances: the first start is the same
    assert (restarted.success >= few.success).all() and few.success.sum() > 0
    np.testing.assert_array_equal(restarted.info["broken_at"][few.success], few.info["broken_at"][few.success])
    one, nine = (run(steps=10, loss="dlr-targeted", n_target_classes=n) for n in (1, 9))
    assert (nine.success >= one.success).all() and one.success.sum() > 0
    assert nine.adversarial[one.success].tobytes() == one.adversarial[one.success].tobytes()


@pytest.mark.parametrize("norm,eps,loss", [("linf", 0.08, "ce"), ("l2", 1.2, "dlr-targeted")])
@pytest.mark.slow
def test_alone_in_a_batch_or_in_a_shard_an_image_gets_the_same_bits(tiny_model, tiny_apgd, digits, norm, eps, loss):
    images, labels = digits
    count = len(images)
    settings = dict(loss=loss, steps=12, n_target_classes=2, check_every=5)
    whole = tiny_apgd(APGD(norm, eps, **settings), images, labels, 2)
    chunked = tiny_apgd(APGD(norm, eps, chunk_size=5, **settings), images, labels, 2)
    shard = np.arange(1, count, 3)
    sharded = APGD(norm, eps, **settings)(tiny_model.logits, images[shard], labels[shard], seed=2, positions=shard,
                                          population=count)
    alone = [tiny_apgd(APGD(norm, eps, **settings), images[[i]], labels[[i]], 2, [i], count) for i in (0, 4, 7)]
    assert whole.success.any() and not whole.success.all()
    for part, rows in [(chunked, slice(None)), (sharded, shard)] + [(a, [i]) for a, i in zip(alone, (0, 4, 7))]:
        assert part.adversarial.tobytes() == whole.adversarial[rows].tobytes()
        for key in ("steps_run", "broken_at"):
            np.testing.assert_array_equal(part.info[key], whole.info[key][rows])


def test_images_already_misclassified_cost_nothing(tiny_model, tiny_apgd, digits):
    images, labels = digits
    wrong = (labels + 1) % 10
    result = tiny_apgd(APGD("linf", 0.1, steps=10), images, wrong, 0)
    clean = tiny_model.predict_proba(images).argmax(1) != wrong
    assert clean.any()
    assert (result.info["steps_run"][clean] == 0).all() and (result.info["broken_at"][clean] == 0).all()
    np.testing.assert_array_equal(result.adversarial[clean], images[clean])


@pytest.mark.parametrize("kwargs", [dict(norm="l1"), dict(eps=-0.1), dict(eps=1.5), dict(eps=float("nan")),
                                    dict(eps=[0.1, -0.1]), dict(loss="dlr"), dict(n_target_classes=0),
                                    dict(n_target_classes=10), dict(steps=0), dict(rho=0), dict(alpha=1.5)])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(InvalidInput, match="expected"):
        APGD(**{"norm": "linf", "eps": 0.1, **kwargs})


def test_the_targeted_criterion_is_refused(tiny_model, digits):
    images, labels = digits
    with pytest.raises(InvalidInput, match="only the untargeted criterion"):
        APGD("linf", 0.1, loss="dlr-targeted")(tiny_model.logits, images[:2], labels[:2],
                                               targets=(labels[:2] + 1) % 10)
