"""Run folders, above the training loop: settings (:class:`TrainConfig`), starting and
resuming runs (:func:`train`, :func:`resume`) and using them (:func:`load_run`, :class:`Run`)."""

from aevb.runs.config import TrainConfig
from aevb.runs.run import (
    BEST,
    CONFIG_FILE,
    LAST,
    Run,
    RunRecord,
    RunSession,
    load_model,
    load_run,
    read_run,
    resume,
    start_run,
    train,
)

__all__ = [
    "BEST",
    "CONFIG_FILE",
    "LAST",
    "Run",
    "RunRecord",
    "RunSession",
    "TrainConfig",
    "load_model",
    "load_run",
    "read_run",
    "resume",
    "start_run",
    "train",
]
