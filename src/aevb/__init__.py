"""aevb: Auto-Encoding Variational Bayes (Kingma & Welling, 2014) to research grade.

The layers, from the maths up:

* the core — :mod:`aevb.distributions`, :mod:`aevb.kl` (the one KL path), :mod:`aevb.heads`
  (network outputs → distributions), :mod:`aevb.networks`, :mod:`aevb.priors`,
  :mod:`aevb.models` (``VAE(encoder, decoder, prior)``), :mod:`aevb.builders` (model
  factories: the paper's MLP, a conv net, your own), :mod:`aevb.objectives` (SGVB, IWAE, …),
  :mod:`aevb.mcem` and :mod:`aevb.hmc`, :mod:`aevb.evaluation`, :mod:`aevb.diagnostics`;
* :mod:`aevb.data` — datasets that keep their shape, recorded transforms, loaders;
* :mod:`aevb.train` — the one training loop (:class:`~aevb.train.Trainer`) and its callbacks;
* :mod:`aevb.runs` — run folders: settings, starting, resuming and loading runs;
* :mod:`aevb.experiments` — the paper's figures and the seed notes' contrasts;
* the faces: :mod:`aevb.cli` (the ``aevb`` command) and :mod:`aevb.sklearn` (an estimator).
"""

from aevb import heads, priors
from aevb.builders import ModelSpec, conv, mlp, model_factory
from aevb.data import load_dataset
from aevb.errors import AevbError, ConfigError, DataError, NumericalFault, TrainingInterrupted
from aevb.evaluation import evaluate, log_likelihood_per_example
from aevb.mcem import MonteCarloEM
from aevb.models import VAE, Decoder, Encoder
from aevb.objectives import (
    IWAE,
    SGVBA,
    SGVBB,
    Autoencoder,
    Objective,
    ScoreFunction,
    WakeSleep,
    make_objective,
)
from aevb.runs import Run, TrainConfig, load_model, load_run, resume, train
from aevb.train import Trainer

__version__ = "0.2.0"

__all__ = [
    "IWAE",
    "SGVBA",
    "SGVBB",
    "VAE",
    "AevbError",
    "Autoencoder",
    "ConfigError",
    "DataError",
    "Decoder",
    "Encoder",
    "ModelSpec",
    "MonteCarloEM",
    "NumericalFault",
    "Objective",
    "Run",
    "ScoreFunction",
    "TrainConfig",
    "Trainer",
    "TrainingInterrupted",
    "WakeSleep",
    "conv",
    "evaluate",
    "heads",
    "load_dataset",
    "load_model",
    "load_run",
    "log_likelihood_per_example",
    "make_objective",
    "mlp",
    "model_factory",
    "priors",
    "resume",
    "train",
]
