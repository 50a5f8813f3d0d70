"""Shared fixtures: real MNIST digits and a trained tiny network, both committed under tests/data.

``pytest`` alone runs the fast tests: they need no download and train nothing. To make
sure of it the MNIST cache is an empty folder, no remote source is asked and tensorpack's
training entry point refuses, so a test that touches the full data set or trains fails
instead. ``pytest --slow`` also runs the tests marked ``slow``: trainings, end-to-end
commands on the full MNIST (fetched on first need), and the longer attack tests; CI runs
them all, on both cores with ``-n auto`` (pytest-xdist).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

SMALL = Path(__file__).with_name("data") / "mnist_small.npz"
TINY_RUN = Path(__file__).with_name("data") / "tiny_run"


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true",
                     help="also run the slow end-to-end tests on the full MNIST (fetched on first need)")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end on the full MNIST; run with --slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow end-to-end test on the full MNIST: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def no_download_in_fast_tests(request, monkeypatch, tmp_path_factory):
    """Outside ``--slow``, the full MNIST is out of reach: an empty cache and no remote source; and tensorpack
    trains nothing (the fast tests attack the committed tests/data/tiny_run): a test that trains is slow."""
    if request.config.getoption("--slow") or "slow" in request.keywords:
        return
    from advmnist.tfcompat import load_tensorpack

    def no_training(*args, **kwargs):
        raise AssertionError("a fast test started a tensorpack training: mark it @pytest.mark.slow")

    monkeypatch.setattr(load_tensorpack(), "launch_train_with_config", no_training)
    import advmnist.data.mnist

    monkeypatch.setenv("ADVMNIST_CACHE", str(tmp_path_factory.mktemp("empty-cache")))
    monkeypatch.delenv("ADVMNIST_DATA", raising=False)
    monkeypatch.setattr(advmnist.data.mnist, "default_remote_sources", lambda: [])


@pytest.fixture(scope="session")
def mnist_small():
    """600 real training digits and 300 real test digits, from tests/data (no download)."""
    from advmnist.data.mnist import Split

    with np.load(SMALL) as small:
        def split(name):
            return Split(small[f"{name}_images"].astype(np.float32) / 255.0, small[f"{name}_labels"].astype(np.int64))

        return split("train"), split("test")


@pytest.fixture(scope="session")
def small_mnist_loaders(mnist_small):
    """Stand-ins for ``advmnist.data.mnist``'s loaders that give the 600 + 300 committed digits (both splits, or
    rows of one): name -> function."""
    from advmnist.data.mnist import Split

    splits = dict(zip(("train", "test"), mnist_small))

    def load_split(split, data_dir=None, cache_dir=None, log=None, remote_sources=None, rows=None):
        data = splits[split]
        rows = rows or slice(None)
        return Split(data.images[rows], data.labels[rows])

    return {"load_train_test": lambda data_dir=None, log=None: mnist_small, "load_split": load_split}


@pytest.fixture
def commands_on_small_mnist(monkeypatch, small_mnist_loaders):
    """Commands get the 600 + 300 committed digits instead of the 70,000 (both splits, or rows of one): for tests
    of a command's plumbing (its files, JSON, refusals, interruption), where the full data only costs time."""
    import advmnist.data.mnist

    for name, loader in small_mnist_loaders.items():
        monkeypatch.setattr(advmnist.data.mnist, name, loader)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A run folder as `advmnist train` leaves it, with no training: a copy of tests/data/tiny_run (made by
    tests/data/make_tiny_model.py: 4 epochs on the 600 digits) and a checkpoint holding the frozen weights.

    Returns ``(run_dir, None)``: the second item was the training's result when the fixture trained."""
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    shutil.copytree(TINY_RUN, run_dir)
    write_checkpoint_from_frozen(run_dir)
    return run_dir, None


def write_checkpoint_from_frozen(run_dir: Path) -> None:
    """The checkpoint that model.json names, holding model.pb's weights: the frozen graph's constants carry the
    names of the variables they were frozen from (conv0/W, ...), so the checkpoint is the one training wrote,
    for every variable that freezing, immunize and adversarial training restore (not the optimizer's)."""
    from advmnist.model.network import LAYER_SCOPES
    from advmnist.tfcompat import tf1

    tf = tf1()
    meta = json.loads((run_dir / "model.json").read_text())
    graph_def = tf.GraphDef()
    graph_def.ParseFromString((run_dir / "model.pb").read_bytes())
    weights = {node.name: tf.make_ndarray(node.attr["value"].tensor) for node in graph_def.node
               if node.op == "Const" and node.name.split("/")[0] in LAYER_SCOPES and node.name.count("/") == 1}
    step = int(meta["checkpoint"].rsplit("-", 1)[1])
    with tf.Graph().as_default():
        variables = [tf.Variable(value, name=name) for name, value in weights.items()]
        global_step = tf.Variable(step, dtype=tf.int64, name="global_step")
        saver = tf.train.Saver(variables + [global_step], save_relative_paths=True)  # as tensorpack writes it
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            saver.save(sess, str(run_dir / "model"), global_step=step, write_meta_graph=False)


@pytest.fixture(scope="session")
def tiny_model(tiny_run):
    from advmnist.model.frozen import FrozenModel

    return FrozenModel.load(tiny_run[0])


@pytest.fixture(scope="session")
def second_model(tmp_path_factory, mnist_small):
    """Another tiny network: same data, another seed (trained here: only ``--slow`` tests use it)."""
    from advmnist.model.frozen import FrozenModel
    from advmnist.model.training import TrainSettings, train

    run_dir = tmp_path_factory.mktemp("runs") / "tiny-seed1"
    train_split, test_split = mnist_small
    train(train_split, test_split, run_dir, TrainSettings(epochs=4, batch_size=32, seed=1, shift=0))
    return FrozenModel.load(run_dir)


@pytest.fixture
def other_shape_run(tiny_run, tmp_path_factory):
    """A copy of the tiny run whose model.json says it takes 32x32 images."""
    import json
    import shutil

    other = tmp_path_factory.mktemp("runs") / "other-shape"
    shutil.copytree(tiny_run[0], other)
    meta = json.loads((other / "model.json").read_text())
    meta["input_shape"] = [None, 32, 32]
    (other / "model.json").write_text(json.dumps(meta))
    return other


@pytest.fixture
def bad_input(tmp_path):
    """Run a command that must refuse its input: exit 2, a message saying what was expected
    (or ``message``), and an earlier result in ``--out`` left as it was, alone."""
    from click.testing import CliRunner

    from advmnist.cli import main

    def check(args: list, keep_name: str, message: str | None = None):
        keep = tmp_path / keep_name
        keep.write_bytes(b"earlier result")
        result = CliRunner().invoke(main, args + ["--out", str(tmp_path)])
        assert result.exit_code == 2, result.output
        if message is None:
            assert "expected" in result.output or "Invalid value" in result.output
        else:
            assert message in result.output
        assert keep.read_bytes() == b"earlier result"
        assert sorted(p.name for p in tmp_path.iterdir()) == [keep_name]
        return result

    return check


@pytest.fixture
def autoattack_members():
    """The members of AutoAttack's standard version, as the ensemble runs them."""
    from advmnist.attacks import autoattack

    return autoattack.STANDARD


def pytest_sessionstart(session):
    """Under pytest-xdist (``-n 2``), each worker's TensorFlow uses one thread: two workers on two cores
    then keep both busy, where one process's small graphs leave the second core idle much of the time."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import advmnist.tfcompat

        make = advmnist.tfcompat.session_config

        def one_thread(*args, **kwargs):
            config = make(*args, **kwargs)
            config.intra_op_parallelism_threads = 1  # the inter-op pool stays: two towers in sync need it
            return config

        advmnist.tfcompat.session_config = one_thread
