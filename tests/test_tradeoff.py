"""The weight sweep: parsing, the sweep itself on the tiny model, the command."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from advmnist.experiments import tradeoff
from advmnist.cli import main


def test_weights_are_parsed_sorted_and_checked():
    assert tradeoff.parse_weights("0.1, 0,0.01,0.1") == [0.0, 0.01, 0.1]
    for bad in ("", "a,b", "-1", "nan", "0.1,inf"):
        with pytest.raises(ValueError, match="--weights|weights >= 0"):
            tradeoff.parse_weights(bad)


@pytest.mark.slow
def test_heavier_weights_give_smaller_noise_and_the_smallest_success_is_found(tiny_model, mnist_small):
    train, _ = mnist_small
    images, labels = train.images[16:22], train.labels[16:22]
    targets = (9 - labels).astype(np.int32)
    seen = []
    points = tradeoff.sweep(tiny_model.logits, images, targets, ["l2", "none"], [0.001, 3.0], steps=150, seed=0,
                            labels=labels, on_point=seen.append)
    assert [(p.reg, p.weight) for p in points] == [("l2", 0.001), ("l2", 3.0), ("none", 0.0)] and seen == points
    with_zero = tradeoff.sweep(tiny_model.logits, images[:2], targets[:2], ["l2", "l1"], [0.0], steps=20, seed=0,
                               labels=labels[:2])
    assert [p.reg for p in with_zero] == ["l2", "l1"]  # weight 0 ran once, reported for both
    np.testing.assert_array_equal(with_zero[0].l2, with_zero[1].l2)
    light, heavy = points[0], points[1]
    assert heavy.l2.mean() < light.l2.mean()  # the penalty shrinks the perturbation
    assert heavy.success.mean() <= light.success.mean()
    best = tradeoff.smallest_successes(points)
    for i, found in enumerate(best):
        successes = [p.l2[i] for p in points if p.success[i]]
        if successes:
            assert found["l2"] == pytest.approx(min(successes))
        else:
            assert found is None
    summary = light.summary()
    assert summary["success"] == pytest.approx(light.success.mean())
    if light.success.any():
        assert summary["mean_l2"] == pytest.approx(light.l2[light.success].mean())


@pytest.mark.slow
def test_tradeoff_command(tiny_run, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["tradeoff", "--reg", "l1", "--weights", "0,0.05", "--count", "3", "--steps", "20",
                                  "--model", str(tiny_run[0]), "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert [(p["reg"], p["weight"]) for p in payload["points"]] == [("l1", 0.0), ("l1", 0.05)]
    assert len(payload["smallest_success"]) == 3
    assert (tmp_path / "tradeoff_l1.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "tradeoff_l1.json").read_text())["points"] == payload["points"]
    bad = runner.invoke(main, ["tradeoff", "--weights", "0,-1", "--model", str(tiny_run[0])])
    assert bad.exit_code == 2 and "weights >= 0" in bad.output
