"""``advmnist reproduce`` and ``advmnist report``: both reference experiments into one report."""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import click

from advmnist.cli.options import InputError, Output, json_option, translate_errors, writable_folder
from advmnist.fileio import display_path

STEP_HELP = ("train (only without --model), attack, universal, immunize, immunize-reference, immunize-all, "
             "matrix, tradeoff")


def _run_in_process(args: list[str]) -> None:
    """One advmnist command, in this process; its human text goes to stderr."""
    from advmnist.cli import main

    with contextlib.redirect_stdout(sys.stderr):
        try:
            main.main(args=args, prog_name="advmnist", standalone_mode=False)
        except click.ClickException as err:
            raise InputError(f"`advmnist {' '.join(args)}` failed: {err.format_message()}") from err


def check_before_running(steps, config: Path | None) -> None:
    """Every step's options, config table and folders, checked as the step itself will check them, before the
    first step runs: a typo in a late step's table fails now, not an hour in. Tables that match no step's
    command are refused."""
    from advmnist.report.reproduce import STEPS, config_table, plan
    from advmnist.cli import main
    from advmnist.fileio import read_toml

    if not steps:
        raise click.BadParameter("nothing to run: `train` runs only without --model (the model is given); "
                                 f"expected some of {list(STEPS)}", param_hint="--only")
    if config is not None:
        commands = {"reproduce", *(step.command for step in plan(Path("."), None))}
        unknown = sorted(key for key, value in read_toml(config).items() if isinstance(value, dict)
                         and key not in commands)
        if unknown:
            raise click.BadParameter(f"{config}: table(s) {', '.join(f'[{t}]' for t in unknown)} match no step; "
                                     f"expected tables of {sorted(commands)}", param_hint="--config")
    for step in steps:
        args = [*step.args, *step.extra]
        if config is not None and config_table(config, step.command):
            args += ["--config", str(config)]
        command, name = main.commands[step.command], step.command
        if isinstance(command, click.Group):  # `immunize universal ...`: the subcommand checks its options
            command, name, args = command.commands[args[0]], args[0], args[1:]
        try:
            command.make_context(name, args)  # parses and checks, runs nothing
        except click.ClickException as err:
            raise click.BadParameter(f"step {step.name} (`advmnist {step.command}`): {err.format_message()}",
                                     param_hint="--config" if config is not None else "--steps") from err


@click.command(short_help="Both reference experiments into one report.")
@click.option("--model", "model_path", type=click.Path(exists=True, path_type=Path), default=None,
              help="A trained run folder (or model.pb) to use; without it the first step trains one into OUT/run.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("report"), show_default=True,
              callback=writable_folder, help="Folder for every step's results and the report.")
@click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="TOML file: its [COMMAND] tables set each step's options (e.g. [attack] steps = 2000), its "
                   "[reproduce] table may list the steps to run; e.g. configs/reproduce.toml.")
@click.option("--only", "step_names", default=None,
              help=f"Comma-separated steps to run, in their fixed order: {STEP_HELP}.  [default: all]")
@click.option("--steps", "old_step_names", default=None, hidden=True,
              help="The old name of --only (every other command's --steps counts iterations).")
@json_option
@translate_errors
def reproduce(model_path, out, config, step_names, old_step_names, json_mode) -> None:
    """Run both reference experiments end to end and write one report.

    Trains the CNN (unless --model is given), then runs the per-image attack under the
    three regularizers, a universal noise per target, the immunization against
    target 3 (advmnist's recipe, and the reference's: one fixed noise per phase, no
    replay) and against every target in turn (the reference's way, the longest step),
    the source x target matrix and the trade-off sweep, each into its own folder of
    OUT. It writes OUT/index.html (self-contained: open it in any browser),
    OUT/report.md and OUT/report.json: every reference number beside ours, the exact
    settings, versions, seeds, hardware and the wall time of every step.

    A second run with the same settings reuses the steps whose results are on disk
    unchanged; Ctrl-C keeps the finished steps. `advmnist report OUT` rebuilds the
    page from what is on disk.
    """
    from advmnist.report import pages
    from advmnist.report.reproduce import STEPS, collect, config_table, plan, run_steps

    output = Output(json_mode)
    if old_step_names is not None:
        click.echo("note: `reproduce --steps` is now `--only` (in every other command --steps counts iterations); "
                   "--steps will be removed in the next release", err=True)
        step_names = step_names or old_step_names
    names = STEPS
    table = config_table(config, "reproduce")
    if not step_names and "steps" in table and (not isinstance(table["steps"], list)
                                                or not all(isinstance(n, str) for n in table["steps"])):
        raise click.BadParameter(f"{config}: expected [reproduce] steps = a list of step names, got "
                                 f"{table['steps']!r}", param_hint="--config")
    if step_names or table.get("steps"):
        names = tuple(n.strip() for n in (step_names.split(",") if step_names else table["steps"]) if n.strip())
        unknown = sorted(set(names) - set(STEPS))
        if unknown:
            raise click.BadParameter(f"unknown step(s) {unknown}; expected some of {list(STEPS)}",
                                     param_hint="--only")
    steps = plan(out, model_path, names)
    check_before_running(steps, config)
    try:
        run_steps(steps, out, config, _run_in_process, log=output.say if not json_mode else
                      (lambda message: click.echo(message, err=True)))
    except (KeyboardInterrupt, SystemExit) as stop:
        if isinstance(stop, SystemExit) and stop.code != 130:
            raise
        click.echo(f"\nInterrupted; the finished steps are kept in {out} and the same command reuses them.",
                   err=True)
        sys.exit(130)
    report = collect(out)
    files = pages.write(report, out)
    output.say(f"report: {files['html']} (also {files['markdown'].name}, {files['json'].name})")
    output.result({**report, "files": {k: display_path(v) for k, v in files.items()}})


@click.command(short_help="Rebuild a reproduction's report from disk.")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path), default=Path("report"))
@json_option
@translate_errors
def report(folder, json_mode) -> None:
    """Rebuild FOLDER/index.html, report.md and report.json from the results on disk.

    FOLDER is what `advmnist reproduce --out FOLDER` wrote (default: report).
    """
    from advmnist.report import pages
    from advmnist.report.reproduce import collect

    output = Output(json_mode)
    collected = collect(folder)
    if not collected["steps"]:
        raise InputError(f"{folder} holds no finished step of `advmnist reproduce` ({folder}/steps/*.json)")
    files = pages.write(collected, folder)
    output.say(f"report: {files['html']}")
    output.result({**collected, "files": {k: display_path(v) for k, v in files.items()}})
