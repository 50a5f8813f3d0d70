"""Work past one process: a shard of a per-image command, and the merge of the shards' results.

``--shard K/N`` makes ``attack``, ``matrix``, ``minimal`` and ``robustness`` work on
images K, K+N, K+2N, ... of their selection (the pairs of images and targets for
``matrix``). Each image keeps its place in the selection for its random draws
(:class:`advmnist.attacks.Draws`), so a shard computes the same thing for it as the
whole run. Each shard writes the command's usual files with a ``shard`` entry in the
metrics ``.json``: its index, the number of shards and the size of the selection.

:func:`merge` puts the shards back in selection order and writes, through the same
writers as the commands, the files one unsharded run writes: the tables, summaries,
``.npz`` arrays and figures are computed from the merged arrays. Times are the sum of
the shards' times.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np

from advmnist import fileio
from advmnist.errors import InvalidInput

SHARD_PATTERN = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclasses.dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``: the selection's images index, index + count, ..."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> "Shard":
        match = SHARD_PATTERN.match(str(text))
        if not match:
            raise InvalidInput(f"expected K/N with 0 <= K < N (e.g. 0/4), got {text!r}")
        index, count = int(match.group(1)), int(match.group(2))
        if not 0 <= index < count:
            raise InvalidInput(f"expected K/N with 0 <= K < N (e.g. 0/4), got {text!r}")
        return cls(index, count)

    def positions(self, population: int) -> np.ndarray:
        """This shard's places in a selection of ``population`` images (may be empty)."""
        return np.arange(self.index, population, self.count)

    def select(self, population: int, *arrays):
        """(positions, each array cut to this shard; None stays None). A shard with no image is refused."""
        if self.count > population:
            raise InvalidInput(f"expected at most as many shards as images: shard {self} of a selection of "
                               f"{population} would be empty; use N <= {population}")
        positions = self.positions(population)
        return (positions, *(None if a is None else a[positions] for a in arrays))

    @property
    def folder(self) -> str:
        """Where a shard's files go under the default ``--out``."""
        return f"shard-{self.index}-of-{self.count}"

    def record(self, population: int) -> dict:
        return {"index": self.index, "count": self.count, "population": int(population)}

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclasses.dataclass
class Part:
    """One shard's results of one command: its metrics record and arrays."""

    stem: str
    record: dict
    arrays: dict
    path: Path

    @property
    def shard(self) -> dict:
        return self.record["shard"]

    def positions(self) -> np.ndarray:
        return Shard(self.shard["index"], self.shard["count"]).positions(self.shard["population"])


def find_parts(folders) -> dict[str, list[Part]]:
    """Every shard result in ``folders`` (``<stem>.json`` with a ``shard`` entry, and its ``.npz``), by stem.

    Temporary files of an interrupted write (``.<stem>.*.tmp.json``) are not results. Each
    ``.npz`` must be the one its ``.json`` was written with, and hold that shard's images.
    """
    from advmnist.experiments.results import check_files

    parts: dict[str, list[Part]] = {}
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise InvalidInput(f"expected a folder of shard results, got {folder}")
        for path in sorted(folder.glob("*.json")):
            if path.name.startswith("."):
                continue
            record = fileio.read_json(path)
            if not isinstance(record, dict) or "shard" not in record or path.stem.endswith("_partial"):
                continue
            check_shard_entry(record["shard"], path)
            check_files(record, path)
            arrays = fileio.read_npz(path.with_suffix(".npz"), what=f"the arrays of {path}")
            part = Part(path.stem, record, arrays, path)
            held = len(np.asarray(arrays.get("indices", ())).reshape(-1)) if "indices" in arrays else None
            if held is not None and held != len(part.positions()):
                raise InvalidInput(f"{path.with_suffix('.npz')}: expected the {len(part.positions())} images of shard "
                                   f"{part.shard['index']}/{part.shard['count']}, got {held}")
            parts.setdefault(path.stem, []).append(part)
    if not parts:
        raise InvalidInput("expected shard results (metrics .json files written with --shard) in "
                           + ", ".join(str(f) for f in folders) + "; found none")
    return parts


def check_shard_entry(shard, path: Path) -> None:
    """A metrics record's ``shard`` entry: whole numbers with 0 <= index < count <= population."""
    try:
        index, count, population = (shard[key] for key in ("index", "count", "population"))
        valid = all(type(v) is int for v in (index, count, population)) and 0 <= index < count <= population
    except (KeyError, TypeError):
        valid = False
    if not valid:
        raise InvalidInput(f"{path}: expected a shard entry with whole numbers 0 <= index < count <= population "
                           f"(as --shard writes it), got {shard!r}")


def check_complete(stem: str, parts: list[Part]) -> None:
    """Every shard of one run, once, with the same settings."""
    first = parts[0]
    shards = [p.shard for p in parts]
    count, population = shards[0]["count"], shards[0]["population"]
    if any(s["count"] != count or s["population"] != population for s in shards):
        raise InvalidInput(f"{stem}: expected shards of one split (same N and selection), got "
                           + ", ".join(f"{s['index']}/{s['count']} of {s['population']}" for s in shards))
    found = sorted(s["index"] for s in shards)
    if found != list(range(count)):
        missing = sorted(set(range(count)) - set(found))
        twice = sorted({k for k in found if found.count(k) > 1})
        raise InvalidInput(f"{stem}: expected shards 0..{count - 1} once each; "
                           + (f"missing {', '.join(f'{k}/{count}' for k in missing)}" if missing else "")
                           + ("; " if missing and twice else "")
                           + (f"found {', '.join(f'{k}/{count}' for k in twice)} more than once" if twice else ""))
    for part in parts[1:]:
        models = [p.record.get("settings", {}).get("model_sha256") for p in (first, part)]
        if isinstance(first.record.get("settings"), dict) and models[0] != models[1]:
            raise InvalidInput(f"{stem}: expected shards made on one model; {part.path} and {first.path} were made on "
                               "different models (their model.pb differ)")
        attacks = [(p.record.get("settings") or {}).get("attack") for p in (first, part)]
        if attacks[0] != attacks[1]:
            raise InvalidInput(f"{stem}: expected one attack in every shard; {part.path} was made by {attacks[1]}, "
                               f"{first.path} by {attacks[0]}")
        if part.record.get("settings") != first.record.get("settings"):
            raise InvalidInput(f"{stem}: expected the same settings in every shard; {part.path} and "
                               f"{first.path} differ")


def interleave(parts: list[Part], key: str, axis: int = 0) -> np.ndarray:
    """``key``'s arrays of every shard, each image put back at its place in the selection."""
    population = parts[0].shard["population"]
    first = np.asarray(parts[0].arrays[key])
    shape = list(first.shape)
    shape[axis] = population
    merged = np.empty(shape, first.dtype)
    for part in parts:
        index = [slice(None)] * len(shape)
        index[axis] = part.positions()
        merged[tuple(index)] = part.arrays[key]
    return merged


def merged_result(parts: list[Part]):
    """The :class:`~advmnist.attacks.AttackResult` of the whole selection, and its image indices."""
    from advmnist.attacks import AttackResult

    keys = parts[0].arrays.keys()
    merged = {key: interleave(parts, key) for key in keys}
    return AttackResult.from_arrays(merged), merged["indices"]


def total_seconds(parts: list[Part], get=lambda record: record["seconds"]) -> float:
    return round(sum(float(get(p.record)) for p in parts), 2)


def shardable() -> dict:
    """The experiments whose commands take ``--shard``: the start of their result files' names -> the module,
    whose ``merge_shards(out, stem, parts)`` writes the merged files and returns their record and the merged
    AttackResult (None when there is none), and whose optional ``merged_extras(out, groups, merged)`` writes
    what is made from several merged results (``attack --reg all``'s comparison).

    Found, not listed: every module of :mod:`advmnist.experiments` that defines ``SHARD_PREFIX`` and
    ``merge_shards``."""
    import importlib
    import pkgutil

    import advmnist.experiments

    modules = (importlib.import_module(f"advmnist.experiments.{info.name}")
               for info in pkgutil.iter_modules(advmnist.experiments.__path__))
    return {module.SHARD_PREFIX: module for module in modules
            if hasattr(module, "SHARD_PREFIX") and hasattr(module, "merge_shards")}


def merge(folders, out: Path) -> list[dict]:
    """Merge the shard results found in ``folders`` into ``out``: one record per command run.

    Everything is checked before anything is written.
    """
    experiments = shardable()
    groups = find_parts(folders)
    for stem, parts in groups.items():
        if not stem.startswith(tuple(experiments)):
            names = sorted(module.COMMAND for module in experiments.values())
            raise InvalidInput(f"{parts[0].path}: expected the results of {', '.join(names[:-1])} or {names[-1]}")
        check_complete(stem, parts)

    def experiment(stem):
        return experiments[next(prefix for prefix in experiments if stem.startswith(prefix))]

    merged = {stem: experiment(stem).merge_shards(Path(out), stem, parts) for stem, parts in sorted(groups.items())}
    records = [record for record, _ in merged.values()]
    for module in experiments.values():
        if hasattr(module, "merged_extras"):
            records += module.merged_extras(Path(out), groups, merged)
    return records
