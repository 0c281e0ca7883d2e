"""The variational autoencoder: prior p(z), encoder q_φ(z|x), decoder p_θ(x|z).

Encoders return the posterior *distribution* and decoders the likelihood *distribution*; the
objectives in :mod:`aevb.objectives` only ever see those objects.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution

from aevb.distributions import (
    bernoulli,
    diagonal_gaussian,
    full_covariance_gaussian,
    gaussian,
    standard_normal,
)
from aevb.errors import ConfigError
from aevb.networks import ACTIVATIONS, INITIALISATIONS, initialise, mlp

LIKELIHOODS = ("bernoulli", "gaussian", "gaussian-learned")
POSTERIORS = ("diagonal", "full")

# Smallest standard deviation a learned Gaussian likelihood may reach. Without a floor the
# density of a pixel that is always reconstructed exactly grows without bound (σ → 0) and
# training diverges; 1e-3 is a quarter of one grey level on a [0, 1] scale.
MIN_LIKELIHOOD_SCALE = 1e-3
# Range of the diagonal posterior's log-variance: σ from 3e-7 to 3e6. Trained encoders stay far
# inside it; a diverging one is held at the edge, where exp, the KL and log q stay finite in
# float32 (exp overflows beyond 88), so the fault is diagnosed instead of turning into NaN.
LOG_VARIANCE_RANGE = (-30.0, 30.0)


@dataclass
class ModelConfig:
    """Architecture of a :class:`VAE`; round-trips through JSON via :func:`dataclasses.asdict`."""

    data_dim: int
    latent_dim: int = 20
    hidden: tuple[int, ...] = (500,)
    activation: str = "tanh"
    likelihood: str = "bernoulli"
    likelihood_std: float = 0.1  # σ of the fixed-variance Gaussian likelihood (c = σ²)
    squash_mean: bool = False  # sigmoid on the learned Gaussian's mean (paper's Frey Face decoder)
    init: str = "default"
    posterior: str = "diagonal"  # q(z|x): "diagonal" or "full" covariance

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)
        problems = []
        if self.data_dim < 1 or self.latent_dim < 1:
            problems.append("data_dim and latent_dim must be positive")
        if any(h < 1 for h in self.hidden):
            problems.append(f"hidden sizes must be positive, got {self.hidden}")
        if self.activation not in ACTIVATIONS:
            problems.append(f"activation must be one of {sorted(ACTIVATIONS)}")
        if self.likelihood not in LIKELIHOODS:
            problems.append(f"likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}")
        if not self.likelihood_std > 0:
            problems.append("likelihood_std must be positive")
        if self.posterior not in POSTERIORS:
            problems.append(f"posterior must be one of {POSTERIORS}, got {self.posterior!r}")
        if self.init not in INITIALISATIONS:
            problems.append(f"init must be one of {INITIALISATIONS}")
        if problems:
            raise ConfigError("invalid model settings: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ModelConfig:
        return cls(**values)


class GaussianEncoder(nn.Module):
    """q_φ(z|x) = N(μ(x), diag σ²(x)): mean and log-variance heads on one shared MLP trunk.

    The two heads are one linear layer of width 2·latent_dim split in halves (one matmul).
    """

    def __init__(self, data_dim: int, hidden: tuple[int, ...], latent_dim: int, activation: str):
        super().__init__()
        self.net = mlp(data_dim, hidden, 2 * latent_dim, activation)

    def forward(self, x: Tensor) -> Distribution:
        """x: (..., data_dim) → distribution with batch shape (...) and event (latent_dim,)."""
        loc, log_variance = self.net(x).chunk(2, dim=-1)
        return diagonal_gaussian(loc, log_variance.clamp(*LOG_VARIANCE_RANGE))


class FullCovarianceEncoder(nn.Module):
    """q_φ(z|x) = N(μ(x), L(x) L(x)ᵀ), L lower-triangular with a positive diagonal.

    One trunk outputs μ and the D(D+1)/2 entries of L; the diagonal is softplus(·) + 1e-5,
    so Σ is positive definite by construction (the seed notes' H(x) = h(x) h(x)ᵀ).
    """

    def __init__(self, data_dim: int, hidden: tuple[int, ...], latent_dim: int, activation: str):
        super().__init__()
        self.latent_dim = latent_dim
        self.net = mlp(
            data_dim, hidden, latent_dim + latent_dim * (latent_dim + 1) // 2, activation
        )
        rows, cols = torch.tril_indices(latent_dim, latent_dim)
        self.register_buffer("_rows", rows, persistent=False)
        self.register_buffer("_cols", cols, persistent=False)

    def forward(self, x: Tensor) -> Distribution:
        out = self.net(x)
        d = self.latent_dim
        loc, entries = out[..., :d], out[..., d:]
        scale_tril = out.new_zeros((*out.shape[:-1], d, d))
        scale_tril[..., self._rows, self._cols] = entries
        diagonal = F.softplus(scale_tril.diagonal(dim1=-2, dim2=-1)) + 1e-5
        scale_tril = scale_tril.tril(-1) + torch.diag_embed(diagonal)
        return full_covariance_gaussian(loc, scale_tril)


class BernoulliDecoder(nn.Module):
    """p_θ(x|z) = Π_d Bernoulli(x_d; sigmoid(logit_d(z))), for binary data."""

    def __init__(self, latent_dim: int, hidden: tuple[int, ...], data_dim: int, activation: str):
        super().__init__()
        self.net = mlp(latent_dim, hidden, data_dim, activation)

    def forward(self, z: Tensor) -> Distribution:
        return bernoulli(self.net(z))


class GaussianDecoder(nn.Module):
    """p_θ(x|z) = N(μ(z), σ²I) with a fixed σ (the constant c = σ² of the seed notes)."""

    def __init__(self, latent_dim, hidden, data_dim, activation, scale: float):
        super().__init__()
        self.net = mlp(latent_dim, hidden, data_dim, activation)
        self.scale = float(scale)

    def forward(self, z: Tensor) -> Distribution:
        return gaussian(self.net(z), self.scale)


class LearnedGaussianDecoder(nn.Module):
    """p_θ(x|z) = N(μ(z), diag σ²(z)) with σ output by the decoder.

    σ = softplus(·) + 1e-3 keeps it positive and away from 0; with ``squash_mean`` the mean
    is passed through a sigmoid, as in the paper's Frey Face experiments (data in [0, 1]).
    """

    def __init__(self, latent_dim, hidden, data_dim, activation, squash_mean: bool):
        super().__init__()
        self.net = mlp(latent_dim, hidden, 2 * data_dim, activation)
        self.squash_mean = squash_mean

    def forward(self, z: Tensor) -> Distribution:
        loc, raw_scale = self.net(z).chunk(2, dim=-1)
        if self.squash_mean:
            loc = torch.sigmoid(loc)
        return gaussian(loc, F.softplus(raw_scale) + MIN_LIKELIHOOD_SCALE)


class VAE(nn.Module):
    """A variational autoencoder with prior N(0, I).

    ``posterior(x)`` (alias ``encode``) returns q_φ(z|x); ``likelihood(z)`` (alias ``decode``)
    returns p_θ(x|z). Data are flat vectors: x has shape (batch, data_dim).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c = config
        decoder_hidden = tuple(reversed(c.hidden))
        encoder = GaussianEncoder if c.posterior == "diagonal" else FullCovarianceEncoder
        self.encoder = encoder(c.data_dim, c.hidden, c.latent_dim, c.activation)
        if c.likelihood == "bernoulli":
            self.decoder = BernoulliDecoder(c.latent_dim, decoder_hidden, c.data_dim, c.activation)
        elif c.likelihood == "gaussian":
            self.decoder = GaussianDecoder(
                c.latent_dim, decoder_hidden, c.data_dim, c.activation, c.likelihood_std
            )
        else:
            self.decoder = LearnedGaussianDecoder(
                c.latent_dim, decoder_hidden, c.data_dim, c.activation, c.squash_mean
            )
        initialise(self, c.init)
        # A buffer, so that the prior follows the model across devices and dtypes.
        self.register_buffer("_prior_loc", torch.zeros(c.latent_dim), persistent=False)

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    @property
    def data_dim(self) -> int:
        return self.config.data_dim

    @property
    def prior(self) -> Distribution:
        """p(z) = N(0, I), event shape (latent_dim,)."""
        loc = self._prior_loc
        return standard_normal(self.latent_dim, device=loc.device, dtype=loc.dtype)

    def posterior(self, x: Tensor) -> Distribution:
        """q_φ(z|x) for x: (..., data_dim); batch shape (...), event (latent_dim,)."""
        return self.encoder(x)

    def likelihood(self, z: Tensor) -> Distribution:
        """p_θ(x|z) for z: (..., latent_dim); batch shape (...), event (data_dim,)."""
        return self.decoder(z)

    encode = posterior
    decode = likelihood

    @torch.no_grad()
    def sample(self, num_samples: int, mean: bool = True) -> Tensor:
        """Ancestral samples: z ~ p(z), then the decoder's mean (or a draw if ``mean=False``).

        Returns (num_samples, data_dim).
        """
        z = self.prior.sample((num_samples,))
        likelihood = self.likelihood(z)
        return likelihood.mean if mean else likelihood.sample()

    @torch.no_grad()
    def reconstruct(self, x: Tensor, mean: bool = True) -> Tensor:
        """Decode the posterior mean of x (a draw if ``mean=False``): (batch, data_dim)."""
        posterior = self.posterior(x)
        z = posterior.mean if mean else posterior.sample()
        return self.likelihood(z).mean
