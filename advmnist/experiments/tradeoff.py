"""Trade-off between the size of the noise and success: a sweep over the regularization weight.

The per-image attack (:class:`advmnist.attacks.PerImageNoise`), run on the same images, targets and
seed for each regularizer and each weight. A larger weight buys a smaller
perturbation until the attack stops reaching its target; the sweep shows where, and
for each image the smallest perturbation that still fooled the network (a
minimal-norm search over the grid of weights).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from advmnist.experiments.targeted import AttackSettings
from advmnist.attacks import PerImageNoise, make_regularizer
from advmnist.errors import InvalidInput
from advmnist.attacks.norms import REGULARIZER_NAMES, L1, L2, Linf
from advmnist.fileio import display_path
from advmnist.report import figures
from advmnist import fileio

DEFAULT_WEIGHTS = (0.0, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3)
REG_CHOICES = REGULARIZER_NAMES  # l2, l1, none: the regularizers, as norms.py names them


@dataclasses.dataclass(frozen=True)
class TradeoffSettings:
    """The ``tradeoff`` command's defaults: the attack command's images, targets and seed, 2000 steps."""

    regs: tuple[str, ...] = (L2.name, L1.name)
    weights: tuple[float, ...] = DEFAULT_WEIGHTS
    count: int = AttackSettings.count
    offset: int = AttackSettings.offset
    split: str = AttackSettings.split
    target: str = AttackSettings.target
    steps: int = 2000
    seed: int = AttackSettings.seed

    @property
    def file_stem(self) -> str:
        """``tradeoff_<regs>``, e.g. ``tradeoff_l2_l1``: a run of other regularizers does not replace it."""
        return "tradeoff_" + "_".join(self.regs)

    def runs(self) -> int:
        """Attacks the sweep runs: weight 0 (no penalty) once for every regularizer that asks for it."""
        penalized = sum(len([w for w in self.weights if w > 0]) for reg in self.regs
                        if make_regularizer(reg, 0.0).has_weight)
        unpenalized = any(not make_regularizer(reg, 0.0).has_weight for reg in self.regs) or 0.0 in self.weights
        return penalized + int(unpenalized)


def parse_weights(text: str) -> list[float]:
    """``"0,0.01,0.1"`` -> sorted distinct weights, each finite and >= 0."""
    try:
        weights = sorted({float(part) for part in str(text).split(",") if part.strip()})
    except ValueError as err:
        raise InvalidInput(f"expected comma-separated numbers for --weights, got {text!r}") from err
    if not weights or not all(np.isfinite(w) and w >= 0 for w in weights):
        raise InvalidInput(f"expected one or more finite weights >= 0, got {text!r}")
    return weights


@dataclasses.dataclass
class SweepPoint:
    reg: str
    weight: float
    success: np.ndarray   # per image: reached the target
    l1: np.ndarray        # per image: norms of the effective perturbation
    l2: np.ndarray
    linf: np.ndarray

    def summary(self) -> dict:
        hit = self.success

        def mean_of_successes(values):
            return float(values[hit].mean()) if hit.any() else None

        return {"reg": self.reg, "weight": self.weight, "success": float(hit.mean()),
                "mean_l1": mean_of_successes(self.l1), "mean_l2": mean_of_successes(self.l2),
                "mean_linf": mean_of_successes(self.linf)}


def sweep(logits_fn, images: np.ndarray, targets: np.ndarray, regs: Sequence[str], weights: Sequence[float], *,
          steps: int, seed: int, labels: np.ndarray | None = None, progress: bool = False,
          on_point: Callable[[SweepPoint], None] = lambda point: None) -> list[SweepPoint]:
    """One attack per (regularizer, weight); ``none`` has no weight and runs once (weight 0).

    Weight 0 is the same attack for every regularizer (no penalty): it runs once and
    its result is reported under each regularizer that asks for it.
    """
    points, unpenalized = [], None
    for reg in regs:
        for weight in (weights if make_regularizer(reg, 0.0).has_weight else [0.0]):
            regularizer = make_regularizer(reg, weight)
            if regularizer.weight == 0 and unpenalized is not None:
                point = dataclasses.replace(unpenalized, reg=reg)
            else:
                result = PerImageNoise(regularizer, steps=steps)(logits_fn, images, labels, targets=targets,
                                                                 seed=seed, progress=progress)
                norms = result.norms
                point = SweepPoint(reg=reg, weight=regularizer.weight, success=result.success,
                                   l1=norms[L1.name], l2=norms[L2.name], linf=norms[Linf.name])
                if regularizer.weight == 0:
                    unpenalized = point
            on_point(point)
            points.append(point)
    return points


def smallest_successes(points: Sequence[SweepPoint], norm: str = L2.name) -> list[dict | None]:
    """Per image, the successful run with the smallest ``norm`` of the effective perturbation."""
    count = len(points[0].success)
    best: list[dict | None] = [None] * count
    for point in points:
        values = getattr(point, norm)
        for i in np.flatnonzero(point.success):
            if best[i] is None or values[i] < best[i][norm]:
                best[i] = {"reg": point.reg, "weight": point.weight, norm: float(values[i])}
    return best


# ---------------------------------------------------------------------------- its files and figures

def write_tradeoff(out: Path, stem: str, points, smallest, indices: np.ndarray, settings: dict, seconds: float,
                   title: str) -> dict:
    figure = out / f"{stem}.png"
    tradeoff_figure(points, figure, title=title)
    record = {"settings": settings, "points": [p.summary() for p in points],
              "smallest_success": [None if best is None else {"index": int(indices[i]), **best}
                                   for i, best in enumerate(smallest)],
              "seconds": round(seconds, 2), "figure": display_path(figure)}
    fileio.write_json(out / f"{stem}.json", record)
    return record


def tradeoff_figure(points, path, *, title: str) -> None:
    """Success and mean perturbation size against the regularization weight, one line per regularizer."""
    fig, axes = figures.subplots(1, 3, figsize=(13.0, 3.8))
    positive = [p.weight for p in points if p.weight > 0]
    panels = [("success", "reached the target (%)", 100.0), ("mean_l2", "mean L2 of the perturbation", 1.0),
              ("mean_l1", "mean L1 of the perturbation", 1.0)]
    for ax, (key, label, scale) in zip(axes, panels):
        for reg in dict.fromkeys(p.reg for p in points):
            shown = [(p.weight, scale * p.summary()[key], int(p.success.sum()), len(p.success))
                     for p in points if p.reg == reg and p.summary()[key] is not None]
            line, = ax.plot([x for x, *_ in shown], [y for _, y, *_ in shown], marker="o", label=reg)
            if key != "success":  # a mean over few successes is no mean: say over how many
                for x, y, hits, total in shown:
                    ax.annotate(f"{hits}/{total}", (x, y), textcoords="offset points", xytext=(0, 6),
                                ha="center", fontsize=7, color=line.get_color())
        if positive:
            ax.set_xscale("symlog", linthresh=min(positive))
        ax.set_xlabel("regularization weight")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylim(-5, 105)
    axes[0].legend()
    axes[1].set_title("over the successful images (n/total marked)", fontsize=9)
    axes[2].set_title("over the successful images (n/total marked)", fontsize=9)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    figures.save_figure(fig, path)
