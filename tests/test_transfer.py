"""Transfer: examples made on one network, evaluated on others."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from advmnist.attacks import choose_targets
from advmnist.cli import main
from advmnist.experiments.transfer import TransferSettings, transfer_matrix


@pytest.mark.slow
def test_every_cell_is_a_forward_pass_of_the_evaluated_model_on_the_sources_examples(tiny_model, second_model, mnist_small):
    _, test = mnist_small
    images, labels = test.images[:40], test.labels[:40]
    targets = choose_targets(labels, "d+1")
    settings = TransferSettings(attack="pgd", eps=0.2, steps=10)
    models = {"a": tiny_model, "b": second_model}
    matrix, examples = transfer_matrix(models, ["a", "b"], images, labels, targets, settings)
    # every cell, recomputed by a plain forward pass of the evaluated model on the source's 8-bit examples: rows are
    # sources, columns the models evaluated (the two networks differ, so a swap would show)
    for i, source in enumerate(["a", "b"]):
        for j, name in enumerate(["a", "b"]):
            predictions = models[name].predict_proba(examples[source]).argmax(1)
            assert matrix.reached[i, j] == pytest.approx((predictions == targets).mean())
            assert matrix.misclassified[i, j] == pytest.approx((predictions != labels).mean())
    # the diagonal, measured on the saved 8-bit examples, is the attack's own success after 8-bit rounding
    assert np.diag(matrix.reached).tolist() == pytest.approx(matrix.own)
    for name, model in models.items():
        assert examples[name].shape == images.shape
        np.testing.assert_array_equal(examples[name], np.round(examples[name] * 255) / 255)
        assert np.abs(examples[name] - images).max() <= 0.2 + 0.5 / 255  # PGD's ball, then 8-bit rounding
    assert matrix.reached.shape == matrix.misclassified.shape == (2, 2)
    assert (matrix.misclassified >= matrix.reached).all()  # reaching a target other than the label is misclassifying
    # examples fool the network they were made on more often than the other one
    assert np.trace(matrix.reached) > matrix.reached[0, 1] + matrix.reached[1, 0]


@pytest.mark.parametrize("args,message", [
    (["--attack", "attack", "--target", "untargeted"], "untargeted"),
    (["--attack", "fgsm"], "Invalid value"),
    (["--eps", "2"], "Invalid value"),
    (["--eps", "0.1,0.2"], "expected one budget, got the list '0.1,0.2'"),
    (["--eps", "nan"], "expected a finite number"),
    (["--count", "20000"], "expected --offset + --count"),
    (["--attack", "minimal", "--eps", "0.1", "--evaluate-on", "{model}.pb"],
     "--eps only applies to the attacks bounded"),
    (["--attack", "apgd-ce"], "expected --target untargeted for --attack apgd-ce"),
    (["--evaluate-on", "{model}/model.pb"], "expected at least two different networks"),
])
def test_transfer_bad_input_is_a_clear_error(tiny_run, bad_input, args, message):
    args = [a.replace("{model}", str(tiny_run[0])) for a in args]
    bad_input(["transfer", "--model", str(tiny_run[0])] + args, "transfer_pgd.png", message)


def test_transfer_refuses_models_of_different_input_shapes(tiny_run, other_shape_run, bad_input):
    bad_input(["transfer", "--model", str(tiny_run[0]), "--evaluate-on", str(other_shape_run)], "transfer_pgd.png",
              "same input shape")


@pytest.mark.slow
def test_transfer_command_writes_matrices(tiny_run, second_model, tmp_path):
    result = CliRunner().invoke(main, ["transfer", "--model", str(tiny_run[0]), "--evaluate-on", str(second_model.path.parent),
                                       "--count", "20", "--steps", "10", "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert len(payload["made_on"]) == 1 and len(payload["evaluated_on"]) == 2
    assert np.array(payload["reached_target"]).shape == (1, 2)
    arrays = np.load(tmp_path / "transfer_pgd.npz")
    assert arrays["examples"].shape == (1, 20, 28, 28)
    assert (tmp_path / "transfer_pgd.png").read_bytes()[:4] == b"\x89PNG"
    # any attack of the registry makes examples: here APGD-CE, untargeted, within Linf 0.3
    other = str(second_model.path.parent)
    result = CliRunner().invoke(main, ["transfer", "--model", str(tiny_run[0]), "--evaluate-on", other, "--attack",
                                       "apgd-ce", "--target", "untargeted", "--eps", "0.3", "--count", "20",
                                       "--steps", "5", "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["settings"]["attack"] == "apgd-ce" and payload["targeted"] is False
    from advmnist.data.mnist import load_split

    examples = np.load(tmp_path / "transfer_apgd-ce.npz")["examples"][0]
    clean = load_split("test", rows=slice(0, 20)).images
    assert np.abs(examples - clean).max() <= 0.3 + 0.5 / 255 + 1e-6  # in the ball, up to the 8-bit rounding
    assert payload["own_success_8bit"][0] > 0.5  # 0.3 breaks most of this weak model's digits
