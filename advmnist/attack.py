"""The per-image targeted attack of the first reference experiment: choices and metrics.

:mod:`advmnist.noise` optimizes; this module picks images and targets, and turns
a :class:`~advmnist.noise.PerImageResult` into the reference's summary and our
per-image table. It neither prints nor writes files.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from advmnist.data import NUM_CLASSES
from advmnist.errors import InvalidInput
from advmnist.noise import PerImageResult, Regularizer

TARGET_RULES = ("9-d", "d+1", "random")


@dataclasses.dataclass(frozen=True)
class AttackSettings:
    """The command's defaults, which reproduce the reference: training images 16..31, digit d -> 9 - d.

    The optimizer's own defaults (Adam 3e-3 then 1e-3, N(0, 0.01) start) are those of
    :class:`advmnist.noise.PerImageNoise`.
    """

    reg: str = "l2"
    weight: float = 1e-2
    count: int = 16
    offset: int = 16
    split: str = "train"
    target: str = "9-d"
    steps: int = 6000
    seed: int = 0
    early_stop: bool = False
    margin: float = 1.0


def parse_target_rule(rule: str) -> str:
    rule = str(rule).strip()
    if rule in TARGET_RULES or (rule.isdigit() and 0 <= int(rule) < NUM_CLASSES):
        return rule
    raise InvalidInput(f"expected --target 9-d, d+1, random or a class 0-9, got {rule!r}")


def choose_targets(labels: np.ndarray, rule: str, *, seed: int = 0, indices: np.ndarray | None = None) -> np.ndarray:
    """Target class for each label under ``rule``; never the true label.

    ``random`` draws each image's target from the nine wrong classes with a generator
    seeded by ``seed`` and the image's index, so an image keeps its target whatever
    else is selected with it.
    """
    rule = parse_target_rule(rule)
    labels = np.asarray(labels, np.int64)
    if rule == "9-d":
        targets = 9 - labels
    elif rule == "d+1":
        targets = (labels + 1) % NUM_CLASSES
    elif rule == "random":
        indices = np.arange(len(labels)) if indices is None else np.asarray(indices)
        shifts = [np.random.default_rng([seed, int(i)]).integers(1, NUM_CLASSES) for i in indices]
        targets = (labels + np.asarray(shifts, np.int64)) % NUM_CLASSES
    else:
        targets = np.full(len(labels), int(rule), np.int64)
    same = np.flatnonzero(targets == labels)
    if len(same):
        where = indices[same] if indices is not None else same
        raise InvalidInput(f"target equals the true label for image(s) {where.tolist()} "
                           f"(label {int(labels[same[0]])}); expected a different class, "
                           "e.g. --target 9-d, d+1 or random")
    return targets


def perturbation_norms(result: PerImageResult) -> dict[str, np.ndarray]:
    """L1, L2 and L-infinity norms of the effective perturbation (after clipping)."""
    delta = (result.adversarial - result.originals).reshape(len(result.originals), -1)
    return {"l1": np.abs(delta).sum(1), "l2": np.sqrt((delta ** 2).sum(1)), "linf": np.abs(delta).max(1)}


def to_8bit(images: np.ndarray) -> np.ndarray:
    """What a saved 8-bit PNG holds: round to 1/255 steps."""
    return np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8).astype(np.float32) / 255.0


@dataclasses.dataclass
class AttackReport:
    reg: str
    weight: float
    summary: dict
    rows: list[dict]
    seconds: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def summarize(result: PerImageResult, regularizer: Regularizer, *, indices: np.ndarray,
              seconds: float) -> AttackReport:
    """The reference's summary (same names and definitions) and a per-image table."""
    count = len(result.noise)
    noise = result.noise.reshape(count, -1)
    success = result.predictions == result.targets
    norms = perturbation_norms(result)
    summary = {
        "pred_label": result.predictions.tolist(),
        "L1Norm": float(np.abs(noise).sum() / count),
        "L2Norm": float(np.sqrt((noise.astype(np.float64) ** 2).sum()) / count),
        "cross_entropy_loss": float(result.cross_entropy.mean()),
        "regularize_cost": regularizer.weight * regularizer.penalty_value(result.noise),
        "train_error": float(1.0 - success.mean()),
        "success": int(success.sum()),
        "success_8bit": int((result.predictions_8bit == result.targets).sum()),
        "count": count,
        "mean_l1": float(norms["l1"].mean()),
        "mean_l2": float(norms["l2"].mean()),
        "mean_linf": float(norms["linf"].mean()),
    }
    rows = [{"index": int(indices[i]), "label": int(result.labels[i]), "target": int(result.targets[i]),
             "prediction": int(result.predictions[i]), "target_prob": float(result.target_probability[i]),
             "l1": float(norms["l1"][i]), "l2": float(norms["l2"][i]), "linf": float(norms["linf"][i]),
             "adversarial_8bit": bool(result.predictions_8bit[i] == result.targets[i]),
             "steps": int(result.steps_run[i])}
            for i in range(count)]
    return AttackReport(reg=regularizer.name, weight=regularizer.weight, summary=summary, rows=rows,
                        seconds=round(seconds, 2))
