"""The training layer: one loop (:class:`Trainer`), its callbacks, the compiled step and the
checkpoint format. It knows no run folders; :mod:`aevb.runs` builds them on top."""

from aevb.train.callbacks import (
    BestWeights,
    Callback,
    Checkpoint,
    CurvePlot,
    EarlyStopping,
    MetricsFile,
    ProgressBar,
    SignalHandler,
    Validation,
)
from aevb.train.optim import OPTIMIZERS, make_optimizer
from aevb.train.trainer import Trainer, TrainState

__all__ = [
    "OPTIMIZERS",
    "BestWeights",
    "Callback",
    "Checkpoint",
    "CurvePlot",
    "EarlyStopping",
    "MetricsFile",
    "ProgressBar",
    "SignalHandler",
    "TrainState",
    "Trainer",
    "Validation",
    "make_optimizer",
]
