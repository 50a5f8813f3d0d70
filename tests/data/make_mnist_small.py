"""Write ``mnist_small.npz``: the first 600 training and 300 test digits of the real MNIST.

The fast test run uses these instead of the full data set, so it needs no download.
Run from the repository root with MNIST in the cache (``advmnist data``):

    python tests/data/make_mnist_small.py
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from advmnist.data.mnist import FILES, ensure_mnist, parse_idx

TRAIN, TEST = 600, 300


def main() -> None:
    folder = ensure_mnist()
    arrays = {}
    for split, count in (("train", TRAIN), ("test", TEST)):
        for kind in ("images", "labels"):
            spec = FILES[f"{split}-{kind}"]
            arrays[f"{split}_{kind}"] = parse_idx((folder / spec.name).read_bytes(), spec.shape)[:count]
    out = Path(__file__).with_name("mnist_small.npz")
    np.savez_compressed(out, **arrays, source_sha256=np.array([FILES[k].sha256 for k in sorted(FILES)]))
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
