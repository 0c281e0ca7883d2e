"""Named training set-ups; ``paper-mnist`` and ``paper-frey`` are Kingma & Welling's (§5).

The paper's set-up: one hidden layer of tanh units (500 for MNIST, 200 for Frey Face) in
encoder and decoder; weights and biases drawn from N(0, 0.01²); Adagrad with a step size from
{0.01, 0.02, 0.1}; minibatches of M = 100 with L = 1 sample; a N(0, I) prior on the parameters
(weight decay); the whole training set, no validation split. MNIST has a Bernoulli decoder
(on dynamically binarized images here); Frey Face a Gaussian decoder with learned variance
whose mean is squashed by a sigmoid.

Weight decay: the paper maximises Σ_i L(x_i) + log p(θ); aevb's loss is the per-example
mean, so the same objective is the mean plus log p(θ)/N, whose gradient adds θ/N: weight
decay 1/N for N training examples. Adagrad divides by the root of the summed squared
gradients, so the factor N between the paper's sum and aevb's mean does not change its
steps, and the paper's step sizes apply as they are.
"""

from __future__ import annotations

import dataclasses

from aevb.errors import ConfigError
from aevb.runs.config import TrainConfig

PAPER_COMMON = {
    "activation": "tanh",
    "init": "paper",
    "optimizer": "adagrad",
    "batch_size": 100,
    "samples": 1,
    "objective": "sgvb-b",
    "val_fraction": 0.0,
}

PRESETS: dict[str, dict] = {
    "paper-mnist": {
        **PAPER_COMMON,
        "dataset": "mnist",
        "hidden": (500,),
        "likelihood": "bernoulli",
        "binarize": "dynamic",
        "lr": 0.02,
    },
    "paper-frey": {
        **PAPER_COMMON,
        "dataset": "frey",
        "hidden": (200,),
        "likelihood": "gaussian-learned",
        "squash_mean": True,
        "binarize": "none",
        "lr": 0.02,
    },
}


def preset_config(name: str, num_train: int, **overrides) -> TrainConfig:
    """The :class:`TrainConfig` of preset ``name`` for ``num_train`` training examples.

    ``overrides`` replace any setting (``latent_dim``, ``epochs``, ``lr``, ``objective``…).
    Weight decay is the N(0, I) parameter prior, 1/``num_train``, unless overridden.
    """
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    if num_train < 1:
        raise ConfigError(f"num_train must be positive, got {num_train}")
    values = {**PRESETS[name], "weight_decay": 1.0 / num_train, **overrides}
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown training settings: {unknown}")
    return TrainConfig(**values)
