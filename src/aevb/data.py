"""Datasets for AEVB: the standard benchmarks and the user's own .npy/.npz/.csv/.parquet files.

Every loader returns a :class:`Dataset` of C-contiguous float32 ``(N, D)`` matrices split into
train / validation / test. Named datasets are found on disk (``data_dir``, ``AEVB_DATA_DIR`` or
the cache folder), downloaded when allowed, and always checked against their published
checksums. Numeric tables (.csv with or without a header row, .parquet) are read by
:func:`load_table` too, which keeps every row and the column names. Every bad input raises
:class:`~aevb.errors.DataError` with one clear message (naming the column where one is known).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import http.client
import io
import math
import os
import tempfile
import tokenize
import urllib.request
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from tqdm import tqdm

from aevb.errors import DataError

__all__ = [
    "DATASETS",
    "Dataset",
    "default_cache_dir",
    "default_data_dir",
    "load_dataset",
    "load_table",
]

DATASETS: tuple[str, ...] = ("mnist", "fashion-mnist", "binarized-mnist", "frey", "digits")
_USER_SUFFIXES = (".npy", ".npz", ".csv", ".parquet")

_IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
_AMAT_FILES = tuple(f"binarized_mnist_{s}.amat" for s in ("train", "valid", "test"))
_FREY_FILE = "frey_rawface.mat"

# Published checksums, keyed by (subfolder, file name). For the .amat files the hash is of the
# plain text, so a gzipped copy (name + ".gz") is verified after decompression.
_CHECKSUMS: dict[tuple[str, str], tuple[str, str]] = {
    ("mnist", _IDX_FILES[0]): ("md5", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    ("mnist", _IDX_FILES[1]): ("md5", "d53e105ee54ea40749a09fcbcd1e9432"),
    ("mnist", _IDX_FILES[2]): ("md5", "9fb629c4189551a2d022fa330f9573f3"),
    ("mnist", _IDX_FILES[3]): ("md5", "ec29112dd5afa0611ce80d1b7f02629c"),
    ("fashion-mnist", _IDX_FILES[0]): ("md5", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
    ("fashion-mnist", _IDX_FILES[1]): ("md5", "25c81989df183df01b3e8a0aad5dffbe"),
    ("fashion-mnist", _IDX_FILES[2]): ("md5", "bef4ecab320f06d8554ea6380940ec79"),
    ("fashion-mnist", _IDX_FILES[3]): ("md5", "bb300cfdad3c16e7a12a480ee83cd310"),
    ("binarized_mnist", _AMAT_FILES[0]): (
        "sha256",
        "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d",
    ),
    ("binarized_mnist", _AMAT_FILES[1]): (
        "sha256",
        "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2",
    ),
    ("binarized_mnist", _AMAT_FILES[2]): (
        "sha256",
        "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c",
    ),
    ("frey", _FREY_FILE): ("md5", "5aeb024d42b8a6091f30e5eb18c8a48d"),
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

_AMAT_WIDTH = 784
# What numpy, zipfile, csv and gzip raise for unreadable input. RuntimeError covers encrypted
# zip members and NotImplementedError (unsupported compression methods).
_READ_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    RuntimeError,
    csv.Error,
    zlib.error,
    zipfile.BadZipFile,
)
_FREY_SHAPE = (28, 20)


@dataclass
class Dataset:
    """A dataset split three ways; every matrix is (N, D) float32, C-contiguous.

    Images are flattened row-major and (for the named image datasets) scaled to [0, 1].
    """

    name: str
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    image_shape: tuple[int, ...] | None
    binary: bool
    train_labels: np.ndarray | None = None
    val_labels: np.ndarray | None = None
    test_labels: np.ndarray | None = None

    @property
    def data_dim(self) -> int:
        """Number of features D per example (pixels for images)."""
        return int(self.train.shape[1])


def default_data_dir() -> Path | None:
    """The folder named by the AEVB_DATA_DIR environment variable, or None when unset."""
    value = os.environ.get("AEVB_DATA_DIR")
    return Path(value).expanduser() if value else None


def default_cache_dir() -> Path:
    """Where downloads go: AEVB_CACHE_DIR, or ~/.cache/aevb."""
    value = os.environ.get("AEVB_CACHE_DIR")
    return Path(value).expanduser() if value else Path.home() / ".cache" / "aevb"


def load_dataset(
    name_or_path: str,
    data_dir: str | os.PathLike | None = None,
    *,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    download: bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> Dataset:
    """Load a named dataset (see DATASETS) or a user .npy/.npz/.csv/.parquet file (values kept
    as is; a .csv file may have a header row).

    ``val_fraction`` in [0, 1) of the training rows is held out as validation (except for
    binarized-mnist and .npz files with a ``val`` array, which have their own), using a
    permutation seeded with ``split_seed``. ``download=None`` means: download missing files
    unless AEVB_OFFLINE=1 or ``data_dir`` was given. The file-location arguments do not apply
    to user files, which are read from ``name_or_path`` itself.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    split = {"val_fraction": val_fraction, "split_seed": split_seed}
    if name_or_path in DATASETS:
        if download is None:
            offline = os.environ.get("AEVB_OFFLINE", "").strip().lower() in ("1", "true", "yes")
            download = data_dir is None and not offline
        files = _Files(name_or_path, data_dir, cache_dir, download, progress)
        if name_or_path in ("mnist", "fashion-mnist"):
            return _load_idx_dataset(files, name_or_path, split)
        if name_or_path == "binarized-mnist":
            return _load_binarized_mnist(files)
        if name_or_path == "frey":
            return _load_frey(files, split)
        return _load_digits(split)
    path = Path(name_or_path).expanduser()
    if path.suffix.lower() in _USER_SUFFIXES or path.exists():
        return _load_user_file(path, split)
    raise DataError(
        f"unknown dataset {name_or_path!r}: expected one of {', '.join(DATASETS)}, "
        f"or the path of an existing {'/'.join(_USER_SUFFIXES)} file"
    )


# --- locating, verifying and downloading the files of named datasets ---------------------------


class _Files:
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
        content = _gunzip(raw, path) if gzipped else raw
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


def _gunzip(raw: bytes, path: Path) -> bytes:
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: not a valid gzip file ({e}); it is truncated or corrupt") from e


# --- named datasets -----------------------------------------------------------------------------


def _parse_idx(data: bytes, path: Path, ndim: int) -> np.ndarray:
    """Parse an unsigned-byte idx file (magic 0x0000080N, big-endian uint32 dims) into uint8."""
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: only {len(data)} bytes, too short for an idx{ndim} header")
    magic = int.from_bytes(data[:4], "big")
    if magic != 0x800 | ndim:
        raise DataError(
            f"{path}: wrong idx magic number 0x{magic:08x} (expected 0x{0x800 | ndim:08x} "
            f"for {ndim}-D unsigned bytes)"
        )
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, 4))
    declared = math.prod(dims)
    if len(data) - header != declared:
        raise DataError(
            f"{path}: header declares shape {dims} ({declared} bytes) but the payload has "
            f"{len(data) - header} bytes"
        )
    if dims[0] == 0:
        raise DataError(f"{path}: holds no items (shape {dims})")
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def _read_idx_pair(files: _Files, subfolder: str, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """Return (images (N, H, W) uint8, labels (N,) uint8) of the train or t10k split."""
    img_path, img = files.read(subfolder, f"{prefix}-images-idx3-ubyte.gz")
    lab_path, lab = files.read(subfolder, f"{prefix}-labels-idx1-ubyte.gz")
    images = _parse_idx(_gunzip(img, img_path), img_path, 3)
    labels = _parse_idx(_gunzip(lab, lab_path), lab_path, 1)
    if len(images) != len(labels):
        raise DataError(
            f"{img_path}: holds {len(images)} images but {lab_path} {len(labels)} labels"
        )
    return images, labels


def _load_idx_dataset(files: _Files, name: str, split: dict) -> Dataset:
    train_x, train_y = _read_idx_pair(files, name, "train")
    test_x, test_y = _read_idx_pair(files, name, "t10k")
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DataError(
            f"{name}: train-images-idx3-ubyte.gz holds {train_x.shape[1:]} images but "
            f"t10k-images-idx3-ubyte.gz holds {test_x.shape[1:]} images"
        )
    shape = train_x.shape[1:]
    return _assemble(
        name,
        train_x.reshape(len(train_x), -1),
        train_y,
        test=(test_x.reshape(len(test_x), -1), test_y),
        image_shape=shape,
        scale=255.0,
        **split,
    )


def _parse_amat(text: bytes, path: Path) -> np.ndarray:
    """Parse .amat text (784 '0'/'1' characters separated by spaces per line) into (N, 784)."""
    line = 2 * _AMAT_WIDTH
    buf = np.frombuffer(text, np.uint8)
    if buf.size == 0:
        raise DataError(f"{path}: holds no lines")
    expected = f"{_AMAT_WIDTH} values '0'/'1' separated by single spaces, then '\\n'"
    if buf.size % line:
        ends = np.flatnonzero(buf == ord("\n"))
        lengths = np.diff(ends, prepend=-1)
        wrong = np.flatnonzero(lengths != line)
        where = (
            f"line {wrong[0] + 1} has {lengths[wrong[0]]} bytes"
            if wrong.size
            else f"line {ends.size + 1} is incomplete (no final newline)"
        )
        raise DataError(f"{path}: {where}, expected {line} bytes ({expected})")
    rows = buf.reshape(-1, line)
    values = rows[:, 0::2]
    ok = (rows[:, 1:-1:2] == ord(" ")).all(axis=1) & (rows[:, -1] == ord("\n"))
    ok &= ((values == ord("0")) | (values == ord("1"))).all(axis=1)
    if not ok.all():
        raise DataError(f"{path}: line {np.argmin(ok) + 1} is not {expected}")
    return values == ord("1")


def _load_binarized_mnist(files: _Files) -> Dataset:
    parts = []
    for name in _AMAT_FILES:
        path, text = files.read("binarized_mnist", name)
        parts.append(_to_float32(_parse_amat(text, path)))
    train, val, test = parts
    return Dataset("binarized-mnist", train, val, test, image_shape=(28, 28), binary=True)


def _load_frey(files: _Files, split: dict) -> Dataset:
    # Imported here: only this loader needs scipy.io, which is slow to import.
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    path, raw = files.read("frey", _FREY_FILE)
    try:
        mat = loadmat(io.BytesIO(raw))
    except Exception as e:
        # scipy's parser raises many types on damaged bytes (MatReadError, ValueError, but also
        # IndexError, struct and zlib errors on truncations, found by tests/test_data.py's
        # fuzzing): any of them means the file is not a readable MATLAB file.
        kind = "" if isinstance(e, MatReadError) else f"{type(e).__name__}: "
        raise DataError(f"{path}: not a readable MATLAB file ({kind}{e})") from e
    faces = mat.get("ff")
    n_pixels = _FREY_SHAPE[0] * _FREY_SHAPE[1]
    if not (
        isinstance(faces, np.ndarray)
        and faces.dtype.kind in "biuf"
        and faces.ndim == 2
        and faces.shape[0] == n_pixels
        and faces.shape[1] >= 2
    ):
        found = f"{faces.dtype} {faces.shape}" if isinstance(faces, np.ndarray) else "none"
        raise DataError(
            f"{path}: expected a numeric variable 'ff' of shape ({n_pixels}, N >= 2); found {found}"
        )
    return _assemble("frey", faces.T, None, image_shape=_FREY_SHAPE, scale=255.0, **split)


def _load_digits(split: dict) -> Dataset:
    # Imported here: scikit-learn takes about a second to import and only this loader needs it.
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return _assemble("digits", x, y, image_shape=(8, 8), scale=16.0, test_fraction=0.2, **split)


# --- splitting ----------------------------------------------------------------------------------


def _holdout(n: int, fraction: float, seed: int, min_held: int = 0) -> tuple[np.ndarray, ...]:
    """Split range(n) by a seeded permutation into (kept, held) sorted index arrays.

    ``round(fraction * n)`` rows (at least ``min_held``) are held out; at least one is kept.
    """
    perm = np.random.default_rng(seed).permutation(n)
    k = min(max(round(fraction * n), min_held), n - 1)
    return np.sort(perm[k:]), np.sort(perm[:k])


def _to_float32(x: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """``x / scale`` as a C-contiguous float32 array."""
    if scale == 1.0:
        return np.ascontiguousarray(x, dtype=np.float32)
    out = np.array(x, dtype=np.float32, order="C")
    out /= np.float32(scale)
    return out


def _assemble(
    name: str,
    x: np.ndarray,
    labels: np.ndarray | None,
    *,
    val_fraction: float,
    split_seed: int,
    image_shape: tuple[int, ...] | None,
    test: tuple[np.ndarray, np.ndarray | None] | None = None,
    val: np.ndarray | None = None,
    scale: float = 1.0,
    test_fraction: float = 0.1,
    binary: bool = False,
) -> Dataset:
    """Split (N, D) rows ``x`` into train/val/test (unless given) and convert to float32."""
    idx = np.arange(len(x))
    if test is None:
        idx, test_idx = _holdout(len(x), test_fraction, split_seed, min_held=1)
        test = (x[test_idx], None if labels is None else labels[test_idx])
    if val is None:
        keep, held = _holdout(len(idx), val_fraction, split_seed)
        idx, val_idx = idx[keep], idx[held]
        val_x = x[val_idx]
        val_y = None if labels is None else labels[val_idx]
    else:
        val_x, val_y = val, None

    def as_labels(y: np.ndarray | None) -> np.ndarray | None:
        return None if y is None else np.asarray(y, dtype=np.int64)

    return Dataset(
        name=name,
        train=_to_float32(x[idx], scale),
        val=_to_float32(val_x, scale),
        test=_to_float32(test[0], scale),
        image_shape=None if image_shape is None else tuple(int(s) for s in image_shape),
        binary=binary,
        train_labels=as_labels(None if labels is None else labels[idx]),
        val_labels=as_labels(val_y),
        test_labels=as_labels(test[1]),
    )


# --- user files ---------------------------------------------------------------------------------


def load_table(path: str | os.PathLike) -> tuple[np.ndarray, list[str] | None]:
    """Read every row of a user .csv/.parquet/.npy file (or an .npz holding one array).

    Returns the values as a C-contiguous float32 ``(N, D)`` matrix (3-D arrays flattened
    row-major) and the column names (from a CSV header row or the Parquet schema; ``None``
    when the file has none). No rows are held out. Non-numeric columns, NaN or infinite
    values and empty tables raise :class:`~aevb.errors.DataError`, naming the column.
    """
    path = Path(path).expanduser()
    arrays, columns = _read_user_arrays(path)
    if len(arrays) != 1:
        raise DataError(f"{path}: expected a single array (one table), found {sorted(arrays)}")
    ((key, x),) = arrays.items()
    flat, _ = _check_array(x, _where(path, key), min_rows=1, columns=columns)
    return flat, columns


def _read_user_arrays(path: Path) -> tuple[dict[str, np.ndarray], list[str] | None]:
    """The arrays of a user file by name ("" for a single one) and its column names, if any."""
    suffix = path.suffix.lower()
    if suffix not in _USER_SUFFIXES:
        raise DataError(f"{path}: unsupported file type {suffix!r}; use one of {_USER_SUFFIXES}")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    columns = None
    try:
        if suffix == ".npy":
            with open(path, "rb") as f:
                arrays = {"": _read_npy(f, os.fstat(f.fileno()).st_size, str(path))}
        elif suffix == ".npz":
            with zipfile.ZipFile(path) as archive:
                arrays = {}
                for info in archive.infolist():
                    key = info.filename.removesuffix(".npy")
                    with archive.open(info) as f:
                        arrays[key] = _read_npy(f, info.file_size, _where(path, key))
        elif suffix == ".parquet":
            x, columns = _read_parquet(path)
            arrays = {"": x}
        else:
            x, columns = _read_csv(path)
            arrays = {"": x}
    except _READ_ERRORS as e:
        raise DataError(f"{path}: cannot read {suffix} file ({type(e).__name__}: {e})") from e
    return arrays, columns


def _load_user_file(path: Path, split: dict) -> Dataset:
    arrays, columns = _read_user_arrays(path)
    if len(arrays) == 1:
        ((key, x),) = arrays.items()
        train, shape = _check_array(x, _where(path, key), min_rows=2, columns=columns)
        parts = {"train": train}
    elif {"train", "test"} <= arrays.keys() <= {"train", "val", "test"}:
        # A given val array may be empty (as with val_fraction=0); train and test may not.
        checked = {
            k: _check_array(a, _where(path, k), min_rows=0 if k == "val" else 1)
            for k, a in arrays.items()
        }
        parts = {k: a for k, (a, _) in checked.items()}
        shape = checked["train"][1]
        for key, (a, s) in checked.items():
            if (a.shape[1], s) != (parts["train"].shape[1], shape):
                raise DataError(
                    f"{_where(path, key)}: rows have shape {s or a.shape[1:]} but the 'train' "
                    f"rows have {shape or parts['train'].shape[1:]}"
                )
    else:
        raise DataError(
            f"{path}: expected arrays 'train' and 'test' (optionally 'val') or a single array, "
            f"found {sorted(arrays)}"
        )
    # Values exactly in {0, 1} are binary data; that lets the model use a Bernoulli decoder as is.
    binary = all(bool(((a == 0) | (a == 1)).all()) for a in parts.values())
    test = (parts["test"], None) if "test" in parts else None
    return _assemble(
        path.stem,
        parts["train"],
        None,
        test=test,
        val=parts.get("val"),
        image_shape=shape,
        binary=binary,
        **split,
    )


def _where(path: Path, key: str) -> str:
    return f"{path} [{key!r}]" if key else str(path)


def _read_npy(f: BinaryIO, nbytes: int, where: str) -> np.ndarray:
    """Read one .npy stream of ``nbytes`` bytes without unpickling anything.

    The header is checked before any allocation, so a file that declares more data than it
    holds (or Python objects) is refused instead of exhausting memory or running pickle code.
    """
    fmt = np.lib.format
    version = fmt.read_magic(f)
    if version not in ((1, 0), (2, 0)):
        raise DataError(f"{where}: unsupported .npy format version {version}")
    read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
    try:
        shape, fortran, dtype = read_header(f)
    except (SyntaxError, tokenize.TokenError) as e:  # numpy lets these escape for bad headers
        raise DataError(f"{where}: malformed .npy header ({e})") from e
    if dtype.kind not in "biuf":
        raise DataError(f"{where}: values must be numeric, got dtype {dtype}")
    declared = math.prod(shape) * dtype.itemsize
    if nbytes - f.tell() != declared:
        raise DataError(
            f"{where}: header declares shape {shape} of {dtype} ({declared} bytes) but the file "
            f"holds {nbytes - f.tell()} bytes of data"
        )
    data = f.read(declared)
    return np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C")


def _check_array(
    x: np.ndarray, where: str, min_rows: int, columns: Sequence[str] | None = None
) -> tuple[np.ndarray, tuple[int, int] | None]:
    """Validate a user array; return it as (N, D) float32 and its (H, W) if it was 3-D.

    ``columns`` are the D column names of a table, used to name the columns of bad values.
    """
    if x.dtype.kind not in "biuf":
        raise DataError(f"{where}: values must be numeric, got dtype {x.dtype}")
    if x.ndim not in (2, 3):
        raise DataError(
            f"{where}: expected a 2-D (N, D) or 3-D (N, H, W) array, got shape {x.shape}"
        )
    if 0 in x.shape[1:] or (x.shape[0] == 0 and min_rows > 0):
        raise DataError(f"{where}: array is empty (shape {x.shape})")
    if x.shape[0] < min_rows:
        raise DataError(f"{where}: has {x.shape[0]} row(s), need at least {min_rows}")
    shape = (int(x.shape[1]), int(x.shape[2])) if x.ndim == 3 else None
    with np.errstate(over="ignore"):  # values beyond float32 become inf and are reported below
        flat = _to_float32(x.reshape(len(x), -1))
    bad = ~np.isfinite(flat)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        if columns is not None and len(columns) == flat.shape[1]:
            named = [repr(str(columns[j])) for j in np.flatnonzero(bad.any(axis=0))]
            which = f"column {named[0]} holds"
            if len(named) > 1:
                which = f"columns {', '.join(named)} hold"
            raise DataError(
                f"{where}: {which} {int(bad.sum())} value(s) that are missing (NaN), infinite "
                f"or too large for float32 (first in column {str(columns[col])!r}, data row "
                f"{row + 1}, counting from 1 without the header)"
            )
        raise DataError(
            f"{where}: {int(bad.sum())} value(s) are NaN, infinite or too large for float32 "
            f"(first at row {row}, column {col})"
        )
    return flat, shape


def _read_csv(path: Path) -> tuple[np.ndarray, list[str] | None]:
    """Read a numeric CSV into (N, D) float64 and its header's names (``None`` without one).

    The first line is a header when any of its cells is not a number. A UTF-8 byte-order mark
    (as spreadsheet programs write) is ignored.
    """
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    first = next(csv.reader(lines[:1]), [])
    header = None
    if first and not all(_is_number(cell) for cell in first):
        header, lines = [cell.strip() for cell in first], lines[1:]
    if not any(line.strip() for line in lines):
        raise DataError(f"{path}: array is empty (no data rows)")
    try:
        x = np.loadtxt(lines, delimiter=",", dtype=np.float64, ndmin=2, comments=None)
    except ValueError as e:
        # loadtxt names a bad cell by number only; find it again to name its column.
        for i, row in enumerate(csv.reader(lines)):
            for j, cell in enumerate(row):
                if not _is_number(cell):
                    name = f" {header[j]!r}" if header and j < len(header) else ""
                    missing = ", a missing value" if not cell.strip() else ""
                    raise DataError(
                        f"{path}: column {j + 1}{name} is not numeric (line "
                        f"{i + 1 + (header is not None)} has {cell!r}{missing})"
                    ) from e
        raise DataError(f"{path}: malformed CSV ({e})") from e
    if header is not None and len(header) != x.shape[1]:
        raise DataError(
            f"{path}: the header names {len(header)} column(s) but the rows have {x.shape[1]}"
        )
    return x, header


def _read_parquet(path: Path) -> tuple[np.ndarray, list[str]]:
    """Read a Parquet table of numeric columns into (N, D) float64 and its column names.

    Integer, float and boolean columns are accepted (missing values become NaN and are
    refused later, by name); any other column type is refused, naming the column.
    """
    try:
        import pandas as pd
        import pyarrow
    except ImportError as e:
        raise DataError(
            f"{path}: reading .parquet files needs pandas and pyarrow ({e}); install them with "
            "`pip install pandas pyarrow`, or save the table as .csv"
        ) from e
    try:
        frame = pd.read_parquet(path)
    except pyarrow.ArrowException as e:
        raise DataError(f"{path}: cannot read .parquet file ({type(e).__name__}: {e})") from e
    names = [str(name) for name in frame.columns]
    for j, (name, dtype) in enumerate(zip(names, frame.dtypes, strict=True)):
        numeric = pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)
        if numeric and not pd.api.types.is_complex_dtype(dtype):
            continue
        column = frame.iloc[:, j]
        first = next(((i, v) for i, v in enumerate(column) if not _is_number_like(v)), None)
        where = "" if first is None else f"; data row {first[0] + 1} has {first[1]!r}"
        raise DataError(
            f"{path}: column {j + 1} {name!r} is not numeric (type {dtype}{where}); "
            "drop or encode it as numbers"
        )
    if not names:
        raise DataError(f"{path}: array is empty (the table has no columns)")
    x = np.empty((len(frame), len(names)), dtype=np.float64)
    for j in range(len(names)):
        x[:, j] = frame.iloc[:, j].to_numpy(dtype=np.float64, na_value=np.nan)
    return x, names


def _is_number_like(value: object) -> bool:
    """Whether a Parquet cell of a non-numeric column reads as a number (None counts)."""
    if value is None or isinstance(value, (int, float, np.number)):
        return True
    return isinstance(value, str) and _is_number(value)


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True
