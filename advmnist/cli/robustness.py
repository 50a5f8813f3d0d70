"""``advmnist robustness``: robust accuracy against eps, one curve per model (PGD, AutoAttack, ...)."""
from __future__ import annotations

import sys
from pathlib import Path

import click
import numpy as np

from advmnist.cli.options import (TARGET_RULE_CHOICES, Output, check_range, check_same_input_shape, config_option,
                                  data_dir_option, json_option, no_verify_option, out_option, progress_enabled,
                                  range_options, renamed_option, seed_option, select_shard, shard_option, shard_out,
                                  split_option, take_renamed, translate_errors)
from advmnist.attacks.registry import REGISTRY, names
from advmnist.experiments.robustness import RobustnessSettings
from advmnist.attacks.norms import L2, Linf

DEFAULTS = RobustnessSettings()
#: the attacks that work within a budget eps, as the registry lists them
BOUNDED = {name: REGISTRY[name] for name in names(bounded=True)}


@click.command(short_help="Robust accuracy against eps under PGD or AutoAttack, one curve per model.")
@config_option()
@click.option("--attack", type=click.Choice(list(BOUNDED)), default=DEFAULTS.attack, show_default=True,
              help="The attack: " + "; ".join(f"{name}: {entry.description}" for name, entry in BOUNDED.items())
                   + ".")
@click.option("--norm", type=click.Choice([Linf.name, L2.name]), default=DEFAULTS.norm, show_default=True,
              help="The attacker's ball: L-infinity (every pixel changes by at most eps) or L2.")
@click.option("--eps", "eps_text", default=None,
              help="Comma-separated budgets.  [default: 0,0.05,0.1,0.15,0.2,0.25,0.3 for linf, "
                   "0,0.5,1,1.5,2,2.5,3 for l2]")
@range_options(DEFAULTS)
@split_option(DEFAULTS.split)
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="The attack's iterations: PGD steps per start, each of 0.1 eps (Madry et al. took eps/30: "
                   "weaker here); for auto, APGD-CE's, every member's budget scaled alike (100: AutoAttack's "
                   "standard version; 10: APGD and FAB 10 iterations, Square 500 queries).  "
                   "[default: the attack's own: " + ", ".join(f"{name} {entry.default_budget}"
                                                              for name, entry in BOUNDED.items()) + "]")
@click.option("--starts", "restarts", type=click.IntRange(1, 100), default=None,
              help="Random starts per image while it is still classified correctly (FAB-T: per target class), "
                   "for the attacks that take them: " + ", ".join(n for n, e in BOUNDED.items()
                                                                  if e.accepts("restarts")) + ".  [default: 1]")
@renamed_option("--restarts", "--starts", "old_restarts", type=click.IntRange(1, 100))
@click.option("--target", type=click.Choice(TARGET_RULE_CHOICES + ("untargeted",)), default=None,
              help="untargeted: any wrong class counts; or a target (9-d, d+1, random or a class) to attack "
                   "towards (PGD only), the curve being then the share not read as the target.  "
                   "[default: untargeted]")
@renamed_option("--targeted", "--target", "old_target", type=click.Choice(TARGET_RULE_CHOICES))
@seed_option(DEFAULTS.seed, "Seeds the random starts (and random targets).")
@click.option("--model", "model_paths", type=click.Path(path_type=Path),
              multiple=True, help="A run folder or model.pb; repeat for several models, one curve each.  "
                                  "[default: runs/cnn]")
@no_verify_option
@out_option("Folder for robustness_<norm>[_<attack>].png / .json / .npz.")
@shard_option
@data_dir_option
@json_option
@translate_errors
def robustness(attack, norm, eps_text, count, offset, split, steps, restarts, old_restarts, target, old_target, seed,
               model_paths, no_verify, out, shard, data_dir, json_mode) -> None:
    """Robust accuracy against eps: how strong is each network against a per-image attacker?

    For every budget eps, the attack (--attack) attacks each image within the eps-ball;
    the robust accuracy is the share still classified correctly (an image misclassified
    already is robust at no eps; one fooled at an eps is fooled at every larger one).

    auto, the default, is AutoAttack's standard ensemble (Croce & Hein 2020), the
    measure defences are judged by: APGD-CE, APGD-T, FAB-T and Square in turn, each on
    the images the others left standing; the robust accuracy after each member is
    printed per eps, with a warning when Square (no gradient) fools more than 1 % of the
    images the gradient attacks missed (a sign of gradient masking). pgd (Madry et al.
    2018: a random start, steps of 0.1 eps along the signed (linf) or normalized (l2)
    gradient, each projected onto the ball and valid pixels) is much quicker but only an
    upper bound, several points too kind (docs/results.md). Every example is re-checked
    by a plain forward pass; the count of unconfirmed verdicts is printed (it must be 0).

    If `advmnist minimal --target untargeted` ran on the same model and images with
    its results in --out, its curve (the smallest perturbation of each image) is drawn
    beside the attack's: no attack can fool an image below its minimal norm.

    \b
    Writes to --out (default assets/), <attack> left out for pgd:
      robustness_<norm>_<attack>.png    robust accuracy against eps, one curve per model
      robustness_<norm>_<attack>.json   the table, per model and eps
      robustness_<norm>_<attack>.npz    per image: the smallest eps that fooled it, that
                                        example, which member broke it at which step

    \b
    Examples:
      advmnist robustness --count 100             # linf AutoAttack (standard), 100 test images
      advmnist robustness --attack pgd --starts 3  # the quick PGD bound, 1000 test images
      advmnist robustness --norm l2 --model runs/cnn --model runs/cnn-immune-3
      advmnist robustness --shard K/N   # one of N processes; then `advmnist merge assets/shard-*`
    """
    from advmnist.cli.options import load_model
    from advmnist.report import figures

    output = Output(json_mode)
    settings = _settings_from_options(attack, norm, eps_text, count, offset, split, steps, restarts, old_restarts,
                                      target, old_target, seed)
    check_range(split, offset, count)
    _say_if_default_attack(output)
    select_shard(shard, count)  # an empty shard is refused before anything is loaded
    models = [load_model(path, no_verify, output) for path in (model_paths or (None,))]
    check_same_input_shape(models, "--model")
    positions, indices, images, labels, targets = _images(settings, shard, data_dir, output)
    out = shard_out(out, shard)
    shard_record = shard.record(count) if shard else None
    figures.import_in_background()
    curves = []
    try:
        for model in models:
            curves.append(_measure(model, settings, images, labels, targets, positions, shard, output))
    except KeyboardInterrupt:
        _keep_measured(curves, len(models), out, settings, indices, labels, shard_record)
    output.result(_write_and_say(output, out, settings, curves, indices, labels, shard_record))


def _say_if_default_attack(output) -> None:
    """The default attack is slow: a user who did not choose it learns what it is and what is quicker."""
    if click.get_current_context().get_parameter_source("attack") == click.core.ParameterSource.DEFAULT:
        output.say("attack: AutoAttack's standard ensemble, the default (minutes per 100 images on a CPU; "
                   "--attack pgd is a quick upper bound)")


def _write_and_say(output, out, settings, curves, indices, labels, shard_record) -> dict:
    """The result set (with the minimal-norm curve of a matching `minimal` run), its tables and warnings."""
    from advmnist.experiments.minimal import matching_minimal
    from advmnist.experiments.robustness_files import write_robustness
    minimal = (matching_minimal(out, settings.norm, indices, [c.model for c in curves])
               if settings.target is None else {})
    record = write_robustness(out, settings, curves, indices, labels, minimal, shard=shard_record)
    _say_tables(output, settings, curves)
    for warning in record["warnings"]:
        output.say(f"warning: {warning}")
    output.say("files: " + ", ".join(record["files"].values()))
    return record


def _keep_measured(curves, total, out, settings, indices, labels, shard_record):
    """After Ctrl-C: the models already measured are written beside (not over) earlier results; exit 130."""
    from advmnist.experiments.robustness_files import write_robustness

    if not curves:
        raise KeyboardInterrupt
    partial = write_robustness(out, settings, curves, indices, labels, {}, suffix="_partial",
                                       shard=shard_record)
    click.echo(f"\nInterrupted: {len(curves)} of {total} models were measured; their curves are in "
               f"{partial['files']['figure']} and beside it.", err=True)
    sys.exit(130)


def _settings_from_options(attack, norm, eps_text, count, offset, split, steps, restarts, old_restarts, target,
                           old_target, seed) -> RobustnessSettings:
    """The settings the options ask for (old spellings taken with a note); a bad value: exit 2."""
    from advmnist.errors import InvalidInput
    from advmnist.experiments.robustness import DEFAULT_EPS, parse_eps

    restarts = take_renamed(restarts, old_restarts, "robustness", "--restarts", "--starts",
                            "it counts starts, as minimal --starts")
    target = take_renamed(target, old_target, "robustness", "--targeted", "--target", "as in every other command")
    target = None if target == "untargeted" else target
    try:
        eps = parse_eps(eps_text, norm) if eps_text else DEFAULT_EPS[norm]
    except InvalidInput as err:
        raise click.BadParameter(str(err), param_hint="--eps") from err
    return _settings(attack, norm, eps, count, offset, split, steps, restarts, seed, target)


def _images(settings: RobustnessSettings, shard, data_dir, output):
    """This shard's selection: positions, indices, images, labels and targets (None: untargeted)."""
    from advmnist.attacks import choose_targets
    from advmnist.data.mnist import load_split
    from advmnist.errors import InvalidInput

    offset, count = settings.offset, settings.count
    data = load_split(settings.split, data_dir, log=output.say, rows=slice(offset, offset + count))
    indices = np.arange(offset, offset + count)
    targets = None
    if settings.target is not None:
        try:
            targets = choose_targets(data.labels, settings.target, seed=settings.seed, indices=indices)
        except InvalidInput as err:
            raise click.BadParameter(str(err), param_hint="--target") from err
    return select_shard(shard, count, indices, data.images, data.labels, targets)


def _settings(attack, norm, eps, count, offset, split, steps, restarts, seed, target) -> RobustnessSettings:
    """The settings with the attack's defaults; a norm, --starts or --target it does not take: exit 2."""
    from advmnist.attacks.registry import get_entry
    from advmnist.errors import InvalidInput

    entry = get_entry(attack)
    if norm not in entry.norms:
        raise click.BadParameter(f"expected a norm that --attack {attack} supports ({', '.join(entry.norms)}), "
                                 f"got {norm!r}", param_hint="--norm")
    if target is not None and not entry.targeted:
        raise click.BadParameter(f"--attack {attack} supports only the untargeted criterion; expected no "
                                 "--target (--attack pgd takes one)", param_hint="--target")
    if restarts is not None and not entry.accepts("restarts"):
        raise click.BadParameter(f"expected no --starts with --attack {attack} (it has no random starts; "
                                 "--attack pgd takes them)", param_hint="--starts")
    try:
        return RobustnessSettings(norm=norm, eps=eps, count=count, offset=offset, split=split, attack=attack,
                                  steps=steps, restarts=restarts, seed=seed, target=target).resolved()
    except InvalidInput as err:
        raise click.BadParameter(str(err), param_hint="--attack") from err


def _measure(model, settings, images, labels, targets, positions, shard, output):
    """One model's curve, each of its verdicts re-checked by a plain forward pass in a graph of its own."""
    from advmnist.experiments.robustness import robustness_curve
    from advmnist.fileio import display_path

    name = display_path(model.path)
    output.say(f"{name}: {settings.attack} {settings.norm}, {len(images)} images" + (f" (shard {shard})" if shard
                                                                                       else "")
               + f", eps {', '.join(f'{e:g}' for e in settings.eps)}")
    curve = robustness_curve(model.logits, images, labels, settings, model=name, targets=targets,
                             progress=progress_enabled(), positions=positions, population=settings.count)
    curve.recheck(model.predict_proba, images, labels, targets, norm=settings.norm)
    summary = curve.summary()
    output.say(f"  {curve.seconds:.1f} s; re-checked by a plain forward pass: {summary['examples']} examples, "
               f"{summary['unconfirmed']} verdicts unconfirmed; {summary['fools_8bit']} examples still fool as "
               "8-bit images")
    return curve


def _say_tables(output, settings, curves) -> None:
    """The robust accuracy per eps and model; for an ensemble, per model, after each member (AutoAttack's log)."""
    from advmnist.report import figures

    headers = ["eps"] + [c.model for c in curves]
    rows = [[f"{e:g}"] + [f"{100 * c.robust_accuracy[k]:.1f} %" for c in curves]
            for k, e in enumerate(settings.eps)]
    output.say("\nrobust accuracy" + (f" (not read as the {settings.target} target)" if settings.target else "")
               + f" under {settings.attack}:")
    output.say(figures.format_table(headers, rows))
    for curve in curves:
        if len(curve.members) < 2:
            continue
        output.say(f"\n{curve.model}: robust accuracy after each member, in turn (each on the images still "
                   "standing; 'before': not fooled at a smaller eps):")
        table = curve.robust_accuracy_after()
        rows = [[f"{e:g}"] + [f"{100 * v:.1f} %" for v in table[k]] for k, e in enumerate(curve.eps)]
        output.say(figures.format_table(["eps", "before"] + [f"after {m}" for m in curve.members], rows))
        output.say("  seconds per member: " + ", ".join(f"{m} {s:.1f}" for m, s in zip(curve.members,
                                                                                        curve.member_seconds)))
