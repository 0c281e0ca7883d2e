"""The files of the named datasets: where they are looked for, their published checksums,
and downloads from the publishers' mirrors into a cache (atomic, verified before use).

Files are looked up in ``data_dir`` (or ``AEVB_DATA_DIR``), in its subfolders ``mnist/``,
``fashion-mnist/``, ``binarized_mnist/`` and ``frey/``, then in the cache (``AEVB_CACHE_DIR``,
default ``~/.cache/aevb``). A missing file is downloaded only when allowed.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import tempfile
import urllib.request
import zlib
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from aevb.errors import DataError

__all__ = ["DatasetFiles", "default_cache_dir", "default_data_dir", "gunzip"]

IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
AMAT_FILES = tuple(f"binarized_mnist_{s}.amat" for s in ("train", "valid", "test"))
FREY_FILE = "frey_rawface.mat"

# Published checksums, keyed by (subfolder, file name). For the .amat files the hash is of the
# plain text, so a gzipped copy (name + ".gz") is verified after decompression.
_CHECKSUMS: dict[tuple[str, str], tuple[str, str]] = {
    ("mnist", IDX_FILES[0]): ("md5", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    ("mnist", IDX_FILES[1]): ("md5", "d53e105ee54ea40749a09fcbcd1e9432"),
    ("mnist", IDX_FILES[2]): ("md5", "9fb629c4189551a2d022fa330f9573f3"),
    ("mnist", IDX_FILES[3]): ("md5", "ec29112dd5afa0611ce80d1b7f02629c"),
    ("fashion-mnist", IDX_FILES[0]): ("md5", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
    ("fashion-mnist", IDX_FILES[1]): ("md5", "25c81989df183df01b3e8a0aad5dffbe"),
    ("fashion-mnist", IDX_FILES[2]): ("md5", "bef4ecab320f06d8554ea6380940ec79"),
    ("fashion-mnist", IDX_FILES[3]): ("md5", "bb300cfdad3c16e7a12a480ee83cd310"),
    ("binarized_mnist", AMAT_FILES[0]): (
        "sha256",
        "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d",
    ),
    ("binarized_mnist", AMAT_FILES[1]): (
        "sha256",
        "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2",
    ),
    ("binarized_mnist", AMAT_FILES[2]): (
        "sha256",
        "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c",
    ),
    ("frey", FREY_FILE): ("md5", "5aeb024d42b8a6091f30e5eb18c8a48d"),
}

# Download mirrors per subfolder, tried in order; the file name is appended.
_MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    "binarized_mnist": ("http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/",),
    "frey": ("https://cs.nyu.edu/~roweis/data/",),
}


def default_data_dir() -> Path | None:
    """The folder named by the AEVB_DATA_DIR environment variable, or None when unset."""
    value = os.environ.get("AEVB_DATA_DIR")
    return Path(value).expanduser() if value else None


def default_cache_dir() -> Path:
    """Where downloads go: AEVB_CACHE_DIR, or ~/.cache/aevb."""
    value = os.environ.get("AEVB_CACHE_DIR")
    return Path(value).expanduser() if value else Path.home() / ".cache" / "aevb"


class DatasetFiles:
    """Finds, downloads and verifies the files of one named dataset."""

    def __init__(
        self,
        dataset: str,
        data_dir: str | os.PathLike | None,
        cache_dir: str | os.PathLike | None,
        download: bool,
        progress: bool,
    ) -> None:
        self.dataset = dataset
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
        # Downloads land in the cache, so it is searched too: a file fetched once is reused.
        self.roots = list(dict.fromkeys(r for r in (root, self.cache_dir) if r is not None))
        self.download = download
        self.progress = progress

    def read(self, subfolder: str, name: str) -> tuple[Path, bytes]:
        """Return the file's path and verified content (the .amat text for .amat.gz files)."""
        algo, digest = _CHECKSUMS[(subfolder, name)]
        path = self._find(subfolder, name) or self._download(subfolder, name, algo, digest)
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise DataError(f"{path}: cannot read file: {e}") from e
        gzipped = path.name != name  # binarized_mnist_*.amat.gz: the hash is of the .amat text
        content = gunzip(raw, path) if gzipped else raw
        actual = hashlib.new(algo, content).hexdigest()
        if actual != digest:
            what = f"{algo} of the decompressed content" if gzipped else algo
            raise DataError(
                f"{path}: checksum mismatch ({what}: expected {digest}, got {actual}); the file "
                "is corrupt or not the published one. Delete it and download it again."
            )
        return path, content

    def _find(self, subfolder: str, name: str) -> Path | None:
        names = (name, name + ".gz") if name.endswith(".amat") else (name,)
        for candidate in self._candidates(subfolder, names):
            if candidate.is_file():
                return candidate
        return None

    def _candidates(self, subfolder: str, names: tuple[str, ...]) -> list[Path]:
        return [d / n for r in self.roots for d in (r / subfolder, r) for n in names]

    def _download(self, subfolder: str, name: str, algo: str, digest: str) -> Path:
        if not self.download:
            looked = ", ".join(str(p) for p in self._candidates(subfolder, (name,)))
            raise DataError(
                f"{name} (dataset {self.dataset!r}) not found; looked in: {looked}. Pass "
                "--data-dir (data_dir=) or set AEVB_DATA_DIR to a folder that holds it, or allow "
                "downloading (download=True, AEVB_OFFLINE unset)."
            )
        target = self.cache_dir / subfolder / name
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DataError(f"cannot create download folder {target.parent}: {e}") from e
        failures = []
        for base in _MIRRORS[subfolder]:
            url = base + name
            try:
                actual = _fetch(url, target, algo, digest, self.progress)
            except (OSError, http.client.HTTPException, ValueError) as e:
                failures.append(f"{url} ({type(e).__name__}: {e})")
                continue
            if actual == digest:
                return target
            failures.append(f"{url} (checksum mismatch: {algo} expected {digest}, got {actual})")
        raise DataError(
            f"could not download {name} for dataset {self.dataset!r}; tried "
            + "; ".join(failures)
            + f". Download it by hand into {target.parent}, or pass --data-dir."
        )


def _open_url(url: str) -> BinaryIO:
    """Open ``url`` for streaming (a separate function so tests can serve local bytes)."""
    request = urllib.request.Request(url, headers={"User-Agent": "aevb"})
    return urllib.request.urlopen(request, timeout=60)


def _fetch(url: str, target: Path, algo: str, digest: str, progress: bool) -> str:
    """Stream ``url`` into ``target`` atomically; return the payload's hex digest.

    The payload goes to a temporary file beside ``target`` and replaces it only when its
    digest equals ``digest``, so an interrupted or corrupt download never leaves a file that a
    later run would pick up.
    """
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    hasher = hashlib.new(algo)
    try:
        with os.fdopen(fd, "wb") as out, _open_url(url) as response:
            total = getattr(response, "length", None)
            with tqdm(
                total=total, unit="B", unit_scale=True, desc=target.name, disable=not progress
            ) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    hasher.update(chunk)
                    bar.update(len(chunk))
        actual = hasher.hexdigest()
        if actual == digest:
            os.replace(tmp, target)
        return actual
    finally:
        # Only a verified payload is moved into place; any other outcome deletes the temp file.
        Path(tmp).unlink(missing_ok=True)


def gunzip(raw: bytes, path: Path) -> bytes:
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: not a valid gzip file ({e}); it is truncated or corrupt") from e
