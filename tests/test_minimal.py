"""The minimal-norm attack: known answers on a linear model, the search's guarantees, the command."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from advmnist.experiments import minimal
from advmnist.attacks import MinimalNorm, choose_targets, norms
from advmnist.attacks.base import UNTARGETED
from advmnist.cli import main
from advmnist.tfcompat import session_config, tf1


@pytest.fixture(scope="module")
def digits(mnist_small):
    train, _ = mnist_small
    images, labels = train.images[16:24], train.labels[16:24]
    return images, labels, choose_targets(labels, "9-d")


# ---------------------------------------------------------------------------- norm operations

def _run(tensor_fn, *arrays):
    tf = tf1()
    graph = tf.Graph()
    with graph.as_default():
        out = tensor_fn(*[tf.constant(a) for a in arrays])
    with tf.Session(graph=graph, config=session_config(tf)) as sess:
        return sess.run(out)


def _l1_projection_reference(v: np.ndarray, radius: float) -> np.ndarray:
    """Bisection on the soft threshold: the projection onto the L1 ball is sign(v) * max(|v| - theta, 0)."""
    if np.abs(v).sum() <= radius:
        return v
    low, high = 0.0, float(np.abs(v).max())
    for _ in range(100):
        theta = (low + high) / 2
        low, high = (theta, high) if np.maximum(np.abs(v) - theta, 0).sum() > radius else (low, theta)
    return np.sign(v) * np.maximum(np.abs(v) - high, 0)


def test_l1_projection_matches_the_soft_threshold_definition():
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(5, 784)).astype(np.float32)
    radius = np.array([1.0, 10.0, 50.0, 1000.0, 0.0], np.float32)
    projected = _run(norms.L1().project, rows, radius)
    for row, r, got in zip(rows, radius, projected):
        np.testing.assert_allclose(got, _l1_projection_reference(row.astype(np.float64), r), atol=2e-4)
        assert np.abs(got).sum() <= r + 1e-3
    np.testing.assert_array_equal(projected[3], rows[3])  # inside the ball: unchanged


@pytest.mark.parametrize("name", ["l2", "l1", "linf"])
def test_projection_and_shrinking_never_exceed_and_sizes_match_measure(name):
    norm = norms.get_norm(name)
    rng = np.random.default_rng(1)
    rows = rng.uniform(-1, 1, size=(6, 784)).astype(np.float32)
    radius = np.full(6, {"l2": 3.0, "l1": 20.0, "linf": 0.3}[name], np.float32)
    projected, size, shrunk = _run(lambda r, e, f: (norm.project(r, e), norm.size(r), norm.shrink(r, f)),
                                   rows, radius, np.linspace(0, 1, 6).astype(np.float32))
    np.testing.assert_allclose(size, norm.measure(rows), rtol=1e-5)
    assert (norm.measure(projected) <= radius * (1 + 1e-5)).all()
    shrunk_sizes = norm.measure(shrunk)
    assert shrunk_sizes[0] == 0 and np.allclose(shrunk[-1], rows[-1])
    assert (np.diff(norm.measure(_run(lambda r, f: norm.shrink(r, f), np.repeat(rows[:1], 6, 0),
                                      np.linspace(0, 1, 6).astype(np.float32)))) >= 0).all()


# ---------------------------------------------------------------------------- a known answer

def _linear_problem(lead: float):
    """Mid-grey images and a linear network where only class 0 (the label) and class 1 compete.

    Class 0's logit is the constant ``C``, class 1's is ``w . x``: the minimal change to
    cross over is known. While no pixel reaches 0 or 1 it is ``margin / ||w||_dual``
    (L2 -> ||w||_2, Linf -> ||w||_1); for L1 it is the fractional knapsack: move the
    pixels of largest |w| as far as [0, 1] allows until the margin is gone.
    """
    rng = np.random.default_rng(3)
    w = (rng.normal(0, 1, 784) * (rng.uniform(size=784) < 0.3)).astype(np.float32)
    images = np.round((0.5 + rng.uniform(-0.01, 0.01, (4, 28, 28))) * 255).astype(np.float32) / 255  # 8-bit
    scores = images.reshape(4, -1).astype(np.float64) @ w
    constant = scores.max() + lead
    weights = np.zeros((784, 10), np.float32)
    weights[:, 1] = w
    bias = np.full(10, -1e3, np.float32)
    bias[:2] = [constant, 0.0]

    def logits_fn(x):
        tf = tf1()
        return tf.matmul(tf.reshape(x, (-1, 784)), tf.constant(weights)) + tf.constant(bias)

    return logits_fn, images, constant - scores, w


def _l1_knapsack(image: np.ndarray, w: np.ndarray, margin: float) -> float:
    room = np.where(w > 0, 1.0 - image.ravel(), image.ravel())  # how far each pixel can move the right way
    total = 0.0
    for j in np.argsort(-np.abs(w)):
        move = min(room[j], margin / abs(w[j]))
        total, margin = total + move, margin - move * abs(w[j])
        if margin <= 1e-12:
            return total
    raise AssertionError("the boundary is out of reach")


@pytest.mark.parametrize("name,lead", [("l2", 10.0), ("l1", 3.0), ("linf", 20.0)])
def test_linear_model_minimal_norm_is_found_within_a_few_percent(name, lead):
    logits_fn, images, margins, w = _linear_problem(lead)
    if name == "l1":
        expected = np.array([_l1_knapsack(x, w, m) for x, m in zip(images, margins)])
    else:
        expected = margins / np.linalg.norm(w.astype(np.float64), ord={"l2": 2, "linf": 1}[name])
    labels = np.zeros(4, np.int64)
    result = MinimalNorm(name, steps=150, starts=2)(logits_fn, images, labels, targets=np.ones(4, np.int64))
    assert result.success_8bit.all()
    found = result.norms[name].astype(np.float64)
    # an 8-bit image that crosses the boundary is never below the true minimum, and the search gets close to it
    assert (found >= expected * (1 - 1e-4)).all(), (found, expected)
    assert (found <= expected * 1.03 + 1 / 255).all(), (found, expected)


# ---------------------------------------------------------------------------- the search's guarantees

@pytest.fixture(scope="module")
def l2_result(tiny_model, digits):
    images, labels, targets = digits
    return MinimalNorm("l2", steps=60, starts=3, check_every=10)(tiny_model.logits, images, labels, targets=targets,
                                                                  seed=0)


def test_best_so_far_never_grows_and_the_final_is_no_larger(l2_result):
    history = l2_result.info["norm_history"]
    assert history.shape == (len(l2_result), 6)
    found = np.isfinite(history)
    assert (found[:, 1:] >= found[:, :-1]).all()  # once found, always found
    both = found[:, 1:] & found[:, :-1]
    assert (history[:, 1:][both] <= history[:, :-1][both]).all()
    final = l2_result.norms["l2"]
    ok = l2_result.success_8bit
    assert ok.any()
    assert (final[ok] <= history[ok, -1] + 1e-5).all()


def test_results_are_8bit_images_that_fool_the_network_as_saved(tiny_model, l2_result):
    adversarial = l2_result.adversarial
    as_png = np.round(adversarial * 255).astype(np.uint8)
    np.testing.assert_allclose(as_png / 255.0, adversarial, atol=1e-6)
    predictions = tiny_model.predict_proba((as_png / 255.0).astype(np.float32)).argmax(1)
    np.testing.assert_array_equal(predictions, l2_result.predictions_8bit)
    np.testing.assert_array_equal(l2_result.success_8bit, predictions == l2_result.targets)
    np.testing.assert_array_equal(l2_result.info["found"], l2_result.success_8bit)


@pytest.mark.slow
def test_more_starts_never_do_worse_on_the_same_seed(tiny_model, digits):
    images, labels, targets = digits
    few = MinimalNorm("l2", steps=40, starts=1)(tiny_model.logits, images, labels, targets=targets, seed=0)
    many = MinimalNorm("l2", steps=40, starts=4)(tiny_model.logits, images, labels, targets=targets, seed=0)
    # the first start is the same search in both (it begins at the image): more starts only add candidates
    # (per image the first search may still differ by float rounding in a batch of another size: compare totals)
    assert many.success_8bit.sum() >= few.success_8bit.sum()
    both = many.success_8bit & few.success_8bit
    assert many.norms["l2"][both].mean() <= few.norms["l2"][both].mean() + 1e-3


@pytest.mark.slow
def test_untargeted_and_batches_of_any_size(tiny_model, digits):
    images, labels, _ = digits
    attack = MinimalNorm("linf", steps=30, starts=2, batch_rows=6)  # 3 images per graph: 3 chunks
    assert attack.chunk_size == 3
    result = attack(tiny_model.logits, images, labels, seed=0)
    assert (result.targets == UNTARGETED).all() and not result.targeted
    np.testing.assert_array_equal(result.success_8bit, result.predictions_8bit != labels)
    whole = MinimalNorm("linf", steps=30, starts=2)(tiny_model.logits, images, labels, seed=0)
    np.testing.assert_allclose(result.norms["linf"], whole.norms["linf"], atol=2 / 255)


@pytest.mark.slow
def test_same_seed_same_result(tiny_model, digits):
    images, labels, targets = digits
    runs = [MinimalNorm("l1", steps=20, starts=3)(tiny_model.logits, images, labels, targets=targets, seed=s)
            for s in (5, 5)]
    np.testing.assert_array_equal(runs[0].adversarial, runs[1].adversarial)


def test_settings_are_checked():
    from advmnist.errors import InvalidInput

    for kwargs in ({"steps": 0}, {"starts": 0}, {"gamma": 1.0}, {"max_step": 0.0}, {"batch_rows": 0}):
        with pytest.raises(InvalidInput, match="expected"):
            MinimalNorm("l2", **kwargs)
    with pytest.raises(InvalidInput, match="expected a norm"):
        MinimalNorm("l3")


# ---------------------------------------------------------------------------- summary and curve

def test_robust_curve_counts_images_not_fooled_within_eps():
    curve = minimal.robust_curve(np.array([0.0, 1.0, 2.0, 5.0]), np.array([True, True, True, False]), points=11)
    eps, robust = np.array(curve["eps"]), np.array(curve["robust_accuracy"])
    assert eps[0] == 0 and eps[-1] == pytest.approx(2.2)
    assert robust[0] == 0.75  # the image fooled without any change is not robust even at eps 0
    assert (np.diff(robust) <= 0).all()
    assert robust[-1] == 0.25  # the image never fooled stays robust
    assert robust[eps.searchsorted(1.0)] == 0.5


def test_summary_is_over_the_fooled_images(l2_result):
    report = minimal.summarize(l2_result, "l2", indices=np.arange(16, 24), seconds=1.0)
    ok = l2_result.success_8bit
    assert report.summary["success_8bit"] == int(ok.sum())
    assert report.summary["mean_l2"] == pytest.approx(float(l2_result.norms["l2"][ok].mean()))
    assert report.summary["median_l2"] == pytest.approx(float(np.median(l2_result.norms["l2"][ok])))
    assert [r["index"] for r in report.rows] == list(range(16, 24))
    assert [r["adversarial_8bit"] for r in report.rows] == ok.tolist()


# ---------------------------------------------------------------------------- the command

@pytest.mark.slow
def test_minimal_command_writes_table_figures_arrays(tiny_run, tmp_path):
    result = CliRunner().invoke(main, ["minimal", "--norm", "l1", "--count", "4", "--steps", "30", "--starts", "2",
                                       "--model", str(tiny_run[0]), "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert set(payload["summary"]) >= {"success", "success_8bit", "mean_l1", "mean_l2", "mean_linf", "median_l1"}
    assert [row["index"] for row in payload["rows"]] == [16, 17, 18, 19]
    assert [row["target"] for row in payload["rows"]] == [7, 1, 3, 0]
    for suffix in ("", "_originals", "_perturbation", "_curve"):
        assert (tmp_path / f"minimal_l1{suffix}.png").read_bytes()[:4] == b"\x89PNG"
    arrays = np.load(tmp_path / "minimal_l1.npz")
    assert arrays["adversarial"].shape == (4, 28, 28)
    assert json.loads((tmp_path / "minimal_l1.json").read_text())["summary"] == payload["summary"]
    assert payload["seconds"] > 0 and len(payload["curve"]["eps"]) == len(payload["curve"]["robust_accuracy"])


@pytest.mark.slow
def test_minimal_command_untargeted(tiny_run, tmp_path):
    result = CliRunner().invoke(main, ["minimal", "--target", "untargeted", "--split", "test", "--offset", "0",
                                       "--count", "3", "--steps", "20", "--starts", "1", "--search-rounds", "1",
                                       "--model", str(tiny_run[0]), "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert [row["target"] for row in payload["rows"]] == [-1, -1, -1]
    assert payload["settings"]["search_rounds"] == 1 and "then 1 round of APGD search over eps" in result.stderr
    assert payload["summary"]["targeted"] is False


@pytest.mark.parametrize("args", [["--norm", "l3"], ["--count", "0"], ["--starts", "0"], ["--steps", "0"],
                                  ["--search-rounds", "-1"], ["--target", "untargetted"], ["--model", "no/such/run"]])
def test_minimal_bad_input_is_a_clear_error_and_leaves_files_alone(bad_input, args):
    bad_input(["minimal"] + args, "minimal_l2.png")


def test_an_image_already_misclassified_needs_no_change(tiny_model, mnist_small):
    _, test = mnist_small
    predictions = tiny_model.predict_proba(test.images).argmax(1)
    wrong = np.flatnonzero(predictions != test.labels)[:3]
    assert len(wrong)
    result = MinimalNorm("l2", steps=10, starts=2)(tiny_model.logits, test.images[wrong], test.labels[wrong])
    assert result.success_8bit.all()
    np.testing.assert_array_equal(result.adversarial, test.images[wrong])
    assert (result.norms["l2"] == 0).all() and (result.norms["linf"] == 0).all()


# ---------------------------------------------------------------------------- the APGD search over eps

def test_the_search_budget_is_the_middle_or_in_linf_the_8bit_step_below_it():
    from advmnist.attacks.eps_search import grid_budget

    middle = np.array([0.1, 25 / 255, 0.5 / 255, 1.0], np.float32)
    np.testing.assert_array_equal(grid_budget("l2", middle), middle)
    steps = grid_budget("linf", middle) * 255
    np.testing.assert_allclose(steps, [25, 25, 0, 255], atol=1e-4)  # 25/255 is its own step, not 24/255


@pytest.mark.parametrize("name,lead", [("l2", 10.0), ("linf", 20.0)])
@pytest.mark.slow
def test_the_search_over_eps_brings_a_poor_start_close_to_a_linear_models_boundary(name, lead):
    from advmnist.attacks import Draws
    from advmnist.attacks.base import as_8bit
    from advmnist.attacks.eps_search import search_eps

    logits_fn, images, margins, w = _linear_problem(lead)
    expected = margins / np.linalg.norm(w.astype(np.float64), ord={"l2": 2, "linf": 1}[name])
    direction = np.sign(w) if name == "linf" else w / np.linalg.norm(w)
    # a poor start: 8-bit changes 1.5 times as far as the boundary, which fool the network
    start = as_8bit(images + 1.5 * expected[:, None, None] * direction.reshape(1, 28, 28)) - images
    labels = np.zeros(4, np.int64)
    norm = norms.get_norm(name)
    rounds = []
    found = search_eps(logits_fn, images, labels, start, np.ones(4, bool), name, rounds=6, draws=Draws.of(0, 4),
                       steps=30, n_target_classes=1, on_round=rounds.append)
    assert len(rounds) == 6 and rounds[0] == 4  # every image is searched in the first round
    sizes = norm.measure(found).astype(np.float64)
    scores = (images + found).reshape(4, -1).astype(np.float64) @ w
    assert (scores > margins + images.reshape(4, -1) @ w - 1e-3).all()  # every result crosses the boundary
    np.testing.assert_allclose(as_8bit(images + found), images + found, atol=1e-6)  # and is an 8-bit image
    assert (sizes >= expected * (1 - 1e-4)).all(), (sizes, expected)  # never inside the boundary
    assert (sizes <= expected * 1.08 + 1 / 255).all(), (sizes, expected)  # from 1.5 times, within 8 %


@pytest.mark.slow
def test_the_search_only_ever_replaces_fmns_result_by_a_smaller_8bit_one(tiny_model, mnist_small):
    _, test = mnist_small
    images, labels = test.images[:6], test.labels[:6]
    plain = MinimalNorm("linf", steps=10, starts=1)(tiny_model.logits, images, labels, seed=0)
    searched = MinimalNorm("linf", steps=10, starts=1, search_rounds=2)(tiny_model.logits, images, labels, seed=0)
    smaller = searched.info["searched_smaller"]
    assert smaller.any()  # 10 FMN steps leave room below
    before, after = plain.norms["linf"], searched.norms["linf"]
    np.testing.assert_array_equal(after[~smaller], before[~smaller])
    assert (after[smaller] < before[smaller]).all()
    assert searched.success_8bit.sum() == plain.success_8bit.sum()
    predictions = tiny_model.predict_proba(np.round(searched.adversarial * 255).astype(np.float32) / 255).argmax(1)
    np.testing.assert_array_equal(predictions, searched.predictions_8bit)  # confirmed by a plain forward pass
    targeted = MinimalNorm("linf", steps=10, starts=1, search_rounds=3)
    assert not targeted.searches(choose_targets(labels, "9-d")) and targeted.searches(None)
    assert not MinimalNorm("l1", search_rounds=3).searches(None)


@pytest.mark.slow
def test_ctrl_c_keeps_the_finished_images_or_fmns_results_and_says_which(tiny_run, tmp_path, monkeypatch):
    from advmnist.attacks import fmn

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    base = ["minimal", "--norm", "linf", "--target", "untargeted", "--split", "test", "--offset", "0", "--steps", "5",
            "--model", str(tiny_run[0])]
    # during the search over eps: FMN had finished every image
    with monkeypatch.context() as patch:
        patch.setattr(fmn, "search_eps", stop)
        result = CliRunner().invoke(main, base + ["--count", "3", "--starts", "1", "--out", str(tmp_path / "a")])
    assert result.exit_code == 130, result.output
    assert "Interrupted during the APGD search over eps: FMN's results for all 3 images" in result.output
    record = json.loads((tmp_path / "a" / "minimal_linf_partial.json").read_text())
    assert record["settings"]["completed"] == 3 and len(record["rows"]) == 3
    assert not (tmp_path / "a" / "minimal_linf.json").exists()
    # in FMN's second chunk (64 starts: 8 images a chunk): the first 8 images are kept
    calls, original = [], fmn.FMNSearch.run

    def second_chunk(self, *args):
        calls.append(args[1:])
        if len(calls) > 1 and args[1] == 0:  # the first steps of another chunk
            raise KeyboardInterrupt
        return original(self, *args)

    monkeypatch.setattr(fmn.FMNSearch, "run", second_chunk)
    result = CliRunner().invoke(main, base + ["--count", "10", "--starts", "64", "--out", str(tmp_path / "b")])
    assert result.exit_code == 130, result.output
    assert "the first 8 of 10 images were done" in result.output
    assert len(json.loads((tmp_path / "b" / "minimal_linf_partial.json").read_text())["rows"]) == 8
