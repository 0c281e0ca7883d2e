"""The variational autoencoder as a composition: ``VAE(encoder, decoder, prior)``.

* An **encoder** is any ``nn.Module`` mapping x: (batch, *data_shape) to q_φ(z|x), a
  ``torch.distributions`` object with batch shape (batch,) and event shape (latent_dim,).
* A **decoder** is any ``nn.Module`` mapping z: (..., latent_dim) to p_θ(x|z), with batch shape
  (...) and event shape ``data_shape``.
* A **prior** is any ``nn.Module`` whose ``forward()`` returns p(z) (:mod:`aevb.priors`).

:class:`Encoder` and :class:`Decoder` build such modules from a plain network and a head
(:mod:`aevb.heads`), so a user writes only the network, which always sees exactly one batch
dimension. The objectives (:mod:`aevb.objectives`) only ever see the distributions.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from aevb.heads import Head
from aevb.limits import check_memory

__all__ = ["VAE", "Decoder", "Encoder"]


class _NetworkWithHead(nn.Module):
    """``head(network(x))`` for inputs with any number of leading batch dimensions: they are
    flattened into one before the network and restored after it."""

    def __init__(self, network: nn.Module, head: Head, input_shape: Sequence[int]):
        super().__init__()
        self.network = network
        self.head = head
        self.input_shape = tuple(int(s) for s in input_shape)

    def forward(self, inputs: Tensor) -> Distribution:
        event_dims = len(self.input_shape)
        if tuple(inputs.shape[inputs.dim() - event_dims :]) != self.input_shape:
            raise ValueError(
                f"{type(self).__name__} expects inputs of shape (..., "
                f"{', '.join(map(str, self.input_shape))}), got {tuple(inputs.shape)}"
            )
        leading = inputs.shape[: inputs.dim() - event_dims]
        outputs = self.network(inputs.reshape(-1, *self.input_shape))
        # Under bf16 autocast the network computes in bfloat16; the head gets the inputs'
        # float32, so every density, KL and loss built from it stays float32.
        outputs = outputs.to(inputs.dtype)
        return self.head(outputs.reshape(*leading, *outputs.shape[1:]))


class Encoder(_NetworkWithHead):
    """q_φ(z|x) = head(network(x)): ``network`` maps (N, *data_shape) to (N, *head's
    parameter_shape); ``head`` is a posterior head (e.g. ``heads.DiagonalGaussian``)."""

    def __init__(self, network: nn.Module, head: Head, data_shape: Sequence[int]):
        super().__init__(network, head, data_shape)


class Decoder(_NetworkWithHead):
    """p_θ(x|z) = head(network(z)): ``network`` maps (N, latent_dim) to (N, *head's
    parameter_shape); ``head`` is a likelihood head (e.g. ``heads.Bernoulli``)."""

    def __init__(self, network: nn.Module, head: Head, latent_dim: int):
        super().__init__(network, head, (latent_dim,))


class VAE(nn.Module):
    """A variational autoencoder p_θ(x, z) = p_θ(x|z) p(z) with recognition model q_φ(z|x).

    ``posterior(x)`` (alias ``encode``) returns q_φ(z|x); ``likelihood(z)`` (alias ``decode``)
    returns p_θ(x|z); ``prior()`` returns p(z). Data keep their shape: x is (batch,
    *data_shape), (batch, C, H, W) for images.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, prior: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.prior = prior
        with torch.no_grad():
            event_shape = prior().event_shape
        if len(event_shape) != 1:
            raise ValueError(f"the prior must be over latent vectors, got event {event_shape}")
        self.latent_dim = int(event_shape[0])

    def posterior(self, x: Tensor) -> Distribution:
        """q_φ(z|x) for x: (batch, *data_shape); batch shape (batch,), event (latent_dim,)."""
        return self.encoder(x)

    def likelihood(self, z: Tensor) -> Distribution:
        """p_θ(x|z) for z: (..., latent_dim); batch shape (...), event ``data_shape``."""
        return self.decoder(z)

    encode = posterior
    decode = likelihood

    @torch.no_grad()
    def sample(self, num_samples: int, mean: bool = True) -> Tensor:
        """Ancestral samples: z ~ p(z), then the decoder's mean (or a draw if ``mean=False``).

        Returns (num_samples, *data_shape).
        """
        self._check_sample_count(num_samples)
        return decode_prior_draws(self, num_samples, mean)

    def _values_per_sample(self) -> int:
        """Values one ancestral sample holds (latent and data)."""
        device = next(self.parameters(), torch.empty(0)).device
        zero = torch.zeros(1, self.latent_dim, device=device)
        return self.likelihood(zero).event_shape.numel() + self.latent_dim

    def _check_sample_count(self, num_samples: int) -> None:
        """Refuse a count that is not a positive integer, or whose samples alone (made at
        once) would exceed the memory."""
        if (
            isinstance(num_samples, bool)
            or not isinstance(num_samples, Integral)
            or num_samples < 1
        ):
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
        check_memory(
            4 * self._values_per_sample() * int(num_samples),
            f"{num_samples} samples",
            "draw fewer at a time",
            share=0.5,
            error=ValueError,
        )

    @torch.no_grad()
    def reconstruct(self, x: Tensor, mean: bool = True) -> Tensor:
        """Decode the posterior mean of x (a draw if ``mean=False``): (batch, *data_shape)."""
        return reconstruct(self, x, mean)


def decode_prior_draws(model, num_samples: int, mean: bool = True) -> Tensor:
    """z ~ p(z), ``num_samples`` of them, through the likelihood: its mean (or a draw of x if
    ``mean=False``). ``model``: a VAE, or a conditional one with labels bound."""
    likelihood = model.likelihood(model.prior().sample((num_samples,)))
    return likelihood.mean if mean else likelihood.sample()


def reconstruct(model, x: Tensor, mean: bool = True) -> Tensor:
    """The likelihood's mean at the posterior mean of x (a posterior draw if ``mean=False``)."""
    posterior = model.posterior(x)
    z = posterior.mean if mean else posterior.sample()
    return model.likelihood(z).mean
