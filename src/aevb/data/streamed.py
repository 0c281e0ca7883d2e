"""A dataset whose training split stays on disk: what ``aevb train --stream`` trains on.

:func:`load_streamed` opens a :class:`~aevb.data.streaming.RowSource` (an ``.npy`` or Parquet
file, a folder of images) and holds out validation and test rows — the same fractions as the
in-memory path (``val_fraction``, and a tenth for the test split), each at most
:data:`MAX_HELD_OUT_ROWS` rows and :data:`MAX_HELD_OUT_BYTES`, drawn with the split seed (not
the rows the in-memory path would hold out of the same file) — which are read into memory, as
evaluation needs them. The training rows are all the others; they are read batch by batch by
a :class:`~aevb.data.streaming.StreamLoader`. Choosing the transforms and fingerprinting the
training split take one pass over the file (:func:`~aevb.data.streaming.summarize`), made
only when they are first needed.

:func:`should_stream` decides ``--stream`` left unset: folders of images always stream; a
file streams when it is larger than a quarter of the available memory.
"""

from __future__ import annotations

import math
import os
from functools import cached_property
from pathlib import Path

import numpy as np

from aevb.data.datasets import DATASETS, Examples, fingerprint_of
from aevb.data.streaming import RowSource, StreamSummary, open_source, summarize
from aevb.distributed import processes_on_this_machine
from aevb.errors import DataError
from aevb.hints import setting_name
from aevb.limits import available_memory, check_memory, format_bytes

__all__ = ["MAX_HELD_OUT_ROWS", "StreamedDataset", "load_streamed", "should_stream"]

# Held-out rows of a streamed dataset per split, at most: they are read into memory (and
# copied to each process's device), so also at most MAX_HELD_OUT_BYTES of float32 values.
MAX_HELD_OUT_ROWS = 10_000
MAX_HELD_OUT_BYTES = 256 << 20
# Share of the test split, as the in-memory path holds out of a single array.
TEST_FRACTION = 0.1
# A file larger than this share of the available memory is streamed unless --no-stream.
STREAM_ABOVE_SHARE = 0.25
STREAMABLE = (".npy", ".parquet")


class StreamedDataset(Examples):
    """The splits of a :class:`RowSource`: ``val`` and ``test`` as float32 arrays (with their
    labels, for a folder of class subfolders), the training rows as the source's rows but
    ``held_out``. Offers what the run layer reads of a :class:`~aevb.data.datasets.Dataset`,
    with ``num_train`` for the training split's size and :attr:`summary` for its values."""

    streamed = True

    def __init__(self, source: RowSource, val_rows: np.ndarray, test_rows: np.ndarray):
        self.source = source
        self.name = source.name
        self.held_out = np.sort(np.concatenate((val_rows, test_rows)))
        self.val_rows, self.test_rows = val_rows, test_rows
        self.val = source.read(val_rows) if len(val_rows) else _empty(source)
        self.test = source.read(test_rows)
        labels = source.labels
        self.val_labels = None if labels is None else labels[val_rows]
        self.test_labels = None if labels is None else labels[test_rows]
        self.train_labels = None if labels is None else np.delete(labels, self.held_out)
        self.likelihood: str | None = None

    @property
    def num_train(self) -> int:
        return self.source.num_rows - len(self.held_out)

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.source.event_shape)

    @cached_property
    def summary(self) -> StreamSummary:
        """One pass over the training rows (range, binary values, mean and deviation,
        fingerprint), made when first asked for."""
        return summarize(self.source, exclude=self.held_out)

    @property
    def binary(self) -> bool:
        return self.summary.binary and all(
            bool(((a == 0) | (a == 1)).all()) for a in (self.val, self.test)
        )

    @property
    def in_unit_interval(self) -> bool:
        return self.summary.min >= 0.0 and self.summary.max <= 1.0

    @property
    def suggested_likelihood(self) -> str:
        return "bernoulli" if self.in_unit_interval else "gaussian-learned"

    def split(self, name: str, limit: int | None = None) -> np.ndarray:
        """The rows of split ``name`` (the first ``limit``); the training split is read from
        disk, and refused beyond half the available memory."""
        if name in ("val", "test"):
            return getattr(self, name)[:limit]
        if name != "train":
            raise DataError(f"unknown split {name!r}; choose from train, val, test")
        count = self.num_train if limit is None else min(limit, self.num_train)
        check_memory(
            count * self.data_dim * 4,
            f"the {count:,} training rows of {self.name}",
            f"ask for fewer ({setting_name('num_examples')})",
            share=0.5,
            error=DataError,
        )
        rows = np.arange(min(self.source.num_rows, count + len(self.held_out)))
        return self.source.read(rows[~np.isin(rows, self.held_out)][:count])

    def fingerprint(self, split: str) -> str:
        """SHA-256 of a split's values and labels, as :meth:`Dataset.fingerprint` gives the
        same rows (the training split's from :attr:`summary`)."""
        if split == "train":
            return self.summary.fingerprint
        return fingerprint_of(self.split(split), getattr(self, f"{split}_labels"))


def _empty(source: RowSource) -> np.ndarray:
    return np.empty((0, *source.event_shape), dtype=np.float32)


def load_streamed(
    path: str | os.PathLike, *, val_fraction: float = 0.1, split_seed: int = 0
) -> StreamedDataset:
    """Open ``path`` for streaming and hold out its validation and test rows (see the
    module's description)."""
    check_streamable(path)
    source = open_source(path)
    n = source.num_rows
    cap = max(1, min(MAX_HELD_OUT_ROWS, MAX_HELD_OUT_BYTES // (4 * math.prod(source.event_shape))))
    test = min(cap, max(1, round(TEST_FRACTION * n)))
    val = min(cap, round(val_fraction * (n - test)))
    if n - test - val < 1:
        raise DataError(f"{source.name} has {n} rows: too few to hold out test and validation")
    held = np.random.default_rng(split_seed).choice(n, size=test + val, replace=False)
    return StreamedDataset(source, np.sort(held[test:]), np.sort(held[:test]))


def check_streamable(path: str | os.PathLike) -> None:
    """Refuse what cannot be streamed: a named dataset, another kind of file."""
    if str(path) in DATASETS:
        raise DataError(
            f"{setting_name('stream')} reads .npy and .parquet files and folders of images; "
            f"{path} is a named dataset, which fits in memory: train without it"
        )
    target = Path(path).expanduser()
    if not target.exists():
        raise DataError(f"{path} does not exist")
    if not target.is_dir() and target.suffix.lower() not in STREAMABLE:
        raise DataError(
            f"{setting_name('stream')} reads .npy and .parquet files and folders of images, not "
            f"{target.suffix} files; convert the data to one of those"
        )


def should_stream(path: str | os.PathLike) -> tuple[bool, str | None]:
    """Whether ``--stream`` left unset streams ``path``, and the line that says why (``None``
    when it does not stream): a folder (images are read only from disk) or a streamable file
    larger than :data:`STREAM_ABOVE_SHARE` of the available memory."""
    if str(path) in DATASETS:
        return False, None
    target = Path(path).expanduser()
    if target.is_dir():
        return True, f"{path} is a folder: its images are streamed from disk"
    if target.suffix.lower() not in STREAMABLE or not target.is_file():
        return False, None
    available = available_memory()
    # Every process of a data-parallel run on this machine would hold its own copy.
    size = target.stat().st_size * processes_on_this_machine()
    if available is None or size <= STREAM_ABOVE_SHARE * available:
        return False, None
    return True, (
        f"{path} is {format_bytes(size)}, more than a quarter of the {format_bytes(available)} "
        f"of memory available: streaming it from disk ({setting_name('stream', False)} loads "
        "it into memory)"
    )
