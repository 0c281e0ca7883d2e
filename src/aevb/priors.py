"""Priors p(z) as modules: ``prior()`` returns the distribution, event shape (latent_dim,).

A prior is any ``nn.Module`` whose ``forward()`` (no arguments) returns a
``torch.distributions`` object over latent vectors; its parameters, if any, are trained with
the model's. The KL term against it is analytic where torch knows the (posterior, prior) pair
and a Monte Carlo estimate otherwise (:mod:`aevb.kl`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.distributions import Categorical, Distribution, Independent, MixtureSameFamily, Normal

from aevb.distributions import standard_normal

__all__ = ["PRIORS", "MixtureOfGaussians", "StandardNormal", "VampPrior"]

PRIORS = ("standard", "mixture", "vamp")
# Range of a mixture component's log-scale: σ from 3e-7 to 3e6, as the posterior's.
LOG_SCALE_RANGE = (-15.0, 15.0)


class StandardNormal(nn.Module):
    """p(z) = N(0, I), the paper's prior."""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = int(latent_dim)
        # A buffer, so that the prior follows the model across devices and dtypes.
        self.register_buffer("_loc", torch.zeros(self.latent_dim), persistent=False)

    def forward(self) -> Distribution:
        return standard_normal(self.latent_dim, device=self._loc.device, dtype=self._loc.dtype)


class MixtureOfGaussians(nn.Module):
    """A learnable mixture of ``num_components`` diagonal Gaussians,
    p(z) = Σ_k π_k N(z; m_k, diag s_k²), with π = softmax(logits).

    Means start as draws from N(0, I), scales at 1 and weights equal.
    """

    def __init__(self, latent_dim: int, num_components: int = 10):
        super().__init__()
        if num_components < 1:
            raise ValueError(f"num_components must be at least 1, got {num_components}")
        self.latent_dim = int(latent_dim)
        self.logits = nn.Parameter(torch.zeros(num_components))
        self.loc = nn.Parameter(torch.randn(num_components, self.latent_dim))
        self.log_scale = nn.Parameter(torch.zeros(num_components, self.latent_dim))

    def forward(self) -> Distribution:
        scale = self.log_scale.clamp(*LOG_SCALE_RANGE).exp()
        components = Independent(Normal(self.loc, scale, validate_args=False), 1)
        return MixtureSameFamily(
            Categorical(logits=self.logits, validate_args=False), components, validate_args=False
        )


class VampPrior(nn.Module):
    """The VampPrior (Tomczak & Welling 2018): p(z) = (1/K) Σ_k q(z | u_k), the mixture of the
    encoder's posteriors at K learned pseudo-inputs u_k.

    ``encoder`` is the model's own encoder (kept by reference, not registered as a submodule, so
    its parameters are the model's and appear once in its state); ``data_shape`` the shape of
    one input. The pseudo-inputs start at 0.5 + 0.01·ε, ε ~ N(0, I), and are not constrained.
    (The authors' MNIST code starts them at 0.05 + 0.01·ε and passes them through a hardtanh
    onto [0, 1]; neither that start nor one from training images keeps an MLP encoder trained
    from scratch with Adam from collapsing: q(z|x) stops depending on x within the first ~100
    steps, where every component equals it and the KL is exactly 0.)
    """

    def __init__(self, encoder: nn.Module, num_components: int, data_shape: Sequence[int]):
        super().__init__()
        if num_components < 1:
            raise ValueError(f"num_components must be at least 1, got {num_components}")
        self._encoder = (encoder,)  # a tuple: nn.Module does not register it
        shape = tuple(int(s) for s in data_shape)
        self.pseudo_inputs = nn.Parameter(0.5 + 0.01 * torch.randn(num_components, *shape))

    @property
    def encoder(self) -> nn.Module:
        return self._encoder[0]

    def forward(self) -> Distribution:
        components: Distribution = self.encoder(self.pseudo_inputs)
        weights = torch.zeros(len(self.pseudo_inputs), device=self.pseudo_inputs.device)
        return MixtureSameFamily(
            Categorical(logits=weights.to(self.pseudo_inputs.dtype), validate_args=False),
            components,
            validate_args=False,
        )
