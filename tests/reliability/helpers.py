"""Shared by the reliability tests: quick settings, a CLI runner that reports tracebacks, and
state comparisons."""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

from aevb.cli import main

# A small model on digits: a run of one epoch takes about a second.
QUICK = ["--latent-dim", "4", "--hidden", "32", "--batch-size", "64", "--no-progress"]


@dataclass
class Outcome:
    """What a command did: its exit status and what it printed."""

    status: int
    out: str
    err: str

    @property
    def clear_error(self) -> bool:
        """Exit 2 with one ``error: …`` line and no traceback (argparse's usage errors
        included)."""
        lines = [line for line in self.err.splitlines() if "error:" in line]
        return self.status == 2 and len(lines) == 1 and "Traceback" not in self.err


def cli(*args: object) -> Outcome:
    """Run ``aevb ARGS`` in this process. An exception that escapes ``main`` — which the
    real command would print as a traceback — fails the test with that traceback."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main([str(a) for a in args])
        except SystemExit as exit:  # argparse's usage errors
            status = exit.code if isinstance(exit.code, int) else 2
        except Exception:  # a traceback for the user
            raise AssertionError(f"aevb {args} raised:\n{traceback.format_exc()}") from None
    return Outcome(status, out.getvalue(), err.getvalue())


def cli_process(*args: object, timeout: float = 300, **options) -> subprocess.CompletedProcess:
    """Run ``python -m aevb.cli ARGS`` as a separate process (text output captured)."""
    return subprocess.run(
        [sys.executable, "-m", "aevb.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        **options,
    )


def assert_same(a, b) -> None:
    """Two (nested) dicts, lists or tensors are equal, bit for bit."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, tuple | list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    else:
        assert torch.equal(torch.as_tensor(a), torch.as_tensor(b))


def leftovers(folder: Path) -> list[Path]:
    """Temporary files of interrupted writes under ``folder``."""
    return [*folder.glob("**/.*.tmp")]


def copy_run(run: Path, tmp_path: Path) -> Path:
    """A copy of the run folder ``run`` in ``tmp_path``, to change without touching it."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy
