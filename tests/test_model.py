"""The CNN: names, shapes, training end to end, and the frozen graph against the checkpoint."""
from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest

from advmnist.model.network import cnn_logits
from advmnist.tfcompat import tf1


def test_cnn_shapes_and_variable_names():
    tf = tf1()
    graph = tf.Graph()
    with graph.as_default():
        image = tf.placeholder(tf.float32, (None, 28, 28))
        logits = cnn_logits(image, training=False)
        shapes = {v.op.name: v.shape.as_list() for v in tf.global_variables()}
    assert logits.shape.as_list() == [None, 10]
    assert shapes == {
        "conv0/W": [3, 3, 1, 32], "conv0/b": [32],
        "conv1/W": [3, 3, 32, 64], "conv1/b": [64],
        "fc0/W": [12 * 12 * 64, 128], "fc0/b": [128],
        "fc1/W": [128, 10], "fc1/b": [10],
    }


def test_dropout_only_in_training_graph():
    tf = tf1()
    for training, expect_random in ((True, True), (False, False)):
        graph = tf.Graph()
        with graph.as_default():
            cnn_logits(tf.placeholder(tf.float32, (None, 28, 28)), training=training)
        # weight initializers draw random numbers too; dropout's draws live under drop0/ and drop1/
        dropout_random = [op.name for op in graph.get_operations()
                          if op.type == "RandomUniform" and op.name.startswith(("drop0/", "drop1/"))]
        assert len(dropout_random) == (2 if expect_random else 0)


@pytest.mark.slow
def test_training_run_reaches_useful_accuracy(mnist_small, tmp_path):
    """The recipe of tests/data/tiny_run (tests/data/make_tiny_model.py), trained again."""
    import sys
    from pathlib import Path

    from advmnist.model.training import train

    sys.path.insert(0, str(Path(__file__).with_name("data")))
    from make_tiny_model import SETTINGS

    run_dir = tmp_path / "tiny"
    result = train(*mnist_small, run_dir, SETTINGS)
    # four epochs on 600 real digits: far from 99 %, far above chance (10 %)
    assert result.test_accuracy > 0.80
    stats = json.loads((run_dir / "stats.json").read_text())
    assert stats[-1]["epoch_num"] == 4 and "validation_accuracy" in stats[-1]
    meta = json.loads((run_dir / "model.json").read_text())
    assert meta["average_decay"] == 0 and "test_accuracy_weights" not in meta
    assert abs(stats[-1]["validation_accuracy"] - result.test_accuracy) < 1e-6
    assert list(run_dir.glob("events.out.tfevents.*"))
    assert meta["input"] == "input:0" and meta["logits"] == "logits:0" and meta["prob"] == "prob:0"
    assert meta["test_accuracy"] == result.test_accuracy and meta["epochs"] == 4 and meta["seed"] == 0
    assert {"tensorflow", "tensorpack", "numpy"} <= set(meta["versions"])


def test_the_committed_tiny_network_is_what_its_script_makes(tiny_model):
    """tests/data/tiny_run records the recipe of tests/data/make_tiny_model.py, and loads with its checksum."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).with_name("data")))
    from make_tiny_model import SETTINGS

    meta = tiny_model.meta
    assert (meta["epochs"], meta["batch_size"], meta["seed"], meta["shift"]) == (SETTINGS.epochs, SETTINGS.batch_size,
                                                                                SETTINGS.seed, SETTINGS.shift)
    assert meta["model_sha256"] == tiny_model.sha256 and meta["test_accuracy"] > 0.8


@pytest.mark.slow
def test_model_pb_holds_the_moving_average_of_the_weights(mnist_small, tmp_path):
    from tensorflow.python.framework import tensor_util

    from advmnist.model.freezing import inference_graph_def
    from advmnist.tfcompat import tf1
    from advmnist.model.training import TrainSettings, train

    train_split, test_split = mnist_small
    result = train(train_split, test_split, tmp_path / "run", TrainSettings(epochs=2, batch_size=32, shift=0,
                                                                            average_decay=0.999))
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    stats = json.loads((tmp_path / "run" / "stats.json").read_text())
    # the validation during training measures the weights; model.pb holds their moving average
    assert meta["average_decay"] == 0.999 and meta["test_accuracy"] == result.test_accuracy
    assert abs(stats[-1]["validation_accuracy"] - meta["test_accuracy_weights"]) < 1e-6
    tf = tf1()
    checkpoint = tf.train.latest_checkpoint(str(tmp_path / "run"))
    stored = tf.train.load_checkpoint(checkpoint)

    def constants(graph_def):
        return {n.name: tensor_util.MakeNdarray(n.attr["value"].tensor) for n in graph_def.node if n.op == "Const"}

    averaged, weights = constants(inference_graph_def(checkpoint)), constants(inference_graph_def(checkpoint,
                                                                                                  averaged=False))
    for name in ("conv0/W", "conv1/b", "fc0/W", "fc1/b"):
        np.testing.assert_array_equal(averaged[name], stored.get_tensor(f"{name}/ExponentialMovingAverage"))
        np.testing.assert_array_equal(weights[name], stored.get_tensor(name))
        assert not np.array_equal(averaged[name], weights[name])


@pytest.mark.slow
def test_linear_schedule_warms_up_then_ends_at_zero(mnist_small, tmp_path):
    from advmnist.tfcompat import tf1
    from advmnist.model.training import TrainSettings, lr_setter, train

    train_split, test_split = mnist_small
    settings = TrainSettings(epochs=2, batch_size=32, lr=2e-3, schedule="linear", average_decay=0, shift=0)
    result = train(train_split, test_split, tmp_path / "run", settings, steps_per_epoch=6)
    tf = tf1()
    stored = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(tmp_path / "run")))
    assert stored.get_tensor("global_step") == 12 and stored.get_tensor("learning_rate") == 0.0
    assert not any("ExponentialMovingAverage" in name for name in stored.get_variable_to_shape_map())
    # the values tensorpack's setter takes at these steps: lr/10, the peak after one epoch, half way down, 0
    setter = lr_setter(settings, 6)
    values = [setter._get_value_to_set_at_point(step) for step in (0, 3, 6, 9, 12)]
    assert values == pytest.approx([2e-4, 1.1e-3, 2e-3, 1e-3, 0.0])
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert meta["schedule"] == "linear" and "test_accuracy_weights" not in meta
    assert meta["test_accuracy"] == result.test_accuracy


def test_frozen_graph_has_only_inference_ops(tiny_model):
    ops = {node.op for node in tiny_model.graph_def.node}
    assert not [op for op in ops if op.startswith("Random") or "Variable" in op or op in ("Assign", "ApplyAdam")]
    names = {node.name for node in tiny_model.graph_def.node}
    assert {"input", "logits", "prob"} <= names
    assert "label" not in names


def test_frozen_graph_matches_checkpoint(tiny_run, tiny_model, mnist_small):
    """The exported graph gives the same logits as the checkpoint restored into a fresh graph."""
    tf = tf1()
    images = mnist_small[1].images[:300]
    graph = tf.Graph()
    with graph.as_default():
        image = tf.placeholder(tf.float32, (None, 28, 28))
        logits = cnn_logits(image, training=False)
        saver = tf.train.Saver()
    with tf.Session(graph=graph) as sess:
        saver.restore(sess, tf.train.latest_checkpoint(str(tiny_run[0])))
        expected = sess.run(logits, {image: images})
    graph = tf.Graph()
    with graph.as_default():
        image = tf.placeholder(tf.float32, (None, 28, 28))
        frozen_logits = tiny_model.logits(image)
    with tf.Session(graph=graph) as sess:
        got = sess.run(frozen_logits, {image: images})
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert (got.argmax(1) == expected.argmax(1)).all()
    probs = tiny_model.predict_proba(images, batch_size=64)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert (probs.argmax(1) == expected.argmax(1)).all()


@pytest.mark.slow
def test_resume_continues_from_last_checkpoint(tmp_path, mnist_small):
    from advmnist.model.training import TrainSettings, train

    train_split, test_split = mnist_small
    run_dir = tmp_path / "run"
    settings = TrainSettings(epochs=1, batch_size=64)
    train(train_split, test_split, run_dir, settings, steps_per_epoch=5)
    # "interrupted": a checkpoint of epoch 1 exists; resuming with more epochs continues at epoch 2
    result = train(train_split, test_split, run_dir, TrainSettings(epochs=2, batch_size=64), resume=True,
                   steps_per_epoch=5)
    stats = json.loads((run_dir / "stats.json").read_text())
    assert [s["epoch_num"] for s in stats] == [1, 2]
    assert stats[-1]["global_step"] == 10
    assert result.epochs == 2


@pytest.mark.parametrize("damage", ["epoch missing", "stats cut short", "no stats"])
@pytest.mark.slow
def test_resume_after_a_kill_between_checkpoint_and_validation(tmp_path, mnist_small, damage):
    """A kill after an epoch's checkpoint but before stats.json records it: --resume goes on right after that
    epoch (neither failing nor training it twice), and the epoch is marked as not validated."""
    from advmnist.model.frozen import FrozenModel
    from advmnist.model.training import TrainSettings, train

    train_split, test_split = mnist_small
    run_dir = tmp_path / "run"
    train(train_split, test_split, run_dir, TrainSettings(epochs=2, batch_size=64), steps_per_epoch=5)
    stats_file = run_dir / "stats.json"
    stats = json.loads(stats_file.read_text())
    for name in ("model.pb", "model.json"):
        (run_dir / name).unlink()  # killed before the freeze
    if damage == "epoch missing":
        stats_file.write_text(json.dumps(stats[:1]))
    elif damage == "stats cut short":
        stats_file.write_text(stats_file.read_text()[:40])
    else:
        stats_file.unlink()
    result = train(train_split, test_split, run_dir, TrainSettings(epochs=3, batch_size=64), resume=True,
                   steps_per_epoch=5)
    stats = json.loads(stats_file.read_text())
    assert [s["epoch_num"] for s in stats][-2:] == [2, 3]
    assert stats[-1]["global_step"] == 15  # epoch 3 continued from step 10: nothing trained twice
    assert result.epochs == 3 and FrozenModel.load(run_dir).meta["epochs"] == 3
    assert "before its validation" in stats[-2]["note"]


@pytest.mark.parametrize("padding, channels", [("VALID", 1), ("SAME", 1), ("VALID", 3)])
def test_constant_weight_gradients_on_small_graphs(padding, channels):
    """Each override equals TensorFlow's gradient; the cases it does not cover fall back to it."""
    from advmnist.model import gradients
    from advmnist.tfcompat import tf1

    tf = tf1()
    rng = np.random.default_rng(1)
    image = rng.normal(size=(3, 9, 8, channels)).astype(np.float32)
    conv = rng.normal(size=(3, 2, channels, 5)).astype(np.float32)
    dense_in = 9 * 8 * 5 if padding == "SAME" else 7 * 7 * 5
    dense = rng.normal(size=(dense_in, 4)).astype(np.float32)

    def input_gradient(override: bool) -> np.ndarray:
        graph = tf.Graph()
        with graph.as_default():
            x = tf.constant(image)
            with gradients.constant_weight_gradients() if override else contextlib.nullcontext():
                hidden = tf.nn.relu(tf.nn.conv2d(x, tf.identity(tf.constant(conv)), 1, padding))
                logits = tf.matmul(tf.reshape(hidden, [3, -1]), tf.constant(dense))
            (grad,) = tf.gradients(tf.reduce_sum(tf.sin(logits)), [x])
            overridden = {op.name for op in graph.get_operations()
                          if op.name.startswith("gradients") and op.type == "Conv2DBackpropInput"}
        with tf.Session(graph=graph) as sess:
            return sess.run(grad), overridden

    plain, plain_ops = input_gradient(False)
    ours, our_ops = input_gradient(True)
    np.testing.assert_allclose(ours, plain, rtol=1e-4, atol=1e-5 * np.abs(plain).max())
    assert plain_ops  # TensorFlow's own gradient uses Conv2DBackpropInput ...
    covered = padding == "VALID" and channels == 1
    assert bool(our_ops) == (not covered)  # ... ours replaces it only where it applies


@pytest.mark.slow
def test_two_towers_train_in_sync_on_the_cpu(mnist_small, tmp_path):
    """``gpus=2``: tensorpack's replicated data-parallel trainer, its towers placed on the CPU here."""
    from tensorpack.callbacks import Callback

    from advmnist.model.training import TrainSettings, train

    class ReadTowers(Callback):
        def _setup_graph(self):
            tf = tf1()
            self.names = [v.op.name for v in tf.global_variables() + tf.local_variables()]
            self.pairs = [(v, w) for v in tf.trainable_variables() for w in tf.global_variables()
                          + tf.local_variables() if w.op.name == f"tower1/{v.op.name}"]

        def _before_train(self):
            self.initial = [self.trainer.sess.run(pair) for pair in self.pairs]

        def _trigger_step(self):  # mid-epoch: no broadcast from the first tower since the start
            if self.local_step == 5 and self.epoch_num == 1:
                self.values = [self.trainer.sess.run(pair) for pair in self.pairs]

    towers = ReadTowers()
    train_split, test_split = mnist_small
    settings = TrainSettings(epochs=2, batch_size=32, gpus=2, average_decay=0, shift=0)
    result = train(train_split, test_split, tmp_path / "run", settings, callbacks=(towers,))
    assert len(towers.pairs) == 8  # a copy of every weight and bias on the second tower
    for (main, copy), (start, _) in zip(towers.values, towers.initial):
        np.testing.assert_array_equal(main, copy)  # both updated by the same averaged gradients: still equal
        assert not np.array_equal(main, start)
    stats = json.loads((tmp_path / "run" / "stats.json").read_text())
    assert stats[-1]["global_step"] == 2 * (600 // (32 * 2))  # an epoch is one pass: 2 batches per step
    assert result.test_accuracy > 0.6
    assert json.loads((tmp_path / "run" / "model.json").read_text())["gpus"] == 2


@pytest.mark.slow
def test_bfloat16_training_freezes_a_float32_model(mnist_small, tmp_path):
    from advmnist.model.frozen import FrozenModel
    from advmnist.model.training import TrainSettings, train

    train_split, test_split = mnist_small
    result = train(train_split, test_split, tmp_path / "run", TrainSettings(epochs=3, batch_size=32, precision="bf16", shift=0))
    model = FrozenModel.load(tmp_path / "run")
    assert model.meta["precision"] == "bf16" and result.test_accuracy > 0.6
    # the rewrite is a training-session option: the frozen graph is the float32 network
    tf = tf1()
    types = {n.attr["T"].type for n in model.graph_def.node if "T" in n.attr}
    assert types == {tf.float32.as_datatype_enum}


@pytest.mark.parametrize("field, value", [("schedule", "cosine"), ("precision", "fp16"), ("gpus", 0),
                                          ("average_decay", 1.0), ("shift", 5), ("shift", -1)])
def test_train_settings_are_checked(field, value):
    from advmnist.errors import InvalidInput
    from advmnist.model.training import TrainSettings

    with pytest.raises(InvalidInput, match="expected"):
        TrainSettings(**{field: value})


def test_precision_auto_is_bf16_only_on_a_cpu_with_native_bfloat16_and_no_gpu():
    from advmnist.tfcompat import resolve_precision

    assert resolve_precision("auto", flags={"avx512f", "avx512_bf16"}, gpus=0)[0] == "bf16"
    assert resolve_precision("auto", flags={"avx2", "amx_bf16"}, gpus=0)[0] == "bf16"
    assert resolve_precision("auto", flags={"avx2", "avx512f", "avx512bw"}, gpus=0)[0] == "fp32"  # AVX-512 alone
    assert resolve_precision("auto", flags={"avx512_bf16"}, gpus=1)[0] == "fp32"
    for flags in (set(), {"avx512_bf16"}):
        assert resolve_precision("fp32", flags=flags, gpus=0) == ("fp32", "asked for")
        assert resolve_precision("bf16", flags=flags, gpus=0) == ("bf16", "asked for")
    with pytest.raises(ValueError, match="expected a precision"):
        resolve_precision("fp16", flags=set(), gpus=0)


@pytest.mark.slow
def test_the_default_training_shifts_and_records_the_precision_it_chose(mnist_small, tmp_path):
    from advmnist.tfcompat import resolve_precision
    from advmnist.model.training import TrainSettings, train

    assert TrainSettings().shift == 2 and TrainSettings().precision == "auto"
    train_split, test_split = mnist_small
    train(train_split, test_split, tmp_path / "run", TrainSettings(epochs=1, batch_size=32), steps_per_epoch=5)
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    chosen = resolve_precision("auto")[0]  # what this machine's CPU gives
    assert meta["precision"] == run["precision"] == chosen
    assert meta["shift"] == run["shift"] == 2


def moved(image, down: int, across: int):
    """``image`` moved by (down, across) pixels, zeros coming in: the textbook way, one slice at a time."""
    out = np.zeros_like(image)
    height, width = image.shape
    out[max(down, 0):height + min(down, 0), max(across, 0):width + min(across, 0)] = \
        image[max(-down, 0):height - max(down, 0), max(-across, 0):width - max(across, 0)]
    return out


def test_shifted_moves_each_image_by_its_own_offset_within_the_limit():
    from advmnist.model.training import shifted

    images = np.random.RandomState(0).rand(300, 28, 28).astype(np.float32)
    out = shifted(images, 2, np.random.RandomState(1))
    assert out.shape == images.shape and out.dtype == images.dtype
    offsets = []
    for image, result in zip(images, out):
        found = [(d, a) for d in range(-2, 3) for a in range(-2, 3) if np.array_equal(moved(image, d, a), result)]
        assert len(found) == 1
        offsets.append(found[0])
    # every one of the 25 offsets occurs, each about 300/25 = 12 times
    counts = np.array([offsets.count((d, a)) for d in range(-2, 3) for a in range(-2, 3)])
    assert counts.min() >= 3 and counts.max() <= 30


def test_shift_changes_the_images_but_not_their_order(mnist_small):
    from advmnist.model.training import batches

    train_split, _ = mnist_small
    plain = list(batches(train_split.images, train_split.labels, 32, seed=3))
    moved_batches = list(batches(train_split.images, train_split.labels, 32, seed=3, shift=2))
    again = list(batches(train_split.images, train_split.labels, 32, seed=3, shift=2))
    assert len(plain) == len(moved_batches) == 600 // 32
    for (x, y), (xs, ys), (xa, ya) in zip(plain, moved_batches, again):
        np.testing.assert_array_equal(y, ys)
        np.testing.assert_array_equal(xs, xa)  # the same seed draws the same offsets
        assert not np.array_equal(x, xs)
        # moving keeps or loses ink at the border, never makes any
        assert (xs.sum(axis=(1, 2)) <= x.sum(axis=(1, 2)) + 1e-4).all()


@pytest.mark.slow
def test_training_with_shift_records_it(mnist_small, tmp_path):
    from advmnist.model.training import TrainSettings, train

    train_split, test_split = mnist_small
    result = train(train_split, test_split, tmp_path / "run", TrainSettings(epochs=2, batch_size=32, shift=2),
                   steps_per_epoch=10)
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert meta["shift"] == 2 and meta["test_accuracy"] == result.test_accuracy
