"""Variational objectives as small interchangeable objects over one shared computation.

Every objective draws ``num_samples`` (L) reparameterised latents per datapoint with
:func:`latent_samples`, then combines the same three log-densities differently:

* **SGVB estimator A** (paper eq. 6): (1/L) Σ_l [log p(x, z_l) − log q(z_l|x)], KL by Monte Carlo.
* **SGVB estimator B** (paper eq. 7): (1/L) Σ_l log p(x|z_l) − KL(q(z|x) ‖ p(z)), KL analytic.

Reduction, everywhere in aevb: a per-example value in nats is the sum over data (and latent)
dimensions; a batch value is the mean over the batch. The paper's minibatch estimator
(N/M) Σ_i differs only by the constant factor N, which rescales the learning rate.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from torch import Tensor
from torch.distributions import Distribution

from aevb.distributions import kl_per_dimension
from aevb.models import VAE

__all__ = [
    "OBJECTIVES",
    "SGVBA",
    "SGVBB",
    "LatentSamples",
    "ObjectiveTerms",
    "kl_weight",
    "latent_samples",
    "make_objective",
]


@dataclass
class LatentSamples:
    """Reparameterised draws z ~ q(z|x) and the densities every objective needs.

    Shapes: ``z`` (L, batch, latent_dim); ``log_likelihood`` (L, batch) = log p(x|z) summed over
    data dimensions, nats.
    """

    posterior: Distribution
    z: Tensor
    log_likelihood: Tensor


def latent_samples(model: VAE, x: Tensor, num_samples: int = 1) -> LatentSamples:
    """Encode x: (batch, data_dim), draw L = ``num_samples`` latents per row, decode them."""
    posterior = model.posterior(x)
    z = posterior.rsample((num_samples,))
    return LatentSamples(posterior, z, model.likelihood(z).log_prob(x))


@dataclass
class ObjectiveTerms:
    """Batch means, in nats per example. ``loss`` is what the optimiser minimises.

    ``elbo = reconstruction − kl``; ``loss = −(reconstruction − β · kl)`` (with free bits,
    the KL of each latent dimension in the loss is at least the free-bits threshold).
    ``kl_per_dim`` (latent_dim,) is the batch-mean KL of each latent dimension.
    """

    loss: Tensor
    elbo: Tensor
    reconstruction: Tensor
    kl: Tensor
    kl_per_dim: Tensor


class _SGVB:
    """Shared machinery of the two SGVB estimators; subclasses supply the KL per dimension."""

    name: str

    def __init__(self, num_samples: int = 1, free_bits: float = 0.0):
        if num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {num_samples}")
        if free_bits < 0:
            raise ValueError(f"free_bits must be non-negative, got {free_bits}")
        self.num_samples = int(num_samples)
        self.free_bits = float(free_bits)

    def kl_per_example_and_dim(self, model: VAE, samples: LatentSamples) -> Tensor:
        """KL estimate per example and latent dimension: (batch, latent_dim) nats."""
        raise NotImplementedError

    def __call__(self, model: VAE, x: Tensor, beta: float | Tensor = 1.0) -> ObjectiveTerms:
        """Evaluate on x: (batch, data_dim) with KL weight ``beta`` (β = 1 is the ELBO)."""
        samples = latent_samples(model, x, self.num_samples)
        reconstruction = samples.log_likelihood.mean()
        kl_per_dim = self.kl_per_example_and_dim(model, samples).mean(0)
        kl = kl_per_dim.sum()
        # Free bits (Kingma et al. 2016): no pressure on a dimension's batch-mean KL below λ.
        kl_in_loss = kl_per_dim.clamp(min=self.free_bits).sum() if self.free_bits else kl
        loss = beta * kl_in_loss - reconstruction
        return ObjectiveTerms(loss, reconstruction - kl, reconstruction, kl, kl_per_dim)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_samples={self.num_samples}, free_bits={self.free_bits})"


class SGVBA(_SGVB):
    """SGVB estimator A: the KL term by Monte Carlo, log q(z|x) − log p(z) at the sampled z.

    Valid for any posterior and prior with densities; noisier than B where B applies.
    """

    name = "sgvb-a"

    def kl_per_example_and_dim(self, model: VAE, samples: LatentSamples) -> Tensor:
        # Both q (diagonal) and p (standard normal) factorise over latent dimensions, so the
        # Monte Carlo KL splits per dimension too; averaged over the L samples.
        z = samples.z
        log_q = samples.posterior.base_dist.log_prob(z)
        log_p = model.prior.base_dist.log_prob(z)
        return (log_q - log_p).mean(0)


class SGVBB(_SGVB):
    """SGVB estimator B: the KL term in closed form, ½ Σ (μ² + σ² − 1 − log σ²).

    Valid when KL(q ‖ p) is analytic (Gaussian posterior and prior); lower variance than A.
    """

    name = "sgvb-b"

    def kl_per_example_and_dim(self, model: VAE, samples: LatentSamples) -> Tensor:
        return kl_per_dimension(samples.posterior, model.prior)


OBJECTIVES: dict[str, type[_SGVB]] = {"sgvb-a": SGVBA, "sgvb-b": SGVBB}


def make_objective(name: str, num_samples: int = 1, free_bits: float = 0.0) -> _SGVB:
    """The objective called ``name`` (one of :data:`OBJECTIVES`)."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; choose from {sorted(OBJECTIVES)}")
    return OBJECTIVES[name](num_samples=num_samples, free_bits=free_bits)


def kl_weight(step: int, warmup_steps: int, beta: float = 1.0, beta_start: float = 0.0) -> float:
    """KL weight at optimisation ``step`` (0-based): linear from ``beta_start`` to ``beta``.

    Reaches ``beta`` after ``warmup_steps`` steps and stays there; no warm-up when 0.
    """
    if warmup_steps <= 0 or step >= warmup_steps:
        return beta
    return beta_start + (beta - beta_start) * step / warmup_steps


def warn_if_warmup_incomplete(
    total_steps: int, warmup_steps: int, beta: float, beta_start: float
) -> None:
    """Warn when training stops after ``total_steps`` steps, before the KL warm-up ends."""
    if 0 < total_steps < warmup_steps:
        reached = kl_weight(total_steps, warmup_steps, beta, beta_start)
        warnings.warn(
            f"training ends after {total_steps} steps, before the KL warm-up "
            f"({warmup_steps} steps) completes: β reaches only {reached:.3g} of {beta:g}, so "
            "the objective optimised is not the ELBO",
            stacklevel=2,
        )
