"""Fixtures of the reliability tests."""

from __future__ import annotations

import pytest

from aevb.runs import TrainConfig, train


@pytest.fixture(scope="module")
def trained(tmp_path_factory, digits):
    """A finished one-epoch run on digits; tests copy it (``helpers.copy_run``) to change it."""
    folder = tmp_path_factory.mktemp("trained") / "run"
    config = TrainConfig(
        dataset="digits", latent_dim=4, hidden=(32,), epochs=1, batch_size=64, device="cpu", seed=0
    )
    train(config, folder, dataset=digits, progress=False)
    return folder
