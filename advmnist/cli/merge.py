"""``advmnist merge``: the shards of a per-image run, put together."""
from __future__ import annotations

from pathlib import Path

import click

from advmnist.cli.options import Output, json_option, out_option, translate_errors


@click.command(short_help="Put the shards of attack/matrix/minimal/robustness together.")
@click.argument("folders", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@out_option("Folder for the merged results: the files one run without --shard writes.")
@json_option
@translate_errors
def merge(folders, out, json_mode) -> None:
    """Merge the results of runs made with --shard K/N into those of one whole run.

    FOLDERS hold the shards' files (by default each shard writes to
    assets/shard-K-of-N). Every run found (attack, matrix, minimal, robustness) must
    have all N shards, once each, with the same settings; the images are put back in
    the order of the selection, and the tables, summaries, .npz arrays and figures are
    computed and written as one run without --shard writes them. Times are the sum of
    the shards' times. Nothing is written unless every run found is complete.

    \b
    Example, four processes on one machine (GNU parallel), then the merge:
      parallel advmnist attack --split test --offset 0 --count 1000 --target d+1 --reg l2 \\
          --shard {}/4 ::: 0 1 2 3
      advmnist merge assets/shard-*-of-4
    """
    from advmnist.fileio import display_path
    from advmnist.experiments import shards

    output = Output(json_mode)
    records = shards.merge(folders, out)
    for record in records:
        files = record.get("files") or {"figure": record.get("figure")}
        output.say("merged: " + ", ".join(str(v) for v in files.values() if isinstance(v, str)))
    output.say(f"{len(records)} result(s) written to {display_path(out)}")
    output.result({"merged": records})
