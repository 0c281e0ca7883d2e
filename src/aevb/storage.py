"""Writing files safely: atomic replacement, the user's file modes, clear errors, and a lock.

Everything aevb writes — run folders' configs, checkpoints, metrics, summaries, plots, tables of
codes and scores, the experiments' outputs — goes through :func:`atomic_write_bytes`: a
temporary file in the same folder, flushed and ``fsync``ed, renamed over the target, then the
folder itself ``fsync``ed so the rename survives a power cut. A reader sees the old file or the
new one, never a mix; a kill leaves at most a ``.NAME.*.tmp`` file, which the run folder
removes on its next start.

Files get the mode an ordinary ``open`` would give them (0666 less the umask, or what the
folder's default ACL says), not ``mkstemp``'s 0600, so that run folders can be shared as the
user's other files are: the temporary file is created with mode 0666 and the kernel applies the
umask, as for any new file; the process's umask is never read (``os.umask`` reads it only by
setting it, for every thread at once).

An operating-system failure (disk full, read-only folder, a path under a file, a device in
place of a file) becomes one :class:`StorageError` naming the path and the reason, here, in
one place; callers add what was kept.

:class:`RunLock` keeps a second process from writing into a folder another is writing: an
advisory ``flock`` on ``FOLDER/.lock`` (the ``filelock`` package), released by the kernel
when the process ends, however it ends.
"""

from __future__ import annotations

import errno
import os
import secrets
import tempfile
from pathlib import Path

import filelock

from aevb.errors import AevbError

__all__ = [
    "LOCK_FILE",
    "RunLock",
    "StorageError",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_output_file",
    "check_output_folder",
    "make_folder",
]

LOCK_FILE = ".lock"


class StorageError(AevbError):
    """A file or folder could not be written: ``path`` and the operating system's ``reason``."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot write {path}: {reason}")


def os_reason(error: OSError) -> str:
    """The operating system's reason for ``error``, in words."""
    known = {
        errno.ENOSPC: "no space left on the device",
        errno.EDQUOT: "disk quota exceeded",
        errno.EFBIG: "file too large for this file system or process limit",
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted",
        errno.ENOTDIR: "a part of the path is a file, not a folder",
        errno.EISDIR: "it is a folder",
        errno.ENOENT: "the folder does not exist",
        errno.ENAMETOOLONG: "the name is too long",
    }
    return known.get(error.errno, error.strerror or str(error))


def make_folder(path: str | os.PathLike) -> Path:
    """Create ``path`` and its parents (an existing folder is fine)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError as error:
        raise StorageError(path, "a file of that name exists") from error
    except OSError as error:
        raise StorageError(path, os_reason(error)) from error
    return path


def check_output_folder(path: str | os.PathLike) -> Path:
    """Refuse, before any work, a folder that cannot be created or written: a file in its
    place or above it, or a nearest existing folder that is not writable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise StorageError(path, "it exists and is not a folder")
    for parent in (path, *path.parents):
        if parent.exists():
            if not parent.is_dir():
                raise StorageError(path, f"{parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise StorageError(path, f"{parent} is not writable")
            try:  # what access() cannot tell (root, special file systems): try it
                tempfile.TemporaryFile(dir=parent).close()
            except OSError as error:
                reason = f"{parent} does not accept new files ({error.strerror})"
                raise StorageError(path, reason) from error
            break
    return path


def check_output_file(path: str | os.PathLike, suffixes: tuple[str, ...] = ()) -> Path:
    """Refuse, before any work, an output path that cannot become a regular file: an existing
    folder, a device or other special file, or (with ``suffixes``) another file type."""
    path = Path(path)
    if suffixes and path.suffix.lower() not in suffixes:
        raise AevbError(
            f"{path}: the output must be a {' or '.join(suffixes)} file (got "
            f"{path.suffix or 'no suffix'})"
        )
    if path.is_dir():
        raise StorageError(path, "it is a folder; give a file name")
    if path.exists() and not path.is_file():
        raise StorageError(path, "it exists and is not a regular file")
    check_output_folder(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (all or nothing).

    Raises :class:`StorageError` if the folder cannot be written; the old file, if any, is
    then untouched and no temporary file is left.
    """
    path = Path(path)
    if path.exists() and not path.is_file():
        raise StorageError(path, "it exists and is not a regular file")
    tmp = None
    try:
        fd, tmp = _new_temporary_file(path)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_folder(path.parent)
    except OSError as error:
        raise StorageError(path, os_reason(error)) from error
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


# Open flags of a new temporary file: created here or not at all, not inherited by children.
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
_NEW_FILE |= getattr(os, "O_BINARY", 0)


def _new_temporary_file(path: Path) -> tuple[int, Path]:
    """A new, empty ``.NAME.XXXXXXXX.tmp`` file beside ``path``, open for writing: its
    descriptor and path. Created with mode 0666, which the kernel reduces by the umask."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, _NEW_FILE, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no unused temporary file name", str(path.parent))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8."""
    atomic_write_bytes(path, text.encode())


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform lets a folder be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on folders; the rename itself is done
        pass
    finally:
        os.close(fd)


class RunLock:
    """An exclusive lock on a folder, held while a process writes into it.

    ``with RunLock(folder):`` — a second process (or a second lock in this one) trying the
    same folder gets an :class:`~aevb.errors.AevbError` at once, naming the folder, rather than
    waiting or writing over the first one's files.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self._lock = filelock.FileLock(self.folder / LOCK_FILE, timeout=0, is_singleton=False)
        self.held = False

    def acquire(self) -> RunLock:
        """Take the lock, or raise at once if another holder has it."""
        if self.held:
            return self
        try:
            self._lock.acquire()
        except filelock.Timeout as error:
            raise AevbError(
                f"{self.folder} is in use by another aevb process (its {LOCK_FILE} is locked); "
                "wait for it to finish, or choose another folder"
            ) from error
        except OSError as error:
            raise StorageError(self.folder / LOCK_FILE, os_reason(error)) from error
        self.held = True
        return self

    def release(self) -> None:
        """Give the lock up (nothing happens if it is not held)."""
        if self.held:
            self._lock.release()
            self.held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
