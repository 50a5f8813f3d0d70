"""Both reference experiments, end to end, as steps that are run once and reused after.

A step is one advmnist command with its arguments, writing into its own folder under
the report folder. When it finishes, ``steps/<name>.json`` records the arguments, the
config table it read, the model it ran on (SHA-256 of ``model.pb``), the advmnist
version, its wall time and the SHA-256 of every file it wrote. A later run with the same
settings finds that record, checks the files are still there and unchanged, and reuses
the step instead of running it again; an interrupted run keeps every finished step.

:func:`collect` then reads the results from disk into one record, with every reference
number (:mod:`advmnist.report.reference`) beside ours; :mod:`advmnist.report.pages` writes it out.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Callable

import advmnist
from advmnist.report import reference
from advmnist.experiments import results
from advmnist.errors import InvalidInput
from advmnist.fileio import display_path, read_json, read_toml, sha256_file
from advmnist.model.frozen import resolve_model_path
from advmnist.model.runs import inspect_run

STEP_FOLDER = "steps"
#: The steps of a full reproduction, in order. ``immunize`` is advmnist's recipe against
#: target 3; ``immunize-reference`` and ``immunize-all`` use the reference's recipe (one
#: fixed noise per phase, no replay), the second for every target in turn (about 30
#: minutes on 2 CPU cores).
STEPS = ("train", "attack", "universal", "immunize", "immunize-reference", "immunize-all", "matrix", "tradeoff")
REFERENCE_RECIPE = ("--refresh-every", "0", "--no-replay")


@dataclasses.dataclass(frozen=True)
class Step:
    name: str
    command: str            # the advmnist command it runs
    args: tuple[str, ...]   # its arguments, without --config: what must match for reuse
    folder: Path            # where its results go (cleared before the step runs, except a run folder)
    extra: tuple[str, ...] = ()  # arguments that depend on what is on disk (--resume), not part of its identity


def plan(out: Path, model: Path | None, steps=STEPS) -> list[Step]:
    """The steps to run; without ``model`` the first trains one into ``out/run``.

    Paths are made absolute, so the same folder spelled another way is still the same step.
    """
    out = Path(out).absolute()
    run = out / "run"
    model = Path(model).absolute() if model is not None else run
    chosen = [s for s in STEPS if s in steps and not (s == "train" and model != run)]
    common = ("--model", str(model))

    def immunize(target: str, folder: str, *recipe: str) -> tuple:
        schedule = ("--schedule", "sequential") if target == "all" else ()
        return ("immunize", ("universal", "--target", target, *schedule, *recipe, "--run-dir", str(out / folder),
                             "--overwrite") + common)

    table = {
        "train": ("train", ("--run-dir", str(run))),
        "attack": ("attack", ("--reg", "all") + common),
        "universal": ("universal", ("--target", "all") + common),
        "immunize": immunize("3", "immune-3"),
        "immunize-reference": immunize("3", "immune-3-reference", *REFERENCE_RECIPE),
        "immunize-all": immunize("all", "immune-all-sequential-reference", *REFERENCE_RECIPE),
        "matrix": ("matrix", common),
        "tradeoff": ("tradeoff", common),
    }
    result = []
    for name in chosen:
        command, args = table[name]
        if name == "train":
            state = inspect_run(run)
            # an interrupted run goes on; a finished one that no longer matches is moved aside
            extra = ("--resume",) if state.exists and not state.has_model else ("--overwrite",) if state.exists else ()
            result.append(Step(name, command, args, run, extra))
        else:
            result.append(Step(name, command, args + ("--out", str(out / name)), out / name))
    return result


def config_table(config: Path | None, command: str) -> dict:
    """The ``[command]`` table of a reproduce config (empty without one).

    Raises:
        InvalidInput: the file is not TOML, or the table is not a table.
    """
    if config is None:
        return {}
    table = read_toml(config).get(command, {})
    if not isinstance(table, dict):
        raise InvalidInput(f"{config}: expected a [{command}] table, got {table!r}")
    return dict(table)


def model_digest(step: Step) -> str | None:
    """SHA-256 of the model a step runs on (None for training, or a model not there yet)."""
    if "--model" not in step.args:
        return None
    pb = resolve_model_path(step.args[step.args.index("--model") + 1])
    return sha256_file(pb) if pb.is_file() else None


def identity(step: Step, config: Path | None) -> dict:
    """What must match for a finished step to be reused (the code's version included)."""
    return {"command": step.command, "args": list(step.args), "config": config_table(config, step.command),
            "model_sha256": model_digest(step), "advmnist": advmnist.__version__, "code": code_digest()}


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """SHA-256 over advmnist's own source files: changed code is not reused."""
    digest = hashlib.sha256()
    root = Path(advmnist.__file__).parent
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def record_path(out: Path, step: Step) -> Path:
    return Path(out) / STEP_FOLDER / f"{step.name}.json"


def reusable(step: Step, out: Path, config: Path | None) -> dict | None:
    """The finished record of ``step`` if its settings and files on disk still match, else None."""
    try:
        record = json.loads(record_path(out, step).read_text())
    except (OSError, ValueError):
        return None
    wanted = identity(step, config)
    if any(record.get(key) != value for key, value in wanted.items()):
        return None
    for name, digest in record.get("outputs", {}).items():
        path = step.folder / name
        if not path.is_file() or sha256_file(path) != digest:
            return None
    return record


def outputs(folder: Path) -> dict[str, str]:
    """Every file a step left in its folder, with its SHA-256 (checkpoints of a run included)."""
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


def hardware() -> dict:
    info = {"machine": platform.machine(), "system": platform.system(), "cpus": os.cpu_count(),
            "python": platform.python_version()}
    try:
        info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


def run_steps(steps: list[Step], out: Path, config: Path | None, runner: Callable[[list[str]], None], *,
              log: Callable[[str], None]) -> list[dict]:
    """Run (or reuse) every step in order; return their records. Ctrl-C keeps the finished ones."""
    from advmnist import fileio

    records = []
    for number, step in enumerate(steps, 1):
        found = reusable(step, out, config)
        if found is not None:
            log(f"[{number}/{len(steps)}] {step.name}: reusing the run of {found['finished']} "
                f"({found['seconds']:.0f} s), settings and files unchanged")
            records.append({**found, "reused": True})
            continue
        log(f"[{number}/{len(steps)}] {step.name}: advmnist {step.command} {' '.join(step.args + step.extra)}")
        if step.name != "train" and step.folder.exists() and any(step.folder.iterdir()):
            if not record_path(out, step).is_file():  # never delete what reproduce did not write
                raise InvalidInput(f"{step.folder} holds files that advmnist reproduce did not write; "
                                   "pass another --out")
            shutil.rmtree(step.folder)  # our own results of other settings, or of an interrupted run
        fileio.write_json(record_path(out, step), {"name": step.name, "status": "running"})
        args = [step.command, *step.args, *step.extra]
        if config is not None and config_table(config, step.command):
            args += ["--config", str(config)]
        started = time.time()
        runner(args)
        record = {"name": step.name, **identity(step, config), "seconds": round(time.time() - started, 1),
                  "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "folder": display_path(step.folder),
                  "hardware": hardware(), "outputs": outputs(step.folder)}
        fileio.write_json(record_path(out, step), record)
        records.append({**record, "reused": False})
        log(f"[{number}/{len(steps)}] {step.name}: done in {record['seconds']:.0f} s")
    return records


# ---------------------------------------------------------------------------- the report's numbers

def _json(path: Path) -> dict | None:
    """A results file's record, or None when there is none."""
    return read_json(path) or None


def _row(quantity: str, ours, theirs, *, unit: str = "", note: str = "") -> dict:
    difference = None if ours is None or theirs is None else ours - theirs
    return {"quantity": quantity, "ours": ours, "reference": theirs, "difference": difference, "unit": unit,
            "note": note}


def collect(out: Path) -> dict:
    """Everything the report shows, read from the step folders and records under ``out``."""
    records = {}
    for name in STEPS:
        record = _json(out / STEP_FOLDER / f"{name}.json")
        if record and "seconds" in record:  # finished (an interrupted step's record says "running")
            records[name] = record
    rows, figures = [], []
    model_meta = _model_meta(records)
    if model_meta and "test_accuracy" in model_meta:
        rows.append(_row("test accuracy of the trained CNN", model_meta["test_accuracy"], reference.TRAIN_ACCURACY,
                         unit="%", note="the reference trained 60 epochs"))
    for part in (_attack_rows, _universal_rows, _immunize_rows, _sweep_figures):
        more_rows, more_figures = part(out)
        rows += more_rows
        figures += more_figures

    warnings = _mixed_set_warnings(out, records)
    models = {r["model_sha256"] for r in records.values() if r.get("model_sha256")}
    if len(models) > 1:
        warnings.append("the steps ran on different models (their model.pb differ): compare with care")

    settings = {name: {"command": r["command"], "args": r["args"], "config": r["config"],
                       "settings": _json(out / "run" / "run.json") if name == "train" else _step_settings(out / name)}
                for name, r in records.items()}
    first = next(iter(records.values()), {})
    return {"rows": rows, "differences": differences_from_reference(settings), "measures": reference.MEASURES,
            "figures": [(title, str(path)) for title, path in figures if Path(path).is_file()],
            "steps": [{"name": name, "seconds": r["seconds"], "finished": r["finished"], "folder": r["folder"]}
                      for name, r in records.items()],
            "settings": settings, "model": model_meta, "versions": (model_meta or {}).get("versions", {}),
            "hardware": first.get("hardware", {}), "advmnist": advmnist.__version__, "sources": reference.SOURCES,
            "warnings": warnings}


def _attack_rows(out: Path) -> tuple[list, list]:
    """The attack step: per regularizer, images at their target and the four measures, beside the reference's."""
    comparison = _json(out / "attack" / "mnist_adv_comparison.json")
    if not comparison:
        return [], []
    rows = []
    for line in comparison["table"]:
        reg = line["reg"]
        theirs = reference.ATTACK[reg]
        ours = _json(out / "attack" / f"mnist_adv_{reg}.json")["summary"]
        rows.append(_row(f"{reg}: images at their target (of 16)", ours["success"], theirs["success"]))
        for key in ("L1Norm", "L2Norm", "cross_entropy_loss", "regularize_cost"):
            rows.append(_row(f"{reg}: {key}", ours[key], theirs[key], note=reference.NOTES.get((reg, key), "")))
    return rows, [("per-image targeted noise, the three regularizers side by side",
                   out / "attack" / "mnist_adv_comparison.png")]


def _universal_rows(out: Path) -> tuple[list, list]:
    """The universal step: clean accuracy and accuracy under the target-3 noise."""
    universal = _json(out / "universal" / "universal_all.json")
    if not universal:
        return [], []
    three = next(e for e in universal["effects"] if e["target"] == 3)
    rows = [_row("universal noise: clean test accuracy", universal["clean_accuracy"],
                 reference.UNIVERSAL_CLEAN_ACCURACY, unit="%", note="the reference's network is smaller"),
            _row("universal noise: test accuracy under the target-3 noise", three["accuracy"],
                 reference.UNIVERSAL_TARGET3_ACCURACY, unit="%")]
    return rows, [("one universal noise per target class", out / "universal" / "universal_noise_all.png"),
                  ("the target-3 noise on nine test images", out / "universal" / "universal_samples_3.png")]


def _immunize_rows(out: Path) -> tuple[list, list]:
    """The three immunize steps: target 3 under both recipes, and every target in turn."""
    rows, figures = [], []
    for name in ("immunize", "immunize-reference", "immunize-all"):
        folder = out / name
        found = [p for p in sorted(folder.glob("immunize_*.json")) if not p.stem.endswith("_partial")] \
            if folder.is_dir() else []
        result = _json(found[0]) if found else None
        if not result or "after" not in result:
            continue
        rows += _target3_rows(name, result) if name != "immunize-all" else _every_target_rows(result)
        figures.append((f"immunization ({name})", found[0].with_suffix(".png")))
    return rows, figures


def _target3_rows(name: str, result: dict) -> list:
    last = result["history"][-1] if result["history"] else {}
    recipe, how = (("advmnist's", "noise refreshed during training, earlier noises replayed")
                   if name == "immunize" else
                   ("the reference's", "the reference's measure: the noise of its last training phase"))
    return [_row(f"target 3, {recipe} recipe: accuracy under the noise it trained on",
                 last.get("accuracy_trained_noise"), reference.IMMUNIZED_TARGET3_ACCURACY, unit="%", note=how),
            _row(f"target 3, {recipe} recipe: accuracy under a freshly optimized noise",
                 result["after"]["3"], None, unit="%", note="a new noise against the final network"),
            _row(f"target 3, {recipe} recipe: clean test accuracy", result["clean_after"], None, unit="%")]


def _every_target_rows(result: dict) -> list:
    rows = [_row("every target in turn, the reference's recipe: clean test accuracy",
                 result["clean_after"], reference.SEQUENTIAL_ALL_CLEAN_ACCURACY, unit="%")]
    lost = result.get("lost_since_own_training", {})
    if lost:
        rows.append(_row("every target in turn: most fresh-noise accuracy an earlier target lost since "
                         "its own training", max(lost.values()), None, unit="%",
                         note="the reference lost its earlier immunities"))
    return rows


def _sweep_figures(out: Path) -> tuple[list, list]:
    """The first figure of the matrix and tradeoff steps (no reference numbers)."""
    figures = []
    for name, title in (("matrix", "source x target: the cost of every pair"),
                        ("tradeoff", "noise size against success, over regularization weights")):
        images = [p for p in sorted((out / name).glob(f"{name}_*.png")) if not p.stem.endswith("_examples")] \
            if (out / name).is_dir() else []
        figures += [(title, image) for image in images[:1]]
    return [], figures


def _model_meta(records: dict) -> dict | None:
    """The ``model.json`` of the model the steps ran on (the one ``train`` made, or ``--model``)."""
    for record in records.values():
        args = record["args"]
        flag = "--model" if "--model" in args else "--run-dir" if "--run-dir" in args else None
        if flag is None:
            continue
        model = Path(args[args.index(flag) + 1])
        folder = model.parent if model.suffix in (".pb", ".json") else model
        return _json(folder / "model.json")
    return None


def _mixed_set_warnings(out: Path, records: dict) -> list[str]:
    """A warning per step result record whose files are not the ones it was written with (a mixed set)."""
    warnings = []
    for name in records:
        for path in sorted((out / name).glob("*.json")) if (out / name).is_dir() else []:
            record = _json(path)
            mixed = results.mixed_files(record, path) if isinstance(record, dict) else []
            if mixed:
                warnings.append(f"{', '.join(mixed)}: not the file(s) {path} was written with (another run's, or "
                                f"changed since): run the {name} step again")
    return warnings


def differences_from_reference(settings: dict) -> list[dict]:
    """Every setting a step ran with that is not the reference experiment's (e.g. fewer attack steps), so that
    no number is read beside the reference's without knowing it."""
    found = []
    for step, theirs in reference.SETTINGS.items():
        ours = (settings.get(step) or {}).get("settings")
        if not isinstance(ours, dict):
            continue
        for key, value in theirs.items():
            mine = ours
            for part in key.split("."):
                mine = mine.get(part) if isinstance(mine, dict) else None
            if mine is not None and mine != value:
                name = "noise-steps" if key == "noise.steps" else key.split(".")[-1].replace("_", "-")  # as the CLI
                found.append({"step": step, "setting": name, "ours": mine, "reference": value})
    return found


def _step_settings(folder: Path) -> dict | None:
    """The full settings (seeds included) that a step's results file records."""
    if not folder.is_dir():
        return None
    for path in sorted(folder.glob("*.json")):
        record = _json(path)
        if isinstance(record, dict) and isinstance(record.get("settings"), dict):
            return record["settings"]
    return None
