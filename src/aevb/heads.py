"""Heads: turn a network's output into a distribution, so that a user writes only the network.

A head is an ``nn.Module`` whose ``parameter_shape`` says what its network must output per
example, and whose ``forward`` maps that output, shape (..., *parameter_shape), to a
``torch.distributions`` object with batch shape (...). Posterior heads make q(z|x) over
(latent_dim,); likelihood heads make p(x|z) over the data's event shape — (D,) for a table,
(C, H, W) for images. A head with several parameters per value (a mean and a scale) takes them
stacked along the first event axis: (2D,) for vectors, (2C, H, W) for images.

Wrap a network and a head in :class:`aevb.models.Encoder` / :class:`aevb.models.Decoder`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution

from aevb.distributions import (
    LEVELS,
    bernoulli,
    diagonal_gaussian,
    discretized_logistic_mixture,
    eight_bit_categorical,
    full_covariance_gaussian,
    gaussian,
)

__all__ = [
    "LOG_VARIANCE_RANGE",
    "MIN_LIKELIHOOD_SCALE",
    "Bernoulli",
    "DiagonalGaussian",
    "DiscretizedLogisticMixture",
    "EightBitCategorical",
    "FullCovarianceGaussian",
    "Gaussian",
    "Head",
    "LearnedGaussian",
]

# Range of the diagonal posterior's log-variance: σ from 3e-7 to 3e6. Trained encoders stay far
# inside it; a diverging one is held at the edge, where exp, the KL and log q stay finite in
# float32 (exp overflows beyond 88), so the fault is diagnosed instead of turning into NaN.
LOG_VARIANCE_RANGE = (-30.0, 30.0)
# Smallest standard deviation a learned Gaussian likelihood may reach. Without a floor the
# density of a pixel that is always reconstructed exactly grows without bound (σ → 0) and
# training diverges; 1e-3 is a quarter of one grey level on a [0, 1] scale.
MIN_LIKELIHOOD_SCALE = 1e-3
# Range of a discretised logistic's log-scale on the [0, 1] scale: from a twentieth of a level
# (the level's mass is then ≈ 1) to e³, far wider than the data.
LOGISTIC_LOG_SCALE_RANGE = (-8.5, 3.0)
# Smallest diagonal entry of a full-covariance posterior's Cholesky factor.
MIN_CHOLESKY_DIAGONAL = 1e-5


class Head(nn.Module):
    """Base of the heads: ``parameter_shape`` is the network output each example needs.

    ``width``: float values a likelihood head's distribution holds per data value while its
    density is computed (1 unless a head says more: 512 for the 256-way categorical's logits
    and their log-softmax), by which evaluation divides its batches to stay within memory.
    """

    parameter_shape: tuple[int, ...]
    width: int = 1

    def forward(self, parameters: Tensor) -> Distribution:
        raise NotImplementedError


class DiagonalGaussian(Head):
    """q(z|x) = N(μ, diag σ²) from (..., 2·latent_dim): μ and log σ², split in halves.

    The log-variance is clamped to :data:`LOG_VARIANCE_RANGE`.
    """

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = int(latent_dim)
        self.parameter_shape = (2 * self.latent_dim,)

    def forward(self, parameters: Tensor) -> Distribution:
        loc, log_variance = parameters.chunk(2, dim=-1)
        return diagonal_gaussian(loc, log_variance.clamp(*LOG_VARIANCE_RANGE))


class FullCovarianceGaussian(Head):
    """q(z|x) = N(μ, L Lᵀ), L lower-triangular with a positive diagonal, from
    (..., D + D(D+1)/2): μ, then the entries of L row by row.

    The diagonal is softplus(·) + 1e-5, so Σ is positive definite by construction (the seed
    notes' H(x) = h(x) h(x)ᵀ).
    """

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = d = int(latent_dim)
        self.parameter_shape = (d + d * (d + 1) // 2,)
        rows, cols = torch.tril_indices(d, d)
        self.register_buffer("_rows", rows, persistent=False)
        self.register_buffer("_cols", cols, persistent=False)

    def forward(self, parameters: Tensor) -> Distribution:
        d = self.latent_dim
        loc, entries = parameters[..., :d], parameters[..., d:]
        scale_tril = parameters.new_zeros((*parameters.shape[:-1], d, d))
        scale_tril[..., self._rows, self._cols] = entries
        diagonal = F.softplus(scale_tril.diagonal(dim1=-2, dim2=-1)) + MIN_CHOLESKY_DIAGONAL
        scale_tril = scale_tril.tril(-1) + torch.diag_embed(diagonal)
        return full_covariance_gaussian(loc, scale_tril)


class Bernoulli(Head):
    """p(x|z) = Π Bernoulli(x; sigmoid(logit)) over ``event_shape``, for binary data; the
    network outputs the logits, (..., *event_shape)."""

    def __init__(self, event_shape: Sequence[int]):
        super().__init__()
        self.event_shape = tuple(int(s) for s in event_shape)
        self.parameter_shape = self.event_shape

    def forward(self, parameters: Tensor) -> Distribution:
        return bernoulli(parameters, len(self.event_shape))


class Gaussian(Head):
    """p(x|z) = N(μ, σ²I) with a fixed σ = ``scale`` (the constant c = σ² of the seed notes);
    the network outputs μ, (..., *event_shape)."""

    def __init__(self, event_shape: Sequence[int], scale: float):
        super().__init__()
        if not scale > 0:
            raise ValueError(f"the Gaussian likelihood's scale must be positive, got {scale}")
        self.event_shape = tuple(int(s) for s in event_shape)
        self.parameter_shape = self.event_shape
        self.scale = float(scale)

    def forward(self, parameters: Tensor) -> Distribution:
        return gaussian(parameters, self.scale, len(self.event_shape))


class LearnedGaussian(Head):
    """p(x|z) = N(μ, diag σ²) with σ from the network: μ and a raw scale stacked along the
    first event axis, (..., 2·C, *rest) for ``event_shape`` (C, *rest).

    σ = softplus(·) + :data:`MIN_LIKELIHOOD_SCALE`; with ``squash_mean`` the mean is passed
    through a sigmoid, as in the paper's Frey Face experiments (data in [0, 1]).
    """

    def __init__(self, event_shape: Sequence[int], squash_mean: bool = False):
        super().__init__()
        self.event_shape = tuple(int(s) for s in event_shape)
        first, *rest = self.event_shape
        self.parameter_shape = (2 * first, *rest)
        self.squash_mean = bool(squash_mean)

    def forward(self, parameters: Tensor) -> Distribution:
        loc, raw_scale = parameters.chunk(2, dim=-len(self.event_shape))
        if self.squash_mean:
            loc = torch.sigmoid(loc)
        scale = F.softplus(raw_scale) + MIN_LIKELIHOOD_SCALE
        return gaussian(loc, scale, len(self.event_shape))


def _split_first_axis(parameters: Tensor, event_shape: tuple[int, ...], parts: int) -> Tensor:
    """(..., parts·C, *rest) → (..., C, *rest, parts): the stacked parameters of each value
    moved to a last axis."""
    event_dims = len(event_shape)
    split = parameters.unflatten(-event_dims, (parts, event_shape[0]))
    return split.movedim(-event_dims - 1, -1)


class DiscretizedLogisticMixture(Head):
    """p(x|z) for 8-bit data (values k/255): per value, a mixture of ``components`` logistics
    discretised to the 256 levels (Salimans et al. 2017), each value's mixture independent of
    the others (PixelCNN++'s coupling of colour channels is left out). The network outputs
    (..., 3K·C, *rest): mixture logits, locations (offset by ½, so that outputs near 0 start
    mid-grey) and log-scales, each K·C channels."""

    def __init__(self, event_shape: Sequence[int], components: int = 5):
        super().__init__()
        if components < 1:
            raise ValueError(f"the mixture needs at least one component, got {components}")
        self.event_shape = tuple(int(s) for s in event_shape)
        self.components = int(components)
        first, *rest = self.event_shape
        self.parameter_shape = (3 * self.components * first, *rest)
        # Per component: the three parameters and about nine intermediates of log_prob.
        self.width = 12 * self.components

    def forward(self, parameters: Tensor) -> Distribution:
        k = self.components
        values = _split_first_axis(parameters, self.event_shape, 3 * k)
        logits, loc, log_scale = values.split(k, dim=-1)
        log_scale = log_scale.clamp(*LOGISTIC_LOG_SCALE_RANGE)
        return discretized_logistic_mixture(logits, loc + 0.5, log_scale, len(self.event_shape))


class EightBitCategorical(Head):
    """p(x|z) for 8-bit data: a 256-way categorical per value. The network outputs
    (..., F·C, *rest), ``features`` F per value, which one linear map shared by all values
    turns into 256 logits, plus a learned bias per value and level (a 1×1 convolution, as in
    PixelCNN's output layer): a decoder with 256 outputs per pixel would need a 500 × 200,704
    last layer on MNIST."""

    def __init__(self, event_shape: Sequence[int], features: int = 8):
        super().__init__()
        if features < 1:
            raise ValueError(f"the categorical head needs at least one feature, got {features}")
        self.event_shape = tuple(int(s) for s in event_shape)
        self.features = int(features)
        first, *rest = self.event_shape
        self.parameter_shape = (self.features * first, *rest)
        self.width = 2 * LEVELS  # the logits and their log-softmax
        self.to_logits = nn.Linear(self.features, LEVELS, bias=False)
        self.bias = nn.Parameter(torch.zeros(*self.event_shape, LEVELS))

    def forward(self, parameters: Tensor) -> Distribution:
        features = _split_first_axis(parameters, self.event_shape, self.features)
        logits = self.to_logits(features) + self.bias
        return eight_bit_categorical(logits, len(self.event_shape))
