"""benchmarks/autoattack.py's own parts that need no PyTorch: the weight export, the channels-first layout,
the log parsing and the per-image comparison. (The PyTorch copy itself is checked by the benchmark on
every run, against the frozen graph's logits.)"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.append(str(Path(__file__).resolve().parents[1] / "benchmarks"))  # the scripts import each other by name
import autoattack  # noqa: E402
import cnn_weights  # noqa: E402
import peer_autoattack  # noqa: E402

GRAPH_NAMES = {"conv0_w": "conv0/W", "conv0_b": "conv0/b", "conv1_w": "conv1/W", "conv1_b": "conv1/b",
               "fc0_w": "fc0/W", "fc0_b": "fc0/b", "fc1_w": "fc1/W", "fc1_b": "fc1/b"}


def export(model, graph_def=None):
    return cnn_weights.export_weights(graph_def or model.graph_def, model.meta["input"], model.meta["logits"])


def graph_constant(graph_def, name: str) -> np.ndarray:
    from advmnist.tfcompat import tf1

    (node,) = [n for n in graph_def.node if n.name == name]
    return tf1().make_ndarray(node.attr["value"].tensor)


def test_export_finds_each_layers_weights(tiny_model):
    weights = export(tiny_model)
    assert list(weights) == list(GRAPH_NAMES)
    for key, name in GRAPH_NAMES.items():  # found by op order, checked here against the graph's names
        assert weights[key].dtype == np.float32
        np.testing.assert_array_equal(weights[key], graph_constant(tiny_model.graph_def, name))
    assert weights["conv1_w"].shape == (3, 3, 32, 64) and weights["fc0_w"].shape == (9216, 128)


def test_channels_first_copy_reproduces_the_graph_logits(tiny_model, mnist_small):
    images = mnist_small[1].images[:16]
    logits = autoattack.graph_logits(tiny_model, images)
    weights = export(tiny_model)
    copy = cnn_weights.forward(weights, images)
    assert np.abs(copy - logits).max() <= 1e-4
    # the pooled features flattened channels-first, as a naive copy would: other logits
    naive = cnn_weights.forward(weights, images, flatten_order=(0, 1, 2, 3))
    assert np.abs(naive - logits).max() > 1e-2
    assert "torch" not in sys.modules


def changed(graph_def, name: str, edit):
    from advmnist.tfcompat import tf1

    copy = tf1().GraphDef()
    copy.CopyFrom(graph_def)
    edit(next(n for n in copy.node if n.name == name))
    return copy


def test_export_refuses_another_architecture(tiny_model):
    from advmnist.tfcompat import tf1

    tf = tf1()
    same_padding = changed(tiny_model.graph_def, "conv1/Conv2D", lambda n: n.attr["padding"].__setattr__("s", b"SAME"))
    with pytest.raises(cnn_weights.ArchitectureError, match="conv1/Conv2D"):
        export(tiny_model, same_padding)
    eleven = tf.make_tensor_proto(np.zeros(11, np.float32))
    wrong_bias = changed(tiny_model.graph_def, "fc1/b", lambda n: n.attr["value"].tensor.CopyFrom(eleven))
    with pytest.raises(cnn_weights.ArchitectureError, match=r"layer fc1 .*bias \(10,\).*\(11,\)"):
        export(tiny_model, wrong_bias)
    graph = tf.Graph()
    with graph.as_default():  # a linear model: input -> dense 784x10 -> logits
        image = tf.placeholder(tf.float32, (None, 28, 28), name="input")
        tf.identity(tf.matmul(tf.reshape(image, (-1, 784)), tf.zeros((784, 10))) + tf.zeros(10), name="logits")
    with pytest.raises(cnn_weights.ArchitectureError, match="expected conv 3x3x1x32"):
        cnn_weights.export_weights(graph.as_graph_def(), "input:0", "logits:0")


def test_autoattack_log_lines_become_accuracies():
    # the lines pyautoattack 0.2.0 logs (autoattack.py's format strings), and two it logs besides
    lines = ["using standard version including apgd-ce, apgd-t, fab-t, square.", "initial accuracy: 99.00%",
             "apgd-ce - 1/1 - 12 out of 99 successfully perturbed",
             "robust accuracy after APGD-CE: 87.00% (total time 41.2 s)",
             "robust accuracy after APGD-T: 85.00% (total time 300.0 s)", "robust accuracy: 85.00%"]
    log = peer_autoattack.AccuracyLog()
    for line in lines:
        log.emit(logging.LogRecord("auto-attack", logging.DEBUG, __file__, 0, line, None, None))
    assert log.accuracy == [["clean", 0.99], ["apgd-ce", 0.87], ["apgd-t", 0.85]]


def test_compare_lists_the_images_broken_by_one_side_only():
    ours = {"robust": [True, False, False, True, False], "robust_accuracy": 0.4, "seconds": 10.0}
    reference = {"robust": [True, True, False, False, False], "robust_accuracy": 0.4, "seconds": 40.0}
    entry = autoattack.compare(0.1, ours, reference, np.arange(100, 105))
    assert entry["broken_by_ours_only"] == [101] and entry["broken_by_reference_only"] == [103]
    assert entry["difference_points"] == 0.0 and entry["time_ratio"] == 0.25


def test_ours_per_attack_reads_the_ensembles_accuracy_after_each_member():
    # a record of `robustness --attack auto --eps 0.1` (one eps): standing before, then after each member
    ensemble = {"clean_accuracy": 0.99, "robust_accuracy": [0.12], "members": ["apgd-ce", "apgd-t", "fab-t", "square"],
                "robust_accuracy_after": [[0.99, 0.18, 0.13, 0.12, 0.12]]}
    assert autoattack.ours_per_attack(ensemble, "auto") == [["clean", 0.99], ["apgd-ce", 0.18], ["apgd-t", 0.13],
                                                            ["fab-t", 0.12], ["square", 0.12]]
    single = {"clean_accuracy": 0.99, "robust_accuracy": [0.31], "members": ["pgd"],
              "robust_accuracy_after": [[0.99, 0.31]]}
    assert autoattack.ours_per_attack(single, "pgd") == [["clean", 0.99], ["pgd", 0.31]]


def test_the_minimal_curve_at_an_eps_counts_images_whose_8bit_change_is_larger():
    import minimal_vs_auto

    rows = [{"linf": 12 / 255, "adversarial_8bit": True}, {"linf": 13 / 255, "adversarial_8bit": True},
            {"linf": 0.0, "adversarial_8bit": True}, {"linf": 0.01, "adversarial_8bit": False}]
    # a change of exactly eps is within it; an image never fooled is robust at every eps
    assert minimal_vs_auto.implied(rows, "linf", [0.0, 12 / 255, 0.05, 13 / 255]) == [0.75, 0.5, 0.5, 0.25]
    assert minimal_vs_auto.on_8bit_step(25 / 255) and not minimal_vs_auto.on_8bit_step(0.1)
