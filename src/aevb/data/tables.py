"""Reading the user's own files — .npy, .npz, .csv and .parquet — without unpickling anything.

Every bad input raises :class:`~aevb.errors.DataError` with one clear message, naming the
column where one is known. Arrays keep their shape: a table is (N, D); grey images (N, H, W)
become (N, 1, H, W); colour images may be (N, C, H, W) or (N, H, W, C) with C of 1, 3 or 4.
"""

from __future__ import annotations

import csv
import math
import os
import tokenize
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

from aevb.errors import DataError
from aevb.hints import setting_name
from aevb.limits import MAX_INFLATION, check_memory, format_bytes

__all__ = [
    "USER_SUFFIXES",
    "check_array",
    "check_outliers",
    "load_table",
    "outlier_bounds",
    "read_user_arrays",
    "to_float32",
    "where",
]

USER_SUFFIXES = (".npy", ".npz", ".csv", ".parquet")
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
# .npz members up to this size are read whatever their compression ratio (a small array of
# zeros compresses beyond any ratio real data reach, and costs nothing to read).
_SMALL_MEMBER = 16 << 20
# Memory to parse a CSV file, in multiples of its size (its lines, then a float64 table).
_CSV_OVERHEAD = 4
# A value more than this many interquartile ranges beyond its column's quartiles is refused
# (:func:`outlier_bounds`): far beyond the tails of real data (the largest of 10⁵ log-normal
# σ = 3 draws is ~10⁵ interquartile ranges out), yet far below the 1e30 or 1e300 of a
# corrupted cell.
OUTLIER_FACTOR = 1e6
# From this many rows on, :func:`outlier_bounds` also scales a column by its central 98%
# range divided by _WIDE_TO_IQR (a Gaussian's 98% range is 3.4 of its interquartile ranges;
# the divisor keeps the bound far out).
_WIDE_ROWS = 200
_WIDE_TO_IQR = 100.0
# Rows the quartiles of :func:`outlier_bounds` are computed on.
_QUANTILE_ROWS = 20_000
# Image channels recognised in the last axis of a 4-D array (channels-last images).
_CHANNELS = (1, 3, 4)


def load_table(path: str | os.PathLike) -> tuple[np.ndarray, list[str] | None]:
    """Read every row of a user .csv/.parquet/.npy file (or an .npz holding one array).

    Returns the values as a C-contiguous float32 array, (N, D) for a table (or (N, C, H, W)
    for images), and the column names (from a CSV header row or the Parquet schema; ``None``
    when the file has none). No rows are held out. Non-numeric columns, NaN or infinite
    values and empty tables raise :class:`~aevb.errors.DataError`, naming the column.
    """
    path = Path(path).expanduser()
    arrays, columns = read_user_arrays(path)
    if len(arrays) != 1:
        raise DataError(f"{path}: expected a single array (one table), found {sorted(arrays)}")
    ((key, x),) = arrays.items()
    return check_array(x, where(path, key), min_rows=1, columns=columns), columns


def to_float32(x: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """``x / scale`` as a C-contiguous float32 array."""
    if scale == 1.0:
        return np.ascontiguousarray(x, dtype=np.float32)
    out = np.array(x, dtype=np.float32, order="C")
    out /= np.float32(scale)
    return out


def read_user_arrays(path: Path) -> tuple[dict[str, np.ndarray], list[str] | None]:
    """The arrays of a user file by name ("" for a single one) and its column names, if any."""
    suffix = path.suffix.lower()
    if suffix not in USER_SUFFIXES:
        raise DataError(f"{path}: unsupported file type {suffix!r}; use one of {USER_SUFFIXES}")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    columns = None
    try:
        if suffix == ".npy":
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                _check_memory(size, str(path))
                arrays = {"": _read_npy(f, size, str(path))}
        elif suffix == ".npz":
            with zipfile.ZipFile(path) as archive:
                members = archive.infolist()
                for info in members:
                    _check_inflation(info, where(path, info.filename.removesuffix(".npy")))
                _check_memory(sum(info.file_size for info in members), str(path))
                arrays = {}
                for info in members:
                    key = info.filename.removesuffix(".npy")
                    with archive.open(info) as f:
                        arrays[key] = _read_npy(f, info.file_size, where(path, key))
        elif suffix == ".parquet":
            x, columns = _read_parquet(path)
            arrays = {"": x}
        else:
            # Parsing text holds the lines and the float64 table: a few times the file.
            _check_memory(_CSV_OVERHEAD * path.stat().st_size, str(path))
            x, columns = _read_csv(path)
            arrays = {"": x}
    except _READ_ERRORS as e:
        raise DataError(f"{path}: cannot read {suffix} file ({type(e).__name__}: {e})") from e
    return arrays, columns


def _check_memory(declared: int, where: str) -> None:
    """Refuse a file whose values would take more than half the available memory (they are
    held as read and again as float32), before reading them."""
    check_memory(
        declared,
        f"{where}: its data",
        f"stream it from disk ({setting_name('stream')}: .npy or .parquet), use a part of the "
        "rows, or a machine with more memory",
        share=0.5,
        error=DataError,
    )


def _check_inflation(info: zipfile.ZipInfo, where: str) -> None:
    """Refuse an .npz member that decompresses to more than :data:`MAX_INFLATION` times its
    compressed size (a decompression bomb), before decompressing it."""
    if info.file_size <= _SMALL_MEMBER:
        return
    ratio = info.file_size / max(info.compress_size, 1)
    if ratio > MAX_INFLATION:
        raise DataError(
            f"{where}: {format_bytes(info.compress_size)} that decompress to "
            f"{format_bytes(info.file_size)} ({ratio:.0f}×, more than the {MAX_INFLATION}× "
            "real data reach); refused before decompressing. If the data are genuine, save "
            "them uncompressed (np.save or np.savez)"
        )


def where(path: Path, key: str) -> str:
    return f"{path} [{key!r}]" if key else str(path)


def read_npy_header(f: BinaryIO, nbytes: int, where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """The (shape, Fortran order, dtype) of the .npy stream ``f`` of ``nbytes`` bytes, read
    without unpickling anything and left at the data; refused (:class:`DataError`) unless the
    values are numbers and the stream holds exactly the bytes its header declares — checked
    before any allocation, so a file declaring more than it holds (or Python objects) costs
    neither memory nor pickle code. A stream that is not .npy at all raises numpy's
    ``ValueError``/``EOFError``, for the caller to word."""
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
            f"holds {nbytes - f.tell()} bytes of data (truncated or corrupt)"
        )
    return tuple(int(s) for s in shape), bool(fortran), dtype


def _read_npy(f: BinaryIO, nbytes: int, where: str) -> np.ndarray:
    """Read one .npy stream of ``nbytes`` bytes without unpickling anything
    (:func:`read_npy_header` first)."""
    shape, fortran, dtype = read_npy_header(f, nbytes, where)
    declared = math.prod(shape) * dtype.itemsize
    data = f.read(declared)
    return np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C")


def check_array(
    x: np.ndarray, where: str, min_rows: int, columns: Sequence[str] | None = None
) -> np.ndarray:
    """Validate a user array; return it as C-contiguous float32 of shape (N, D) or (N, C, H, W).

    ``columns`` are the D column names of a table, used to name the columns of bad values.
    """
    if x.dtype.kind not in "biuf":
        raise DataError(f"{where}: values must be numeric, got dtype {x.dtype}")
    if x.ndim not in (2, 3, 4):
        raise DataError(
            f"{where}: expected a 2-D (N, D) table or (N, H, W), (N, C, H, W) or (N, H, W, C) "
            f"images, got shape {x.shape}"
        )
    if 0 in x.shape[1:] or (x.shape[0] == 0 and min_rows > 0):
        raise DataError(f"{where}: array is empty (shape {x.shape})")
    if x.shape[0] < min_rows:
        raise DataError(f"{where}: has {x.shape[0]} row(s), need at least {min_rows}")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[1] not in _CHANNELS:
        if x.shape[3] not in _CHANNELS:
            raise DataError(
                f"{where}: a 4-D array must hold images as (N, C, H, W) or (N, H, W, C) with C "
                f"of {', '.join(map(str, _CHANNELS))} channels, got shape {x.shape}"
            )
        x = x.transpose(0, 3, 1, 2)
    with np.errstate(over="ignore"):  # values beyond float32 become inf and are reported below
        values = to_float32(x)
    flat = values.reshape(len(values), math.prod(values.shape[1:]))
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
    return values


def outlier_bounds(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per value of a row (column, or pixel), the range beyond which a value of ``train``
    (N, *shape) — or of data scored against it — is refused as a likely error:
    [q₂₅ − F·s, q₇₅ + F·s] with F = :data:`OUTLIER_FACTOR` and s the column's interquartile
    range (from 200 rows on, at least a hundredth of its 1%–99% range), or for a column whose
    quantiles coincide (a mostly constant column, an image's border) the table's own scale:
    the interquartile range of all its values, else of those that differ from their column's
    median, else 1. Quartiles are robust: one bad value (or a
    quarter of the rows) cannot widen the range around itself. Computed in float64 on at most
    :data:`_QUANTILE_ROWS` evenly spaced rows."""
    flat = train.reshape(len(train), -1)
    if len(flat) > _QUANTILE_ROWS:
        flat = flat[np.linspace(0, len(flat) - 1, _QUANTILE_ROWS).astype(np.int64)]
    flat = flat.astype(np.float64)
    low, median, high = np.quantile(flat, [0.25, 0.5, 0.75], axis=0)
    spread = high - low
    if len(flat) >= _WIDE_ROWS:
        # A column whose middle half is near-constant (rounding noise around a value) but
        # whose tails are ordinary amounts: the central 98% sets the scale too. The 1% and 99%
        # quantiles are data values with at least 1% of the rows beyond them, so one bad value
        # cannot move them.
        tails = np.quantile(flat, [0.01, 0.99], axis=0, method="inverted_cdf")
        spread = np.maximum(spread, (tails[1] - tails[0]) / _WIDE_TO_IQR)
    scale = float(np.subtract(*np.quantile(flat, [0.75, 0.25])))
    if not scale > 0:
        deviations = flat[flat != median]
        if deviations.size:
            scale = float(np.subtract(*np.quantile(deviations, [0.75, 0.25])))
    if not scale > 0:
        scale = 1.0
    spread = np.where(spread > 0, spread, scale)
    return low - OUTLIER_FACTOR * spread, high + OUTLIER_FACTOR * spread


def check_outliers(
    x: np.ndarray,
    bounds: tuple[np.ndarray, np.ndarray],
    where: str,
    columns: Sequence[str] | None = None,
) -> None:
    """Refuse rows x (N, *shape) holding a value outside ``bounds`` (:func:`outlier_bounds`),
    naming the first one's row, column and value."""
    flat = x.reshape(len(x), math.prod(x.shape[1:]))
    low, high = bounds
    bad = (flat < low) | (flat > high)
    if not bad.any():
        return
    row, col = (int(i) for i in np.argwhere(bad)[0])
    if columns is not None and len(columns) == flat.shape[1]:
        column = f"column {str(columns[col])!r}"
    elif x.ndim > 2:
        column = f"pixel {tuple(int(i) for i in np.unravel_index(col, x.shape[1:]))}"
    else:
        column = f"column {col}"
    raise DataError(
        f"{where}: {int(bad.sum())} value(s) lie far outside the rest of the data — row {row} "
        f"(from 0), {column} holds {float(flat[row, col]):.6g}, while that column's values "
        f"lie within [{low[col]:.6g}, {high[col]:.6g}] ({OUTLIER_FACTOR:g} × its interquartile "
        "range beyond its quartiles). Such a value is almost surely an error (a unit, a "
        "missing-value code, a typo) and would dominate the standardisation and the loss; "
        "fix or drop it, or transform the column (e.g. a logarithm) if it is genuine"
    )


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
        import pyarrow.parquet as pq

        metadata = pq.ParquetFile(path).metadata
        # pandas' frame and the float64 table: two copies of 8-byte values.
        _check_memory(2 * 8 * metadata.num_rows * metadata.num_columns, str(path))
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
