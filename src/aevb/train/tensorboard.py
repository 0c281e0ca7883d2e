"""TensorBoard logging of a training run, as a callback of the one loop.

:class:`TensorBoard` writes, under its folder (a run's ``tensorboard/``):

* every step's training loss (``train/loss``, the objective's loss in nats per example:
  −ELBO when β = 1), copied on the device after each step and written at the loop's existing
  host synchronisation points, so logging adds no per-step host sync;
* every epoch's record (``elbo/train``, ``elbo/val``, ``reconstruction/…``, ``kl/…``, the
  validation KL of each latent dimension ``kl_per_dim/<j>`` and its histogram, the active
  units, the learning rate, β and the epoch's seconds), at the epoch's last step;
* for images, a grid of samples (the same prior draws every epoch) and of reconstructions of
  fixed validation images;
* the run's settings as hyperparameters (the HPARAMS tab), with its metrics.

Steps are numbered 1, 2, … (the count of optimiser steps done). A resumed run opens its writer
with ``purge_step`` one past the checkpoint's step: TensorBoard then drops whatever an
interrupted run had logged past the checkpoint, so the curves continue without duplicate
steps.

The ``tensorboard`` package is optional (``pip install 'aevb[tensorboard]'``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from aevb.errors import ConfigError
from aevb.train.callbacks import Callback

if TYPE_CHECKING:
    from aevb.train.trainer import Trainer

__all__ = ["TensorBoard", "tensorboard_available"]

# Epoch-record keys → (tag, split) for the curves TensorBoard draws train and val together.
SPLIT_PREFIXES = ("train_", "val_")


def tensorboard_available() -> bool:
    """Whether the ``tensorboard`` package (which torch's SummaryWriter needs) is installed."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


class TensorBoard(Callback):
    """Logs training to TensorBoard event files in ``log_dir``.

    ``hparams``: the run's settings (JSON values; lists are shown as text). ``images``:
    validation rows in the model's space (N, C, H, W), whose first 16 are reconstructed each
    epoch, with ``labels`` (N,) for a conditional model; ``inverse`` maps model outputs to the
    data's units. Without ``images`` no image grids are written.
    """

    def __init__(
        self,
        log_dir: str | Path,
        hparams: dict[str, Any] | None = None,
        images: Tensor | None = None,
        inverse: Callable[[Tensor], Tensor] | None = None,
        labels: Tensor | None = None,
    ):
        if not tensorboard_available():
            raise ConfigError(
                "TensorBoard logging needs the tensorboard package: pip install "
                "'aevb[tensorboard]' (or turn it off with --no-tensorboard)"
            )
        self.log_dir = Path(log_dir)
        self.hparams = hparams or {}
        self.images = None if images is None else images[:16]
        self.inverse = inverse
        self.labels = None if labels is None else labels[:16]
        self.writer: Any = None
        self._losses: Tensor | None = None
        self._pending = 0  # steps whose loss is in the buffer, not yet written

    def on_fit_start(self, trainer: Trainer) -> None:
        from torch.utils.tensorboard import SummaryWriter

        step = trainer.state.step
        # Steps 1…step are in the state trained from; TensorBoard discards what an
        # interrupted run logged after them (events at or past purge_step in earlier files).
        self.writer = SummaryWriter(str(self.log_dir), purge_step=step + 1)
        self._losses = torch.zeros(trainer.steps_per_epoch + 1, device=trainer.device)
        self._pending = 0
        if step == 0:
            self._write_hparams(trainer)

    def on_step_end(self, trainer: Trainer) -> None:
        if self._losses is None:  # a loop driven by hand (Trainer.train_epoch), not by fit()
            self.on_fit_start(trainer)
        assert self._losses is not None
        if trainer.step_loss is not None:  # a device copy, no sync
            self._losses[self._pending].copy_(trainer.step_loss.detach())
            self._pending += 1

    def on_progress(self, trainer: Trainer) -> None:
        self._write_losses(trainer.state.step)

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        step = trainer.state.step
        self._write_losses(step)
        writer = self.writer
        if writer is None:
            return
        for key, value in record.items():
            if key.startswith(SPLIT_PREFIXES) and isinstance(value, int | float):
                split, metric = key.split("_", 1)
                writer.add_scalar(f"{metric}/{split}", value, step)
        per_dim = record.get("val_kl_per_dim")
        if per_dim:
            for dim, value in enumerate(per_dim):
                writer.add_scalar(f"kl_per_dim/{dim}", value, step)
            writer.add_histogram("kl_per_dim", torch.tensor(per_dim), step)
        writer.add_scalar("epoch_seconds", record["epoch_seconds"], step)
        writer.add_scalar("lr", trainer.optimizer.param_groups[0]["lr"], step)
        writer.add_scalar("beta", trainer.objective.kl_weight(step), step)
        if self.images is not None:
            self._write_images(trainer, step)
        writer.flush()

    def on_stop(self, trainer: Trainer) -> None:
        self._write_losses(trainer.state.step)

    def close(self, trainer: Trainer) -> None:
        if self.writer is not None:
            self._write_losses(trainer.state.step)
            self.writer.close()
            self.writer = None
            self._losses = None

    def _write_losses(self, last_step: int) -> None:
        """Write the buffered losses of the steps up to ``last_step`` (a host sync)."""
        if not self._pending or self._losses is None or self.writer is None:
            return
        values = self._losses[: self._pending].tolist()
        first = last_step - self._pending + 1
        for offset, value in enumerate(values):
            self.writer.add_scalar("train/loss", value, first + offset)
        self._pending = 0

    def _write_images(self, trainer: Trainer, step: int) -> None:
        from aevb.plots import image_grid, image_panels, interleaved

        was_training = trainer.model.training
        trainer.model.eval()
        panels = image_panels(
            trainer.model, self.images, self.inverse, 64, self.labels, len(self.images)
        )
        trainer.model.train(was_training)
        grids = {
            "samples": image_grid(panels.samples.cpu().numpy(), panels.sample_columns),
            "reconstructions": image_grid(
                interleaved(panels.originals, panels.reconstructions).numpy(), 8
            ),
        }
        for tag, grid in grids.items():
            formats = "HW" if grid.ndim == 2 else "HWC"
            self.writer.add_image(tag, grid.clip(0, 1), step, dataformats=formats)

    def _write_hparams(self, trainer: Trainer) -> None:
        """The settings as TensorBoard hyperparameters (in this run's own event file, not a
        sub-folder as ``SummaryWriter.add_hparams`` makes)."""
        from torch.utils.tensorboard.summary import hparams

        shown = {k: _hparam_value(v) for k, v in self.hparams.items()}
        metrics = {f"{m}/val": math.nan for m in trainer.objective.reported}
        for summary in hparams(shown, metrics):
            self.writer.file_writer.add_summary(summary)


def _hparam_value(value: Any) -> bool | int | float | str:
    """A setting as a value the HPARAMS plugin shows: numbers and booleans as they are,
    ``None`` and lists as text."""
    if isinstance(value, bool | int | float | str):
        return value
    return "none" if value is None else str(value)
