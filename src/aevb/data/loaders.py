"""Loaders: minibatches of training data, one epoch at a time.

The :class:`Loader` interface is what :class:`aevb.train.Trainer` consumes; :class:`TensorLoader`
serves rows of one tensor already on the training device — each epoch draws a permutation
(and, for dynamic binarization, a Bernoulli draw into a buffer kept across epochs) on the
device, and each batch gathers its rows of the permutation, so a step has no host work and an
epoch allocates no copy of the table. A loader for data larger than memory implements the same
interface.

Random draws come from torch's global generator, in a fixed order (permutation, then the
binarization), so that a run that saves the random state at an epoch's start redraws the same
epoch when it resumes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple, Protocol

import torch
from torch import Tensor

from aevb.data.transforms import Transforms

__all__ = [
    "Batch",
    "DynamicBinarization",
    "Loader",
    "SemiSupervisedLoader",
    "TensorLoader",
    "shard_of",
]


def shard_of(rows: int, rank: int, world: int) -> slice:
    """The part of a global batch of ``rows`` rows that process ``rank`` of ``world`` trains
    on: consecutive positions, split as evenly as possible (the first ``rows mod world``
    ranks one more). Each global batch is the same whatever the number of processes, so a
    run with N processes sees the batches a run with one process sees."""
    return slice(rows * rank // world, rows * (rank + 1) // world)


class Batch(NamedTuple):
    """A minibatch: rows ``x`` (batch, *data_shape) in the model's space, their positions
    ``index`` (batch,) in the training set, and their class labels ``y`` (batch,) int64 for a
    conditional model (−1 where unlabelled), else ``None``."""

    x: Tensor
    index: Tensor
    y: Tensor | None = None


class Loader(Protocol):
    """What the Trainer needs of its training data."""

    batch_size: int
    transforms: Transforms

    @property
    def num_examples(self) -> int:
        """Rows in one epoch."""
        ...

    def __len__(self) -> int:
        """Batches in one epoch."""
        ...

    def epoch(self, skip: int = 0) -> Iterator[Batch]:
        """Draw the epoch's order (and random transforms) now, from the global generator, and
        return its batches from the ``skip``-th on."""
        ...

    def head(self, rows: int) -> Batch:
        """The first ``rows`` training rows in the model's space, deterministically prepared
        (for checks and diagnoses), with their labels."""
        ...


class DynamicBinarization:
    """Fresh binary images x ~ Bernoulli(grey) each epoch, for fixed grey values in [0, 1].

    Hand-written because the draw is hot on the CPU, where torch's generator is serial: a
    pixel with grey value 0 or 1 is certain, and where such pixels are the majority only the
    others get a random number. On MNIST (18% uncertain) an epoch's draw took 0.23 s this way
    against 0.47 s for ``rand < p`` over every pixel (two cores); on Fashion-MNIST (49%) 0.43
    against 0.50 s. Above half uncertain, every pixel is drawn.
    """

    def __init__(self, grey: Tensor):
        self.grey = grey
        flat = grey.reshape(-1)
        uncertain = (flat > 0) & (flat < 1)
        self.sparse = bool(uncertain.float().mean() <= 0.5)
        if self.sparse:
            self.certain = (grey >= 1).to(grey.dtype)
            self.uncertain = uncertain.nonzero().squeeze(1)
            self.probabilities = flat[self.uncertain]

    def draw(self, out: Tensor | None = None) -> Tensor:
        """One binary draw of the whole table: same shape and dtype as ``grey``, written into
        ``out`` (a contiguous tensor of that shape) if given, so that no table is allocated."""
        if out is None:
            out = torch.empty_like(self.grey, memory_format=torch.contiguous_format)
        if not self.sparse:
            # u < p with u uniform: twice as fast as torch.bernoulli.
            return torch.lt(torch.rand_like(self.grey), self.grey, out=out)
        out.copy_(self.certain)
        draws = torch.rand_like(self.probabilities) < self.probabilities
        out.view(-1)[self.uncertain] = draws.to(out.dtype)
        return out


class TensorLoader:
    """Shuffled minibatches of ``x`` (N, *data_shape), a tensor of the data as loaded, on the
    training device; ``transforms`` map it to the model's space (dynamic binarization anew each
    epoch, the others once, here). The last batch of an epoch may be shorter. ``labels`` (N,)
    int64 on the same device, for a conditional model, come with each batch. ``shard``
    ``(rank, world)``: this process's part of each batch in a data-parallel run
    (:func:`shard_of`); ``batch_size`` is then the global batch.
    """

    def __init__(
        self,
        x: Tensor,
        batch_size: int,
        transforms: Transforms | None = None,
        shuffle: bool = True,
        labels: Tensor | None = None,
        shard: tuple[int, int] = (0, 1),
    ):
        if len(x) == 0:
            raise ValueError("cannot train on an empty data split")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if labels is not None and labels.shape != (len(x),):
            raise ValueError(f"labels of shape {tuple(labels.shape)} for {len(x)} rows")
        self.labels = labels
        self.batch_size = int(batch_size)
        self.transforms = transforms or Transforms()
        self.shuffle = shuffle
        self.shard = shard
        self._raw = x
        self._drawn: Tensor | None = None  # the binary draw, reused each epoch
        self._epochs_drawn = 0
        if self.transforms.dynamic_binarization:
            self._binarization: DynamicBinarization | None = DynamicBinarization(x)
            self._x = x
        else:
            self._binarization = None
            self._x = self.transforms.prepare(x)

    @property
    def num_examples(self) -> int:
        return len(self._x)

    @property
    def device(self) -> torch.device:
        return self._x.device

    def __len__(self) -> int:
        return -(-len(self._x) // self.batch_size)

    def epoch(self, skip: int = 0) -> Iterator[Batch]:
        order = self.order()
        return self._batches(self.draw(), order, skip, self._epochs_drawn)

    def order(self) -> Tensor:
        """The rows' order for one pass: a permutation (N,) drawn now, or 0…N−1 unshuffled."""
        n = len(self._x)
        if self.shuffle:
            return torch.randperm(n, device=self._x.device)
        return torch.arange(n, device=self._x.device)

    def draw(self) -> Tensor:
        """The table in the model's space for the next epoch (a dynamic binarization drawn
        now, into the buffer the previous epoch used)."""
        x = self._x
        if self._binarization is not None:
            x = self._drawn = self._binarization.draw(out=self._drawn)
        self._epochs_drawn += 1
        return x

    def _batches(self, x: Tensor, order: Tensor, skip: int, epoch: int) -> Iterator[Batch]:
        # Each batch gathers its rows (a copy), so a step may keep its batch; an epoch's
        # iterator read after the next epoch was drawn would see that epoch's draw, hence the
        # check.
        for start in range(skip * self.batch_size, len(x), self.batch_size):
            if epoch != self._epochs_drawn:
                raise RuntimeError("an epoch's batches were read after the next epoch was drawn")
            index = order[start : start + self.batch_size]
            if self.shard[1] > 1:
                index = index[shard_of(len(index), *self.shard)]
            y = None if self.labels is None else self.labels.index_select(0, index)
            yield Batch(x.index_select(0, index), index, y)

    def head(self, rows: int) -> Batch:
        index = torch.arange(min(rows, len(self._raw)), device=self._raw.device)
        y = None if self.labels is None else self.labels[: len(index)]
        return Batch(self.transforms.prepare(self._raw[:rows]), index, y)


class SemiSupervisedLoader:
    """Minibatches for semi-supervised training (M2): each batch holds ``batch_size`` rows of
    ``unlabelled`` (a loader over the whole training set, labels −1) followed by
    ``labelled_batch_size`` rows of ``labelled`` (a loader over the few labelled rows).

    An epoch is one pass over the unlabelled loader; the labelled rows follow one another in
    as many shuffled passes as its batches need, drawn (with the labelled rows' binarization)
    when the epoch starts, so that a resumed epoch redraws them exactly, as
    :class:`TensorLoader` does its own order. Both loaders' transforms must be the same.
    ``index`` of a labelled row counts from the unlabelled loader's size.
    """

    def __init__(self, unlabelled: TensorLoader, labelled: TensorLoader):
        if labelled.labels is None or unlabelled.labels is None:
            raise ValueError("both loaders need labels (−1 for the unlabelled rows)")
        self.unlabelled, self.labelled = unlabelled, labelled
        self.batch_size = unlabelled.batch_size + labelled.batch_size
        self.transforms = unlabelled.transforms

    @property
    def num_examples(self) -> int:
        return self.unlabelled.num_examples

    @property
    def device(self) -> torch.device:
        return self.unlabelled.device

    def __len__(self) -> int:
        return len(self.unlabelled)

    def epoch(self, skip: int = 0) -> Iterator[Batch]:
        unlabelled = self.unlabelled.epoch(skip)
        size, rows = self.labelled.batch_size, self.labelled.num_examples
        passes = -(-len(self) * size // rows)
        order = torch.cat([self.labelled.order() for _ in range(passes)])
        x = self.labelled.draw()
        labels = self.labelled.labels
        assert labels is not None
        offset = self.unlabelled.num_examples
        for step, batch in enumerate(unlabelled, start=skip):
            assert batch.y is not None
            index = order[step * size : (step + 1) * size]
            yield Batch(
                torch.cat((batch.x, x.index_select(0, index))),
                torch.cat((batch.index, index + offset)),
                torch.cat((batch.y, labels.index_select(0, index))),
            )

    def head(self, rows: int) -> Batch:
        return self.unlabelled.head(rows)
