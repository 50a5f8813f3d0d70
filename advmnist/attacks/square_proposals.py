"""What the Square attack's random search proposes (:mod:`advmnist.attacks.square`), computed on the host.

- :func:`square_sides`: the side of each query's window, from the paper's schedule of ``p``;
- :func:`square_pattern`: the L2 update's "centred square" (Sec. 3.2 of the paper);
- :func:`first_directions` and :func:`query_draws`: each image's random draws, from its own
  generator, in query order (the first query's stripes or grid, then each query's window
  corners, sign and orientation), fed to the graph.
"""
from __future__ import annotations

import numpy as np

from advmnist.data.mnist import IMAGE_SIZE
from advmnist.attacks.norms import L2, Linf

#: Where ``p`` halves, in queries of a 10000-query budget (Sec. 4 of the paper, the authors' schedule).
CHECKPOINTS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
L2_GRID = 5  # the L2 first query: a grid of L2_GRID x L2_GRID squares
CORNERS = {Linf.name: 2, L2.name: 4}  # per query: the corners of one window (L2: two), then a sign (L2: an orientation)


def square_sides(iterations, queries: int, p_init: float, norm: str) -> np.ndarray:
    """The side of the window of each iteration (0-based, after the first query) of a ``queries`` budget.

    ``p`` is ``p_init`` halved once for each checkpoint that ``iteration * 10000 // queries``
    has passed; the side is ``round(sqrt(p * 784))``, at least 1 (L-infinity) or 3 and
    odd (L2: the centred pattern needs a middle), at most 28.
    """
    iterations = np.asarray(iterations, np.int64)
    passed = (iterations[..., None] * 10000 // queries > np.asarray(CHECKPOINTS)).sum(-1)
    sides = np.rint(np.sqrt(p_init / 2.0 ** passed * IMAGE_SIZE * IMAGE_SIZE)).astype(np.int64)
    if norm == L2.name:
        sides = np.maximum(sides, 3)
        sides += 1 - sides % 2
    return np.clip(sides, 1, IMAGE_SIZE)


def _unit(array: np.ndarray) -> np.ndarray:
    return array / np.sqrt((array ** 2).sum())


def centred_rectangle(rows: int, cols: int) -> np.ndarray:
    """Mass falling off from the centre: at Chebyshev distance d from it, ``sum_{j=d+1}^{n+1} 1/j^2``
    with ``n = max(rows, cols) // 2`` (the nested rectangles of Sec. 3.2), unit L2 norm."""
    n = max(rows, cols) // 2
    tails = np.cumsum(1.0 / np.arange(n + 1, 0, -1) ** 2)[::-1]  # tails[d] = sum over j = d+1 .. n+1
    distance = np.maximum(np.abs(np.arange(rows) - rows // 2)[:, None], np.abs(np.arange(cols) - cols // 2)[None])
    return _unit(tails[distance])


def square_pattern(side: int) -> np.ndarray:
    """The L2 update's square (side >= 2): a centred rectangle over its top half and minus one over its bottom
    half, unit L2 norm."""
    return _unit(np.concatenate([centred_rectangle(side // 2, side), -centred_rectangle(side - side // 2, side)]))


def pattern_table() -> np.ndarray:
    """(2, 29, 28, 28) float32: at ``[flip, side]`` the pattern of that side (transposed when ``flip``) in the
    top-left corner, zeros elsewhere (sides below 3 are never drawn for L2: zeros)."""
    table = np.zeros((2, IMAGE_SIZE + 1, IMAGE_SIZE, IMAGE_SIZE), np.float32)
    for side in range(3, IMAGE_SIZE + 1):
        pattern = square_pattern(side)
        table[0, side, :side, :side] = pattern
        table[1, side, :side, :side] = pattern.T
    return table


def first_directions(norm: str, rngs: list) -> np.ndarray:
    """The first query's direction of each image (its generator's first draws), before scaling to eps:
    L-infinity, +-1 per column; L2, a grid of centred squares, each with its own sign and orientation."""
    count = len(rngs)
    if norm == Linf.name:
        signs = np.where(np.stack([rng.random(IMAGE_SIZE) for rng in rngs]) < 0.5, -1.0, 1.0)
        return np.repeat(signs[:, None, :], IMAGE_SIZE, axis=1)
    side = IMAGE_SIZE // L2_GRID
    begin, end = (IMAGE_SIZE - side * L2_GRID) // 2, (IMAGE_SIZE + side * L2_GRID) // 2
    drawn = np.stack([rng.random((L2_GRID * L2_GRID, 2)) for rng in rngs])  # per square: sign, orientation
    pattern = square_pattern(side)
    tiles = np.stack([pattern, pattern.T])[(drawn[..., 1] < 0.5).astype(int)]
    tiles *= np.where(drawn[..., 0] < 0.5, -1.0, 1.0)[..., None, None]
    directions = np.zeros((count, IMAGE_SIZE, IMAGE_SIZE))
    grid = tiles.reshape(count, L2_GRID, L2_GRID, side, side).transpose(0, 1, 3, 2, 4)
    directions[:, begin:end, begin:end] = grid.reshape(count, side * L2_GRID, side * L2_GRID)
    return directions


def query_draws(norm: str, rngs: list, sides: np.ndarray) -> dict:
    """What each image draws for queries of these sides, in query order: the corner of each window (rows and
    columns 0..28-side: two windows for L2), a sign and, for L2, an orientation of the pattern."""
    columns = CORNERS[norm] + (2 if norm == L2.name else 1)
    drawn = np.stack([rng.random((len(sides), columns)) for rng in rngs])  # (images, queries, columns)
    span = (IMAGE_SIZE + 1 - np.asarray(sides))[None, :, None]
    corners = np.minimum(np.floor(drawn[..., :CORNERS[norm]] * span), span - 1).astype(np.int32)
    draws = {"corners": corners, "signs": np.where(drawn[..., CORNERS[norm]] < 0.5, -1.0, 1.0).astype(np.float32)}
    if norm == L2.name:
        draws["flips"] = (drawn[..., -1] < 0.5).astype(np.int32)
    return draws
