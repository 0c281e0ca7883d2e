"""Shared fixtures: the real-data folder, a small real dataset, quick training settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from aevb.builders import mlp
from aevb.data import load_dataset
from aevb.runs import TrainConfig


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` are skipped on machines without a CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def shared_data_dir() -> Path | None:
    """``AEVB_DATA_DIR``, else ``../shared/data`` beside the repository, if it exists."""
    candidates = [os.environ.get("AEVB_DATA_DIR"), Path(__file__).parents[2] / "shared" / "data"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "mnist").is_dir():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def optional_data_dir() -> Path | None:
    """The real datasets' folder, or None where there is none (the test decides what to skip)."""
    return shared_data_dir()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    found = shared_data_dir()
    if found is None:
        pytest.skip("real datasets not found: set AEVB_DATA_DIR or place ../shared/data")
    return found


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's bundled 8×8 digits (real data, no network)."""
    return load_dataset("digits")


@pytest.fixture
def quick_config() -> TrainConfig:
    """A small, fast model on digits."""
    return TrainConfig(
        dataset="digits", latent_dim=4, hidden=(32,), epochs=3, batch_size=64, device="cpu", seed=0
    )


@pytest.fixture
def single_thread():
    """Run a test on one thread, restored afterwards: small tensors and many tiny steps run
    faster single-threaded on a shared 2-core machine (up to 15× in test_exactness)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def model_and_batch():
    """A small float64 VAE (12 → 16 → 3) and a batch of 20 binary rows."""
    torch.manual_seed(0)
    model = mlp((12,), latent_dim=3, hidden=(16,)).double()
    x = torch.bernoulli(torch.full((20, 12), 0.4, dtype=torch.float64))
    return model, x


class _Exploit:
    """Unpickling this creates a marker file: proof that code from the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def exploit(tmp_path):
    """A malicious object for pickle-based formats, and the file its unpickling would create."""
    marker = tmp_path / "pwned"
    return _Exploit(marker), marker
