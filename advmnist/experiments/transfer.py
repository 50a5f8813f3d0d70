"""Transfer: adversarial examples made on one network, evaluated on others.

Each source network gets its own examples for the same images and targets, by one of
the attacks (:data:`ATTACKS`); the examples are rounded to 8-bit pixels (what a saved
PNG would hold) and given to every network. Two matrices, rows the network the
examples were made on and columns the network they are evaluated on: the share of all
images read as their intended target, and the share misclassified at all. The diagonal
is each network's own success.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable

import numpy as np

from advmnist.attacks import PGD, MinimalNorm, PerImageNoise, UniversalNoise, make_regularizer
from advmnist.attacks.base import as_8bit
from advmnist.attacks.norms import L2, Linf



@dataclasses.dataclass(frozen=True)
class TransferAttack:
    """An attack that ``transfer`` can make its examples with: ``make(settings, fit_images, steps)``."""

    make: Callable
    default_steps: int
    untargeted: bool  # can make examples that aim at any wrong class (``--target untargeted``)


#: ``transfer --attack``: each attack's maker, its default steps, and whether it can be untargeted. ``attack`` is
#: the reference's L2 noise (weight 0.01); ``universal`` fits one noise per target on the training images.
ATTACKS = {
    "pgd": TransferAttack(lambda settings, fit, steps: PGD(Linf.name, settings.eps, steps=steps), 40, True),
    "minimal": TransferAttack(lambda settings, fit, steps: MinimalNorm(L2.name, steps=steps), 125, True),
    "attack": TransferAttack(lambda settings, fit, steps: PerImageNoise(make_regularizer(L2.name, 1e-2), steps=steps),
                             1000, False),
    "universal": TransferAttack(lambda settings, fit, steps: UniversalNoise(fit, steps=steps), 1000, False),
}


@dataclasses.dataclass(frozen=True)
class TransferSettings:
    """The ``transfer`` command's defaults: 500 test images, d + 1, PGD within Linf 0.2."""

    attack: str = "pgd"
    count: int = 500
    offset: int = 0
    split: str = "test"
    target: str = "d+1"
    eps: float = 0.2
    steps: int | None = None   # None: the attack's own default
    seed: int = 0

    def make_attack(self, fit_images: np.ndarray):
        """The attack that makes the examples: ``pgd`` (Linf ``eps``, 40 steps), ``minimal`` (L2, 8 x 125 steps),
        ``attack`` (the reference's L2 noise, weight 0.01, 1000 steps) or ``universal`` (one noise per target,
        fitted on ``fit_images``, 1000 steps)."""
        entry = ATTACKS[self.attack]
        return entry.make(self, fit_images, self.steps or entry.default_steps)

    @property
    def file_stem(self) -> str:
        return f"transfer_{self.attack}"


@dataclasses.dataclass
class TransferMatrix:
    sources: list[str]
    evaluated: list[str]
    targeted: bool
    reached: np.ndarray          # (sources, evaluated): share of all images read as the intended target
    misclassified: np.ndarray    # (sources, evaluated): share of all images not read as their label
    own: list[float]             # each source's success as the attack measured it (8-bit), for the diagonal
    seconds: float

    def to_dict(self) -> dict:
        return {"made_on": self.sources, "evaluated_on": self.evaluated, "targeted": self.targeted,
                "reached_target": self.reached.round(4).tolist(),
                "misclassified": self.misclassified.round(4).tolist(), "own_success_8bit": self.own,
                "seconds": round(self.seconds, 2)}



def transfer_matrix(models: dict, sources: list[str], images: np.ndarray, labels: np.ndarray,
                    targets: np.ndarray | None, settings: TransferSettings, *, fit_images: np.ndarray | None = None,
                    progress: bool = False, log=lambda message: None) -> tuple[TransferMatrix, dict]:
    """Examples made on each of ``sources`` (names in ``models``), evaluated on every model; also the examples."""
    started = time.time()
    evaluated = list(models)
    reached = np.zeros((len(sources), len(evaluated)))
    misclassified = np.zeros_like(reached)
    examples, own = {}, []
    attack = settings.make_attack(fit_images)
    for i, source in enumerate(sources):
        log(f"making examples on {source} ({settings.attack})")
        result = attack(models[source].logits, images, labels, targets=targets, seed=settings.seed,
                        progress=progress)
        examples[source] = as_8bit(result.adversarial)
        own.append(float(result.success_8bit.mean()))
        for j, name in enumerate(evaluated):
            predictions = models[name].predict_proba(examples[source]).argmax(1)
            misclassified[i, j] = float((predictions != labels).mean())
            reached[i, j] = float((predictions == targets).mean()) if targets is not None else misclassified[i, j]
    matrix = TransferMatrix(sources=list(sources), evaluated=evaluated, targeted=targets is not None,
                            reached=reached, misclassified=misclassified, own=own, seconds=time.time() - started)
    return matrix, examples
