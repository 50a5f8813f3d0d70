"""The Square attack: no gradient, inside the ball, the same bytes per seed and per image, the paper's schedule."""
from __future__ import annotations

import numpy as np
import pytest

from advmnist.attacks.base import Draws, untargeted
from advmnist.attacks.pgd import PGDSession
from advmnist.attacks.square import Square, SquareSession
from advmnist.attacks.square_proposals import square_pattern, square_sides
from advmnist.errors import InvalidInput
from advmnist.experiments.shards import Shard


@pytest.fixture(scope="module")
def digits(mnist_small):
    _, test = mnist_small
    return test.images[:16], test.labels[:16]


@pytest.fixture(scope="module")
def sessions(tiny_model):
    """One Square graph per norm, shared by the runs of this module (as an ensemble would share it)."""
    opened = {norm: SquareSession(tiny_model.logits, norm) for norm in ("linf", "l2")}
    yield opened
    for session in opened.values():
        session.__exit__()


def attack(sessions, digits, norm="linf", eps=0.1, seed=0, positions=None, population=None, **kwargs):
    """Square on ``digits`` (a shard of ``population`` images at ``positions``) in the shared session."""
    images, labels = digits
    draws = Draws.of(seed, len(images), positions, population)
    return Square(norm, eps, **{"queries": 100, **kwargs}).run_in(sessions[norm], images, labels,
                                                                   untargeted(len(images)), draws=draws,
                                                                   progress=False)


def same(a, b) -> bool:
    return all(np.array_equal(getattr(a, name), getattr(b, name)) for name in ("adversarial", "predictions")) and all(
        np.array_equal(a.info[key], b.info[key]) for key in a.info)


@pytest.mark.parametrize("norm,eps", [("linf", 0.3), ("l2", 5.0)])
@pytest.mark.slow
def test_square_stays_in_the_ball_and_fools_a_weak_model(tiny_model, digits, norm, eps):
    images, labels = digits
    result = Square(norm, eps, queries=100)(tiny_model.logits, images, labels, seed=0)
    delta = (result.adversarial - images).reshape(len(images), -1)
    size = np.abs(delta).max(1) if norm == "linf" else np.sqrt((delta ** 2).sum(1))
    assert (size <= eps * (1 + 1e-5) + 1e-6).all()
    assert result.adversarial.min() >= 0 and result.adversarial.max() <= 1
    clean = tiny_model.predict_proba(images).argmax(1) != labels
    assert result.success.mean() >= 0.5 + clean.mean() / 2  # fools at least half of the images it had to attack
    # the bookkeeping: already wrong costs nothing, a success is the query that fooled it, a failure the budget
    steps, broken = result.info["steps_run"], result.info["broken_at"]
    np.testing.assert_array_equal(result.success, broken >= 0)
    assert (steps[clean] == 0).all() and (broken[clean] == 0).all()
    attacked = result.success & ~clean
    assert (broken[attacked] >= 1).all() and (broken[attacked] == steps[attacked]).all()
    assert (steps[~result.success] == 100).all()
    # the predictions are the network's on the returned images
    np.testing.assert_array_equal(tiny_model.predict_proba(result.adversarial).argmax(1), result.predictions)


def test_the_graph_holds_no_gradient(tiny_model, sessions):
    def gradient_ops(graph):
        return [op.name for op in graph.get_operations() if op.type.endswith("Grad") or "gradients" in op.name]

    for session in sessions.values():
        assert len(session.graph.get_operations()) > 100  # the network is in it
        assert gradient_ops(session.graph) == []
    with PGDSession(tiny_model.logits, "linf", targeted=False) as session:  # the check sees a gradient
        assert gradient_ops(session.graph)


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.5)])
@pytest.mark.slow
def test_same_seed_same_bytes_another_seed_another_result(sessions, digits, norm, eps):
    first, again = (attack(sessions, digits, norm, eps, seed=4) for _ in range(2))
    assert same(first, again)
    other = attack(sessions, digits, norm, eps, seed=5)
    assert not np.array_equal(first.adversarial, other.adversarial)


@pytest.mark.parametrize("norm,eps", [("linf", 0.2), ("l2", 3.0)])
@pytest.mark.slow
def test_an_image_gets_the_same_result_alone_in_a_batch_or_in_a_shard(sessions, digits, norm, eps):
    images, labels = digits
    whole = attack(sessions, digits, norm, eps, seed=2)
    broken_at = whole.info["broken_at"]
    assert (broken_at > 0).any() and (broken_at == -1).any()  # some fooled by the search (they left), some not
    # other batches: smaller chunks, other session calls
    assert same(whole, attack(sessions, digits, norm, eps, seed=2, chunk_size=5, check_every=7))
    for k in range(2):
        positions = Shard(k, 2).positions(len(images))
        part = attack(sessions, (images[positions], labels[positions]), norm, eps, seed=2, positions=positions,
                      population=len(images))
        assert same(part, whole.take(positions))
    for index in (np.flatnonzero(broken_at > 0)[0], np.flatnonzero(broken_at == -1)[0]):  # alone: a batch of one
        alone = attack(sessions, (images[index:index + 1], labels[index:index + 1]), norm, eps, seed=2,
                       positions=[index], population=len(images))
        assert same(alone, whole.take([index]))


@pytest.mark.slow
def test_more_queries_or_restarts_never_make_square_weaker(sessions, digits):
    # without rescaling, a budget's queries are the first ones of a larger budget: per image, never weaker
    runs = {queries: attack(sessions, digits, eps=0.25, queries=queries, rescale_schedule=False, seed=1)
            for queries in (10, 40, 150)}
    for small, large in ((10, 40), (40, 150)):
        assert (runs[large].success >= runs[small].success).all()
        fooled = runs[small].success
        np.testing.assert_array_equal(runs[large].info["broken_at"][fooled], runs[small].info["broken_at"][fooled])
    assert runs[150].success.sum() > runs[10].success.sum()
    # a second start only adds chances
    twice = attack(sessions, digits, eps=0.25, queries=40, rescale_schedule=False, seed=1, restarts=2)
    assert (twice.success >= runs[40].success).all()
    # with the paper's rescaled schedule, a budget five times larger fools at least as many images
    rescaled = [attack(sessions, digits, eps=0.25, queries=queries, seed=1).success.sum() for queries in (30, 150)]
    assert rescaled[1] >= rescaled[0]


def test_the_p_schedule_halves_at_the_papers_checkpoints():
    checkpoints = [10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000]
    before = square_sides(checkpoints, 10000, 0.8, "linf")
    after = square_sides(np.add(checkpoints, 1), 10000, 0.8, "linf")
    # side round(sqrt(p * 784)) for p = 0.8, 0.4, 0.2, ... 0.8 / 512, at least 1
    np.testing.assert_array_equal(before, [25, 18, 13, 9, 6, 4, 3, 2, 2])
    np.testing.assert_array_equal(after, [18, 13, 9, 6, 4, 3, 2, 2, 1])
    assert (square_sides(np.arange(11), 10000, 0.8, "linf") == 25).all()
    # rescaled to 1000 queries: the checkpoints come ten times sooner
    np.testing.assert_array_equal(square_sides([1, 2, 5, 6, 800, 801], 1000, 0.8, "linf"), [25, 18, 18, 13, 2, 1])
    # L2: odd sides of at least 3
    np.testing.assert_array_equal(square_sides(np.add(checkpoints, 1), 10000, 0.8, "l2"), [19, 13, 9, 7, 5, 3, 3, 3, 3])
    assert square_sides([0], 100, 1.0, "linf")[0] == 28


def test_the_l2_pattern_has_unit_norm_and_two_opposite_halves():
    pattern = square_pattern(7)
    assert np.sqrt((pattern ** 2).sum()) == pytest.approx(1.0)
    assert (pattern[:3] > 0).all() and (pattern[3:] < 0).all()
    # the largest magnitude at each half's centre, falling off towards its edges
    assert np.abs(pattern[1]).argmax() == 3 and pattern[1, 3] > pattern[1, 2] > pattern[1, 1] > pattern[1, 0]
    # both halves carry the same L2 mass
    assert (pattern[:3] ** 2).sum() == pytest.approx((pattern[3:] ** 2).sum())


@pytest.mark.parametrize("kwargs", [{"norm": "l1"}, {"eps": -0.1}, {"eps": 1.5}, {"eps": np.nan},
                                    {"queries": 0}, {"p_init": 0}, {"p_init": 1.5}, {"restarts": 0}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(InvalidInput, match="expected"):
        Square(**{"norm": "linf", "eps": 0.1, **kwargs})


def test_eps_per_image(sessions, digits):
    images, labels = digits
    eps = np.where(np.arange(len(images)) % 2, 0.3, 0.0)
    result = attack(sessions, digits, "linf", eps, queries=30)
    linf = np.abs(result.adversarial - images).reshape(len(images), -1).max(1)
    assert (linf <= eps + 1e-6).all() and (linf[eps > 0] > 0).any()
    untouched = (eps == 0) & (result.info["broken_at"] != 0)  # a ball of radius 0: nothing to search
    assert untouched.any() and (result.info["steps_run"][untouched] == 0).all()
    assert (result.info["broken_at"][untouched] == -1).all()


def test_bad_inputs_of_a_run_are_refused(tiny_model, digits):
    images, labels = digits
    with pytest.raises(InvalidInput, match="only the untargeted criterion"):
        Square("linf", 0.1, queries=5)(tiny_model.logits, images[:2], labels[:2], targets=(labels[:2] + 1) % 10)
    with pytest.raises(InvalidInput, match="one per image"):
        Square("linf", [0.1, 0.2, 0.3], queries=5)(tiny_model.logits, images[:2], labels[:2])
