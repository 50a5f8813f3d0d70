"""Universal noise: one pattern that makes the frozen network read almost every image as one class.

The second reference experiment (Hvass-Labs' TensorFlow tutorial #12). The optimization
itself is :class:`advmnist.noise.UniversalNoise`; this module runs it against a frozen
model and measures the effect on the 10,000 test images.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from advmnist.data import NUM_CLASSES, Split
from advmnist.errors import InvalidInput
from advmnist.frozen import FrozenModel, confusion_matrix
from advmnist.noise import UniversalNoise
from advmnist.tfcompat import session_config, tf1


@dataclasses.dataclass(frozen=True)
class UniversalSettings:
    steps: int = 1000
    noise_limit: float = 0.35
    l2_weight: float = 0.02
    lr: float = 1e-2
    batch_size: int = 64
    seed: int = 0


@dataclasses.dataclass
class NoiseEffect:
    """What one noise does to the test set."""

    target: int
    accuracy: float          # true label still predicted, with the noise
    fooled: float            # fraction of all test images predicted as the target
    confusion: np.ndarray    # rows: true label, columns: prediction with the noise
    predictions: np.ndarray  # per test image, with the noise

    def to_dict(self) -> dict:
        return {"target": self.target, "accuracy": self.accuracy, "fooled": self.fooled,
                "confusion_matrix": self.confusion.tolist()}


def noise_effect(predictions: np.ndarray, labels: np.ndarray, target: int) -> NoiseEffect:
    return NoiseEffect(target=int(target), accuracy=float((predictions == labels).mean()),
                       fooled=float((predictions == target).mean()),
                       confusion=confusion_matrix(labels, predictions), predictions=predictions)


@dataclasses.dataclass
class UniversalResult:
    noise: np.ndarray          # (T, 28, 28), one per target
    clean_accuracy: float
    effects: list[NoiseEffect]

    def to_dict(self) -> dict:
        return {"clean_accuracy": self.clean_accuracy, "effects": [e.to_dict() for e in self.effects]}


def check_targets(targets) -> list[int]:
    targets = [int(t) for t in targets]
    bad = [t for t in targets if not 0 <= t < NUM_CLASSES]
    if bad or not targets:
        raise InvalidInput(f"expected target classes in 0..9, got {targets}")
    return targets


def universal_attack(model: FrozenModel, train_images: np.ndarray, test: Split, targets,
                     settings: UniversalSettings = UniversalSettings(), *, progress: bool = False,
                     given_noise: np.ndarray | None = None) -> UniversalResult:
    """Optimize one universal noise per target against ``model``; measure each on ``test``.

    With ``given_noise`` (one 28x28 noise per target, e.g. saved by an earlier run against
    another network), nothing is optimized: the given noises are only measured.
    """
    targets = check_targets(targets)
    tf = tf1()
    graph = tf.Graph()
    with graph.as_default():
        universal = UniversalNoise(model.logits, noise_limit=settings.noise_limit, l2_weight=settings.l2_weight,
                                   lr=settings.lr, batch_size=settings.batch_size)
        init = tf.global_variables_initializer()
    graph.finalize()
    noises, effects = [], []
    with tf.Session(graph=graph, config=session_config(tf)) as sess:
        sess.run(init)
        clean = universal.predict(sess, test.images, np.zeros_like(train_images[0]))
        for i, target in enumerate(targets):
            if given_noise is not None:
                noise = given_noise[i]
            else:
                noise = universal.optimize(sess, train_images, target, steps=settings.steps,
                                           seed=settings.seed * 100 + target, progress=progress)
            noises.append(noise)
            effects.append(noise_effect(universal.predict(sess, test.images, noise), test.labels, target))
    return UniversalResult(noise=np.stack(noises), clean_accuracy=float((clean == test.labels).mean()),
                           effects=effects)
