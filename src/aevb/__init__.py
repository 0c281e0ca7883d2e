"""aevb: Auto-Encoding Variational Bayes (Kingma & Welling, 2014) to research grade.

The layers, from the maths up: :mod:`aevb.distributions`, :mod:`aevb.networks`,
:mod:`aevb.models` (the VAE), :mod:`aevb.objectives` (SGVB estimators, IWAE, wake-sleep…),
:mod:`aevb.hmc` (Hamiltonian Monte Carlo on the posterior), :mod:`aevb.evaluation`,
:mod:`aevb.data`, :mod:`aevb.training` (the AEVB loop and run folders), :mod:`aevb.mcem`
(Monte Carlo EM), :mod:`aevb.presets` (the paper's set-up), :mod:`aevb.reproduce` (the paper's
figures), :mod:`aevb.contrasts` (autoencoder vs VAE, PCA vs linear VAE), :mod:`aevb.plots`,
:mod:`aevb.sklearn` (a scikit-learn estimator) and :mod:`aevb.cli`.
"""

from aevb.errors import AevbError, ConfigError, DataError
from aevb.evaluation import evaluate
from aevb.models import VAE, ModelConfig
from aevb.objectives import (
    IWAE,
    SGVBA,
    SGVBB,
    Autoencoder,
    ScoreFunction,
    WakeSleep,
    make_objective,
)
from aevb.training import TrainConfig, load_model, resume, train

__version__ = "0.1.0"

__all__ = [
    "IWAE",
    "SGVBA",
    "SGVBB",
    "VAE",
    "AevbError",
    "Autoencoder",
    "ConfigError",
    "DataError",
    "ModelConfig",
    "ScoreFunction",
    "TrainConfig",
    "WakeSleep",
    "evaluate",
    "load_model",
    "make_objective",
    "resume",
    "train",
]
