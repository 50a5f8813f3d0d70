"""``advmnist immunize``: adversarial training against universal noise, or against PGD (per image)."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from advmnist.cli.options import (Output, config_option, data_dir_option, finite, json_option, load_model,
                                  model_option, out_option, progress_enabled, seed_option, translate_errors)
from advmnist.cli.immunize_pgd import PGD_ONLY, immunize_pgd, pgd_options
from advmnist.cli.universal import checked_noise, noise_file_option, noise_options
from advmnist.defences.universal_immunization import SCHEDULES, ImmunizeSettings
from advmnist.tfcompat import PRECISIONS
from advmnist.model.training import MAX_SHIFT
from advmnist.experiments.universal import TARGET_CHOICES, UniversalSettings, target_list

DEFAULTS = ImmunizeSettings()
#: options that only mean something for one adversary
UNIVERSAL_ONLY = ("target", "schedule", "rounds", "train_steps", "refresh_every", "refresh_steps", "replay",
                  "noise_steps", "noise_limit", "l2_weight", "noise_file")


@click.command(short_help="Adversarial training against universal noise or PGD.")
@config_option("configs/reference-immunize.toml")
@click.option("--against", type=click.Choice(["universal", "pgd"]), default="universal", show_default=True,
              help="The adversary: one universal noise per target (the reference's experiment), or per-image PGD "
                   "examples (Madry et al.'s adversarial training, a real per-image defence).")
@pgd_options
@click.option("--target", type=click.Choice(TARGET_CHOICES), default="3", show_default=True,
              help="Class of the universal noise to become immune to; `all` for every class.")
@click.option("--schedule", type=click.Choice(SCHEDULES), default=DEFAULTS.schedule, show_default=True,
              help="With --target all: all rounds of target 0, then 1, ... (sequential, the reference's way) "
                   "or every target within each round (interleaved).")
@click.option("--rounds", type=click.IntRange(1, 1000), default=DEFAULTS.rounds, show_default=True,
              help="Rounds of (fresh noise, training) per target.")
@click.option("--train-steps", type=click.IntRange(min=0), default=DEFAULTS.train_steps, show_default=True,
              help="Network training steps (Adam 1e-4, batches of 64) per round and target.")
@click.option("--clean-fraction", type=click.FloatRange(0, 1, max_open=True), callback=finite,
              default=DEFAULTS.clean_fraction, show_default=True,
              help="Fraction of each training batch left without noise, so clean accuracy holds (with --against "
                   "pgd the default is 0: every image attacked, as Madry et al.).")
@click.option("--refresh-every", type=click.IntRange(min=0), default=DEFAULTS.refresh_every, show_default=True,
              help="During training, re-optimize the noise every N network steps (0: never, the reference's "
                   "way: one fixed noise per round).")
@click.option("--refresh-steps", type=click.IntRange(min=0), default=DEFAULTS.refresh_steps, show_default=True,
              help="Noise steps per refresh, continuing from the current noise.")
@click.option("--replay/--no-replay", default=DEFAULTS.replay, show_default=True,
              help="Half of the noisy images get an earlier noise (of the targets being trained), "
                   "so the network does not forget them.")
@click.option("--shift", type=click.IntRange(0, MAX_SHIFT), metavar="N", default=DEFAULTS.shift, show_default=True,
              help="Training images moved by a random offset of up to N pixels, as `train --shift` (0: off, the "
                   "reference's recipe).")
@click.option("--precision", type=click.Choice(PRECISIONS), default=DEFAULTS.precision, show_default=True,
              help="As `train --precision`: auto is bf16 on a CPU with native bfloat16 and no GPU, else fp32.")
@noise_options("--noise-steps")
@seed_option(DEFAULTS.seed, "Seeds the noises, the training batches and dropout.")
@noise_file_option("Start from a saved noise (.npy of `advmnist universal`, one per target) instead of a fresh "
                   "one; it is also measured before and after.")
@model_option
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the immunized network goes (a new run).  "
                   "[default: runs/cnn-immune-TARGET, or runs/cnn-immune-all-SCHEDULE; with --against pgd "
                   "runs/cnn-pgd-epsEPS, cnn-trades-epsEPS, ...]")
@click.option("--overwrite", is_flag=True, help="Move an existing run in --run-dir aside (RUN_DIR.old-TIME).")
@out_option("Folder for the accuracy figure and the metrics .json.")
@data_dir_option
@json_option
@translate_errors
def immunize(against, target, schedule, rounds, train_steps, clean_fraction, refresh_every, refresh_steps, replay,
             shift, precision, noise_steps, noise_limit, l2_weight, seed, noise_file, model_path, no_verify, run_dir,
             overwrite, out, data_dir, json_mode, **pgd) -> None:
    """Adversarial training against universal noise (or PGD): make the network immune to it.

    Each round (a) optimizes a universal noise for the target against the current
    network and (b) trains the network (from its run's checkpoint, dropout on) on
    training images with that noise and their true labels, some left clean. After
    every round it reports clean test accuracy, accuracy under the noise it trained
    on, and under a freshly optimized noise: the honest measure of immunity.

    The immunized network is saved as a new run (checkpoint, model.pb, model.json
    recording what it was immunized against); the original is never touched. Ctrl-C
    once training has begun saves the network as it is (marked interrupted) and the
    finished rounds in <name>_partial.json beside where <name>.json would go.

    With --against pgd every training batch is replaced by adversarial examples in the
    L-infinity eps-ball against the network as it is (PGD, or --attack fgsm-rs; trained on
    their cross-entropy, or --loss trades), for --epochs epochs from the run's checkpoint
    (or --from-scratch); clean accuracy and accuracy under PGD are logged after every
    epoch. Ctrl-C keeps a state that --resume continues. Measure the result with
    `advmnist robustness --model RUN_DIR`.

    \b
    Writes to --out (default assets/), <name> being e.g. immunize_3_rounds2 or
    immunize_all_interleaved_rounds4 (_fixed without refresh, _noreplay without replay),
    or immunize_pgd_eps0.1 (immunize_trades_eps0.3, immunize_fgsm-rs_eps0.3_scratch, ...):
      <name>.png    accuracy under fresh noise, per target, before, after each round, at the end
                    (PGD: clean and robust accuracy after every epoch)
      <name>.json   every measurement
    """
    from advmnist import fileio
    from advmnist.model.runs import run_dir_lock

    output = Output(json_mode)
    context = click.get_current_context()
    unused = UNIVERSAL_ONLY if against == "pgd" else PGD_ONLY
    given = [name for name in unused if context.get_parameter_source(name).name not in ("DEFAULT", "DEFAULT_MAP")]
    if given:
        flag = "--" + given[0].replace("_", "-")
        raise click.BadParameter(f"{flag} only applies to --against {'pgd' if against == 'universal' else 'universal'}",
                                 param_hint=flag)
    if against == "pgd":
        shared = {"clean_fraction": clean_fraction, "shift": shift, "precision": precision, "seed": seed}
        return immunize_pgd(pgd, shared, model_path, no_verify, run_dir, overwrite, out, data_dir, output)
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


def immunize_universal(settings: ImmunizeSettings, target: str, given, model_path, no_verify, run_dir, overwrite, out,
                       data_dir, output: Output) -> None:
    """``immunize`` (against universal noise): rounds of noise and training, saved as a new run."""
    from advmnist.report import figures
    from advmnist.experiments import results
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
        partial = results.write_immunize_partial(out, stem, stop, base_model=model.path, settings=settings)
        where = f" in round {stop.phase[0]}, target {stop.phase[1]}" if stop.phase else " during the final measurements"
        click.echo(f"\nInterrupted{where} after {len(stop.history)} finished phase(s). The network as it was is "
                   f"saved in {run_dir} (model.json says interrupted); the finished phases are in {partial}.",
                   err=True)
        sys.exit(130)
    title = (f"immunizing against target {target}" if target != "all" else f"immunizing against all ten targets "
             f"({schedule})") + f", {rounds} round(s)"
    record = results.write_immunize(out, stem, result, run_dir=run_dir, base_model=model.path, settings=settings,
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
