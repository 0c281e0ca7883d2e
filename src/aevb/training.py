"""AEVB training: the loop, its configuration, run folders, checkpoints and resumption.

The data path: the dataset becomes one tensor on the training device; each epoch draws a
permutation (and, for dynamic binarization, a Bernoulli draw) on the device, and batches are
contiguous slices of the permuted tensor. Metrics accumulate on the device, so the step has no
host synchronisation; the host reads them at the end of an epoch and a few times for the
progress bar.

A run folder holds ``config.json``, ``checkpoints/last.safetensors`` (weights, optimiser and
random state: enough to resume bit for bit), ``checkpoints/best.safetensors`` (weights with the
best validation ELBO), ``metrics.jsonl`` (one object per epoch), ``summary.json`` and plots.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from aevb import checkpoints as ckpt
from aevb.acceleration import PRECISIONS, CompiledStep, autocast, should_compile
from aevb.data import Dataset, load_dataset
from aevb.diagnostics import warn_if_collapsed
from aevb.distributions import is_factorised
from aevb.errors import AevbError, ConfigError
from aevb.evaluation import evaluate
from aevb.models import LOG_VARIANCE_RANGE, VAE, ModelConfig
from aevb.objectives import (
    OBJECTIVES,
    Objective,
    kl_weight,
    make_objective,
    warn_if_warmup_incomplete,
)

BINARIZATIONS = ("dynamic", "static", "threshold", "none")
OPTIMIZERS = ("adam", "adagrad", "sgd")
# Validation and test sets are binarized once with this seed, whatever the run's seed, so
# that evaluations of different runs see the same binary images.
EVAL_BINARIZATION_SEED = 2014
EVAL_SEED = 0
# Rows per batch of the per-epoch validation and the final test ELBO (single-sample estimator B).
EVAL_BATCH = 10_000
CONFIG_FILE = "config.json"
LAST = "checkpoints/last.safetensors"
BEST = "checkpoints/best.safetensors"


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved as JSON in the run folder.

    ``likelihood`` and ``binarize`` left as ``None`` are chosen from the data when the run
    starts (Bernoulli with dynamic binarization for images in [0, 1]; a learned-variance
    Gaussian with sigmoid mean for Frey Face and for data outside [0, 1]). Binarization:
    ``dynamic`` draws x ~ Bernoulli(grey value) anew each epoch; ``static`` draws once with a
    fixed seed (the ``binarized-mnist`` dataset is the Larochelle–Murray static set);
    ``threshold`` is x > 0.5; ``none`` keeps the values.

    ``compile`` runs the training step through ``torch.compile`` (with CUDA graphs on a GPU);
    ``None`` decides by device and run length (:func:`aevb.acceleration.should_compile`).
    ``precision="bf16"`` computes the networks under bfloat16 autocast, for GPUs; densities,
    KL and loss stay float32, and evaluation is always float32 or better.

    A step whose loss or gradient is not finite is skipped (the parameters and optimiser state
    stay as they were) and logged; after ``max_nonfinite_steps`` such steps the run stops with
    a diagnosis (:class:`NumericalFault`).
    """

    dataset: str = "digits"
    data_dir: str | None = None
    binarize: str | None = None
    val_fraction: float = 0.1
    likelihood: str | None = None
    likelihood_std: float = 0.1
    squash_mean: bool | None = None
    latent_dim: int = 20
    hidden: tuple[int, ...] = (500,)
    activation: str = "tanh"
    init: str = "default"
    posterior: str = "diagonal"
    objective: str = "sgvb-b"
    samples: int = 1
    beta: float = 1.0
    beta_start: float = 0.0
    warmup_steps: int = 0
    free_bits: float = 0.0
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    clip_grad_norm: float | None = None
    batch_size: int = 100
    epochs: int = 50
    patience: int | None = None
    checkpoint_every: int = 0
    seed: int = 0
    device: str = "auto"
    compile: bool | None = None
    precision: str = "float32"
    max_nonfinite_steps: int = 10

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)
        checks = [
            (self.binarize in (None, *BINARIZATIONS), f"binarize must be one of {BINARIZATIONS}"),
            (self.objective in OBJECTIVES, f"objective must be one of {sorted(OBJECTIVES)}"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}"),
            (self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}"),
            (0 <= self.val_fraction < 1, "val_fraction must be in [0, 1)"),
            (self.samples >= 1, "samples must be at least 1"),
            (self.batch_size >= 1, "batch_size must be at least 1"),
            (self.epochs >= 0, "epochs must be non-negative"),
            (self.lr > 0, "lr must be positive"),
            (self.weight_decay >= 0, "weight_decay must be non-negative"),
            (self.beta >= 0 and self.beta_start >= 0, "beta and beta_start must be non-negative"),
            (self.warmup_steps >= 0, "warmup_steps must be non-negative"),
            (self.free_bits >= 0, "free_bits must be non-negative"),
            (self.patience is None or self.patience >= 1, "patience must be at least 1"),
            (self.checkpoint_every >= 0, "checkpoint_every must be non-negative"),
            (self.max_nonfinite_steps >= 1, "max_nonfinite_steps must be at least 1"),
            (self.clip_grad_norm is None or self.clip_grad_norm > 0, "clip_grad_norm must be > 0"),
            (
                self.device in ("auto", "cpu") or self.device.startswith("cuda"),
                "device must be auto, cpu or cuda[:N]",
            ),
        ]
        problems = [message for ok, message in checks if not ok]
        if problems:
            raise ConfigError("invalid training settings: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise AevbError(f"unknown training settings: {sorted(unknown)}")
        return cls(**values)


class TrainingInterrupted(AevbError):
    """Training stopped on SIGINT/SIGTERM after writing a checkpoint it can resume from."""


class NumericalFault(AevbError):
    """Training stopped after too many steps with a non-finite loss or gradient."""


def resolve_device(name: str) -> torch.device:
    """``auto`` → the first CUDA device if there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AevbError(f"device {name!r} requested but CUDA is not available on this machine")
    return device


def resolve_data_settings(config: TrainConfig, dataset: Dataset) -> TrainConfig:
    """Fill in ``likelihood``, ``squash_mean`` and ``binarize`` from the data; check they fit."""
    lo, hi = float(dataset.train.min()), float(dataset.train.max())
    in_unit_interval = lo >= 0.0 and hi <= 1.0
    likelihood = config.likelihood
    if likelihood is None:
        grey_faces = dataset.name == "frey"
        likelihood = "bernoulli" if in_unit_interval and not grey_faces else "gaussian-learned"
    squash_mean = config.squash_mean
    if squash_mean is None:
        squash_mean = likelihood == "gaussian-learned" and in_unit_interval
    binarize = config.binarize
    if binarize is None:
        binarize = (
            "static" if dataset.binary else "dynamic" if likelihood == "bernoulli" else "none"
        )
    if likelihood == "bernoulli":
        if not in_unit_interval:
            raise AevbError(
                f"the Bernoulli likelihood needs data in [0, 1], but {dataset.name} spans "
                f"[{lo:g}, {hi:g}]; rescale the data or use --likelihood gaussian-learned"
            )
        if binarize == "none" and not dataset.binary:
            raise AevbError(
                f"{dataset.name} holds grey values, and a Bernoulli likelihood is a distribution "
                "over {0, 1}: its log-probability of a grey value is not a log-likelihood. "
                "Binarize (--binarize dynamic|static|threshold) or use a Gaussian likelihood"
            )
    return dataclasses.replace(
        config, likelihood=likelihood, squash_mean=squash_mean, binarize=binarize
    )


def training_loss(
    model: VAE, objective: Objective, x: Tensor, beta: Tensor, precision: str = "float32"
) -> tuple[Tensor, Tensor]:
    """The differentiable part of a training step, compiled on the fast path.

    x: (batch, data_dim); ``beta`` the KL weight, a 0-dim tensor on x's device (a tensor, so
    that a warm-up does not recompile). Returns the loss to minimise (nats per example) and
    the batch's summed (ELBO, reconstruction, KL, rows), (4,), detached.
    """
    with autocast(x.device, precision):
        terms = objective(model, x, beta)
    values = (terms.elbo, terms.reconstruction, terms.kl, torch.ones_like(terms.elbo))
    return terms.loss, torch.stack(values).detach() * x.shape[0]


def binarize_once(x: np.ndarray, mode: str, seed: int = EVAL_BINARIZATION_SEED) -> Tensor:
    """Binarize x once: a Bernoulli draw with a fixed seed (``dynamic`` and ``static``),
    thresholding at 0.5 (``threshold``), or nothing (``none``).

    Used for the validation and test splits of every run, and for the training split of a
    ``static`` run (binary data such as the Larochelle–Murray files pass through unchanged).
    """
    values = torch.from_numpy(x)
    if mode in ("dynamic", "static"):
        generator = torch.Generator().manual_seed(seed)
        return torch.bernoulli(values, generator=generator)
    if mode == "threshold":
        return (values > 0.5).to(values.dtype)
    return values


class DynamicBinarization:
    """Fresh binary images x ~ Bernoulli(grey) each epoch, for fixed grey values in [0, 1].

    Hand-written because the draw is hot on the CPU, where torch's generator is serial: a
    pixel with grey value 0 or 1 is certain, and where such pixels are the majority only the
    others get a random number. On MNIST (18% uncertain) an epoch's draw took 0.23 s this way
    against 0.47 s for ``rand < p`` over every pixel (two cores); on Fashion-MNIST (49%) 0.43
    against 0.50 s. Above half uncertain, every pixel is drawn.
    """

    def __init__(self, grey: Tensor):
        self.grey = grey
        flat = grey.reshape(-1)
        uncertain = (flat > 0) & (flat < 1)
        self.sparse = bool(uncertain.float().mean() <= 0.5)
        if self.sparse:
            self.certain = (grey >= 1).to(grey.dtype)
            self.uncertain = uncertain.nonzero().squeeze(1)
            self.probabilities = flat[self.uncertain]

    def draw(self) -> Tensor:
        """One binary draw of the whole table: same shape and dtype as ``grey``."""
        if not self.sparse:
            # u < p with u uniform: twice as fast as torch.bernoulli.
            return (torch.rand_like(self.grey) < self.grey).to(self.grey.dtype)
        binary = self.certain.clone()
        draws = torch.rand_like(self.probabilities) < self.probabilities
        binary.view(-1)[self.uncertain] = draws.to(binary.dtype)
        return binary


@dataclass
class TrainState:
    """Progress of a run, saved in every checkpoint.

    ``epoch`` is the epoch in progress (0-based) and ``step_in_epoch`` the batches of it done;
    ``epoch_start_rng`` is the random state before that epoch's permutation was drawn, so a
    resumed run draws the same permutation and binarization. ``nonfinite_steps`` lists the
    (1-based) steps skipped for a non-finite loss or gradient.
    """

    epoch: int = 0
    step_in_epoch: int = 0
    step: int = 0
    best_val_elbo: float = -math.inf
    best_epoch: int = -1
    epochs_without_improvement: int = 0
    stopped_early: bool = False
    nonfinite_steps: list[int] = dataclasses.field(default_factory=list)
    train_seconds: float = 0.0
    history: list[dict] = dataclasses.field(default_factory=list)


class Trainer:
    """Fits a :class:`~aevb.models.VAE` by AEVB and manages its run folder.

    Use :func:`train` to start a run and :func:`resume` to continue one; both return the summary.
    ``on_epoch_end(trainer)`` is called after each epoch's checkpoint is written.
    """

    def __init__(
        self,
        config: TrainConfig,
        run_dir: str | Path,
        dataset: Dataset | None = None,
        progress: bool = True,
        on_epoch_end: Callable[[Trainer], None] | None = None,
    ):
        self.run_dir = Path(run_dir)
        self.device = resolve_device(config.device)
        self.progress = progress
        self.on_epoch_end = on_epoch_end
        if dataset is None:
            dataset = load_dataset(
                config.dataset, config.data_dir, val_fraction=config.val_fraction, progress=progress
            )
        self.dataset = dataset
        self.config = resolve_data_settings(config, dataset)
        c = self.config
        self.model_config = ModelConfig(
            data_dim=dataset.data_dim,
            latent_dim=c.latent_dim,
            hidden=c.hidden,
            activation=c.activation,
            likelihood=c.likelihood,
            likelihood_std=c.likelihood_std,
            squash_mean=c.squash_mean,
            init=c.init,
            posterior=c.posterior,
        )
        torch.manual_seed(c.seed)
        self.model = VAE(self.model_config).to(self.device)
        self.objective = make_objective(c.objective, c.samples, c.free_bits)
        self.optimizer = make_optimizer(c, self.model.parameters())
        self._fused_optimizer = self.optimizer.defaults.get("fused") is True
        # Dynamic binarization draws anew each epoch; the other modes binarize once, here.
        self.train_x = (
            torch.from_numpy(dataset.train)
            if c.binarize == "dynamic"
            else binarize_once(dataset.train, c.binarize)
        ).to(self.device)
        self.val_x = binarize_once(dataset.val, c.binarize).to(self.device)
        self._binarization = DynamicBinarization(self.train_x) if c.binarize == "dynamic" else None
        compile_step = should_compile(c.compile, self.device, c.epochs * self.steps_per_epoch)
        self.training_step = CompiledStep(
            training_loss, self.device, compile_step, self.model.parameters()
        )
        self.state = TrainState()
        self._stop_signal: int | None = None
        self._bar = tqdm(disable=True)

    # ----------------------------------------------------------------------------- run folder
    def run_config(self) -> dict:
        return {
            "train": self.config.to_dict(),
            "model": self.model_config.to_dict(),
            "data": {
                "name": self.dataset.name,
                "image_shape": self.dataset.image_shape,
                "num_train": len(self.dataset.train),
                "num_val": len(self.dataset.val),
                "num_test": len(self.dataset.test),
            },
        }

    def save(self, path: str) -> None:
        """Write a resumable checkpoint (weights, optimiser, random state, progress)."""
        opt_tensors, opt_rest = ckpt.optimizer_state_to_tensors(self.optimizer.state_dict())
        tensors = {
            **ckpt.prefixed("model.", self.model.state_dict()),
            **ckpt.prefixed("optimizer.", opt_tensors),
            **ckpt.prefixed("rng.", ckpt.rng_state()),
            **ckpt.prefixed("epoch_start_rng.", self._epoch_start_rng),
            **ckpt.prefixed("epoch_sums.", {"sums": self._epoch_sums}),
        }
        metadata = {"state": dataclasses.asdict(self.state), "optimizer": opt_rest}
        ckpt.save_checkpoint(self.run_dir / path, tensors, metadata)

    def restore(self, path: str) -> None:
        tensors, metadata = ckpt.load_checkpoint(self.run_dir / path)
        try:
            self.model.load_state_dict(ckpt.unprefixed("model.", tensors))
            self.optimizer.load_state_dict(
                ckpt.optimizer_state_from_tensors(
                    ckpt.unprefixed("optimizer.", tensors), metadata["optimizer"]
                )
            )
            self.state = TrainState(**metadata["state"])
        except (KeyError, RuntimeError, ValueError, TypeError) as error:
            raise AevbError(
                f"checkpoint {self.run_dir / path} does not fit this run: {error}"
            ) from error
        self._epoch_start_rng = ckpt.unprefixed("epoch_start_rng.", tensors)
        self._epoch_sums = tensors["epoch_sums.sums"].to(self.device)
        # Mid-epoch, the random stream continues from where the checkpoint left it, after the
        # epoch's permutation is redrawn; at an epoch boundary the two states are the same.
        mid_epoch = self.state.step_in_epoch > 0
        self._rng_after_restore = ckpt.unprefixed("rng.", tensors) if mid_epoch else None

    def _save_best(self) -> None:
        ckpt.save_checkpoint(
            self.run_dir / BEST,
            ckpt.prefixed("model.", self.model.state_dict()),
            {"epoch": self.state.epoch, "val_elbo": self.state.best_val_elbo},
        )

    def _write_metrics(self) -> None:
        lines = "".join(json.dumps(record) + "\n" for record in self.state.history)
        ckpt.atomic_write_text(self.run_dir / "metrics.jsonl", lines)

    # ------------------------------------------------------------------------------- training
    def start(self, resume: bool = False) -> None:
        """Prepare the run folder, or restore the last checkpoint of the run if ``resume``.

        A run killed before its first checkpoint resumes by starting over, which, seeded the
        same way, is the run it would have been.
        """
        self._started = time.perf_counter()
        (self.run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        # Temporary files of writes cut short by a kill; never read, so just removed.
        for leftover in [*self.run_dir.glob(".*.tmp"), *self.run_dir.glob("checkpoints/.*.tmp")]:
            leftover.unlink(missing_ok=True)
        if resume and (self.run_dir / LAST).exists():
            self.restore(LAST)
            return
        ckpt.atomic_write_text(
            self.run_dir / CONFIG_FILE, json.dumps(self.run_config(), indent=2) + "\n"
        )
        self._epoch_start_rng = ckpt.rng_state()
        self._epoch_sums = torch.zeros(4, device=self.device)
        self._rng_after_restore = None

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.train_x) / self.config.batch_size)

    def fit(self, resume: bool = False, finish: bool = True) -> dict:
        """Train for ``config.epochs`` epochs (from the last checkpoint if ``resume``); then,
        if ``finish``, evaluate on the test split and write the summary and plots."""
        c = self.config
        self.start(resume)
        total_steps = c.epochs * self.steps_per_epoch
        warn_if_warmup_incomplete(total_steps, c.warmup_steps, c.beta, c.beta_start)
        if self.progress:
            d = self.dataset
            tqdm.write(
                f"{d.name}: {len(d.train)} train / {len(d.val)} validation / {len(d.test)} test, "
                f"{d.data_dim} dimensions; likelihood {c.likelihood}, binarize {c.binarize}, "
                f"objective {c.objective}, device {self.device} "
                f"({'compiled' if self.training_step.active else 'eager'}, {c.precision}); "
                f"run folder {self.run_dir}",
                file=sys.stderr,
            )
        self._bar = tqdm(
            total=total_steps,
            initial=self.state.step,
            disable=not self.progress,
            desc="train",
            unit="step",
            dynamic_ncols=True,
        )
        with self._bar, self._signals_checkpoint():
            while self.state.epoch < c.epochs and not self.state.stopped_early:
                self.train_epoch()
        if self.state.stopped_early:
            warn_if_warmup_incomplete(self.state.step, c.warmup_steps, c.beta, c.beta_start)
        return self.finish() if finish else {}

    def _epoch_data(self) -> Tensor:
        """Permute (and, if dynamic, binarize) the training set for the current epoch."""
        ckpt.set_rng_state(self._epoch_start_rng)
        permutation = torch.randperm(len(self.train_x), device=self.device)
        if self._binarization is not None:
            return self._binarization.draw()[permutation]
        return self.train_x[permutation]

    def train_epoch(self) -> dict:
        """One pass over the training set, then validation and a checkpoint.

        Returns the epoch's metrics record (also appended to ``metrics.jsonl``).
        """
        c, state, bar = self.config, self.state, self._bar
        started = time.perf_counter()
        x_epoch = self._epoch_data()
        if self._rng_after_restore is not None:  # resuming mid-epoch: continue its stream
            ckpt.set_rng_state(self._rng_after_restore)
            self._rng_after_restore = None
        sums = self._epoch_sums
        refresh = max(1, self.steps_per_epoch // 10)
        parameters = list(self.model.parameters())
        # Per step: 1.0 where the step was not finite (and skipped); read at sync points.
        self._fault_flags = torch.zeros(self.steps_per_epoch, device=self.device)
        self._faults_reported = state.step_in_epoch
        nonfinite = torch.zeros((), device=self.device)
        one = torch.ones((), device=self.device)
        if self._fused_optimizer:
            self.optimizer.found_inf = nonfinite  # the fused kernels skip on the device
        beta = torch.tensor(
            kl_weight(state.step, c.warmup_steps, c.beta, c.beta_start), device=self.device
        )
        self.model.train()
        for start in range(state.step_in_epoch * c.batch_size, len(x_epoch), c.batch_size):
            batch = x_epoch[start : start + c.batch_size]
            if state.step <= c.warmup_steps:  # the KL weight changes only during the warm-up
                beta.fill_(kl_weight(state.step, c.warmup_steps, c.beta, c.beta_start))
            self.optimizer.zero_grad(set_to_none=True)
            loss, batch_sums = self.training_step(
                self.model, self.objective, batch, beta, c.precision
            )
            # On the device: nonfinite = 1.0 if the loss or any gradient is NaN or ±inf. The
            # multi-tensor check is the one GradScaler uses (0.09 ms for the MNIST model on
            # two cores; grads are multiplied by 1).
            nonfinite.copy_(~torch.isfinite(loss.detach()))
            grads = [p.grad for p in parameters if p.grad is not None]
            torch._amp_foreach_non_finite_check_and_unscale_(grads, nonfinite, one)
            if c.clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(parameters, c.clip_grad_norm)
            if self._fused_optimizer or not nonfinite.item():  # others skip via the host
                self.optimizer.step()
            sums += torch.where(nonfinite > 0, 0.0, batch_sums)
            self._fault_flags[state.step_in_epoch] = nonfinite
            state.step += 1
            state.step_in_epoch += 1
            bar.update()
            if state.step_in_epoch % refresh == 0:  # a host sync, a few times per epoch
                elbo, rows = sums[0].item(), sums[3].item()
                bar.set_postfix(epoch=state.epoch + 1, elbo=f"{elbo / max(rows, 1):.2f}")
                self._collect_faults()
            if self._stop_signal is not None or (
                c.checkpoint_every and state.step % c.checkpoint_every == 0
            ):
                state.train_seconds += time.perf_counter() - started
                started = time.perf_counter()
                self._collect_faults()
                self.save(LAST)
                if self._stop_signal is not None:
                    raise TrainingInterrupted(
                        f"training interrupted (signal {self._stop_signal}) at epoch "
                        f"{state.epoch + 1}, step {state.step}; a checkpoint was written. "
                        f"Continue with: aevb train --resume {self.run_dir}"
                    )
        state.train_seconds += time.perf_counter() - started
        self._collect_faults()
        record = self._end_epoch(sums)
        bar.set_postfix(
            epoch=record["epoch"],
            train_elbo=f"{record['train_elbo']:.2f}",
            val_elbo=f"{record.get('val_elbo', math.nan):.2f}",
        )
        return record

    def _collect_faults(self) -> None:
        """At a sync point: log the steps skipped since the last one, and stop with a
        diagnosis once there are ``max_nonfinite_steps`` of them."""
        c, state = self.config, self.state
        flags = self._fault_flags[self._faults_reported : state.step_in_epoch]
        first = state.step - state.step_in_epoch + self._faults_reported + 1
        self._faults_reported = state.step_in_epoch
        steps = [first + int(i) for i in flags.nonzero().flatten().tolist()]
        if not steps:
            return
        state.nonfinite_steps += steps
        tqdm.write(
            f"warning: non-finite loss or gradient at step{'s' if len(steps) > 1 else ''} "
            f"{', '.join(map(str, steps))} (epoch {state.epoch + 1}); skipped "
            f"({len(state.nonfinite_steps)} of at most {c.max_nonfinite_steps})",
            file=sys.stderr,
        )
        if len(state.nonfinite_steps) >= c.max_nonfinite_steps:
            self.save(LAST)
            raise NumericalFault(self._diagnosis())

    @torch.no_grad()
    def _diagnosis(self) -> str:
        """Why training keeps producing non-finite values, as far as the model can tell."""
        c, state = self.config, self.state
        findings = []
        bad = [name for name, p in self.model.named_parameters() if not p.isfinite().all()]
        if bad:
            findings.append(f"parameters {', '.join(bad)} are not finite")
        x = (self.val_x if len(self.val_x) else self.train_x)[:1000]
        posterior = self.model.posterior(x)
        if is_factorised(posterior):
            log_variance = 2 * posterior.base_dist.scale.log()
            low, high = log_variance.min().item(), log_variance.max().item()
            edge = min(abs(low - LOG_VARIANCE_RANGE[0]), abs(high - LOG_VARIANCE_RANGE[1]))
            findings.append(
                f"the encoder's log-variances span [{low:.3g}, {high:.3g}]"
                + (f" and reach the edge of their range {LOG_VARIANCE_RANGE}" if edge < 1 else "")
            )
        loss = self.objective(self.model, x).loss
        finding = f"the loss on {len(x)} held-out rows is {loss.item():.4g}"
        if not loss.isfinite():
            finding += ", so the parameters themselves are at fault, not one batch"
        findings.append(finding)
        shown = ", ".join(map(str, state.nonfinite_steps[:10]))
        return (
            f"training stopped: {len(state.nonfinite_steps)} steps had a non-finite loss or "
            f"gradient (steps {shown}{', …' if len(state.nonfinite_steps) > 10 else ''}; "
            f"limit --max-nonfinite-steps {c.max_nonfinite_steps}). They were skipped, and "
            f"{self.run_dir / LAST} holds the last good state. Diagnosis: "
            + "; ".join(findings)
            + f". Lower the learning rate (now {c.lr:g}), clip gradients (--clip-grad-norm), "
            "or warm the KL term up (--warmup-steps)"
        )

    def _end_epoch(self, sums: Tensor) -> dict:
        c, state = self.config, self.state
        elbo, reconstruction, kl, rows = sums.tolist()
        if rows == 0:
            raise NumericalFault(f"every step of epoch {state.epoch + 1} was non-finite")
        record = {
            "epoch": state.epoch + 1,
            "step": state.step,
            "train_elbo": elbo / rows,
            "train_reconstruction": reconstruction / rows,
            "train_kl": kl / rows,
        }
        skipped = [s for s in state.nonfinite_steps if s > state.step - self.steps_per_epoch]
        if skipped:
            record["nonfinite_steps"] = skipped
        if len(self.val_x):
            val = evaluate(self.model, self.val_x, 1, batch_size=EVAL_BATCH, seed=EVAL_SEED)
            record.update(val_elbo=val.elbo, val_reconstruction=val.reconstruction, val_kl=val.kl)
        record["seconds"] = state.train_seconds
        state.history.append(record)
        improved = record.get("val_elbo", record["train_elbo"]) > state.best_val_elbo
        if improved:
            state.best_val_elbo = record.get("val_elbo", record["train_elbo"])
            state.best_epoch = state.epoch + 1
            state.epochs_without_improvement = 0
        else:
            state.epochs_without_improvement += 1
            state.stopped_early = c.patience is not None and (
                state.epochs_without_improvement >= c.patience
            )
        state.epoch += 1
        state.step_in_epoch = 0
        if improved:
            self._save_best()
        self._epoch_start_rng = ckpt.rng_state()
        self._epoch_sums = torch.zeros(4, device=self.device)
        self.save(LAST)
        self._write_metrics()
        if self.on_epoch_end is not None:
            self.on_epoch_end(self)
        return record

    def finish(self) -> dict:
        """Evaluate the best weights on the test split; write ``summary.json`` and the plots."""
        from aevb import plots  # matplotlib is only imported when a run ends

        if (self.run_dir / BEST).exists():
            self.model.load_state_dict(load_weights(self.run_dir / BEST))
        test_x = binarize_once(self.dataset.test, self.config.binarize).to(self.device)
        test = evaluate(self.model, test_x, 1, batch_size=EVAL_BATCH, seed=EVAL_SEED)
        warn_if_collapsed(test.active_units, self.model.latent_dim)
        summary = {
            "test_elbo": test.elbo,
            "test_reconstruction": test.reconstruction,
            "test_kl": test.kl,
            "test_active_units": test.active_units,
            "best_epoch": self.state.best_epoch,
            "best_val_elbo": self.state.best_val_elbo if self.state.best_epoch > 0 else None,
            "epochs": self.state.epoch,
            "steps": self.state.step,
            "stopped_early": self.state.stopped_early,
            "train_seconds": self.state.train_seconds,
            "wall_seconds": time.perf_counter() - self._started,
            "device": str(self.device),
        }
        ckpt.atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        plots.write_run_plots(
            self.run_dir, self.model, test_x, self.dataset.image_shape, self.state.history
        )
        return summary

    @contextmanager
    def _signals_checkpoint(self):
        """While training, SIGINT/SIGTERM finish the current step, checkpoint, then stop."""
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers can only be installed from the main thread
            return

        def request_stop(signum, frame):
            self._stop_signal = signum

        previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def make_optimizer(config: TrainConfig, parameters) -> torch.optim.Optimizer:
    """Adam (default), Adagrad (the paper's) or SGD with ``weight_decay`` as an L2 prior.

    Weight decay λ adds λθ to the gradient: a Gaussian prior N(0, 1/λ) on the parameters
    (the paper's N(0, I) prior when λ matches the per-example scaling of the objective).
    The fused implementation is used where this torch build has one: for the paper's MNIST
    model on two CPU cores it takes Adam's step from 5.5 ms to 1.5 ms.
    """
    optimizer = {"adam": torch.optim.Adam, "adagrad": torch.optim.Adagrad, "sgd": torch.optim.SGD}
    cls, parameters = optimizer[config.optimizer], list(parameters)
    kwargs = {"lr": config.lr, "weight_decay": config.weight_decay}
    try:
        return cls(parameters, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):  # no fused kernel for this device or version
        return cls(parameters, **kwargs)


def train(
    config: TrainConfig,
    run_dir: str | Path,
    *,
    dataset: Dataset | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[Trainer], None] | None = None,
) -> dict:
    """Start a new run in ``run_dir`` (which must not already hold one); return its summary."""
    run_dir = Path(run_dir)
    if (run_dir / CONFIG_FILE).exists():
        raise AevbError(
            f"{run_dir} already holds a run; continue it with --resume {run_dir} or choose "
            "another output folder"
        )
    trainer = Trainer(
        config, run_dir, dataset=dataset, progress=progress, on_epoch_end=on_epoch_end
    )
    return trainer.fit()


def read_run_config(run_dir: str | Path) -> dict:
    """The ``config.json`` of a run folder, checked."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise AevbError(f"{run_dir} is not an aevb run folder (no {CONFIG_FILE})")
    try:
        run = json.loads(path.read_text())
        TrainConfig.from_dict(run["train"])
        ModelConfig.from_dict(run["model"])
    except (ValueError, KeyError, TypeError) as error:
        raise AevbError(f"{path} is corrupt: {error}") from error
    return run


def resume(
    run_dir: str | Path,
    *,
    epochs: int | None = None,
    device: str | None = None,
    compile: bool | None = None,
    dataset: Dataset | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[Trainer], None] | None = None,
) -> dict:
    """Continue the run in ``run_dir`` from its last checkpoint, optionally to more ``epochs``,
    on another ``device`` or with ``compile`` switched (``None`` keeps each as it was)."""
    run = read_run_config(run_dir)
    config = TrainConfig.from_dict(run["train"])
    changes = {"epochs": epochs, "device": device, "compile": compile}
    changes = {k: v for k, v in changes.items() if v is not None}
    config = dataclasses.replace(config, **changes)
    trainer = Trainer(
        config, run_dir, dataset=dataset, progress=progress, on_epoch_end=on_epoch_end
    )
    return trainer.fit(resume=True)


def load_run_split(run: dict, split: str, limit: int | None = None) -> Tensor:
    """The first ``limit`` rows of a run's ``split`` (train, val or test), binarized as the
    run's own evaluations are (a fixed-seed draw): (N, data_dim) on the CPU."""
    config = TrainConfig.from_dict(run["train"])
    dataset = load_dataset(config.dataset, config.data_dir, val_fraction=config.val_fraction)
    rows = getattr(dataset, split)[:limit]
    if len(rows) == 0:
        raise AevbError(f"the {split} split of {config.dataset} is empty")
    return binarize_once(rows, config.binarize)


def load_weights(path: str | Path) -> dict[str, Tensor]:
    tensors, _ = ckpt.load_checkpoint(path)
    return ckpt.unprefixed("model.", tensors)


def load_model(run_dir: str | Path, which: str = "best", device: str = "cpu") -> VAE:
    """The trained model of a run folder (``which`` = ``best`` or ``last`` checkpoint)."""
    run = read_run_config(run_dir)
    model = VAE(ModelConfig.from_dict(run["model"]))
    path = Path(run_dir) / (BEST if which == "best" else LAST)
    if which == "best" and not path.exists():
        path = Path(run_dir) / LAST
    try:
        model.load_state_dict(load_weights(path))
    except RuntimeError as error:
        raise AevbError(f"{path} does not match the model in {run_dir}/config.json") from error
    return model.to(resolve_device(device)).eval()
