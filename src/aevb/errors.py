"""User-facing errors: one clear message, no traceback in the CLI."""

from __future__ import annotations

from pathlib import Path


class AevbError(Exception):
    """A problem with the user's input, files or settings (not a bug in aevb).

    The CLI prints ``error: <message>`` and exits with status 2.
    """


class DataError(AevbError, ValueError):
    """A dataset file is missing, corrupt, wrongly shaped or holds invalid values (also a
    ``ValueError``, for code that calls the API directly)."""


class ConfigError(AevbError, ValueError):
    """An invalid setting (also a ``ValueError``, for code that calls the API directly)."""


class NumericalFault(AevbError):
    """Training stopped: too many steps with a non-finite loss or gradient, parameters that
    are no longer finite, or a diverged objective.

    ``saved``: whether the callbacks were asked to keep the state in memory (it is the last
    good one: the bad steps were skipped). When ``False`` the state in memory is bad and was
    not saved; the last checkpoint on disk is the last good state.
    """

    def __init__(self, message: str, saved: bool = True):
        super().__init__(message)
        self.saved = saved


class TrainingInterrupted(AevbError):
    """Training stopped on SIGINT/SIGTERM after its callbacks wrote what they keep.

    ``run_dir`` is the run folder it can be resumed from, when there is one.
    """

    def __init__(self, message: str, run_dir: str | Path | None = None):
        super().__init__(message)
        self.run_dir = run_dir
