"""What ``advmnist robustness`` writes: the arrays, the record and the figure (a curve per model, and for an
ensemble what each member broke)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from advmnist import fileio
from advmnist.experiments import results
from advmnist.report import figures

def write_robustness(out: Path, settings, curves, indices: np.ndarray, labels: np.ndarray, minimal: dict, *,
                     suffix: str = "", shard=None) -> dict:
    """``robustness``: the figure; per model and image the smallest fooling eps, its example, the member of
    the attack that found it and at which step, the plain forward pass's verdict; the table.

    ``warnings``: each model's (:meth:`~advmnist.experiments.robustness.RobustnessCurve.warnings`), named.
    """
    stem = settings.file_stem + suffix
    figure = out / f"{stem}.png"
    robustness_figure(curves, figure, norm=settings.norm, targeted=settings.target is not None,
                                        minimal=minimal, attack=settings.attack)
    for curve in curves:
        if curve.model in minimal:
            minimal[curve.model]["pgd_below_minimal"] = curve.below_minimal(minimal[curve.model]["norms"])
    minimal = {model: {k: v for k, v in entry.items() if k != "norms"} for model, entry in minimal.items()}
    arrays = out / f"{stem}.npz"
    # the plain forward pass's verdicts, when every curve was re-checked
    checked = {} if any(c.confirmed is None for c in curves) else {"confirmed": np.stack([c.confirmed
                                                                                         for c in curves])}
    fileio.write_npz(arrays, indices=indices, labels=labels, eps=np.asarray(curves[0].eps),
                     eps_fooled=np.stack([c.eps_fooled for c in curves]),
                     adversarial=np.stack([c.adversarial for c in curves]),
                     fools_8bit=np.stack([c.fools_8bit for c in curves]),
                     members=np.asarray(curves[0].members, dtype=str),
                     broken_by=np.stack([c.broken_by for c in curves]),
                     broken_at=np.stack([c.broken_at for c in curves]), **checked)
    models = [c.summary() for c in curves]
    warnings = [f"{m['model']}: {w}" for m in models for w in m["warnings"]]
    record = {"settings": dataclasses.asdict(settings), "models": models, "minimal": minimal,
              "warnings": warnings, **results.record_files({"figure": figure, "arrays": arrays}),
              **results.shard_entry(shard)}
    fileio.write_json(out / f"{stem}.json", record)
    return record


def attack_label(name: str) -> str:
    """How a figure names an attack of the registry: PGD, APGD-CE, ..., AutoAttack."""
    return "AutoAttack" if name == "auto" else name.upper()


def robustness_figure(curves, path, *, norm: str, targeted: bool, minimal: dict, attack: str = "pgd") -> None:
    """Robust accuracy against eps, one line per model (a model's minimal-norm curve dashed beside it); for an
    ensemble, beside it one panel per model: what each member broke at each eps."""
    ensemble = len(curves[0].members) > 1
    panels = 1 + (len(curves) if ensemble else 0)
    fig, axes = figures.subplots(1, panels, figsize=(6.5 + 5.0 * (panels - 1), 4.2), squeeze=False)
    ax = axes[0][0]
    label = attack_label(attack)
    for curve in curves:
        name = curve.model.replace("/model.pb", "")
        line, = ax.plot(curve.eps, [100 * r for r in curve.robust_accuracy], marker="o", label=f"{name} ({label})")
        if curve.model in minimal:
            m = minimal[curve.model]
            ax.plot(m["eps"], [100 * r for r in m["robust_accuracy"]], drawstyle="steps-post", linestyle="--",
                    color=line.get_color(), alpha=0.7, label=f"{name} (minimal {norm})")
    ax.set_xlim(0, max(curves[0].eps) * 1.02 or 1)
    ax.set_ylim(-3, 103)
    ax.set_xlabel(f"eps ({norm} budget)")
    ax.set_ylabel("not read as the target (%)" if targeted else "robust accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title(f"{label}, {len(curves[0].eps_fooled)} images", fontsize=10)
    if ensemble:
        for bar_ax, curve in zip(axes[0][1:], curves):
            member_bars(bar_ax, curve)
    fig.tight_layout()
    figures.save_figure(fig, path)


def member_bars(ax, curve) -> None:
    """One stacked bar per eps: robust (bottom), what each member broke there, what fell at a smaller eps."""
    table = np.asarray(curve.robust_accuracy_after()) * 100  # per eps: entering, after each member
    where = np.arange(len(curve.eps))
    colors = ["tab:blue", "tab:orange", "tab:purple", "tab:red", "tab:brown", "tab:pink", "tab:olive"]
    ax.bar(where, table[:, -1], color="tab:green", label="robust")
    bottom = table[:, -1].copy()
    for k in reversed(range(len(curve.members))):
        added = table[:, k] - table[:, k + 1]
        ax.bar(where, added, bottom=bottom, color=colors[k % len(colors)], label=f"broken by {curve.members[k]}")
        bottom += added
    ax.bar(where, 100 - bottom, bottom=bottom, color="0.85", label="fooled at a smaller eps or misclassified")
    for x, robust in zip(where, table[:, -1]):
        ax.text(x, min(robust, 88) + 2, f"{robust:.1f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(where, [f"{e:g}" for e in curve.eps])
    ax.set_ylim(0, 100)
    ax.set_xlabel("eps")
    ax.set_ylabel("share of the images (%)")
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles[::-1], labels[::-1], fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(f"{curve.model.replace('/model.pb', '')}: who broke what at each eps", fontsize=10)
