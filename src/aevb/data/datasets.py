"""Datasets for AEVB: the standard benchmarks and the user's own .npy/.npz/.csv/.parquet files.

Every loader returns a :class:`Dataset`: C-contiguous float32 arrays that keep their shape —
(N, C, H, W) for images, (N, D) for tables — split into train / validation / test, with what
the data are (binary or not, the likelihood that suits them). Named datasets are found on disk
(:mod:`aevb.data.files`) and always checked against their published checksums; user files are
read without unpickling anything (:mod:`aevb.data.tables`).
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aevb.data.files import AMAT_FILES, DECOMPRESSED_SIZES, FREY_FILE, DatasetFiles, gunzip
from aevb.data.tables import (
    USER_SUFFIXES,
    check_array,
    check_outliers,
    outlier_bounds,
    read_user_arrays,
    to_float32,
    where,
)
from aevb.errors import DataError

__all__ = ["DATASETS", "Dataset", "load_dataset"]

DATASETS: tuple[str, ...] = ("mnist", "fashion-mnist", "binarized-mnist", "frey", "digits")
_AMAT_WIDTH = 784
_FREY_SHAPE = (1, 28, 20)


class Examples:
    """What a dataset's examples are, from their ``event_shape``: images or table rows, and
    how many values each holds."""

    event_shape: tuple[int, ...]

    @property
    def is_image(self) -> bool:
        return len(self.event_shape) == 3

    @property
    def data_dim(self) -> int:
        """Number of values D per example (pixels for images)."""
        return math.prod(self.event_shape)


@dataclass
class Dataset(Examples):
    """A dataset split three ways: ``train``, ``val``, ``test`` are float32 arrays of shape
    (N, *event_shape), C-contiguous. Named image datasets are scaled to [0, 1].

    ``binary``: every value is 0 or 1. ``likelihood``: the likelihood that suits the data when
    their values alone do not tell (Frey Face's grey faces: a learned-variance Gaussian);
    ``None`` leaves it to :attr:`suggested_likelihood`.
    """

    name: str
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    binary: bool
    likelihood: str | None = None
    train_labels: np.ndarray | None = None
    val_labels: np.ndarray | None = None
    test_labels: np.ndarray | None = None

    # Whether the training split stays on disk (aevb.data.streamed.StreamedDataset): no.
    streamed = False

    @property
    def num_train(self) -> int:
        return len(self.train)

    @property
    def summary(self) -> np.ndarray:
        """What choosing the transforms reads of the training split: the rows themselves."""
        return self.train

    @property
    def event_shape(self) -> tuple[int, ...]:
        """Shape of one example: (C, H, W) for images, (D,) for tables."""
        return tuple(int(s) for s in self.train.shape[1:])

    def split(self, name: str, limit: int | None = None) -> np.ndarray:
        """The rows of split ``name``: ``train``, ``val`` or ``test`` (the first ``limit``)."""
        if name not in ("train", "val", "test"):
            raise DataError(f"unknown split {name!r}; choose from train, val, test")
        return getattr(self, name)[:limit]

    def fingerprint(self, split: str) -> str:
        """SHA-256 (hex) of split ``split``'s shape and float32 values (and labels): a run
        records it, and its later uses refuse data that are no longer the same (an edited
        file, another split)."""
        return fingerprint_of(self.split(split), getattr(self, f"{split}_labels"))

    @property
    def in_unit_interval(self) -> bool:
        """Whether every training value lies in [0, 1]."""
        return bool(self.train.min() >= 0.0 and self.train.max() <= 1.0)

    @property
    def suggested_likelihood(self) -> str:
        """The loader's ``likelihood``, else Bernoulli for values in [0, 1] and a
        learned-variance Gaussian otherwise."""
        if self.likelihood is not None:
            return self.likelihood
        return "bernoulli" if self.in_unit_interval else "gaussian-learned"


def fingerprint_of(values: np.ndarray, labels: np.ndarray | None) -> str:
    """SHA-256 (hex) of rows' dtype, shape and values, then their labels' (or none)."""
    sha = hashlib.sha256()
    for part in (values, labels):
        if part is None:
            sha.update(b"none|")
            continue
        part = np.ascontiguousarray(part)
        sha.update(f"{part.dtype}|{part.shape}|".encode())
        if part.size:
            sha.update(memoryview(part).cast("B"))
    return sha.hexdigest()


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
    if not isinstance(name_or_path, str | os.PathLike) or not str(name_or_path).strip():
        raise DataError(
            f"a dataset is named by a string or a path, got {type(name_or_path).__name__} "
            f"{name_or_path!r:.40}"
        )
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    split = {"val_fraction": val_fraction, "split_seed": split_seed}
    if name_or_path in DATASETS:
        if download is None:
            offline = os.environ.get("AEVB_OFFLINE", "").strip().lower() in ("1", "true", "yes")
            download = data_dir is None and not offline
        files = DatasetFiles(name_or_path, data_dir, cache_dir, download, progress)
        if name_or_path in ("mnist", "fashion-mnist"):
            return _load_idx_dataset(files, name_or_path, split)
        if name_or_path == "binarized-mnist":
            return _load_binarized_mnist(files)
        if name_or_path == "frey":
            return _load_frey(files, split)
        return _load_digits(split)
    path = Path(name_or_path).expanduser()
    if path.suffix.lower() in USER_SUFFIXES or path.exists():
        return _load_user_file(path, split)
    raise DataError(
        f"unknown dataset {name_or_path!r}: expected one of {', '.join(DATASETS)}, "
        f"or the path of an existing {'/'.join(USER_SUFFIXES)} file"
    )


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


def _read_idx_pair(
    files: DatasetFiles, subfolder: str, prefix: str
) -> tuple[np.ndarray, np.ndarray]:
    """Return (images (N, H, W) uint8, labels (N,) uint8) of the train or t10k split."""
    img_path, img = files.read(subfolder, f"{prefix}-images-idx3-ubyte.gz")
    lab_path, lab = files.read(subfolder, f"{prefix}-labels-idx1-ubyte.gz")
    images = _parse_idx(
        gunzip(img, img_path, DECOMPRESSED_SIZES[subfolder, img_path.name]), img_path, 3
    )
    labels = _parse_idx(
        gunzip(lab, lab_path, DECOMPRESSED_SIZES[subfolder, lab_path.name]), lab_path, 1
    )
    if len(images) != len(labels):
        raise DataError(
            f"{img_path}: holds {len(images)} images but {lab_path} {len(labels)} labels"
        )
    return images, labels


def _load_idx_dataset(files: DatasetFiles, name: str, split: dict) -> Dataset:
    train_x, train_y = _read_idx_pair(files, name, "train")
    test_x, test_y = _read_idx_pair(files, name, "t10k")
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DataError(
            f"{name}: train-images-idx3-ubyte.gz holds {train_x.shape[1:]} images but "
            f"t10k-images-idx3-ubyte.gz holds {test_x.shape[1:]} images"
        )
    return _assemble(
        name, train_x[:, None], train_y, test=(test_x[:, None], test_y), scale=255.0, **split
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


def _load_binarized_mnist(files: DatasetFiles) -> Dataset:
    parts = []
    for name in AMAT_FILES:
        path, text = files.read("binarized_mnist", name)
        parts.append(to_float32(_parse_amat(text, path)).reshape(-1, 1, 28, 28))
    train, val, test = parts
    return Dataset("binarized-mnist", train, val, test, binary=True)


def _load_frey(files: DatasetFiles, split: dict) -> Dataset:
    # Imported here: only this loader needs scipy.io, which is slow to import.
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    path, raw = files.read("frey", FREY_FILE)
    try:
        mat = loadmat(io.BytesIO(raw))
    except Exception as e:
        # scipy's parser raises many types on damaged bytes (MatReadError, ValueError, but also
        # IndexError, struct and zlib errors on truncations, found by tests/test_data.py's
        # fuzzing): any of them means the file is not a readable MATLAB file.
        kind = "" if isinstance(e, MatReadError) else f"{type(e).__name__}: "
        raise DataError(f"{path}: not a readable MATLAB file ({kind}{e})") from e
    faces = mat.get("ff")
    n_pixels = math.prod(_FREY_SHAPE)
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
    # Grey faces, modelled by a Gaussian with learned variance as in the paper, not Bernoulli.
    faces = faces.T.reshape(-1, *_FREY_SHAPE)
    return _assemble("frey", faces, None, scale=255.0, likelihood="gaussian-learned", **split)


def _load_digits(split: dict) -> Dataset:
    # Imported here: scikit-learn takes about a second to import and only this loader needs it.
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = x.reshape(-1, 1, 8, 8)
    return _assemble("digits", x, y, scale=16.0, test_fraction=0.2, **split)


# --- splitting ----------------------------------------------------------------------------------


def _holdout(n: int, fraction: float, seed: int, min_held: int = 0) -> tuple[np.ndarray, ...]:
    """Split range(n) by a seeded permutation into (kept, held) sorted index arrays.

    ``round(fraction * n)`` rows (at least ``min_held``) are held out; at least one is kept.
    """
    perm = np.random.default_rng(seed).permutation(n)
    k = min(max(round(fraction * n), min_held), n - 1)
    return np.sort(perm[k:]), np.sort(perm[:k])


def _assemble(
    name: str,
    x: np.ndarray,
    labels: np.ndarray | None,
    *,
    val_fraction: float,
    split_seed: int,
    test: tuple[np.ndarray, np.ndarray | None] | None = None,
    val: np.ndarray | None = None,
    scale: float = 1.0,
    test_fraction: float = 0.1,
    binary: bool = False,
    likelihood: str | None = None,
) -> Dataset:
    """Split rows ``x`` (N, *event_shape) into train/val/test (unless given), as float32."""
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
        train=to_float32(x[idx], scale),
        val=to_float32(val_x, scale),
        test=to_float32(test[0], scale),
        binary=binary,
        likelihood=likelihood,
        train_labels=as_labels(None if labels is None else labels[idx]),
        val_labels=as_labels(val_y),
        test_labels=as_labels(test[1]),
    )


# --- user files ---------------------------------------------------------------------------------


def _load_user_file(path: Path, split: dict) -> Dataset:
    arrays, columns = read_user_arrays(path)
    if len(arrays) == 1:
        ((key, x),) = arrays.items()
        parts = {"train": check_array(x, where(path, key), min_rows=2, columns=columns)}
    elif {"train", "test"} <= arrays.keys() <= {"train", "val", "test"}:
        # A given val array may be empty (as with val_fraction=0); train and test may not.
        parts = {
            k: check_array(a, where(path, k), min_rows=0 if k == "val" else 1)
            for k, a in arrays.items()
        }
        shape = parts["train"].shape[1:]
        for key, a in parts.items():
            if a.shape[1:] != shape:
                raise DataError(
                    f"{where(path, key)}: rows have shape {a.shape[1:]} but the 'train' rows "
                    f"have {shape}"
                )
    else:
        raise DataError(
            f"{path}: expected arrays 'train' and 'test' (optionally 'val') or a single array, "
            f"found {sorted(arrays)}"
        )
    bounds = outlier_bounds(parts["train"])
    for key, values in parts.items():
        check_outliers(values, bounds, where(path, key), columns)
    # Values exactly in {0, 1} are binary data; that lets the model use a Bernoulli decoder as is.
    binary = all(bool(((a == 0) | (a == 1)).all()) for a in parts.values())
    test = (parts["test"], None) if "test" in parts else None
    return _assemble(
        path.stem,
        parts["train"],
        None,
        test=test,
        val=parts.get("val"),
        binary=binary,
        **split,
    )
