"""The figures' shared pieces and text tables: tile grids, a confusion heatmap, atomic PNG writes.

Each experiment draws its own figures from these (``*_figure(s)`` beside its ``write_*`` in its module); this
module knows no experiment. Every write is atomic.
"""
from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np

from advmnist import fileio


def new_figure(**kwargs):
    """A new figure that no GUI knows of: pyplot (and its global backend) is never touched,
    so drawing here changes nothing for a notebook that uses matplotlib itself."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def subplots(*grid, squeeze: bool = True, **kwargs):
    fig = new_figure(**kwargs)
    return fig, fig.subplots(*grid, squeeze=squeeze)


def import_in_background() -> None:
    """Import matplotlib on a side thread (about 0.3 s), e.g. while an attack keeps TensorFlow busy.

    TensorFlow's kernels run without the GIL and seldom keep both cores of a laptop busy
    at every instant, so the import mostly costs nothing; the first figure then does not
    wait for it.
    """
    import threading

    threading.Thread(target=new_figure, name="import-matplotlib", daemon=True).start()


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
    fig = new_figure(figsize=(width, height))
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
    fig, ax = subplots(figsize=(5.6, 4.8))
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


