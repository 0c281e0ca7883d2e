"""Constructors of the ``torch.distributions`` objects the built-in parts return.

Every constructor here switches argument validation off: validation checks constraints with
``.all()`` on every call, which is a host synchronisation inside the training step. The heads
(:mod:`aevb.heads`) produce parameters in range by construction (log-variances, logits,
softplus scales).
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
    "standard_normal",
    "support_is_binary",
]


def diagonal_gaussian(loc: Tensor, log_variance: Tensor) -> Independent:
    """N(loc, diag exp(log_variance)) over the last dimension. Shapes: (..., D)."""
    return Independent(Normal(loc, torch.exp(0.5 * log_variance), validate_args=False), 1)


def full_covariance_gaussian(loc: Tensor, scale_tril: Tensor) -> MultivariateNormal:
    """N(loc, L Lᵀ) with L = ``scale_tril`` lower-triangular, positive diagonal.

    Shapes: loc (..., D), scale_tril (..., D, D). ``rsample`` is z = loc + L ε.
    """
    return MultivariateNormal(loc, scale_tril=scale_tril, validate_args=False)


def gaussian(loc: Tensor, scale: Tensor | float, event_dims: int = 1) -> Independent:
    """Gaussian likelihood with standard deviation ``scale`` (a tensor or the fixed σ).

    ``loc``: (..., *event_shape) with ``event_dims`` = len(event_shape), so ``log_prob`` sums
    over the event (nats).
    """
    if not isinstance(scale, Tensor):
        scale = torch.full_like(loc, float(scale))
    return Independent(Normal(loc, scale, validate_args=False), event_dims)


def bernoulli(logits: Tensor, event_dims: int = 1) -> Independent:
    """Bernoulli likelihood parameterised by logits (never probabilities).

    ``logits``: (..., *event_shape) with ``event_dims`` = len(event_shape).
    """
    return Independent(Bernoulli(logits=logits, validate_args=False), event_dims)


def standard_normal(
    latent_dim: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> Independent:
    """N(0, I) over ``latent_dim`` dimensions."""
    zeros = torch.zeros(latent_dim, device=device, dtype=dtype)
    return Independent(Normal(zeros, torch.ones_like(zeros), validate_args=False), 1)


def is_factorised(distribution: Distribution) -> bool:
    """True for a diagonal Gaussian: ``Independent(Normal)`` over one dimension, whose density
    and KL split over latent dimensions."""
    return (
        isinstance(distribution, Independent)
        and isinstance(distribution.base_dist, Normal)
        and distribution.reinterpreted_batch_ndims == 1
    )


def support_is_binary(distribution: Distribution, like: Tensor) -> bool:
    """Whether ``distribution`` (a likelihood p(x|z)) is a distribution over {0, 1} values,
    like a Bernoulli: its support holds 0 and 1 but not ½. Read from ``.support``, so it works
    for any ``torch.distributions`` object; ``like`` is a value of its shape and device."""
    support = distribution.support
    half = torch.full_like(like, 0.5, dtype=torch.get_default_dtype())
    return bool(support.check(torch.ones_like(half)).all()) and not bool(support.check(half).any())
