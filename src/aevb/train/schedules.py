"""Learning-rate schedules with a linear warm-up: constant, cosine, step and plateau.

One scheduler class covers the four shapes, so that a warm-up composes with each of them
(torch's ``SequentialLR`` cannot chain ``ReduceLROnPlateau``, whose ``step`` takes a metric).
It is a :class:`torch.optim.lr_scheduler.LRScheduler`: the :class:`~aevb.train.Trainer` steps
it after every optimiser step and, at every epoch's end, calls :meth:`WarmupSchedule.epoch_end`
with whether the judged metric improved (the plateau shape's only input). Its state —
the step count and the plateau's reductions — is saved in every checkpoint with the
optimiser's, so a resumed run continues the same learning rates exactly.

At step t (0-based, the optimiser step about to run) the learning rate is
``lr × warm-up(t) × shape(t)``:

* warm-up: ``min(1, (t + 1) / warmup_steps)``, rising linearly from lr / warmup_steps;
* constant: 1;
* cosine: from 1 after the warm-up down to ``minimum`` at the run's last step,
  ``minimum + (1 − minimum)(1 + cos πp) / 2`` with p the share of the post-warm-up steps done;
* step: ``gamma ** (epoch // step_epochs)``;
* plateau: multiplied by ``gamma`` after every ``patience`` epochs in a row without a better
  judged metric (validation ELBO, or training ELBO without a validation split).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler

from aevb.errors import ConfigError

__all__ = ["LR_SCHEDULES", "SCHEDULE_OPTIONS", "WarmupSchedule", "make_schedule"]

LR_SCHEDULES = ("constant", "cosine", "step", "plateau")
# The run settings of each shape (aevb.runs.TrainConfig), and the shapes that use them.
SCHEDULE_OPTIONS = {
    "lr_decay": ("step", "plateau"),
    "lr_step_epochs": ("step",),
    "lr_patience": ("plateau",),
    "lr_final": ("cosine",),
}


class WarmupSchedule(LRScheduler):
    """Linear warm-up over ``warmup_steps``, then the ``shape`` (one of
    :data:`LR_SCHEDULES`); ``total_steps`` (the run's optimiser steps) ends the cosine and
    ``steps_per_epoch`` counts epochs for the step shape. ``gamma``: the step and plateau
    shapes' factor; ``step_epochs``: epochs between the step shape's decays; ``patience``:
    the plateau's epochs without improvement; ``minimum``: the cosine's final factor."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        shape: str = "constant",
        *,
        warmup_steps: int = 0,
        total_steps: int = 1,
        steps_per_epoch: int = 1,
        gamma: float = 0.1,
        step_epochs: int = 10,
        patience: int = 5,
        minimum: float = 0.0,
    ):
        if shape not in LR_SCHEDULES:
            raise ConfigError(
                f"lr schedule must be one of {', '.join(LR_SCHEDULES)}, got {shape!r}"
            )
        self.shape = shape
        self.warmup_steps = int(warmup_steps)
        self.total_steps = max(1, int(total_steps))
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        self.gamma = float(gamma)
        self.step_epochs = max(1, int(step_epochs))
        self.patience = max(1, int(patience))
        self.minimum = float(minimum)
        self.plateau_factor = 1.0
        self.epochs_without_improvement = 0
        super().__init__(optimizer)

    def factor(self, step: int) -> float:
        """The multiple of the base learning rate at optimiser step ``step`` (0-based)."""
        warmup = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        if self.shape == "cosine":
            span = max(1, self.total_steps - self.warmup_steps - 1)
            done = min(1.0, max(0.0, (step - self.warmup_steps) / span))
            shape = self.minimum + (1 - self.minimum) * (1 + math.cos(math.pi * done)) / 2
        elif self.shape == "step":
            shape = self.gamma ** (step // self.steps_per_epoch // self.step_epochs)
        elif self.shape == "plateau":
            shape = self.plateau_factor
        else:
            shape = 1.0
        return warmup * shape

    def get_lr(self) -> list[float]:
        factor = self.factor(self.last_epoch)  # LRScheduler counts steps in last_epoch
        return [base * factor for base in self.base_lrs]

    def epoch_end(self, improved: bool) -> None:
        """An epoch ended; ``improved``: its judged metric is the best so far. The plateau
        shape lowers the learning rate after ``patience`` epochs in a row without one."""
        if self.shape != "plateau":
            return
        self.epochs_without_improvement = 0 if improved else self.epochs_without_improvement + 1
        if self.epochs_without_improvement >= self.patience:
            self.plateau_factor *= self.gamma
            self.epochs_without_improvement = 0
            factor = self.factor(self.last_epoch)
            for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
                group["lr"] = base * factor
            self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        """The step count, the plateau's state and the settings (JSON values); not the
        cosine's horizon, which a resumed run with more epochs stretches."""
        state = super().state_dict()
        state.pop("total_steps", None)
        return state


def make_schedule(
    optimizer: torch.optim.Optimizer,
    shape: str,
    warmup_steps: int,
    epochs: int,
    steps_per_epoch: int,
    **options: Any,
) -> WarmupSchedule | None:
    """The schedule of a run of ``epochs`` × ``steps_per_epoch`` optimiser steps; ``None``
    for a constant learning rate without warm-up (no per-step work at all). ``options``:
    :class:`WarmupSchedule`'s ``gamma``, ``step_epochs``, ``patience``, ``minimum``."""
    if shape == "constant" and not warmup_steps:
        return None
    return WarmupSchedule(
        optimizer,
        shape,
        warmup_steps=warmup_steps,
        total_steps=epochs * steps_per_epoch,
        steps_per_epoch=steps_per_epoch,
        **options,
    )
