"""``advmnist attack``: per-image targeted noise, the first reference experiment."""
from __future__ import annotations

import sys
import time

import click

from advmnist.experiments.targeted import REG_CHOICES, AttackSettings
from advmnist.cli.options import (MAX_TABLE_ROWS, Output, attack_inputs, config_option, data_dir_option, finite,
                                  image_options, json_option, model_option, out_option, progress_enabled,
                                  reg_option, seed_option, select_shard, shard_option, shard_out, steps_option,
                                  translate_errors, weight_option)
from advmnist.attacks.norms import L1, L2, Linf

DEFAULTS = AttackSettings()


@click.command(short_help="Per-image targeted noise (L2, L1 or none).")
@config_option("configs/reference-targeted.toml")
@reg_option(REG_CHOICES, DEFAULTS.reg, "Regularization of the noise; `all` runs the three on the same images.")
@weight_option(DEFAULTS.weight, "Regularization weight: l2 adds weight*sum(noise^2)/2, l1 adds weight*sum(|noise|).")
@image_options(DEFAULTS)
@steps_option(DEFAULTS.steps, "Adam steps: lr 3e-3 for the first two thirds, 1e-3 after.")
@seed_option(DEFAULTS.seed, "Seeds the initial noise N(0, 0.01) and random targets.")
@click.option("--early-stop", is_flag=True,
              help="Keep each image's noise from the first check (every 100 steps) at which its target logit beats "
                   "all others by --margin; stop once every image has.")
@click.option("--margin", type=click.FloatRange(min=0), callback=finite, default=DEFAULTS.margin, show_default=True,
              help="With --early-stop: how far the target logit must lead.")
@model_option
@out_option("Folder for the PNG grids, the .npz arrays and the metrics .json.")
@shard_option
@data_dir_option
@json_option
@translate_errors
def attack(reg, weight, count, offset, split, target, steps, seed, early_stop, margin, model_path, no_verify, out,
           shard, data_dir, json_mode) -> None:
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

    \b
    On N processes or machines (then `advmnist merge assets/shard-*`):
      advmnist attack --split test --offset 0 --count 1000 --target d+1 --shard K/N
    """
    from advmnist.experiments.targeted import summarize, write_attack, write_comparison
    from advmnist.fileio import display_path
    from advmnist.report import figures

    output = Output(json_mode)
    if not early_stop and click.get_current_context().get_parameter_source("margin").name != "DEFAULT":
        raise click.BadParameter("--margin (on the command line or in --config) only matters with --early-stop: "
                                 "add --early-stop, or drop --margin", param_hint="--margin")
    select_shard(shard, count)  # an empty shard is refused before anything is loaded
    model, indices, images, labels, targets, rule = attack_inputs(model_path, no_verify, split, offset, count,
                                                                  target, seed, data_dir, output)
    positions, indices, images, labels, targets = select_shard(shard, count, indices, images, labels, targets)
    out = shard_out(out, shard)
    shard_record = shard.record(count) if shard else None
    settings = AttackSettings(reg=reg, weight=weight, count=count, offset=offset, split=split, target=rule,
                              steps=steps, seed=seed, early_stop=early_stop, margin=margin)
    record = {"model": display_path(model.path), "model_sha256": model.sha256,
              **{k: v for k, v in vars(settings).items() if k != "reg"}}
    figures.import_in_background()
    runs, records = {}, {}
    for name in settings.regs:
        attack = settings.attack(name)
        started = time.time()
        result = _run_or_keep_partial(attack, name, model, images, labels, targets, positions, count, indices,
                                      out, record, kept=bool(records))
        summary = summarize(result, attack.regularizer, indices=indices, seconds=time.time() - started)
        runs[name] = result
        records[name] = write_attack(out, name, result, summary, indices, record, shard=shard_record)
        print_attack(output, name, summary, records[name]["files"])
    payload = records[settings.regs[0]]
    if len(settings.regs) > 1:
        payload = write_comparison(out, runs, records)
        output.say("\ncomparison (same images, targets and seed):")
        output.say(figures.format_table(list(payload["comparison"][0]),
                                        [list(row.values()) for row in payload["comparison"]]))
        output.say(f"comparison figure: {payload['figure']}")
    output.result(payload)


def _run_or_keep_partial(attack, name, model, images, labels, targets, positions, count, indices, out, record, *,
                         kept: bool):
    """One regularizer's result; on Ctrl-C, the chunks that finished are written beside (not over) earlier
    results and the command exits 130."""
    from advmnist.attacks import AttackInterrupted
    from advmnist.experiments import targeted
    from advmnist.experiments.targeted import write_attack

    started = time.time()
    try:
        return attack(model.logits, images, labels, targets=targets, seed=record["seed"],
                      progress=progress_enabled(), positions=positions, population=count)
    except AttackInterrupted as stop:
        done = len(stop.partial)
        summary = targeted.summarize(stop.partial, attack.regularizer, indices=indices[:done],
                                     seconds=time.time() - started)
        partial = write_attack(out, f"{name}_partial", stop.partial, summary, indices[:done],
                                       {**record, "completed": done})
        click.echo(f"\nInterrupted during {name}: the first {done} of {len(images)} images were done; their "
                   f"results are in {partial['files']['arrays']} and beside it.", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        finished = f" The finished regularizers' results are in {out}." if kept else ""
        click.echo(f"\nInterrupted during {name} before its first {min(len(images), attack.chunk_size)} images "
                   f"(optimized together) were finished: nothing of {name} was written.{finished} Run the same "
                   "command again; a smaller --count or --steps finishes sooner.", err=True)
        sys.exit(130)


def print_attack(output: Output, name: str, summary, files: dict) -> None:
    from advmnist.report import figures

    s = summary.summary
    output.say(f"\n== {name} regularization (weight {summary.weight:g}), {summary.seconds:.1f} s")
    shown = s["pred_label"][:MAX_TABLE_ROWS]
    more = f" ... ({len(s['pred_label']) - MAX_TABLE_ROWS} more)" if len(s["pred_label"]) > MAX_TABLE_ROWS else ""
    output.say(f"pred_label: {shown}{more}")
    for key in ("L1Norm", "L2Norm", "cross_entropy_loss", "regularize_cost", "train_error"):
        output.say(f"{key}: {s[key]:.5g}")
    output.say(f"reached target: {s['success']}/{s['count']} (after 8-bit rounding: {s['success_8bit']}/{s['count']})")
    headers = ["index", "label", "target", "pred", "p(target)", "L1", "L2", "Linf", "8-bit ok"]
    rows = [[r["index"], r["label"], r["target"], r["prediction"], r["target_prob"],
             *(r[name] for name in (L1.name, L2.name, Linf.name)), "yes" if r["adversarial_8bit"] else "NO"]
            for r in summary.rows[:MAX_TABLE_ROWS]]
    output.say(figures.format_table(headers, rows))
    if len(summary.rows) > MAX_TABLE_ROWS:
        output.say(f"... {len(summary.rows) - MAX_TABLE_ROWS} more rows in the metrics .json")
    output.say("files: " + ", ".join(files.values()))
