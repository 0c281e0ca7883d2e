"""Multilayer perceptrons: the encoder and decoder trunks."""

from __future__ import annotations

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


class MLP(nn.Sequential):
    """A stack of layers whose output has the dtype of its input.

    Under bf16 autocast the linear layers compute in bfloat16; casting their output back to
    the input's float32 keeps every distribution built from it — and so every log-density, KL
    and loss — in float32. Without autocast the cast is a no-op.
    """

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x).to(x.dtype)


def mlp(in_features: int, hidden: Sequence[int], out_features: int, activation: str) -> MLP:
    """Linear layers of sizes ``in → hidden… → out`` with ``activation`` between them.

    No activation follows the output layer: it produces distribution parameters.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose from {sorted(ACTIVATIONS)}")
    sizes = [in_features, *hidden]
    layers: list[nn.Module] = []
    for fan_in, fan_out in pairwise(sizes):
        layers += [nn.Linear(fan_in, fan_out), ACTIVATIONS[activation]()]
    layers.append(nn.Linear(sizes[-1], out_features))
    return MLP(*layers)


def initialise(module: nn.Module, scheme: str) -> None:
    """Initialise every linear layer of ``module`` in place.

    ``"default"`` keeps PyTorch's (Kaiming-uniform) initialisation; ``"paper"`` draws all weights
    and biases from N(0, 0.01²), as in Kingma & Welling (2014), section 5.
    """
    if scheme == "default":
        return
    if scheme != "paper":
        raise ValueError(f"unknown initialisation {scheme!r}; choose from {INITIALISATIONS}")
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, std=0.01)
                nn.init.normal_(layer.bias, std=0.01)
