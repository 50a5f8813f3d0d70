"""``advmnist immunize pgd``: its options and its path (adversarial training in the eps-ball)."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from advmnist.cli.options import OneEps, Output, finite, progress_enabled
from advmnist.defences.losses import ATTACKS, LOSSES
from advmnist.defences.pgd_training import PGDTrainingSettings
from advmnist.attacks.norms import Linf

PGD_DEFAULTS = PGDTrainingSettings()
#: the settings that the command line can set, besides those both adversaries share
PGD_FIELDS = ("eps", "epochs", "eps_ramp", "attack", "pgd_steps", "step_size", "loss", "beta", "guard",
              "from_scratch")
#: The final AutoAttack's iterations (None: the standard version's; tests make it short)
EVALUATION_STEPS = None
#: options both adversaries have, which are settings of the PGD training too
SHARED_FIELDS = ("clean_fraction", "shift", "precision", "seed")


def pgd_options(func):
    """The options of ``immunize pgd`` that ``immunize universal`` does not have."""
    for option in reversed([
        click.option("--eps", type=OneEps("the network is trained against one budget (its ramp: --eps-ramp)"),
                     callback=finite, default=PGD_DEFAULTS.eps,
                     show_default=True, help="The L-infinity budget of the training attack."),
        click.option("--epochs", type=click.FloatRange(0, 1000, min_open=True), callback=finite,
                     default=PGD_DEFAULTS.epochs, show_default=True,
                     help="Passes over the 60,000 training images (Adam from 1e-3, cosine "
                          "decay)."),
        click.option("--eps-ramp", type=click.FloatRange(0, 1000), callback=finite, metavar="EPOCHS",
                     default=PGD_DEFAULTS.eps_ramp, show_default=True,
                     help="Eps rises linearly over the first EPOCHS epochs and is --eps from "
                          "their last step on (0: --eps from the first step). At most --epochs."),
        click.option("--attack", type=click.Choice(ATTACKS), default=PGD_DEFAULTS.attack, show_default=True,
                     help="The training attack: PGD (Madry et al.), or one FGSM step from a "
                          "random start (fgsm-rs, Wong et al. 2020: about --pgd-steps times cheaper per step)."),
        click.option("--pgd-steps", type=click.IntRange(1, 1000), default=PGD_DEFAULTS.pgd_steps, show_default=True,
                     help="Steps of the training PGD (with --attack fgsm-rs: of the PGD that "
                          "monitors robust accuracy after every epoch)."),
        click.option("--step-size", type=click.FloatRange(0, 10, min_open=True), callback=finite, default=None,
                     show_default="2.5 / --pgd-steps; 1.25 with --attack fgsm-rs",
                     help="The training attack's step, relative to --eps."),
        click.option("--loss", type=click.Choice(LOSSES), default=PGD_DEFAULTS.loss, show_default=True,
                     help="Cross-entropy on the attack's examples (pgd, Madry et al.), or "
                          "TRADES: CE(f(x), y) + beta KL(f(x) || f(x')), x' maximizing the KL (Zhang et al. 2019)."),
        click.option("--beta", type=click.FloatRange(min=0), callback=finite, default=PGD_DEFAULTS.beta,
                     show_default=True, help="With --loss trades: the weight of the KL term (6: Zhang et al.'s "
                                             "MNIST model)."),
        click.option("--guard/--no-guard", default=PGD_DEFAULTS.guard, show_default=True,
                     help="With --attack fgsm-rs: after an epoch whose PGD accuracy fell by more than 20 points "
                          "while its FGSM accuracy did not fall (catastrophic overfitting), go back to the weights "
                          "and optimizer state of the epoch before and multiply the FGSM step by 0.8."),
        click.option("--from-scratch", is_flag=True,
                     help="Start from fresh initial weights (same network) instead of --model's."),
        click.option("--evaluate", type=click.IntRange(0, 10000), default=100, show_default=True, metavar="COUNT",
                     help="After training, AutoAttack (`robustness --attack auto`, its standard "
                          "version) at eps/3, 2 eps/3 and eps on the first COUNT test images, written to --out; 0: "
                          "skip. On 2 idle CPU cores it costs a robust network about 2 s per image at each eps."),
        click.option("--resume", is_flag=True,
                     help="Continue the interrupted training in --run-dir where it stopped "
                          "(its settings, step, optimizer state and random draws): it ends as an uninterrupted "
                          "run would have."),
    ]):
        func = option(func)
    return func


def given(context: click.Context, name: str) -> bool:
    """Whether option ``name`` was set on the command line or in a --config file."""
    return context.get_parameter_source(name).name not in ("DEFAULT",)


def pgd_settings(options: dict, shared: dict) -> PGDTrainingSettings:
    """The settings the command line asks for: exit 2 for an option that does not apply."""
    context = click.get_current_context()
    for name, applies, needed in (("beta", options["loss"] == "trades", "--loss trades"),
                                  ("guard", options["attack"] == "fgsm-rs", "--attack fgsm-rs")):
        if given(context, name) and not applies:
            raise click.BadParameter(f"only applies with {needed}", param_hint=f"--{name}")
    refused, why = (), ""
    if options["resume"]:
        refused, why = ("model_path", "overwrite"), "--resume continues the interrupted run from its saved state"
    elif options["from_scratch"]:
        refused, why = ("model_path",), "--from-scratch starts from fresh weights"
    for name in refused:
        if given(context, name):
            raise click.BadParameter(f"does not apply: {why}", param_hint="--" + name.split("_")[0])
    return PGDTrainingSettings(**{name: options[name] for name in PGD_FIELDS}, **shared)


def resumed_settings(asked: PGDTrainingSettings, run_dir: Path) -> PGDTrainingSettings:
    """The settings of the interrupted run in ``run_dir``; exit 2 if the command line asks for others."""
    from advmnist.model.runs import read_resume_state

    recorded = PGDTrainingSettings(**read_resume_state(run_dir)["settings"])
    context = click.get_current_context()
    for name in PGD_FIELDS + SHARED_FIELDS:
        if given(context, name) and getattr(asked, name) != getattr(recorded, name):
            flag = "--" + name.replace("_", "-")
            raise click.BadParameter(f"expected the interrupted run's {getattr(recorded, name)} (--resume continues "
                                     f"it as it was), got {getattr(asked, name)}", param_hint=flag)
    return recorded


def immunize_pgd(options: dict, shared: dict, model_path, no_verify, run_dir, overwrite, out, data_dir,
                 output: Output) -> None:
    """``immunize pgd``: adversarial training (new, or ``--resume``d), saved as a new run."""
    from advmnist.model.runs import run_dir_lock

    settings = pgd_settings(options, shared)
    run_dir = run_dir or settings.default_run_dir()
    with run_dir_lock(run_dir):  # a second process on the same folder is refused until this one ends
        if options["resume"]:
            settings = resumed_settings(settings, run_dir)
        record = train_and_report(settings, options["resume"], model_path, no_verify, run_dir, overwrite, out,
                                  data_dir, output)
    if options["evaluate"]:
        record["autoattack"] = final_autoattack(settings, run_dir, options["evaluate"], out, data_dir, output)
    output.result(record)


def train_and_report(settings: PGDTrainingSettings, resume: bool, model_path, no_verify, run_dir: Path, overwrite,
                     out, data_dir, output: Output) -> None:
    """Train (a new run, or the interrupted one in ``run_dir``), then write the figure and the .json."""
    from advmnist import fileio
    from advmnist.defences.pgd_training import write_pgd_training
    from advmnist.cli.immunize import new_run_inputs
    from advmnist.data.mnist import load_train_test
    from advmnist.defences.pgd_training import PGDTrainingInterrupted, train_against_pgd
    from advmnist.model.runs import RunDirError, has_resume_state, read_resume_state

    fileio.check_writable_dir(run_dir, "--run-dir")
    if resume:
        model, base_model = None, read_resume_state(run_dir)["base_model"]
        train_split, test = load_train_test(data_dir, output.say)
        output.say(f"resuming the training in {run_dir}")
    else:
        if has_resume_state(run_dir) and not overwrite:
            raise RunDirError(f"{run_dir} holds an interrupted training; continue it with `advmnist immunize "
                              f"pgd --resume --run-dir {run_dir}`, or pass --overwrite to move it aside")
        model, train_split, test = new_run_inputs(model_path, no_verify, run_dir, overwrite, data_dir, output,
                                                  from_scratch=settings.from_scratch)
        base_model = model.path if model is not None else None
    try:
        result = train_against_pgd(model, train_split, test, settings, out_dir=run_dir, progress=progress_enabled(),
                                   log=output.say, resume=resume)
    except PGDTrainingInterrupted as stop:
        click.echo(f"\nInterrupted after step {stop.step} of {stop.total}: the network as it was is saved in "
                   f"{run_dir} (model.json says interrupted), with the state to go on from. Continue with "
                   f"`advmnist immunize pgd --resume --run-dir {run_dir}`.", err=True)
        sys.exit(130)
    record = write_pgd_training(out, settings.file_stem(), result, run_dir=run_dir, base_model=base_model,
                                        settings=settings)
    output.say(f"clean test accuracy {result.clean_before:.2%} -> {result.clean_after:.2%}; under PGD (eps "
               f"{settings.eps:g}, first {settings.monitor} test images) {result.robust_before:.2%} -> "
               f"{result.robust_after:.2%}; {result.seconds:.0f} s")
    output.say(f"trained network: {run_dir / 'model.pb'}; measure it with "
               f"`advmnist robustness --attack auto --model {run_dir}`; figure: {record['figure']}")
    return record


def final_autoattack(settings: PGDTrainingSettings, run_dir: Path, count: int, out, data_dir, output: Output) -> dict:
    """`robustness --attack auto` on the trained network at eps/3, 2 eps/3 and eps (0.1, 0.2, 0.3 for eps 0.3), on
    the first ``count`` test images; its record (the files are written to ``out`` as the command writes them)."""
    from advmnist.cli.options import load_model
    from advmnist.cli.robustness import _images, _measure, _write_and_say
    from advmnist.experiments.robustness import RobustnessSettings

    eps = tuple(round(settings.eps * k / 3, 6) for k in (1, 2, 3))
    robust = RobustnessSettings(norm=Linf.name, eps=eps, count=count, attack="auto", steps=EVALUATION_STEPS,
                                seed=settings.seed).resolved()
    output.say(f"\nAutoAttack (standard version) on the trained network, first {count} test images, eps "
               f"{', '.join(f'{e:g}' for e in eps)}:")
    model = load_model(run_dir, False, output)
    positions, indices, images, labels, targets = _images(robust, None, data_dir, output)
    curve = _measure(model, robust, images, labels, targets, positions, None, output)
    return _write_and_say(output, out, robust, [curve], indices, labels, None)

