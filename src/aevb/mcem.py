"""Monte Carlo EM with Hamiltonian Monte Carlo posterior sampling: the paper's second baseline.

Each datapoint keeps a persistent latent sample z_i. A step takes a minibatch, moves its
samples with one HMC transition on log p_θ(x_i, z) (``num_leapfrog`` = 10 leapfrog steps,
each datapoint's step size adapted toward 90% acceptance), then takes ``weight_updates`` = 5
gradient steps on θ that maximise (1/M) Σ_i log p_θ(x_i | z_i) with the samples held fixed
(the M-step of a stochastic EM). Only the decoder is trained; a VAE's encoder, if any, is
ignored. Unlike AEVB it has per-datapoint state, so it is not an online algorithm — the
reason the paper ran it only on the small training set.
"""

from __future__ import annotations

import torch
from torch import Tensor

from aevb.hmc import HMC, log_joint
from aevb.models import VAE


class MonteCarloEM:
    """Fits ``model``'s decoder to ``num_train`` datapoints by HMC-based Monte Carlo EM.

    ``optimizer`` must hold the decoder's parameters. ``step(x, index)`` processes one
    minibatch x: (M, data_dim) whose rows are the datapoints ``index`` (M,) of the training
    set; ``acceptance_rate`` is the mean HMC acceptance probability since the last
    :meth:`reset_acceptance` (a device tensor, read it at sync points only).
    """

    def __init__(
        self,
        model: VAE,
        optimizer: torch.optim.Optimizer,
        num_train: int,
        num_leapfrog: int = 10,
        weight_updates: int = 5,
        target_accept: float = 0.9,
        initial_step_size: float = 0.05,
    ):
        if weight_updates < 1:
            raise ValueError(f"weight_updates must be at least 1, got {weight_updates}")
        self.model = model
        self.optimizer = optimizer
        self.sampler = HMC(num_leapfrog=num_leapfrog, target_accept=target_accept)
        self.weight_updates = weight_updates
        self.z = model.prior.sample((num_train,))  # (N, D): persistent chains
        self.step_size = torch.full_like(self.z[:, 0], initial_step_size)
        self._accept_sum = torch.zeros((), device=self.z.device)
        self._accept_count = 0

    def step(self, x: Tensor, index: Tensor) -> Tensor:
        """One HMC transition for the rows ``index``, then the θ updates. Returns the mean
        log p_θ(x|z) of the batch before the last update (nats per example, detached)."""
        density = log_joint(self.model, x)
        state = self.sampler.start(density, self.z[index])
        step_size = self.step_size[index]
        state, accept_prob, _ = self.sampler.transition(density, state, step_size)
        self.z[index] = state.z
        self.step_size[index] = step_size
        self._accept_sum += accept_prob.sum()
        self._accept_count += len(index)
        z = state.z
        for _ in range(self.weight_updates):
            self.optimizer.zero_grad(set_to_none=True)
            log_likelihood = self.model.likelihood(z).log_prob(x).mean()
            (-log_likelihood).backward()
            self.optimizer.step()
        return log_likelihood.detach()

    @property
    def acceptance_rate(self) -> Tensor:
        return self._accept_sum / max(self._accept_count, 1)

    def reset_acceptance(self) -> None:
        self._accept_sum.zero_()
        self._accept_count = 0
