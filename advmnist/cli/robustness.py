"""``advmnist robustness``: robust accuracy against eps, one curve per model (PGD)."""
from __future__ import annotations

import sys
from pathlib import Path

import click
import numpy as np

from advmnist.cli.options import (TARGET_RULE_CHOICES, Output, check_range, check_same_input_shape, config_option,
                                  data_dir_option, json_option, no_verify_option, out_option, progress_enabled,
                                  range_options, seed_option, select_shard, shard_option, shard_out, split_option,
                                  steps_option, translate_errors)
from advmnist.robustness import RobustnessSettings

DEFAULTS = RobustnessSettings()


@click.command(short_help="Robust accuracy against eps under PGD, one curve per model.")
@config_option()
@click.option("--norm", type=click.Choice(["linf", "l2"]), default=DEFAULTS.norm, show_default=True,
              help="The attacker's ball: L-infinity (every pixel changes by at most eps) or L2.")
@click.option("--eps", "eps_text", default=None,
              help="Comma-separated budgets.  [default: 0,0.05,0.1,0.15,0.2,0.25,0.3 for linf, "
                   "0,0.5,1,1.5,2,2.5,3 for l2]")
@range_options(DEFAULTS)
@split_option(DEFAULTS.split)
@steps_option(DEFAULTS.steps, "PGD steps per start, each of 0.1 eps (Madry et al. took eps/30: weaker here).")
@click.option("--restarts", type=click.IntRange(1, 100), default=DEFAULTS.restarts, show_default=True,
              help="Random starts per image while it is still classified correctly.")
@click.option("--targeted", "target", type=click.Choice(TARGET_RULE_CHOICES), default=None,
              help="Attack towards a target (9-d, d+1, random or a class) instead of any wrong class; "
                   "the curve is then the share not read as the target.")
@seed_option(DEFAULTS.seed, "Seeds the random starts (and random targets).")
@click.option("--model", "model_paths", type=click.Path(path_type=Path),
              multiple=True, help="A run folder or model.pb; repeat for several models, one curve each.  "
                                  "[default: runs/cnn]")
@no_verify_option
@out_option("Folder for robustness_<norm>.png / .json / .npz.")
@shard_option
@data_dir_option
@json_option
@translate_errors
def robustness(norm, eps_text, count, offset, split, steps, restarts, target, seed, model_paths, no_verify, out,
               shard, data_dir, json_mode) -> None:
    """Robust accuracy against eps: how strong is each network against a per-image attacker?

    For every budget eps, projected gradient descent (Madry et al. 2018: a random
    start in the eps-ball, steps of 0.1 eps along the sign of the gradient for linf
    or the normalized gradient for l2,
    projection onto the ball and onto valid pixels) attacks each image; the robust
    accuracy is the share still classified correctly. An image the network already
    gets wrong is not robust at any eps; an image fooled at one eps counts as fooled
    at every larger one, so only the images still standing are attacked at the next.

    If `advmnist minimal --target untargeted` ran on the same model and images with
    its results in --out, its curve (the smallest perturbation of each image) is drawn
    beside PGD's: PGD cannot fool an image below its minimal norm.

    \b
    Writes to --out (default assets/):
      robustness_<norm>.png    robust accuracy against eps, one curve per model
      robustness_<norm>.json   the table, per model and eps
      robustness_<norm>.npz    each image's smallest eps that fooled it, and that example

    \b
    Examples:
      advmnist robustness                                  # linf, 1000 test images
      advmnist robustness --norm l2 --model runs/cnn --model runs/cnn-immune-3
      advmnist robustness --shard K/N   # one of N processes; then `advmnist merge assets/shard-*`
    """
    from advmnist import report, results
    from advmnist import robustness as robustness_lib
    from advmnist.attacks import choose_targets
    from advmnist.cli.options import load_model
    from advmnist.data import load_split
    from advmnist.errors import InvalidInput
    from advmnist.fileio import display_path

    output = Output(json_mode)
    try:
        eps = robustness_lib.parse_eps(eps_text, norm) if eps_text else robustness_lib.DEFAULT_EPS[norm]
    except InvalidInput as err:
        raise click.BadParameter(str(err), param_hint="--eps") from err
    check_range(split, offset, count)
    select_shard(shard, count)  # an empty shard is refused before anything is loaded
    models = [load_model(path, no_verify, output) for path in (model_paths or (None,))]
    check_same_input_shape(models, "--model")
    data = load_split(split, data_dir, log=output.say, rows=slice(offset, offset + count))
    indices = np.arange(offset, offset + count)
    targets = None
    if target is not None:
        try:
            targets = choose_targets(data.labels, target, seed=seed, indices=indices)
        except InvalidInput as err:
            raise click.BadParameter(str(err), param_hint="--targeted") from err
    positions, indices, images, labels, targets = select_shard(shard, count, indices, data.images, data.labels,
                                                               targets)
    out = shard_out(out, shard)
    shard_record = shard.record(count) if shard else None
    settings = RobustnessSettings(norm=norm, eps=eps, count=count, offset=offset, split=split, steps=steps,
                                  restarts=restarts, seed=seed, target=target)
    report.import_in_background()
    curves = []
    try:
        for model in models:
            name = display_path(model.path)
            output.say(f"{name}: PGD {norm}, {len(images)} images" + (f" (shard {shard})" if shard else "")
                       + f", eps {', '.join(f'{e:g}' for e in eps)}")
            curves.append(robustness_lib.robustness_curve(model.logits, images, labels, settings, model=name,
                                                          targets=targets, progress=progress_enabled(),
                                                          positions=positions, population=count))
            output.say(f"  {curves[-1].seconds:.1f} s")
    except KeyboardInterrupt:
        if not curves:
            raise
        # the models already measured are kept, beside (not over) earlier results
        partial = results.write_robustness(out, settings, curves, indices, labels, {}, suffix="_partial",
                                           shard=shard_record)
        click.echo(f"\nInterrupted: {len(curves)} of {len(models)} models were measured; their curves are in "
                   f"{partial['files']['figure']} and beside it.", err=True)
        sys.exit(130)
    minimal = results.matching_minimal(out, norm, indices, [c.model for c in curves]) if target is None else {}
    record = results.write_robustness(out, settings, curves, indices, labels, minimal, shard=shard_record)
    headers = ["eps"] + [c.model for c in curves]
    rows = [[f"{e:g}"] + [f"{100 * c.robust_accuracy[k]:.1f} %" for c in curves] for k, e in enumerate(eps)]
    output.say("\nrobust accuracy" + (f" (not read as the {target} target)" if target else "") + ":")
    output.say(report.format_table(headers, rows))
    output.say("files: " + ", ".join(record["files"].values()))
    output.result(record)
