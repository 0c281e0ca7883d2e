"""Probability distributions used by the model, as ``torch.distributions`` objects.

Every constructor here switches argument validation off: validation checks constraints with
``.all()`` on every call, which is a host synchronisation inside the training step. The
networks produce parameters in range by construction (log-variances, logits, softplus scales).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import (
    Bernoulli,
    Distribution,
    Independent,
    MultivariateNormal,
    Normal,
)

__all__ = [
    "bernoulli",
    "diagonal_gaussian",
    "full_covariance_gaussian",
    "gaussian",
    "is_factorised",
    "kl_per_dimension",
    "kl_to_standard_normal",
    "standard_normal",
]


def diagonal_gaussian(loc: Tensor, log_variance: Tensor) -> Independent:
    """N(loc, diag exp(log_variance)) over the last dimension. Shapes: (..., D)."""
    return Independent(Normal(loc, torch.exp(0.5 * log_variance), validate_args=False), 1)


def full_covariance_gaussian(loc: Tensor, scale_tril: Tensor) -> MultivariateNormal:
    """N(loc, L Lᵀ) with L = ``scale_tril`` lower-triangular, positive diagonal.

    Shapes: loc (..., D), scale_tril (..., D, D). ``rsample`` is z = loc + L ε.
    """
    return MultivariateNormal(loc, scale_tril=scale_tril, validate_args=False)


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

    For q = N(μ, σ²) and p = N(m, s²) this is log(s/σ) + (σ² + (μ − m)²) / (2s²) − ½, which
    for p = N(0, 1) is ½ (μ² + σ² − 1 − log σ²) (paper, Appendix B). Written out rather than
    ``kl_divergence``, whose type dispatch ``torch.compile`` cannot trace (it is checked
    against ``kl_divergence`` in the tests).
    """
    q, p = _base(posterior), _base(prior)
    variance_ratio = (q.scale / p.scale).square()
    return 0.5 * (variance_ratio + ((q.loc - p.loc) / p.scale).square() - 1 - variance_ratio.log())


def is_factorised(distribution: Distribution) -> bool:
    """True for a diagonal Gaussian, whose density and KL split over latent dimensions."""
    return isinstance(distribution, Independent) and isinstance(distribution.base_dist, Normal)


def kl_to_standard_normal(posterior: Distribution) -> Tensor:
    """Analytic KL(q ‖ N(0, I)) in nats, shape (...) for q with batch shape (...).

    Diagonal q: the sum of :func:`kl_per_dimension`. Full covariance Σ = L Lᵀ:
    ½ (tr Σ + μᵀμ − D − log det Σ), with tr Σ = ‖L‖²_F and log det Σ = 2 Σ_j log L_jj.
    Written out because torch registers no KL between a ``MultivariateNormal`` and an
    ``Independent(Normal)``.
    """
    if is_factorised(posterior):
        base = posterior.base_dist
        variance = base.scale.square()
        return 0.5 * (base.loc.square() + variance - 1 - variance.log()).sum(-1)
    if isinstance(posterior, MultivariateNormal):
        scale_tril = posterior.scale_tril
        trace = scale_tril.square().sum((-2, -1))
        log_det = 2 * scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        dim = posterior.loc.shape[-1]
        return 0.5 * (trace + posterior.loc.square().sum(-1) - dim - log_det)
    raise TypeError(f"no analytic KL to N(0, I) for {type(posterior).__name__}")


def _base(distribution: Distribution) -> Distribution:
    return distribution.base_dist if isinstance(distribution, Independent) else distribution
