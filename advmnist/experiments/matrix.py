"""Source x target matrix: how hard is it to turn each digit into each other digit?

The per-image attack (:class:`advmnist.attacks.PerImageNoise`), run on every ordered pair of classes:
``per_class`` images of each source digit, each pushed towards each of the nine other
classes. Each cell (source, target) then says how often the attack got there and how
large the perturbation had to be. The optimization is exactly the ``attack`` command's
(same loss, schedule, seed handling); only the choice of images and targets differs.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from advmnist.attacks import AttackResult, PerImageNoise, make_regularizer
from advmnist.data.mnist import NUM_CLASSES
from advmnist.errors import InvalidInput
from advmnist.attacks.norms import L1, L2
from advmnist.report import figures
from advmnist import fileio
from advmnist.experiments import results


@dataclasses.dataclass(frozen=True)
class MatrixSettings:
    reg: str = L2.name
    weight: float = 1e-2
    per_class: int = 2
    split: str = "test"
    steps: int = 1000
    seed: int = 0

    def attack(self) -> PerImageNoise:
        return PerImageNoise(make_regularizer(self.reg, self.weight), steps=self.steps)

    @property
    def file_stem(self) -> str:
        return f"matrix_{self.reg}"


def pick_sources(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Indices of the first ``per_class`` images of each class, class 0 first."""
    if per_class < 1:
        raise InvalidInput(f"expected --per-class >= 1, got {per_class}")
    labels = np.asarray(labels)
    chosen = []
    for digit in range(NUM_CLASSES):
        found = np.flatnonzero(labels == digit)[:per_class]
        if len(found) < per_class:
            raise InvalidInput(f"expected at least {per_class} images of digit {digit} in the split, "
                               f"found {len(found)}; lower --per-class")
        chosen.append(found)
    return np.concatenate(chosen)


def all_pairs(indices: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every chosen image once per wrong class: (image indices, targets), sorted by source then target."""
    labels = np.asarray(labels)
    rows = [(i, t) for i in indices for t in range(NUM_CLASSES) if t != labels[i]]
    pairs = np.asarray(rows, np.int64).reshape(-1, 2)
    order = np.lexsort((pairs[:, 1], labels[pairs[:, 0]]))  # source digit, then target
    return pairs[order, 0], pairs[order, 1]


@dataclasses.dataclass
class Matrix:
    """10 x 10 arrays indexed [source, target]; the diagonal is NaN (no attack)."""

    success: np.ndarray        # fraction of the source's images that reached the target
    mean_l2: np.ndarray        # mean L2 norm of the effective perturbation, successful images only (NaN if none)
    mean_l1: np.ndarray        # the same for L1
    example: np.ndarray        # (10, 10, 28, 28): an adversarial image per cell (the first that reached the
                               # target, else the first); an original on the diagonal
    example_reached: np.ndarray  # (10, 10) bool: whether the image shown reached its target
    count: np.ndarray          # images attacked per cell

    def to_dict(self) -> dict:
        def rows(matrix):
            return [[None if np.isnan(v) else float(v) for v in row] for row in matrix]

        return {"success": rows(self.success), "mean_l2": rows(self.mean_l2), "mean_l1": rows(self.mean_l1),
                "count": self.count.tolist()}

    def hardest(self, k: int = 3) -> list[tuple[int, int]]:
        """The ``k`` (source, target) cells with the largest mean L2 (the hardest to reach)."""
        values = np.where(np.isnan(self.mean_l2), -np.inf, self.mean_l2)
        flat = np.argsort(values, axis=None)[::-1][:k]
        return [tuple(int(x) for x in np.unravel_index(i, values.shape)) for i in flat
                if np.isfinite(values.flat[i])]

    def easiest(self, k: int = 3) -> list[tuple[int, int]]:
        values = np.where(np.isnan(self.mean_l2), np.inf, self.mean_l2)
        flat = np.argsort(values, axis=None)[:k]
        return [tuple(int(x) for x in np.unravel_index(i, values.shape)) for i in flat
                if np.isfinite(values.flat[i])]


def summarize(result: AttackResult) -> Matrix:
    """Collect per-pair results into the matrices (rows: each attacked image's true digit)."""
    sources = result.labels
    l1, l2 = result.norms[L1.name].astype(np.float64), result.norms[L2.name].astype(np.float64)
    reached = result.success
    shape = (NUM_CLASSES, NUM_CLASSES)
    success, mean_l2, mean_l1 = np.full(shape, np.nan), np.full(shape, np.nan), np.full(shape, np.nan)
    count = np.zeros(shape, np.int64)
    example = np.zeros(shape + result.originals.shape[1:], np.float32)
    example_reached = np.zeros(shape, bool)
    for s in range(NUM_CLASSES):
        for t in range(NUM_CLASSES):
            cell = np.flatnonzero((sources == s) & (result.targets == t))
            if s == t or not len(cell):
                continue
            count[s, t] = len(cell)
            success[s, t] = reached[cell].mean()
            if reached[cell].any():
                mean_l2[s, t] = l2[cell][reached[cell]].mean()
                mean_l1[s, t] = l1[cell][reached[cell]].mean()
            shown = cell[reached[cell]][0] if reached[cell].any() else cell[0]
            example[s, t], example_reached[s, t] = result.adversarial[shown], reached[shown]
            if not example[s, s].any():
                example[s, s] = result.originals[cell[0]]
    return Matrix(success=success, mean_l2=mean_l2, mean_l1=mean_l1, example=example,
                  example_reached=example_reached, count=count)


#: The command, and the start of its result files' names (for ``merge``: :mod:`advmnist.experiments.shards`).
COMMAND, SHARD_PREFIX = "matrix", "matrix_"


def merge_shards(out: Path, stem: str, parts: list):
    """The shards of one matrix, merged into the files a whole run writes; its record and merged result."""
    from advmnist.experiments.shards import merged_result, total_seconds

    result, indices = merged_result(parts)
    settings = parts[0].record["settings"]
    return write_matrix(out, stem, settings["reg"], result, summarize(result), indices, settings,
                                total_seconds(parts)), result


# ---------------------------------------------------------------------------- its files and figures

def write_matrix(out: Path, stem: str, reg: str, result, cells, indices: np.ndarray, settings: dict,
                 seconds: float, *, shard=None) -> dict:
    files = matrix_figures(cells, reg, out)
    files["arrays"] = results.write_arrays(out, stem, result, indices)
    record = {"settings": settings, **cells.to_dict(), "success_overall": float(result.success.mean()),
              "hardest": cells.hardest(), "easiest": cells.easiest(), "seconds": round(seconds, 2),
              **results.record_files(files), **results.shard_entry(shard)}
    fileio.write_json(out / f"{stem}.json", record)
    return record


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
    fig, axes = figures.subplots(1, len(panels), figsize=(5.9 * len(panels), 5.0), squeeze=False)
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
    figures.save_figure(fig, heat)

    mosaic = out_dir / f"matrix_{reg}_examples.png"
    n = matrix.example.shape[0]
    step = figures.TILE + 4
    fig = figures.new_figure(figsize=(7.6, 7.9))
    ax = fig.add_axes((0.08, 0.02, 0.9, 0.9))
    for (row, col) in np.ndindex(n, n):
        x, y = col * step, row * step
        ax.imshow(matrix.example[row, col], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest",
                  extent=(x - 0.5, x + figures.TILE - 0.5, y + figures.TILE - 0.5, y - 0.5))
        failed = row != col and not matrix.example_reached[row, col]
        if row == col or failed:
            ax.add_patch(Rectangle((x - 1.5, y - 1.5), figures.TILE + 2, figures.TILE + 2, fill=False, linewidth=1.5,
                                   edgecolor="tab:red" if failed else "tab:blue"))
    ax.set_xlim(-2.5, n * step - 2.5)
    ax.set_ylim(n * step - 2.5, -2.5)
    ax.set_xticks([c * step + figures.TILE / 2 for c in range(n)], [str(c) for c in range(n)])
    ax.set_yticks([r * step + figures.TILE / 2 for r in range(n)], [str(r) for r in range(n)])
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_xlabel("target class")
    ax.xaxis.set_label_position("top")
    ax.xaxis.tick_top()
    ax.set_ylabel("source digit")
    fig.suptitle(f"one adversarial example per cell ({reg}); originals on the diagonal (blue), "
                 "red: target not reached", fontsize=9)
    figures.save_figure(fig, mosaic)
    return {"heatmaps": str(heat), "examples": str(mosaic)}
