"""The per-image targeted attack of the first reference experiment: settings and the reference's summary.

The attack itself is :class:`advmnist.attacks.PerImageNoise`; this module holds the
``attack`` command's defaults (which reproduce the reference) and turns an
:class:`~advmnist.attacks.AttackResult` into the reference's summary and our
per-image table. It prints nothing; its files are written
through :mod:`advmnist.experiments.results` (``merge_shards``: the merge of its shards).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from advmnist.attacks import AttackResult, PerImageNoise, Regularizer, make_regularizer
from advmnist.attacks.norms import L1, L2, Linf

REG_CHOICES = (L2.name, L1.name, "none", "all")


@dataclasses.dataclass(frozen=True)
class AttackSettings:
    """The ``attack`` command's defaults, which reproduce the reference: training images 16..31, d -> 9 - d.

    The optimizer's own defaults (Adam 3e-3 then 1e-3, N(0, 0.01) start) are those of
    :class:`advmnist.attacks.PerImageNoise`.
    """

    reg: str = L2.name
    weight: float = 1e-2
    count: int = 16
    offset: int = 16
    split: str = "train"
    target: str = "9-d"
    steps: int = 6000
    seed: int = 0
    early_stop: bool = False
    margin: float = 1.0

    @property
    def regs(self) -> list[str]:
        return [L2.name, L1.name, "none"] if self.reg == "all" else [self.reg]

    def attack(self, reg: str) -> PerImageNoise:
        return PerImageNoise(make_regularizer(reg, self.weight), steps=self.steps,
                             early_stop_margin=self.margin if self.early_stop else None)

    @staticmethod
    def file_stem(reg: str) -> str:
        """``mnist_adv_<reg>``: the files of one regularizer's run (``<reg>_partial`` if interrupted)."""
        return f"mnist_adv_{reg}"

    COMPARISON_STEM = "mnist_adv_comparison"


@dataclasses.dataclass
class AttackReport:
    reg: str
    weight: float
    summary: dict
    rows: list[dict]
    seconds: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def summarize(result: AttackResult, regularizer: Regularizer, *, indices: np.ndarray,
              seconds: float) -> AttackReport:
    """The reference's summary (same names and definitions) and a per-image table."""
    count = len(result)
    noise = result.noise.reshape(count, -1)
    success = result.success
    norms = result.norms
    summary = {
        "pred_label": result.predictions.tolist(),
        "L1Norm": float(np.abs(noise).sum() / count),
        "L2Norm": float(np.sqrt((noise.astype(np.float64) ** 2).sum()) / count),
        "cross_entropy_loss": float(result.info["cross_entropy"].mean()),
        "regularize_cost": regularizer.value(result.noise),
        "train_error": float(1.0 - success.mean()),
        "success": int(success.sum()),
        "success_8bit": int(result.success_8bit.sum()),
        "count": count,
        "mean_l1": float(norms[L1.name].mean()),
        "mean_l2": float(norms[L2.name].mean()),
        "mean_linf": float(norms[Linf.name].mean()),
    }
    rows = [{"index": int(indices[i]), "label": int(result.labels[i]), "target": int(result.targets[i]),
             "prediction": int(result.predictions[i]), "target_prob": float(result.info["target_probability"][i]),
             **{name: float(norms[name][i]) for name in (L1.name, L2.name, Linf.name)},
             "adversarial_8bit": bool(result.success_8bit[i]), "steps": int(result.info["steps_run"][i])}
            for i in range(count)]
    return AttackReport(reg=regularizer.name, weight=regularizer.weight, summary=summary, rows=rows,
                        seconds=round(seconds, 2))


#: The command, and the start of its result files' names (for ``merge``: :mod:`advmnist.experiments.shards`).
COMMAND, SHARD_PREFIX = "attack", "mnist_adv_"


def merge_shards(out: Path, stem: str, parts: list):
    """One regularizer's shards, merged into the files a whole run writes; its record and merged result."""
    from advmnist.attacks import make_regularizer
    from advmnist.experiments import results
    from advmnist.experiments.shards import merged_result, total_seconds

    reg = stem[len(SHARD_PREFIX):]
    result, indices = merged_result(parts)
    settings = parts[0].record["settings"]
    summary = summarize(result, make_regularizer(reg, settings["weight"]), indices=indices,
                        seconds=total_seconds(parts))
    return results.write_attack(out, reg, result, summary, indices, settings), result


def merged_extras(out: Path, groups: dict, merged: dict) -> list[dict]:
    """`attack --reg all` shards also wrote a comparison: so does the merge, from the merged runs."""
    from advmnist.experiments import results

    regs = [reg for reg in AttackSettings(reg="all").regs if AttackSettings.file_stem(reg) in groups]
    compared = [p for reg in regs for p in groups[AttackSettings.file_stem(reg)]
                if (p.path.parent / f"{AttackSettings.COMPARISON_STEM}.json").is_file()]
    if not compared:
        return []
    stems = {reg: AttackSettings.file_stem(reg) for reg in regs}
    return [results.write_comparison(out, {reg: merged[stems[reg]][1] for reg in regs},
                                     {reg: merged[stems[reg]][0] for reg in regs})]
