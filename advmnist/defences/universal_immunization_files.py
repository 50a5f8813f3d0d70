"""What ``advmnist immunize universal`` writes: its record, the record of an interrupted run, its figure."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from advmnist import fileio
from advmnist.fileio import display_path
from advmnist.report import figures

def immunize_settings_record(settings) -> dict:
    return {**dataclasses.asdict(settings), "seed": settings.seed}


def write_immunize(out: Path, stem: str, result, *, run_dir: Path, base_model: Path, settings, title: str) -> dict:
    figure = out / f"{stem}.png"
    immunize_figure(result, figure, title=title)
    record = {**result.to_dict(), "run_dir": display_path(run_dir), "model": display_path(run_dir / "model.pb"),
              "base_model": display_path(base_model), "figure": display_path(figure),
              "settings": immunize_settings_record(settings)}
    fileio.write_json(out / f"{stem}.json", record)
    return record


def write_immunize_partial(out: Path, stem: str, stopped, *, base_model: Path, settings) -> Path:
    """What an interrupted ``immunize`` finished: ``<stem>_partial.json``."""
    partial = out / f"{stem}_partial.json"
    fileio.write_json(partial, {**stopped.to_dict(), "base_model": display_path(base_model),
                                "settings": immunize_settings_record(settings)})
    return partial


def immunize_figure(result, path, *, title: str) -> None:
    """Accuracy under a freshly optimized noise, target x (before, after each round's phase, end).

    Every target is trained once per round in either schedule, so every cell is a
    measurement: right after that target's phase of that round. Nothing is drawn
    between measurements.
    """
    rounds = sorted({h["round"] for h in result.history})
    targets = list(result.targets)
    values = np.full((len(targets), len(rounds) + 2), np.nan)
    for row, target in enumerate(targets):
        values[row, 0] = result.before[target]
        for h in result.history:
            if h["target"] == target:
                values[row, 1 + rounds.index(h["round"])] = h["accuracy_fresh_noise"]
        values[row, -1] = result.after[target]
    values *= 100
    columns = ["before"] + [f"after its\nround {r}" for r in rounds] + ["at the end"]
    fig, ax = figures.subplots(figsize=(1.0 * len(columns) + 2.4, 0.42 * len(targets) + 1.9))
    shown = ax.imshow(np.ma.masked_invalid(values), cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    for (row, col), value in np.ndenumerate(values):
        if np.isfinite(value):
            ax.text(col, row, f"{value:.1f}", ha="center", va="center", fontsize=8,
                    color="white" if value < 25 or value > 85 else "black")
    ax.set_xticks(range(len(columns)), columns, fontsize=8)
    ax.set_yticks(range(len(targets)), [f"target {t}" for t in targets], fontsize=8)
    ax.xaxis.tick_top()
    fig.colorbar(shown, ax=ax, label="test accuracy under fresh noise (%)", shrink=0.9)
    ax.set_title(f"{title}\nclean test accuracy {result.clean_before:.2%} before, {result.clean_after:.2%} after",
                 fontsize=10, pad=28)
    figures.save_figure(fig, path)
