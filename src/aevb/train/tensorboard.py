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

Events are written synchronously, at those sync points, by :class:`EventFile` (TensorBoard's
own record format and summary builders, without ``SummaryWriter``'s writer thread, whose write
errors end in a traceback from the thread and whose address-space reservation counts against
a memory limit). A failed write — a full disk, a file-size limit — stops the logging with one
warning line and the run goes on; the checkpoints say for themselves if they cannot be written.

The ``tensorboard`` package is optional (``pip install 'aevb[tensorboard]'``).
"""

from __future__ import annotations

import math
import os
import socket
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from aevb.errors import ConfigError
from aevb.hints import setting_name
from aevb.storage import StorageError, make_folder, os_reason
from aevb.train.callbacks import Callback
from aevb.train.trainer import JUDGED_SUMS

if TYPE_CHECKING:
    from aevb.train.trainer import Trainer

__all__ = ["EventFile", "TensorBoard", "tensorboard_available"]

# Epoch-record keys → (tag, split) for the curves TensorBoard draws train and val together.
SPLIT_PREFIXES = ("train_", "val_")
# The per-step losses read at the loop's sync points are written at the epoch's end, and at
# least this often (seconds) within a long epoch.
WRITE_SECONDS = 30.0


def tensorboard_missing() -> str:
    """What to do when TensorBoard logging is asked for without the tensorboard package."""
    return (
        "TensorBoard logging needs the tensorboard package: pip install 'aevb[tensorboard]' (or "
        f"turn it off with {setting_name('tensorboard', False)})"
    )


def tensorboard_available() -> bool:
    """Whether the ``tensorboard`` package (which torch's SummaryWriter needs) is installed."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


class EventFile:
    """One TensorBoard event file in ``folder``, written synchronously: a header record, and
    with ``purge_step`` the session-start record that makes TensorBoard drop the events of
    earlier files at or past that step. Raises :class:`~aevb.storage.StorageError` when the
    folder or file cannot be written."""

    def __init__(self, folder: Path, purge_step: int | None = None):
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog
        from tensorboard.summary.writer.record_writer import RecordWriter

        self._event = Event
        name = f"events.out.tfevents.{time.time():.0f}.{socket.gethostname()}.{os.getpid()}.0"
        self.path = folder / name
        try:
            make_folder(folder)
            self._records = RecordWriter(open(self.path, "ab"))  # closed in close()
        except OSError as error:
            raise StorageError(self.path, os_reason(error)) from None
        self.write([Event(wall_time=time.time(), file_version="brain.Event:2")])
        if purge_step is not None:
            start = SessionLog(status=SessionLog.START)
            self.write([Event(wall_time=time.time(), step=purge_step, session_log=start)])

    def add(self, summaries: Iterable[tuple[Any, int]]) -> None:
        """Write (summary, step) pairs (``tensorboard`` Summary protocol buffers) and flush."""
        now = time.time()
        self.write(self._event(wall_time=now, step=step, summary=s) for s, step in summaries)

    def write(self, events: Iterable[Any]) -> None:
        try:
            for event in events:
                self._records.write(event.SerializeToString())
            self._records.flush()
        except OSError as error:
            raise StorageError(self.path, os_reason(error)) from None

    def close(self) -> None:
        try:
            self._records.close()
        except OSError:  # what could not be flushed was reported when it was written
            pass


class TensorBoard(Callback):
    """Logs training to TensorBoard event files in ``log_dir``.

    ``hparams``: the run's settings (JSON values; lists are shown as text), written when the
    folder has no event file yet. ``images``, for image data: validation rows in the model's
    space (N, C, H, W; N may be 0), whose first 16 are reconstructed each epoch beside 64
    samples, with ``labels`` (N,) for a conditional model; ``inverse`` maps model outputs to
    the data's units. Without ``images`` (tables) no image grids are written.
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
            raise ConfigError(tensorboard_missing())
        self.log_dir = Path(log_dir)
        self.hparams = hparams or {}
        self.images = None if images is None else images[:16]
        self.inverse = inverse
        self.labels = None if labels is None else labels[:16]
        self.writer: EventFile | None = None
        self._losses: Tensor | None = None  # on the device: the steps' losses since a read
        self._pending = 0  # losses in that buffer
        self._read: list[tuple[int, float]] = []  # (step, loss) read, not yet written
        self._written_at = 0.0
        self._failed = False  # a write failed: logging is off for the rest of the run

    def on_fit_start(self, trainer: Trainer) -> None:
        step = trainer.state.step
        first = not any(self.log_dir.glob("events.out.tfevents.*"))
        self._losses = torch.zeros(trainer.steps_per_epoch + 1, device=trainer.device)
        self._pending, self._read, self._written_at = 0, [], time.monotonic()
        # Steps 1…step are in the state trained from; TensorBoard discards what an
        # interrupted run logged after them (events at or past purge_step in earlier files).
        self._guarded(lambda: self._open(step + 1))
        if first:
            self._guarded(lambda: self._write_hparams(trainer))

    def _open(self, purge_step: int) -> None:
        self.writer = EventFile(self.log_dir, purge_step)

    def on_step_end(self, trainer: Trainer) -> None:
        if self._losses is None:  # a loop driven by hand (Trainer.train_epoch), not by fit()
            self.on_fit_start(trainer)
        assert self._losses is not None
        slot = self._losses[self._pending]  # device copies, no sync
        if trainer.objective.custom_update:  # Monte Carlo EM: no one loss; −its judged metric
            sums = trainer.step_sums
            torch.div(sums[JUDGED_SUMS[trainer.objective.judged_by]], sums[3], out=slot).neg_()
        elif trainer.step_loss is not None:
            slot.copy_(trainer.step_loss.detach())
        self._pending += 1

    def on_progress(self, trainer: Trainer) -> None:
        # At the loop's host sync: read the losses; write them (Python work outside the
        # step's device work, ~20 µs a step) at the epoch's end, or every 30 s of long epochs.
        self._read_losses(trainer.state.step)
        if time.monotonic() - self._written_at >= WRITE_SECONDS:
            self._guarded(self._write_losses)

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        self._read_losses(trainer.state.step)
        self._guarded(self._write_losses)
        self._guarded(lambda: self._write_epoch(trainer, record))

    def on_stop(self, trainer: Trainer) -> None:
        self._read_losses(trainer.state.step)
        self._guarded(self._write_losses)

    def close(self, trainer: Trainer) -> None:
        if self.writer is not None:
            self.on_stop(trainer)
            self.writer.close()
            self.writer = None
        self._losses = None

    def _guarded(self, write: Callable[[], None]) -> None:
        """Run ``write`` while logging is on; a write that fails turns logging off with one
        warning line (the run goes on)."""
        if self._failed:
            return
        try:
            write()
        except StorageError as error:
            self._failed = True
            if self.writer is not None:
                self.writer.close()
                self.writer = None
            tqdm.write(
                f"warning: TensorBoard logging stopped: {error}; training goes on",
                file=sys.stderr,
            )

    def _read_losses(self, last_step: int) -> None:
        """Read the buffered losses of the steps up to ``last_step`` (a host sync)."""
        if not self._pending or self._losses is None:
            return
        first = last_step - self._pending + 1
        values = self._losses[: self._pending].tolist()
        self._read += [(first + offset, value) for offset, value in enumerate(values)]
        self._pending = 0

    def _write_losses(self) -> None:
        from torch.utils.tensorboard.summary import scalar

        read, self._read, self._written_at = self._read, [], time.monotonic()
        if self.writer is not None and read:
            self.writer.add((scalar("train/loss", value), step) for step, value in read)

    def _write_epoch(self, trainer: Trainer, record: dict) -> None:
        """The epoch's record, learning rate, β, KL per dimension and image grids."""
        from torch.utils.tensorboard.summary import histogram, scalar

        if self.writer is None:
            return
        step = trainer.state.step
        values = {
            f"{key.split('_', 1)[1]}/{key.split('_', 1)[0]}": value
            for key, value in record.items()
            if key.startswith(SPLIT_PREFIXES) and isinstance(value, int | float)
        }
        per_dim = record.get("val_kl_per_dim") or []
        values.update({f"kl_per_dim/{dim}": value for dim, value in enumerate(per_dim)})
        values["epoch_seconds"] = record["epoch_seconds"]
        values["lr"] = trainer.optimizer.param_groups[0]["lr"]
        values["beta"] = trainer.objective.kl_weight(step)
        summaries = [scalar(tag, value) for tag, value in values.items()]
        if per_dim:
            summaries.append(histogram("kl_per_dim", torch.tensor(per_dim), "auto"))
        if self.images is not None:
            summaries += self._images(trainer)
        self.writer.add((summary, step) for summary in summaries)

    def _images(self, trainer: Trainer) -> list[Any]:
        """Summaries of the sample grid and, with validation rows, the reconstructions."""
        from torch.utils.tensorboard.summary import image

        from aevb.plots import image_grid, image_panels, interleaved

        assert self.images is not None
        was_training = trainer.model.training
        trainer.model.eval()
        panels = image_panels(
            trainer.model, self.images, self.inverse, 64, self.labels, len(self.images)
        )
        trainer.model.train(was_training)
        grids = {"samples": image_grid(panels.samples.cpu().numpy(), panels.sample_columns)}
        if len(panels.originals):  # none without a validation split
            pairs = interleaved(panels.originals, panels.reconstructions)
            grids["reconstructions"] = image_grid(pairs.numpy(), 8)
        return [
            image(tag, grid.clip(0, 1), dataformats="HW" if grid.ndim == 2 else "HWC")
            for tag, grid in grids.items()
        ]

    def _write_hparams(self, trainer: Trainer) -> None:
        """The settings as TensorBoard hyperparameters (in this run's own event file, not a
        sub-folder as ``SummaryWriter.add_hparams`` makes)."""
        from torch.utils.tensorboard.summary import hparams

        if self.writer is None:
            return
        shown = {k: _hparam_value(v) for k, v in self.hparams.items()}
        metrics = {f"{m}/val": math.nan for m in trainer.objective.reported}
        self.writer.add((summary, 0) for summary in hparams(shown, metrics))


def _hparam_value(value: Any) -> bool | int | float | str:
    """A setting as a value the HPARAMS plugin shows: numbers and booleans as they are,
    ``None`` and lists as text."""
    if isinstance(value, bool | int | float | str):
        return value
    return "none" if value is None else str(value)
