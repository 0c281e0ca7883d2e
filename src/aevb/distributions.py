"""Probability distributions used by the model, as ``torch.distributions`` objects.

Every constructor here switches argument validation off: validation checks constraints with
``.all()`` on every call, which is a host synchronisation inside the training step. The
networks produce parameters in range by construction (log-variances, logits, softplus scales).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Bernoulli, Distribution, Independent, Normal, kl_divergence

__all__ = [
    "bernoulli",
    "diagonal_gaussian",
    "gaussian",
    "kl_per_dimension",
    "standard_normal",
]


def diagonal_gaussian(loc: Tensor, log_variance: Tensor) -> Independent:
    """N(loc, diag exp(log_variance)) over the last dimension. Shapes: (..., D)."""
    return Independent(Normal(loc, torch.exp(0.5 * log_variance), validate_args=False), 1)


def gaussian(loc: Tensor, scale: Tensor | float) -> Independent:
    """Gaussian likelihood with standard deviation ``scale`` (a tensor or the fixed σ).

    ``loc``: (..., D). The event is the last dimension, so ``log_prob`` sums over it (nats).
    """
    if not isinstance(scale, Tensor):
        scale = torch.full_like(loc, float(scale))
    return Independent(Normal(loc, scale, validate_args=False), 1)


def bernoulli(logits: Tensor) -> Independent:
    """Bernoulli likelihood parameterised by logits (never probabilities). Shapes: (..., D)."""
    return Independent(Bernoulli(logits=logits, validate_args=False), 1)


def standard_normal(
    latent_dim: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> Independent:
    """The prior p(z) = N(0, I) over ``latent_dim`` dimensions."""
    zeros = torch.zeros(latent_dim, device=device, dtype=dtype)
    return Independent(Normal(zeros, torch.ones_like(zeros), validate_args=False), 1)


def kl_per_dimension(posterior: Distribution, prior: Distribution) -> Tensor:
    """Analytic KL(q ‖ p) of factorised Gaussians, per latent dimension: (..., D) nats.

    For q = N(μ, σ²) and p = N(0, 1) this is ½ (μ² + σ² − 1 − log σ²) (paper, Appendix B).
    """
    return kl_divergence(_base(posterior), _base(prior))


def _base(distribution: Distribution) -> Distribution:
    return distribution.base_dist if isinstance(distribution, Independent) else distribution
