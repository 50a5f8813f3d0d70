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
from advmnist.attacks.norms import REGULARIZER_NAMES, L1, L2, Linf
from advmnist.fileio import display_path
from advmnist.report import figures
from advmnist import fileio
from advmnist.experiments import results

REG_CHOICES = REGULARIZER_NAMES + ("all",)  # the regularizers, or all three on the same images


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
    from advmnist.experiments.shards import merged_result, total_seconds

    reg = stem[len(SHARD_PREFIX):]
    result, indices = merged_result(parts)
    settings = parts[0].record["settings"]
    summary = summarize(result, make_regularizer(reg, settings["weight"]), indices=indices,
                        seconds=total_seconds(parts))
    return write_attack(out, reg, result, summary, indices, settings), result


def merged_extras(out: Path, groups: dict, merged: dict) -> list[dict]:
    """`attack --reg all` shards also wrote a comparison: so does the merge, from the merged runs."""
    regs = [reg for reg in AttackSettings(reg="all").regs if AttackSettings.file_stem(reg) in groups]
    compared = [p for reg in regs for p in groups[AttackSettings.file_stem(reg)]
                if (p.path.parent / f"{AttackSettings.COMPARISON_STEM}.json").is_file()]
    if not compared:
        return []
    stems = {reg: AttackSettings.file_stem(reg) for reg in regs}
    return [write_comparison(out, {reg: merged[stems[reg]][1] for reg in regs},
                                     {reg: merged[stems[reg]][0] for reg in regs})]


# ---------------------------------------------------------------------------- its files and figures

def write_attack(out: Path, name: str, result, summary, indices: np.ndarray, settings: dict, *,
                 shard=None) -> dict:
    """One regularizer's run of ``attack``: the two grids, the arrays, the metrics; returns the record.

    ``shard``: :meth:`advmnist.experiments.shards.Shard.record` when the run is a shard.
    """
    stem = AttackSettings.file_stem(name)
    files = attack_figures(result, name, out)
    files["arrays"] = results.write_arrays(out, stem, result, indices)
    record = {**summary.to_dict(), **results.record_files(files), "settings": settings, **results.shard_entry(shard)}
    fileio.write_json(out / f"{stem}.json", record)
    return record


def write_comparison(out: Path, results: dict, records: dict) -> dict:
    """``attack --reg all``: the side-by-side figure and table of the regularizers."""
    figure = out / f"{AttackSettings.COMPARISON_STEM}.png"
    comparison_figure(results, figure)
    keys = ("success", "success_8bit", "count", "L1Norm", "L2Norm", "mean_l1", "mean_l2", "mean_linf")
    table = [{"reg": name, **{key: record["summary"][key] for key in keys}} for name, record in records.items()]
    fileio.write_json(out / f"{AttackSettings.COMPARISON_STEM}.json", {"table": table, "figure": display_path(figure)})
    return {"runs": records, "comparison": table, "figure": display_path(figure)}


def attack_figures(result, reg: str, out_dir) -> dict[str, str]:
    """The reference's two grids: adversarial samples (true / predicted label) and the noise."""
    from pathlib import Path

    out_dir = Path(out_dir)
    predictions = result.predictions
    shown = slice(0, figures.MAX_TILES)
    titles = [f"true {lab}, pred {p}" for lab, p in zip(result.labels[shown], predictions[shown])]
    colors = ["tab:green" if ok else "tab:red" for ok in result.success[shown]]
    sample = out_dir / f"mnist_adv_sample_{reg}.png"
    noise = out_dir / f"mnist_adv_sample_{reg}_noise.png"
    success = int(result.success.sum())
    first = f" (first {figures.MAX_TILES} shown)" if len(predictions) > figures.MAX_TILES else ""
    figures.digit_grid(result.adversarial[shown], titles, sample, title_colors=colors,
                       suptitle=f"{reg}: {success}/{len(predictions)} reach their target (green){first}")
    figures.noise_grid(result.adversarial[shown] - result.originals[shown],
                       [f"{lab} -> {t}" for lab, t in zip(result.labels[shown], result.targets[shown])], noise,
                       label="adversarial - original",
                       suptitle=f"{reg}: the change to each image (red adds ink, blue removes it){first}")
    return {"samples": str(sample), "noise": str(noise)}


def comparison_figure(results: dict, path, *, columns: int = 16) -> None:
    """Originals, then noise and adversarial rows for each regularizer, side by side."""
    first = next(iter(results.values()))
    n = min(columns, len(first.originals))
    rows = [("original", first.originals[:n], "gray", None)]
    for reg, result in results.items():
        # the effective change (after clipping), on one symmetric scale for every regularizer
        rows.append((f"{reg} change", result.adversarial[:n] - result.originals[:n], "seismic", 1.0))
        rows.append((f"{reg} adversarial", result.adversarial[:n], "gray", None))
    fig, axes = figures.subplots(len(rows), n, figsize=(0.95 * n + 2.2, 1.05 * len(rows)), squeeze=False)
    change = None
    for r, (name, images, cmap, limit) in enumerate(rows):
        for c in range(n):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            vmin, vmax = (-limit, limit) if limit else (0.0, 1.0)
            shown = ax.imshow(images[c], cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
            change = shown if limit else change
            if c == 0:
                ax.set_ylabel(name, fontsize=8, rotation=0, ha="right", va="center")
            if r == 0:
                ax.set_title(f"{first.labels[c]}->{first.targets[c]}", fontsize=8)
    if change is not None:
        fig.colorbar(change, ax=axes.ravel().tolist(), shrink=0.6, pad=0.01, label="adversarial - original")
    fig.suptitle("per-image targeted noise: each regularizer on the same images, targets and seed", fontsize=10)
    figures.save_figure(fig, path)
