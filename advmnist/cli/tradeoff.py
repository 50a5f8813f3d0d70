"""``advmnist tradeoff``: noise size against success, over regularization weights."""
from __future__ import annotations

import dataclasses
import time

import click

from advmnist.cli.options import (MAX_TABLE_ROWS, Output, attack_inputs, config_option, data_dir_option, image_options,
                                  json_option, model_option, out_option, progress_enabled, seed_option,
                                  steps_option, translate_errors)
from advmnist.errors import InvalidInput
from advmnist.experiments.tradeoff import REG_CHOICES, TradeoffSettings

DEFAULTS = TradeoffSettings()


@click.command(short_help="Noise size against success, over weights.")
@config_option()
@click.option("--reg", "regs", type=click.Choice(REG_CHOICES + ("all",)), multiple=True, default=DEFAULTS.regs,
              show_default=True, help="Regularizer(s) to sweep; repeat the option for several (all: l2, l1, none).")
@click.option("--weights", default=",".join(f"{w:g}" for w in DEFAULTS.weights), show_default=True,
              help="Comma-separated regularization weights to try (each >= 0).")
@image_options(DEFAULTS)
@steps_option(DEFAULTS.steps, "Adam steps per attack (the attack command's schedule).")
@seed_option(DEFAULTS.seed, "Seeds the initial noise (the same for every weight) and random targets.")
@model_option
@out_option("Folder for tradeoff_<regs>.png and tradeoff_<regs>.json.")
@data_dir_option
@json_option
@translate_errors
def tradeoff(regs, weights, count, offset, split, target, steps, seed, model_path, no_verify, out, data_dir,
             json_mode) -> None:
    """Noise size against success: sweep the regularization weight.

    Attacks the same images, towards the same targets, from the same initial noise,
    once for every regularizer and weight. A larger weight gives a smaller
    perturbation until the attack no longer reaches its target; the figure shows
    where, and the table gives, for every image, the smallest perturbation (L2 of
    the effective change) that still fooled the network: a minimal-norm search over
    the grid of weights.

    \b
    Writes to --out (default assets/), <regs> being e.g. l2_l1:
      tradeoff_<regs>.png   success, mean L2 and mean L1 against the weight
      tradeoff_<regs>.json  every point and each image's smallest success

    \b
    Example (about 1.5 minutes on 2 CPU cores):
      advmnist tradeoff --reg l2 --reg l1 --steps 2000
    """
    from advmnist.report import figures
    from advmnist.experiments.tradeoff import write_tradeoff
    from advmnist.experiments.tradeoff import parse_weights, smallest_successes, sweep
    from advmnist.fileio import display_path

    output = Output(json_mode)
    try:
        weight_list = parse_weights(weights)
    except InvalidInput as err:
        raise click.BadParameter(str(err), param_hint="--weights") from err
    model, indices, images, labels, targets, rule = attack_inputs(model_path, no_verify, split, offset, count,
                                                                  target, seed, data_dir, output)
    regs = [name for reg in regs for name in (REG_CHOICES if reg == "all" else [reg])]
    settings = TradeoffSettings(regs=tuple(dict.fromkeys(regs)), weights=tuple(weight_list), count=count,
                                offset=offset, split=split, target=rule, steps=steps, seed=seed)
    output.say(f"{settings.runs()} attacks of {count} image(s), {steps} steps each")
    figures.import_in_background()
    started = time.time()

    def said(point) -> None:
        s = point.summary()
        output.say(f"{point.reg} weight {point.weight:g}: {s['success']:.0%} reached the target"
                   + (f", mean L2 {s['mean_l2']:.3f}, mean L1 {s['mean_l1']:.2f}" if s["mean_l2"] is not None else ""))

    points = sweep(model.logits, images, targets, settings.regs, settings.weights, steps=steps,
                                seed=seed, labels=labels, progress=progress_enabled(), on_point=said)
    smallest = smallest_successes(points)
    settings_record = {"model": display_path(model.path), **dataclasses.asdict(settings)}
    record = write_tradeoff(out, settings.file_stem, points, smallest, indices, settings_record,
                                    time.time() - started, title=f"{count} images, {rule} targets, {steps} steps")
    rows = [[int(indices[i]), int(labels[i]), int(targets[i])]
            + (["-", "-", "-"] if best is None else [best["reg"], f"{best['weight']:g}", f"{best['l2']:.3f}"])
            for i, best in enumerate(smallest)]
    output.say("smallest successful perturbation per image:")
    output.say(figures.format_table(["index", "label", "target", "reg", "weight", "L2"], rows[:MAX_TABLE_ROWS]))
    output.say(f"figure: {record['figure']}; numbers: {out / (settings.file_stem + '.json')}")
    output.result(record)
