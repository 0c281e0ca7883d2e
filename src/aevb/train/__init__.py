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
from aevb.train.schedules import LR_SCHEDULES, WarmupSchedule, make_schedule
from aevb.train.tensorboard import TensorBoard
from aevb.train.trainer import Trainer, TrainState

__all__ = [
    "LR_SCHEDULES",
    "OPTIMIZERS",
    "BestWeights",
    "Callback",
    "Checkpoint",
    "CurvePlot",
    "EarlyStopping",
    "MetricsFile",
    "ProgressBar",
    "SignalHandler",
    "TensorBoard",
    "TrainState",
    "Trainer",
    "Validation",
    "WarmupSchedule",
    "make_optimizer",
    "make_schedule",
]
