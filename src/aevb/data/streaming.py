"""Streaming training data: rows read from disk as they are needed, for data larger than memory.

* A :class:`RowSource` reads rows of one file or folder on demand — :class:`NpySource` (an
  ``.npy`` file, read with ``os.pread``, never memory-mapped), :class:`ParquetSource` (a
  Parquet file, one row group at a time) and :class:`ImageFolderSource` (PNG/JPEG images,
  flat or one subfolder per class); :func:`open_source` picks one for a path. A source is
  picklable and opens its files lazily in each process that reads.
* :func:`stream_order` is an epoch's order, a pure function of a seed: the source's blocks
  shuffled, then the rows within buffers of consecutive blocks, in memory that grows with a
  buffer, not with the data.
* :class:`StreamLoader` is the :class:`~aevb.data.loaders.Loader` the Trainer consumes: the
  main process computes the order, DataLoader worker processes read whole batches.
* :func:`summarize` makes one pass over a source for what choosing the transforms needs (range,
  binary or 8-bit values, per-value mean and standard deviation) and a fingerprint.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from aevb.data.loaders import Batch, shard_of
from aevb.data.tables import read_npy_header, to_float32
from aevb.data.transforms import Standardize, Transforms, on_eight_bit_grid
from aevb.distributed import processes_on_this_machine
from aevb.errors import ConfigError, DataError

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageFolderSource",
    "NpySource",
    "ParquetSource",
    "RowSource",
    "StreamLoader",
    "StreamSummary",
    "batch_seed",
    "open_source",
    "stream_order",
    "summarize",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# A block of an .npy file, and a chunk that summarize() reads at once: about this many bytes.
_BLOCK_BYTES = 4 << 20
# Image files per block of an image folder.
_IMAGE_BLOCK = 256
# Decoded row groups a ParquetSource keeps per process: at most this many bytes (always at
# least one group). A batch of a shuffled buffer touches every row group of the buffer, so the
# cache must hold a buffer's groups (65536 rows of 1000 float32 columns: 262 MB) for each to
# be decoded once per buffer rather than once per batch.
_PARQUET_CACHE_BYTES = 512 << 20
# Image channels a 4-D .npy may hold, first (N, C, H, W) or last (N, H, W, C), as tables.py.
_CHANNELS = (1, 3, 4)


class RowSource(Protocol):
    """Rows of a dataset on disk, read on demand.

    ``blocks``: contiguous row ranges [start, stop) that cover 0…num_rows−1 in order — the
    units an epoch shuffles (a chunk of an .npy file, a Parquet row group, a chunk of image
    files). ``labels``: (num_rows,) int64 class labels, or ``None``.
    """

    name: str
    num_rows: int
    event_shape: tuple[int, ...]
    is_image: bool
    blocks: list[tuple[int, int]]
    labels: np.ndarray | None

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (n,) int64, sorted and unique, as float32 (n, *event_shape)."""
        ...


def _ranges(num_rows: int, size: int) -> list[tuple[int, int]]:
    """[start, stop) ranges of ``size`` rows (the last one shorter) covering ``num_rows``."""
    return [(start, min(start + size, num_rows)) for start in range(0, num_rows, size)]


def _kept(start: int, stop: int, excluded: np.ndarray) -> np.ndarray:
    """Row ids start…stop−1 but those in ``excluded`` (sorted), int64."""
    ids = np.arange(start, stop, dtype=np.int64)
    lo, hi = np.searchsorted(excluded, [start, stop])
    return np.delete(ids, excluded[lo:hi] - start) if hi > lo else ids


def _runs(rows: np.ndarray) -> Iterator[tuple[int, int]]:
    """Runs of consecutive ids in sorted ``rows``: (first id, length)."""
    if not len(rows):
        return
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate(([0], breaks))
    stops = np.concatenate((breaks, [len(rows)]))
    for start, stop in zip(starts.tolist(), stops.tolist(), strict=True):
        yield int(rows[start]), stop - start


class NpySource:
    """An .npy file of a table (N, D) or of images (N, H, W) → (N, 1, H, W), (N, C, H, W) or
    (N, H, W, C) → (N, C, H, W), read row by row with ``os.pread`` (no memory map, whose pages
    would count in the process's memory). Values become float32 as they are, unscaled, as
    :func:`aevb.data.tables.load_table` makes them. ``block_rows``: rows per block (default:
    about 4 MiB of the file)."""

    labels = None

    def __init__(self, path: str | os.PathLike, block_rows: int | None = None):
        self._fd: int | None = None
        self._pid: int | None = None
        self.path = Path(path).expanduser()
        self.name = str(self.path)
        try:
            with open(self.path, "rb") as f:
                shape, dtype = self._header(f, os.fstat(f.fileno()).st_size)
                self._offset = f.tell()
        except OSError as e:
            raise DataError(f"{self.name}: cannot read .npy file ({type(e).__name__}: {e})") from e
        self._dtype = dtype
        self._row_shape = shape[1:]
        self._row_bytes = math.prod(shape[1:]) * dtype.itemsize
        self._channels_last = len(shape) == 4 and shape[1] not in _CHANNELS
        if len(shape) == 2:
            self.event_shape: tuple[int, ...] = (shape[1],)
        elif len(shape) == 3:
            self.event_shape = (1, *shape[1:])
        elif self._channels_last:
            self.event_shape = (shape[3], shape[1], shape[2])
        else:
            self.event_shape = tuple(shape[1:])
        self.is_image = len(self.event_shape) == 3
        self.num_rows = shape[0]
        if block_rows is None:
            block_rows = max(1, _BLOCK_BYTES // self._row_bytes)
        if block_rows < 1:
            raise ValueError(f"block_rows must be at least 1, got {block_rows}")
        self.blocks = _ranges(self.num_rows, block_rows)

    def _header(self, f: Any, size: int) -> tuple[tuple[int, ...], np.dtype]:
        """The array's shape and dtype from the .npy header of ``f`` (``size`` bytes),
        checked as the in-memory path checks it and for reading by rows; ``f`` is left at the
        data."""
        try:
            shape, fortran, dtype = read_npy_header(f, size, self.name)
        except DataError:
            raise
        except (ValueError, EOFError) as e:  # numpy's words for a file that is not .npy
            raise DataError(f"{self.name}: not an .npy file ({e})") from e
        if fortran:
            raise DataError(
                f"{self.name}: the array is stored in Fortran (column-major) order, which cannot "
                "be read row by row; save it in C order: np.save(path, np.ascontiguousarray(x))"
            )
        if len(shape) not in (2, 3, 4):
            raise DataError(
                f"{self.name}: expected a 2-D (N, D) table or (N, H, W), (N, C, H, W) or "
                f"(N, H, W, C) images, got shape {shape}"
            )
        if 0 in shape:
            raise DataError(f"{self.name}: array is empty (shape {shape})")
        if len(shape) == 4 and shape[1] not in _CHANNELS and shape[3] not in _CHANNELS:
            raise DataError(
                f"{self.name}: a 4-D array must hold images as (N, C, H, W) or (N, H, W, C) "
                f"with C of {', '.join(map(str, _CHANNELS))} channels, got shape {shape}"
            )
        return shape, dtype

    def read(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        raw = np.empty(len(rows) * self._row_bytes, dtype=np.uint8)
        fd = self._descriptor()
        position = 0
        for first, count in _runs(rows):
            size = count * self._row_bytes
            self._pread(fd, memoryview(raw)[position : position + size], first)
            position += size
        values = raw.view(self._dtype).reshape(len(rows), *self._row_shape)
        with np.errstate(over="ignore"):  # beyond float32: inf, refused by summarize()
            x = to_float32(values)
        if self._channels_last:
            return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        return x.reshape(len(rows), *self.event_shape)

    def _pread(self, fd: int, out: memoryview, row: int) -> None:
        """Fill ``out`` with the file's bytes from row ``row`` on (a read may return fewer
        bytes than asked: loop)."""
        offset = self._offset + row * self._row_bytes
        while len(out):
            done = os.preadv(fd, [out], offset)
            if done == 0:
                raise DataError(f"{self.name}: the file ended early (was it changed while read?)")
            out, offset = out[done:], offset + done

    def _descriptor(self) -> int:
        """This process's file descriptor, opened on first use."""
        if self._fd is None or self._pid != os.getpid():
            try:
                self._fd = os.open(self.path, os.O_RDONLY)
            except OSError as e:
                raise DataError(f"{self.name}: cannot open ({type(e).__name__}: {e})") from e
            self._pid = os.getpid()
        return self._fd

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fd": None, "_pid": None}

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None and self._pid == os.getpid():
            os.close(self._fd)


def _pyarrow_parquet(name: str) -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise DataError(
            f"{name}: reading .parquet files needs pyarrow ({e}); install it with "
            "`pip install pyarrow`, or save the table as .npy"
        ) from e
    return pq


class ParquetSource:
    """A Parquet table of numeric (integer, floating-point, boolean) columns, (N, D), read one
    row group at a time; blocks are the row groups. Each process keeps the row groups it
    decoded last (up to 512 MiB of them), so the batches of a buffer decode
    each of its groups once. Missing values become NaN (refused by :func:`summarize`)."""

    labels = None
    is_image = False

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser()
        self.name = str(self.path)
        self._file: Any = None
        self._pid: int | None = None
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        pq = _pyarrow_parquet(self.name)
        import pyarrow as pa

        numeric = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean)
        try:
            with pq.ParquetFile(self.path) as f:
                schema, metadata = f.schema_arrow, f.metadata
        except (OSError, pa.ArrowException) as e:
            raise DataError(
                f"{self.name}: cannot read .parquet file ({type(e).__name__}: {e})"
            ) from e
        index = _pandas_index_columns(schema)
        self.columns = [field.name for field in schema if field.name not in index]
        for j, field in enumerate(c for c in schema if c.name not in index):
            kind = field.type
            if not any(is_(kind) for is_ in numeric):
                raise DataError(
                    f"{self.name}: column {j + 1} {field.name!r} is not numeric (type "
                    f"{kind}); drop or encode it as numbers"
                )
        if not self.columns:
            raise DataError(f"{self.name}: array is empty (the table has no columns)")
        self.num_rows = int(metadata.num_rows)
        if self.num_rows == 0:
            raise DataError(f"{self.name}: array is empty (no data rows)")
        self.event_shape = (len(self.columns),)
        # The non-empty row groups: their rows, and their index in the file.
        self.blocks: list[tuple[int, int]] = []
        self._groups: list[int] = []
        start = 0
        for group in range(metadata.num_row_groups):
            rows = int(metadata.row_group(group).num_rows)
            if rows:
                self.blocks.append((start, start + rows))
                self._groups.append(group)
                start += rows
        self._starts = np.array([b[0] for b in self.blocks], dtype=np.int64)

    def read(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), len(self.columns)), dtype=np.float32)
        if not len(rows):
            return out
        first, last = np.searchsorted(self._starts, rows[[0, -1]], side="right") - 1
        for block in range(int(first), int(last) + 1):
            start, stop = self.blocks[block]
            lo, hi = np.searchsorted(rows, [start, stop])
            if hi > lo:
                out[lo:hi] = self._decoded(block)[rows[lo:hi] - start]
        return out

    def _decoded(self, block: int) -> np.ndarray:
        """Row group ``block`` as float32 (rows, D), from this process's cache or decoded."""
        if self._pid != os.getpid():
            self._file, self._cache, self._pid = None, OrderedDict(), os.getpid()
        cached = self._cache.get(block)
        if cached is not None:
            self._cache.move_to_end(block)
            return cached
        import pyarrow as pa

        try:
            if self._file is None:
                self._file = _pyarrow_parquet(self.name).ParquetFile(self.path)
            table = self._file.read_row_group(
                self._groups[block], columns=self.columns, use_threads=False
            )
            values = np.empty((table.num_rows, len(self.columns)), dtype=np.float64)
            for j, column in enumerate(table.columns):
                values[:, j] = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
        except (OSError, pa.ArrowException) as e:
            raise DataError(
                f"{self.name}: cannot read row group {self._groups[block]} "
                f"({type(e).__name__}: {e})"
            ) from e
        with np.errstate(over="ignore"):  # beyond float32: inf, refused by summarize()
            decoded = values.astype(np.float32)
        self._cache[block] = decoded
        while len(self._cache) > 1 and (
            sum(a.nbytes for a in self._cache.values()) > _PARQUET_CACHE_BYTES
        ):
            self._cache.popitem(last=False)
        return decoded

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_file": None, "_pid": None, "_cache": OrderedDict()}


def _pandas_index_columns(schema: Any) -> set[str]:
    """Columns that pandas stored for a DataFrame's index (not data: pandas reads them back as
    the index, so :func:`aevb.data.tables.load_table` does not see them)."""
    metadata = schema.pandas_metadata or {}
    return {name for name in metadata.get("index_columns", []) if isinstance(name, str)}


class ImageFolderSource:
    """PNG/JPEG images under ``root``: either one subfolder per class (``labels``: the index of
    each image's folder among the sorted folder names, ``classes``: those names) or all in
    ``root`` (no labels). Files are taken in sorted order (hidden ones, named ``.*``, are
    ignored); each is decoded to grey or RGB as the first one is, (C, H, W) float32 in [0, 1]
    (8-bit values / 255), and must have the first one's size. ``block_rows``: files per block.
    """

    is_image = True

    def __init__(self, root: str | os.PathLike, block_rows: int = _IMAGE_BLOCK):
        self.path = Path(root).expanduser()
        self.name = str(self.path)
        if not self.path.is_dir():
            raise DataError(f"{self.name}: no such folder")
        entries = sorted(
            (p for p in self.path.iterdir() if not p.name.startswith(".")), key=lambda p: p.name
        )
        folders = [p for p in entries if p.is_dir()]
        images = [p for p in entries if _is_image(p)]
        if folders and images:
            raise DataError(
                f"{self.name}: holds both images and subfolders; put all images in one folder, "
                "or each in the subfolder of its class"
            )
        self.classes: list[str] | None = None
        self.labels: np.ndarray | None = None
        if folders:
            labels: list[int] = []
            for label, folder in enumerate(folders):
                found = sorted((p for p in folder.iterdir() if _is_image(p)), key=lambda p: p.name)
                if not found:
                    raise DataError(f"{folder}: a class folder without PNG or JPEG images")
                images += found
                labels += [label] * len(found)
            self.classes = [folder.name for folder in folders]
            self.labels = np.array(labels, dtype=np.int64)
        if not images:
            raise DataError(f"{self.name}: no PNG or JPEG images ({', '.join(IMAGE_SUFFIXES)})")
        self._files = [str(p) for p in images]
        self.num_rows = len(self._files)
        with self._open(self._files[0]) as first:
            grey = first.getbands()[0] in ("1", "L", "I", "F")
            self._mode = "L" if grey else "RGB"
            self._size = first.size
        width, height = self._size
        self.event_shape = (1 if grey else 3, height, width)
        if block_rows < 1:
            raise ValueError(f"block_rows must be at least 1, got {block_rows}")
        self.blocks = _ranges(self.num_rows, block_rows)

    def read(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), *self.event_shape), dtype=np.float32)
        for i, row in enumerate(np.asarray(rows, dtype=np.int64).tolist()):
            out[i] = self._decode(self._files[row])
        return out

    def _open(self, path: str) -> Any:
        Image = _pil(self.name)
        try:
            return Image.open(path)
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise DataError(f"{path}: cannot read image ({type(e).__name__}: {e})") from e

    def _decode(self, path: str) -> np.ndarray:
        """One image as float32 (C, H, W) in [0, 1]."""
        Image = _pil(self.name)
        with self._open(path) as image:
            if image.size != self._size:
                raise DataError(
                    f"{path}: image of {image.size[0]}×{image.size[1]} pixels, but the first "
                    f"image ({self._files[0]}) has {self._size[0]}×{self._size[1]}; every image "
                    "must have the same size"
                )
            try:
                pixels = np.asarray(image.convert(self._mode), dtype=np.uint8)
            except (OSError, ValueError, Image.DecompressionBombError) as e:
                raise DataError(f"{path}: cannot read image ({type(e).__name__}: {e})") from e
        x = to_float32(pixels, 255.0)
        return x[None] if x.ndim == 2 else x.transpose(2, 0, 1)


def _is_image(path: Path) -> bool:
    return (
        path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and path.is_file()
    )


def _pil(name: str) -> Any:
    try:
        from PIL import Image
    except ImportError as e:
        raise DataError(
            f"{name}: reading images needs pillow ({e}); install it with `pip install pillow`"
        ) from e
    return Image


def open_source(path: str | os.PathLike) -> RowSource:
    """The source for ``path``: a folder of PNG/JPEG images, an .npy or a .parquet file."""
    path = Path(path).expanduser()
    if path.is_dir():
        return ImageFolderSource(path)
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".parquet"):
        raise DataError(
            f"{path}: cannot stream {suffix or 'a file without a suffix'!r}; streaming reads "
            f".npy and .parquet files and folders of images ({', '.join(IMAGE_SUFFIXES)})"
        )
    if not path.is_file():
        raise DataError(f"{path}: no such file or folder")
    return NpySource(path) if suffix == ".npy" else ParquetSource(path)


def _row_ids(exclude: Any, num_rows: int) -> np.ndarray:
    """``exclude`` as sorted unique int64 row ids in [0, num_rows) (none for ``None``)."""
    if exclude is None:
        return np.empty(0, dtype=np.int64)
    rows = np.unique(np.asarray(exclude, dtype=np.int64))
    if rows.size and (rows[0] < 0 or rows[-1] >= num_rows):
        raise ValueError(f"held-out row ids must lie in [0, {num_rows}), got {rows[[0, -1]]}")
    return rows


def stream_order(
    blocks: Sequence[tuple[int, int]],
    batch_size: int,
    seed: int,
    *,
    buffer_rows: int,
    exclude: np.ndarray | None = None,
    skip: int = 0,
) -> Iterator[np.ndarray]:
    """One epoch's global batches of row ids (int64, each ``batch_size`` long but the last),
    from the ``skip``-th on, for a source with ``blocks`` (:class:`RowSource`).

    The blocks are permuted by ``np.random.default_rng(seed)``; consecutive blocks in that
    order form buffers of at least ``buffer_rows`` rows (the last may hold fewer); buffer k's
    rows are permuted by ``np.random.default_rng([seed, k])``, then the rows of ``exclude``
    (sorted int64 ids) are left out; batches are cut from the buffers' rows one after another
    (a batch may straddle two buffers). Memory: a buffer and the blocks' order. The buffers
    before the ``skip``-th batch are counted, not permuted.
    """
    if batch_size < 1 or buffer_rows < 1 or skip < 0:
        raise ValueError(
            f"need batch_size ≥ 1, buffer_rows ≥ 1 and skip ≥ 0, got {batch_size}, "
            f"{buffer_rows} and {skip}"
        )
    num_rows = blocks[-1][1] if len(blocks) else 0
    excluded = _row_ids(exclude, num_rows)
    edges = np.asarray(blocks, dtype=np.int64).reshape(-1, 2)
    # Rows of each block, and held-out rows within it (positions in ``excluded``).
    held = np.searchsorted(excluded, edges)
    order = np.random.default_rng(seed).permutation(len(edges))
    to_drop = skip * batch_size
    carry = np.empty(0, dtype=np.int64)
    buffer: list[int] = []
    buffered = 0
    number = 0
    for position, block in enumerate(order.tolist()):
        buffer.append(block)
        buffered += int(edges[block, 1] - edges[block, 0])
        if buffered < buffer_rows and position < len(order) - 1:
            continue
        kept = buffered - int((held[buffer, 1] - held[buffer, 0]).sum())
        if to_drop >= kept:
            to_drop -= kept
        else:
            rows = np.concatenate([np.arange(*edges[b]) for b in buffer])
            rows = rows[np.random.default_rng([seed, number]).permutation(len(rows))]
            if kept < len(rows):
                out = np.concatenate([excluded[slice(*held[b])] for b in buffer])
                rows = rows[~np.isin(rows, out)]
            stream = np.concatenate((carry, rows[to_drop:]))
            to_drop = 0
            full = len(stream) - len(stream) % batch_size
            for start in range(0, full, batch_size):
                yield stream[start : start + batch_size]
            carry = stream[full:]
        buffer, buffered, number = [], 0, number + 1
    if len(carry):
        yield carry


class _BatchReader(Dataset):
    """A map-style dataset whose item is a whole batch: for row ids (n,) int64 in any order,
    the rows (n, *event_shape) float32 (read in sorted order, returned in the ids' order), the
    ids, and their labels (n,) int64 when ``labels``."""

    def __init__(self, source: RowSource, labels: bool):
        self.source = source
        self.labels = labels

    def __getitem__(self, ids: np.ndarray) -> tuple[Tensor, Tensor, Tensor | None] | str:
        """The batch, or the message of the error that kept it from being read (raised again
        as a :class:`DataError` by the training process: a worker's own exception would
        arrive wrapped in its traceback)."""
        order = np.argsort(ids, kind="stable")
        x = np.empty((len(ids), *self.source.event_shape), dtype=np.float32)
        try:
            x[order] = self.source.read(ids[order])
        except (DataError, OSError, ValueError) as error:
            return f"{self.source.name}: {error}"
        y = None
        if self.labels:
            assert self.source.labels is not None
            y = torch.from_numpy(self.source.labels[ids])
        return torch.from_numpy(x), torch.from_numpy(np.ascontiguousarray(ids)), y


def batch_seed(seed: int, number: int) -> int:
    """The seed of the dynamic binarization of batch ``number`` of the epoch drawn with
    ``seed`` (the two mixed by numpy's SeedSequence)."""
    return int(np.random.SeedSequence([seed, number]).generate_state(1, np.uint64)[0] >> 1)


def _as_is(item: Any) -> Any:
    return item


def _default_workers(device: torch.device) -> int:
    """Reader processes: none when training on the CPU, whose cores the training threads use
    (a worker cost 2.4 ms a batch of 100 MNIST rows against 0.6 ms read in the training
    process, two cores); else up to 4, leaving a core to the training process."""
    if device.type == "cpu":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(4, max(0, (cores or 1) // processes_on_this_machine() - 1))


class StreamLoader:
    """Shuffled minibatches of a :class:`RowSource` read as they are needed (the
    :class:`~aevb.data.loaders.Loader` interface), for training data larger than memory.

    Each epoch draws one seed from torch's global generator for :func:`stream_order` (so a run
    that restores the random state of an epoch's start redraws the same order); ``workers``
    DataLoader processes read the batches (0: this process; default: 0 on the CPU, else up to
    4, a core left free). ``exclude``: row ids held out (e.g. a validation split).
    ``shard=(rank, world)``: each batch holds this process's part
    (:func:`~aevb.data.loaders.shard_of`) of the global batch, possibly none of a short last
    batch. Rows are mapped to the model's space on
    ``device`` when their batch is yielded: a dynamic binarization is a fresh draw
    ``rand < x`` whose uniforms come from a generator of the epoch's seed and the batch's
    number (:func:`batch_seed`), drawn for the whole global batch, so that every number of
    processes, and a resumed epoch, binarize each row alike; other transforms are
    :meth:`Transforms.prepare` of the batch. ``labels``: batches carry the
    source's labels (a folder of class subfolders).
    """

    def __init__(
        self,
        source: RowSource,
        batch_size: int,
        transforms: Transforms | None = None,
        *,
        device: str | torch.device = "cpu",
        exclude: np.ndarray | Sequence[int] | None = None,
        buffer_rows: int = 65536,
        workers: int | None = None,
        shard: tuple[int, int] = (0, 1),
        labels: bool = False,
    ):
        if batch_size < 1 or buffer_rows < 1:
            raise ValueError(
                f"batch_size and buffer_rows must be at least 1, got {batch_size}, {buffer_rows}"
            )
        rank, world = shard
        if not 0 <= rank < world:
            raise ValueError(f"shard must be (rank, world) with 0 ≤ rank < world, got {shard}")
        if labels and source.labels is None:
            raise ConfigError(
                f"{source.name} has no labels (only a folder with one subfolder per class has)"
            )
        self.source = source
        self.batch_size = int(batch_size)
        self.transforms = transforms or Transforms()
        self.device = torch.device(device)
        self.exclude = _row_ids(exclude, source.num_rows)
        self.buffer_rows = int(buffer_rows)
        self.workers = _default_workers(self.device) if workers is None else int(workers)
        self.shard = (int(rank), int(world))
        self.labels = labels
        if self.num_examples == 0:
            raise ValueError("cannot train on an empty data split")

    @property
    def num_examples(self) -> int:
        return self.source.num_rows - len(self.exclude)

    def __len__(self) -> int:
        return -(-self.num_examples // self.batch_size)

    def epoch(self, skip: int = 0) -> Iterator[Batch]:
        seed = int(torch.randint(2**62, ()))
        return self._batches(seed, skip)

    def schedule(self, seed: int, skip: int = 0) -> Iterator[np.ndarray]:
        """This process's row ids (n,) int64 of each batch of the epoch drawn with ``seed``,
        from the ``skip``-th on."""
        rank, world = self.shard
        for ids in stream_order(
            self.source.blocks,
            self.batch_size,
            seed,
            buffer_rows=self.buffer_rows,
            exclude=self.exclude,
            skip=skip,
        ):
            yield ids[shard_of(len(ids), rank, world)]

    def _batches(self, seed: int, skip: int) -> Iterator[Batch]:
        reader = DataLoader(
            _BatchReader(self.source, self.labels),
            batch_size=None,
            sampler=self.schedule(seed, skip),
            num_workers=self.workers,
            collate_fn=_as_is,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=2 if self.workers else None,
            # The workers' seeds come from here, not from the global generator.
            generator=torch.Generator(),
        )
        batches = iter(reader)
        try:
            for number, item in enumerate(batches, start=skip):
                if isinstance(item, str):
                    raise DataError(f"reading a batch failed: {item}")
                yield self._prepare(*item, seed, number)
        finally:  # also when the epoch is abandoned: no reader process outlives it
            shutdown = getattr(batches, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()

    def _prepare(self, x: Tensor, index: Tensor, y: Tensor | None, seed: int, number: int) -> Batch:
        x = x.to(self.device, non_blocking=True)
        if self.transforms.dynamic_binarization:
            # Uniforms for the whole global batch, from a generator of the epoch's seed and the
            # batch's number, and this process's rows of them: the same bits whatever the
            # number of processes, and on resumption.
            rows = min(self.batch_size, self.num_examples - number * self.batch_size)
            generator = torch.Generator(self.device).manual_seed(batch_seed(seed, number))
            uniforms = torch.rand(
                (rows, *x.shape[1:]), generator=generator, device=self.device, dtype=x.dtype
            )
            x = (uniforms[shard_of(rows, *self.shard)] < x).to(x.dtype)
        else:
            x = self.transforms.prepare(x)
        index = index.to(self.device, non_blocking=True)
        return Batch(x, index, None if y is None else y.to(self.device, non_blocking=True))

    def head(self, rows: int) -> Batch:
        count = min(rows, self.num_examples)
        stop = min(self.source.num_rows, count + len(self.exclude))
        ids = _kept(0, stop, self.exclude)[:count]
        x = torch.from_numpy(self.source.read(ids)).to(self.device)
        y = None
        if self.labels:
            assert self.source.labels is not None
            y = torch.from_numpy(self.source.labels[ids]).to(self.device)
        return Batch(self.transforms.prepare(x), torch.from_numpy(ids).to(self.device), y)


@dataclass(frozen=True, eq=False)
class StreamSummary:
    """What one pass over a source found: ``rows`` (not held out), of shape ``event_shape``;
    the range [``min``, ``max``] of the values; whether every value is 0 or 1 (``binary``) or
    an 8-bit level k/255 (``eight_bit``); the per-value ``mean`` and ``std`` (D,) float64 (the
    population deviation, as numpy's); and ``fingerprint``, the SHA-256 that
    :meth:`aevb.data.datasets.Dataset.fingerprint` gives a split of these rows and labels."""

    rows: int
    event_shape: tuple[int, ...]
    min: float
    max: float
    binary: bool
    eight_bit: bool
    mean: np.ndarray
    std: np.ndarray
    fingerprint: str

    def standardize(self) -> Standardize:
        """The standardisation :meth:`Standardize.fit` fits to these rows (to float64 rounding)."""
        scale = np.where(self.std > 0, self.std, 1.0)
        return Standardize(tuple(self.mean.tolist()), tuple(scale.tolist()))


def summarize(
    source: RowSource, exclude: np.ndarray | None = None, chunk_rows: int | None = None
) -> StreamSummary:
    """One pass over ``source``'s rows but ``exclude``, ``chunk_rows`` at a time (default:
    about 4 MiB of float32), for a :class:`StreamSummary`. The mean and variance are merged
    chunk by chunk (Chan, Golub and LeVeque's parallel algorithm). A NaN or infinite value
    raises :class:`~aevb.errors.DataError` naming its row."""
    excluded = _row_ids(exclude, source.num_rows)
    rows = source.num_rows - len(excluded)
    if rows == 0:
        raise DataError(f"{source.name}: no rows left once {len(excluded)} are held out")
    width = math.prod(source.event_shape)
    if chunk_rows is None:
        chunk_rows = max(1, _BLOCK_BYTES // (4 * width))
    sha = hashlib.sha256(f"float32|{(rows, *source.event_shape)}|".encode())
    count, low, high, binary, eight_bit = 0, math.inf, -math.inf, True, True
    mean, m2 = np.zeros(width), np.zeros(width)
    for start, stop in source.blocks:
        for first in range(start, stop, chunk_rows):
            ids = _kept(first, min(first + chunk_rows, stop), excluded)
            if not len(ids):
                continue
            x = np.ascontiguousarray(source.read(ids), dtype=np.float32)
            flat = x.reshape(len(ids), width)
            finite = np.isfinite(flat).all(axis=1)
            if not finite.all():
                raise DataError(
                    f"{source.name}: row {int(ids[np.argmin(finite)])} (from 0) holds a value "
                    "that is NaN (missing), infinite or too large for float32; fix or drop it"
                )
            sha.update(memoryview(x).cast("B"))
            low, high = min(low, float(flat.min())), max(high, float(flat.max()))
            binary = binary and bool(((flat == 0) | (flat == 1)).all())
            eight_bit = eight_bit and on_eight_bit_grid(flat)
            values = flat.astype(np.float64)
            chunk_mean = values.mean(axis=0)
            chunk_m2 = np.square(values - chunk_mean).sum(axis=0)
            total = count + len(ids)
            delta = chunk_mean - mean
            mean += delta * (len(ids) / total)
            m2 += chunk_m2 + np.square(delta) * (count * len(ids) / total)
            count = total
    labels = source.labels
    if labels is None:
        sha.update(b"none|")
    else:
        kept = np.ascontiguousarray(np.delete(labels, excluded), dtype=np.int64)
        sha.update(f"{kept.dtype}|{kept.shape}|".encode())
        sha.update(memoryview(kept).cast("B"))
    return StreamSummary(
        rows=rows,
        event_shape=tuple(source.event_shape),
        min=low,
        max=high,
        binary=binary,
        eight_bit=eight_bit,
        mean=mean,
        std=np.sqrt(m2 / count),
        fingerprint=sha.hexdigest(),
    )
