"""The streaming data layer: sources read exactly the in-memory rows, an epoch's order is a pure
seeded function, the loader serves every row once (sharded, resumable), summarize() matches
numpy, memory stays bounded, and bad files raise DataError."""

from __future__ import annotations

import multiprocessing
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from aevb.data.datasets import Dataset
from aevb.data.loaders import shard_of
from aevb.data.streaming import (
    ImageFolderSource,
    NpySource,
    ParquetSource,
    StreamLoader,
    batch_seed,
    open_source,
    stream_order,
    summarize,
)
from aevb.data.tables import load_table
from aevb.data.transforms import Binarize, Standardize, Transforms
from aevb.errors import DataError


@pytest.fixture
def table(tmp_path):
    """A float64 table (500, 6) in an .npy file, and the file's path."""
    x = np.random.default_rng(0).normal(size=(500, 6)) * 3 + 1
    path = tmp_path / "table.npy"
    np.save(path, x)
    return x, path


@pytest.fixture
def parquet(tmp_path):
    """A Parquet file of float, integer and boolean columns in row groups of 70 rows, and the
    table as load_table reads it."""
    rng = np.random.default_rng(1)
    n = 400
    frame = pa.table(
        {
            "f": rng.normal(size=n),
            "i": rng.integers(-50, 50, size=n).astype(np.int32),
            "b": rng.random(n) < 0.5,
            "g": rng.normal(size=n).astype(np.float32),
        }
    )
    path = tmp_path / "table.parquet"
    pq.write_table(frame, path, row_group_size=70)
    return load_table(path)[0], path


def _write_images(folder, pixels, suffix=".png"):
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(pixels):
        Image.fromarray(image).save(folder / f"img{i:03d}{suffix}")


@pytest.fixture
def image_folder(tmp_path):
    """Grey 5×7 images in three class folders (sizes 4, 6, 5), the rows as float32 (N, 1, 5, 7)
    and the labels."""
    rng = np.random.default_rng(2)
    root = tmp_path / "classes"
    rows, labels = [], []
    for label, (name, count) in enumerate([("cat", 4), ("dog", 6), ("eel", 5)]):
        pixels = rng.integers(0, 256, size=(count, 5, 7), dtype=np.uint8)
        _write_images(root / name, pixels)
        rows.append(pixels)
        labels += [label] * count
    x = np.concatenate(rows)[:, None].astype(np.float32) / np.float32(255)
    return x, np.array(labels), root


def _all_rows(source):
    return source.read(np.arange(source.num_rows))


# ---------------------------------------------------------------------------------- sources


@pytest.mark.parametrize(
    "shape, dtype",
    [
        ((300, 5), np.float64),
        ((40, 6, 4), np.uint8),
        ((30, 3, 4, 5), np.float32),
        ((30, 4, 5, 3), np.int16),
        ((50, 4), np.bool_),
    ],
)
def test_npy_source_reads_the_in_memory_rows(tmp_path, shape, dtype):
    rng = np.random.default_rng(3)
    x = (rng.normal(size=shape) * 100).astype(dtype)
    path = tmp_path / "x.npy"
    np.save(path, x)
    expected = load_table(path)[0]
    source = NpySource(path, block_rows=7)
    assert source.event_shape == expected.shape[1:]
    assert source.is_image == (len(shape) > 2)
    assert source.blocks[0] == (0, 7) and source.blocks[-1][1] == len(x)
    np.testing.assert_array_equal(_all_rows(source), expected)
    rows = np.sort(rng.choice(len(x), size=len(x) // 3, replace=False))
    np.testing.assert_array_equal(source.read(rows), expected[rows])
    assert source.read(rows).dtype == np.float32
    # Picklable without an open file, and readable after.
    copy = pickle.loads(pickle.dumps(source))
    np.testing.assert_array_equal(copy.read(rows), expected[rows])


def test_npy_blocks_are_about_4_mib(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((3000, 1000)))  # 8000-byte rows
    assert NpySource(path).blocks[0] == (0, (4 << 20) // 8000)


def test_parquet_source_reads_the_in_memory_rows(parquet):
    expected, path = parquet
    source = ParquetSource(path)
    assert source.columns == ["f", "i", "b", "g"]
    assert source.event_shape == (4,) and not source.is_image
    assert source.blocks == [(s, min(s + 70, 400)) for s in range(0, 400, 70)]
    np.testing.assert_array_equal(_all_rows(source), expected)
    rows = np.array([0, 1, 69, 70, 71, 200, 399])
    np.testing.assert_array_equal(source.read(rows), expected[rows])
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(source)).read(rows), expected[rows])


def test_parquet_source_decodes_a_row_group_once(parquet):
    expected, path = parquet
    source = ParquetSource(path)
    source.read(np.arange(70, 140))
    decode = source._file.read_row_group
    calls = []
    source._file.read_row_group = lambda *a, **k: calls.append(a) or decode(*a, **k)
    for rows in (np.arange(75, 90), np.array([70, 139]), np.arange(100, 140)):
        np.testing.assert_array_equal(source.read(rows), expected[rows])
    assert calls == []
    source.read(np.array([0]))
    assert len(calls) == 1


def test_parquet_pandas_index_is_not_a_column(tmp_path):
    import pandas as pd

    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0]}, index=[10, 20, 30])
    path = tmp_path / "indexed.parquet"
    frame.to_parquet(path)
    source = ParquetSource(path)
    np.testing.assert_array_equal(_all_rows(source), load_table(path)[0])


def test_image_folder_with_classes(image_folder):
    x, labels, root = image_folder
    source = open_source(root)
    assert isinstance(source, ImageFolderSource)
    assert source.classes == ["cat", "dog", "eel"]
    assert source.event_shape == (1, 5, 7) and source.is_image
    np.testing.assert_array_equal(source.labels, labels)
    np.testing.assert_array_equal(_all_rows(source), x)
    np.testing.assert_array_equal(source.read(np.array([3, 4, 14])), x[[3, 4, 14]])


def test_image_folder_flat_rgb_and_suffixes(tmp_path):
    rng = np.random.default_rng(4)
    pixels = rng.integers(0, 256, size=(5, 4, 6, 3), dtype=np.uint8)
    _write_images(tmp_path / "flat", pixels)
    # An upper-case suffix counts; other files and hidden files do not.
    Image.fromarray(pixels[0]).save(tmp_path / "flat" / "zz.JPG", format="JPEG")
    (tmp_path / "flat" / "notes.txt").write_text("not an image")
    Image.fromarray(pixels[1]).save(tmp_path / "flat" / ".hidden.png")
    source = ImageFolderSource(tmp_path / "flat", block_rows=2)
    assert source.labels is None and source.num_rows == 6
    assert source.event_shape == (3, 4, 6)
    assert source.blocks == [(0, 2), (2, 4), (4, 6)]
    expected = pixels.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255)
    np.testing.assert_array_equal(source.read(np.arange(5)), expected)
    jpeg = np.asarray(Image.open(tmp_path / "flat" / "zz.JPG").convert("RGB"))
    np.testing.assert_array_equal(source.read(np.array([5]))[0] * 255, jpeg.transpose(2, 0, 1))


# ---------------------------------------------------------------------------------- order


def test_stream_order_is_a_seeded_shuffle_across_blocks():
    blocks = [(s, min(s + 10, 95)) for s in range(0, 95, 10)]
    excluded = np.array([3, 50, 51, 94])

    def epoch(seed, **kw):
        kw = {"buffer_rows": 25, "exclude": excluded} | kw
        return list(stream_order(blocks, 8, seed, **kw))

    first = epoch(7)
    assert [len(b) for b in first] == [8] * 11 + [3]
    assert all(b.dtype == np.int64 for b in first)
    ids = np.concatenate(first)
    assert sorted(ids) == sorted(set(range(95)) - set(excluded.tolist()))
    for a, b in zip(first, epoch(7), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(ids, np.concatenate(epoch(8)))
    # A batch mixes rows of several blocks, and the first blocks are not the file's first.
    assert max(len(set((b // 10).tolist())) for b in first) > 1
    assert set((first[0] // 10).tolist()) != {0}
    for skip in (0, 1, 5, 11, 12, 20):
        tail = epoch(7, skip=skip)
        assert len(tail) == max(0, len(first) - skip)
        for a, b in zip(first[skip:], tail, strict=True):
            np.testing.assert_array_equal(a, b)


def test_stream_order_buffers_bound_the_shuffle():
    """With buffers of one block, each block's rows come out together."""
    blocks = [(s, s + 10) for s in range(0, 100, 10)]
    batches = list(stream_order(blocks, 10, 3, buffer_rows=1))
    assert all(len(set((b // 10).tolist())) == 1 for b in batches)
    assert any(not np.array_equal(b, np.sort(b)) for b in batches)


# ---------------------------------------------------------------------------------- loader


def _sources(table, parquet, image_folder):
    return {
        "npy": (NpySource(table[1], block_rows=32), table[0].astype(np.float32)),
        "parquet": (ParquetSource(parquet[1]), parquet[0]),
        "images": (ImageFolderSource(image_folder[2], block_rows=4), image_folder[0]),
    }


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize("kind", ["npy", "parquet", "images"])
def test_an_epoch_yields_every_row_once(table, parquet, image_folder, kind, workers):
    source, x = _sources(table, parquet, image_folder)[kind]
    excluded = [1, 2, len(x) - 1]
    labels = kind == "images"
    loader = StreamLoader(
        source, 4, exclude=excluded, buffer_rows=12, workers=workers, labels=labels
    )
    assert loader.num_examples == len(x) - 3 and len(loader) == -(-(len(x) - 3) // 4)
    torch.manual_seed(0)
    batches = list(loader.epoch())
    assert len(batches) == len(loader)
    index = torch.cat([b.index for b in batches]).numpy()
    assert index.dtype == np.int64
    assert sorted(index.tolist()) == sorted(set(range(len(x))) - set(excluded))
    np.testing.assert_array_equal(torch.cat([b.x for b in batches]).numpy(), x[index])
    if labels:
        y = torch.cat([b.y for b in batches]).numpy()
        np.testing.assert_array_equal(y, image_folder[1][index])
    else:
        assert batches[0].y is None


def test_an_epoch_draws_one_value_and_binarizes_alike_in_any_number_of_processes(image_folder):
    """Dynamic binarization: batch b's uniforms come from a generator seeded by the epoch's
    seed and b, drawn for the global batch; the epoch takes exactly one value of the global
    generator, and two shards together binarize exactly as one process."""
    x, _, root = image_folder

    def epoch(rank: int, world: int) -> list:
        loader = StreamLoader(
            ImageFolderSource(root),
            5,
            Transforms([Binarize("dynamic")]),
            workers=1,
            buffer_rows=8,
            shard=(rank, world),
        )
        torch.manual_seed(5)
        batches = list(loader.epoch())
        after = torch.get_rng_state()
        torch.manual_seed(5)
        seed = int(torch.randint(2**62, ()))
        assert torch.equal(after, torch.get_rng_state())
        return seed, batches

    seed, batches = epoch(0, 1)
    for number, batch in enumerate(batches):
        grey = torch.from_numpy(x[batch.index.numpy()])
        generator = torch.Generator().manual_seed(batch_seed(seed, number))
        expected = (torch.rand(grey.shape, generator=generator) < grey).float()
        torch.testing.assert_close(batch.x, expected)
    (_, first), (_, second) = epoch(0, 2), epoch(1, 2)
    for whole, a, b in zip(batches, first, second, strict=True):
        torch.testing.assert_close(torch.cat((a.x, b.x)), whole.x, rtol=0, atol=0)
        assert torch.equal(torch.cat((a.index, b.index)), whole.index)


def test_static_transforms_and_head(table):
    x, path = table
    standardize = Standardize.fit(x.astype(np.float32))
    loader = StreamLoader(
        NpySource(path, block_rows=50), 64, Transforms([standardize]), exclude=[0, 2], workers=0
    )
    torch.manual_seed(0)
    batch = next(iter(loader.epoch()))
    expected = standardize.prepare(torch.from_numpy(x.astype(np.float32)[batch.index.numpy()]))
    torch.testing.assert_close(batch.x, expected)
    head = loader.head(5)
    assert head.index.tolist() == [1, 3, 4, 5, 6] and head.y is None
    torch.testing.assert_close(
        head.x, standardize.prepare(torch.from_numpy(x[[1, 3, 4, 5, 6]].astype(np.float32)))
    )
    assert len(loader.head(10_000).index) == loader.num_examples


def test_shards_together_are_the_one_process_batches(table):
    source = NpySource(table[1], block_rows=16)

    def batches(rank, world):
        loader = StreamLoader(source, 7, shard=(rank, world), buffer_rows=40, workers=0)
        torch.manual_seed(11)
        return list(loader.epoch())

    whole = batches(0, 1)
    parts = [batches(0, 2), batches(1, 2)]
    assert len(parts[0]) == len(parts[1]) == len(whole)
    for step, batch in enumerate(whole):
        assert len(parts[0][step].index) == len(range(7)[shard_of(len(batch.index), 0, 2)])
        for field in ("x", "index"):
            joined = torch.cat([getattr(part[step], field) for part in parts])
            assert torch.equal(joined, getattr(batch, field))


@pytest.mark.parametrize("workers", [0, 1])
def test_a_resumed_epoch_is_the_tail(table, workers):
    loader = StreamLoader(NpySource(table[1], block_rows=16), 32, buffer_rows=64, workers=workers)
    torch.manual_seed(3)
    full = list(loader.epoch())
    torch.manual_seed(3)
    tail = list(loader.epoch(skip=6))
    assert len(tail) == len(full) - 6
    for a, b in zip(full[6:], tail, strict=True):
        assert torch.equal(a.index, b.index) and torch.equal(a.x, b.x)


def test_an_abandoned_epoch_leaves_no_reader_process(table):
    loader = StreamLoader(NpySource(table[1], block_rows=8), 8, workers=1)
    epoch = loader.epoch()
    next(epoch)
    assert multiprocessing.active_children()
    epoch.close()
    assert not multiprocessing.active_children()


# ---------------------------------------------------------------------------------- summary


def test_summarize_matches_numpy(table):
    x, path = table
    excluded = np.array([0, 17, 499])
    summary = summarize(NpySource(path, block_rows=30), exclude=excluded, chunk_rows=13)
    kept = np.delete(x.astype(np.float32), excluded, axis=0)
    wide = kept.astype(np.float64)
    assert summary.rows == len(kept) and summary.event_shape == (6,)
    assert summary.min == wide.min() and summary.max == wide.max()
    np.testing.assert_allclose(summary.mean, wide.mean(0), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(summary.std, wide.std(0), rtol=1e-12)
    fitted = Standardize.fit(kept)
    np.testing.assert_allclose(summary.standardize().mean, fitted.mean, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(summary.standardize().scale, fitted.scale, rtol=1e-12)
    assert not summary.binary and not summary.eight_bit
    split = Dataset("t", kept, kept[:1], kept[:1], binary=False)
    assert summary.fingerprint == split.fingerprint("train")


def test_summarize_flags_fingerprint_and_constant_columns(tmp_path, image_folder):
    x, labels, root = image_folder
    summary = summarize(ImageFolderSource(root, block_rows=4))
    assert summary.eight_bit and not summary.binary
    split = Dataset("i", x, x[:1], x[:1], binary=False, train_labels=labels)
    assert summary.fingerprint == split.fingerprint("train")
    bits = np.zeros((20, 3))
    bits[::2, 0] = 1
    np.save(tmp_path / "bits.npy", bits)
    flags = summarize(NpySource(tmp_path / "bits.npy"))
    assert flags.binary and flags.eight_bit
    assert flags.standardize().scale[1:] == (1.0, 1.0)  # constant columns keep scale 1
    bits[5, 2] = 0.5
    np.save(tmp_path / "bits.npy", bits)
    assert summarize(NpySource(tmp_path / "bits.npy")).fingerprint != flags.fingerprint


def test_summarize_refuses_non_finite_values(tmp_path):
    x = np.ones((50, 3))
    x[37, 1] = np.nan
    np.save(tmp_path / "nan.npy", x)
    with pytest.raises(DataError, match=r"nan\.npy: row 37 \(from 0\) holds a value that is NaN"):
        summarize(NpySource(tmp_path / "nan.npy"), chunk_rows=8)


# ---------------------------------------------------------------------------------- memory


def test_an_epoch_of_a_large_file_stays_in_bounded_memory(tmp_path):
    """One epoch of a 307 MB .npy file (300 000 rows of 256 float32) must not hold the file: the
    loader holds a buffer of row ids (65 536 × 8 bytes), the blocks' order and a batch (1 MB),
    so its peak RSS grows by a few MB, while reading (or memory-mapping) the file would grow it
    by 307 MB. The bound, 100 MB, is a third of the file and far above the working set, so
    that allocator noise cannot fail the test."""
    rows, width = 300_000, 256
    path = tmp_path / "large.npy"
    with open(path, "wb") as f:
        header = {"descr": "<f4", "fortran_order": False, "shape": (rows, width)}
        np.lib.format.write_array_header_1_0(f, header)
        for start in range(0, rows, 20_000):
            chunk = np.arange(start, start + 20_000, dtype=np.float32)[:, None]
            f.write(np.broadcast_to(chunk, (20_000, width)).tobytes())
    script = textwrap.dedent(
        f"""
        import resource
        import torch
        from aevb.data.streaming import NpySource, StreamLoader

        loader = StreamLoader(NpySource({str(path)!r}), 1000, workers=0)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        seen = 0
        for batch in loader.epoch():
            assert torch.equal(batch.x[:, 0].long(), batch.index)
            seen += len(batch.index)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(seen, (after - before) * 1024)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    seen, growth = map(int, result.stdout.split())
    assert seen == rows
    assert growth < 100e6, f"peak RSS grew by {growth / 1e6:.0f} MB for a 307 MB file"


# ---------------------------------------------------------------------------------- bad input


def test_bad_files_raise_data_errors(tmp_path):
    np.save(tmp_path / "objects.npy", np.array([[1, "a"]], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"objects\.npy: values must be numeric, got dtype object"):
        open_source(tmp_path / "objects.npy")
    np.save(tmp_path / "short.npy", np.zeros((100, 4)))
    data = (tmp_path / "short.npy").read_bytes()
    (tmp_path / "short.npy").write_bytes(data[:-10])
    with pytest.raises(DataError, match=r"short\.npy: header declares shape \(100, 4\).*truncated"):
        open_source(tmp_path / "short.npy")
    (tmp_path / "junk.npy").write_bytes(b"not numpy at all")
    with pytest.raises(DataError, match=r"junk\.npy: not an \.npy file"):
        open_source(tmp_path / "junk.npy")
    np.save(tmp_path / "fortran.npy", np.asfortranarray(np.zeros((5, 4))))
    with pytest.raises(DataError, match=r"fortran\.npy: .*Fortran \(column-major\) order"):
        open_source(tmp_path / "fortran.npy")
    np.save(tmp_path / "vector.npy", np.zeros(5))
    with pytest.raises(DataError, match=r"vector\.npy: expected a 2-D"):
        open_source(tmp_path / "vector.npy")
    pq.write_table(pa.table({"a": [1.0, 2.0], "name": ["x", "y"]}), tmp_path / "text.parquet")
    with pytest.raises(DataError, match=r"text\.parquet: column 2 'name' is not numeric"):
        open_source(tmp_path / "text.parquet")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 nothing")
    with pytest.raises(DataError, match=r"broken\.parquet: cannot read \.parquet file"):
        open_source(tmp_path / "broken.parquet")
    with pytest.raises(DataError, match=r"cannot stream '\.csv'.*\.npy and \.parquet"):
        open_source(tmp_path / "table.csv")
    with pytest.raises(DataError, match="no such file"):
        open_source(tmp_path / "missing.npy")


def test_bad_image_folders_raise_data_errors(tmp_path):
    with pytest.raises(DataError, match="no PNG or JPEG images"):
        open_source(tmp_path)
    pixels = np.zeros((3, 4, 4), dtype=np.uint8)
    _write_images(tmp_path / "sizes", pixels)
    Image.fromarray(np.zeros((5, 4), dtype=np.uint8)).save(tmp_path / "sizes" / "wide.png")
    source = ImageFolderSource(tmp_path / "sizes")
    with pytest.raises(DataError, match=r"wide\.png: image of 4×5 pixels, but the first image"):
        summarize(source)
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "a.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=r"a\.png: cannot read image"):
        open_source(tmp_path / "corrupt")
    _write_images(tmp_path / "mixed", pixels)
    _write_images(tmp_path / "mixed" / "class", pixels)
    with pytest.raises(DataError, match="holds both images and subfolders"):
        open_source(tmp_path / "mixed")
    (tmp_path / "classes" / "empty").mkdir(parents=True)
    _write_images(tmp_path / "classes" / "full", pixels)
    with pytest.raises(DataError, match="a class folder without PNG or JPEG images"):
        open_source(tmp_path / "classes")
