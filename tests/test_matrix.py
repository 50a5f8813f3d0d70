"""Source x target matrix: choice of pairs, the summary, and the command."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from advmnist.experiments import matrix
from advmnist.cli import main
from advmnist.attacks import AttackResult


def test_sources_are_the_first_images_of_each_digit():
    labels = np.array([3, 1, 0, 1, 2, 4, 5, 6, 7, 8, 9, 0, 2, 3, 4, 5, 6, 7, 8, 9, 3])
    assert matrix.pick_sources(labels, 1).tolist() == [2, 1, 4, 0, 5, 6, 7, 8, 9, 10]
    assert matrix.pick_sources(labels, 2)[:4].tolist() == [2, 11, 1, 3]
    with pytest.raises(ValueError, match="at least 3 images of digit 0"):
        matrix.pick_sources(labels, 3)
    with pytest.raises(ValueError, match="--per-class >= 1"):
        matrix.pick_sources(labels, 0)


def test_every_ordered_pair_of_classes_per_image():
    labels = np.repeat(np.arange(10), 2)
    indices, targets = matrix.all_pairs(matrix.pick_sources(labels, 2), labels)
    assert len(indices) == 10 * 9 * 2
    sources = labels[indices]
    assert (sources != targets).all()
    pairs, counts = np.unique(np.stack([sources, targets], 1), axis=0, return_counts=True)
    assert len(pairs) == 90 and (counts == 2).all()
    assert (np.diff(sources) >= 0).all()  # ordered by source digit


def _fake_result(sources, targets, reached, scale):
    n = len(sources)
    originals = np.full((n, 28, 28), 0.5, np.float32)
    adversarial = originals.copy()
    adversarial[:, 0, 0] += scale  # effective perturbation of L2 = L1 = scale
    predictions = np.where(reached, targets, sources)
    return AttackResult(originals=originals, noise=adversarial - originals, adversarial=adversarial,
                        labels=sources, targets=targets, predictions=predictions, predictions_8bit=predictions)


def test_summary_counts_successes_and_averages_their_norms():
    sources = np.array([0, 0, 0, 0, 1])
    targets = np.array([1, 1, 2, 2, 0])
    reached = np.array([False, True, True, True, False])  # in cell (0, 1) the first image fails
    scale = np.array([0.2, 0.4, 0.1, 0.3, 0.25], np.float32)
    result = _fake_result(sources, targets, reached, scale)
    result.adversarial[np.arange(5), 0, 0] = 0.5 + scale
    cells = matrix.summarize(result)
    assert cells.success[0, 1] == 0.5 and cells.success[0, 2] == 1.0 and cells.success[1, 0] == 0.0
    assert cells.mean_l2[0, 1] == pytest.approx(0.4, rel=1e-5)  # the failed image's 0.2 is not averaged in
    assert cells.mean_l2[0, 2] == pytest.approx(0.2, rel=1e-5)
    assert np.isnan(cells.mean_l2[1, 0]) and np.isnan(cells.success[0, 0]) and np.isnan(cells.success[5, 6])
    assert cells.count[0, 1] == 2 and cells.count[1, 0] == 1 and cells.count[0, 0] == 0
    np.testing.assert_array_equal(cells.example[0, 0], result.originals[0])  # the original on the diagonal
    np.testing.assert_array_equal(cells.example[0, 2], result.adversarial[2])
    np.testing.assert_array_equal(cells.example[0, 1], result.adversarial[1])  # the one that got there
    assert cells.example_reached[0, 1] and not cells.example_reached[1, 0]
    assert cells.easiest(1) == [(0, 2)] and cells.hardest(1) == [(0, 1)]
    payload = cells.to_dict()
    assert payload["success"][0][0] is None and payload["success"][0][2] == 1.0
    json.dumps(payload)


@pytest.mark.slow
def test_matrix_command_writes_figures_arrays_and_json(tiny_run, tmp_path):
    result = CliRunner().invoke(main, ["matrix", "--per-class", "1", "--steps", "30", "--model", str(tiny_run[0]),
                                       "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    success = np.array([[np.nan if v is None else v for v in row] for row in payload["success"]])
    assert success.shape == (10, 10) and np.isnan(np.diag(success)).all()
    assert payload["success_overall"] == pytest.approx(np.nanmean(success))
    arrays = np.load(tmp_path / "matrix_l2.npz")
    assert arrays["noise"].shape == (90, 28, 28) and (arrays["labels"] != arrays["targets"]).all()
    # each cell, recomputed from the saved predictions: the share of digits s whose prediction is t
    for s, t in zip(*np.nonzero(~np.isnan(success))):
        cell = (arrays["labels"] == s) & (arrays["targets"] == t)
        assert cell.sum() == 1 and success[s, t] == pytest.approx((arrays["predictions"][cell] == t).mean())
    for name in ("matrix_l2.png", "matrix_l2_examples.png", "matrix_l2.json"):
        assert (tmp_path / name).stat().st_size > 0
    bad = CliRunner().invoke(main, ["matrix", "--per-class", "0", "--model", str(tiny_run[0])])
    assert bad.exit_code == 2 and "1<=x<=100" in bad.output
