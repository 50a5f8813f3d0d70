"""``advmnist matrix``: every digit into every other digit."""
from __future__ import annotations

import dataclasses
import time

import click
import numpy as np

from advmnist.attacks import make_regularizer
from advmnist.cli.options import (Output, config_option, data_dir_option, json_option, load_model, model_option,
                                  out_option, progress_enabled, reg_option, seed_option, select_shard, shard_option,
                                  shard_out, split_option, steps_option, translate_errors, weight_option)
from advmnist.experiments.matrix import MatrixSettings
from advmnist.experiments.tradeoff import REG_CHOICES

DEFAULTS = MatrixSettings()


@click.command(short_help="Every digit into every other: success and cost.")
@config_option()
@reg_option(REG_CHOICES, DEFAULTS.reg, "Regularization of the noise, as in `advmnist attack`.")
@weight_option(DEFAULTS.weight, "Regularization weight, as in `advmnist attack`.")
@click.option("--per-class", type=click.IntRange(1, 100), default=DEFAULTS.per_class, show_default=True,
              help="Images of each source digit (the first ones of the split); each is attacked 9 times.")
@split_option(DEFAULTS.split)
@steps_option(DEFAULTS.steps, "Adam steps per image (the attack command's schedule: 3e-3, then 1e-3 for the "
                              "last third).")
@seed_option(DEFAULTS.seed, "Seeds the initial noise N(0, 0.01).")
@model_option
@out_option("Folder for the figures, matrix_<reg>.npz and matrix_<reg>.json.")
@shard_option
@data_dir_option
@json_option
@translate_errors
def matrix(reg, weight, per_class, split, steps, seed, model_path, no_verify, out, shard, data_dir,
           json_mode) -> None:
    """Source x target: turn every digit into every other digit and compare the cost.

    Takes the first --per-class images of each digit and attacks each of them towards
    each of the nine other classes with the per-image noise of `advmnist attack`
    (90 x --per-class attacks, optimized 256 at a time). Each cell (source, target) reports
    how often the target was reached and the mean L2 norm of the perturbation that
    did it: which digits are close to which, for this network.

    \b
    Writes to --out (default assets/):
      matrix_<reg>.png           success and mean-L2 heatmaps
      matrix_<reg>_examples.png  one adversarial example per cell (10 x 10 digits)
      matrix_<reg>.npz / .json   every attacked image's arrays; the matrices

    \b
    Example (about 1 minute on 2 CPU cores):
      advmnist matrix --reg l2 --per-class 2 --steps 1000

    With --shard K/N a process takes attacks K, K+N, ... of the list (source digit,
    then target); `advmnist merge` puts the shards together.
    """
    from advmnist.experiments.matrix import all_pairs, pick_sources, summarize
    from advmnist.report import figures
    from advmnist.experiments.matrix import write_matrix
    from advmnist.data.mnist import load_split
    from advmnist.fileio import display_path

    output = Output(json_mode)
    settings = MatrixSettings(reg=reg, weight=make_regularizer(reg, weight).weight, per_class=per_class,
                              split=split, steps=steps, seed=seed)
    model = load_model(model_path, no_verify, output)
    data = load_split(split, data_dir, log=output.say)
    chosen = pick_sources(data.labels, per_class)
    indices, targets = all_pairs(chosen, data.labels)
    population = len(indices)
    positions, indices, targets = select_shard(shard, population, indices, targets)
    out = shard_out(out, shard)
    output.say(f"{len(indices)} attacks ({per_class} image(s) of each digit x 9 targets"
               + (f", shard {shard} of {population}" if shard else "") + f"), {steps} steps, {reg}")
    figures.import_in_background()
    started = time.time()
    result = settings.attack()(model.logits, data.images[indices], data.labels[indices], targets=targets, seed=seed,
                               progress=progress_enabled(), positions=positions, population=population)
    seconds = time.time() - started
    cells = summarize(result)
    record = write_matrix(out, settings.file_stem, reg, result, cells, indices,
                                  {"model": display_path(model.path), "model_sha256": model.sha256,
                                   **dataclasses.asdict(settings)}, seconds,
                                  shard=shard.record(population) if shard else None)
    output.say(f"reached the target: {record['success_overall']:.1%} of {len(indices)} ({seconds:.0f} s)")
    output.say("mean L2 of the successful perturbations, rows: source digit, columns: target class")
    table = [[s] + ["-" if np.isnan(v) else f"{v:.2f}" for v in row] for s, row in enumerate(cells.mean_l2)]
    output.say(figures.format_table(["src"] + [str(t) for t in range(10)], table))
    output.say("easiest: " + ", ".join(f"{s}->{t}" for s, t in cells.easiest())
               + "; hardest: " + ", ".join(f"{s}->{t}" for s, t in cells.hardest()))
    output.say("files: " + ", ".join(record["files"].values()))
    output.result(record)
