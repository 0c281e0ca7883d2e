"""The in-memory loader: an epoch's batches are the permuted, binarized table cut in order,
drawn from the global generator in a fixed order, and no batch aliases the reused buffer."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aevb.data import Binarize, DynamicBinarization, TensorLoader, Transforms


def _grey(rows: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    grey = torch.rand(rows, 1, 3, 4, generator=generator)
    grey[grey < 0.45] = 0.0  # 70% certain pixels, as in MNIST: the sparse draw
    grey[grey > 0.75] = 1.0
    return grey


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 40), batch_size=st.integers(1, 16), skip=st.integers(0, 3))
def test_batches_are_the_permuted_draw_cut_in_order(rows, batch_size, skip):
    grey = _grey(rows)
    loader = TensorLoader(grey, batch_size, Transforms([Binarize("dynamic")]))
    skip = min(skip, len(loader) - 1)
    torch.manual_seed(7)
    batches = list(loader.epoch(skip=skip))
    # The reference: permutation, then the whole table's draw, then slices, from one seed.
    torch.manual_seed(7)
    order = torch.randperm(rows)
    binary = DynamicBinarization(grey).draw()[order]
    starts = range(skip * batch_size, rows, batch_size)
    assert len(batches) == len(starts)
    for batch, start in zip(batches, starts, strict=True):
        assert torch.equal(batch.x, binary[start : start + batch_size])
        assert torch.equal(batch.index, order[start : start + batch_size])


def test_a_kept_batch_survives_the_next_epochs_draw():
    loader = TensorLoader(_grey(30), 10, Transforms([Binarize("dynamic")]))
    torch.manual_seed(0)
    first = next(iter(loader.epoch()))
    kept = first.x.clone()
    for _ in loader.epoch():  # redraws into the buffer the first epoch used
        pass
    assert torch.equal(first.x, kept)


def test_reading_an_epoch_after_the_next_was_drawn_is_refused():
    loader = TensorLoader(_grey(30), 10, Transforms([Binarize("dynamic")]))
    stale = loader.epoch()
    next(stale)
    loader.epoch()
    with pytest.raises(RuntimeError, match="after the next epoch was drawn"):
        next(stale)


def test_a_dense_draw_into_a_buffer_equals_a_fresh_one():
    grey = torch.full((20, 5), 0.5)  # every pixel uncertain: the dense draw
    binarization = DynamicBinarization(grey)
    assert not binarization.sparse
    torch.manual_seed(3)
    fresh = binarization.draw()
    torch.manual_seed(3)
    buffer = torch.empty_like(grey)
    assert binarization.draw(out=buffer) is buffer
    assert torch.equal(buffer, fresh)
    assert set(buffer.unique().tolist()) <= {0.0, 1.0}
