"""A callback that dies as a kill would, for the resumption tests."""

from __future__ import annotations

import pytest

from aevb.runs import train
from aevb.train import Callback


class Crash(Exception):
    """What :class:`CrashAfter` raises."""


class CrashAfter(Callback):
    """Raises :class:`Crash` once ``epochs`` epochs, or ``steps`` steps, are done. Given after
    the run folder's own callbacks, it runs after their checkpoint at that point (so a
    mid-epoch kill leaves the last ``--checkpoint-every`` checkpoint behind)."""

    def __init__(self, epochs: int | None = None, steps: int | None = None):
        self.epochs, self.steps = epochs, steps

    def on_epoch_end(self, trainer, record) -> None:
        if trainer.state.epoch == self.epochs:
            raise Crash

    def on_step_end(self, trainer) -> None:
        if trainer.state.step == self.steps:
            raise Crash


def train_until_crash(config, run_dir, crash: CrashAfter, *callbacks: Callback, **options) -> None:
    """Start a run (:func:`aevb.runs.train`, without progress bars) that ``crash`` kills;
    ``callbacks`` run before it, ``options`` (``dataset``, ``model``) go to ``train``."""
    with pytest.raises(Crash):
        train(config, run_dir, progress=False, callbacks=[*callbacks, crash], **options)
