"""``advmnist transfer``: do adversarial examples made on one network fool others?"""
from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from advmnist.cli.options import (TARGET_RULE_CHOICES, OneEps, Output, check_range, check_same_input_shape,
                                  config_option, data_dir_option, finite, json_option, no_verify_option, out_option,
                                  progress_enabled, range_options, renamed_option, seed_option, split_option,
                                  take_renamed, translate_errors)
from advmnist.attacks.registry import REGISTRY, names
from advmnist.experiments.transfer import TransferSettings, attack_norm, default_steps

DEFAULTS = TransferSettings()


@click.command(short_help="Examples made on one network, evaluated on others.")
@config_option()
@click.option("--model", "sources", type=click.Path(path_type=Path), multiple=True,
              help="A run folder or model.pb to make adversarial examples on (they are evaluated on it and on "
                   "every other model); repeat for several.  [required]")
@click.option("--evaluate-on", "others", type=click.Path(path_type=Path), multiple=True,
              help="A run folder or model.pb the examples are only evaluated on (besides every --model); "
                   "repeat for several.")
@renamed_option("--from", "--model", "old_sources", type=click.Path(path_type=Path), multiple=True)
@renamed_option("--to", "--evaluate-on", "old_others", type=click.Path(path_type=Path), multiple=True)
@click.option("--attack", type=click.Choice(names()), default=DEFAULTS.attack, show_default=True,
              help="How the examples are made, by any attack of the registry, in its first norm: "
                   + "; ".join(f"{name} ({attack_norm(name)}{' within --eps' if entry.bounded else ''}): "
                               f"{entry.description}" for name, entry in REGISTRY.items()) + ".")
@range_options(DEFAULTS)
@split_option(DEFAULTS.split)
@click.option("--target", type=click.Choice(TARGET_RULE_CHOICES + ("untargeted",)), default=DEFAULTS.target,
              show_default=True, help="Intended target: 9-d, d+1, random, a class 0-9, or untargeted (any wrong "
                                      "class: the only criterion of " + ", ".join(n for n, e in REGISTRY.items()
                                                                                  if not e.targeted) + ").")
@click.option("--eps", type=OneEps("the examples are made at one eps; run transfer once per eps"),
              callback=finite, default=DEFAULTS.eps, show_default=True,
              help="The L-infinity budget of the attacks bounded by one (" + ", ".join(names(bounded=True)) + ").")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Iterations of the attack (square: queries; minimal: steps per start).  [default: "
                   + ", ".join(f"{name} {default_steps(name)}" for name in names()) + "]")
@seed_option(DEFAULTS.seed, "Seeds the attack (and random targets).")
@no_verify_option
@out_option("Folder for transfer_<attack>.png / .json / .npz.")
@data_dir_option
@json_option
@translate_errors
def transfer(sources, others, old_sources, old_others, attack, count, offset, split, target, eps, steps, seed,
             no_verify, out, data_dir, json_mode) -> None:
    """Transfer: adversarial examples made on one network, evaluated on others.

    Every --model network gets its own examples for the same images and targets; the
    examples are rounded to 8-bit pixels and given to every network (--model and
    --evaluate-on). The result is two matrices, rows the network the examples were made on,
    columns the network they are evaluated on: the share of all images read as their
    intended target, and the share misclassified at all. The diagonal is each
    network's own success.

    \b
    Writes to --out (default assets/):
      transfer_<attack>.png   both matrices as heatmaps
      transfer_<attack>.json  the matrices and settings
      transfer_<attack>.npz   the examples made on each network

    \b
    Example:
      advmnist transfer --model runs/cnn --model runs/cnn-seed1 --evaluate-on runs/cnn-pgd-eps0.1 --count 500
    """
    from advmnist.report import figures
    from advmnist.experiments.transfer import write_transfer
    from advmnist.experiments.transfer import transfer_matrix
    from advmnist.attacks import choose_targets
    from advmnist.data.mnist import load_split
    from advmnist.errors import InvalidInput

    output = Output(json_mode)
    sources = take_renamed(sources, old_sources, "transfer", "--from", "--model", "as in every other command")
    others = take_renamed(others, old_others, "transfer", "--to", "--evaluate-on")
    if not sources:
        raise click.BadParameter("expected at least one network to make the examples on", param_hint="--model")
    _check_attack_options(attack, target)
    check_range(split, offset, count)
    settings = TransferSettings(attack=attack, count=count, offset=offset, split=split, target=target, eps=eps,
                                steps=steps, seed=seed)
    models, source_names = _load_models(sources, others, no_verify, output)
    data = load_split(split, data_dir, log=output.say, rows=slice(offset, offset + count))
    indices = np.arange(offset, offset + count)
    targets = None
    if target != "untargeted":
        try:
            targets = choose_targets(data.labels, target, seed=seed, indices=indices)
        except InvalidInput as err:
            raise click.BadParameter(str(err), param_hint="--target") from err
    fit = load_split("train", data_dir, log=output.say).images if attack == "universal" else None
    figures.import_in_background()
    matrix, examples = transfer_matrix(models, source_names, data.images, data.labels, targets, settings,
                                       fit_images=fit, progress=progress_enabled(), log=output.say)
    record = write_transfer(out, settings, matrix, examples, indices, data.labels, targets)
    for title, values in (("reached the intended target", matrix.reached), ("misclassified", matrix.misclassified)):
        output.say(f"\n{title} (rows: made on, columns: evaluated on):")
        output.say(figures.format_table(["made on"] + matrix.evaluated,
                                       [[s] + [f"{100 * v:.1f} %" for v in row]
                                        for s, row in zip(matrix.sources, values)]))
    output.say("files: " + ", ".join(record["files"].values()))
    output.result(record)


def _check_attack_options(attack: str, target: str) -> None:
    """--eps only for a bounded attack, each criterion only for the attacks that support it: otherwise exit 2."""
    entry = REGISTRY[attack]
    if not entry.bounded and click.get_current_context().get_parameter_source("eps").name not in ("DEFAULT",
                                                                                                  "DEFAULT_MAP"):
        raise click.BadParameter(f"--eps only applies to the attacks bounded by it ({', '.join(names(bounded=True))};"
                                 f" --attack {attack} has no budget)", param_hint="--eps")
    if target == "untargeted" and not entry.untargeted:
        can = ", ".join(name for name, e in REGISTRY.items() if e.untargeted)
        raise click.BadParameter(f"expected a target rule for --attack {attack} (untargeted: {can} only)",
                                 param_hint="--target")
    if target != "untargeted" and not entry.targeted:
        raise click.BadParameter(f"expected --target untargeted for --attack {attack}, which supports only the "
                                 "untargeted criterion", param_hint="--target")


def _load_models(sources, others, no_verify, output) -> tuple[dict, list]:
    """Every network once by its path (the examples' sources first), all taking the same input shape."""
    from advmnist.cli.options import load_model
    from advmnist.fileio import display_path

    models, source_names = {}, []
    for k, path in enumerate((*sources, *others)):
        model = load_model(path, no_verify, output)
        name = display_path(model.path)
        models.setdefault(name, model)
        if k < len(sources) and name not in source_names:
            source_names.append(name)
    check_same_input_shape(models.values(), "--evaluate-on")
    if len(models) < 2:
        raise click.BadParameter(f"expected at least two different networks in --model and --evaluate-on, got only "
                                 f"{name}: a transfer matrix compares the networks", param_hint="--evaluate-on")
    return models, source_names
