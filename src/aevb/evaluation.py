"""Evaluation of a trained model on held-out data."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor

from aevb.models import VAE
from aevb.objectives import SGVBB


@contextmanager
def fixed_randomness(seed: int, device: torch.device):
    """Run a block with its own seeded random stream, leaving the global streams untouched.

    Evaluations are then repeatable and a training run resumed mid-way draws exactly the
    same random numbers as one that never stopped.
    """
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type):
        torch.manual_seed(seed)
        yield


@torch.no_grad()
def evaluate_elbo(
    model: VAE, x: Tensor, batch_size: int = 10_000, seed: int = 0
) -> dict[str, float]:
    """Single-sample SGVB-B estimate of the ELBO on x: (N, data_dim), nats per example.

    Returns ``elbo``, ``reconstruction`` and ``kl`` (means over the N rows). Uses its own
    random stream seeded with ``seed``; the model is put in eval mode for the call.
    """
    if len(x) == 0:
        raise ValueError("cannot evaluate on an empty data split")
    objective = SGVBB(num_samples=1)
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=x.device)
    with fixed_randomness(seed, x.device):
        for start in range(0, len(x), batch_size):
            batch = x[start : start + batch_size]
            terms = objective(model, batch)
            totals += torch.stack((terms.elbo, terms.reconstruction, terms.kl)).double() * len(
                batch
            )
    model.train(was_training)
    elbo, reconstruction, kl = (totals / len(x)).tolist()
    return {"elbo": elbo, "reconstruction": reconstruction, "kl": kl}
