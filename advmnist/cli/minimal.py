"""``advmnist minimal``: the smallest perturbation per image that fools the network."""
from __future__ import annotations

import sys
import time

import click

from advmnist.cli.options import (MAX_TABLE_ROWS, Output, attack_inputs, config_option, data_dir_option, image_options,
                                  json_option, model_option, out_option, progress_enabled, seed_option,
                                  select_shard, shard_option, shard_out, steps_option, translate_errors)
from advmnist.experiments.minimal import NORM_CHOICES, MinimalSettings
from advmnist.attacks.norms import L1, L2, Linf

DEFAULTS = MinimalSettings()


@click.command(short_help="Smallest perturbation per image (L2, L1 or Linf).")
@config_option()
@click.option("--norm", type=click.Choice(NORM_CHOICES), default=DEFAULTS.norm, show_default=True,
              help="The norm of the change to minimize (of the effective change, after clipping and 8-bit rounding).")
@image_options(DEFAULTS, untargeted=True)
@steps_option(DEFAULTS.steps, "Search steps of each start.")
@click.option("--starts", type=click.IntRange(1, 64), default=DEFAULTS.starts, show_default=True,
              help="Searches per image, side by side (the first from the image, the others from random points); "
                   "the smallest success is kept. Time grows with --steps x --starts.")
@click.option("--search-rounds", type=click.IntRange(0, 20), default=DEFAULTS.search_rounds, show_default=True,
              help="With --target untargeted in linf or l2: after FMN, rounds of a bisection over eps per image "
                   "with APGD-CE and APGD-T (AutoAttack's gradient members), which keeps any smaller 8-bit change "
                   "they find. 0: FMN alone. Other targets and L1 ignore it.")
@seed_option(DEFAULTS.seed, "Seeds the random starting points and random targets.")
@model_option
@out_option("Folder for the grids, the curve, the .npz arrays and the metrics .json.")
@shard_option
@data_dir_option
@json_option
@translate_errors
def minimal(norm, count, offset, split, target, steps, starts, search_rounds, seed, model_path, no_verify, out, shard,
            data_dir, json_mode) -> None:
    """The smallest change to each image that makes the network read the target.

    For every image, searches the smallest perturbation in the chosen norm that makes
    the frozen network predict the target class (with --target untargeted: anything
    but the true label). The search is Fast Minimum-Norm (Pintor et al. 2021), batched
    over images and starts inside one TensorFlow graph; each image keeps the smallest
    success it found, and only images that still fool the network once rounded to
    8-bit pixels count: the table, the files and the PNGs are those 8-bit images.
    Untargeted, in linf or l2, a bisection over eps with APGD (--search-rounds)
    follows and keeps any smaller change it finds: FMN alone settles in local minima
    that AutoAttack's members get below.

    The minimal norms give a robust-accuracy curve for free: the share of images
    that no perturbation of norm <= eps fooled, for every eps. On --target untargeted
    and many test images it answers "how robust is this network in L2?" in one figure.

    \b
    Writes to --out (default assets/):
      minimal_<norm>.png               adversarial images (prediction, norm)
      minimal_<norm>_originals.png     the images attacked and their targets
      minimal_<norm>_perturbation.png  the changes, red adds ink, blue removes it
      minimal_<norm>_curve.png         not fooled (%) against eps
      minimal_<norm>.npz / .json       arrays, per-image table, summary, curve

    \b
    Examples:
      advmnist minimal --norm l2     # the reference's 16 images, 9 - d
      advmnist minimal --norm l1 --split test --offset 0 --count 1000 --target untargeted --starts 1 --steps 200
      ... --shard K/N                # one of N processes; then `advmnist merge assets/shard-*`

    Ctrl-C stops the run; images already finished (searched 512 rows of images x
    starts at a time) are kept in minimal_<norm>_partial.*.
    """
    from advmnist.experiments.minimal import write_minimal
    from advmnist.experiments.minimal import summarize
    from advmnist.fileio import display_path
    from advmnist.report import figures

    output = Output(json_mode)
    select_shard(shard, count)  # an empty shard is refused before anything is loaded
    model, indices, images, labels, targets, rule = attack_inputs(model_path, no_verify, split, offset, count,
                                                                  target, seed, data_dir, output)
    positions, indices, images, labels, targets = select_shard(shard, count, indices, images, labels, targets)
    out = shard_out(out, shard)
    settings = MinimalSettings(norm=norm, count=count, offset=offset, split=split, target=rule, steps=steps,
                               starts=starts, search_rounds=search_rounds, seed=seed)
    record = {"model": display_path(model.path), "model_sha256": model.sha256, **vars(settings)}
    figures.import_in_background()
    attack = settings.attack()
    output.say(opening_line(settings, attack.searches(targets), len(images), shard))
    started = time.time()
    result = _run_or_keep_partial(attack, settings, model, images, labels, targets, positions, indices, out, record)
    summary = summarize(result, norm, indices=indices, seconds=time.time() - started)
    payload = write_minimal(out, settings.file_stem, result, summary, indices, record,
                                    shard=shard.record(count) if shard else None)
    print_minimal(output, summary, payload["files"])
    output.result(payload)


def opening_line(settings, searches: bool, images: int, shard) -> str:
    """What the run is about to do: images, starts x steps, the search's rounds (if it runs), the shard."""
    rounds = f"{settings.search_rounds} round{'s' if settings.search_rounds > 1 else ''}"
    searched = f", then {rounds} of APGD search over eps" if searches else ""
    return (f"minimal {settings.norm}: {images} image(s), {settings.starts} start(s) x {settings.steps} steps each"
            f"{searched}" + (f" (shard {shard} of {settings.count})" if shard else ""))


def _run_or_keep_partial(attack, settings, model, images, labels, targets, positions, indices, out, record):
    """The search's result; on Ctrl-C, the images already finished are written beside (not over) earlier
    results and the command exits 130."""
    from advmnist.attacks import AttackInterrupted
    from advmnist.experiments.minimal import write_minimal
    from advmnist.experiments.minimal import summarize

    started = time.time()
    try:
        return attack(model.logits, images, labels, targets=targets, seed=settings.seed,
                      progress=progress_enabled(), positions=positions, population=settings.count)
    except AttackInterrupted as stop:
        done = len(stop.partial)
        summary = summarize(stop.partial, settings.norm, indices=indices[:done], seconds=time.time() - started)
        partial = write_minimal(out, f"{settings.file_stem}_partial", stop.partial, summary, indices[:done],
                                        {**record, "completed": done})
        if done == len(images):  # FMN had finished: the search over eps was interrupted
            click.echo(f"\nInterrupted during the APGD search over eps: FMN's results for all {done} images (as "
                       f"--search-rounds 0 gives them) are in {partial['files']['arrays']} and beside it.", err=True)
        else:
            click.echo(f"\nInterrupted: the first {done} of {len(images)} images were done; their results are in "
                       f"{partial['files']['arrays']} and beside it.", err=True)
        sys.exit(130)


def print_minimal(output: Output, summary, files: dict) -> None:
    from advmnist.report import figures

    s, norm = summary.summary, summary.norm
    output.say(f"\n== minimal {norm}, {summary.seconds:.1f} s")
    headers = ["index", "label", "target", "pred", "L1", "L2", "Linf", "8-bit ok"]
    rows = [[r["index"], r["label"], "any" if r["target"] < 0 else r["target"], r["prediction"], r[L1.name], r[L2.name],
             r[Linf.name], "yes" if r["adversarial_8bit"] else "NO"] for r in summary.rows[:MAX_TABLE_ROWS]]
    output.say(figures.format_table(headers, rows))
    if len(summary.rows) > MAX_TABLE_ROWS:
        output.say(f"... {len(summary.rows) - MAX_TABLE_ROWS} more rows in the metrics .json")
    aim = "reached the target" if s["targeted"] else "misclassified"
    output.say(f"{aim} as 8-bit images: {s['success_8bit']}/{s['count']}")
    if s["success_8bit"]:
        output.say(f"over those: mean L1 {s['mean_l1']:.4g}, mean L2 {s['mean_l2']:.4g}, mean Linf "
                   f"{s['mean_linf']:.4g}; median {norm} {s[f'median_{norm}']:.4g}")
    output.say("files: " + ", ".join(files.values()))
