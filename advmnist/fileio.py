"""Atomic file writes: a reader never sees half a file, a crash never damages an old one."""
from __future__ import annotations

import contextlib
import io
import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np


@contextlib.contextmanager
def atomic_path(path: os.PathLike | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``.

    The temporary name keeps the final suffix, so tools that infer a format from it
    (matplotlib's ``savefig``) still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual mode
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def display_path(path: os.PathLike | str) -> str:
    """A path for results and messages: relative to the working folder when it lies under it.

    Committed results then hold ``runs/cnn/model.pb``, not one machine's absolute path.
    """
    path = Path(path)
    try:
        return str(path.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def read_json(path: os.PathLike | str, expected: type = dict):
    """The JSON value in ``path`` if it is an ``expected`` (dict, list), else an empty one: missing,
    unreadable or another shape all read as nothing."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return expected()
    return value if isinstance(value, expected) else expected()


def read_toml(path: os.PathLike | str) -> dict:
    """A TOML file's tables.

    Raises:
        InvalidInput: the file cannot be read or is not TOML; the message names it.
    """
    from advmnist.errors import InvalidInput

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        return tomllib.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise InvalidInput(f"expected a readable TOML file, got {path} ({err})") from err


def sha256_file(path: os.PathLike | str) -> str:
    """The SHA-256 of a file's bytes, read in pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_bytes(path: os.PathLike | str, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: os.PathLike | str, obj) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def write_npz(path: os.PathLike | str, **arrays: np.ndarray) -> None:
    """Like ``np.savez`` but byte-for-byte reproducible.

    ``np.savez`` stamps every member with the current time; here every member gets
    the same fixed date so that the same arrays always give the same bytes.
    """
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asarray(arrays[name]), allow_pickle=False)


def read_npz(path: os.PathLike | str, what: str = "arrays") -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file (no pickles).

    Raises:
        InvalidInput: the file is missing or is not such an archive; the message names it.
    """
    from advmnist.errors import InvalidInput

    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise InvalidInput(f"expected {what} in {path}, a .npz archive of arrays ({err})") from err


def write_npy(path: os.PathLike | str, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.asarray(array), allow_pickle=False)
    write_bytes(path, buffer.getvalue())


def check_writable_dir(folder: os.PathLike | str, what: str = "folder") -> None:
    """Make sure ``folder`` exists or can be created, and can take new files; create nothing.

    Run before any long computation, so that an unwritable ``--out`` is an error in a
    second, not after the work. Writability is tried for real (a temporary file made
    and removed at once), so it holds for read-only mounts and for root alike.

    Raises:
        InvalidInput: the message names ``what``, the folder and what stands in the way.
    """
    from advmnist.errors import InvalidInput

    folder = Path(folder)
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise InvalidInput(f"cannot use {what} {folder}: {existing} is a file, expected a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".advmnist-write-test.", dir=existing)
    except OSError as err:
        reason = err.strerror or str(err)
        where = "" if existing == folder else f" (it would be created in {existing})"
        raise InvalidInput(f"cannot write to {what} {folder}{where}: {reason}; "
                           "pass a folder you can write to") from err
    os.close(fd)
    os.unlink(probe)
