"""The disk layer: a full disk at every kind of write, a file-size limit, a read-only run
folder, file modes. Keeps the issue's findings 7 (bad ``--out`` paths: OSError tracebacks), 8
(disk full: a traceback from the checkpoint writer; a read-only folder: tracebacks, and
``--resume`` trained a whole epoch before its first write failed) and 20 (files created 0600
whatever the umask) as regression tests. Every case ends in one clear error naming the path,
keeps what was written before, and is recovered to the uninterrupted run, bit for bit."""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import QUICK, assert_same, cli, cli_process, leftovers

from aevb import storage
from aevb.runs import LAST, load_model

ARGS = ["--epochs", "3", "--seed", "6", *QUICK]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The weights of the run below when nothing goes wrong."""
    run = tmp_path_factory.mktemp("reference") / "run"
    assert cli("train", *ARGS, "--out", run).status == 0
    return load_model(run, "last").state_dict()


class FullDisk:
    """Stands in for ``os`` in :mod:`aevb.storage`: the ``nth`` fsync of a file whose name
    contains ``target`` fails with ENOSPC, after its bytes were written — as a disk that fills
    up mid-write does."""

    def __init__(self, target: str, nth: int):
        self.target, self.nth, self.seen = target, nth, 0

    def __getattr__(self, name: str):
        return getattr(os, name)

    def fsync(self, fd: int) -> None:
        if self.target in os.readlink(f"/proc/self/fd/{fd}"):
            self.seen += 1
            if self.seen == self.nth:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.fsync(fd)


# (file that fails, which write of it, what the message says was kept)
FULL = {
    "config": ("config.json", 1, "no space left on the device"),
    "metrics-epoch-2": ("metrics.jsonl", 2, "holds the state at the end of epoch 1"),
    "checkpoint-epoch-2": ("last.safetensors", 2, "holds the state at the end of epoch 1"),
    "best-epoch-2": ("best.safetensors", 2, "holds the state at the end of epoch 1"),
    "summary": ("summary.json", 1, "Training is complete and checkpointed"),
    "plots": ("samples.png", 1, "Training is complete and checkpointed"),
}


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux's /proc")
@pytest.mark.parametrize("case", FULL)
def test_a_full_disk_is_one_clear_error_and_the_run_recovers(
    tmp_path, monkeypatch, reference, case
):
    target, nth, kept = FULL[case]
    monkeypatch.setattr(storage, "os", FullDisk(target, nth))
    run = tmp_path / "run"
    outcome = cli("train", *ARGS, "--out", run)
    monkeypatch.undo()
    assert outcome.clear_error, outcome.err
    assert f"cannot write {run}" in outcome.err and target in outcome.err
    assert kept in outcome.err, outcome.err
    assert not leftovers(run)
    # The user frees space and carries on: --resume, or the same command when no run began.
    again = ["--resume", run] if (run / "config.json").exists() else [*ARGS, "--out", run]
    assert cli("train", *again, "--no-progress").status == 0
    assert_same(load_model(run, "last").state_dict(), reference)
    assert json.loads((run / "summary.json").read_text())["epochs"] == 3


def _file_size_limit(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes then fail with EFBIG

    return apply


def test_a_file_size_limit_in_a_real_process(tmp_path, reference):
    """A real process whose files may not exceed 8 KB (``RLIMIT_FSIZE``): config.json fits,
    the first checkpoint does not. Exit 2 with one line, no traceback; then, without the
    limit, ``--resume`` ends at the uninterrupted run's weights."""
    run = tmp_path / "run"
    limited = cli_process("train", *ARGS, "--out", run, preexec_fn=_file_size_limit(8192))
    assert limited.returncode == 2, limited.stderr
    assert "Traceback" not in limited.stderr
    assert "error: cannot write" in limited.stderr and "file too large" in limited.stderr
    assert (run / "config.json").is_file() and not (run / LAST).exists()
    assert not leftovers(run)
    assert cli("train", "--resume", run, "--no-progress").status == 0
    assert_same(load_model(run, "last").state_dict(), reference)


def _make_read_only(folder: Path) -> None:
    """A read-only folder: permissions for an ordinary user; for root (whom permissions do
    not stop) a read-only bind mount, where the system allows one."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        folder.joinpath("checkpoints").chmod(0o555)
        return
    commands = [["mount", "--bind", folder, folder], ["mount", "-o", "remount,ro,bind", folder]]
    for command in commands:
        if shutil.which("mount") is None or subprocess.run(command, capture_output=True).returncode:
            pytest.skip("running as root and no read-only bind mount can be made here")


def _make_writable(folder: Path) -> None:
    if os.geteuid() != 0:
        folder.chmod(0o755)
        folder.joinpath("checkpoints").chmod(0o755)
    else:
        subprocess.run(["umount", folder], check=True)


def test_a_read_only_run_folder(tmp_path):
    """``--resume`` refuses at once, before training anything; ``evaluate`` (a read-only
    use) works; ``sample --out`` into the folder is one clear error."""
    run = tmp_path / "run"
    assert cli("train", *ARGS, "--out", run).status == 0
    metrics = (run / "metrics.jsonl").read_text()
    _make_read_only(run)
    try:
        resumed = cli("train", "--resume", run, "--epochs", "5", "--no-progress")
        assert resumed.clear_error, resumed.err
        assert "cannot write" in resumed.err
        assert (run / "metrics.jsonl").read_text() == metrics  # nothing trained
        assert cli("evaluate", run, "--importance-samples", "2", "--no-progress").status == 0
        sampled = cli("sample", run, "--out", run / "s.png")
        assert sampled.clear_error and "not writable" in sampled.err, sampled.err
    finally:
        _make_writable(run)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_files_follow_the_umask(tmp_path, umask):
    """Run files get the mode an ordinary ``open`` would give them, not mkstemp's 0600."""
    code = (
        f"import os; os.umask({umask}); from aevb.storage import atomic_write_text; "
        f"atomic_write_text({str(tmp_path / 'f.json')!r}, '{{}}')"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert (tmp_path / "f.json").stat().st_mode & 0o777 == 0o666 & ~umask
