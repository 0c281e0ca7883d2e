"""Constructors of the ``torch.distributions`` objects the built-in parts return.

Every constructor here switches argument validation off: validation checks constraints with
``.all()`` on every call, which is a host synchronisation inside the training step. The heads
(:mod:`aevb.heads`) produce parameters in range by construction (log-variances, logits,
softplus scales).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import (
    Bernoulli,
    Categorical,
    Distribution,
    Independent,
    MultivariateNormal,
    Normal,
    constraints,
)

__all__ = [
    "LEVELS",
    "DiscretizedLogisticMixture",
    "EightBitCategorical",
    "SampledPosterior",
    "bernoulli",
    "diagonal_gaussian",
    "discretized_logistic_mixture",
    "eight_bit",
    "eight_bit_categorical",
    "full_covariance_gaussian",
    "gaussian",
    "is_factorised",
    "standard_normal",
    "support_is_binary",
    "support_is_eight_bit",
]

# Values of an 8-bit channel: k/255 for k = 0…255, the [0, 1] scale every image dataset is
# loaded on.
LEVELS = 256
# Tolerance on k/255 when reading float32 values back as levels (they are exact to 1e-7).
_LEVEL_TOLERANCE = 1e-3


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
    like a Bernoulli: its support holds 0 and 1 but neither ½ nor 1/255 (an 8-bit level).
    Read from ``.support``, so it works for any ``torch.distributions`` object; ``like`` is a
    value of its shape and device."""
    support = distribution.support
    half = torch.full_like(like, 0.5, dtype=torch.get_default_dtype())
    level = torch.full_like(half, 1 / (LEVELS - 1))
    if not bool(support.check(torch.ones_like(half)).all()):
        return False
    return not bool(support.check(half).any()) and not bool(support.check(level).any())


class _EightBit(constraints.Constraint):
    """Values k/255, k = 0…255: 8-bit data on aevb's [0, 1] scale."""

    is_discrete = True

    def check(self, value: Tensor) -> Tensor:
        level = value * (LEVELS - 1)
        return (value >= 0) & (value <= 1) & ((level - level.round()).abs() < _LEVEL_TOLERANCE)


eight_bit = _EightBit()


def levels_of(value: Tensor) -> Tensor:
    """The integer level k of each value k/255: long tensor of value's shape."""
    return (value * (LEVELS - 1)).round().long().clamp(0, LEVELS - 1)


def support_is_eight_bit(distribution: Distribution) -> bool:
    """Whether ``distribution`` (a likelihood p(x|z)) is over 8-bit values k/255."""
    support = distribution.support
    return getattr(support, "base_constraint", support) is eight_bit


class DiscretizedLogisticMixture(Distribution):
    """A mixture of K logistic distributions discretised to the 256 levels k/255 (Salimans et
    al. 2017, PixelCNN++), one independent mixture per value (batch shape = the values').

    The level k takes the logistic's mass on [k/255 − 1/510, k/255 + 1/510], with the
    outer levels taking the tails (−∞ and +∞): the 256 probabilities sum to one exactly.
    Parameters (..., K): ``logits`` of the mixture weights, ``loc`` μ on the [0, 1] scale, and
    ``log_scale`` log s.
    """

    arg_constraints: ClassVar[dict] = {}
    support = eight_bit

    def __init__(self, logits: Tensor, loc: Tensor, log_scale: Tensor):
        self.logits, self.loc, self.log_scale = logits, loc, log_scale
        super().__init__(loc.shape[:-1], validate_args=False)

    def log_prob(self, value: Tensor) -> Tensor:
        """log P(x) for x = k/255: (...) nats."""
        x = value.unsqueeze(-1)
        inverse_scale = torch.exp(-self.log_scale)
        half_bin = 0.5 / (LEVELS - 1)
        upper = inverse_scale * (x + half_bin - self.loc)
        lower = inverse_scale * (x - half_bin - self.loc)
        # log(σ(a) − σ(b)) for a > b, exactly: a − softplus(a) − softplus(b) + log(1 − e^(b−a))
        # (no difference of two probabilities that round to the same float).
        inside = upper - F.softplus(upper) - F.softplus(lower) + _log1mexp(upper - lower)
        lowest = F.logsigmoid(upper)  # level 0 takes (−∞, 1/510]
        highest = F.logsigmoid(-lower)  # level 255 takes [1 − 1/510, ∞)
        level = levels_of(x)
        log_mass = torch.where(
            level == 0, lowest, torch.where(level == LEVELS - 1, highest, inside)
        )
        return torch.logsumexp(F.log_softmax(self.logits, -1) + log_mass, -1)

    def sample(self, sample_shape: torch.Size | tuple = ()) -> Tensor:
        """Draws on the grid k/255: a component, then a logistic draw, rounded and clipped."""
        shape = torch.Size(sample_shape)
        with torch.no_grad():
            component = Categorical(logits=self.logits, validate_args=False).sample(shape)
            pick = component.unsqueeze(-1)
            loc = self.loc.expand(*shape, *self.loc.shape).gather(-1, pick).squeeze(-1)
            log_scale = self.log_scale.expand(*shape, *self.log_scale.shape)
            log_scale = log_scale.gather(-1, pick).squeeze(-1)
            u = torch.rand_like(loc).clamp(1e-6, 1 - 1e-6)
            draw = loc + torch.exp(log_scale) * (torch.log(u) - torch.log1p(-u))
            return (draw.clamp(0, 1) * (LEVELS - 1)).round() / (LEVELS - 1)

    @property
    def mean(self) -> Tensor:
        """E[x] = Σ_k (1/255) P(x ≥ k/255) over the levels k = 1…255: exact."""
        inverse_scale = torch.exp(-self.log_scale)
        weights = torch.softmax(self.logits, -1)
        total = torch.zeros_like(self.loc[..., 0])
        for level in range(1, LEVELS):
            edge = (level - 0.5) / (LEVELS - 1)
            above = torch.sigmoid(inverse_scale * (self.loc - edge))  # P(x ≥ level/255)
            total = total + (weights * above).sum(-1)
        return total / (LEVELS - 1)


class EightBitCategorical(Distribution):
    """A 256-way categorical over the levels k/255 of each value (batch shape = the values');
    ``logits`` (..., 256)."""

    arg_constraints: ClassVar[dict] = {}
    support = eight_bit

    def __init__(self, logits: Tensor):
        self.logits = logits
        super().__init__(logits.shape[:-1], validate_args=False)

    def log_prob(self, value: Tensor) -> Tensor:
        log_p = F.log_softmax(self.logits, -1)
        level = levels_of(value).unsqueeze(-1)
        shape = torch.broadcast_shapes(log_p.shape[:-1], level.shape[:-1])
        return log_p.expand(*shape, LEVELS).gather(-1, level.expand(*shape, 1)).squeeze(-1)

    def sample(self, sample_shape: torch.Size | tuple = ()) -> Tensor:
        categorical = Categorical(logits=self.logits, validate_args=False)
        return categorical.sample(torch.Size(sample_shape)).to(self.logits.dtype) / (LEVELS - 1)

    @property
    def mean(self) -> Tensor:
        grid = torch.arange(LEVELS, dtype=self.logits.dtype, device=self.logits.device)
        return (torch.softmax(self.logits, -1) * grid).sum(-1) / (LEVELS - 1)


def _log1mexp(difference: Tensor) -> Tensor:
    """log(1 − e^(−d)) for d > 0, accurate for small and large d (Mächler 2012)."""
    return torch.where(
        difference < math.log(2),
        torch.log(-torch.expm1(-difference)),
        torch.log1p(-torch.exp(-difference)),
    )


def discretized_logistic_mixture(
    logits: Tensor, loc: Tensor, log_scale: Tensor, event_dims: int
) -> Independent:
    """8-bit likelihood: a discretised logistic mixture per value; parameters
    (..., *event_shape, K), the last ``event_dims`` of the values' dimensions the event."""
    return Independent(DiscretizedLogisticMixture(logits, loc, log_scale), event_dims)


def eight_bit_categorical(logits: Tensor, event_dims: int) -> Independent:
    """8-bit likelihood: a 256-way categorical per value; ``logits`` (..., *event_shape, 256)."""
    return Independent(EightBitCategorical(logits), event_dims)


# Draws behind the mean and standard deviation of a :class:`SampledPosterior` (Monte Carlo:
# they have no closed form); the mean's error is then about σ/8.
MOMENT_SAMPLES = 64


class SampledPosterior(Distribution):
    """A posterior q(z|x) built by transforming standard-normal noise (a flow, a hierarchy of
    stochastic layers), whose reparameterised draws come with their log-density in one pass.

    Subclasses give :meth:`push_noise`: z and log q(z|x) from ε ~ N(0, I) of shape
    (..., B, D) (or (k, 1, D), shared by every row), and :meth:`log_prob` for other z.
    :func:`aevb.objectives.latent_samples` takes the density with the draw; the mean and
    standard deviation are estimated from :data:`MOMENT_SAMPLES` draws of a generator seeded
    for the purpose, so they are the same on every call and leave the global stream alone.
    Batch shape (B,), event shape (D,).
    """

    arg_constraints: ClassVar[dict] = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, batch_shape: torch.Size, latent_dim: int, like: Tensor):
        super().__init__(batch_shape, torch.Size([latent_dim]), validate_args=False)
        self._like = like  # gives the draws' device and dtype
        self._moments: tuple[Tensor, Tensor] | None = None

    def push_noise(self, noise: Tensor) -> tuple[Tensor, Tensor]:
        """z (..., B, D) and log q(z|x) (..., B) from standard-normal ε (..., B or 1, D)."""
        raise NotImplementedError

    def rsample_and_log_prob(self, sample_shape: torch.Size | tuple = ()) -> tuple[Tensor, Tensor]:
        """Reparameterised draws z (*sample_shape, B, D) and their log q(z|x)."""
        shape = (*sample_shape, *self.batch_shape, *self.event_shape)
        noise = torch.randn(shape, device=self._like.device, dtype=self._like.dtype)
        return self.push_noise(noise)

    def rsample(self, sample_shape: torch.Size | tuple = ()) -> Tensor:
        return self.rsample_and_log_prob(sample_shape)[0]

    def _moments_of_draws(self) -> tuple[Tensor, Tensor]:
        if self._moments is None:
            like = self._like
            generator = torch.Generator(like.device).manual_seed(0)
            shape = (MOMENT_SAMPLES, *self.batch_shape, *self.event_shape)
            noise = torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)
            with torch.no_grad():
                z, _ = self.push_noise(noise)
            self._moments = (z.mean(0), z.std(0))
        return self._moments

    @property
    def mean(self) -> Tensor:
        """E_q[z], estimated from :data:`MOMENT_SAMPLES` draws, the same ones on every call."""
        return self._moments_of_draws()[0]

    @property
    def stddev(self) -> Tensor:
        """Standard deviation of each z_j, from the same draws as :attr:`mean`."""
        return self._moments_of_draws()[1]

    @property
    def variance(self) -> Tensor:
        return self.stddev.square()
