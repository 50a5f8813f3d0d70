"""Per-image targeted noise: behaviour, not numbers of the full reference run."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from advmnist.experiments import targeted
from advmnist.attacks import (Attack, AttackResult, PerImageNoise, Regularizer, choose_targets, make_regularizer, norms,
                              parse_target_rule)
from advmnist.attacks.base import rounded_to_8bit, row_cross_entropy


def L1(weight):  # noqa: N802 (reads like the regularizer it makes)
    return make_regularizer("l1", weight)


def L2(weight):  # noqa: N802
    return make_regularizer("l2", weight)


def assert_in_unit_range(images: np.ndarray) -> None:
    assert images.min() >= 0.0 and images.max() <= 1.0


@pytest.fixture(scope="module")
def digits(mnist_small):
    train, _ = mnist_small
    images, labels = train.images[16:24], train.labels[16:24]
    return images, labels, choose_targets(labels, "9-d")


def _success(result) -> int:
    return int((result.predictions == result.targets).sum())


def test_target_rules():
    labels = np.array([0, 3, 9, 4])
    assert choose_targets(labels, "9-d").tolist() == [9, 6, 0, 5]
    assert choose_targets(labels, "d+1").tolist() == [1, 4, 0, 5]
    assert choose_targets(labels, "7").tolist() == [7, 7, 7, 7]
    many = np.arange(200) % 10
    random = choose_targets(many, "random", seed=3, indices=np.arange(200))
    assert (random != many).all() and len(set(random.tolist())) == 10
    again = choose_targets(many, "random", seed=3, indices=np.arange(200))
    assert (random == again).all()
    other_seed = choose_targets(many, "random", seed=4, indices=np.arange(200))
    assert (random != other_seed).any()


def test_target_equal_to_label_is_rejected():
    with pytest.raises(ValueError, match=r"image\(s\) \[12\]"):
        choose_targets(np.array([1, 2, 3]), "3", indices=np.array([10, 11, 12]))
    with pytest.raises(ValueError, match="expected --target"):
        parse_target_rule("10")


def test_regularizer_registry():
    l1 = make_regularizer("l1", 0.5)
    assert isinstance(l1.norm, norms.L1) and l1.weight == 0.5 and l1.name == "l1" and l1.has_weight
    assert isinstance(make_regularizer("l2", 0.5).norm, norms.L2)
    none = make_regularizer("none", 0.5)
    assert none.weight == 0.0 and none.norm is None and none.name == "none" and not none.has_weight
    with pytest.raises(ValueError, match="expected a regularizer"):
        make_regularizer("l3", 1.0)
    with pytest.raises(ValueError, match="weight >= 0"):
        L2(-1.0)
    with pytest.raises(ValueError, match="without a norm"):
        Regularizer(None, 0.5)


def test_norms_measure_each_image_and_penalize_the_whole_noise():
    delta = np.zeros((2, 28, 28), np.float32)
    delta[0, 0, :2] = [0.3, -0.4]
    delta[1, 5, 5] = -1.0
    np.testing.assert_allclose(norms.L2().measure(delta), [0.5, 1.0], rtol=1e-6)
    np.testing.assert_allclose(norms.L1().measure(delta), [0.7, 1.0], rtol=1e-6)
    np.testing.assert_allclose(norms.Linf().measure(delta), [0.4, 1.0], rtol=1e-6)
    assert make_regularizer("l2", 2.0).value(delta) == pytest.approx(2.0 * (0.25 + 1.0) / 2)
    assert make_regularizer("l1", 2.0).value(delta) == pytest.approx(2.0 * 1.7)
    assert make_regularizer("none").value(delta) == 0.0
    with pytest.raises(ValueError, match="penalty"):
        Regularizer(norms.Linf(), 1.0).value(delta)


def _result(predictions, labels, targets, predictions_8bit=None) -> AttackResult:
    n = len(predictions)
    originals = np.zeros((n, 28, 28), np.float32)
    adversarial = originals.copy()
    adversarial[:, 0, 0] = np.arange(n) / 10
    return AttackResult(originals=originals, adversarial=adversarial, noise=adversarial - originals,
                        labels=np.asarray(labels), targets=np.asarray(targets), predictions=np.asarray(predictions),
                        predictions_8bit=np.asarray(predictions if predictions_8bit is None else predictions_8bit))


def test_success_is_the_target_or_any_wrong_class():
    targeted = _result([5, 2, 5], labels=[1, 2, 3], targets=[5, 5, 5], predictions_8bit=[5, 2, 3])
    assert targeted.targeted and targeted.success.tolist() == [True, False, True]
    assert targeted.success_8bit.tolist() == [True, False, False]
    untargeted = _result([5, 2, 3], labels=[1, 2, 3], targets=[-1, -1, -1])
    assert not untargeted.targeted and untargeted.success.tolist() == [True, False, False]
    np.testing.assert_allclose(untargeted.norms["l2"], [0.0, 0.1, 0.2], atol=1e-7)
    both = AttackResult.concatenate([targeted.take(slice(0, 2)), targeted.take(np.array([2]))])
    assert both.success.tolist() == targeted.success.tolist() and len(both) == 3


class _Identity(Attack):
    """An attack that changes nothing: the contract's checks and measurements alone."""

    def run(self, logits_fn, images, labels, targets, *, draws, progress):
        return _result(labels, labels, targets)


@pytest.mark.parametrize("images, labels, targets, message", [
    (np.zeros((2, 28, 27)), [1, 2], [3, 4], "shape"),
    (np.full((2, 28, 28), 1.5), [1, 2], [3, 4], r"\[0, 1\]"),
    (np.zeros((2, 28, 28)), [1, 2], [3, 10], "targets in 0..9"),
    (np.zeros((2, 28, 28)), [1, 2], [3, 2], "different from the true labels"),
    (np.zeros((2, 28, 28)), None, None, "true labels for an untargeted attack"),
    (np.zeros((2, 28, 28)), [1, 12], None, "labels in 0..9"),
])
def test_the_contract_checks_inputs(images, labels, targets, message):
    with pytest.raises(ValueError, match=message):
        _Identity()(None, images, labels, targets=targets)


def test_the_contract_passes_untargeted_on():
    result = _Identity()(None, np.zeros((2, 28, 28)), [1, 2])
    assert result.targets.tolist() == [-1, -1] and not result.success.any()


@pytest.mark.slow
def test_more_steps_reach_more_targets(tiny_model, digits):
    images, labels, targets = digits
    few = PerImageNoise(L2(1e-2), steps=3)(tiny_model.logits, images, labels, targets=targets)
    many = PerImageNoise(L2(1e-2), steps=400)(tiny_model.logits, images, labels, targets=targets)
    assert _success(few) < _success(many)
    assert _success(many) >= len(images) - 1
    assert many.info["cross_entropy"].mean() < few.info["cross_entropy"].mean()
    assert_in_unit_range(many.adversarial)
    np.testing.assert_allclose(many.adversarial, np.clip(images + many.noise, 0, 1))


@pytest.mark.slow
def test_larger_weight_gives_smaller_noise(tiny_model, digits):
    images, labels, targets = digits
    norms = {}
    for weight in (1e-3, 1e-1):
        result = PerImageNoise(L2(weight), steps=300)(tiny_model.logits, images, labels, targets=targets)
        norms[weight] = np.sqrt((result.noise ** 2).sum())
    assert norms[1e-1] < 0.8 * norms[1e-3]


@pytest.mark.slow
def test_l1_gives_sparser_noise_than_l2_and_none(tiny_model, digits):
    images, labels, targets = digits
    results = {reg.name: PerImageNoise(reg, steps=400)(tiny_model.logits, images, labels, targets=targets)
               for reg in (L1(1e-2), L2(1e-2), make_regularizer("none", 0.0))}
    l1 = {name: np.abs(r.noise).sum() for name, r in results.items()}
    assert l1["l1"] < l1["l2"] < l1["none"]
    small = {name: (np.abs(r.noise) < 0.01).mean() for name, r in results.items()}
    assert small["l1"] > small["l2"]


@pytest.mark.slow
def test_an_images_objective_does_not_depend_on_the_others(tiny_model, digits):
    """CE_i / 16 + R(noise_i): an image's gradient is the same alone, in a batch of 3 or of 8, bit for bit."""
    images, _, targets = digits
    targets = targets.astype(np.int32)
    initial = np.random.default_rng(5).normal(0.0, 0.01, images.shape).astype(np.float32)
    _, batch = _tf_adam_noise(tiny_model, images, targets, initial, 0, 3e-3, plain_import=False)
    _, three = _tf_adam_noise(tiny_model, images[:3], targets[:3], initial[:3], 0, 3e-3, plain_import=False)
    _, alone = _tf_adam_noise(tiny_model, images[5:6], targets[5:6], initial[5:6], 0, 3e-3, plain_import=False)
    assert np.abs(batch).max() > 1e-4
    np.testing.assert_array_equal(three, batch[:3])
    np.testing.assert_array_equal(alone, batch[5:6])


def test_row_cross_entropy_and_softmax_do_not_depend_on_the_other_rows():
    """Each row's value and gradient are bit for bit those of the whole batch, for any number of rows
    (TensorFlow's own kernel rounds the last 10 N mod 16 values differently on a CPU with 16-float packets)."""
    from advmnist.attacks.base import row_softmax
    from advmnist.tfcompat import tf1

    tf = tf1()
    rng = np.random.default_rng(3)
    logits_value = rng.normal(0.0, 4.0, (40, 10)).astype(np.float32)
    labels_value = rng.integers(0, 10, 40).astype(np.int32)
    graph = tf.Graph()
    with graph.as_default():
        logits = tf.placeholder(tf.float32, (None, 10))
        labels = tf.placeholder(tf.int32, (None,))
        entropy = row_cross_entropy(logits, labels)
        fetches = [entropy, tf.gradients(tf.reduce_sum(entropy), logits)[0], row_softmax(logits),
                   tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)]
    with tf.Session(graph=graph) as sess:
        def run(rows):
            return sess.run(fetches, {logits: logits_value[rows], labels: labels_value[rows]})

        whole = run(slice(None))
        np.testing.assert_allclose(whole[0], whole[3], rtol=1e-6)  # TensorFlow's cross-entropy, to rounding
        np.testing.assert_allclose(whole[2].sum(1), 1.0, atol=1e-6)
        for start, stop in itertools.combinations(range(41), 2):  # every run of rows (TF's own: ~30 % differ)
            part = run(slice(start, stop))
            for got, expected in zip(part[:3], whole[:3]):
                assert got.tobytes() == expected[start:stop].tobytes(), (start, stop)


@pytest.mark.slow
def test_chunks_cover_every_image_in_order(tiny_model, digits):
    """Chunks of 3 give exactly the run of the whole batch: an image's computation does not depend on the others."""
    images, labels, targets = digits
    whole = PerImageNoise(L1(1e-2), steps=60)(tiny_model.logits, images, labels, targets=targets, seed=5)
    chunked = PerImageNoise(L1(1e-2), steps=60, chunk_size=3)(tiny_model.logits, images, labels, targets=targets,
                                                              seed=5)
    for name in ("originals", "labels", "targets"):
        np.testing.assert_array_equal(getattr(chunked, name), getattr(whole, name))
    np.testing.assert_array_equal(chunked.info["steps_run"], whole.info["steps_run"])
    np.testing.assert_array_equal(chunked.noise, whole.noise)
    np.testing.assert_array_equal(chunked.predictions, whole.predictions)
    for key in whole.info:
        np.testing.assert_array_equal(chunked.info[key], whole.info[key], err_msg=key)


@pytest.mark.slow
def test_session_calls_of_any_length_give_the_same_noise_and_move_the_bar(tiny_model, digits, monkeypatch):
    """Steps are split into session calls of about ``call_seconds`` (so the bar moves and Ctrl-C takes effect
    within a second); how they are split changes nothing, bit for bit."""
    import advmnist.attacks.targeted_noise as module

    images, labels, targets = digits
    updates = []

    class Bar:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, count):
            updates.append(count)

        def set_postfix(self, **kwargs):
            pass

    monkeypatch.setattr(module, "progress_bar", lambda *args, **kwargs: Bar())
    attack = PerImageNoise(L1(1e-2), steps=120, check_every=50)
    monkeypatch.setattr(PerImageNoise, "call_seconds", 1e9)  # calls as long as the checks allow
    one_call_per_check = attack(tiny_model.logits, images, labels, targets=targets, seed=2)
    # a first step alone (to time one), then up to each check, never across the learning-rate switch at 80
    assert [u // len(images) for u in updates] == [1, 49, 30, 20, 20]
    updates.clear()
    monkeypatch.setattr(PerImageNoise, "call_seconds", 1e-9)  # one step per call
    step_by_step = attack(tiny_model.logits, images, labels, targets=targets, seed=2)
    assert len(updates) == 120 and sum(updates) == 120 * len(images)
    assert step_by_step.noise.tobytes() == one_call_per_check.noise.tobytes()
    np.testing.assert_array_equal(step_by_step.info["steps_run"], one_call_per_check.info["steps_run"])


@pytest.mark.slow
def test_same_seed_same_noise_other_seed_other_noise(tiny_model, digits):
    images, labels, targets = digits
    def run(seed):
        return PerImageNoise(L2(1e-2), steps=50)(tiny_model.logits, images, None, targets=targets, seed=seed)

    first, second, other = run(1), run(1), run(2)
    assert first.noise.tobytes() == second.noise.tobytes()
    assert not np.array_equal(first.noise, other.noise)


@pytest.mark.slow
def test_early_stop_stops_early_once_margin_reached(tiny_model, digits):
    images, labels, _ = digits
    # the easiest targets, each image's runner-up class: the one-epoch test model is not the same
    # from run to run (CPU training is not bit-for-bit reproducible), and a harder target can stall
    # when unregularized noise saturates pixels at 0 or 1
    probabilities = tiny_model.predict_proba(images)
    probabilities[np.arange(len(images)), probabilities.argmax(1)] = -1
    targets = probabilities.argmax(1)
    def run(chunk_size):
        return PerImageNoise(L2(1e-3), steps=3000, early_stop_margin=0.1, check_every=50,
                             chunk_size=chunk_size)(tiny_model.logits, images, None, targets=targets)

    result = run(256)
    steps = result.info["steps_run"]
    assert steps.max() < 3000 and (steps % 50 == 0).all()
    assert _success(result) == len(images)
    # each image stops at its own check: a chunk of 3 stops when its slowest image does, yet every
    # image keeps what it kept in the whole batch
    chunked = run(3)
    np.testing.assert_array_equal(chunked.info["steps_run"], steps)
    assert chunked.noise.tobytes() == result.noise.tobytes()
    for key in ("target_probability", "cross_entropy"):
        assert chunked.info[key].tobytes() == result.info[key].tobytes()


@pytest.mark.slow
def test_summary_follows_reference_definitions(tiny_model, digits):
    images, labels, targets = digits
    reg = L1(1e-2)
    result = PerImageNoise(reg, steps=100)(tiny_model.logits, images, labels, targets=targets)
    report = targeted.summarize(result, reg, indices=np.arange(16, 24), seconds=1.0)
    count = len(images)
    assert report.summary["L1Norm"] == pytest.approx(np.abs(result.noise).sum() / count, rel=1e-5)
    assert report.summary["L2Norm"] == pytest.approx(np.sqrt((result.noise.astype(np.float64) ** 2).sum()) / count,
                                                     rel=1e-5)
    assert report.summary["regularize_cost"] == pytest.approx(1e-2 * np.abs(result.noise).sum(), rel=1e-5)
    assert report.summary["train_error"] == pytest.approx(1 - _success(result) / count)
    assert [r["index"] for r in report.rows] == list(range(16, 24))
    # each row's norms are those of the effective perturbation (after clipping to [0, 1]), not of the noise
    effective = (np.clip(images + result.noise, 0, 1) - images).reshape(count, -1).astype(np.float64)
    assert [r["l1"] for r in report.rows] == pytest.approx(np.abs(effective).sum(1), rel=1e-5)
    assert [r["linf"] for r in report.rows] == pytest.approx(np.abs(effective).max(1), rel=1e-5)
    assert any(r["l1"] < np.abs(result.noise[i]).sum() - 1e-3 for i, r in enumerate(report.rows))  # clipping bit


@pytest.mark.slow
def test_8bit_predictions_are_those_of_the_rounded_images(tiny_model, digits):
    images, labels, targets = digits
    result = PerImageNoise(L1(1e-2), steps=60)(tiny_model.logits, images, labels, targets=targets)
    png = np.round(result.adversarial * 255).astype(np.uint8)  # what a saved PNG holds
    expected = tiny_model.predict_proba(png.astype(np.float32) / 255).argmax(1)
    np.testing.assert_array_equal(result.predictions_8bit, expected)


def test_8bit_rounding_in_the_graph_rounds_to_pixel_levels():
    from advmnist.tfcompat import tf1

    images = np.array([[[0.0, 0.5, 1.0, 0.1234, 1.3, -0.2]]], np.float32)
    with tf1().Session(graph=tf1().Graph()) as sess:
        rounded = sess.run(rounded_to_8bit(tf1().constant(images)))
    assert np.allclose(rounded * 255, np.round(rounded * 255))
    assert np.abs(rounded - np.clip(images, 0, 1)).max() <= 0.5 / 255 + 1e-7


def _tf_adam_noise(model, images, targets, initial, steps: int, lr: float, *, plain_import: bool,
                   late_lr: float | None = None, switch: int | None = None):
    """The textbook TF1 loop: tf.train.AdamOptimizer, one sess.run per step (what AdamLoop replaces);
    from step ``switch`` on, the learning rate is ``late_lr``."""
    from advmnist.tfcompat import tf1

    tf = tf1()
    graph = tf.Graph()
    with graph.as_default():
        noise = tf.Variable(initial)
        adversarial = tf.clip_by_value(tf.constant(images) + noise, 0.0, 1.0)
        if plain_import:  # TensorFlow's own gradients, no override
            (logits,) = tf.import_graph_def(model.graph_def, input_map={model.meta["input"]: adversarial},
                                            return_elements=[model.meta["logits"]], name="net")
        else:
            logits = model.logits(adversarial)
        cross_entropy = row_cross_entropy(logits, tf.constant(targets))  # the attack's (TF's, row by row)
        loss = tf.reduce_sum(cross_entropy) / 16 + 1e-2 * tf.nn.l2_loss(noise)
        rate = tf.placeholder_with_default(np.float32(lr), ())
        step = tf.train.AdamOptimizer(rate).minimize(loss, var_list=[noise])
        gradient = tf.gradients(loss, [noise])[0]
        init = tf.global_variables_initializer()
    with tf.Session(graph=graph) as sess:
        sess.run(init)
        first_gradient = sess.run(gradient)
        for k in range(steps):
            sess.run(step, {rate: late_lr} if switch is not None and k >= switch else {})
        return sess.run(noise), first_gradient


def test_constant_weight_gradients_equal_tensorflows(tiny_model, digits):
    """FrozenModel.logits' input gradients (advmnist.model.gradients) are TensorFlow's, to float rounding."""
    images, _, targets = digits
    targets = targets.astype(np.int32)
    initial = np.random.default_rng(0).normal(0.0, 0.01, images.shape).astype(np.float32)
    _, plain = _tf_adam_noise(tiny_model, images, targets, initial, 0, 3e-3, plain_import=True)
    _, ours = _tf_adam_noise(tiny_model, images, targets, initial, 0, 3e-3, plain_import=False)
    assert np.abs(plain).max() > 1e-4
    np.testing.assert_allclose(ours, plain, rtol=1e-4, atol=1e-4 * np.abs(plain).max())


@pytest.mark.slow
def test_in_graph_adam_loop_matches_the_textbook_loop(tiny_model, digits):
    """AdamLoop (many steps per session call) gives what tf.train.AdamOptimizer's loop gives."""
    images, _, targets = digits
    targets = targets.astype(np.int32)
    initial = np.random.default_rng(0).normal(0.0, 0.01, images.shape).astype(np.float32)
    expected, _ = _tf_adam_noise(tiny_model, images, targets, initial, 30, 3e-3, plain_import=False)
    # 30 steps at a constant rate: no learning-rate switch (that would come at step 20 of 30), so
    # the check cadence (every 7 steps) splits the 30 steps into session calls of 7, 7, 7, 7, 2
    ours = PerImageNoise(L2(1e-2), steps=30, lr=3e-3, late_lr=3e-3, check_every=7)(tiny_model.logits, images,
                                                                                    targets=targets, seed=0)
    np.testing.assert_array_equal(ours.noise, expected)  # the same kernel on the same gradients: bit for bit
    assert (ours.info["steps_run"] == 30).all()


@pytest.mark.slow
def test_learning_rate_switch_lands_on_its_step(tiny_model, digits):
    """9 steps: 6 at 3e-3, then 3 at 1e-3 (two thirds in), whatever the check cadence."""
    images, _, targets = digits
    images, targets = images[:2], targets[:2].astype(np.int32)
    initial = np.random.default_rng(2).normal(0.0, 0.01, images.shape).astype(np.float32)  # as PerImageNoise draws
    expected, _ = _tf_adam_noise(tiny_model, images, targets, initial, 9, 3e-3, plain_import=False,
                                 late_lr=1e-3, switch=6)
    one_step_early, _ = _tf_adam_noise(tiny_model, images, targets, initial, 9, 3e-3, plain_import=False,
                                       late_lr=1e-3, switch=5)
    assert not np.array_equal(one_step_early, expected)  # the comparison can tell a switch one step off
    for check_every in (1, 4, 100):
        ours = PerImageNoise(L2(1e-2), steps=9, lr=3e-3, late_lr=1e-3,
                             check_every=check_every)(tiny_model.logits, images, None, targets=targets, seed=2)
        np.testing.assert_array_equal(ours.noise, expected)
