"""Data-parallel training over ``torch.distributed``: the process group a ``torchrun`` launch
sets up, and the few collective operations the one training loop needs.

``torchrun --nproc-per-node N -m aevb train …`` starts N processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address in their environment;
:func:`init_from_environment` joins them into a process group (NCCL on CUDA, gloo on the
CPU) and each process trains on ``cuda:LOCAL_RANK`` or the CPU. The model is wrapped in
``DistributedDataParallel``, so every step's gradients are averaged across the processes
during the backward pass.

How the pieces divide the work (docs/scaling.md):

* **Batches**: every process computes the same epoch order (the same seeded draw), and
  process r trains on its part of each global batch (:func:`aevb.data.loaders.shard_of`), so
  N processes see exactly the batches one process sees with the same ``--batch-size`` (the
  global batch), and a run may resume with another number of processes.
* **Randomness**: the order of each epoch (and the binarization of rows held in memory) comes
  from a random state all processes share, streamed rows' binarization from the epoch's seed
  and the batch's number; each step's sampling noise from a state of the process's own, saved
  for every process in the checkpoint.
* **Writing**: process 0 alone writes the run folder (config, checkpoints, metrics, plots);
  the others compute with it and wait for it at each collective step.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from aevb.errors import AevbError, ConfigError

T = TypeVar("T")

__all__ = [
    "Distributed",
    "collective_failure",
    "current",
    "init_from_environment",
    "launched_by_torchrun",
    "processes_on_this_machine",
]

# The environment torchrun (and any torch.distributed launcher) sets in each process.
_LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# How long a process waits for the others at a collective before giving up (a crashed or
# killed peer): long enough for a slow validation or checkpoint on process 0.
TIMEOUT = datetime.timedelta(minutes=30)


@dataclass(frozen=True)
class Distributed:
    """This process's place in a data-parallel run: ``rank`` of ``world`` processes, and
    ``local_rank`` on its machine (the CUDA device it uses)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        """Whether this process shares the work with others (a process group of more than
        one process)."""
        return self.world > 1 and dist.is_available() and dist.is_initialized()

    @property
    def writer(self) -> bool:
        """Whether this process writes the run folder (process 0)."""
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        """``(rank, world)``, as loaders take it."""
        return self.rank, self.world

    def device(self, requested: torch.device) -> torch.device:
        """The device this process trains on: ``cuda:local_rank`` when CUDA is requested."""
        if requested.type == "cuda" and self.active:
            return torch.device("cuda", self.local_rank)
        return requested

    def sum(self, tensor: Tensor) -> Tensor:
        """The sum of ``tensor`` over the processes (a new tensor; ``tensor`` itself when
        alone)."""
        if not self.active:
            return tensor
        total = tensor.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    def max_(self, tensor: Tensor) -> None:
        """Replace ``tensor`` by its largest value over the processes, in place, without a
        host synchronisation."""
        if self.active:
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true in any process (every process calls it together)."""
        if not self.active:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self._collective_device())
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def gather(self, value: Any) -> list[Any]:
        """``value`` of every process, in rank order (picklable values of our own making)."""
        if not self.active:
            return [value]
        values: list[Any] = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def broadcast(self, value: Any) -> Any:
        """Process 0's ``value``, in every process."""
        if not self.active:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def on_writer(self, work: Callable[[], T]) -> T | None:
        """Run ``work`` in process 0 alone (checks and writes of the run folder) and tell the
        others how it went: if it raised there, every process raises (the others an
        :class:`~aevb.errors.AevbError` quoting it), so none waits for a process that stopped.
        Returns ``work``'s value in process 0, ``None`` elsewhere."""
        result, failure = None, None
        if self.writer:
            try:
                result = work()
            except BaseException as error:
                failure = error
        if self.active:
            message = self.broadcast(None if failure is None else str(failure) or repr(failure))
            if message is not None and not self.writer:
                raise AevbError(f"process 0 stopped: {message}")
        if failure is not None:
            raise failure
        return result

    def lost_peer(self, error: BaseException) -> bool:
        """Whether ``error`` is a collective operation failing because another process
        stopped (killed, crashed, or its machine gone)."""
        return self.active and collective_failure(error)

    def _collective_device(self) -> torch.device:
        if dist.get_backend() == "nccl":
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")


def collective_failure(error: BaseException) -> bool:
    """Whether ``error`` comes from a collective operation of torch.distributed that failed
    (a peer gone, a broken connection): not something to retry or work around."""
    if not isinstance(error, RuntimeError):
        return False
    if isinstance(error, getattr(dist, "DistError", ())):
        return True
    text = str(error)
    return any(mark in text for mark in ("gloo", "NCCL", "Connection reset", "Connection closed"))


def processes_on_this_machine() -> int:
    """Training processes torchrun started on this machine (``LOCAL_WORLD_SIZE``; 1 alone)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def launched_by_torchrun() -> bool:
    """Whether this process was started by ``torchrun`` (its variables are set)."""
    return all(name in os.environ for name in _LAUNCH_VARIABLES)


def current() -> Distributed:
    """This process's place: from the process group if one is initialised, else alone."""
    if not (dist.is_available() and dist.is_initialized()):
        return Distributed()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return Distributed(dist.get_rank(), dist.get_world_size(), local)


def init_from_environment(device: str = "auto") -> Distributed:
    """Join the process group a ``torchrun`` launch describes (once; later calls return the
    same place). ``device``: the run's device setting, which picks the backend: NCCL for
    CUDA, gloo for the CPU. Without a launch, the process is alone."""
    if not launched_by_torchrun():
        return current()
    if dist.is_initialized():
        return current()
    if not dist.is_available():
        raise AevbError("this build of torch has no torch.distributed; run without torchrun")
    local = int(os.environ["LOCAL_RANK"])
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        if not torch.cuda.is_available():
            raise AevbError(f"device {device!r} requested but CUDA is not available")
        if local >= torch.cuda.device_count():
            raise ConfigError(
                f"process {os.environ['RANK']} has LOCAL_RANK {local}, but this machine has "
                f"{torch.cuda.device_count()} CUDA device(s): start at most that many processes "
                "per node (--nproc-per-node)"
            )
        if device not in ("auto", "cuda"):
            raise ConfigError(
                f"under torchrun each process uses the GPU of its LOCAL_RANK: pass --device "
                f"cuda, not {device!r}"
            )
        torch.cuda.set_device(local)
    backend = "nccl" if cuda else "gloo"
    dist.init_process_group(backend, timeout=TIMEOUT)
    return current()
