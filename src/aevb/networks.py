"""Networks for the built-in parts: multilayer perceptrons and a small convolutional pair.

A network maps a batch of inputs to the parameters a head (:mod:`aevb.heads`) needs. The MLP
flattens its input's event dimensions at its own edge and gives its output the head's
parameter shape, so data keep their shape — (C, H, W) images included — everywhere else.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import Tensor, nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "softplus": nn.Softplus,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
}
INITIALISATIONS = ("default", "paper")


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def _linear_stack(sizes: Sequence[int], activation: str) -> list[nn.Module]:
    """Linear layers of the given sizes with ``activation`` between them (none after the last)."""
    layers: list[nn.Module] = []
    for fan_in, fan_out in pairwise(sizes):
        layers += [nn.Linear(fan_in, fan_out), _activation(activation)]
    return layers[:-1]


class MLP(nn.Module):
    """Linear layers of sizes ``prod(in_shape) → hidden… → prod(out_shape)``, ``activation``
    between them and none after the output layer (it produces distribution parameters).

    x: (..., *in_shape) → (..., *out_shape): the event dimensions of the input are flattened
    here and the output is given ``out_shape``.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        hidden: Sequence[int],
        out_shape: Sequence[int],
        activation: str = "tanh",
    ):
        super().__init__()
        self.in_shape = tuple(int(s) for s in in_shape)
        self.out_shape = tuple(int(s) for s in out_shape)
        sizes = [math.prod(self.in_shape), *(int(h) for h in hidden), math.prod(self.out_shape)]
        self.layers = nn.Sequential(*_linear_stack(sizes, activation))

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(*x.shape[: x.dim() - len(self.in_shape)], -1)
        out = self.layers(flat)
        return out.reshape(*out.shape[:-1], *self.out_shape)


def _check_image_shape(shape: Sequence[int], downsamplings: int) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise ValueError(f"the convolutional networks need (C, H, W) images, got shape {shape}")
    channels, height, width = (int(s) for s in shape)
    factor = 2**downsamplings
    if height % factor or width % factor:
        raise ValueError(
            f"the convolutional networks halve the image {downsamplings} times, so its height "
            f"and width must be multiples of {factor}; got {height}×{width}"
        )
    return channels, height, width


class ConvEncoderNetwork(nn.Module):
    """A DCGAN-style encoder trunk: 4×4 convolutions of stride 2 (each halves H and W) with
    ``channels`` feature maps, then fully connected ``hidden`` layers, to ``out_features``.

    x: (N, C, H, W) → (N, out_features); H and W must be multiples of 2^len(channels).
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        channels: Sequence[int],
        hidden: Sequence[int],
        out_features: int,
        activation: str = "relu",
    ):
        super().__init__()
        in_channels, height, width = _check_image_shape(in_shape, len(channels))
        layers: list[nn.Module] = []
        for fan_in, fan_out in pairwise([in_channels, *channels]):
            layers += [nn.Conv2d(fan_in, fan_out, 4, stride=2, padding=1), _activation(activation)]
        scale = 2 ** len(channels)
        flat = channels[-1] * (height // scale) * (width // scale)
        layers += [nn.Flatten(), *_linear_stack([flat, *hidden, out_features], activation)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class ConvDecoderNetwork(nn.Module):
    """The mirror of :class:`ConvEncoderNetwork`: fully connected ``hidden`` layers from z to
    ``channels[-1]`` maps of (H, W)/2^len(channels), then 4×4 transposed convolutions of
    stride 2 (each doubles H and W) down the ``channels``, to ``out_shape`` (P, H, W).

    z: (N, latent_dim) → (N, P, H, W).
    """

    def __init__(
        self,
        latent_dim: int,
        channels: Sequence[int],
        hidden: Sequence[int],
        out_shape: Sequence[int],
        activation: str = "relu",
    ):
        super().__init__()
        out_channels, height, width = _check_image_shape(out_shape, len(channels))
        scale = 2 ** len(channels)
        start = (channels[-1], height // scale, width // scale)
        layers: list[nn.Module] = [
            *_linear_stack([latent_dim, *hidden, math.prod(start)], activation),
            _activation(activation),
            nn.Unflatten(-1, start),
        ]
        widths = [*reversed(channels), out_channels]
        for fan_in, fan_out in pairwise(widths):
            layers += [
                nn.ConvTranspose2d(fan_in, fan_out, 4, stride=2, padding=1),
                _activation(activation),
            ]
        self.layers = nn.Sequential(*layers[:-1])

    def forward(self, z: Tensor) -> Tensor:
        return self.layers(z)


def initialise(module: nn.Module, scheme: str) -> None:
    """Initialise every linear and convolutional layer of ``module`` in place.

    ``"default"`` keeps PyTorch's (Kaiming-uniform) initialisation; ``"paper"`` draws all weights
    and biases from N(0, 0.01²), as in Kingma & Welling (2014), section 5.
    """
    if scheme == "default":
        return
    if scheme != "paper":
        raise ValueError(f"unknown initialisation {scheme!r}; choose from {INITIALISATIONS}")
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, nn.Linear | nn.Conv2d | nn.ConvTranspose2d):
                nn.init.normal_(layer.weight, std=0.01)
                nn.init.normal_(layer.bias, std=0.01)
