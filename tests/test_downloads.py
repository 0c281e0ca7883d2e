"""Hardened downloads and decompression (aevb.data.files): size caps on downloads, SHA-256
checksums, https-first mirrors and a capped gunzip. No network: URLs are served from memory."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import time
import tracemalloc
import urllib.error
import zlib
from pathlib import Path

import numpy as np
import pytest

from aevb.data import files as data
from aevb.data import load_dataset
from aevb.errors import DataError

LABELS = ("mnist", data.IDX_FILES[1])  # train-labels: small, two mirrors
MIB = 1 << 20

# The publishers' MD5s (the provenance of the SHA-256 table; see the comments in files.py).
PUBLISHED_MD5 = {
    ("mnist", data.IDX_FILES[0]): "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    ("mnist", data.IDX_FILES[1]): "d53e105ee54ea40749a09fcbcd1e9432",
    ("mnist", data.IDX_FILES[2]): "9fb629c4189551a2d022fa330f9573f3",
    ("mnist", data.IDX_FILES[3]): "ec29112dd5afa0611ce80d1b7f02629c",
    ("fashion-mnist", data.IDX_FILES[0]): "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    ("fashion-mnist", data.IDX_FILES[1]): "25c81989df183df01b3e8a0aad5dffbe",
    ("fashion-mnist", data.IDX_FILES[2]): "bef4ecab320f06d8554ea6380940ec79",
    ("fashion-mnist", data.IDX_FILES[3]): "bb300cfdad3c16e7a12a480ee83cd310",
    ("frey", data.FREY_FILE): "5aeb024d42b8a6091f30e5eb18c8a48d",
}


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reads the user's environment or cache, and none may touch the network."""
    for var in ("AEVB_DATA_DIR", "AEVB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AEVB_CACHE_DIR", str(tmp_path / "cache"))

    def no_network(url: str) -> io.BytesIO:
        raise AssertionError(f"a test tried to open {url}")

    monkeypatch.setattr(data, "_open_url", no_network)


class Stream(io.BytesIO):
    """A response serving ``payload``, then (if ``endless``) zeros forever; counts what it
    hands out. ``length`` plays http.client's Content-Length."""

    def __init__(self, payload: bytes = b"", endless: bool = False, length: int | None = None):
        super().__init__(payload)
        self.endless, self.length, self.served, self.reads = endless, length, 0, 0

    def read(self, size: int | None = -1) -> bytes:
        self.reads += 1
        chunk = super().read(size)
        if self.endless and not chunk:
            if size is None or size < 0:
                raise AssertionError("an unbounded read of an endless stream")
            chunk = bytes(size)
        self.served += len(chunk)
        return chunk


def serve(monkeypatch: pytest.MonkeyPatch, responses: dict, cache: Path | None = None) -> list:
    """Serve ``responses`` (URL -> Stream); other URLs are unreachable. Returns, per URL opened,
    (url, the files in cache/<subfolder> at that moment)."""
    opened: list = []

    def fake_open(url: str) -> Stream:
        folder = cache / url.split("/")[-2] if cache else None
        present = sorted(os.listdir(folder)) if folder and folder.is_dir() else []
        opened.append((url, present))
        if url not in responses:
            raise urllib.error.URLError("unreachable")
        return responses[url]

    monkeypatch.setattr(data, "_open_url", fake_open)
    return opened


def publish(monkeypatch: pytest.MonkeyPatch, key: tuple[str, str], payload: bytes) -> None:
    """Make ``payload`` the published file for ``key`` (its SHA-256 and size)."""
    digest = hashlib.sha256(payload).hexdigest()
    monkeypatch.setitem(data._CHECKSUMS, key, ("sha256", digest))
    monkeypatch.setitem(data._SIZES, key, len(payload))


def files_for(cache: Path, dataset: str = "mnist") -> data.DatasetFiles:
    return data.DatasetFiles(dataset, None, cache, download=True, progress=False)


# --- size cap on downloads ----------------------------------------------------------------------


def test_oversized_download_is_cut_off_then_next_mirror_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    payload = bytes(range(256)) * 4
    publish(monkeypatch, LABELS, payload)
    first, second = (base + LABELS[1] for base in data._MIRRORS["mnist"])
    hostile = Stream(payload, endless=True)  # the right bytes, then zeros forever
    cache = tmp_path / "cache"
    opened = serve(monkeypatch, {first: hostile, second: Stream(payload)}, cache)
    path, content = files_for(cache).read(*LABELS)
    assert hostile.served == len(payload) + 1  # stopped one byte past the cap
    assert [url for url, _ in opened] == [first, second]
    # Each attempt streams into its own temp file; the cut-off one was gone before the next.
    (first_part,), (second_part,) = opened[0][1], opened[1][1]
    assert first_part.endswith(".part") and second_part.endswith(".part")
    assert first_part != second_part
    assert content == payload and path == cache / "mnist" / LABELS[1]
    assert os.listdir(cache / "mnist") == [LABELS[1]]


def test_oversized_everywhere_names_url_limit_and_received(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    size = data._SIZES[LABELS]  # the real table: 28881 bytes
    assert size == 28881
    urls = [base + LABELS[1] for base in data._MIRRORS["mnist"]]
    streams = {url: Stream(endless=True) for url in urls}
    serve(monkeypatch, streams)
    with pytest.raises(DataError) as info:
        files_for(tmp_path / "cache").read(*LABELS)
    message = str(info.value)
    for url in urls:
        assert f"{url} (payload larger than the published size: limit {size} bytes, " in message
        assert streams[url].served == size + 1
    assert f"received {size + 1} bytes" in message
    assert os.listdir(tmp_path / "cache" / "mnist") == []


def test_content_length_disagreeing_is_refused_before_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    payload = b"labels" * 100
    publish(monkeypatch, LABELS, payload)
    first, second = (base + LABELS[1] for base in data._MIRRORS["mnist"])
    liar = Stream(endless=True, length=10**12)
    honest = Stream(payload, length=len(payload))
    serve(monkeypatch, {first: liar, second: honest})
    _, content = files_for(tmp_path / "cache").read(*LABELS)
    assert liar.reads == 0 and content == payload

    # Both disagree (too large, too small): the error says so for each URL.
    streams = {first: Stream(length=10**12), second: Stream(payload, length=len(payload) - 1)}
    serve(monkeypatch, streams)
    with pytest.raises(DataError) as info:
        files_for(tmp_path / "cache2").read(*LABELS)
    message = str(info.value)
    assert f"{first} (Content-Length 1000000000000 disagrees" in message
    assert f"{second} (Content-Length {len(payload) - 1} disagrees" in message
    assert f"published size of {len(payload)} bytes" in message
    assert os.listdir(tmp_path / "cache2" / "mnist") == []


def test_downloaded_amat_is_capped_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The binarized-MNIST text is 78.4 MB: the cap is its exact size, not a round number."""
    name = data.AMAT_FILES[1]  # valid: 10000 lines x 1568 bytes
    assert data._SIZES[("binarized_mnist", name)] == 10000 * 1568
    urls = [base + name for base in data._MIRRORS["binarized_mnist"]]
    streams = {url: Stream(endless=True) for url in urls}
    serve(monkeypatch, streams)
    with pytest.raises(DataError) as info:
        files_for(tmp_path / "cache", "binarized-mnist").read("binarized_mnist", name)
    assert all(s.served == 15680001 for s in streams.values())
    assert "limit 15680000 bytes, received 15680001 bytes" in str(info.value)
    assert os.listdir(tmp_path / "cache" / "binarized_mnist") == []


# --- SHA-256 --------------------------------------------------------------------------------------


def test_every_published_file_has_sha256_and_size():
    assert data._CHECKSUMS.keys() == data._SIZES.keys()
    for algo, digest in data._CHECKSUMS.values():
        assert algo == "sha256" and len(digest) == 64 and int(digest, 16) >= 0
    # The decompressed sizes follow the formats: idx header + N x H x W, .amat lines x 1568.
    sizes = data.DECOMPRESSED_SIZES
    for subfolder in ("mnist", "fashion-mnist"):
        assert sizes[subfolder, data.IDX_FILES[0]] == 16 + 60000 * 28 * 28
        assert sizes[subfolder, data.IDX_FILES[1]] == 8 + 60000
        assert sizes[subfolder, data.IDX_FILES[2]] == 16 + 10000 * 28 * 28
        assert sizes[subfolder, data.IDX_FILES[3]] == 8 + 10000
    for name, lines in zip(data.AMAT_FILES, (50000, 10000, 10000), strict=True):
        assert (
            sizes["binarized_mnist", name] == lines * 1568 == data._SIZES["binarized_mnist", name]
        )


def test_wrong_sha256_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    size = data._SIZES[LABELS]
    forged = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes()
    urls = [base + LABELS[1] for base in data._MIRRORS["mnist"]]
    serve(monkeypatch, {url: Stream(forged) for url in urls})  # the right size, wrong bytes
    with pytest.raises(DataError) as info:
        files_for(tmp_path / "cache").read(*LABELS)
    message = str(info.value)
    expected = data._CHECKSUMS[LABELS][1]
    got = hashlib.sha256(forged).hexdigest()
    for url in urls:
        assert f"{url} (checksum mismatch: sha256 expected {expected}, got {got}" in message
    assert os.listdir(tmp_path / "cache" / "mnist") == []


def test_https_mirrors_are_tried_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for subfolder, mirrors in data._MIRRORS.items():
        schemes = [m.split("://")[0] for m in mirrors]
        assert set(schemes) <= {"https", "http"}, subfolder
        assert schemes == sorted(schemes, key=lambda s: s != "https"), subfolder
    assert data._MIRRORS["binarized_mnist"][0].startswith("https://www.cs.toronto.edu/")
    # The plain-http fallback is still used when the https mirror fails.
    name = data.AMAT_FILES[2]
    text = b"0 " * 783 + b"1\n"
    publish(monkeypatch, ("binarized_mnist", name), text)
    https, http = (base + name for base in data._MIRRORS["binarized_mnist"])
    opened = serve(monkeypatch, {http: Stream(text)})
    _, content = files_for(tmp_path / "cache", "binarized-mnist").read("binarized_mnist", name)
    assert content == text and [url for url, _ in opened] == [https, http]


# --- the real files -------------------------------------------------------------------------------


def test_shared_files_match_the_sha256_table_and_sizes(data_dir):
    root = data_dir
    for (subfolder, name), (_, digest) in data._CHECKSUMS.items():
        path = root / subfolder / name
        if not path.is_file():  # the .amat files are kept gzipped
            path = root / subfolder / (name + ".gz")
            content = data.gunzip(path.read_bytes(), path, data._SIZES[subfolder, name])
        else:
            content = path.read_bytes()
            if (subfolder, name) in data.DECOMPRESSED_SIZES:  # idx: exactly the known size
                limit = data.DECOMPRESSED_SIZES[subfolder, name]
                assert len(data.gunzip(content, path, limit)) == limit, path
        assert len(content) == data._SIZES[subfolder, name], path
        assert hashlib.sha256(content).hexdigest() == digest, path
        if (subfolder, name) in PUBLISHED_MD5:
            assert hashlib.md5(content).hexdigest() == PUBLISHED_MD5[subfolder, name], path
        # And through the loader's own path (local lookup, size check, SHA-256).
        found = data.DatasetFiles(subfolder, root, None, download=False, progress=False)
        assert found.read(subfolder, name) == (path, content)


# --- gzip bombs ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """200 MiB of zeros, gzipped: about 200 kB."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(MIB)
    blob = b"".join([compressor.compress(zeros) for _ in range(200)] + [compressor.flush()])
    assert len(blob) < MIB
    return blob


def refuse_measured(call) -> tuple[str, float, int]:
    """Run ``call``, which must raise DataError; return its message, seconds, peak bytes."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(DataError) as info:
            call()
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return str(info.value), elapsed, peak


def test_gunzip_refuses_a_bomb_within_the_cap(tmp_path: Path, bomb: bytes):
    path = tmp_path / "bomb.gz"
    message, elapsed, peak = refuse_measured(lambda: data.gunzip(bomb, path, MIB))
    assert message.startswith(f"{path}: decompresses to more than {MIB} bytes")
    assert elapsed < 5 and peak < 4 * MIB  # about the cap, not the 200 MiB the bomb holds
    # The same data with room for it decompresses in full: the cap is exact.
    assert len(data.gunzip(gzip.compress(bytes(1000)), path, 1000)) == 1000
    with pytest.raises(DataError, match="more than 999 bytes"):
        data.gunzip(gzip.compress(bytes(1000)), path, 999)


def idx_gz(array: np.ndarray) -> bytes:
    header = (0x800 | array.ndim).to_bytes(4, "big")
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes())


def test_idx_bomb_in_data_folder_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bomb: bytes
):
    folder = tmp_path / "data" / "mnist"
    folder.mkdir(parents=True)
    for name, shape in zip(data.IDX_FILES, [(3, 28, 28), (3,), (2, 28, 28), (2,)], strict=True):
        (folder / name).write_bytes(idx_gz(np.zeros(shape, np.uint8)))
    target = folder / data.IDX_FILES[0]
    target.write_bytes(bomb)
    # The SHA-256 of the .gz file refuses it before anything is decompressed ...
    message, elapsed, peak = refuse_measured(lambda: load_dataset("mnist", tmp_path / "data"))
    assert f"{target}: checksum mismatch (sha256" in message and peak < 4 * MIB
    # ... and if it were trusted, the decompression cap would.
    for name in data.IDX_FILES:
        digest = hashlib.sha256((folder / name).read_bytes()).hexdigest()
        monkeypatch.setitem(data._CHECKSUMS, ("mnist", name), ("sha256", digest))
    message, elapsed, peak = refuse_measured(lambda: load_dataset("mnist", tmp_path / "data"))
    limit = 16 + 60000 * 28 * 28
    assert message.startswith(f"{target}: decompresses to more than {limit} bytes")
    assert elapsed < 5
    assert peak < limit + 8 * MIB  # the cap's worth, not the 200 MiB the bomb expands to


def test_amat_bomb_in_data_folder_is_refused(tmp_path: Path, bomb: bytes):
    """A .amat.gz is checked after decompression (its hash is of the text): the cap is what
    protects it. No checksum needs to be trusted for the bomb to reach gunzip."""
    folder = tmp_path / "data" / "binarized_mnist"
    folder.mkdir(parents=True)
    target = folder / (data.AMAT_FILES[0] + ".gz")
    target.write_bytes(bomb)
    message, elapsed, peak = refuse_measured(
        lambda: load_dataset("binarized-mnist", tmp_path / "data")
    )
    assert message.startswith(f"{target}: decompresses to more than 78400000 bytes")
    assert elapsed < 5
    assert peak < 78400000 + 8 * MIB


def test_oversized_local_file_is_refused_unread(tmp_path: Path):
    folder = tmp_path / "data" / "frey"
    folder.mkdir(parents=True)
    (folder / data.FREY_FILE).write_bytes(bytes(data._SIZES["frey", data.FREY_FILE] + 1))
    message, _, peak = refuse_measured(lambda: load_dataset("frey", tmp_path / "data"))
    assert "1100585 bytes, larger than the published file (1100584 bytes)" in message
    assert peak < 1 * MIB  # refused from its size, before reading it


def test_a_download_into_a_log_reports_in_plain_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    """With stderr not a terminal (a log), the download's progress is plain lines, no redraws."""
    payload = bytes(range(256)) * 4
    publish(monkeypatch, LABELS, payload)
    first = data._MIRRORS["mnist"][0] + LABELS[1]
    serve(monkeypatch, {first: Stream(payload)})
    files = data.DatasetFiles("mnist", None, tmp_path / "cache", download=True, progress=True)
    assert files.read(*LABELS)[1] == payload
    report = capsys.readouterr().err
    assert "\r" not in report and f"{LABELS[1]}: 1.02k/1.02k B (100%)" in report
