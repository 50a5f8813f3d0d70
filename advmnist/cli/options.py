"""What every command shares: options, config files, output, and the translation of errors.

A command module parses its options (declared with the factories here, defaults
taken from the library's settings dataclasses), calls the library, hands the result
to :mod:`advmnist.experiments.results` / :mod:`advmnist.report.figures` to be written, and prints.
"""
from __future__ import annotations

import functools
import json
import math
import sys
from pathlib import Path

import click
import numpy as np

from advmnist.attacks.targets import TARGET_RULES
from advmnist.errors import InvalidInput

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
SEED_RANGE = click.IntRange(0, 2**31 - 1)
TARGET_RULE_CHOICES = TARGET_RULES + tuple(str(c) for c in range(10))
#: Terminal tables show at most this many rows; the .json files hold all of them.
MAX_TABLE_ROWS = 64


class InputError(click.ClickException):
    """A missing or corrupt file, or a run folder in the wrong state: exit 2, one line."""

    exit_code = 2


class Output:
    """Human text to stdout, or to stderr when ``--json`` reserves stdout for the result."""

    def __init__(self, json_mode: bool):
        self.json_mode = json_mode

    def say(self, message: str = "") -> None:
        click.echo(message, err=self.json_mode)

    def result(self, payload: dict) -> None:
        if self.json_mode:
            click.echo(json.dumps(payload, sort_keys=True, default=_jsonable))


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def json_error(message: str, exit_code: int) -> None:
    """With ``--json``, an error is one JSON object on stdout too."""
    click.echo(json.dumps({"error": message, "exit_code": exit_code}, sort_keys=True))


def progress_enabled() -> bool:
    return sys.stderr.isatty()


# ---------------------------------------------------------------------------- checks

def finite(ctx: click.Context, param: click.Parameter, value):
    """click's FloatRange lets NaN through (every comparison with NaN is false)."""
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"expected a finite number, got {value}", ctx, param)
    return value


class OneEps(click.FloatRange):
    """One budget in (0, 1]; a comma-separated list (what ``robustness --eps`` takes) is refused by name."""

    name = "eps"

    def __init__(self, why: str):
        super().__init__(0, 1, min_open=True)
        self.why = why

    def convert(self, value, param, ctx):
        if isinstance(value, str) and "," in value:
            self.fail(f"expected one budget, got the list {value!r}: {self.why} (robustness --eps takes several)",
                      param, ctx)
        return super().convert(value, param, ctx)


def writable_folder(ctx: click.Context, param: click.Parameter, value: Path | None):
    """Check an output folder before any work is done (not after an hour of it)."""
    from advmnist.fileio import check_writable_dir

    if value is not None and not ctx.resilient_parsing:
        try:
            check_writable_dir(value, f"--{param.name.replace('_', '-')}")
        except InvalidInput as err:
            raise click.BadParameter(str(err), ctx, param) from err
    return value


def translate_errors(func):
    """Turn the library's user-facing errors into one-line messages with exit status 2."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except InvalidInput as err:
            raise InputError(str(err)) from err
        except OSError as err:  # a full disk, a folder we may not write to: not a usage error
            raise click.ClickException(f"{getattr(err, 'filename', None) or 'file system'}: "
                                       f"{err.strerror or err}") from err
        except KeyboardInterrupt:
            click.echo("\nInterrupted.", err=True)
            sys.exit(130)
    return wrapper


# ---------------------------------------------------------------------------- options

def renamed_option(old: str, new: str, dest: str, **kwargs):
    """The old spelling ``old`` of ``new``, hidden from --help, kept for one release: it sets ``dest``."""
    return click.option(old, dest, hidden=True, default=None,
                        help=f"The old name of {new} (still accepted, with a note; removed in the next release).",
                        **kwargs)


def take_renamed(new_value, old_value, command: str, old: str, new: str, why: str = ""):
    """The value given under the new name or (with a deprecation note on stderr) under the old one; both: exit 2."""
    if old_value is None or old_value == ():
        return new_value
    if new_value is not None and new_value != ():
        raise click.BadParameter(f"expected {new} or its old name {old}, not both", param_hint=new)
    click.echo(f"note: `{command} {old}` is now `{new}`{' (' + why + ')' if why else ''}; {old} will be removed "
               "in the next release", err=True)
    return old_value


def json_option(func):
    return click.option("--json", "json_mode", is_flag=True,
                        help="Print one JSON object with the results on stdout (human text goes to stderr).")(func)


def data_dir_option(func):
    return click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                        envvar="ADVMNIST_DATA", show_envvar=True,
                        help="Folder holding the four MNIST IDX files (raw or .gz); tried before the cache.")(func)


def no_verify_option(func):
    return click.option("--no-verify", is_flag=True,
                        help="Use model.pb even if it does not match the SHA-256 recorded in model.json.")(func)


def check_same_input_shape(models, param_hint: str) -> None:
    """Models compared with each other must take the same images: exit 2 otherwise."""
    shapes = {tuple(m.meta.get("input_shape") or ()) for m in models}
    if len(shapes) > 1:
        raise click.BadParameter(f"expected models with the same input shape, got {sorted(shapes)}",
                                 param_hint=param_hint)


def model_option(func):
    func = no_verify_option(func)
    return click.option("--model", "model_path", type=click.Path(path_type=Path), default=None,
                        help="A run folder or a model.pb file.  [default: runs/cnn]")(func)


def out_option(description: str | None = None):
    """``--out``: the folder for a command's figures and numbers (``assets`` by default)."""
    return click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("assets"),
                        show_default=True, callback=writable_folder, help=description)


def _parse_shard(ctx: click.Context, param: click.Parameter, value):
    if value is None:
        return None
    from advmnist.experiments.shards import Shard

    try:
        return Shard.parse(value)
    except InvalidInput as err:
        raise click.BadParameter(str(err), ctx, param) from err


def shard_option(func):
    """``--shard K/N``: one of N processes or machines sharing a per-image run."""
    return click.option(
        "--shard", callback=_parse_shard, metavar="K/N", default=None,
        help="Work on images K, K+N, K+2N, ... of the selection only, as one of N processes or machines "
             "(each image gets the random draws it gets in a whole run). Files go to OUT/shard-K-of-N unless "
             "--out is given; `advmnist merge` puts the shards together.")(func)


def shard_out(out: Path, shard) -> Path:
    """Where a run writes: ``--out``, or ``OUT/shard-K-of-N`` for a shard when ``--out`` was left at its default."""
    if shard is None:
        return out
    source = click.get_current_context().get_parameter_source("out")
    return out / shard.folder if source is click.core.ParameterSource.DEFAULT else out


def select_shard(shard, population: int, *arrays):
    """(positions or None, the arrays cut to the shard): the whole selection without ``--shard``.

    Called without arrays, it only checks that the shard is not empty (before any data is loaded).
    """
    if shard is None:
        return (None, *arrays)
    try:
        return shard.select(population, *arrays)
    except InvalidInput as err:
        raise click.BadParameter(str(err), param_hint="--shard") from err


def seed_option(default: int, description: str | None = None):
    return click.option("--seed", type=SEED_RANGE, default=default, show_default=True, help=description)


def steps_option(default: int, description: str, flag: str = "--steps", name: str = "steps"):
    return click.option(flag, name, type=click.IntRange(min=1), default=default, show_default=True,
                        help=description)


def reg_option(choices, default: str, description: str):
    return click.option("--reg", type=click.Choice(choices), default=default, show_default=True, help=description)


def weight_option(default: float, description: str):
    return click.option("--weight", type=click.FloatRange(min=0), callback=finite, default=default,
                        show_default=True, help=description)


def split_option(default: str):
    return click.option("--split", type=click.Choice(["train", "test"]), default=default, show_default=True,
                        help="MNIST split the images come from (train: 60,000 digits, test: 10,000).")


def range_options(defaults):
    """``--count --offset``: which images of the split."""
    def apply(func):
        func = click.option("--offset", type=click.IntRange(min=0), default=defaults.offset, show_default=True,
                            help="Index of the first image in the split.")(func)
        return click.option("--count", type=click.IntRange(min=1), default=defaults.count, show_default=True,
                            help="Number of images (1 to the whole split; --offset + --count must fit).")(func)
    return apply


def check_range(split: str, offset: int, count: int) -> None:
    """``--offset + --count`` must fit in the split: exit 2 otherwise."""
    from advmnist.data.mnist import split_size

    if offset + count > split_size(split):
        raise click.BadParameter(f"expected --offset + --count <= {split_size(split)} ({split} split), "
                                 f"got {offset} + {count}", param_hint="--count")


def image_options(defaults, *, untargeted: bool = False):
    """``--count --offset --split --target``: which images, towards which classes (the attack's vocabulary).

    With ``untargeted``, ``--target untargeted`` is a choice too: any wrong class will do.
    """
    choices = TARGET_RULE_CHOICES + (("untargeted",) if untargeted else ())
    more = ", or untargeted (any wrong class)" if untargeted else ""

    def apply(func):
        for option in reversed([
            range_options(defaults),
            split_option(defaults.split),
            click.option("--target", type=click.Choice(choices), default=defaults.target, show_default=True,
                         help="Target class: 9-d, d+1 (mod 10), random (seeded, never the true label) "
                              f"or a class 0-9{more}."),
        ]):
            func = option(func)
        return func
    return apply


# ---------------------------------------------------------------------------- config files

def _load_config(ctx: click.Context, param: click.Parameter, value: Path | None):
    """Read ``[<command>]`` from a TOML file into the command's defaults; flags still win."""
    if value is None:
        return None
    from advmnist.fileio import read_toml

    try:
        table = read_toml(value)
    except InvalidInput as err:
        raise click.BadParameter(str(err), ctx, param) from err
    path = config_table_path(ctx)
    name = ".".join(path)
    tables = sorted(_table_names(table))
    section = _table_at(table, path)
    if section is None and tables:
        found = ", ".join(f"[{t}]" for t in tables)
        raise click.BadParameter(f"{value} has no [{name}] table (it has {found}); "
                                 f"expected a file for `advmnist {' '.join(path)}`", ctx, param)
    if section is None:
        section = table
    # a key may be spelled like the option (noise-steps, --noise-steps) or like its parameter (noise_steps)
    options = {}
    for option in ctx.command.params:
        if option.name in ("config", "json_mode"):
            continue
        for spelling in [option.name, *getattr(option, "opts", [])]:
            options[spelling.lstrip("-")] = option
            options[spelling.lstrip("-").replace("-", "_")] = option
    unknown = sorted(key for key in section if key.lstrip("-") not in options)
    if unknown:
        expected = sorted(o.opts[0].lstrip("-") for o in ctx.command.params
                          if isinstance(o, click.Option) and not o.hidden and o.name not in ("config", "json_mode"))
        raise click.BadParameter(f"unknown key(s) {unknown} in {value}; expected some of {expected}", ctx, param)
    defaults = {}
    for key, item in section.items():
        option = options[key.lstrip("-")]
        try:  # check the value now, so the message can name the file and the key
            option.type_cast_value(ctx, item)
        except click.BadParameter as err:
            raise click.BadParameter(f"{value}, key {key!r}: {err.message}", ctx, param) from err
        defaults[option.name] = item
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


def config_table_path(ctx: click.Context) -> tuple[str, ...]:
    """The table a command reads from a --config file: ``[COMMAND]``, or ``[GROUP.SUBCOMMAND]`` for a subcommand
    (e.g. ``[immunize.pgd]``), as its ``config_table`` attribute names it."""
    return tuple(getattr(ctx.command, "config_table", None) or (ctx.info_name,))


def _table_names(table: dict, prefix: str = "") -> list[str]:
    names = []
    for key, item in table.items():
        if isinstance(item, dict):
            names += [prefix + key] + _table_names(item, prefix + key + ".")
    return names


def _table_at(table: dict, path: tuple[str, ...]) -> dict | None:
    """The table at ``path``; for a subcommand also the flat [GROUP] table of earlier versions, whose
    ``against`` key (default: the first subcommand, universal) named it."""
    section = table
    for key in path:
        section = section.get(key) if isinstance(section, dict) else None
    if isinstance(section, dict):
        return section
    group = table.get(path[0]) if len(path) == 2 else None
    if isinstance(group, dict) and not any(isinstance(item, dict) for item in group.values()):
        flat = dict(group)
        if flat.pop("against", "universal") == path[1]:
            return flat
    return None


def config_option(example: str | None = None):
    """``--config FILE``: a TOML file whose [COMMAND] table sets the command's options."""
    return click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                        is_eager=True, expose_value=False, callback=_load_config,
                        help="TOML file whose [COMMAND] table sets this command's options (flags on the command "
                             "line override it)" + (f", e.g. {example}." if example else "; keys are the option "
                                                    "names, e.g. steps = 2000."))


# ---------------------------------------------------------------------------- shared steps

def load_model(model_path: Path | None, no_verify: bool, output: Output):
    """The frozen model, checked against its recorded SHA-256 unless ``--no-verify``."""
    from advmnist.model.frozen import FrozenModel

    model = FrozenModel.load(model_path, verify=not no_verify)
    for note in model.notes:
        output.say(note)
    return model


def attack_inputs(model_path, no_verify, split, offset, count, target, seed, data_dir, output: Output):
    """Check the image range and target rule, then load the model, the digits and their targets.

    The targets are None for ``--target untargeted`` (offered by the commands whose attack can be untargeted).
    """
    from advmnist.attacks import choose_targets, parse_target_rule
    from advmnist.data.mnist import load_split

    # a click.Choice already: this only normalizes it
    rule = target if target == "untargeted" else parse_target_rule(target)
    check_range(split, offset, count)
    model = load_model(model_path, no_verify, output)
    data = load_split(split, data_dir, log=output.say, rows=slice(offset, offset + count))
    indices = np.arange(offset, offset + count)
    if rule == "untargeted":
        return model, indices, data.images, data.labels, None, rule
    try:
        targets = choose_targets(data.labels, rule, seed=seed, indices=indices)
    except InvalidInput as err:
        raise click.BadParameter(str(err), param_hint="--target") from err
    return model, indices, data.images, data.labels, targets, rule
