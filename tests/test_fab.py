"""FAB: its box-constrained projection against brute force, the exact distance on a linear model, and the
attack contract (ball, valid pixels, seeds, batches and shards, more steps never weaker, bad input)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from advmnist.attacks.fab import FAB, boundary_projection
from advmnist.errors import InvalidInput
from advmnist.tfcompat import tf1


@pytest.fixture(scope="module")
def digits(mnist_small):
    _, test = mnist_small
    return test.images[:16], test.labels[:16]


def project(norm, points, w, c):
    tf = tf1()
    with tf.Graph().as_default(), tf.Session() as sess:
        return sess.run(boundary_projection(norm, tf.constant(points), tf.constant(w), tf.constant(c)))


def random_problems(rng, rows, size):
    """Points in [0, 1] (some on the box's faces), weights with some zeros, offsets of both signs (float32)."""
    points = rng.uniform(0, 1, (rows, size))
    points[rng.uniform(size=points.shape) < 0.15] = 0.0
    points[rng.uniform(size=points.shape) < 0.15] = 1.0
    w = rng.standard_normal((rows, size)) * (rng.uniform(size=(rows, size)) > 0.2)
    c = rng.standard_normal(rows) * np.abs(w).sum(1) * rng.uniform(0.02, 0.5, rows)
    return points.astype(np.float32), w.astype(np.float32), c.astype(np.float32)


def reachable(norm, t, w, radius):
    """The interval of ``w . d`` over ``d`` in the box with ``|d| <= radius`` (Linf) or ``|d_i| <= radius |w_i|`` (the
    L2 path ``clip(-lambda w)``, whose end points bound what L2 balls reach along it)."""
    reach = radius * (np.abs(w) if norm == "l2" else 1.0)
    low, high = np.maximum(-reach, -t), np.minimum(reach, 1 - t)
    return np.minimum(w * low, w * high).sum(), np.maximum(w * low, w * high).sum()


def bisection_norm(norm, t, w, c):
    """The smallest Linf radius whose box-clipped ball reaches ``w . d = -c`` (inf: out of reach), by bisection on
    the interval of ``w . d``; for L2 the norm of the KKT point ``clip(-lambda w)`` found by bisection on lambda."""
    t, w, c = (np.asarray(v, np.float64) for v in (t, w, c))
    top = 1.0 if norm == "linf" else 1e6 / max(np.abs(w[w != 0]).min(initial=1e-6), 1e-6)
    low_end, high_end = reachable(norm, t, w, top)
    if not low_end <= -c <= high_end:
        return np.inf
    low, high = 0.0, top
    for _ in range(200):
        middle = (low + high) / 2
        low_end, high_end = reachable(norm, t, w, middle)
        low, high = (low, middle) if low_end <= -c <= high_end else (middle, high)
    if norm == "linf":
        return high
    return np.linalg.norm(np.clip(-high * np.sign(c) * w, -t, 1 - t))


def enumerated_l2(t, w, c):
    """The smallest L2 point over every active set: each coordinate free (``-lambda w_i``) or at a face of the box."""
    t, w, c = (np.asarray(v, np.float64) for v in (t, w, c))
    best, best_norm = None, np.inf
    for faces in itertools.product((None, 0.0, 1.0), repeat=len(t)):
        fixed = np.array([f is not None for f in faces])
        d = np.array([0.0 if f is None else f - ti for f, ti in zip(faces, t)])
        scale = (w[~fixed] ** 2).sum()
        if scale == 0:
            continue
        lam = (c + (w[fixed] * d[fixed]).sum()) / scale
        d[~fixed] = -lam * w[~fixed]
        if (t + d >= -1e-12).all() and (t + d <= 1 + 1e-12).all() and np.linalg.norm(d) < best_norm:
            best, best_norm = d, np.linalg.norm(d)
    return best


def check_on_the_hyperplane_in_the_box(points, w, c, d):
    residual = (w.astype(np.float64) * d).sum(1) + c
    assert (np.abs(residual) <= 1e-5 * (np.abs(c) + np.abs(w).sum(1))).all()
    assert (points + d >= -1e-6).all() and (points + d <= 1 + 1e-6).all()


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.slow
def test_projection_matches_brute_force_on_tiny_problems(norm):
    points, w, c = random_problems(np.random.default_rng(0), 300, 4)
    d = project(norm, points, w, c)
    expected = np.array([bisection_norm(norm, *row) for row in zip(points, w, c)])
    feasible = np.isfinite(expected)
    assert 100 < feasible.sum() < 300  # both kinds of problem are drawn
    size = np.abs(d).max(1) if norm == "linf" else np.linalg.norm(d, axis=1)
    np.testing.assert_allclose(size[feasible], expected[feasible], rtol=1e-5, atol=1e-6)
    check_on_the_hyperplane_in_the_box(points[feasible], w[feasible], c[feasible], d[feasible])
    if norm == "l2":  # the L2 point is unique: every active set, tried one by one, gives the same one
        for k in np.flatnonzero(feasible)[:60]:
            np.testing.assert_allclose(d[k], enumerated_l2(points[k], w[k], c[k]), atol=1e-5)
    # out of the box's reach: the corner that goes furthest towards the hyperplane
    corner = np.where(w * np.sign(c)[:, None] > 0, -points, 1 - points) * (w != 0)
    np.testing.assert_allclose(d[~feasible], corner[~feasible], atol=1e-6)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_matches_bisection_on_image_sized_problems(norm):
    points, w, c = random_problems(np.random.default_rng(1), 20, 784)
    c *= 0.2
    d = project(norm, points, w, c)
    expected = np.array([bisection_norm(norm, *row) for row in zip(points, w, c)])
    assert np.isfinite(expected).all()
    size = np.abs(d).max(1) if norm == "linf" else np.linalg.norm(d, axis=1)
    np.testing.assert_allclose(size, expected, rtol=1e-5)
    check_on_the_hyperplane_in_the_box(points, w, c, d)


def linear_model(seed: int = 0):
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((784, 10)).astype(np.float32)
    bias = rng.standard_normal(10).astype(np.float32)
    # each image leans towards a class of its own: its nearest boundary is far (about 0.1 in Linf), so that
    # FAB's overshoot of 1e-5 of it is far above the float32 rounding of the logits
    leaning = np.sign(weights[:, :6] - weights.mean(1, keepdims=True)).T
    images = (0.5 + 0.1 * leaning + rng.uniform(-0.05, 0.05, (6, 784))).reshape(6, 28, 28).astype(np.float32)

    def logits_fn(x):
        tf = tf1()
        return tf.matmul(tf.reshape(x, (-1, 784)), tf.constant(weights)) + tf.constant(bias)

    return logits_fn, images, weights, bias


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("targeted", [True, False])
@pytest.mark.slow
def test_on_a_linear_model_fab_finds_the_exact_distance_to_the_boundary(norm, targeted):
    logits_fn, images, weights, bias = linear_model()
    flat = images.reshape(len(images), -1).astype(np.float64)
    logits = flat @ weights + bias
    labels = logits.argmax(1)
    # the closest point of another class: the nearest of the nine half-spaces z_k >= z_y
    slopes = weights.T[None, :, :] - weights.T[labels][:, None, :]            # (N, 10, 784)
    margins = logits[np.arange(len(labels)), labels][:, None] - logits          # (N, 10), > 0 off the label
    dual = np.abs(slopes).sum(2) if norm == "linf" else np.linalg.norm(slopes, axis=2)
    own = np.arange(10)[None] == labels[:, None]
    distances = np.where(own, np.inf, margins / np.where(own, 1.0, dual))
    exact = distances.min(1)
    nearest = distances.argmin(1)
    move = slopes[np.arange(len(labels)), nearest]
    move = np.sign(move) if norm == "linf" else move / np.linalg.norm(move, axis=1, keepdims=True)
    assert (np.abs(exact[:, None] * move) < 0.3).all()  # the box is not in the way: the formula is exact
    result = FAB(norm, 0.0, steps=3, targeted=targeted, eta=1 + 1e-5, early_stop=False)(logits_fn, images, labels)
    found = result.info["norm_found"]
    np.testing.assert_allclose(found, exact, rtol=1e-4)
    assert (found >= exact * (1 - 1e-5)).all()  # never closer than the boundary
    # eps 0: nothing within budget, the originals come back
    assert (result.info["broken_at"] == -1).all() and np.array_equal(result.adversarial, images)


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.5)])
@pytest.mark.slow
def test_fab_stays_in_the_ball_and_in_valid_pixels(tiny_model, digits, norm, eps):
    images, labels = digits
    result = FAB(norm, eps, steps=10, n_target_classes=3)(tiny_model.logits, images, labels, seed=0)
    size = result.norms[norm]
    assert (size <= eps * (1 + 1e-5) + 1e-6).all()
    assert result.adversarial.min() >= 0 and result.adversarial.max() <= 1
    assert result.success.any() and not result.success.all()  # a real attack on a weak model
    info = result.info
    broken = info["broken_at"] >= 0
    np.testing.assert_array_equal(result.success, broken)
    np.testing.assert_allclose(info["norm_found"][broken], size[broken], rtol=1e-5, atol=1e-7)
    assert (info["norm_found"][~broken] > eps).all()
    assert np.array_equal(result.adversarial[~broken], images[~broken])
    clean_wrong = tiny_model.predict_proba(images).argmax(1) != labels
    assert (info["steps_run"][clean_wrong] == 0).all() and (info["broken_at"][clean_wrong] == 0).all()
    assert (info["broken_at"] <= info["steps_run"]).all()
    assert (info["steps_run"][~broken] == 30).all()  # three targets of ten steps each


@pytest.mark.slow
def test_the_same_seed_gives_the_same_bytes_alone_in_a_batch_or_in_a_shard(tiny_model, digits):
    images, labels = digits
    # two searches per target: the second from a random start (drawn per image), every image to the end
    attack = FAB("l2", 0.9, steps=6, restarts=2, n_target_classes=2, early_stop=False, check_every=2, chunk_size=5)
    whole = attack(tiny_model.logits, images, labels, seed=3)
    assert 0 < whole.success.sum() < len(images)
    shard = np.arange(1, len(images), 3)
    part = attack(tiny_model.logits, images[shard], labels[shard], seed=3, positions=shard, population=len(images))
    for key, value in part.arrays().items():
        np.testing.assert_array_equal(value, whole.take(shard).arrays()[key], err_msg=key)
    for k in (0, 14):
        alone = attack(tiny_model.logits, images[k:k + 1], labels[k:k + 1], seed=3, positions=[k],
                       population=len(images))
        for key, value in alone.arrays().items():
            np.testing.assert_array_equal(value, whole.take(slice(k, k + 1)).arrays()[key], err_msg=key)
    other = attack(tiny_model.logits, images, labels, seed=4)
    assert not np.array_equal(other.info["norm_found"], whole.info["norm_found"])


@pytest.mark.slow
def test_more_steps_never_make_fab_weaker(tiny_model, digits):
    images, labels = digits
    runs = [FAB("linf", 0.1, steps=steps, n_target_classes=2, check_every=3)(tiny_model.logits, images, labels).success
            for steps in (1, 3, 10)]
    assert (runs[1] >= runs[0]).all() and (runs[2] >= runs[1]).all()
    assert runs[2].sum() > runs[0].sum()


@pytest.mark.parametrize("kwargs", [{"norm": "l1"}, {"eps": -0.1}, {"eps": 1.5}, {"eps": float("nan")},
                                    {"steps": 0}, {"restarts": 0}, {"check_every": 0}, {"chunk_size": 0},
                                    {"n_target_classes": 0}, {"n_target_classes": 10}, {"alpha_max": 1.5},
                                    {"eta": 0.9}, {"beta": 1.0}, {"beta": 0.0}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(InvalidInput, match="expected"):
        FAB(**{"norm": "linf", "eps": 0.1, **kwargs})


def test_the_targeted_criterion_is_refused(tiny_model, digits):
    images, labels = digits
    with pytest.raises(InvalidInput, match="only the untargeted criterion"):
        FAB("linf", 0.1)(tiny_model.logits, images, labels, targets=(labels + 1) % 10)
