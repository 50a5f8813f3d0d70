"""Results on disk: what each command writes besides its figures, and the records it returns.

With :mod:`advmnist.report.figures` (the figures) this is the only layer that writes results;
the library returns values. Every file is written atomically, and every path in a
record is relative to the working folder when it lies under it
(:func:`advmnist.fileio.display_path`), so committed results hold no machine's paths.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from advmnist import fileio
from advmnist.report import figures
from advmnist.report import robustness_figures
from advmnist.experiments.targeted import AttackSettings
from advmnist.fileio import display_path


def _paths(files: dict) -> dict:
    return {key: _paths(value) if isinstance(value, dict) else display_path(value) for key, value in files.items()}


def _files(files: dict) -> dict:
    """A record's ``files`` (paths) and ``sha256`` (of each file): the metrics ``.json``, written last, is the
    manifest of its result set, so a reader can tell a file beside it from another run's (:func:`check_files`)."""
    def digests(entry):
        return {key: digests(value) if isinstance(value, dict) else fileio.sha256_file(value)
                for key, value in entry.items()}

    return {"files": _paths(files), "sha256": digests(files)}


def check_files(record: dict, record_path: Path, key: str = "arrays") -> None:
    """The file ``record`` names under ``key`` is the one it was written with (records without checksums, of
    older versions, are taken as they are).

    Raises:
        InvalidInput: the file was replaced, changed or cut short since.
    """
    from advmnist.errors import InvalidInput

    expected = record.get("sha256", {}).get(key)
    path = Path(record_path).with_suffix(".npz") if key == "arrays" else Path(record["files"][key])
    if expected is not None and (not path.is_file() or fileio.sha256_file(path) != expected):
        raise InvalidInput(f"{path} is not the file {record_path} was written with (its SHA-256 differs): it was "
                           "replaced or changed since; run that command again")


def mixed_files(record: dict, record_path: Path) -> list[str]:
    """The files of ``record``'s set (every entry of its ``sha256``) that are not the ones it was written with:
    another run's, or changed since (e.g. new figures beside an old record after an interrupted write). A path
    recorded relative to another working folder is looked for beside the record."""
    found = []

    def walk(paths, digests):
        for key, digest in digests.items():
            if isinstance(digest, dict):
                walk(paths.get(key) or {}, digest)
                continue
            path = Path(paths.get(key) or "")
            if not path.is_file():
                path = Path(record_path).parent / path.name
            if path.is_file() and fileio.sha256_file(path) != digest:
                found.append(str(path))

    walk(record.get("files") or {}, record.get("sha256") or {})
    return found


def _write_arrays(out: Path, stem: str, result, indices: np.ndarray) -> Path:
    """``<stem>.npz``: every attacked image's arrays and its index in the split."""
    arrays = out / f"{stem}.npz"
    fileio.write_npz(arrays, **result.arrays(), indices=indices)
    return arrays


def _shard(shard: dict | None) -> dict:
    """A shard's entry in its metrics record (:meth:`advmnist.experiments.shards.Shard.record`), none for a whole
    run."""
    return {} if shard is None else {"shard": shard}


def write_attack(out: Path, name: str, result, summary, indices: np.ndarray, settings: dict, *,
                 shard=None) -> dict:
    """One regularizer's run of ``attack``: the two grids, the arrays, the metrics; returns the record.

    ``shard``: :meth:`advmnist.experiments.shards.Shard.record` when the run is a shard.
    """
    stem = AttackSettings.file_stem(name)
    files = figures.attack_figures(result, name, out)
    files["arrays"] = _write_arrays(out, stem, result, indices)
    record = {**summary.to_dict(), **_files(files), "settings": settings, **_shard(shard)}
    fileio.write_json(out / f"{stem}.json", record)
    return record


def write_comparison(out: Path, results: dict, records: dict) -> dict:
    """``attack --reg all``: the side-by-side figure and table of the regularizers."""
    figure = out / f"{AttackSettings.COMPARISON_STEM}.png"
    figures.comparison_figure(results, figure)
    keys = ("success", "success_8bit", "count", "L1Norm", "L2Norm", "mean_l1", "mean_l2", "mean_linf")
    table = [{"reg": name, **{key: record["summary"][key] for key in keys}} for name, record in records.items()]
    fileio.write_json(out / f"{AttackSettings.COMPARISON_STEM}.json", {"table": table, "figure": display_path(figure)})
    return {"runs": records, "comparison": table, "figure": display_path(figure)}


def write_minimal(out: Path, stem: str, result, report_, indices: np.ndarray, settings: dict, *,
                  shard=None) -> dict:
    """``minimal``: the grids and the curve, the arrays, the metrics; returns the record."""
    files = robustness_figures.minimal_figures(result, report_, out)
    files["arrays"] = _write_arrays(out, stem, result, indices)
    record = {**report_.to_dict(), **_files(files), "settings": settings, **_shard(shard)}
    fileio.write_json(out / f"{stem}.json", record)
    return record


def matching_minimal(out: Path, norm: str, indices: np.ndarray, models: list[str]) -> dict:
    """``minimal_<norm>.json`` in ``out`` if it is an untargeted run on these images of one of ``models``:
    {model: its curve}."""
    path = out / f"minimal_{norm}.json"
    try:
        record = fileio.read_json(path)  # {} if absent or unreadable
        rows, model = record["rows"], record["settings"]["model"]
        curve = record["curve"]
    except (KeyError, TypeError):  # not a minimal record: nothing to draw
        return {}
    same_images = [r["index"] for r in rows] == indices.tolist() and all(r["target"] < 0 for r in rows)
    if not (same_images and model in models):
        return {}
    norms = [r[norm] if r["adversarial_8bit"] else float("inf") for r in rows]
    return {model: {**curve, "file": display_path(path), "norms": norms}}


def write_robustness(out: Path, settings, curves, indices: np.ndarray, labels: np.ndarray, minimal: dict, *,
                     suffix: str = "", shard=None) -> dict:
    """``robustness``: the figure; per model and image the smallest fooling eps, its example, the member of
    the attack that found it and at which step, the plain forward pass's verdict; the table.

    ``warnings``: each model's (:meth:`~advmnist.experiments.robustness.RobustnessCurve.warnings`), named.
    """
    stem = settings.file_stem + suffix
    figure = out / f"{stem}.png"
    robustness_figures.robustness_figure(curves, figure, norm=settings.norm, targeted=settings.target is not None,
                                        minimal=minimal, attack=settings.attack)
    for curve in curves:
        if curve.model in minimal:
            minimal[curve.model]["pgd_below_minimal"] = curve.below_minimal(minimal[curve.model]["norms"])
    minimal = {model: {k: v for k, v in entry.items() if k != "norms"} for model, entry in minimal.items()}
    arrays = out / f"{stem}.npz"
    # the plain forward pass's verdicts, when every curve was re-checked
    checked = {} if any(c.confirmed is None for c in curves) else {"confirmed": np.stack([c.confirmed
                                                                                         for c in curves])}
    fileio.write_npz(arrays, indices=indices, labels=labels, eps=np.asarray(curves[0].eps),
                     eps_fooled=np.stack([c.eps_fooled for c in curves]),
                     adversarial=np.stack([c.adversarial for c in curves]),
                     fools_8bit=np.stack([c.fools_8bit for c in curves]),
                     members=np.asarray(curves[0].members, dtype=str),
                     broken_by=np.stack([c.broken_by for c in curves]),
                     broken_at=np.stack([c.broken_at for c in curves]), **checked)
    models = [c.summary() for c in curves]
    warnings = [f"{m['model']}: {w}" for m in models for w in m["warnings"]]
    record = {"settings": dataclasses.asdict(settings), "models": models, "minimal": minimal,
              "warnings": warnings, **_files({"figure": figure, "arrays": arrays}), **_shard(shard)}
    fileio.write_json(out / f"{stem}.json", record)
    return record


def write_transfer(out: Path, settings, matrix, examples: dict, indices: np.ndarray, labels: np.ndarray,
                   targets) -> dict:
    """``transfer``: the heatmaps, the examples made on each network, the matrices."""
    stem = settings.file_stem
    figure = out / f"{stem}.png"
    robustness_figures.transfer_figure(matrix, figure, attack=settings.attack)
    arrays = out / f"{stem}.npz"
    fileio.write_npz(arrays, indices=indices, labels=labels,
                     targets=targets if targets is not None else np.full(len(labels), -1),
                     examples=np.stack([examples[s] for s in matrix.sources]))
    record = {"settings": dataclasses.asdict(settings), **matrix.to_dict(),
              **_files({"figure": figure, "arrays": arrays})}
    fileio.write_json(out / f"{stem}.json", record)
    return record


def write_matrix(out: Path, stem: str, reg: str, result, cells, indices: np.ndarray, settings: dict,
                 seconds: float, *, shard=None) -> dict:
    files = figures.matrix_figures(cells, reg, out)
    files["arrays"] = _write_arrays(out, stem, result, indices)
    record = {"settings": settings, **cells.to_dict(), "success_overall": float(result.success.mean()),
              "hardest": cells.hardest(), "easiest": cells.easiest(), "seconds": round(seconds, 2),
              **_files(files), **_shard(shard)}
    fileio.write_json(out / f"{stem}.json", record)
    return record


def write_tradeoff(out: Path, stem: str, points, smallest, indices: np.ndarray, settings: dict, seconds: float,
                   title: str) -> dict:
    figure = out / f"{stem}.png"
    figures.tradeoff_figure(points, figure, title=title)
    record = {"settings": settings, "points": [p.summary() for p in points],
              "smallest_success": [None if best is None else {"index": int(indices[i]), **best}
                                   for i, best in enumerate(smallest)],
              "seconds": round(seconds, 2), "figure": display_path(figure)}
    fileio.write_json(out / f"{stem}.json", record)
    return record


def write_universal(out: Path, stem: str, result, targets: list[int], test, settings, *, model_path,
                    target: str, noise_file: Path | None) -> dict:
    """``universal``: figures per target, the noises (unless measured from a file), the metrics."""
    tag = "" if noise_file is None else "_given"
    files = figures.universal_figures(result, targets, test.images, test.labels, out,
                                     noise_limit=settings.noise_limit, tag=tag)
    if noise_file is None:
        for t, noise in zip(targets, result.noise):
            fileio.write_npy(out / f"universal_noise_{t}.npy", noise)
        if target == "all":
            fileio.write_npy(out / "universal_noise_all.npy", result.noise)
    record = {**result.to_dict(), "model": display_path(model_path), "target": target, **_files(files),
              "settings": {**dataclasses.asdict(settings),
                           "noise_file": display_path(noise_file) if noise_file else None}}
    fileio.write_json(out / f"{stem}.json", record)
    return record


def immunize_settings_record(settings) -> dict:
    return {**dataclasses.asdict(settings), "seed": settings.seed}


def write_immunize(out: Path, stem: str, result, *, run_dir: Path, base_model: Path, settings, title: str) -> dict:
    figure = out / f"{stem}.png"
    figures.immunize_figure(result, figure, title=title)
    record = {**result.to_dict(), "run_dir": display_path(run_dir), "model": display_path(run_dir / "model.pb"),
              "base_model": display_path(base_model), "figure": display_path(figure),
              "settings": immunize_settings_record(settings)}
    fileio.write_json(out / f"{stem}.json", record)
    return record


def write_pgd_training(out: Path, stem: str, result, *, run_dir: Path, base_model: Path, settings) -> dict:
    figure = out / f"{stem}.png"
    robustness_figures.pgd_training_figure(result, figure, eps=settings.eps)
    record = {**result.to_dict(), "run_dir": display_path(run_dir), "model": display_path(run_dir / "model.pb"),
              "base_model": display_path(base_model) if base_model else None, "figure": display_path(figure),
              "settings": dataclasses.asdict(settings)}
    fileio.write_json(out / f"{stem}.json", record)
    return record


def write_immunize_partial(out: Path, stem: str, stopped, *, base_model: Path, settings) -> Path:
    """What an interrupted ``immunize`` finished: ``<stem>_partial.json``."""
    partial = out / f"{stem}_partial.json"
    fileio.write_json(partial, {**stopped.to_dict(), "base_model": display_path(base_model),
                                "settings": immunize_settings_record(settings)})
    return partial
