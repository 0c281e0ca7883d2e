"""Run folders: a training run on disk, above the loop. :func:`train` starts one, :func:`resume`
continues one, :func:`load_run` opens one to use its model.

A run folder holds:

* ``config.json`` — ``format``, the settings (:class:`~aevb.runs.config.TrainConfig`, with
  everything decided at the start filled in), the model as a factory import path plus JSON
  arguments (:class:`~aevb.builders.ModelSpec`; nothing is pickled), and the data: name,
  example shape, split sizes and the transforms (binarization, standardisation) every later
  use applies;
* ``checkpoints/last.safetensors`` — everything to resume bit for bit;
  ``checkpoints/best.safetensors`` — the weights of the best epoch by the objective's judged
  metric;
* ``metrics.jsonl`` — one object per epoch: ``epoch``, ``step``, ``train_<metric>`` and
  ``val_<metric>`` (the ELBO, its reconstruction and KL; the reconstruction alone for an
  autoencoder), ``epoch_seconds`` (that epoch's training time);
* ``summary.json`` — the test metrics of the best weights, the best epoch, times;
* ``curves.png``, and for images ``samples.png`` and ``reconstructions.png``;
* ``tensorboard/`` — TensorBoard event files (:mod:`aevb.train.tensorboard`), where the
  ``tensorboard`` package is installed or ``--tensorboard`` is given.

Under ``torchrun`` (:mod:`aevb.distributed`) every process builds the same run and
trains its part of each batch; process 0 alone checks and writes the folder, holds its lock,
and evaluates the test split at the end.

Everything a run decides is checked before the folder is created, so a refused command can be
corrected and run again. While a process trains into a folder it holds the folder's lock
(:class:`aevb.storage.RunLock`, ``.lock``): a second ``train --out`` or ``--resume`` of the same
folder is refused at once. ``config.json`` records a fingerprint of the data (SHA-256 of the
three splits), and the last checkpoint records the settings it was trained with, so that edited
settings or changed data are refused by ``--resume`` and by every later use of the run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Distribution
from tqdm.auto import tqdm

from aevb.builders import ModelSpec
from aevb.conditional import UNLABELLED, bind, checked_labels, is_conditional
from aevb.data.datasets import Dataset, load_dataset
from aevb.data.loaders import Loader, SemiSupervisedLoader, TensorLoader
from aevb.data.streamed import StreamedDataset, load_streamed, should_stream
from aevb.data.streaming import StreamLoader
from aevb.data.transforms import Transforms, choose_transforms
from aevb.devices import resolve_device
from aevb.diagnostics import warn_if_collapsed
from aevb.distributed import collective_failure
from aevb.distributed import current as current_process
from aevb.distributions import support_is_binary, support_is_eight_bit
from aevb.errors import AevbError, ConfigError, DataError, NumericalFault, TrainingInterrupted
from aevb.evaluation import Evaluation, evaluate, log_likelihood_per_example
from aevb.hints import resume_hint, setting_name
from aevb.limits import TRAINING_COPIES
from aevb.models import VAE
from aevb.objectives import Objective, held_out_metrics, make_objective
from aevb.plots import write_image_plots
from aevb.runs.config import TrainConfig, setting_fields
from aevb.storage import (
    RunLock,
    StorageError,
    atomic_write_text,
    check_output_folder,
    make_folder,
)
from aevb.train import checkpoint as ckpt
from aevb.train.callbacks import (
    Callback,
    Checkpoint,
    CurvePlot,
    EarlyStopping,
    MetricsFile,
    ProgressBar,
    SignalHandler,
    Validation,
    differences,
    in_data_units,
)
from aevb.train.optim import make_optimizer
from aevb.train.schedules import make_schedule
from aevb.train.step import should_compile
from aevb.train.tensorboard import TensorBoard, tensorboard_available, tensorboard_missing
from aevb.train.trainer import Trainer

__all__ = [
    "BEST",
    "CONFIG_FILE",
    "LAST",
    "Run",
    "RunRecord",
    "RunSession",
    "load_model",
    "load_run",
    "read_run",
    "resume",
    "start_run",
    "train",
]

FORMAT = 3
CONFIG_FILE = "config.json"
LAST = "checkpoints/last.safetensors"
BEST = "checkpoints/best.safetensors"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
TENSORBOARD_DIR = "tensorboard"
SPLITS = ("train", "val", "test")
# Rows classified at once by Run.classification_error.
CLASSIFY_BATCH = 10_000


@dataclass(frozen=True)
class RunRecord:
    """What ``config.json`` holds: the settings, the model's spec, the data's description
    (``name``, ``event_shape``, split sizes) and its transforms; ``custom_model`` when the
    model came from a factory of the user's."""

    config: TrainConfig
    spec: ModelSpec
    data: dict[str, Any]
    transforms: Transforms
    custom_model: bool

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.data["event_shape"])

    def identity(self) -> dict[str, Any]:
        """What the run's checkpoints belong to: the record without the settings a resume may
        change (epochs, device, compile, …), stored in the last checkpoint and compared on
        restore."""
        values = self.to_dict()
        resumable = {f.name for f in setting_fields() if f.metadata["resumable"]}
        values["train"] = {k: v for k, v in values["train"].items() if k not in resumable}
        return comparable_identity(values)

    def check_data(
        self, dataset: Dataset | StreamedDataset, run_dir: Path, splits: Sequence[str] = SPLITS
    ) -> None:
        """Refuse ``dataset`` unless its ``splits`` are those the run was trained with (same
        shape, sizes and SHA-256 fingerprints)."""
        if dataset.event_shape != self.event_shape:
            raise DataError(
                f"{self.config.dataset} now has rows of shape {dataset.event_shape}, but the "
                f"run in {run_dir} was trained on rows of shape {self.event_shape}"
            )
        for name in splits:
            rows = dataset.num_train if name == "train" else len(dataset.split(name))
            recorded = self.data[f"num_{name}"]
            if rows != recorded:
                raise DataError(
                    f"{self.config.dataset} now has {rows} {name} rows, but the run in "
                    f"{run_dir} was trained with {recorded}"
                )
            if dataset.fingerprint(name) != self.data["fingerprints"][name]:
                raise DataError(
                    f"the {name} split of {self.config.dataset} is not the one the run in "
                    f"{run_dir} was trained with: same shape and size, other values (its "
                    "SHA-256 fingerprint differs from the one in config.json). Restore the "
                    "original data (and settings), or train a new run"
                )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "train": self.config.to_dict(include_model=not self.custom_model),
            "model": self.spec.to_dict(),
            "custom_model": self.custom_model,
            "data": {**self.data, "transforms": self.transforms.to_list()},
        }


def comparable_identity(identity: Any) -> Any:
    """A run identity with every setting it lacks filled in at its declared default, so that
    a setting added to aevb later (absent from an older checkpoint's identity) does not make
    the run's own checkpoints look foreign. Both sides of a comparison go through it."""
    if not isinstance(identity, dict) or not isinstance(identity.get("train"), dict):
        return identity
    resumable = {f.name for f in setting_fields() if f.metadata["resumable"]}
    defaults = {
        f.name: list(f.default) if isinstance(f.default, tuple) else f.default
        for f in setting_fields()
        if f.name not in resumable
    }
    return {**identity, "train": {**defaults, **identity["train"]}}


def read_run(run_dir: str | Path) -> RunRecord:
    """The checked ``config.json`` of a run folder."""
    path = _folder(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise AevbError(f"{run_dir} is not an aevb run folder (no {CONFIG_FILE})")
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as error:  # unreadable, not JSON, too deep
        raise AevbError(f"{path} is not readable JSON ({type(error).__name__}: {error})") from error
    try:
        if not isinstance(values, dict):
            raise ConfigError("it is not a JSON object")
        if values.get("format") != FORMAT:
            raise AevbError(
                f"{path} was written by another version of aevb (format "
                f"{values.get('format', 1)!r:.20}, this version reads {FORMAT}); train the run "
                "again"
            )
        for key, kind in (("train", dict), ("model", dict), ("data", dict)):
            if not isinstance(values.get(key), kind):
                raise ConfigError(f"'{key}' is missing or not an object")
        data = _checked_data(values["data"])
        transforms = Transforms.from_list(data.pop("transforms"))
        custom_model = values.get("custom_model", False)
        if not isinstance(custom_model, bool):
            raise ConfigError("'custom_model' must be true or false")
        return RunRecord(
            TrainConfig.from_dict(values["train"]),
            ModelSpec.from_dict(values["model"]),
            data,
            transforms,
            custom_model,
        )
    except (ConfigError, DataError) as error:
        raise AevbError(f"{path} is not a valid run record: {error}") from error


def _checked_data(values: dict[str, Any]) -> dict[str, Any]:
    """The ``data`` object of a run record, its types checked."""
    data = dict(values)
    shape = data.get("event_shape")
    if not (
        isinstance(shape, list)
        and len(shape) in (1, 3)
        and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)
    ):
        raise ConfigError(f"data.event_shape must be a list of 1 or 3 positive integers: {shape}")
    for name in SPLITS:
        count = data.get(f"num_{name}")
        if not (isinstance(count, int) and not isinstance(count, bool) and count >= 0):
            raise ConfigError(f"data.num_{name} must be a non-negative integer: {count!r:.40}")
    if not isinstance(data.get("name"), str):
        raise ConfigError("data.name must be a string")
    fingerprints = data.get("fingerprints")
    if not (
        isinstance(fingerprints, dict)
        and all(isinstance(fingerprints.get(name), str) for name in SPLITS)
    ):
        raise ConfigError("data.fingerprints must hold a SHA-256 of each split")
    if not isinstance(data.get("transforms"), list):
        raise ConfigError("data.transforms must be a list")
    return data


# --------------------------------------------------------------------------- starting a run
def train(
    config: TrainConfig,
    run_dir: str | Path,
    *,
    model: ModelSpec | None = None,
    dataset: Dataset | StreamedDataset | None = None,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
) -> dict:
    """Start a new run in ``run_dir`` (which must not already hold one); return its summary.

    ``model``: a factory of the user's (:meth:`ModelSpec.of`) instead of the built-in
    architecture the config describes. ``dataset`` replaces loading ``config.dataset``.
    ``callbacks`` run after the run folder's own (checkpoint, metrics) at each epoch's end.
    """
    return start_run(
        config, run_dir, model=model, dataset=dataset, callbacks=callbacks, progress=progress
    ).run()


def start_run(
    config: TrainConfig,
    run_dir: str | Path,
    *,
    model: ModelSpec | None = None,
    dataset: Dataset | StreamedDataset | None = None,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
) -> RunSession:
    """Everything :func:`train` does before training: check every setting against the data
    and the model, write the run folder's ``config.json`` and build the Trainer. Returns the
    session: :meth:`RunSession.run` trains and finishes the run; ``session.trainer`` can also
    be driven directly (:meth:`aevb.train.Trainer.train_epoch`)."""
    parallel = current_process()
    run_dir = _folder(run_dir)

    def check_folder() -> None:
        check_output_folder(run_dir)
        if (run_dir / CONFIG_FILE).exists():
            raise AevbError(
                f"{run_dir} already holds a run; continue it with {resume_hint(run_dir)} or "
                "choose another output folder"
            )

    parallel.on_writer(check_folder)
    custom_model = model is not None
    if custom_model:
        config.check_custom_model()
    if dataset is None:
        config = _decide_streaming(config, progress and parallel.writer)
        config = dataclasses.replace(config, stream=parallel.broadcast(config.stream))
    elif config.stream is None:
        config = dataclasses.replace(config, stream=dataset.streamed)
    if config.workers is not None and not config.stream:
        raise ConfigError(
            f"{setting_name('workers')} sets the processes reading streamed rows: it needs "
            f"{setting_name('stream', True)}"
        )
    if dataset is None:
        dataset = _load(config, progress)
    _summarise_once(dataset)
    if model is None:
        config = config.resolved_for(dataset)
        classes = None
        if config.conditional or config.labels is not None:
            classes = num_classes(dataset)
        model = config.model_spec(dataset.event_shape, classes)
    device = parallel.device(resolve_device(config.device))
    network = _build(model, config, device, dataset.num_train)
    binary_likelihood, eight_bit_likelihood = _likelihood_values(network, dataset)
    transforms, binarize, standardize = choose_transforms(
        dataset.summary,
        dataset.name,
        dataset.binary,
        dataset.is_image,
        binary_likelihood,
        config.binarize,
        config.standardize,
        eight_bit_likelihood=eight_bit_likelihood,
    )
    if dataset.streamed and binarize == "static" and not dataset.binary:
        raise ConfigError(
            f"{setting_name('binarize', 'static')} draws each row once and keeps the draw, "
            "which a stream of rows read anew each epoch cannot; use dynamic or threshold "
            "binarization"
        )
    config = dataclasses.replace(config, binarize=binarize, standardize=standardize)
    data = {
        "name": dataset.name,
        "event_shape": list(dataset.event_shape),
        "num_train": dataset.num_train,
        "num_val": len(dataset.val),
        "num_test": len(dataset.test),
        "fingerprints": {name: dataset.fingerprint(name) for name in SPLITS},
    }
    record = RunRecord(config, model, data, transforms, custom_model)
    session = RunSession(record, run_dir, network, dataset, device, callbacks, progress)
    session.preflight()

    def write_folder() -> None:
        make_folder(run_dir / "checkpoints")
        session.lock.acquire()
        try:
            if (run_dir / CONFIG_FILE).exists():  # another process started a run here meanwhile
                raise AevbError(
                    f"{run_dir} already holds a run; continue it with {resume_hint(run_dir)} "
                    "or choose another output folder"
                )
            _remove_leftovers(run_dir)
            text = json.dumps(record.to_dict(), indent=2) + "\n"
            atomic_write_text(run_dir / CONFIG_FILE, text)
        except BaseException:
            session.close()
            raise

    parallel.on_writer(write_folder)
    return session


def resume(
    run_dir: str | Path,
    *,
    epochs: int | None = None,
    device: str | None = None,
    compile: bool | None = None,
    divergence_guard: bool | None = None,
    workers: int | None = None,
    tensorboard: bool | None = None,
    dataset: Dataset | StreamedDataset | None = None,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
) -> dict:
    """Continue the run in ``run_dir`` from its last checkpoint, optionally to more ``epochs``,
    on another ``device``, with ``compile``, the ``divergence_guard`` or ``tensorboard``
    switched, with another
    number of reader ``workers`` for streamed data (``None`` keeps each as it was). The
    run's data must be those it was trained on (fingerprint), and
    its ``config.json`` the one its checkpoint was written with; the folder must be writable
    and not in use by another process.

    A run killed before its first checkpoint starts over, which, seeded the same way, is the
    run it would have been.
    """
    run_dir = _folder(run_dir)
    record = read_run(run_dir)
    parallel = current_process()
    lock = RunLock(run_dir)
    parallel.on_writer(lock.acquire)
    try:
        changes = {"epochs": epochs, "device": device, "compile": compile}
        changes.update(divergence_guard=divergence_guard, workers=workers, tensorboard=tensorboard)
        if workers is not None and not record.config.stream:
            raise ConfigError(
                f"{setting_name('workers')} sets the processes reading streamed rows: this run "
                "is not streamed"
            )
        config = dataclasses.replace(
            record.config, **{k: v for k, v in changes.items() if v is not None}
        )
        record = dataclasses.replace(record, config=config)
        if dataset is None:
            dataset = _load(config, progress)
        _summarise_once(dataset)
        record.check_data(dataset, run_dir)
        device_ = parallel.device(resolve_device(config.device))
        network = _build(record.spec, config, device_, dataset.num_train)
        session = RunSession(
            record, run_dir, network, dataset, device_, callbacks, progress, lock=lock
        )
        if (run_dir / LAST).exists():
            session.restore(run_dir / LAST)
        if (run_dir / BEST).exists():  # the best epoch's weights, kept unless bettered
            _check_belongs(run_dir / BEST, record, run_dir)

        def write_config() -> None:
            _remove_leftovers(run_dir)
            # The settings resuming may change (epochs, device, compile), as the run has them.
            text = json.dumps(record.to_dict(), indent=2) + "\n"
            atomic_write_text(run_dir / CONFIG_FILE, text)

        parallel.on_writer(write_config)
        return session.run()
    finally:
        lock.release()


def _remove_leftovers(run_dir: Path) -> None:
    """Temporary files of writes cut short by a kill; never read, so just removed."""
    for leftover in [*run_dir.glob(".*.tmp"), *run_dir.glob("checkpoints/.*.tmp")]:
        leftover.unlink(missing_ok=True)


def _load(config: TrainConfig, progress: bool) -> Dataset | StreamedDataset:
    if config.stream:
        return load_streamed(config.dataset, val_fraction=config.val_fraction)
    return load_dataset(
        config.dataset, config.data_dir, val_fraction=config.val_fraction, progress=progress
    )


def _summarise_once(dataset: Dataset | StreamedDataset) -> None:
    """In a data-parallel run, the one pass over streamed training rows (transforms,
    fingerprint) is made by process 0 and shared, rather than made by every process."""
    parallel = current_process()
    if dataset.streamed and parallel.active:
        summary = parallel.on_writer(lambda: dataset.summary)
        dataset.__dict__["summary"] = parallel.broadcast(summary)


def _decide_streaming(config: TrainConfig, say: bool) -> TrainConfig:
    """``config`` with ``stream`` decided (:func:`aevb.data.streamed.should_stream`), said in
    one line when it streams unasked."""
    if config.stream is not None:
        return config
    stream, reason = should_stream(config.dataset)
    if reason and say:
        tqdm.write(f"notice: {reason}", file=sys.stderr)
    return dataclasses.replace(config, stream=stream)


def _build(spec: ModelSpec, config: TrainConfig, device: torch.device, train_rows: int) -> VAE:
    """The model of ``spec`` to train as ``config`` says on ``train_rows`` training rows
    (refused if it cannot fit in memory), its parameters drawn after seeding with the run's
    seed."""
    torch.manual_seed(config.seed)
    rows = min(config.batch_size, train_rows) * config.samples  # rows of one step
    return spec.build(copies=TRAINING_COPIES, rows=rows).to(device)


def _likelihood_values(model: VAE, dataset: Dataset | StreamedDataset) -> tuple[bool, bool]:
    """Whether the model's likelihood is a distribution over {0, 1}, and whether over the
    8-bit levels k/255 (read from its support)."""
    like = torch.zeros(1, *dataset.event_shape, device=next(model.parameters()).device)
    with torch.no_grad():
        try:
            label = torch.zeros(1, dtype=torch.long, device=like.device)
            first = bind(model, label if is_conditional(model) else None)
            likelihood = first.likelihood(like.new_zeros(1, model.latent_dim))
        except (RuntimeError, ValueError, TypeError, IndexError) as error:
            raise ConfigError(f"the model's decoder failed on a latent vector: {error}") from error
    eight_bit = support_is_eight_bit(likelihood)
    return (not eight_bit and support_is_binary(likelihood, like)), eight_bit


def num_classes(dataset: Dataset | StreamedDataset) -> int:
    """The number of classes of a labelled dataset (largest label + 1, at least 2)."""
    labels = [split_labels(dataset, name) for name in SPLITS]
    classes = max(int(values.max()) + 1 for values in labels if len(values))
    if classes < 2:
        raise DataError(f"{dataset.name} has a single class; labels need at least two")
    return classes


def split_labels(dataset: Dataset | StreamedDataset, split: str) -> Tensor:
    """The labels (N,) int64 of one split; refused for a dataset without labels."""
    values = getattr(dataset, f"{split}_labels")
    if values is None:
        raise DataError(
            f"{dataset.name} has no class labels, which a conditional or semi-supervised model "
            "needs (labelled datasets: mnist, fashion-mnist, digits)"
        )
    labels = torch.from_numpy(np.asarray(values)).long()
    if len(labels) and int(labels.min()) < 0:
        raise DataError(f"{dataset.name}'s {split} labels must be class indices ≥ 0")
    return labels


def labelled_rows(labels: np.ndarray, count: int, classes: int, seed: int) -> np.ndarray:
    """Positions of ``count`` training rows whose labels M2 keeps: an equal number per class
    (the first ``count`` mod C classes one more), drawn with ``seed``, sorted."""
    if count < classes:
        raise ConfigError(
            f"{setting_name('labels', count)} keeps fewer labels than the {classes} classes"
        )
    generator = np.random.default_rng(seed)
    chosen = []
    for label in range(classes):
        wanted = count // classes + (label < count % classes)
        rows = np.flatnonzero(labels == label)
        if len(rows) < wanted:
            raise ConfigError(
                f"{setting_name('labels', count)} wants {wanted} rows of class {label}, which "
                f"has {len(rows)}"
            )
        chosen.append(generator.choice(rows, wanted, replace=False))
    return np.sort(np.concatenate(chosen))


def training_loader(
    config: TrainConfig,
    dataset: Dataset | StreamedDataset,
    transforms: Transforms,
    device: torch.device,
    conditional: bool,
    shard: tuple[int, int] = (0, 1),
) -> Loader:
    """The run's training batches: rows alone, rows with their labels (a conditional
    model), or for M2 (``config.labels``) the unlabelled rows with a batch of the few
    labelled ones added to each (:class:`aevb.data.SemiSupervisedLoader`). ``shard``
    ``(rank, world)``: this process's part of each batch in a data-parallel run."""
    if dataset.streamed:
        if config.labels is not None:
            raise ConfigError(
                f"{setting_name('labels')} (M2) needs the training rows in memory: not with "
                f"{setting_name('stream', True)}"
            )
        return StreamLoader(
            dataset.source,
            config.batch_size,
            transforms,
            device=device,
            exclude=dataset.held_out,
            workers=config.workers,
            shard=shard,
            labels=conditional,
        )
    x = torch.from_numpy(dataset.train).to(device)
    if not conditional:
        return TensorLoader(x, config.batch_size, transforms, shard=shard)
    labels = split_labels(dataset, "train").to(device)
    if config.labels is None:
        return TensorLoader(x, config.batch_size, transforms, labels=labels, shard=shard)
    classes = num_classes(dataset)
    keep = labelled_rows(labels.cpu().numpy(), config.labels, classes, config.seed)
    if len(keep) >= len(x):
        raise ConfigError(
            f"{setting_name('labels', config.labels)} leaves no unlabelled training rows"
        )
    kept = torch.from_numpy(keep).to(device)
    rest = torch.ones(len(x), dtype=torch.bool, device=device)
    rest[kept] = False
    unlabelled = TensorLoader(
        x[rest],
        config.batch_size,
        transforms,
        labels=torch.full((int(rest.sum()),), UNLABELLED, dtype=torch.long, device=device),
    )
    labelled = TensorLoader(
        x[kept], min(config.batch_size, len(keep)), transforms, labels=labels[kept]
    )
    return SemiSupervisedLoader(unlabelled, labelled)


class RunSession:
    """A run being trained: its ``record`` (what ``config.json`` holds), its ``trainer`` with
    the run folder's callbacks, and what follows training (:meth:`run`).

    The session holds the run folder's ``lock`` from :func:`start_run` until :meth:`run`
    returns or raises; a session driven by hand (``session.trainer``) gives it up with
    :meth:`close`.
    """

    def __init__(
        self,
        record: RunRecord,
        run_dir: Path,
        model: VAE,
        dataset: Dataset | StreamedDataset,
        device: torch.device,
        callbacks: Sequence[Callback],
        progress: bool,
        lock: RunLock | None = None,
    ):
        config, transforms = record.config, record.transforms
        self.record, self.run_dir, self.dataset, self.progress = record, run_dir, dataset, progress
        self.lock = lock or RunLock(run_dir)
        self.parallel = parallel = current_process()
        self.objective: Objective = make_objective(config.objective, **config.objective_options())
        if parallel.active and (self.objective.custom_update or config.labels is not None):
            what = (
                f"{setting_name('labels')} (M2)"
                if config.labels is not None
                else f"{config.objective!r}"
            )
            raise ConfigError(
                f"{what} trains in one process only, not under torchrun with data parallelism"
            )
        optimizer = make_optimizer(
            config.optimizer,
            self.objective.trainable_parameters(model),
            config.lr,
            config.weight_decay,
        )
        self.conditional = is_conditional(model)
        self.loader = training_loader(
            config, dataset, transforms, device, self.conditional, shard=parallel.shard
        )
        self.val_x = _prepared(transforms, dataset.val, device)
        self.val_labels = self._labels("val", device)
        log_det = transforms.log_abs_det_jacobian
        own: list[Callback] = [Validation(self.val_x, log_det, self.val_labels)]
        if config.patience is not None:
            own.append(EarlyStopping(config.patience))
        # The metrics file before the checkpoint: a kill between the two writes leaves a
        # record of an epoch the resumed run redoes (and rewrites), never a checkpointed epoch
        # without its record.
        self.checkpoints = Checkpoint(
            run_dir / LAST, run_dir / BEST, config.checkpoint_every, identity=record.identity()
        )
        writer = parallel.writer  # the others compute alongside and write nothing
        own += [MetricsFile(run_dir / METRICS_FILE)] if writer else []
        if _tensorboard_on(config) and writer:  # every process checks the package
            own.append(
                TensorBoard(
                    run_dir / TENSORBOARD_DIR,
                    config.to_dict(),
                    self.val_x if dataset.is_image else None,
                    transforms.inverse,
                    self.val_labels,
                )
            )
        own += [self.checkpoints, *callbacks]
        if progress and writer:
            own.append(ProgressBar())
        own += [SignalHandler(), *([CurvePlot(run_dir / "curves.png")] if writer else [])]
        schedule = make_schedule(
            optimizer,
            config.lr_schedule,
            config.lr_warmup_steps,
            config.epochs,
            len(self.loader),
            gamma=config.lr_decay,
            step_epochs=config.lr_step_epochs,
            patience=config.lr_patience,
            minimum=config.lr_final,
        )
        try:
            self.trainer = Trainer(
                model,
                self.objective,
                self.loader,
                optimizer,
                schedule,
                callbacks=own,
                compile=config.compile,
                precision=config.precision,
                clip_grad_norm=config.clip_grad_norm,
                max_nonfinite_steps=config.max_nonfinite_steps,
                divergence_guard=config.divergence_guard,
                distributed=parallel,
            )
        except (RuntimeError, ValueError, TypeError, IndexError) as error:
            if isinstance(error, AevbError) or collective_failure(error):
                raise
            raise ConfigError(f"the model does not fit the data: {error}") from error
        self._started = time.perf_counter()

    def preflight(self) -> None:
        """One loss evaluation on two training rows, without touching the random state, so
        that a model that does not fit its data fails before the run folder exists."""
        if self.objective.custom_update:
            return
        device = self.trainer.device
        cuda = [device] if device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=cuda):
            try:
                head = self.loader.head(2)
                model = bind(self.trainer.model, head.y)
                loss = self.objective(model, head.x).loss
            except (RuntimeError, ValueError, TypeError, IndexError) as error:
                if isinstance(error, AevbError):
                    raise
                raise ConfigError(f"the model does not fit the data: {error}") from error
        if loss.dim() != 0:
            raise ConfigError(f"the objective's loss has shape {tuple(loss.shape)}, not a scalar")

    def restore(self, path: Path) -> None:
        """Continue from the checkpoint at ``path``, which must be this run's."""
        tensors, metadata = ckpt.load_checkpoint(path)
        try:
            self.checkpoints.check_identity(comparable_identity(metadata.get("run")))
            self.trainer.restore(tensors, metadata)
        except (KeyError, RuntimeError, ValueError, TypeError, AttributeError, IndexError) as error:
            raise AevbError(f"checkpoint {path} does not fit this run: {error}") from error

    def close(self) -> None:
        """Give up the run folder's lock."""
        self.lock.release()

    def run(self) -> dict:
        """Train, then evaluate the best weights on the test split and write the summary and
        the image plots."""
        trainer = self.trainer
        if self.progress:
            d, c = self.dataset, self.record.config
            steps = c.epochs * trainer.steps_per_epoch
            compiled = should_compile(c.compile, trainer.device, steps)
            kl = self.objective.kl_rule
            tqdm.write(
                f"{d.name}: {d.num_train} train{' (streamed)' if d.streamed else ''} / "
                f"{len(d.val)} validation / {len(d.test)} test, "
                f"shape {d.event_shape}; data: {self.record.transforms.describe()}; objective "
                f"{c.objective}{f', {kl.description} KL' if kl else ''}; device "
                f"{trainer.device} ({'compiled' if compiled else 'eager'}, {c.precision}); "
                f"run folder {self.run_dir}",
                file=sys.stderr,
            )
        try:
            self._train()
            return self._finish()
        finally:
            self.close()

    def _train(self) -> None:
        """Fit, with what the run folder keeps added to a stop's message."""
        try:
            self.trainer.fit(self.record.config.epochs)
        except TrainingInterrupted as interrupted:
            raise TrainingInterrupted(
                f"{interrupted}; a checkpoint was written to {self.run_dir / LAST}", self.run_dir
            ) from None
        except NumericalFault as fault:
            kept = f"{self.run_dir / LAST} holds that last good state" if fault.saved else ""
            raise NumericalFault(f"{fault}. {kept or self._kept()}", fault.saved) from None
        except StorageError as error:
            raise StorageError(
                error.path,
                f"{error.reason}. {self._kept()}; once it can be written, continue with: "
                f"{resume_hint(self.run_dir)}",
            ) from None
        except RuntimeError as error:
            if not self.parallel.lost_peer(error):
                raise
            first = (str(error).strip().splitlines() or [""])[0][:200]
            raise AevbError(
                f"process {self.parallel.rank} lost contact with the other processes of the "
                f"run, one of which stopped ({first}). {self._kept()}; continue with: "
                f"{resume_hint(self.run_dir)}"
            ) from None

    def _finish(self) -> dict:
        if not self.parallel.writer:  # process 0 evaluates and writes the summary
            return {}
        try:
            return self.finish()
        except StorageError as error:
            raise StorageError(
                error.path,
                f"{error.reason}. Training is complete and checkpointed; once it can be "
                f"written, write the summary and plots with: {resume_hint(self.run_dir)}",
            ) from None

    def _kept(self) -> str:
        """What the run folder keeps, in words: the last checkpoint's progress."""
        path = self.run_dir / LAST
        try:
            _, metadata = ckpt.load_checkpoint(path)
            state = metadata["state"]
            where = f"epoch {state['epoch'] + 1}, step {state['step']}"
            if state["step_in_epoch"] == 0:
                where = f"the end of epoch {state['epoch']} (step {state['step']})"
        except (AevbError, KeyError, TypeError):
            return f"No checkpoint was kept ({path}); resuming starts the run over"
        return f"{path} was not overwritten: it holds the state at {where}"

    def finish(self) -> dict:
        model, state = self.trainer.model, self.trainer.state
        if (self.run_dir / BEST).exists():
            model.load_state_dict(load_weights(self.run_dir / BEST))
        transforms = self.record.transforms
        test_x = _prepared(transforms, self.dataset.test, self.trainer.device)
        test_labels = self._labels("test", self.trainer.device)
        metrics = in_data_units(
            held_out_metrics(self.objective, model, test_x, test_labels),
            transforms.log_abs_det_jacobian,
        )
        if "active_units" in metrics:
            warn_if_collapsed(metrics["active_units"], model.latent_dim)
        summary: dict[str, Any] = {f"test_{name}": value for name, value in metrics.items()}
        summary.update(
            {
                "best_epoch": state.best_epoch,
                f"best_{state.monitor or 'value'}": (
                    state.best_value if state.best_epoch > 0 else None
                ),
                "epochs": state.epoch,
                "steps": state.step,
                "stopped_early": state.stopped_early,
                "train_seconds": state.train_seconds,
                "wall_seconds": time.perf_counter() - self._started,
                "device": str(self.trainer.device),
            }
        )
        atomic_write_text(self.run_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
        if self.dataset.is_image:
            write_image_plots(self.run_dir, model, test_x, transforms.inverse, labels=test_labels)
        return summary

    def _labels(self, split: str, device: torch.device) -> Tensor | None:
        """The labels of a held-out split, for a conditional model (else ``None``)."""
        if not self.conditional:
            return None
        return split_labels(self.dataset, split).to(device)


def _tensorboard_on(config: TrainConfig) -> bool:
    """``--tensorboard`` as given (refused without the package); by default, on where the
    package is installed."""
    if config.tensorboard is None:
        return tensorboard_available()
    if config.tensorboard and not tensorboard_available():
        raise ConfigError(tensorboard_missing())
    return config.tensorboard


def _prepared(transforms: Transforms, rows: np.ndarray, device: torch.device) -> Tensor:
    """Held-out rows in the model's space, on ``device``."""
    return transforms.prepare(torch.from_numpy(np.ascontiguousarray(rows))).to(device)


def load_weights(path: str | Path) -> dict[str, Tensor]:
    """The model weights of a checkpoint."""
    tensors, _ = ckpt.load_checkpoint(path)
    return ckpt.unprefixed("model.", tensors)


# --------------------------------------------------------------------------- using a run
def read_history(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The per-epoch objects of ``metrics.jsonl`` with an integer epoch, and the number of
    other lines (a line cut short by a kill, say)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return [], 0
    history, skipped = [], 0
    for line in filter(str.strip, lines):
        try:
            record = json.loads(line)
        except ValueError:
            skipped += 1
            continue
        if isinstance(record, dict) and isinstance(record.get("epoch"), int):
            history.append(record)
        else:
            skipped += 1
    return history, skipped


class Run:
    """A trained run, opened with :func:`load_run`: its ``model`` (a ``torch.nn.Module`` in
    eval mode), ``record`` (settings, model spec, data and transforms) and ``run_dir``.

    Its methods take data as loaded (:func:`aevb.data.load_dataset`, a table's rows) and apply
    the run's transforms, so they give the numbers ``aevb evaluate`` / ``score`` / ``embed``
    give; :meth:`prepare` alone gives the model-space data the core functions expect.
    """

    def __init__(self, run_dir: Path, record: RunRecord, model: VAE):
        self.run_dir, self.record, self.model = run_dir, record, model
        self._dataset: Dataset | StreamedDataset | None = None
        self._checked: set[str] = set()  # the splits found to be the run's own

    @property
    def config(self) -> TrainConfig:
        return self.record.config

    @property
    def transforms(self) -> Transforms:
        return self.record.transforms

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def is_image(self) -> bool:
        return len(self.record.event_shape) == 3

    @property
    def history(self) -> list[dict[str, Any]]:
        """The training curves: one dict per epoch, as ``metrics.jsonl`` holds them
        (``epoch``, ``step``, ``train_elbo``, ``val_elbo``, … in nats per example)."""
        return read_history(self.run_dir / METRICS_FILE)[0]

    def split(self, name: str, limit: int | None = None) -> Tensor:
        """The first ``limit`` rows of the run's ``train``, ``val`` or ``test`` split, as
        loaded (before the transforms): (N, *data_shape) on the CPU."""
        if name not in SPLITS:
            raise AevbError(f"unknown split {name!r}; choose from {', '.join(SPLITS)}")
        if limit is not None and (not isinstance(limit, Integral) or limit < 1):
            raise AevbError(f"limit must be a positive integer or None, got {limit!r}")
        if self._dataset is None:
            self._dataset = _load(self.config, progress=False)
        if name not in self._checked:
            self.record.check_data(self._dataset, self.run_dir, [name])
            self._checked.add(name)
        rows = self._dataset.split(name, limit)
        if len(rows) == 0:
            raise AevbError(f"the {name} split of {self.config.dataset} is empty")
        return torch.from_numpy(np.ascontiguousarray(rows))

    def prepare(self, x: np.ndarray | Tensor, where: str = "the data") -> Tensor:
        """Rows as loaded → the model's space (the run's binarization with its fixed
        evaluation seed, standardisation), on the model's device."""
        if isinstance(x, np.ndarray):
            if x.dtype.kind not in "biuf":
                raise DataError(f"{where} must hold numbers, got dtype {x.dtype}")
            with np.errstate(over="ignore"):  # beyond float32: inf, refused below
                x = np.asarray(x, dtype=np.float32)
        x = torch.as_tensor(x)
        if x.dim() >= 2 and len(x) == 0:
            raise DataError(f"{where} has no rows")
        if x.dim() < 2 or tuple(x.shape[1:]) != self.record.event_shape:
            raise DataError(
                f"{where} has rows of shape {tuple(x.shape[1:])}, but the model in "
                f"{self.run_dir} was trained on rows of shape {self.record.event_shape}"
            )
        if not bool(torch.isfinite(x).all()):
            raise DataError(f"{where} holds NaN, infinite or (beyond float32) too large values")
        self.transforms.check(x, where)
        return self.transforms.prepare(x.float()).to(self.device)

    def labels(self, name: str, limit: int | None = None) -> Tensor:
        """The class labels (N,) int64 of the first ``limit`` rows of split ``name`` (for a
        conditional model's :meth:`evaluate`, :meth:`encode`, :meth:`reconstruct`)."""
        self.split(name, limit)  # checks the split is the run's own
        assert self._dataset is not None
        return split_labels(self._dataset, name)[:limit]

    def _checked_labels(self, labels: Any, rows: int) -> Tensor | None:
        checked = checked_labels(self.model, labels, rows)
        return None if checked is None else checked.to(self.device)

    def evaluate(
        self,
        x: np.ndarray | Tensor,
        labels: Any = None,
        progress: bool = True,
        warn: bool = True,
        **options: Any,
    ) -> Evaluation:
        """:func:`aevb.evaluation.evaluate` of rows as loaded, in the data's units (given
        their ``labels`` for a conditional model), with a progress report on stderr unless
        ``progress=False`` (a bar on a terminal, a line every 30 s in a log). Unless
        ``warn=False``, a warning says when the log-likelihood estimate cannot be trusted
        (Pareto k̂ of the importance weights) or the posterior has collapsed; under a
        data-parallel evaluation (``parallel=``), process 0 alone says it."""
        result = evaluate(self.model, self.prepare(x), labels=labels, progress=progress, **options)
        parallel = options.get("parallel")
        if warn and (parallel is None or parallel.writer):
            warn_if_collapsed(result.active_units, result.latent_dim, stacklevel=2)
            diagnostics = result.importance_diagnostics
            unreliable = None if diagnostics is None else diagnostics.warning()
            if unreliable:
                warnings.warn(unreliable, stacklevel=2)
        return result.in_data_units(self.transforms.log_abs_det_jacobian)

    def log_likelihood_per_example(
        self,
        x: np.ndarray | Tensor,
        importance_samples: int = 1000,
        seed: int = 0,
        where: str = "the data",
        labels: Any = None,
    ) -> Tensor:
        """Each row's importance-sampled log p(x) (log p(x|y) given ``labels`` for a
        conditional model), nats (float64), in the data's units."""
        x = self.prepare(x, where)
        values = log_likelihood_per_example(self.model, x, importance_samples, seed, labels)
        return values + self.transforms.log_abs_det_jacobian

    @torch.no_grad()
    def encode(
        self, x: np.ndarray | Tensor, where: str = "the data", labels: Any = None
    ) -> Distribution:
        """q(z|x) (q(z|x, y) for a conditional model, given ``labels``) of rows as loaded."""
        x = self.prepare(x, where)
        return bind(self.model, self._checked_labels(labels, len(x))).posterior(x)

    @torch.no_grad()
    def sample(self, num_samples: int, mean: bool = True, label: Any = None) -> Tensor:
        """Ancestral samples (decoder means unless ``mean=False``) in the data's units; a
        conditional model draws class ``label`` (an int, or one label per sample; by default
        the classes in turn)."""
        if not is_conditional(self.model):
            if label is not None:
                raise AevbError(
                    f"the model in {self.run_dir} is not conditional: it takes no label"
                )
            return self.transforms.inverse(self.model.sample(num_samples, mean=mean))
        classes = self.model.num_classes
        if isinstance(label, Integral) and not isinstance(label, bool):
            if not 0 <= label < classes:
                raise AevbError(f"label must be a class in 0…{classes - 1}, got {label}")
        try:
            samples = self.model.sample(num_samples, mean=mean, label=label)
        except (ValueError, TypeError, RuntimeError) as error:
            raise AevbError(str(error)) from error
        return self.transforms.inverse(samples)

    @torch.no_grad()
    def classification_error(self, x: np.ndarray | Tensor, labels: Any) -> float:
        """Share of rows as loaded whose most probable class under a semi-supervised model's
        classifier q(y|x) is not their label."""
        classify = getattr(self.model, "classify", None)
        if classify is None:
            raise AevbError(
                f"the model in {self.run_dir} has no classifier (train with "
                f"{setting_name('labels')})"
            )
        x = self.prepare(x)
        truth = self._checked_labels(labels, len(x))
        errors = 0
        for start in range(0, len(x), CLASSIFY_BATCH):
            predicted = classify(x[start : start + CLASSIFY_BATCH]).logits.argmax(-1)
            errors += int((predicted != truth[start : start + CLASSIFY_BATCH]).sum())
        return errors / len(x)

    @torch.no_grad()
    def reconstruct(self, x: np.ndarray | Tensor, labels: Any = None) -> Tensor:
        """Decoder means at the posterior means of rows as loaded (given their ``labels`` for
        a conditional model), in the data's units."""
        x = self.prepare(x)
        model = bind(self.model, self._checked_labels(labels, len(x)))
        return self.transforms.inverse(model.reconstruct(x))


def load_run(run_dir: str | Path, which: str = "best", device: str = "cpu") -> Run:
    """Open the run in ``run_dir`` with its ``best`` (or ``last``) weights on ``device``."""
    run_dir = _folder(run_dir)
    record = read_run(run_dir)
    if which not in ("best", "last"):
        raise AevbError(f"which must be 'best' or 'last', got {which!r}")
    device_ = resolve_device(device)
    model = record.spec.build(copies=1)
    path = run_dir / (BEST if which == "best" else LAST)
    if which == "best" and not path.exists():
        path = run_dir / LAST
    tensors = _check_belongs(path, record, run_dir)
    try:
        model.load_state_dict(ckpt.unprefixed("model.", tensors))
    except RuntimeError as error:
        raise AevbError(f"{path} does not match the model in {run_dir}/config.json") from error
    return Run(run_dir, record, model.to(device_).eval())


def _folder(run_dir: str | Path) -> Path:
    """``run_dir`` as a path; anything else (None, a number) is refused."""
    if not isinstance(run_dir, str | os.PathLike) or not str(run_dir).strip():
        raise AevbError(f"a run folder is a path, got {type(run_dir).__name__} {run_dir!r:.40}")
    return Path(run_dir)


def _check_belongs(path: Path, record: RunRecord, run_dir: Path) -> dict[str, Tensor]:
    """The tensors of the checkpoint at ``path``, refused unless it is sound and was written
    by the run ``record`` describes."""
    tensors, metadata = ckpt.load_checkpoint(path)
    saved = comparable_identity(metadata.get("run"))
    if saved != record.identity():
        changed = differences(saved, record.identity())
        raise AevbError(
            f"{path} does not belong to the run in {run_dir}: it was written by another run, "
            f"or {CONFIG_FILE} was edited since ({'; '.join(changed[:5])})"
        )
    return tensors


def load_model(run_dir: str | Path, which: str = "best", device: str = "cpu") -> VAE:
    """The trained model of a run folder (``which`` = ``best`` or ``last`` checkpoint)."""
    return load_run(run_dir, which, device).model
