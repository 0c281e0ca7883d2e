"""Two stochastic layers (Burda et al. 2015, section 5): p(x, z₁, z₂) = p(x|z₁) p(z₁|z₂) p(z₂)
with q(z₁, z₂|x) = q(z₁|x) q(z₂|z₁) (bottom-up), or with the ladder's top-down inference
(Sønderby et al. 2016): q(z₂|x) q(z₁|z₂, x), where q(z₁|z₂, x) merges the bottom-up estimate
of z₁ with the generative model's own p(z₁|z₂) by precision weighting.

The pair is one latent vector z = (z₁, z₂) to the rest of aevb, so the model is still
``VAE(encoder, decoder, prior)`` and the objectives, the importance sampler and the run
folder need nothing new:

* the **posterior head** (:class:`TwoLayerPosteriorHead`) takes the encoder network's
  parameters of q(z₁|x) and holds the network of q(z₂|z₁); the ladder's
  (:class:`LadderPosteriorHead`) takes the encoder's bottom-up estimate of z₁, holds the
  network from it to the estimate of z₂, and reads p(z₁|z₂) from the prior it is given;
* the **prior** (:class:`TwoLayerPrior`) is N(0, I) on z₂ and holds the network of
  p(z₁|z₂);
* the **decoder** sees z₁ only (:class:`FirstUnits` in front of its network).

The KL term has no closed form here and is estimated from the draws (:mod:`aevb.kl`).
Activity is counted per layer: :attr:`TwoLayerPosterior.layer_sizes`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, constraints

from aevb.distributions import SampledPosterior, diagonal_gaussian, standard_normal
from aevb.heads import LOG_VARIANCE_RANGE, Head
from aevb.networks import MLP

__all__ = [
    "FirstUnits",
    "LadderPosterior",
    "LadderPosteriorHead",
    "TwoLayerPosterior",
    "TwoLayerPosteriorHead",
    "TwoLayerPrior",
]

# Hidden layers between z₁ and z₂, both ways, in Burda et al.'s two-layer models.
DEFAULT_TOP_HIDDEN = (50, 50)


def _two_sizes(latent_dims: Sequence[int]) -> tuple[int, int]:
    """(d₁, d₂), checked: two positive layer sizes."""
    sizes = tuple(int(d) for d in latent_dims)
    if len(sizes) != 2 or min(sizes) < 1:
        raise ValueError(f"two positive layer sizes are needed, got {latent_dims!r}")
    return sizes[0], sizes[1]


def _gaussian(parameters: Tensor) -> Independent:
    """A diagonal Gaussian from (..., 2d): mean and log-variance (clamped as the heads')."""
    loc, log_variance = parameters.chunk(2, dim=-1)
    return diagonal_gaussian(loc, log_variance.clamp(*LOG_VARIANCE_RANGE))


class TwoLayerPosterior(SampledPosterior):
    """q(z₁, z₂|x) = q(z₁|x) q(z₂|z₁) over z = (z₁, z₂): batch (B,), event (d₁ + d₂,).

    ``bottom`` is q(z₁|x), a diagonal Gaussian with batch shape (B,); ``top(z₁)`` returns
    q(z₂|z₁), a diagonal Gaussian over d₂ for z₁ of any leading shape.
    """

    def __init__(self, bottom: Independent, top: Callable[[Tensor], Independent], top_dim: int):
        self.bottom, self.top = bottom, top
        self.layer_sizes = (bottom.event_shape[0], int(top_dim))
        super().__init__(bottom.batch_shape, sum(self.layer_sizes), bottom.mean)

    def push_noise(self, noise: Tensor) -> tuple[Tensor, Tensor]:
        d1 = self.layer_sizes[0]
        z1 = self.bottom.mean + self.bottom.stddev * noise[..., :d1]
        upper = self.top(z1)
        z2 = upper.mean + upper.stddev * noise[..., d1:]
        return torch.cat((z1, z2), -1), self.bottom.log_prob(z1) + upper.log_prob(z2)

    def log_prob(self, value: Tensor) -> Tensor:
        z1, z2 = value.split(self.layer_sizes, dim=-1)
        return self.bottom.log_prob(z1) + self.top(z1).log_prob(z2)


class _TwoLayerHead(Head):
    """What both posterior heads of two layers share: the encoder network outputs (..., 2d₁),
    a Gaussian over z₁ (mean and log-variance), and the head's own MLP (``hidden`` layers)
    maps ``UPWARD_INPUTS`` × d₁ values of it to the Gaussian over z₂."""

    UPWARD_INPUTS: ClassVar[int]

    def __init__(
        self,
        latent_dims: Sequence[int],
        hidden: Sequence[int] = DEFAULT_TOP_HIDDEN,
        activation: str = "tanh",
    ):
        super().__init__()
        self.latent_dims = d1, d2 = _two_sizes(latent_dims)
        self.parameter_shape = (2 * d1,)
        self.upward = MLP((self.UPWARD_INPUTS * d1,), hidden, (2 * d2,), activation)


class TwoLayerPosteriorHead(_TwoLayerHead):
    """Posterior head for two stochastic layers: the encoder network outputs the mean and
    log-variance of q(z₁|x); this head's MLP maps z₁ to q(z₂|z₁)."""

    UPWARD_INPUTS = 1

    def forward(self, parameters: Tensor) -> Distribution:
        return TwoLayerPosterior(
            _gaussian(parameters), lambda z1: _gaussian(self.upward(z1)), self.latent_dims[1]
        )


def precision_weighted(estimate: Independent, prior: Independent) -> Independent:
    """The ladder's merge of two diagonal Gaussians over one layer: the product of their
    densities, renormalised — precision σ⁻² = σ̂⁻² + σ_p⁻², mean (μ̂ σ̂⁻² + μ_p σ_p⁻²) σ²
    (in log space: log σ² = −logaddexp(−log σ̂², −log σ_p²), the weights sigmoids)."""
    log_var_hat = 2 * estimate.base_dist.scale.log()
    log_var_p = 2 * prior.base_dist.scale.log()
    log_variance = -torch.logaddexp(-log_var_hat, -log_var_p)
    weight = torch.sigmoid(log_var_p - log_var_hat)  # σ̂⁻² / (σ̂⁻² + σ_p⁻²)
    loc = weight * estimate.mean + (1 - weight) * prior.mean
    return diagonal_gaussian(loc, log_variance)


class LadderPosterior(SampledPosterior):
    """q(z₁, z₂|x) = q(z₂|x) q(z₁|z₂, x) over z = (z₁, z₂), sampled top-down: batch (B,),
    event (d₁ + d₂,).

    ``estimate1`` and ``top`` are the bottom-up Gaussians of z₁ and z₂ given x (``top`` is
    q(z₂|x)); ``downward(z₂)`` is the prior's p(z₁|z₂); q(z₁|z₂, x) is their precision-weighted
    merge (:func:`precision_weighted`), so every density here is closed-form, for draws and
    for any other z alike.
    """

    def __init__(
        self,
        estimate1: Independent,
        top: Independent,
        downward: Callable[[Tensor], Independent],
    ):
        self.estimate1, self.top, self.downward = estimate1, top, downward
        self.layer_sizes = (estimate1.event_shape[0], top.event_shape[0])
        super().__init__(estimate1.batch_shape, sum(self.layer_sizes), estimate1.mean)

    def lower(self, z2: Tensor) -> Independent:
        """q(z₁|z₂, x) for z₂ (..., B, d₂)."""
        return precision_weighted(self.estimate1, self.downward(z2))

    def push_noise(self, noise: Tensor) -> tuple[Tensor, Tensor]:
        d1 = self.layer_sizes[0]
        z2 = self.top.mean + self.top.stddev * noise[..., d1:]
        lower = self.lower(z2)
        z1 = lower.mean + lower.stddev * noise[..., :d1]
        return torch.cat((z1, z2), -1), lower.log_prob(z1) + self.top.log_prob(z2)

    def log_prob(self, value: Tensor) -> Tensor:
        z1, z2 = value.split(self.layer_sizes, dim=-1)
        return self.lower(z2).log_prob(z1) + self.top.log_prob(z2)


class LadderPosteriorHead(_TwoLayerHead):
    """Posterior head of the ladder's top-down inference: the encoder network outputs the
    bottom-up estimate of z₁ (mean and log-variance); this head's MLP maps that estimate (both
    halves) to q(z₂|x), and the prior's ``downward`` network gives p(z₁|z₂). Call
    :meth:`attach` with the model's :class:`TwoLayerPrior` before use (the builders do): it is
    kept by reference, not registered, so its parameters are the prior's, once."""

    UPWARD_INPUTS = 2

    def __init__(
        self,
        latent_dims: Sequence[int],
        hidden: Sequence[int] = DEFAULT_TOP_HIDDEN,
        activation: str = "tanh",
    ):
        super().__init__(latent_dims, hidden, activation)
        self._prior: tuple[TwoLayerPrior, ...] = ()  # a tuple: nn.Module does not register it

    def attach(self, prior: TwoLayerPrior) -> None:
        """Use ``prior``'s p(z₁|z₂) in q(z₁|z₂, x)."""
        if prior.latent_dims != self.latent_dims:
            raise ValueError(
                f"the prior's layers {prior.latent_dims} are not the posterior's {self.latent_dims}"
            )
        self._prior = (prior,)

    def forward(self, parameters: Tensor) -> Distribution:
        if not self._prior:
            raise RuntimeError("the ladder posterior needs its prior: call attach(prior)")
        downward = self._prior[0].downward
        return LadderPosterior(
            _gaussian(parameters),
            _gaussian(self.upward(parameters)),
            lambda z2: _gaussian(downward(z2)),
        )


class TwoLayerPriorDistribution(Distribution):
    """p(z₁, z₂) = p(z₁|z₂) N(z₂; 0, I) over z = (z₁, z₂): event (d₁ + d₂,)."""

    arg_constraints: ClassVar[dict] = {}
    support = constraints.real_vector

    def __init__(self, top: Independent, downward: Callable[[Tensor], Independent], d1: int):
        self.top, self.downward = top, downward
        self.layer_sizes = (int(d1), top.event_shape[0])
        super().__init__(torch.Size(), torch.Size([sum(self.layer_sizes)]), validate_args=False)

    def sample(self, sample_shape: torch.Size | tuple = ()) -> Tensor:
        with torch.no_grad():
            z2 = self.top.sample(sample_shape)
            return torch.cat((self.downward(z2).sample(), z2), -1)

    def log_prob(self, value: Tensor) -> Tensor:
        z1, z2 = value.split(self.layer_sizes, dim=-1)
        return self.downward(z2).log_prob(z1) + self.top.log_prob(z2)


class TwoLayerPrior(nn.Module):
    """The prior of two stochastic layers: z₂ ~ N(0, I), z₁|z₂ ~ N(μ(z₂), diag σ²(z₂)) with an
    MLP (``hidden`` layers) from z₂ to μ and log σ²."""

    def __init__(
        self,
        latent_dims: Sequence[int],
        hidden: Sequence[int] = DEFAULT_TOP_HIDDEN,
        activation: str = "tanh",
    ):
        super().__init__()
        self.latent_dims = d1, d2 = _two_sizes(latent_dims)
        self.downward = MLP((d2,), tuple(reversed(tuple(hidden))), (2 * d1,), activation)
        self.register_buffer("_zero", torch.zeros(()), persistent=False)

    def forward(self) -> Distribution:
        d1, d2 = self.latent_dims
        top = standard_normal(d2, device=self._zero.device, dtype=self._zero.dtype)
        return TwoLayerPriorDistribution(top, lambda z2: _gaussian(self.downward(z2)), d1)


class FirstUnits(nn.Module):
    """z (..., d₁ + d₂) → z₁ (..., d₁): put in front of the decoder network, which models
    p(x|z₁)."""

    def __init__(self, units: int):
        super().__init__()
        self.units = int(units)

    def forward(self, z: Tensor) -> Tensor:
        return z[..., : self.units]
