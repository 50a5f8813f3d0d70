"""Figures of the minimal-norm, robustness, transfer and PGD-training experiments.

The other half of the figure layer (:mod:`advmnist.report.figures` holds the shared tile grids
and the reference experiments' figures); every write is atomic.
"""
from __future__ import annotations

import numpy as np

from advmnist.report.figures import MAX_TILES, _subplots, digit_grid, noise_grid, save_figure


def minimal_figures(result, report, out_dir) -> dict[str, str]:
    """``minimal``: grids of the originals, the 8-bit adversarial images and the changes; the robust curve."""
    from pathlib import Path

    out_dir, norm = Path(out_dir), report.norm
    stem = out_dir / f"minimal_{norm}"
    shown = slice(0, MAX_TILES)
    first = f" (first {MAX_TILES} shown)" if len(result) > MAX_TILES else ""
    fooled = result.success_8bit
    sizes = result.norms[norm]
    aim = ["any" if t < 0 else str(t) for t in result.targets[shown]]
    files = {"originals": f"{stem}_originals.png", "adversarial": f"{stem}.png",
             "perturbation": f"{stem}_perturbation.png", "curve": f"{stem}_curve.png"}
    digit_grid(result.originals[shown], [f"{lab} -> {a}" for lab, a in zip(result.labels[shown], aim)],
               files["originals"], suptitle=f"the original images and their targets{first}")
    digit_grid(result.adversarial[shown],
               [f"pred {p}, {norm} {s:.2f}" for p, s in zip(result.predictions_8bit[shown], sizes[shown])],
               files["adversarial"], title_colors=["tab:green" if ok else "tab:red" for ok in fooled[shown]],
               suptitle=f"smallest {norm} change found: {int(fooled.sum())}/{len(result)} fooled as 8-bit "
                        f"images (green){first}")
    change = result.adversarial[shown] - result.originals[shown]
    noise_grid(change, [f"{norm} {s:.2f}" for s in sizes[shown]], files["perturbation"],
               limit=max(float(np.abs(change).max()), 1 / 255), label="adversarial - original",
               suptitle=f"the {norm} perturbations (red adds ink, blue removes it){first}")
    minimal_curve_figure(report, files["curve"], targeted=result.targeted)
    return files


def minimal_curve_figure(report, path, *, targeted: bool) -> None:
    """The share of images that no perturbation of norm <= eps fooled, against eps."""
    fig, ax = _subplots(figsize=(6.0, 4.0))
    curve, norm = report.curve, report.norm
    ax.plot(curve["eps"], [100 * r for r in curve["robust_accuracy"]], drawstyle="steps-post")
    ax.set_xlabel(f"eps ({norm} norm of the change)")
    ax.set_ylabel("not fooled into the target (%)" if targeted else "robust accuracy (%)")
    ax.set_ylim(-3, 103)
    ax.set_xlim(0, curve["eps"][-1])
    ax.grid(alpha=0.3)
    s = report.summary
    median = s[f"median_{norm}"]
    ax.set_title(f"{s['count']} images, {'targeted' if targeted else 'untargeted'}; median minimal {norm} "
                 + (f"{median:.3g}" if median is not None else "-"), fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def attack_label(name: str) -> str:
    """How a figure names an attack of the registry: PGD, APGD-CE, ..., AutoAttack."""
    return "AutoAttack" if name == "auto" else name.upper()


def robustness_figure(curves, path, *, norm: str, targeted: bool, minimal: dict, attack: str = "pgd") -> None:
    """Robust accuracy against eps, one line per model (a model's minimal-norm curve dashed beside it); for an
    ensemble, beside it one panel per model: what each member broke at each eps."""
    ensemble = len(curves[0].members) > 1
    panels = 1 + (len(curves) if ensemble else 0)
    fig, axes = _subplots(1, panels, figsize=(6.5 + 5.0 * (panels - 1), 4.2), squeeze=False)
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
    save_figure(fig, path)


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


def pgd_training_figure(result, path, *, eps: float) -> None:
    """Clean accuracy and accuracy under the monitor's PGD (and the training FGSM), before and after every epoch."""
    fig, ax = _subplots(figsize=(6.0, 3.8))
    epochs = [0.0] + [h["epoch"] for h in result.history]
    ax.plot(epochs, [100 * result.clean_before] + [100 * h["clean_accuracy"] for h in result.history], marker="o",
            label="clean")
    ax.plot(epochs, [100 * result.robust_before] + [100 * h["robust_accuracy"] for h in result.history], marker="o",
            label=f"under PGD (eps {eps:g})")
    if result.history and "fgsm_accuracy" in result.history[0]:
        ax.plot([h["epoch"] for h in result.history], [100 * h["fgsm_accuracy"] for h in result.history],
                marker="x", linestyle=":", label="under the training FGSM")
    ax.set_xlabel("epoch of PGD training")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(-3, 103)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def transfer_figure(matrix, path, *, attack: str) -> None:
    """Two heatmaps, made on (rows) x evaluated on (columns): target reached, and misclassified."""
    panels = [("reached the intended target", matrix.reached)] if matrix.targeted else []
    panels.append(("misclassified", matrix.misclassified))
    width = 1.2 + 0.9 * len(matrix.evaluated)
    fig, axes = _subplots(1, len(panels), figsize=(width * len(panels), 0.9 + 0.6 * len(matrix.sources) + 1.6),
                          squeeze=False)
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
    save_figure(fig, path)
