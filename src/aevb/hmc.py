"""Hamiltonian Monte Carlo on the latent posterior p_θ(z|x) ∝ p_θ(x|z) p(z), batched.

Every (chain, datapoint) pair is an independent chain with its own step size; one call of
:meth:`HMC.transition` moves them all with the same number of leapfrog steps, so the work is
a handful of batched decoder passes. Used by Monte Carlo EM (:mod:`aevb.mcem`) and by the
marginal-likelihood estimator that needs no encoder (:func:`aevb.evaluation.hmc_proposal`).

Hand-written: torch has no HMC, and the samplers of Pyro/NumPyro adapt one step size per
model, where here each datapoint's posterior has its own scale.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.distributions import Distribution

from aevb.models import VAE

# Log-density and its gradient at z: (..., D) → ((...), (..., D)).
LogDensity = Callable[[Tensor], tuple[Tensor, Tensor]]


def log_joint(model: VAE, x: Tensor, prior: Distribution | None = None) -> LogDensity:
    """z ↦ (log p_θ(x, z), ∇_z log p_θ(x, z)) for x: (batch, *data_shape), z: (..., batch, D).

    ``prior`` is ``model.prior()`` unless given (computed once, outside the leapfrog steps).
    The gradient is taken with respect to z only; no graph is kept.
    """
    prior = model.prior() if prior is None else prior

    def density(z: Tensor) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            log_density = model.likelihood(z).log_prob(x) + prior.log_prob(z)
            (grad,) = torch.autograd.grad(log_density.sum(), z)
        return log_density.detach(), grad

    return density


@dataclass
class HMCState:
    """Chains at positions ``z`` (..., D) with their log-density and its gradient there."""

    z: Tensor
    log_density: Tensor
    grad: Tensor


class HMC:
    """HMC with ``num_leapfrog`` leapfrog steps and per-chain step sizes adapted toward an
    acceptance probability of ``target_accept`` (the paper's MCEM: 10 steps, 90%).

    Adaptation is a Robbins–Monro step on the log step size, log ε += rate·(α − target), with
    α = min(1, exp(−ΔH)) the chain's acceptance probability. Adapting while sampling breaks
    exact detailed balance, so estimators call :meth:`transition` with ``adapt=False`` after
    their burn-in.
    """

    def __init__(
        self,
        num_leapfrog: int = 10,
        target_accept: float = 0.9,
        adaptation_rate: float = 0.5,
        min_step_size: float = 1e-4,
        max_step_size: float = 2.0,
    ):
        if num_leapfrog < 1:
            raise ValueError(f"num_leapfrog must be at least 1, got {num_leapfrog}")
        if not 0 < target_accept < 1:
            raise ValueError(f"target_accept must be in (0, 1), got {target_accept}")
        self.num_leapfrog = num_leapfrog
        self.target_accept = target_accept
        self.adaptation_rate = adaptation_rate
        self.step_size_range = (min_step_size, max_step_size)

    @staticmethod
    def start(density: LogDensity, z: Tensor) -> HMCState:
        log_density, grad = density(z)
        return HMCState(z.detach(), log_density, grad)

    def transition(
        self, density: LogDensity, state: HMCState, step_size: Tensor, adapt: bool = True
    ) -> tuple[HMCState, Tensor, Tensor]:
        """One HMC transition of every chain.

        ``step_size``: (...), one per chain, updated in place when ``adapt``. Returns the new
        state, the acceptance probabilities α (...) and the accepted mask (...).
        """
        eps = step_size.unsqueeze(-1)
        momentum = torch.randn_like(state.z)
        z, grad = state.z, state.grad
        p = momentum + 0.5 * eps * grad
        for leap in range(self.num_leapfrog):
            z = z + eps * p
            log_density, grad = density(z)
            if leap < self.num_leapfrog - 1:
                p = p + eps * grad
        p = p + 0.5 * eps * grad
        # log α = −ΔH with H = −log p(x, z) + ½|p|²; a non-finite proposal is rejected.
        log_ratio = (log_density - 0.5 * p.square().sum(-1)) - (
            state.log_density - 0.5 * momentum.square().sum(-1)
        )
        log_ratio = torch.nan_to_num(log_ratio, nan=-torch.inf)
        accept_prob = log_ratio.clamp(max=0).exp()
        accepted = torch.rand_like(accept_prob) < accept_prob
        keep = accepted.unsqueeze(-1)
        new_state = HMCState(
            torch.where(keep, z, state.z),
            torch.where(accepted, log_density, state.log_density),
            torch.where(keep, grad, state.grad),
        )
        if adapt:
            step_size.mul_(torch.exp(self.adaptation_rate * (accept_prob - self.target_accept)))
            step_size.clamp_(*self.step_size_range)
        return new_state, accept_prob, accepted
