"""``advmnist universal``: one noise for all images, per target class."""
from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from advmnist.cli.options import (InputError, Output, config_option, data_dir_option, finite, json_option,
                                  load_model, model_option, out_option, progress_enabled, seed_option,
                                  steps_option, translate_errors)
from advmnist.experiments.universal import TARGET_CHOICES, UniversalSettings, target_list

DEFAULTS = UniversalSettings()


def noise_options(steps_flag: str):
    """The universal-noise optimization's options, shared by `universal` and `immunize`."""
    def apply(func):
        for option in reversed([
            # one parameter name for both spellings, as config files of earlier versions use it
            steps_option(DEFAULTS.steps, "Adam steps (learning rate 1e-2, batches of 64 training images) per noise.",
                         flag=steps_flag, name="noise_steps"),
            click.option("--noise-limit", type=click.FloatRange(0, 1, min_open=True), callback=finite,
                         default=DEFAULTS.noise_limit, show_default=True,
                         help="The noise is clipped to [-limit, +limit] after every step."),
            click.option("--l2-weight", type=click.FloatRange(min=0), callback=finite, default=DEFAULTS.l2_weight,
                         show_default=True, help="Loss = cross-entropy + l2_weight * sum(noise^2) / 2."),
        ]):
            func = option(func)
        return func
    return apply


def noise_file_option(description: str):
    return click.option("--noise", "noise_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                        default=None, help=description)


@click.command(short_help="One noise for all images, per target class.")
@config_option("configs/reference-universal.toml")
@click.option("--target", type=click.Choice(TARGET_CHOICES), default="3", show_default=True,
              help="Class that every image should be read as; `all` finds one noise for each of 0..9.")
@noise_options("--steps")
@seed_option(DEFAULTS.seed, "Seeds the choice of training batches.")
@noise_file_option("Measure a saved noise (.npy from an earlier run, e.g. against another network) "
                   "instead of optimizing one.")
@model_option
@out_option("Folder for the noises, figures and metrics.")
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
    from advmnist.report import figures
    from advmnist.experiments.universal import write_universal
    from advmnist.data.mnist import load_train_test
    from advmnist.experiments.universal import UniversalInterrupted, universal_attack

    output = Output(json_mode)
    targets = target_list(target)
    given = checked_noise(noise_file, len(targets), noise_limit) if noise_file else None
    model = load_model(model_path, no_verify, output)
    train_split, test = load_train_test(data_dir, output.say)
    settings = UniversalSettings(steps=noise_steps, noise_limit=noise_limit, l2_weight=l2_weight, seed=seed)
    try:
        result = universal_attack(model, train_split.images, test, targets, settings, progress=progress_enabled(),
                                  given_noise=given)
    except UniversalInterrupted as stop:
        _keep_partial(stop, out, test, settings, model, noise_file, targets)
    record = write_universal(out, settings.file_stem(target, given=noise_file is not None), result, targets,
                                     test, settings, model_path=model.path, target=target, noise_file=noise_file)
    output.say(f"model {model.path}: clean test accuracy {result.clean_accuracy:.2%}")
    rows = [[e.target, f"{e.accuracy:.2%}", f"{e.fooled:.2%}"] for e in result.effects]
    output.say(figures.format_table(["target", "accuracy with noise", "read as target"], rows))
    if len(targets) == 1:
        output.say("confusion matrix with the noise:")
        output.say(figures.format_confusion(result.effects[0].confusion))
    output.say(f"figures and noise in {out}/")
    output.result(record)


def _keep_partial(stop, out: Path, test, settings, model, noise_file, targets: list[int]) -> None:
    """Ctrl-C after some targets were finished: their files go to ``out/universal_partial`` (never over a whole
    run's), the command says which and exits 130."""
    import sys

    from advmnist.experiments.universal import write_universal

    partial = out / "universal_partial"
    done = ", ".join(map(str, stop.targets))
    click.echo(f"\nInterrupted after {len(stop.targets)} of {len(targets)} targets ({done}); writing their noises "
               f"and figures to {partial}/ ...", err=True)
    # named by its targets, not "all": no universal_noise_all.npy of fewer than ten noises
    write_universal(partial, "universal_partial", stop.partial, stop.targets, test, settings, model_path=model.path,
                    target=done, noise_file=noise_file)
    rest = [t for t in targets if t not in stop.targets]
    click.echo(f"Kept. The others ({', '.join(map(str, rest))}) were not fitted: `advmnist universal --target T` "
               "fits one, `--target all` all ten again.", err=True)
    sys.exit(130)


def checked_noise(path: Path, count: int, noise_limit: float) -> np.ndarray:
    """A saved noise of ``count`` targets, within the noise limit it is to be used with."""
    noise = _load_noise(path, count)
    if np.abs(noise).max() > noise_limit + 1e-6:
        raise click.BadParameter(f"the noise in {path} reaches {np.abs(noise).max():.3g}; expected at most "
                                 f"--noise-limit {noise_limit:g} (pass the limit it was made with)",
                                 param_hint="--noise-limit")
    return noise


def _load_noise(path: Path, count: int) -> np.ndarray:
    try:
        is_npy = path.read_bytes()[:6] == b"\x93NUMPY"
        noise = np.load(path, allow_pickle=False)
    except ValueError as err:
        if is_npy and "pickle" in str(err):  # an object array; numpy's own message suggests loading it unsafely
            raise InputError(f"{path} holds Python objects, not numbers; expected a float array of shape (28, 28) "
                             "saved with numpy.save, as `advmnist universal` writes (universal_noise_<t>.npy)") from err
        raise InputError(f"{path} is not a readable .npy noise file ({err})") from err
    except (OSError, EOFError) as err:
        raise InputError(f"{path} is not a readable .npy noise file ({err})") from err
    if not isinstance(noise, np.ndarray):  # an .npz archive
        raise InputError(f"{path} is not a readable .npy noise file (expected one array, got an archive)")
    noise = noise.reshape((-1,) + noise.shape[-2:]) if noise.ndim >= 2 else noise
    if noise.shape != (count, 28, 28):
        raise InputError(f"{path}: expected a noise of shape {(28, 28) if count == 1 else (count, 28, 28)}, "
                         f"got {noise.shape}")
    if not np.isfinite(noise).all():
        raise InputError(f"{path}: expected finite numbers, got {int((~np.isfinite(noise)).sum())} NaN or infinite "
                         "values")
    return noise.astype(np.float32)
