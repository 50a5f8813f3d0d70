"""Transfer: adversarial examples made on one network, evaluated on others.

Each source network gets its own examples for the same images and targets, by one of
the registry's attacks (:mod:`advmnist.attacks.registry`); the examples are rounded to 8-bit pixels (what a saved
PNG would hold) and given to every network. Two matrices, rows the network the
examples were made on and columns the network they are evaluated on: the share of all
images read as their intended target, and the share misclassified at all. The diagonal
is each network's own success.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from advmnist.attacks.base import as_8bit
from advmnist.attacks.registry import get_entry
from advmnist.report import figures
from advmnist import fileio
from advmnist.experiments import results


#: the attacks' iterations here when they differ from the registry's default: the reference's noise takes 6000
#: steps in ``attack``; 1000 (its success levels off by then) keep a transfer of several networks in minutes
TRANSFER_STEPS = {"attack": 1000}


def default_steps(name: str) -> int:
    """``--steps`` of ``transfer --attack NAME`` when not given: its iterations (Square: queries)."""
    return TRANSFER_STEPS.get(name, get_entry(name).default_budget)


def attack_norm(name: str) -> str:
    """The norm the examples are made in: the attack's first (Linf for the bounded attacks and universal, L2 for
    minimal and attack)."""
    return get_entry(name).norms[0]


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

    def make_attack(self, fit_images: np.ndarray | None):
        """The registry's attack that makes the examples, in its first norm (:func:`attack_norm`): a bounded one
        (``pgd``, ``apgd-ce``, ..., ``auto``) within ``eps``; ``minimal`` (8 x 125 steps), ``attack`` (the
        reference's noise, weight 0.01, 1000 steps), ``universal`` (one noise per target, fitted on
        ``fit_images``)."""
        entry = get_entry(self.attack)
        return entry.make(attack_norm(self.attack), self.eps if entry.bounded else None,
                          iterations=self.steps or default_steps(self.attack), fit_images=fit_images)

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


# ---------------------------------------------------------------------------- its files and figures

def write_transfer(out: Path, settings, matrix, examples: dict, indices: np.ndarray, labels: np.ndarray,
                   targets) -> dict:
    """``transfer``: the heatmaps, the examples made on each network, the matrices."""
    stem = settings.file_stem
    figure = out / f"{stem}.png"
    transfer_figure(matrix, figure, attack=settings.attack)
    arrays = out / f"{stem}.npz"
    fileio.write_npz(arrays, indices=indices, labels=labels,
                     targets=targets if targets is not None else np.full(len(labels), -1),
                     examples=np.stack([examples[s] for s in matrix.sources]))
    record = {"settings": dataclasses.asdict(settings), **matrix.to_dict(),
              **results.record_files({"figure": figure, "arrays": arrays})}
    fileio.write_json(out / f"{stem}.json", record)
    return record


def transfer_figure(matrix, path, *, attack: str) -> None:
    """Two heatmaps, made on (rows) x evaluated on (columns): target reached, and misclassified."""
    panels = [("reached the intended target", matrix.reached)] if matrix.targeted else []
    panels.append(("misclassified", matrix.misclassified))
    width = 1.2 + 0.9 * len(matrix.evaluated)
    height = 0.9 + 0.6 * len(matrix.sources) + 1.6
    fig, axes = figures.subplots(1, len(panels), figsize=(width * len(panels), height), squeeze=False)
    short = [name.replace("/model.pb", "") for name in matrix.evaluated]
    for ax, (title, values) in zip(axes[0], panels):
        ax.imshow(100 * values, cmap="Reds", vmin=0, vmax=100)
        for (i, j), value in np.ndenumerate(values):
            ax.text(j, i, f"{100 * value:.0f}", ha="center", va="center", fontsize=8,
                    color="white" if value > 0.6 else "black")
        ax.set_xticks(range(len(short)), short, rotation=35, ha="right", fontsize=8)
        ax.set_yticks(range(len(matrix.sources)), [s.replace("/model.pb", "") for s in matrix.sources], fontsize=8)
        ax.set_xlabel("evaluated on")
        ax.set_ylabel("made on")
        ax.set_title(f"{title} (%)", fontsize=10)
    fig.suptitle(f"transfer of {attack} examples", fontsize=11)
    fig.tight_layout()
    figures.save_figure(fig, path)
