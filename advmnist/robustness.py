"""Robust accuracy against a per-image attacker with a budget eps: the standard curve of the field.

For every eps of a list, untargeted (or targeted) PGD (:class:`advmnist.attacks.PGD`)
attacks each image within an eps-ball; the robust accuracy at eps is the share of
images still classified correctly (an image the network gets wrong without any change
is not robust at any eps). The budgets are taken in increasing order and an image
fooled at one eps is fooled at every larger one (its example lies in the larger ball):
only the images still standing are attacked at the next eps, so the curve is
non-increasing by construction and its cost follows the images still standing.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable

import numpy as np

from advmnist.attacks import PGD, UNTARGETED, Draws
from advmnist.attacks.base import check_images, check_labels, check_targets, untargeted
from advmnist.attacks.pgd import PGDSession
from advmnist.errors import InvalidInput

DEFAULT_EPS = {"linf": (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3), "l2": (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0)}


def parse_eps(text: str, norm: str) -> tuple[float, ...]:
    """``"0,0.05,0.1"`` -> sorted unique budgets, each in [0, 1] for linf and >= 0 for l2."""
    try:
        values = sorted({float(v) for v in str(text).split(",") if v.strip()})
    except ValueError as err:
        raise InvalidInput(f"expected comma-separated numbers for --eps, got {text!r}") from err
    if not values:
        raise InvalidInput("expected at least one eps")
    top = 1.0 if norm == "linf" else np.sqrt(784.0)
    if not all(np.isfinite(v) and 0 <= v <= top for v in values):
        raise InvalidInput(f"expected every eps in [0, {top:g}] for {norm}, got {text!r}")
    return tuple(values)


@dataclasses.dataclass(frozen=True)
class RobustnessSettings:
    """The ``robustness`` command's defaults: 1000 test images, untargeted, 40 PGD steps, one start."""

    norm: str = "linf"
    eps: tuple[float, ...] = DEFAULT_EPS["linf"]
    count: int = 1000
    offset: int = 0
    split: str = "test"
    steps: int = 40
    restarts: int = 1
    rel_step: float = 0.1
    seed: int = 0
    target: str | None = None   # a target rule for a targeted attack

    @property
    def file_stem(self) -> str:
        return f"robustness_{self.norm}" + (f"_targeted_{self.target}" if self.target else "")


@dataclasses.dataclass
class RobustnessCurve:
    """One model's robust accuracy at every eps, and each image's smallest eps (of the list) that fooled it."""

    model: str
    eps: list[float]
    robust_accuracy: list[float]
    fooled_8bit: list[float]       # of the examples found at each eps, the share that still fool as 8-bit images
    eps_fooled: np.ndarray         # (N,) inf where no eps of the list fooled the image
    adversarial: np.ndarray        # (N, 28, 28): the example at that eps (the original if never fooled)
    fools_8bit: np.ndarray         # (N,) whether that example still fools once rounded to 8-bit pixels
    seconds: float

    @classmethod
    def from_images(cls, model: str, eps, eps_fooled: np.ndarray, adversarial: np.ndarray, fools_8bit: np.ndarray,
                    seconds: float) -> "RobustnessCurve":
        """The curve from each image's smallest fooling eps (0: wrong without any change) and its example."""
        eps = [float(e) for e in sorted(eps)]
        robust = [float(np.mean(eps_fooled > e)) for e in eps]
        # the examples PGD found at each eps (none at 0: an image wrong without change needs no example)
        found = [np.flatnonzero(eps_fooled == e) if e > 0 else np.zeros(0, np.int64) for e in eps]
        share = [float(fools_8bit[hit].mean()) if len(hit) else 1.0 for hit in found]
        return cls(model=model, eps=eps, robust_accuracy=robust, fooled_8bit=share, eps_fooled=eps_fooled,
                   adversarial=adversarial, fools_8bit=fools_8bit, seconds=seconds)

    def below_minimal(self, minimal_norms) -> list[int]:
        """Per eps, the images fooled within it whose minimal norm (another search's) is larger: PGD cannot
        fool an image below its true minimal norm, so each one is a success the minimal search missed."""
        found = np.asarray(minimal_norms, np.float64)
        return [int(((self.eps_fooled <= e) & (found > e)).sum()) for e in self.eps]

    def summary(self) -> dict:
        return {"model": self.model, "eps": self.eps, "robust_accuracy": self.robust_accuracy,
                "fooled_8bit": self.fooled_8bit, "clean_accuracy": float(np.mean(self.eps_fooled > 0)),
                "seconds": round(self.seconds, 2)}


def robustness_curve(logits_fn: Callable, images: np.ndarray, labels: np.ndarray, settings: RobustnessSettings, *,
                     model: str, targets: np.ndarray | None = None, progress: bool = False,
                     positions: np.ndarray | None = None, population: int | None = None) -> RobustnessCurve:
    """PGD at every eps of ``settings.eps`` in increasing order, attacking only the images still standing.

    ``positions`` and ``population``: for a shard of a selection, as in
    :meth:`advmnist.attacks.Attack.__call__` (each image keeps its random starts).
    """
    started = time.time()
    count = len(images)
    images = check_images(images)
    labels = check_labels(labels, count, allow_unknown=False)
    targets = untargeted(count) if targets is None else check_targets(targets, labels)
    draws = Draws.of(settings.seed, count, positions, population)
    eps_fooled = np.full(count, np.inf)
    adversarial = images.copy()
    fools_8bit = np.zeros(count, bool)
    # one graph and session for every eps (building them costs as much as a few steps)
    targeted = bool((targets != UNTARGETED).all())
    with PGDSession(logits_fn, settings.norm, targeted=targeted) as session:
        # without any change: the images the network already gets wrong (or already reads as their target)
        clean = np.flatnonzero(session.loop.fooled(session.sess, images, labels, targets))
        eps_fooled[clean] = 0.0
        rounded = session.loop.predict(session.sess, images[clean])[1]
        fools_8bit[clean] = rounded == targets[clean] if targeted else rounded != labels[clean]
        for eps in sorted(settings.eps):
            standing = np.flatnonzero(np.isinf(eps_fooled)) if eps > 0 else np.zeros(0, np.int64)
            if not len(standing):
                continue
            attack = PGD(settings.norm, eps, steps=settings.steps, restarts=settings.restarts,
                         rel_step=settings.rel_step)
            result = attack.run_in(session, images[standing], labels[standing], targets[standing],
                                   draws=draws.take(standing), progress=progress)
            hit = result.success
            eps_fooled[standing[hit]] = eps
            adversarial[standing[hit]] = result.adversarial[hit]
            fools_8bit[standing[hit]] = result.success_8bit[hit]
    return RobustnessCurve.from_images(model, settings.eps, eps_fooled, adversarial, fools_8bit,
                                       time.time() - started)
