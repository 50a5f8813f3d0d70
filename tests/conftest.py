"""Shared fixtures: real MNIST digits (a few thousand) and one tiny trained run."""
from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def mnist_small():
    """3,000 real training digits and 1,000 real test digits (fetched on first need)."""
    from advmnist.data import Split, load_split

    train, test = load_split("train"), load_split("test")
    return Split(train.images[:3000], train.labels[:3000]), Split(test.images[:1000], test.labels[:1000])


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, mnist_small):
    """One short epoch of the real tensorpack training on 3,000 digits: a run folder with model.pb."""
    from advmnist.train import TrainSettings, train

    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    train_split, test_split = mnist_small
    result = train(train_split, test_split, run_dir, TrainSettings(epochs=1, batch_size=64, seed=0))
    return run_dir, result


@pytest.fixture(scope="session")
def tiny_model(tiny_run):
    from advmnist.frozen import FrozenModel

    return FrozenModel.load(tiny_run[0])


def assert_in_unit_range(images: np.ndarray) -> None:
    assert images.min() >= 0.0 and images.max() <= 1.0
