"""A callback that dies as a kill would, for the resumption tests."""

from __future__ import annotations

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
