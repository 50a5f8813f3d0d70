"""Figures and tables: with :mod:`advmnist.experiments.results`, the layer that writes results; every write is
atomic."""
from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np

from advmnist import fileio


def _figure(**kwargs):
    """A new figure that no GUI knows of: pyplot (and its global backend) is never touched,
    so drawing here changes nothing for a notebook that uses matplotlib itself."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _subplots(*grid, squeeze: bool = True, **kwargs):
    fig = _figure(**kwargs)
    return fig, fig.subplots(*grid, squeeze=squeeze)


def import_in_background() -> None:
    """Import matplotlib on a side thread (about 0.3 s), e.g. while an attack keeps TensorFlow busy.

    TensorFlow's kernels run without the GIL and seldom keep both cores of a laptop busy
    at every instant, so the import mostly costs nothing; the first figure then does not
    wait for it.
    """
    import threading

    threading.Thread(target=_figure, name="import-matplotlib", daemon=True).start()


def save_figure(fig, path: os.PathLike | str) -> None:
    with fileio.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")


def grid_shape(count: int) -> tuple[int, int]:
    """Rows and columns of a square-ish grid: 16 -> 4x4, 10 -> 3x4, 3 -> 2x2."""
    cols = math.ceil(math.sqrt(count))
    return math.ceil(count / cols), cols


TILE, GAP = 28, 9  # pixels of a tile, and of the space around it that holds its title


def tile_figure(tiles: np.ndarray, titles: Sequence[str] | None, path: os.PathLike | str, *, cmap: str,
                vmin: float, vmax: float, suptitle: str | None = None,
                title_colors: Sequence[str] | None = None, colorbar_label: str | None = None,
                cell_inches: float = 1.6) -> None:
    """A square-ish grid of 28x28 tiles, each with its title, drawn in one axes.

    One axes with every tile placed by ``extent`` draws several times faster than a
    subplot per tile, which matters for a command that writes two grids per run.
    """
    from matplotlib.patches import Rectangle

    rows, cols = grid_shape(len(tiles))
    step = TILE + GAP
    inch = cell_inches / step  # inches per pixel
    width, height = cols * step * inch, rows * step * inch
    fig = _figure(figsize=(width, height))
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_xlim(-0.5, cols * step - 0.5)
    ax.set_ylim(rows * step - 0.5, -0.5)
    ax.axis("off")
    shown = None
    for i, tile in enumerate(tiles):
        row, col = divmod(i, cols)
        x, y = col * step + GAP / 2, row * step + GAP - 1
        shown = ax.imshow(tile, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest",
                          extent=(x - 0.5, x + TILE - 0.5, y + TILE - 0.5, y - 0.5))
        # a thin frame: a noise tile is white where the noise is zero, like the page
        ax.add_patch(Rectangle((x - 0.5, y - 0.5), TILE, TILE, fill=False, linewidth=0.6, edgecolor="0.75"))
        if titles:
            ax.text(x + TILE / 2 - 0.5, y - 1.5, titles[i], ha="center", va="bottom", fontsize=9 * cell_inches / 1.6,
                    color=title_colors[i] if title_colors else "black")
    if colorbar_label and shown is not None:
        fig.colorbar(shown, ax=ax, label=colorbar_label, fraction=0.04, pad=0.02, shrink=0.85)
    if suptitle:
        fig.suptitle(suptitle, fontsize=11, y=1.0, va="bottom")
    save_figure(fig, path)  # the tight box takes in the titles and colorbar label; cheap with one axes


def digit_grid(images: np.ndarray, titles: Sequence[str], path: os.PathLike | str, *,
               suptitle: str | None = None, title_colors: Sequence[str] | None = None) -> None:
    """Grayscale tiles (black background, white ink, as MNIST), each with its title."""
    tile_figure(images, titles, path, cmap="gray", vmin=0.0, vmax=1.0, suptitle=suptitle,
                title_colors=title_colors)


def noise_grid(noise: np.ndarray, titles: Sequence[str] | None, path: os.PathLike | str, *,
               limit: float = 1.0, suptitle: str | None = None, label: str = "noise",
               cell_inches: float = 1.6) -> None:
    """Noise tiles on a diverging colormap centred at zero, a fixed symmetric scale, one colour bar."""
    tile_figure(noise, titles, path, cmap="seismic", vmin=-limit, vmax=limit, suptitle=suptitle,
                colorbar_label=label, cell_inches=cell_inches)


def confusion_figure(matrix: np.ndarray, path: os.PathLike | str, *, title: str) -> None:
    fig, ax = _subplots(figsize=(5.6, 4.8))
    shown = ax.imshow(matrix, cmap="Blues")
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    ax.set_xticks(range(matrix.shape[1]))
    ax.set_yticks(range(matrix.shape[0]))
    threshold = matrix.max() / 2
    for (row, col), value in np.ndenumerate(matrix):
        ax.text(col, row, str(value), ha="center", va="center", fontsize=7,
                color="white" if value > threshold else "black")
    ax.set_title(title, fontsize=10)
    fig.colorbar(shown, ax=ax, shrink=0.8)
    save_figure(fig, path)


def format_confusion(matrix: np.ndarray) -> str:
    width = max(5, len(str(matrix.max())) + 1)
    head = "true\\pred" + "".join(f"{c:>{width}}" for c in range(matrix.shape[1]))
    rows = [f"{r:>9}" + "".join(f"{v:>{width}}" for v in matrix[r]) for r in range(matrix.shape[0])]
    return "\n".join([head] + rows)


def format_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A plain fixed-width text table."""
    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


#: Grids show at most this many images; the arrays hold all of them.
MAX_TILES = 64


def attack_figures(result, reg: str, out_dir) -> dict[str, str]:
    """The reference's two grids: adversarial samples (true / predicted label) and the noise."""
    from pathlib import Path

    out_dir = Path(out_dir)
    predictions = result.predictions
    shown = slice(0, MAX_TILES)
    titles = [f"true {lab}, pred {p}" for lab, p in zip(result.labels[shown], predictions[shown])]
    colors = ["tab:green" if ok else "tab:red" for ok in result.success[shown]]
    sample = out_dir / f"mnist_adv_sample_{reg}.png"
    noise = out_dir / f"mnist_adv_sample_{reg}_noise.png"
    success = int(result.success.sum())
    first = f" (first {MAX_TILES} shown)" if len(predictions) > MAX_TILES else ""
    digit_grid(result.adversarial[shown], titles, sample, title_colors=colors,
               suptitle=f"{reg}: {success}/{len(predictions)} reach their target (green){first}")
    noise_grid(result.adversarial[shown] - result.originals[shown],
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
    fig, axes = _subplots(len(rows), n, figsize=(0.95 * n + 2.2, 1.05 * len(rows)), squeeze=False)
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
    save_figure(fig, path)


def universal_figures(result, targets, test_images, test_labels, out_dir, *, noise_limit: float,
                      tag: str) -> dict[str, str]:
    """Per target: the noise, a 3x3 grid of noisy test images, the confusion matrix;
    for several targets also a 2x5 grid of the noises."""
    from pathlib import Path

    out_dir = Path(out_dir)
    files = {}
    for target, noise, effect in zip(targets, result.noise, result.effects):
        noise_png = out_dir / f"universal_noise_{target}{tag}.png"
        noise_grid(noise[None], [f"noise -> {target}"], noise_png, limit=noise_limit,
                   suptitle=f"universal noise for target {target}", cell_inches=4.0)
        samples = np.clip(test_images[:9] + noise, 0.0, 1.0)
        titles = [f"true {lab}, pred {p}" for lab, p in zip(test_labels[:9], effect.predictions[:9])]
        colors = ["tab:red" if p == target else "black" for p in effect.predictions[:9]]
        samples_png = out_dir / f"universal_samples_{target}{tag}.png"
        digit_grid(samples, titles, samples_png, title_colors=colors,
                   suptitle=f"test images + noise -> {target}: accuracy {effect.accuracy:.1%}")
        confusion_png = out_dir / f"universal_confusion_{target}{tag}.png"
        confusion_figure(effect.confusion, confusion_png,
                         title=f"with the target-{target} noise: accuracy {effect.accuracy:.1%}, "
                               f"{effect.fooled:.1%} read as {target}")
        files[str(target)] = {"noise": str(noise_png), "samples": str(samples_png), "confusion": str(confusion_png)}
    if len(targets) > 1:
        grid = out_dir / f"universal_noise_all{tag}.png"
        fig, axes = _subplots(2, 5, figsize=(10, 4.6), squeeze=False)
        shown = None
        for ax, target, noise, effect in zip(axes.flat, targets, result.noise, result.effects):
            shown = ax.imshow(noise, cmap="seismic", vmin=-noise_limit, vmax=noise_limit, interpolation="nearest")
            ax.set_title(f"-> {target}: acc {effect.accuracy:.1%}", fontsize=9)
            ax.axis("off")
        for ax in list(axes.flat)[len(targets):]:
            ax.axis("off")
        fig.colorbar(shown, ax=axes.ravel().tolist(), shrink=0.8, label="noise")
        fig.suptitle(f"one universal noise per target class (clean accuracy {result.clean_accuracy:.1%})")
        save_figure(fig, grid)
        files["all"] = str(grid)
    return files


def immunize_figure(result, path, *, title: str) -> None:
    """Accuracy under a freshly optimized noise, target x (before, after each round's phase, end).

    Every target is trained once per round in either schedule, so every cell is a
    measurement: right after that target's phase of that round. Nothing is drawn
    between measurements.
    """
    rounds = sorted({h["round"] for h in result.history})
    targets = list(result.targets)
    values = np.full((len(targets), len(rounds) + 2), np.nan)
    for row, target in enumerate(targets):
        values[row, 0] = result.before[target]
        for h in result.history:
            if h["target"] == target:
                values[row, 1 + rounds.index(h["round"])] = h["accuracy_fresh_noise"]
        values[row, -1] = result.after[target]
    values *= 100
    columns = ["before"] + [f"after its\nround {r}" for r in rounds] + ["at the end"]
    fig, ax = _subplots(figsize=(1.0 * len(columns) + 2.4, 0.42 * len(targets) + 1.9))
    shown = ax.imshow(np.ma.masked_invalid(values), cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    for (row, col), value in np.ndenumerate(values):
        if np.isfinite(value):
            ax.text(col, row, f"{value:.1f}", ha="center", va="center", fontsize=8,
                    color="white" if value < 25 or value > 85 else "black")
    ax.set_xticks(range(len(columns)), columns, fontsize=8)
    ax.set_yticks(range(len(targets)), [f"target {t}" for t in targets], fontsize=8)
    ax.xaxis.tick_top()
    fig.colorbar(shown, ax=ax, label="test accuracy under fresh noise (%)", shrink=0.9)
    ax.set_title(f"{title}\nclean test accuracy {result.clean_before:.2%} before, {result.clean_after:.2%} after",
                 fontsize=10, pad=28)
    save_figure(fig, path)


def matrix_figures(matrix, reg: str, out_dir) -> dict[str, str]:
    """Heatmaps of a source x target matrix, and a 10x10 mosaic of one adversarial example per cell."""
    from pathlib import Path

    from matplotlib.patches import Rectangle

    out_dir = Path(out_dir)
    classes = range(matrix.success.shape[0])
    heat = out_dir / f"matrix_{reg}.png"
    panels = [(matrix.mean_l2, "mean L2 of the perturbation (successes)", "magma_r", "{:.2f}", (None, None))]
    every = np.nanmin(matrix.success) == 1.0
    if not every:  # a panel of 100 % everywhere says nothing; the title says it instead
        panels.insert(0, (100 * matrix.success, "reached the target (%)", "Greens", "{:.0f}", (0.0, 100.0)))
    fig, axes = _subplots(1, len(panels), figsize=(5.9 * len(panels), 5.0), squeeze=False)
    axes = axes[0]
    for ax, (values, title, cmap, fmt, (vmin, vmax)) in zip(axes, panels):
        shown = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=vmin, vmax=vmax)
        for (row, col), value in np.ndenumerate(values):
            if np.isfinite(value):
                ax.text(col, row, fmt.format(value), ha="center", va="center", fontsize=7,
                        color="white" if shown.norm(value) > 0.6 else "black")
        ax.set_xticks(list(classes))
        ax.set_yticks(list(classes))
        ax.set_xlabel("target class")
        ax.set_ylabel("source digit")
        ax.set_title(title, fontsize=10)
        fig.colorbar(shown, ax=ax, shrink=0.8)
    fig.suptitle(f"source x target, {reg} regularization"
                 + (": every attack reached its target" if every else ""), fontsize=11)
    save_figure(fig, heat)

    mosaic = out_dir / f"matrix_{reg}_examples.png"
    n = matrix.example.shape[0]
    step = TILE + 4
    fig = _figure(figsize=(7.6, 7.9))
    ax = fig.add_axes((0.08, 0.02, 0.9, 0.9))
    for (row, col) in np.ndindex(n, n):
        x, y = col * step, row * step
        ax.imshow(matrix.example[row, col], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest",
                  extent=(x - 0.5, x + TILE - 0.5, y + TILE - 0.5, y - 0.5))
        failed = row != col and not matrix.example_reached[row, col]
        if row == col or failed:
            ax.add_patch(Rectangle((x - 1.5, y - 1.5), TILE + 2, TILE + 2, fill=False, linewidth=1.5,
                                   edgecolor="tab:red" if failed else "tab:blue"))
    ax.set_xlim(-2.5, n * step - 2.5)
    ax.set_ylim(n * step - 2.5, -2.5)
    ax.set_xticks([c * step + TILE / 2 for c in range(n)], [str(c) for c in range(n)])
    ax.set_yticks([r * step + TILE / 2 for r in range(n)], [str(r) for r in range(n)])
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_xlabel("target class")
    ax.xaxis.set_label_position("top")
    ax.xaxis.tick_top()
    ax.set_ylabel("source digit")
    fig.suptitle(f"one adversarial example per cell ({reg}); originals on the diagonal (blue), "
                 "red: target not reached", fontsize=9)
    save_figure(fig, mosaic)
    return {"heatmaps": str(heat), "examples": str(mosaic)}


def tradeoff_figure(points, path, *, title: str) -> None:
    """Success and mean perturbation size against the regularization weight, one line per regularizer."""
    fig, axes = _subplots(1, 3, figsize=(13.0, 3.8))
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
    save_figure(fig, path)

