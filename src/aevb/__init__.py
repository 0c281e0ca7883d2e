"""aevb: Auto-Encoding Variational Bayes (Kingma & Welling, 2014) to research grade.

The layers, from the maths up:

* the core — :mod:`aevb.distributions`, :mod:`aevb.kl` (the one KL path), :mod:`aevb.heads`
  (network outputs → distributions), :mod:`aevb.flows` (flow posteriors),
  :mod:`aevb.hierarchy` (two stochastic layers), :mod:`aevb.networks`, :mod:`aevb.priors`,
  :mod:`aevb.models` (``VAE(encoder, decoder, prior)``), :mod:`aevb.builders` (model
  factories: the paper's MLP, a conv net, your own), :mod:`aevb.objectives` (SGVB, IWAE, …),
  :mod:`aevb.mcem` and :mod:`aevb.hmc`, :mod:`aevb.evaluation`, :mod:`aevb.diagnostics`;
* :mod:`aevb.data` — datasets that keep their shape, recorded transforms, loaders;
* :mod:`aevb.train` — the one training loop (:class:`~aevb.train.Trainer`) and its callbacks;
* :mod:`aevb.runs` — run folders: settings, starting, resuming and loading runs;
* :mod:`aevb.experiments` — the paper's figures and the seed notes' contrasts;
* :mod:`aevb.views` — looking at a run: the HTML report and the latent-space explorer;
* the faces: :mod:`aevb.cli` (the ``aevb`` command) and :mod:`aevb.sklearn` (an estimator).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
import types
from typing import TYPE_CHECKING, Any

# Each public name and the module that defines it. They are imported on first use (PEP 562),
# so that ``import aevb.cli`` — the command's entry point — loads no torch before the command
# has installed its signal handlers: a Ctrl-C while torch loads then ends with one line, not a
# traceback. ``from aevb import VAE`` works as before.
_EXPORTS = {
    "heads": "aevb.heads",
    "priors": "aevb.priors",
    "ModelSpec": "aevb.builders",
    "conv": "aevb.builders",
    "mlp": "aevb.builders",
    "model_factory": "aevb.builders",
    "load_dataset": "aevb.data",
    "AevbError": "aevb.errors",
    "ConfigError": "aevb.errors",
    "DataError": "aevb.errors",
    "NumericalFault": "aevb.errors",
    "TrainingInterrupted": "aevb.errors",
    "evaluate": "aevb.evaluation",
    "log_likelihood_per_example": "aevb.evaluation",
    "importance_diagnostics": "aevb.evaluation",
    "MonteCarloEM": "aevb.mcem",
    "VAE": "aevb.models",
    "Decoder": "aevb.models",
    "Encoder": "aevb.models",
    "IWAE": "aevb.objectives",
    "SGVBA": "aevb.objectives",
    "SGVBB": "aevb.objectives",
    "Autoencoder": "aevb.objectives",
    "Objective": "aevb.objectives",
    "ScoreFunction": "aevb.objectives",
    "WakeSleep": "aevb.objectives",
    "make_objective": "aevb.objectives",
    "Run": "aevb.runs",
    "TrainConfig": "aevb.runs",
    "load_model": "aevb.runs",
    "load_run": "aevb.runs",
    "resume": "aevb.runs",
    "train": "aevb.runs",
    "Trainer": "aevb.train",
    "write_report": "aevb.views",
}

if TYPE_CHECKING:
    from aevb import heads, priors
    from aevb.builders import ModelSpec, conv, mlp, model_factory
    from aevb.data import load_dataset
    from aevb.errors import (
        AevbError,
        ConfigError,
        DataError,
        NumericalFault,
        TrainingInterrupted,
    )
    from aevb.evaluation import evaluate, importance_diagnostics, log_likelihood_per_example
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
    from aevb.views import write_report


class _Package(types.ModuleType):
    """The ``aevb`` module's class: the function :func:`aevb.train` keeps its name when the
    subpackage :mod:`aevb.train` is imported (the import system would otherwise set the
    attribute ``train`` to the subpackage; eager imports used to overwrite it back)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "train" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        # Every submodule is reachable as an attribute too (``aevb.kl``), as after an import.
        if not name.startswith("_") and importlib.util.find_spec(f"aevb.{name}") is not None:
            return importlib.import_module(f"aevb.{name}")
        raise AttributeError(f"module 'aevb' has no attribute {name!r}")
    module = importlib.import_module(_EXPORTS[name])
    value = module if module.__name__ == f"aevb.{name}" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


try:  # one source for the version: pyproject.toml, as installed
    __version__ = importlib.metadata.version("aevb")
except importlib.metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

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
    "importance_diagnostics",
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
    "write_report",
]
