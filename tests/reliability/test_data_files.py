"""The data-file layer: the user's own .npy, .npz, .csv and .parquet files, read by
``aevb.data.load_dataset`` / ``load_table`` and by ``aevb train|embed|score``.

Regression tests for the issue's findings ("no traceback, no silent damage, no lost run"):

* a documented-valid .npz whose ``val`` array is empty (or absent) failed to train;
* one corrupted cell (1e30) in otherwise ordinary data was accepted and silently dominated the
  standardisation and the loss; it is now refused, naming its row, its column (the header's
  name for .csv and .parquet) and its value — also in an .npz's ``test`` array, against bounds
  taken from ``train`` — while genuinely heavy-tailed data (log-normal, Pareto, Student-t,
  sparse counts) are still accepted;
* a 2 MB .npz that decompresses to 2 GB (a decompression bomb) exhausted memory; it is refused
  from its zip directory, before decompressing;
* a file larger than the available memory was read anyway; it is refused before reading;
* ``aevb embed`` / ``score`` must still take far-out rows (scoring outliers is what anomaly
  detection is for): only training data are refused, and values beyond float32 clearly.
"""

from __future__ import annotations

import io
import json
import math
import resource
import struct
import time
import tracemalloc
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import QUICK, cli
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from aevb.data import load_dataset
from aevb.data import tables as tables_module
from aevb.data.tables import OUTLIER_FACTOR, check_outliers, outlier_bounds
from aevb.errors import DataError
from aevb.limits import MAX_INFLATION
from aevb.runs import TrainConfig, train

COLUMNS = [f"px{j}" for j in range(16, 24)]  # the third row of digits' 8×8 pixels
BAD_ROW, BAD_COLUMN = 7, 3


def digits_table(digits, rows: int = 300) -> np.ndarray:
    """(rows, 8) float64 pixel counts 0..16: eight real, varied columns of digits."""
    flat = digits.train.reshape(len(digits.train), -1)
    return flat[:rows, 16:24].astype(np.float64) * 16


def write_table(x: np.ndarray, path: Path, columns: list[str] | None = None) -> Path:
    """Write ``x`` as ``path``'s format (.csv and .parquet with a header of ``columns``)."""
    suffix = path.suffix
    if suffix == ".npy":
        np.save(path, x)
    elif suffix == ".npz":
        np.savez(path, train=x, test=x[:50])
    elif suffix == ".csv":
        pd.DataFrame(x, columns=columns).to_csv(path, index=False)
    else:
        pd.DataFrame(x, columns=columns).to_parquet(path, index=False)
    return path


def train_args(dataset: Path, out: Path) -> list:
    return ["train", "--dataset", dataset, "--epochs", "1", *QUICK, "--out", out]


# ------------------------------------------------------------------------ documented layouts


@pytest.mark.parametrize(
    ("arrays_of", "num_val"),
    [
        pytest.param(lambda x: {"val": np.zeros((0, x.shape[1]))}, 0, id="empty-val"),
        pytest.param(lambda x: {}, 40, id="train-and-test-only"),
    ],
)
def test_npz_with_an_empty_or_no_val_array_trains(tmp_path, digits, arrays_of, num_val):
    x = digits.train.reshape(len(digits.train), -1)[:500, 18:24].astype(np.float64)
    path = tmp_path / "data.npz"
    np.savez(path, train=x[:400], test=x[400:], **arrays_of(x))
    out = cli(*train_args(path, tmp_path / "run"))
    assert out.status == 0, out.err
    data = json.loads((tmp_path / "run" / "config.json").read_text())["data"]
    assert (data["num_train"] + data["num_val"], data["num_val"], data["num_test"]) == (
        400,
        num_val,
        100,
    )


# --------------------------------------------------------------------------- far-out values

FORMATS = [
    pytest.param(".npy", f"column {BAD_COLUMN}", id="npy"),
    pytest.param(".npz", f"column {BAD_COLUMN}", id="npz"),
    pytest.param(".csv", f"column '{COLUMNS[BAD_COLUMN]}'", id="csv-header"),
    pytest.param(".parquet", f"column '{COLUMNS[BAD_COLUMN]}'", id="parquet"),
]


@pytest.fixture
def corrupted(tmp_path, digits):
    """Digits' pixels with one cell set to 1e30, written as the requested format."""

    def write(suffix: str) -> Path:
        x = digits_table(digits)
        x[BAD_ROW, BAD_COLUMN] = 1e30
        return write_table(x, tmp_path / f"corrupted{suffix}", COLUMNS)

    return write


@pytest.mark.parametrize(("suffix", "column"), FORMATS)
def test_one_huge_cell_is_refused_by_train_naming_row_column_and_value(
    tmp_path, corrupted, suffix, column
):
    path = corrupted(suffix)
    out = cli(*train_args(path, tmp_path / "run"))
    assert out.clear_error, out.err
    assert "lie far outside the rest of the data" in out.err
    assert f"row {BAD_ROW} (from 0), {column} holds 1e+30" in out.err
    assert path.name in out.err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("suffix", "column"), FORMATS)
def test_one_huge_cell_is_refused_by_load_dataset(corrupted, suffix, column):
    with pytest.raises(DataError, match=r"lie far outside the rest of the data") as error:
        load_dataset(str(corrupted(suffix)))
    assert f"row {BAD_ROW} (from 0), {column} holds 1e+30" in str(error.value)


def test_a_huge_cell_in_the_test_array_is_refused_against_the_train_bounds(tmp_path, digits):
    x = digits_table(digits)
    test = x[:50].copy()
    test[11, 2] = 1e30
    path = tmp_path / "split.npz"
    np.savez(path, train=x, test=test)
    with pytest.raises(DataError) as error:
        load_dataset(str(path))
    message = str(error.value)
    assert "['test']" in message and "row 11 (from 0), column 2 holds 1e+30" in message
    out = cli(*train_args(path, tmp_path / "run"))
    assert out.clear_error and "['test']" in out.err and "1e+30" in out.err, out.err


_RNG_SHAPE = (20_000, 4)


def _sparse_counts(rng: np.random.Generator) -> np.ndarray:
    counts = rng.poisson(5.0, _RNG_SHAPE) + 1.0
    return np.where(rng.random(_RNG_SHAPE) < 0.001, counts, 0.0)


@pytest.mark.parametrize(
    "draw",
    [
        pytest.param(lambda rng: rng.lognormal(0.0, 3.0, _RNG_SHAPE), id="log-normal-sigma-3"),
        pytest.param(lambda rng: rng.pareto(1.0, _RNG_SHAPE) + 1.0, id="pareto-alpha-1"),
        pytest.param(lambda rng: rng.standard_t(2, _RNG_SHAPE), id="student-t-2-dof"),
        pytest.param(_sparse_counts, id="sparse-counts-99.9pct-zeros"),
    ],
)
def test_genuine_heavy_tails_are_not_refused(draw):
    x = draw(np.random.default_rng(0))
    assert np.isfinite(x).all()
    check_outliers(x, outlier_bounds(x), "heavy-tailed")  # raises DataError if refused


_SHAPES = st.tuples(st.integers(1, 50), st.integers(1, 5))


@settings(max_examples=200, deadline=None)
@given(arrays(np.float32, _SHAPES, elements=st.integers(-8000, 8000).map(lambda v: v / 8)))
def test_tables_of_ordinary_values_are_never_refused(x):
    """Values in [-1e3, 1e3] on a grid of 1/8: a nonzero interquartile range is at least
    1/32 (quartiles interpolate in quarters), so nothing lies 1e6 of them out."""
    check_outliers(x, outlier_bounds(x), "x")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(
    arrays(
        np.float32,
        st.tuples(st.integers(4, 50), st.integers(1, 5)),
        elements=st.floats(-1e6, 1e6, width=32),
        unique=True,
    )
)
def test_a_table_is_refused_only_for_values_factor_iqrs_out(x):
    """The documented bound: with every column's interquartile range s > 0, a table whose
    values all lie within OUTLIER_FACTOR / 2 × s of its column's quartiles is accepted."""
    flat = x.astype(np.float64)
    low, high = np.quantile(flat, [0.25, 0.75], axis=0)
    spread = high - low
    assume(bool((spread > 0).all()))
    margin = OUTLIER_FACTOR / 2 * spread
    assume(bool(((flat >= low - margin) & (flat <= high + margin)).all()))
    check_outliers(x, outlier_bounds(x), "x")


# ----------------------------------------------------------------------- decompression bombs

BOMB_SHAPE = (2_000_000, 128)  # float64: 2.05 GB of zeros
_CHUNK = 1 << 24


def write_zip_bomb(path: Path, shape: tuple[int, int] = BOMB_SHAPE) -> None:
    """A valid .npz of one member, ``train.npy``: a float64 array of ``shape``, all zeros,
    deflated at level 9 (~1000×) and written by hand in 16 MiB pieces, so neither the array
    nor its compressed form is ever held in memory. After a full flush deflate compresses
    the same input to the same bytes, so one compressed 16 MiB block of zeros is repeated:
    ~1.5 s instead of zlib's 8 s over 2 GB."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": shape}
    )
    head, zeros = header.getvalue(), math.prod(shape) * 8
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = deflate.compress(head) + deflate.flush(zlib.Z_FULL_FLUSH)
    block = deflate.compress(bytes(_CHUNK)) + deflate.flush(zlib.Z_FULL_FLUSH)
    again = deflate.compress(bytes(_CHUNK)) + deflate.flush(zlib.Z_FULL_FLUSH)
    assert again == block  # what repeating the block relies on
    blocks, rest = divmod(zeros, _CHUNK)
    last = deflate.compress(bytes(rest)) + deflate.flush()
    crc, chunk = zlib.crc32(head), bytes(_CHUNK)
    for _ in range(blocks):
        crc = zlib.crc32(chunk, crc)
    crc = zlib.crc32(bytes(rest), crc)
    size, packed = len(head) + zeros, len(first) + blocks * len(block) + len(last)
    assert size < 2**32 and packed < 2**32  # no zip64 records needed
    name = b"train.npy"
    # version 2.0, no flags, deflate, DOS time and date, CRC-32, sizes, name length
    common = (20, 0, 8, 0, 0x21, crc, packed, size, len(name))
    with open(path, "wb") as f:
        f.write(struct.pack("<I5H3I2H", 0x04034B50, *common, 0) + name)  # local header
        f.write(first)
        for _ in range(blocks):
            f.write(block)
        f.write(last)
        start = f.tell()
        # central directory: made by 2.0, the same fields, no extra/comment/attributes, at 0
        central = struct.pack("<IH5H3I5H2I", 0x02014B50, 20, *common, 0, 0, 0, 0, 0, 0) + name
        f.write(central)
        f.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), start, 0))


@pytest.fixture(scope="module")
def zip_bomb(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bomb") / "bomb.npz"
    write_zip_bomb(path)
    return path


def test_the_zip_bomb_is_a_valid_npz(zip_bomb):
    """What the refusal below is about: a genuine zip that declares 2 GB in ~2 MB."""
    assert zip_bomb.stat().st_size < 3 << 20
    with zipfile.ZipFile(zip_bomb) as archive:
        (info,) = archive.infolist()
        assert info.file_size == math.prod(BOMB_SHAPE) * 8 + 128
        assert info.file_size / info.compress_size > 5 * MAX_INFLATION
        with archive.open(info) as f:
            assert np.lib.format.read_magic(f) == (1, 0)
            assert np.lib.format.read_array_header_1_0(f) == (BOMB_SHAPE, False, np.float64)
            assert f.read(1 << 20) == bytes(1 << 20)


def test_a_decompression_bomb_is_refused_before_decompressing(zip_bomb):
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(DataError, match="decompress") as error:
            load_dataset(str(zip_bomb))
        seconds = time.perf_counter() - started
        _, traced_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(error.value)
    assert (
        f"more than the {MAX_INFLATION}×" in message and "refused before decompressing" in message
    )
    assert "['train']" in message
    assert seconds < 5
    assert traced_peak < 100 << 20
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_rss < 100 << 10


def test_a_small_highly_compressible_npz_is_still_read(tmp_path):
    x = np.zeros((1000, 8))
    x[::97, 3] = 1.0
    path = tmp_path / "sparse.npz"
    np.savez_compressed(path, train=x, test=x[:100])
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("train.npy")
        assert info.file_size / info.compress_size > MAX_INFLATION  # exempt: < 16 MiB
    dataset = load_dataset(str(path))
    assert dataset.train.shape[1:] == (8,) and len(dataset.test) == 100
    assert len(dataset.train) + len(dataset.val) == 1000


# ---------------------------------------------------------------------------- memory limits

_MB = 1 << 20


def _write_npy(path: Path) -> None:
    np.save(path, np.zeros((20 * _MB // 32, 4)))


def _write_npz(path: Path) -> None:
    x = np.zeros((20 * _MB // 32, 4))
    np.savez(path, train=x, test=x[:10])


def _write_csv(path: Path) -> None:
    path.write_text("a,b,c,d\n" + "0.5,1.5,2.5,3.5\n" * (20 * _MB // 16))


def _write_parquet(path: Path) -> None:
    pd.DataFrame(np.zeros((20 * _MB // 32, 4)), columns=list("abcd")).to_parquet(path)


def _never(*args, **kwargs):
    raise AssertionError("the data were read although the memory check should refuse them")


@pytest.mark.parametrize(
    ("suffix", "write", "reader"),
    [
        pytest.param(".npy", _write_npy, "aevb.data.tables._read_npy", id="npy"),
        pytest.param(".npz", _write_npz, "aevb.data.tables._read_npy", id="npz"),
        pytest.param(".csv", _write_csv, "aevb.data.tables._read_csv", id="csv"),
        pytest.param(".parquet", _write_parquet, "pandas.read_parquet", id="parquet"),
    ],
)
def test_a_file_beyond_the_available_memory_is_refused_before_reading(
    tmp_path, monkeypatch, suffix, write, reader
):
    path = tmp_path / f"big{suffix}"
    write(path)
    assert tables_module.check_memory.__module__ == "aevb.limits"  # it looks the size up there
    monkeypatch.setattr("aevb.limits.available_memory", lambda: 10_000_000)
    monkeypatch.setattr(reader, _never)
    with pytest.raises(DataError, match=r"needs .* of memory") as error:
        load_dataset(str(path))
    message = str(error.value)
    assert str(path) in message and "9.54 MB this machine has available" in message


# ---------------------------------------------------------------- embed and score far-out rows


@pytest.fixture(scope="module")
def table_run(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """(run folder, its table): a Gaussian VAE trained for one epoch on a 400 × 6 table."""
    folder = tmp_path_factory.mktemp("table-run")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 2)) @ rng.normal(size=(2, 6)) + 0.3 * rng.normal(size=(400, 6))
    table = write_table(x, folder / "table.csv", [f"c{j}" for j in range(6)])
    config = TrainConfig(
        dataset=str(table), latent_dim=4, hidden=(32,), epochs=1, batch_size=64, device="cpu"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a collapse warning after one epoch is expected
        train(config, folder / "run", progress=False)
    return folder / "run", x


def _rows_with(table_run, tmp_path, value: float) -> Path:
    _, x = table_run
    rows = x[:20].copy()
    rows[3, 2] = value
    return write_table(rows, tmp_path / "rows.csv", [f"c{j}" for j in range(6)])


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(["embed"], id="embed"),
        pytest.param(["score", "--importance-samples", "20"], id="score"),
    ],
)
def test_embed_and_score_take_a_far_out_row(table_run, tmp_path, command):
    """1e30 is far outside the training data but within float32: it is scored, not refused."""
    rows = _rows_with(table_run, tmp_path, 1e30)
    out = cli(command[0], table_run[0], "--data", rows, "--out", tmp_path / "out.csv", *command[1:])
    assert out.status == 0, out.err
    values = np.loadtxt(tmp_path / "out.csv", delimiter=",", skiprows=1, ndmin=2)
    assert len(values) == 20
    others = np.delete(values, 3, axis=0)
    assert np.isfinite(others).all()
    if command[0] == "score":  # the far-out row is the least likely one
        assert values[3, 0] < others.min()


@pytest.mark.parametrize("command", ["embed", "score"])
def test_embed_and_score_refuse_a_value_beyond_float32(table_run, tmp_path, command):
    rows = _rows_with(table_run, tmp_path, 1e300)
    out = cli(command, table_run[0], "--data", rows, "--out", tmp_path / "out.csv")
    assert out.clear_error, out.err
    assert "column 'c2'" in out.err and "too large for float32" in out.err
    assert "data row 4" in out.err
    assert not (tmp_path / "out.csv").exists()
