"""``advmnist immunize universal`` and ``advmnist immunize pgd``: adversarial training against universal
noise, or against PGD (per image). The old ``advmnist immunize [--against universal|pgd] ...`` still works for
one release, with a note."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from advmnist.cli.options import (Output, config_option, data_dir_option, finite, json_option, load_model,
                                  model_option, out_option, progress_enabled, seed_option, translate_errors)
from advmnist.cli.immunize_pgd import PGD_DEFAULTS, immunize_pgd, pgd_options
from advmnist.cli.universal import checked_noise, noise_file_option, noise_options
from advmnist.defences.universal_immunization import SCHEDULES, ImmunizeSettings
from advmnist.tfcompat import PRECISIONS
from advmnist.model.training import MAX_SHIFT
from advmnist.experiments.universal import TARGET_CHOICES, UniversalSettings, target_list

DEFAULTS = ImmunizeSettings()
#: the two defences, as subcommands
ADVERSARIES = ("universal", "pgd")


class ImmunizeGroup(click.Group):
    """``immunize universal|pgd``; the form of earlier versions, ``immunize [--against X] OPTIONS`` (X from the
    command line, or from ``against`` in a --config file's flat [immunize] table; universal if neither), runs
    subcommand X with a note on stderr."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        flags = [a for a in args if a == "--json"]  # `advmnist --json immunize pgd` puts it before the subcommand
        args = [a for a in args if a != "--json"]
        if args and args[0] in ("-h", "--help"):
            return super().parse_args(ctx, args)
        if not args or args[0] not in self.commands:
            args = _old_form(args)
        return super().parse_args(ctx, [args[0], *flags, *args[1:]])


class DefenceCommand(click.Command):
    """A subcommand of ``immunize`` that names its sibling when given one of the sibling's options."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as err:
            group = ctx.parent.command if ctx.parent is not None else immunize
            other = next((name for name, command in group.commands.items() if name != ctx.info_name
                          and any(err.option_name in getattr(o, "opts", ()) + getattr(o, "secondary_opts", ())
                                  for o in command.params)), None)
            if other is None:
                raise
            raise click.NoSuchOption(err.option_name, f"No such option {err.option_name} in `immunize "
                                     f"{ctx.info_name}`: it is an option of `advmnist immunize {other}`",
                                     ctx=ctx) from err


def _old_form(args: list[str]) -> list[str]:
    """``[--against X] OPTIONS`` as ``X OPTIONS``, with a deprecation note; exit 2 for an unknown X."""
    against, rest, k = None, [], 0
    while k < len(args):
        if args[k] == "--against" and k + 1 < len(args):
            against, k = args[k + 1], k + 2
            continue
        if args[k].startswith("--against="):
            against = args[k].split("=", 1)[1]
        else:
            rest.append(args[k])
        k += 1
    chosen = against or _config_against(rest) or "universal"
    if chosen not in ADVERSARIES:
        raise click.BadParameter(f"expected one of {', '.join(ADVERSARIES)}, got {chosen!r}", param_hint="--against")
    said = f"`immunize --against {against}`" if against else "`immunize` without a subcommand"
    click.echo(f"note: {said} is now `advmnist immunize {chosen}`; the old form will be removed in the next "
               "release", err=True)
    return [chosen, *rest]


def _config_against(args: list[str]) -> str | None:
    """``against`` in the flat [immunize] table of a --config file (the form of earlier versions), or the one
    subcommand whose table the file holds, if any."""
    from advmnist.errors import InvalidInput
    from advmnist.fileio import read_toml

    if "--config" not in args or args.index("--config") + 1 >= len(args):
        return None
    try:
        table = read_toml(Path(args[args.index("--config") + 1])).get("immunize")
    except (InvalidInput, OSError):
        return None  # the subcommand's --config says what is wrong with the file
    if not isinstance(table, dict):
        return None
    named = [name for name in ADVERSARIES if isinstance(table.get(name), dict)]  # [immunize.pgd] alone: pgd
    return table.get("against") or (named[0] if len(named) == 1 else None)


@click.group(cls=ImmunizeGroup, short_help="Adversarial training against universal noise or PGD.")
def immunize() -> None:
    """Adversarial training: make the network immune to an attack; two defences.

    \b
      advmnist immunize universal --target 3   # against the universal noise of a target (the reference's)
      advmnist immunize pgd --eps 0.3          # against per-image PGD examples (Madry et al.), a real defence

    Each saves the trained network as a new run; the original is never touched. Run
    `advmnist immunize universal --help` or `advmnist immunize pgd --help` for their options.
    (`advmnist immunize [--against universal|pgd] ...`, the form of earlier versions, still
    works for one release.)
    """


def training_options(defaults, seeds: str, run_dir_default: str):
    """The options both defences share: the training batches, the model, where the new run and the files go."""
    def apply(func):
        for option in reversed([
            click.option("--clean-fraction", type=click.FloatRange(0, 1, max_open=True), callback=finite,
                         default=defaults.clean_fraction, show_default=True,
                         help="Fraction of each training batch left without the adversary's change, so clean "
                              "accuracy holds."),
            click.option("--shift", type=click.IntRange(0, MAX_SHIFT), metavar="N", default=defaults.shift,
                         show_default=True, help="Training images moved by a random offset of up to N pixels, as "
                                                 "`train --shift` (0: off, the reference's recipe)."),
            click.option("--precision", type=click.Choice(PRECISIONS), default=defaults.precision,
                         show_default=True, help="As `train --precision`: auto is bf16 on a CPU with native "
                                                 "bfloat16 and no GPU, else fp32."),
            seed_option(defaults.seed, seeds),
            model_option,
            click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                         help=f"Where the trained network goes (a new run).  [default: {run_dir_default}]"),
            click.option("--overwrite", is_flag=True, help="Move an existing run in --run-dir aside "
                                                           "(RUN_DIR.old-TIME)."),
            out_option("Folder for the accuracy figure and the metrics .json."),
            data_dir_option,
            json_option,
        ]):
            func = option(func)
        return func
    return apply


@immunize.command("universal", cls=DefenceCommand,
                  short_help="Against the universal noise of a target (the reference's experiment).")
@config_option("configs/reference-immunize.toml")
@click.option("--target", type=click.Choice(TARGET_CHOICES), default="3", show_default=True,
              help="Class of the universal noise to become immune to; `all` for every class.")
@click.option("--schedule", type=click.Choice(SCHEDULES), default=DEFAULTS.schedule, show_default=True,
              help="With --target all: all rounds of target 0, then 1, ... (sequential, the reference's way) "
                   "or every target within each round (interleaved).")
@click.option("--rounds", type=click.IntRange(1, 1000), default=DEFAULTS.rounds, show_default=True,
              help="Rounds of (fresh noise, training) per target.")
@click.option("--train-steps", type=click.IntRange(min=0), default=DEFAULTS.train_steps, show_default=True,
              help="Network training steps (Adam 1e-4, batches of 64) per round and target.")
@click.option("--refresh-every", type=click.IntRange(min=0), default=DEFAULTS.refresh_every, show_default=True,
              help="During training, re-optimize the noise every N network steps (0: never, the reference's "
                   "way: one fixed noise per round).")
@click.option("--refresh-steps", type=click.IntRange(min=0), default=DEFAULTS.refresh_steps, show_default=True,
              help="Noise steps per refresh, continuing from the current noise.")
@click.option("--replay/--no-replay", default=DEFAULTS.replay, show_default=True,
              help="Half of the noisy images get an earlier noise (of the targets being trained), "
                   "so the network does not forget them.")
@noise_options("--noise-steps")
@noise_file_option("Start from a saved noise (.npy of `advmnist universal`, one per target) instead of a fresh "
                   "one; it is also measured before and after.")
@training_options(DEFAULTS, "Seeds the noises, the training batches and dropout.",
                  "runs/cnn-immune-TARGET, or runs/cnn-immune-all-SCHEDULE")
@translate_errors
def universal(target, schedule, rounds, train_steps, refresh_every, refresh_steps, replay, noise_steps,
              noise_limit, l2_weight, noise_file, clean_fraction, shift, precision, seed, model_path, no_verify,
              run_dir, overwrite, out, data_dir, json_mode) -> None:
    """Adversarial training against universal noise: make the network immune to it.

    Each round (a) optimizes a universal noise for the target against the current
    network and (b) trains the network (from its run's checkpoint, dropout on) on
    training images with that noise and their true labels, some left clean. After
    every round it reports clean test accuracy, accuracy under the noise it trained
    on, and under a freshly optimized noise: the honest measure of immunity.

    The immunized network is saved as a new run (checkpoint, model.pb, model.json
    recording what it was immunized against); the original is never touched. Ctrl-C
    once training has begun saves the network as it is (marked interrupted) and the
    finished rounds in <name>_partial.json beside where <name>.json would go.

    \b
    Writes to --out (default assets/), <name> being e.g. immunize_3_rounds2 or
    immunize_all_interleaved_rounds4 (_fixed without refresh, _noreplay without replay):
      <name>.png    accuracy under fresh noise, per target, before, after each round, at the end
      <name>.json   every measurement

    \b
    Example:
      advmnist immunize universal --target 3 --rounds 2 --model runs/cnn
    """
    from advmnist import fileio
    from advmnist.model.runs import run_dir_lock

    output = Output(json_mode)
    settings = ImmunizeSettings(rounds=rounds, train_steps=train_steps, clean_fraction=clean_fraction,
                                schedule=schedule, refresh_every=refresh_every, refresh_steps=refresh_steps,
                                replay=replay, shift=shift, precision=precision,
                                noise=UniversalSettings(steps=noise_steps, noise_limit=noise_limit,
                                                        l2_weight=l2_weight, seed=seed))
    run_dir = run_dir or settings.default_run_dir(target)
    fileio.check_writable_dir(run_dir, "--run-dir")
    given = checked_noise(noise_file, len(target_list(target)), noise_limit) if noise_file else None
    with run_dir_lock(run_dir):
        immunize_universal(settings, target, given, model_path, no_verify, run_dir, overwrite, out, data_dir, output)


@immunize.command("pgd", cls=DefenceCommand,
                  short_help="Against per-image PGD examples (Madry et al.'s adversarial training).")
@config_option("configs/defence-linf0.3.toml")
@pgd_options
@training_options(PGD_DEFAULTS, "Seeds the initial weights (--from-scratch), the batches, the attack's random "
                                "starts and dropout.", "runs/cnn-pgd-epsEPS, cnn-trades-epsEPS, ...")
@translate_errors
def pgd(clean_fraction, shift, precision, seed, model_path, no_verify, run_dir, overwrite, out, data_dir, json_mode,
        **options) -> None:
    """Adversarial training against PGD: a network that resists per-image attacks within eps.

    Every training batch is replaced by adversarial examples in the L-infinity
    eps-ball against the network as it is (PGD, or --attack fgsm-rs; trained on their
    cross-entropy, or --loss trades), for --epochs epochs from the run's checkpoint (or
    --from-scratch); clean accuracy and accuracy under PGD on monitor images are logged
    after every epoch, with a progress bar. Ctrl-C keeps a state that --resume
    continues. At the end, AutoAttack at eps/3, 2 eps/3 and eps (--evaluate).

    \b
    Writes to --out (default assets/), <name> being e.g. immunize_pgd_eps0.3
    (immunize_trades_eps0.3, immunize_fgsm-rs_eps0.3_scratch, ...):
      <name>.png    clean and robust accuracy after every epoch
      <name>.json   every measurement
      robustness_linf_auto.*   the final AutoAttack (as `advmnist robustness --attack auto` writes it)

    \b
    Example (the recipe measured in the README):
      advmnist immunize pgd --config configs/defence-linf0.3.toml
    """
    shared = {"clean_fraction": clean_fraction, "shift": shift, "precision": precision, "seed": seed}
    immunize_pgd(options, shared, model_path, no_verify, run_dir, overwrite, out, data_dir, Output(json_mode))


universal.config_table = ("immunize", "universal")  # [immunize.universal] in a --config file
pgd.config_table = ("immunize", "pgd")


def immunize_universal(settings: ImmunizeSettings, target: str, given, model_path, no_verify, run_dir, overwrite, out,
                       data_dir, output: Output) -> None:
    """``immunize`` (against universal noise): rounds of noise and training, saved as a new run."""
    from advmnist.report import figures
    from advmnist.defences.universal_immunization_files import write_immunize, write_immunize_partial
    from advmnist.defences import universal_immunization
    from advmnist.defences.universal_immunization import ImmunizeInterrupted

    targets = target_list(target)
    schedule, rounds = settings.schedule, settings.rounds
    model, train_split, test = new_run_inputs(model_path, no_verify, run_dir, overwrite, data_dir, output)
    stem = settings.file_stem(target)
    try:
        result = universal_immunization.immunize(model, train_split, test, targets, settings,
                                                 progress=progress_enabled(), log=output.say, out_dir=run_dir,
                                                 given_noise=given)
    except ImmunizeInterrupted as stop:
        partial = write_immunize_partial(out, stem, stop, base_model=model.path, settings=settings)
        where = f" in round {stop.phase[0]}, target {stop.phase[1]}" if stop.phase else " during the final measurements"
        click.echo(f"\nInterrupted{where} after {len(stop.history)} finished phase(s). The network as it was is "
                   f"saved in {run_dir} (model.json says interrupted); the finished phases are in {partial}.",
                   err=True)
        sys.exit(130)
    title = (f"immunizing against target {target}" if target != "all" else f"immunizing against all ten targets "
             f"({schedule})") + f", {rounds} round(s)"
    record = write_immunize(out, stem, result, run_dir=run_dir, base_model=model.path, settings=settings,
                                    title=title)
    rows = [[t, f"{result.before[t]:.2%}", f"{result.after_own_training[t]:.2%}", f"{result.after[t]:.2%}",
             f"{100 * result.lost[t]:+.1f} pp"] for t in targets]
    output.say(f"clean test accuracy: {result.clean_before:.2%} before, {result.clean_after:.2%} after")
    output.say("test accuracy under a freshly optimized noise:")
    output.say(figures.format_table(["target", "before", "after its own training", "at the end",
                                    "lost since its own training"], rows))
    for t in result.given_before:
        output.say(f"under the given noise for {t}: {result.given_before[t]:.2%} before, "
                   f"{result.given_after[t]:.2%} after")
    output.say(f"immunized network: {run_dir / 'model.pb'}; figure: {record['figure']}")
    output.result(record)


def new_run_inputs(model_path, no_verify, run_dir: Path, overwrite: bool, data_dir, output: Output, *,
                   from_scratch: bool = False):
    """The model to train from (its run must have a checkpoint; None ``from_scratch``), MNIST, and ``run_dir``
    ready for the new run."""
    from advmnist.data.mnist import load_train_test
    from advmnist.defences.universal_immunization import checkpoint_of
    from advmnist.model.runs import prepare_run_dir

    model = None if from_scratch else load_model(model_path, no_verify, output)
    if model is not None:
        checkpoint_of(model)  # fails early if the run has no checkpoint to train from
        model_dir, new_dir = model.path.parent.resolve(), run_dir.resolve()
        if new_dir in (model_dir, *model_dir.parents) or model_dir in new_dir.parents:
            raise click.BadParameter("expected a new folder for the trained network, not the model's run "
                                     "or a folder holding it", param_hint="--run-dir")
    train_split, test = load_train_test(data_dir, output.say)
    note = prepare_run_dir(run_dir, resume=False, overwrite=overwrite, command="immunize")
    if note:
        output.say(note)
    return model, train_split, test
