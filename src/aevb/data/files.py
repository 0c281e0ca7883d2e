"""The files of the named datasets: where they are looked for, their published checksums and
sizes, and downloads from the publishers' mirrors into a cache (atomic, verified before use).

Files are looked up in ``data_dir`` (or ``AEVB_DATA_DIR``), in its subfolders ``mnist/``,
``fashion-mnist/``, ``binarized_mnist/`` and ``frey/``, then in the cache (``AEVB_CACHE_DIR``,
default ``~/.cache/aevb``). A missing file is downloaded only when allowed.

Integrity rests on SHA-256 and on the exact size of each published file, not on the transport:
some mirrors are plain http, so a download is streamed with a cap at the published size (a
hostile or broken mirror cannot fill the disk), then checked against the SHA-256 before it is
moved into the cache. Over plain http a tampering mirror can therefore only deny service, never
deliver altered data. https mirrors are tried first where the host serves https.
"""

from __future__ import annotations

import hashlib
import http.client
import math
import os
import tempfile
import urllib.request
import zlib
from pathlib import Path
from typing import BinaryIO

from aevb.errors import DataError
from aevb.progress import progress_bar

__all__ = [
    "DECOMPRESSED_SIZES",
    "DatasetFiles",
    "default_cache_dir",
    "default_data_dir",
    "gunzip",
]

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
#
# The publishers give MD5s for MNIST, Fashion-MNIST and Frey Face (noted beside each entry). MD5
# is broken against deliberate collisions, so the SHA-256s below were computed from copies that
# match those MD5s byte for byte (the files under ../shared/data, see its README); the MD5s stay
# here only as provenance. The binarized-MNIST SHA-256s are those of tensorflow/datasets'
# url_checksums/binarized_mnist.txt.
_CHECKSUMS: dict[tuple[str, str], tuple[str, str]] = {
    # md5 f68b3c2dcbeaaa9fbdd348bbdeb94873
    ("mnist", IDX_FILES[0]): (
        "sha256",
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    ),
    # md5 d53e105ee54ea40749a09fcbcd1e9432
    ("mnist", IDX_FILES[1]): (
        "sha256",
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    ),
    # md5 9fb629c4189551a2d022fa330f9573f3
    ("mnist", IDX_FILES[2]): (
        "sha256",
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    ),
    # md5 ec29112dd5afa0611ce80d1b7f02629c
    ("mnist", IDX_FILES[3]): (
        "sha256",
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    ),
    # md5 8d4fb7e6c68d591d4c3dfef9ec88bf0d
    ("fashion-mnist", IDX_FILES[0]): (
        "sha256",
        "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    ),
    # md5 25c81989df183df01b3e8a0aad5dffbe
    ("fashion-mnist", IDX_FILES[1]): (
        "sha256",
        "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    ),
    # md5 bef4ecab320f06d8554ea6380940ec79
    ("fashion-mnist", IDX_FILES[2]): (
        "sha256",
        "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    ),
    # md5 bb300cfdad3c16e7a12a480ee83cd310
    ("fashion-mnist", IDX_FILES[3]): (
        "sha256",
        "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    ),
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
    # md5 5aeb024d42b8a6091f30e5eb18c8a48d
    ("frey", FREY_FILE): (
        "sha256",
        "265a83a23adb081755cd3de375509828e690324d1d60f076b8ecebc840d59c64",
    ),
}

# Exact byte size of each published file (for .amat: the plain text, which is what the mirror
# serves), measured from the same verified copies. A download is cut off beyond it.
_SIZES: dict[tuple[str, str], int] = {
    ("mnist", IDX_FILES[0]): 9912422,
    ("mnist", IDX_FILES[1]): 28881,
    ("mnist", IDX_FILES[2]): 1648877,
    ("mnist", IDX_FILES[3]): 4542,
    ("fashion-mnist", IDX_FILES[0]): 26421880,
    ("fashion-mnist", IDX_FILES[1]): 29515,
    ("fashion-mnist", IDX_FILES[2]): 4422102,
    ("fashion-mnist", IDX_FILES[3]): 5148,
    ("binarized_mnist", AMAT_FILES[0]): 78400000,  # 50000 lines x 1568 bytes
    ("binarized_mnist", AMAT_FILES[1]): 15680000,  # 10000 lines x 1568 bytes
    ("binarized_mnist", AMAT_FILES[2]): 15680000,  # 10000 lines x 1568 bytes
    ("frey", FREY_FILE): 1100584,
}


def _idx_size(*shape: int) -> int:
    """Bytes of an unsigned-byte idx file: magic, one uint32 per dimension, then the values."""
    return 4 + 4 * len(shape) + math.prod(shape)


_IDX_SHAPES = {
    IDX_FILES[0]: (60000, 28, 28),
    IDX_FILES[1]: (60000,),
    IDX_FILES[2]: (10000, 28, 28),
    IDX_FILES[3]: (10000,),
}

# Exact size of the decompressed content of every gzipped file aevb reads, keyed like
# _CHECKSUMS: the cap that callers pass to gunzip, so a gzip bomb is refused after at most
# this many bytes + 1. idx files: header + N x H x W; binarized-MNIST: lines x 1568 bytes.
DECOMPRESSED_SIZES: dict[tuple[str, str], int] = {
    **{
        (sub, name): _idx_size(*shape)
        for sub in ("mnist", "fashion-mnist")
        for name, shape in _IDX_SHAPES.items()
    },
    **{("binarized_mnist", name): _SIZES[("binarized_mnist", name)] for name in AMAT_FILES},
}

# Download mirrors per subfolder, tried in order; the file name is appended. https first where
# the host serves it; the plain-http ones stay as fallbacks (see the module docstring: with the
# SHA-256 check and the size cap they can deny service but not tamper). Fashion-MNIST's S3
# website endpoint serves http only.
_MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    "binarized_mnist": (
        "https://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/",
        "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/",
    ),
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
        size = _SIZES[(subfolder, name)]
        path = self._find(subfolder, name) or self._download(subfolder, name, algo, digest, size)
        gzipped = path.name != name  # binarized_mnist_*.amat.gz: the hash is of the .amat text
        try:
            on_disk = path.stat().st_size
            # A plain file larger than the published one cannot be it: refuse before reading.
            if not gzipped and on_disk > size:
                raise DataError(
                    f"{path}: {on_disk} bytes, larger than the published file ({size} bytes); "
                    "it is not the published one. Delete it and download it again."
                )
            raw = path.read_bytes()
        except OSError as e:
            raise DataError(f"{path}: cannot read file: {e}") from e
        content = gunzip(raw, path, size) if gzipped else raw
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

    def _download(self, subfolder: str, name: str, algo: str, digest: str, size: int) -> Path:
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
                actual, received = _fetch(url, target, algo, digest, size, self.progress)
            except _Refused as e:
                failures.append(f"{url} ({e})")
                continue
            except (OSError, http.client.HTTPException, ValueError) as e:
                failures.append(f"{url} ({type(e).__name__}: {e})")
                continue
            if actual == digest:
                return target
            failures.append(
                f"{url} (checksum mismatch: {algo} expected {digest}, got {actual}; received "
                f"{received} bytes, the published file has {size})"
            )
        raise DataError(
            f"could not download {name} for dataset {self.dataset!r}; tried "
            + "; ".join(failures)
            + f". Download it by hand into {target.parent}, or pass --data-dir."
        )


class _Refused(Exception):
    """A download stopped because the mirror sent (or announced) more than the published size."""


def _open_url(url: str) -> BinaryIO:
    """Open ``url`` for streaming (a separate function so tests can serve local bytes)."""
    request = urllib.request.Request(url, headers={"User-Agent": "aevb"})
    return urllib.request.urlopen(request, timeout=60)


_CHUNK = 1 << 20


def _fetch(
    url: str, target: Path, algo: str, digest: str, size: int, progress: bool
) -> tuple[str, int]:
    """Stream ``url`` into ``target`` atomically; return the payload's hex digest and length.

    The payload goes to a temporary file beside ``target`` and replaces it only when its
    digest equals ``digest``, so an interrupted or corrupt download never leaves a file that a
    later run would pick up. At most ``size`` + 1 bytes are read: a Content-Length other than
    ``size``, or a payload beyond it, raises :class:`_Refused` (and the temporary file goes).
    """
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    hasher = hashlib.new(algo)
    received = 0
    try:
        with os.fdopen(fd, "wb") as out, _open_url(url) as response:
            announced = getattr(response, "length", None)  # http.client's Content-Length
            if isinstance(announced, int) and announced != size:
                raise _Refused(
                    f"Content-Length {announced} disagrees with the published size of {size} "
                    "bytes; refused before reading, received 0 bytes"
                )
            with progress_bar(size, target.name, "B", unit_scale=True, disable=not progress) as bar:
                # Never ask for more than one byte past the limit: that byte proves the excess.
                while chunk := response.read(min(_CHUNK, size + 1 - received)):
                    received += len(chunk)
                    if received > size:
                        raise _Refused(
                            f"payload larger than the published size: limit {size} bytes, "
                            f"received {received} bytes when the download was stopped"
                        )
                    out.write(chunk)
                    hasher.update(chunk)
                    bar.update(len(chunk))
        actual = hasher.hexdigest()
        if actual == digest:
            os.replace(tmp, target)
        return actual, received
    finally:
        # Only a verified payload is moved into place; any other outcome deletes the temp file.
        Path(tmp).unlink(missing_ok=True)


_GUNZIP_STEP = 1 << 20  # compressed bytes fed, and decompressed bytes asked for, per zlib call


def gunzip(raw: bytes, path: Path, max_bytes: int) -> bytes:
    """Decompress gzip data (every member, like :func:`gzip.decompress`), producing at most
    ``max_bytes`` + 1 bytes: content beyond ``max_bytes`` (a gzip bomb) raises DataError
    naming ``path`` and the limit, as do truncated or corrupt data.

    Input and output go through zlib one step at a time, so refusing a bomb costs about
    ``max_bytes`` of memory, whatever the size the bomb expands to.
    """
    parts: list[bytes] = []
    produced = 0
    data = raw
    try:
        while data:
            member = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip header and trailer
            fed = 0
            while not member.eof:
                chunk = data[fed : fed + _GUNZIP_STEP]
                fed += len(chunk)
                pending = chunk
                while True:  # drain the output of this chunk, a step at a time
                    room = min(_GUNZIP_STEP, max_bytes + 1 - produced)
                    piece = member.decompress(pending, room)
                    produced += len(piece)
                    if produced > max_bytes:
                        raise DataError(
                            f"{path}: decompresses to more than {max_bytes} bytes, the size of "
                            "the published content; refused (a gzip bomb or not the published "
                            "file)"
                        )
                    parts.append(piece)
                    pending = member.unconsumed_tail
                    if member.eof or not (piece or pending):
                        break
                if not chunk and not member.eof:
                    raise EOFError("compressed data ended before the end-of-stream marker")
            # Like gzip.decompress: further members may follow, after optional zero padding.
            data = (member.unused_data + data[fed:]).lstrip(b"\x00")
    except (EOFError, zlib.error) as e:
        raise DataError(f"{path}: not a valid gzip file ({e}); it is truncated or corrupt") from e
    return b"".join(parts)
