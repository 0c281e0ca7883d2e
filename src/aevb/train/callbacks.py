"""Callbacks of the training loop: validation, early stopping, checkpoints, the metrics file,
the progress bar, signal handling, the curve plot, and keeping the best weights in memory.

A callback overrides any of the hooks of :class:`Callback`; the :class:`~aevb.train.Trainer`
calls them in the order the callbacks were given. The epoch's end runs ``on_validation``
(callbacks add held-out metrics to the record), then the Trainer tracks the best value of the
judged metric, then ``on_epoch_end`` (where ``trainer.improved`` says whether the epoch is the
best so far).
"""

from __future__ import annotations

import copy
import json
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

from aevb.evaluation import LOG_DENSITIES
from aevb.objectives import held_out_metrics
from aevb.progress import Progress, ProgressLines, progress_bar
from aevb.storage import atomic_write_text
from aevb.train import checkpoint as ckpt

if TYPE_CHECKING:
    from aevb.train.trainer import Trainer

__all__ = [
    "BestWeights",
    "Callback",
    "Checkpoint",
    "CurvePlot",
    "EarlyStopping",
    "MetricsFile",
    "ProgressBar",
    "SignalHandler",
    "Validation",
    "differences",
]


class Callback:
    """Base class: every hook does nothing."""

    def on_fit_start(self, trainer: Trainer) -> None:
        """Before the first epoch of :meth:`Trainer.fit` (after any restore)."""

    def on_step_end(self, trainer: Trainer) -> None:
        """After every step (host-side work only: reading a device value here syncs)."""

    def on_progress(self, trainer: Trainer) -> None:
        """About ten times per epoch, at the loop's host synchronisation points."""

    def on_validation(self, trainer: Trainer, record: dict) -> None:
        """At an epoch's end, before the best epoch is tracked: add held-out metrics."""

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        """After an epoch, its record complete; ``trainer.state.epoch`` counts it."""

    def on_stop(self, trainer: Trainer) -> None:
        """Before training stops on a signal or a numerical fault (keep what must be kept)."""

    def on_fit_end(self, trainer: Trainer) -> None:
        """After training ends normally."""

    def close(self, trainer: Trainer) -> None:
        """When :meth:`Trainer.fit` returns or raises (release resources)."""

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of the callback (JSON values); nothing by default."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


class Validation(Callback):
    """Adds ``val_<metric>`` to each epoch's record: the objective's held-out metrics
    (:meth:`aevb.objectives.Objective.metrics`) on ``x`` (in the model's space; ``labels``
    (N,) for a conditional model), with
    ``log_abs_det_jacobian`` added to its log-densities so they are in the data's units: the
    metrics it reports, and the active units and KL per latent dimension where it has them."""

    EXTRA = ("active_units", "kl_per_dim")

    def __init__(self, x: Tensor, log_abs_det_jacobian: float = 0.0, labels: Tensor | None = None):
        self.x = x
        self.log_abs_det_jacobian = log_abs_det_jacobian
        self.labels = labels

    def on_validation(self, trainer: Trainer, record: dict) -> None:
        if len(self.x) == 0:
            return
        metrics = in_data_units(
            held_out_metrics(trainer.objective, trainer.model, self.x, self.labels),
            self.log_abs_det_jacobian,
        )
        for name in (*trainer.objective.reported, *self.EXTRA):
            if name in metrics:
                record[f"val_{name}"] = metrics[name]


def in_data_units(metrics: dict[str, Any], log_abs_det_jacobian: float) -> dict[str, Any]:
    """``metrics`` with ``log_abs_det_jacobian`` added to the log-densities among them."""
    return {
        name: value + log_abs_det_jacobian if name in LOG_DENSITIES else value
        for name, value in metrics.items()
    }


class EarlyStopping(Callback):
    """Stops training after ``patience`` epochs without a better value of the judged metric.
    Put it before :class:`Checkpoint`, so that the checkpoint records the stop."""

    def __init__(self, patience: int):
        if patience < 1:
            raise ValueError(f"patience must be at least 1, got {patience}")
        self.patience = int(patience)

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        if trainer.state.epochs_without_improvement >= self.patience:
            trainer.state.stopped_early = True


class Checkpoint(Callback):
    """Writes the resumable checkpoint ``last`` at every epoch's end, every ``every_steps``
    steps, and before a stop; and ``best`` (the model's weights only) whenever the judged
    metric improves. Every write is atomic (:mod:`aevb.train.checkpoint`).

    ``identity`` (JSON values: what the state belongs to, e.g. a run's settings and data
    fingerprint) is stored in ``last`` and must match when a checkpoint is restored into this
    callback's trainer: a checkpoint of another run, or of this run before its settings were
    edited, raises ``ValueError`` naming what differs.

    In a data-parallel run every process has this callback (a checkpoint gathers every
    process's random state) and process 0 alone writes."""

    def __init__(
        self,
        last: str | Path,
        best: str | Path | None = None,
        every_steps: int = 0,
        identity: dict[str, Any] | None = None,
    ):
        self.last = Path(last)
        self.best = None if best is None else Path(best)
        self.every_steps = int(every_steps)
        self.identity = identity

    def check_identity(self, saved: dict[str, Any] | None) -> None:
        """Raise ``ValueError`` if a checkpoint's ``saved`` identity is not this one's."""
        if self.identity is None or saved == self.identity:
            return
        if saved is None:
            raise ValueError("it records no run identity (it was not written by this run)")
        changed = differences(saved, self.identity)
        raise ValueError(
            "it belongs to another run, or the run's config.json was edited since it was "
            f"written: {'; '.join(changed[:5])}"
        )

    def save_last(self, trainer: Trainer) -> None:
        """Write the resumable checkpoint, once :meth:`Trainer.check_state` has found the state
        good (otherwise the previous checkpoint stays, and the fault propagates)."""
        trainer.check_state()
        tensors, metadata = trainer.checkpoint()
        if self.identity is not None:
            metadata["run"] = self.identity
        if trainer.distributed.writer:
            ckpt.save_checkpoint(self.last, tensors, metadata)

    def on_step_end(self, trainer: Trainer) -> None:
        if self.every_steps and trainer.state.step % self.every_steps == 0:
            trainer.collect_faults()
            self.save_last(trainer)

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        if self.best is not None and trainer.improved and trainer.distributed.writer:
            state = trainer.state
            ckpt.save_checkpoint(
                self.best,
                ckpt.prefixed("model.", trainer.model.state_dict()),
                {
                    "epoch": state.epoch,
                    "monitor": state.monitor,
                    "value": state.best_value,
                    **({} if self.identity is None else {"run": self.identity}),
                },
            )
        self.save_last(trainer)

    def on_stop(self, trainer: Trainer) -> None:
        self.save_last(trainer)


def differences(saved: Any, now: Any, where: str = "") -> list[str]:
    """Where two JSON values differ, as ``key: saved → now`` lines."""
    if isinstance(saved, dict) and isinstance(now, dict):
        lines = []
        for key in sorted(saved.keys() | now.keys(), key=str):
            name = f"{where}.{key}" if where else str(key)
            lines += differences(saved.get(key), now.get(key), name)
        return lines
    if saved == now:
        return []
    shown = [json.dumps(v)[:40] for v in (saved, now)]
    return [f"{where or 'value'}: {shown[0]} in the checkpoint, {shown[1]} now"]


class MetricsFile(Callback):
    """Writes every epoch's record so far as one JSON object per line (atomically), after
    each epoch and when training (re)starts (so the file always matches the state trained
    from)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def _write(self, trainer: Trainer) -> None:
        lines = "".join(json.dumps(r) + "\n" for r in trainer.state.history)
        atomic_write_text(self.path, lines)

    def on_fit_start(self, trainer: Trainer) -> None:
        if trainer.state.history:
            self._write(trainer)

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        self._write(trainer)


class ProgressBar(Callback):
    """Progress over the run's steps (:func:`aevb.progress.progress_bar`): on a terminal a
    tqdm bar with the running value of the judged metric; in a log or a pipe a plain line per
    epoch with its train and validation values, and one at most every 30 s within an epoch."""

    def __init__(self) -> None:
        self.bar: Progress | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        self.bar = progress_bar(
            trainer.epochs * trainer.steps_per_epoch,
            "train",
            "step",
            initial=trainer.state.step,
        )

    def on_step_end(self, trainer: Trainer) -> None:
        if self.bar is not None:
            self.bar.update()

    def on_progress(self, trainer: Trainer) -> None:
        if self.bar is not None:
            judged = trainer.objective.judged_by
            self.bar.set_postfix(
                {"epoch": trainer.state.epoch + 1, judged: f"{trainer.running_value():.2f}"}
            )

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        if self.bar is not None:
            judged = trainer.objective.judged_by
            shown = {"epoch": record["epoch"]}
            for split in ("train", "val"):
                if f"{split}_{judged}" in record:
                    shown[f"{split}_{judged}"] = f"{record[f'{split}_{judged}']:.2f}"
            self.bar.set_postfix(shown)
            if isinstance(self.bar, ProgressLines):
                self.bar.line()

    def close(self, trainer: Trainer) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class SignalHandler(Callback):
    """While training, SIGINT and SIGTERM finish the current step, let the callbacks keep what
    they keep (``on_stop``: the checkpoint), then stop with
    :class:`~aevb.errors.TrainingInterrupted`. Signal handlers can only be installed from the
    main thread; elsewhere this does nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self._previous: dict[int, Any] = {}

    def on_fit_start(self, trainer: Trainer) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def request_stop(signum, frame):
            trainer.request_stop(signum)

        self._previous = {s: signal.signal(s, request_stop) for s in self.SIGNALS}

    def close(self, trainer: Trainer) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


class CurvePlot(Callback):
    """Draws the judged metric per epoch (train and validation) to a PNG when training ends."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_fit_end(self, trainer: Trainer) -> None:
        from aevb.plots import plot_training_curves  # matplotlib only when a run ends

        if trainer.state.history:
            plot_training_curves(trainer.state.history, self.path, trainer.objective.judged_by)


class BestWeights(Callback):
    """Keeps a copy of the model's weights at the best epoch, in memory; :meth:`restore` puts
    them back into the model (a no-op before the first epoch)."""

    def __init__(self) -> None:
        self.weights: dict[str, Tensor] | None = None

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        if trainer.improved:
            self.weights = copy.deepcopy(trainer.model.state_dict())

    def restore(self, trainer: Trainer) -> None:
        if self.weights is not None:
            trainer.model.load_state_dict(self.weights)
