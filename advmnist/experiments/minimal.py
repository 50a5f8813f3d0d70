"""The ``minimal`` command's experiment: settings, the per-image table and the robust-accuracy curve.

The attack itself is :class:`advmnist.attacks.MinimalNorm`; this module turns its
:class:`~advmnist.attacks.AttackResult` into a summary, a per-image table and the curve
that the minimal norms give for free: for every budget eps, the share of images whose
smallest successful perturbation is larger than eps (an image the search never fooled
counts as larger than any eps). It prints nothing; its files are written
through :mod:`advmnist.experiments.results` (``merge_shards``: the merge of its shards).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from advmnist.experiments.targeted import AttackSettings
from advmnist.attacks import AttackResult, MinimalNorm
from advmnist.attacks.norms import L1, L2, Linf
from advmnist.attacks.registry import get_entry

#: the registry's minimal-norm attack, and the norms it supports
ATTACK = get_entry("minimal")
NORM_CHOICES = ATTACK.norms
UNTARGETED_RULE = "untargeted"


@dataclasses.dataclass(frozen=True)
class MinimalSettings:
    """The ``minimal`` command's defaults: the reference's 16 training images and 9 - d, 8 starts of 125 steps."""

    norm: str = L2.name
    count: int = AttackSettings.count
    offset: int = AttackSettings.offset
    split: str = AttackSettings.split
    target: str = AttackSettings.target
    steps: int = 125
    starts: int = 8
    seed: int = AttackSettings.seed

    def attack(self) -> MinimalNorm:
        return ATTACK.make(self.norm, steps=self.steps, starts=self.starts)

    @property
    def file_stem(self) -> str:
        """``minimal_<norm>``: its figures start with it too."""
        return f"minimal_{self.norm}"


@dataclasses.dataclass
class MinimalReport:
    norm: str
    summary: dict
    rows: list[dict]
    curve: dict
    seconds: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def robust_curve(norms: np.ndarray, fooled: np.ndarray, *, points: int = 101) -> dict:
    """``eps`` from 0 to a little past the largest minimal norm, and the share of images not fooled within each.

    An image is fooled within eps when its minimal perturbation (``norms``, where
    ``fooled``) is at most eps.
    """
    sizes = np.where(fooled, norms, np.inf).astype(np.float64)
    finite = sizes[np.isfinite(sizes)]
    top = 1.1 * float(finite.max()) if len(finite) and finite.max() > 0 else 1.0
    eps = np.linspace(0.0, top, points)
    robust = (sizes[None, :] > eps[:, None]).mean(1) if len(sizes) else np.zeros(points)
    return {"eps": [round(float(e), 6) for e in eps], "robust_accuracy": [float(r) for r in robust]}


def summarize(result: AttackResult, norm: str, *, indices: np.ndarray, seconds: float) -> MinimalReport:
    """Success (the results are 8-bit images: both counts are the same check), norms over the fooled images."""
    count = len(result)
    fooled = result.success_8bit
    norms = result.norms

    def over_fooled(values: np.ndarray, how) -> float | None:
        return float(how(values[fooled])) if fooled.any() else None

    summary = {
        "count": count,
        "success": int(result.success.sum()),
        "success_8bit": int(fooled.sum()),
        "targeted": result.targeted,
        **{f"mean_{name}": over_fooled(norms[name], np.mean) for name in (L1.name, L2.name, Linf.name)},
        f"median_{norm}": over_fooled(norms[norm], np.median),
    }
    rows = [{"index": int(indices[i]), "label": int(result.labels[i]), "target": int(result.targets[i]),
             "prediction": int(result.predictions_8bit[i]),
             **{name: float(norms[name][i]) for name in (L1.name, L2.name, Linf.name)},
             "adversarial_8bit": bool(fooled[i])} for i in range(count)]
    return MinimalReport(norm=norm, summary=summary, rows=rows, curve=robust_curve(norms[norm], fooled),
                         seconds=round(seconds, 2))


#: The command, and the start of its result files' names (for ``merge``: :mod:`advmnist.experiments.shards`).
COMMAND, SHARD_PREFIX = "minimal", "minimal_"


def merge_shards(out: Path, stem: str, parts: list):
    """The shards of one search, merged into the files a whole run writes; its record and merged result."""
    from advmnist.experiments import results
    from advmnist.experiments.shards import merged_result, total_seconds

    result, indices = merged_result(parts)
    settings = parts[0].record["settings"]
    report = summarize(result, settings["norm"], indices=indices, seconds=total_seconds(parts))
    return results.write_minimal(out, stem, result, report, indices, settings), result
