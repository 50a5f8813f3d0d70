"""Results on disk, what every experiment's writer shares: a record's files and their SHA-256 (the manifest of
its result set), the check of a set, the arrays of an attack's run, a shard's entry.

Each experiment writes its own files and figures (``write_*`` in its module of :mod:`advmnist.experiments`, or of
:mod:`advmnist.defences` for the two immunizations); the library returns values. Every file is written
atomically, and every path in a record is relative to the working folder when it lies under it
(:func:`advmnist.fileio.display_path`), so committed results hold no machine's paths.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from advmnist import fileio
from advmnist.fileio import display_path


def _paths(files: dict) -> dict:
    return {key: _paths(value) if isinstance(value, dict) else display_path(value) for key, value in files.items()}


def record_files(files: dict) -> dict:
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


def write_arrays(out: Path, stem: str, result, indices: np.ndarray) -> Path:
    """``<stem>.npz``: every attacked image's arrays and its index in the split."""
    arrays = out / f"{stem}.npz"
    fileio.write_npz(arrays, **result.arrays(), indices=indices)
    return arrays


def shard_entry(shard: dict | None) -> dict:
    """A shard's entry in its metrics record (:meth:`advmnist.experiments.shards.Shard.record`), none for a whole
    run."""
    return {} if shard is None else {"shard": shard}


