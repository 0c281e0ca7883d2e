"""The one training loop: ``Trainer(model, objective, data, optimizer, scheduler, callbacks)``.

Each epoch draws its order (and dynamic binarization) from the loader, then runs steps: the
objective's loss, forward and backward (compiled on the fast path, :mod:`aevb.train.step`), a
device-side check that loss and gradients are finite, and the optimiser step (skipped on the
device when they are not). Metrics accumulate on the device, so a step has no host
synchronisation; the host reads them ten times an epoch and at its end.

Everything else is a callback (:mod:`aevb.train.callbacks`): validation, early stopping,
checkpoints, the metrics file, the progress bar, signal handling, plots. The Trainer knows no
files and no run folder; :mod:`aevb.runs` assembles those.

No state is called good unless it is: :meth:`Trainer.check_state` — run at every epoch's end
and before every checkpoint, host syncs the loop already has — refuses parameters that are no
longer finite (an update from finite gradients can overflow) and, with the divergence guard on,
a judged metric that has fallen far below the untrained model's (a run that diverges without
ever producing a NaN).

Resumption is exact: :meth:`Trainer.checkpoint` captures the model, optimiser, scheduler,
objective and callback states, the random state at the epoch's start (so a resumed run redraws
the same permutation and binarization) and the random state now (so it continues the stream
mid-epoch), and :meth:`Trainer.restore` puts them back.

Under ``torchrun`` (:mod:`aevb.distributed`) the same loop runs in every process: the
model is wrapped in ``DistributedDataParallel``, each process trains on its part of every
global batch, the epoch's order comes from a random state the processes share and each step's
noise from a state of each process's own (all saved in the checkpoint), the metric sums are
added across processes where the loop already synchronises, and a signal stops every process
at the same step.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from aevb.conditional import bind
from aevb.data.loaders import Loader
from aevb.distributed import Distributed
from aevb.distributions import is_factorised
from aevb.errors import NumericalFault, TrainingInterrupted
from aevb.heads import LOG_VARIANCE_RANGE
from aevb.hints import setting_name
from aevb.models import VAE
from aevb.objectives import Objective, held_out_metrics, warn_if_warmup_incomplete
from aevb.train import checkpoint as ckpt
from aevb.train.callbacks import Callback
from aevb.train.step import CompiledStep, should_compile, training_loss

__all__ = ["TrainState", "Trainer"]

# Training rows the diagnosis of a numerical fault (and the divergence guard's reference) uses.
DIAGNOSIS_ROWS = 1000
# The divergence guard stops a run whose judged metric (nats per example) falls below the
# untrained model's by more than this many times max(|its value|, values per example). A
# healthy run improves on its untrained model; one this far below it has left any useful
# region (Adam at lr 1e3 on digits reaches −5e12 against −44 untrained).
DIVERGENCE_FACTOR = 100.0
# Where each judged metric is in the metric sums (ELBO, reconstruction, KL, rows).
JUDGED_SUMS = {"elbo": 0, "reconstruction": 1}
# In a data-parallel run, steps between the processes' checks for a stop requested by a signal.
STOP_AGREEMENT_STEPS = 20


@dataclass
class TrainState:
    """Progress of a run, saved in every checkpoint.

    ``epoch`` is the epoch in progress (0-based) and ``step_in_epoch`` the batches of it done.
    ``monitor`` names the metric that judges the run (``val_elbo``, or ``train_elbo`` without
    validation; ``*_reconstruction`` for an autoencoder); ``best_value`` and ``best_epoch``
    (1-based) record its best epoch. ``nonfinite_steps`` lists the (1-based) steps skipped for
    a non-finite loss or gradient. ``train_seconds`` is the cumulative training time (steps
    only), ``epoch_started_seconds`` its value when the epoch in progress began.
    ``reference_value`` is the judged metric of the untrained model on the first training rows
    (data units), from which the divergence guard measures.
    """

    epoch: int = 0
    step_in_epoch: int = 0
    step: int = 0
    monitor: str | None = None
    best_value: float = -math.inf
    best_epoch: int = -1
    epochs_without_improvement: int = 0
    stopped_early: bool = False
    nonfinite_steps: list[int] = dataclasses.field(default_factory=list)
    train_seconds: float = 0.0
    epoch_started_seconds: float = 0.0
    history: list[dict] = dataclasses.field(default_factory=list)
    reference_value: float | None = None


class Trainer:
    """Fits ``model`` by ``objective`` on ``data`` with ``optimizer`` (and an optional
    ``scheduler``, stepped after every optimiser step; one with an ``epoch_end(improved)``
    method, as :class:`~aevb.train.schedules.WarmupSchedule`, also hears at every epoch's end
    whether the judged metric improved).

    After each step, ``step_loss`` (0-dim) and ``step_sums`` (4,: the batch's summed ELBO,
    reconstruction, KL and rows) hold its values on the device, for callbacks to copy
    (reading them syncs; a compiled CUDA-graph step overwrites them at the next step).

    ``callbacks`` run in the order given. ``compile``: run the step through ``torch.compile``
    (``None``: on CUDA, and on the CPU for runs of ≥ 20,000 steps); ``precision="bf16"``: the
    networks under bfloat16 autocast; ``clip_grad_norm``: clip the gradient norm;
    ``max_nonfinite_steps``: stop with a diagnosis after that many skipped steps;
    ``divergence_guard``: stop when the judged metric falls far below the untrained model's
    (:data:`DIVERGENCE_FACTOR`). ``distributed``: this process's place in a data-parallel run
    (:func:`aevb.distributed.current`; default: alone), for which ``data`` must be sharded.
    """

    def __init__(
        self,
        model: VAE,
        objective: Objective,
        data: Loader,
        optimizer: torch.optim.Optimizer,
        scheduler: Any | None = None,
        callbacks: Sequence[Callback] = (),
        *,
        compile: bool | None = False,
        precision: str = "float32",
        clip_grad_norm: float | None = None,
        max_nonfinite_steps: int = 10,
        divergence_guard: bool = True,
        distributed: Distributed | None = None,
    ):
        self.model = model
        self.objective = objective
        self.data = data
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.callbacks = list(callbacks)
        self.compile = compile
        self.precision = precision
        self.clip_grad_norm = clip_grad_norm
        self.max_nonfinite_steps = int(max_nonfinite_steps)
        self.divergence_guard = divergence_guard
        self.device = next(model.parameters()).device
        self.state = TrainState()
        self.stop_signal: int | None = None
        self.training_step: CompiledStep | None = None
        self._fused_optimizer = optimizer.defaults.get("fused") is True
        self._epoch_start_rng = ckpt.rng_state()
        self._rng_after_restore: dict[str, Tensor] | None = None
        self._epoch_sums = torch.zeros(4, device=self.device)
        self.step_sums = torch.zeros(4, device=self.device)
        self.step_loss: Tensor | None = None
        self._clock: float | None = None
        self.distributed = distributed or Distributed()
        self._parallel: nn.Module | None = None
        # Decided once, eagerly, before any (compiled) step: the KL rule, per-datapoint state.
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            head = data.head(2)
            objective.prepare(bind(model, head.y), head.x, data.num_examples)
        if self.distributed.active:
            self._start_data_parallel()

    # ----------------------------------------------------------------------------- loop
    @property
    def steps_per_epoch(self) -> int:
        return len(self.data)

    def setup(self, epochs: int) -> None:
        """Prepare to train for ``epochs`` epochs: build the (compiled) step. :meth:`fit` calls
        it; call it yourself only to drive :meth:`train_epoch` directly."""
        self.epochs = int(epochs)
        if self.training_step is None:
            enabled = should_compile(self.compile, self.device, self.epochs * self.steps_per_epoch)
            if self._parallel is not None and self.compile is None:
                enabled = False  # compiled DDP is not yet proven on a GPU: asked for, not chosen
            function = training_loss if self._parallel is None else self._parallel
            self.training_step = CompiledStep(
                function, self.device, enabled, self.model.parameters()
            )

    def fit(self, epochs: int) -> TrainState:
        """Train until ``epochs`` epochs are done (counting those of a restored checkpoint) or
        a callback stops early; returns the state."""
        self.setup(epochs)
        warn_if_warmup_incomplete(self.epochs * self.steps_per_epoch, self.objective)
        if self.divergence_guard and self.state.reference_value is None:
            self.state.reference_value = self._judged_value_now()
        try:
            for callback in self.callbacks:
                callback.on_fit_start(self)
            while self.state.epoch < self.epochs and not self.state.stopped_early:
                self.train_epoch()
            if self.state.stopped_early:
                warn_if_warmup_incomplete(self.state.step, self.objective)
            for callback in self.callbacks:
                callback.on_fit_end(self)
        finally:
            for callback in self.callbacks:
                callback.close(self)
        return self.state

    def train_epoch(self) -> dict:
        """One pass over the training data, then the epoch's record, best-metric tracking and
        the callbacks' ``on_epoch_end``. Returns the record."""
        state = self.state
        self._start_clock()  # the epoch's data draw counts as training time
        ckpt.set_rng_state(self._epoch_start_rng)
        if self._parallel is not None and self.device.type == "cuda":
            # The order and binarization drawn on the GPU come from its generator, seeded here
            # from the shared CPU state: the same in every process, whatever the checkpoint
            # kept of other devices' generators.
            torch.cuda.manual_seed(int(torch.randint(2**62, ())))
        batches = self.data.epoch(skip=state.step_in_epoch)
        if self._parallel is not None:  # the shared state for the next epoch; then our own
            self._next_epoch_rng = ckpt.rng_state()
            ckpt.set_rng_state(self._noise_rng)
        elif self._rng_after_restore is not None:  # resuming mid-epoch: continue its stream
            ckpt.set_rng_state(self._rng_after_restore)
            self._rng_after_restore = None
        refresh = max(1, self.steps_per_epoch // 10)
        # Data-parallel processes agree on a signal's stop at least this often (torchrun
        # kills its processes 30 s after forwarding a signal).
        agree = min(refresh, STOP_AGREEMENT_STEPS)
        parameters = list(self.model.parameters())
        # Per step: 1.0 where the step was not finite (and skipped); read at sync points.
        self._fault_flags = torch.zeros(self.steps_per_epoch, device=self.device)
        self._faults_reported = state.step_in_epoch
        nonfinite = torch.zeros((), device=self.device)
        one = torch.ones((), device=self.device)
        if self._fused_optimizer:
            self.optimizer.found_inf = nonfinite  # the fused kernels skip on the device
        objective = self.objective
        beta = torch.tensor(objective.kl_weight(state.step), device=self.device)
        self.model.train()
        for x, index, labels in batches:
            if state.step <= objective.warmup_steps:  # β changes only during the warm-up
                beta.fill_(objective.kl_weight(state.step))
            if objective.custom_update:
                self.step_sums = objective.update(self, x, index)
            else:
                batch_sums = self._gradient_step(x, beta, parameters, nonfinite, one, labels)
                self.step_sums = torch.where(nonfinite > 0, 0.0, batch_sums)
                self._fault_flags[state.step_in_epoch] = nonfinite
            self._epoch_sums += self.step_sums
            if self.scheduler is not None:
                self.scheduler.step()
            state.step += 1
            state.step_in_epoch += 1
            for callback in self.callbacks:
                callback.on_step_end(self)
            if state.step_in_epoch % refresh == 0:  # a host sync, a few times per epoch
                self.collect_faults()
                if self._parallel is not None:
                    self._reduce_sums()
                for callback in self.callbacks:
                    callback.on_progress(self)
            if self._parallel is None:
                if self.stop_signal is not None:
                    self._stop_for_signal()
            elif state.step_in_epoch % agree == 0:  # every process stops at the same step
                if self.distributed.any(self.stop_signal is not None):
                    self._stop_for_signal()
        self._fold_clock(stop=True)
        self.collect_faults()
        return self._end_epoch()

    def _gradient_step(
        self,
        x: Tensor,
        beta: Tensor,
        parameters: list,
        nonfinite: Tensor,
        one: Tensor,
        labels: Tensor | None = None,
    ) -> Tensor:
        """Forward, backward, the on-device finiteness check and the optimiser step."""
        assert self.training_step is not None
        self.optimizer.zero_grad(set_to_none=True)
        if self._parallel is None:
            loss, batch_sums = self.training_step(
                self.model, self.objective, x, beta, self.precision, labels
            )
            self.step_loss = loss
        else:
            x, labels, scale = self._local_part(x, labels)
            loss, batch_sums, self.step_loss = self.training_step(
                self.objective, x, beta, self.precision, labels, scale
            )
        # On the device: nonfinite = 1.0 if the loss or any gradient is NaN or ±inf. The
        # multi-tensor check is the one GradScaler uses (0.09 ms for the MNIST model on two
        # cores; grads are multiplied by 1).
        nonfinite.copy_(~torch.isfinite(loss.detach()))
        grads = [p.grad for p in parameters if p.grad is not None]
        torch._amp_foreach_non_finite_check_and_unscale_(grads, nonfinite, one)
        if self._parallel is not None:  # one process's non-finite loss skips the step in all
            self.distributed.max_(nonfinite)
        if self.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(parameters, self.clip_grad_norm)
        if self._fused_optimizer or not nonfinite.item():  # others skip via the host
            self.optimizer.step()
        return batch_sums

    def running_value(self) -> float:
        """The epoch's running mean of the judged metric so far (a host sync)."""
        index = JUDGED_SUMS.get(self.objective.judged_by, 0)
        sums = self._sums_so_far
        value, rows = sums[index].item(), sums[3].item()
        return value / max(rows, 1) + self.data.transforms.log_abs_det_jacobian

    def request_stop(self, signum: int) -> None:
        """Ask the loop to stop after the current step (from a signal handler)."""
        self.stop_signal = signum

    def _stop_for_signal(self) -> None:
        state = self.state
        self._fold_clock()
        self.collect_faults()
        for callback in self.callbacks:
            callback.on_stop(self)
        # In a data-parallel run a process may stop because another one was signalled.
        signum = self.stop_signal if self.stop_signal is not None else int(signal.SIGTERM)
        raise TrainingInterrupted(
            f"training interrupted (signal {signum}) at epoch {state.epoch + 1}, step {state.step}"
        )

    # ----------------------------------------------------------------------------- data parallel
    def _start_data_parallel(self) -> None:
        """Wrap the model for data-parallel training, and set up the random states: the
        epoch order's, shared (process 0's), and each process's own for the steps' noise."""
        if self.objective.custom_update:
            raise ValueError(
                f"objective {self.objective.name!r} updates the model itself, which "
                "data-parallel training does not support; train it in one process"
            )
        local = [self.device.index] if self.device.type == "cuda" else None
        # DDP makes every process start from process 0's parameters and buffers; it must be
        # told of parameters the loss leaves out (a prior's under the autoencoder objective).
        self._parallel = DistributedDataParallel(
            _LossOfModel(self.model),
            device_ids=local,
            find_unused_parameters=bool(self._unused_parameters()),
        )
        self._epoch_start_rng = self.distributed.broadcast(self._epoch_start_rng)
        self._noise_rng = self._own_noise_state(self._epoch_start_rng)
        self._next_epoch_rng = self._epoch_start_rng
        self._reduced_sums = self._epoch_sums.clone()
        self._scale = torch.ones((), device=self.device)  # refilled each step (_local_part)

    def _unused_parameters(self) -> list[str]:
        """Names of the parameters that get no gradient from the loss on two training rows
        (found once, leaving the random state and the gradients as they were)."""
        head = self.data.head(2)
        one = torch.ones((), device=self.device)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            loss, _ = training_loss(self.model, self.objective, head.x, one, "float32", head.y)
            loss.backward()
        unused = [n for n, p in self.model.named_parameters() if p.requires_grad and p.grad is None]
        self.model.zero_grad(set_to_none=True)
        return unused

    def _own_noise_state(self, shared: dict[str, Tensor]) -> dict[str, Tensor]:
        """A random state for this process's noise, derived from a state all processes share
        and this process's rank (so that processes draw different noise)."""
        saved = ckpt.rng_state()
        ckpt.set_rng_state(shared)
        base = int(torch.randint(2**62, ()))
        torch.manual_seed(base + 1 + self.distributed.rank)
        own = ckpt.rng_state()
        ckpt.set_rng_state(saved)
        return own

    def _local_part(self, x: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor | None, Tensor]:
        """This process's rows of the step's global batch, and the factor that makes the
        processes' averaged gradient the global batch's mean gradient: (rows here × processes)
        ÷ rows in the global batch, so that a shorter last batch split unevenly averages
        right. A process with no rows of a last batch shorter than the number of processes
        computes on one training row with factor 0."""
        global_rows = min(
            self.data.batch_size,
            self.data.num_examples - self.state.step_in_epoch * self.data.batch_size,
        )
        self._scale.fill_(len(x) * self.distributed.world / global_rows)
        if len(x) == 0:
            x, _, labels = self.data.head(1)
        return x, labels, self._scale

    @property
    def _sums_so_far(self) -> Tensor:
        """The epoch's metric sums as of the last synchronisation: this process's, or in a
        data-parallel run those of every process (the same in all)."""
        return self._epoch_sums if self._parallel is None else self._reduced_sums

    def _reduce_sums(self) -> Tensor:
        """The epoch's metric sums over every process (a collective, at the loop's sync
        points); kept for :meth:`running_value`."""
        self._reduced_sums = self.distributed.sum(self._epoch_sums)
        return self._reduced_sums

    # ----------------------------------------------------------------------------- time
    def _start_clock(self) -> None:
        self._clock = time.perf_counter()

    def _fold_clock(self, stop: bool = False) -> None:
        """Add the time since the clock started to ``train_seconds``; restart it, or ``stop``
        it (training time counts steps only, not validation or checkpoints)."""
        if self._clock is not None:
            now = time.perf_counter()
            self.state.train_seconds += now - self._clock
            self._clock = None if stop else now

    # ----------------------------------------------------------------------------- faults
    def collect_faults(self) -> None:
        """At a sync point: log the steps skipped since the last one, and stop with a
        diagnosis once there are ``max_nonfinite_steps`` of them."""
        state = self.state
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
            f"({len(state.nonfinite_steps)} of at most {self.max_nonfinite_steps})",
            file=sys.stderr,
        )
        if len(state.nonfinite_steps) >= self.max_nonfinite_steps:
            # The skips kept the parameters as they were: good, unless an update before them
            # was not (an overflow, a divergence), which is then said too and not saved.
            problem = self.state_problem()
            if problem is not None:
                raise NumericalFault(f"training stopped: {self._diagnosis()}. {problem}", False)
            for callback in self.callbacks:
                callback.on_stop(self)
            raise NumericalFault(
                f"training stopped: {self._diagnosis()}. The parameters are the last good "
                f"state. {self._advice()}"
            )

    def check_state(self, value: float | None = None) -> None:
        """Refuse to call the current state good: raise :class:`~aevb.errors.NumericalFault`
        (``saved=False``) with :meth:`state_problem`'s reason, if there is one. Callbacks call
        it before saving a state."""
        problem = self.state_problem(value)
        if problem is not None:
            raise NumericalFault(f"training stopped: {problem}", saved=False)

    @torch.no_grad()
    def state_problem(self, value: float | None = None) -> str | None:
        """Why the current state is not good, or ``None`` (a host sync): a parameter is NaN or
        infinite, or, with the divergence guard, the judged metric ``value`` (data units;
        default: the epoch's running value) has diverged."""
        state = self.state
        advice = self._advice()
        flag = torch.zeros((), device=self.device)
        parameters = [p.detach() for p in self.model.parameters()]
        torch._amp_foreach_non_finite_check_and_unscale_(parameters, flag, flag.new_ones(()))
        if flag.item():
            bad = [n for n, p in self.model.named_parameters() if not p.isfinite().all()]
            return (
                f"after step {state.step} the parameters {', '.join(bad[:4])}"
                f"{', …' if len(bad) > 4 else ''} are no longer finite (an update overflowed), "
                f"so the state in memory is not good and was not saved. {advice}"
            )
        sums = self._sums_so_far
        if value is None and sums[3].item() > 0:
            value = self.running_value()
        reference = state.reference_value
        if not self.divergence_guard or value is None or reference is None:
            return None
        size = math.prod(self.data.head(1).x.shape[1:])
        limit = reference - DIVERGENCE_FACTOR * max(abs(reference), size)
        if value >= limit:
            return None
        return (
            f"the run diverged: its training {self.objective.judged_by} is {value:.4g} nats per "
            f"example at step {state.step} (epoch {state.epoch + 1}), against {reference:.4g} "
            f"for the untrained model; the divergence guard stops below {limit:.4g} "
            f"({DIVERGENCE_FACTOR:g} × max(|{reference:.4g}|, {size} values per example) under "
            f"it). The diverged state was not saved. {advice}; the guard is turned off by "
            f"{setting_name('divergence_guard', False)}"
        )

    def _advice(self) -> str:
        """What helps a run whose updates overflow or diverge."""
        lr = self.optimizer.param_groups[0]["lr"]
        return (
            f"Lower the learning rate (now {lr:g}), clip gradients "
            f"({setting_name('clip_grad_norm')}), or warm the KL term up "
            f"({setting_name('warmup_steps')})"
        )

    @torch.no_grad()
    def _judged_value_now(self) -> float | None:
        """The judged metric of the model as it is, on the first training rows (data units);
        ``None`` for an objective without held-out metrics (Monte Carlo EM)."""
        x, _, labels = self.data.head(DIAGNOSIS_ROWS)
        metrics = held_out_metrics(self.objective, self.model, x, labels)
        value = metrics.get(self.objective.judged_by)
        return None if value is None else value + self.data.transforms.log_abs_det_jacobian

    @torch.no_grad()
    def _diagnosis(self) -> str:
        """Why training keeps producing non-finite values, as far as the model can tell."""
        state = self.state
        findings = []
        x, _, labels = self.data.head(DIAGNOSIS_ROWS)
        model = bind(self.model, labels)
        posterior = model.posterior(x)
        if is_factorised(posterior):
            log_variance = 2 * posterior.base_dist.scale.log()
            low, high = log_variance.min().item(), log_variance.max().item()
            edge = min(abs(low - LOG_VARIANCE_RANGE[0]), abs(high - LOG_VARIANCE_RANGE[1]))
            findings.append(
                f"the encoder's log-variances span [{low:.3g}, {high:.3g}]"
                + (f" and reach the edge of their range {LOG_VARIANCE_RANGE}" if edge < 1 else "")
            )
        if not self.objective.custom_update:
            loss = self.objective(model, x).loss
            finding = f"the loss on {len(x)} training rows is {loss.item():.4g}"
            if not loss.isfinite():
                finding += ", so the parameters themselves are at fault, not one batch"
            findings.append(finding)
        shown = ", ".join(map(str, state.nonfinite_steps[:10]))
        return (
            f"{len(state.nonfinite_steps)} steps had a non-finite loss or gradient (steps "
            f"{shown}{', …' if len(state.nonfinite_steps) > 10 else ''}; limit "
            f"{setting_name('max_nonfinite_steps', self.max_nonfinite_steps)}) and were skipped. "
            "Diagnosis: " + "; ".join(findings)
        )

    # ----------------------------------------------------------------------------- epochs
    def _end_epoch(self) -> dict:
        state = self.state
        sums = self._epoch_sums if self._parallel is None else self._reduce_sums()
        elbo, reconstruction, kl, rows = sums.tolist()
        if rows == 0:
            for callback in self.callbacks:
                callback.on_stop(self)
            raise NumericalFault(f"every step of epoch {state.epoch + 1} was non-finite")
        shift = self.data.transforms.log_abs_det_jacobian
        values = {"elbo": elbo / rows + shift, "reconstruction": reconstruction / rows + shift}
        values["kl"] = kl / rows
        self.check_state(values[self.objective.judged_by])
        record: dict[str, Any] = {"epoch": state.epoch + 1, "step": state.step}
        record.update({f"train_{m}": values[m] for m in self.objective.reported if m in values})
        record.update(self.objective.epoch_metrics())
        skipped = [s for s in state.nonfinite_steps if s > state.step - self.steps_per_epoch]
        if skipped:
            record["nonfinite_steps"] = skipped
        for callback in self.callbacks:
            callback.on_validation(self, record)
        if self._parallel is not None:  # process 0's values decide for all (best, stopping)
            record = self.distributed.broadcast(record)
        record["epoch_seconds"] = state.train_seconds - state.epoch_started_seconds
        self._track_best(record)
        epoch_end = getattr(self.scheduler, "epoch_end", None)
        if epoch_end is not None:  # e.g. the plateau schedule's one input
            epoch_end(state.epochs_without_improvement == 0)
        state.history.append(record)
        state.epoch += 1
        state.step_in_epoch = 0
        state.epoch_started_seconds = state.train_seconds
        if self._parallel is None:
            self._epoch_start_rng = ckpt.rng_state()
        else:
            self._noise_rng = ckpt.rng_state()
            self._epoch_start_rng = self._next_epoch_rng
        self._epoch_sums = torch.zeros(4, device=self.device)
        self._reduced_sums = self._epoch_sums.clone()
        for callback in self.callbacks:
            callback.on_epoch_end(self, record)
        return record

    def _track_best(self, record: dict) -> None:
        state, judged = self.state, self.objective.judged_by
        if state.monitor is None:
            state.monitor = f"val_{judged}" if f"val_{judged}" in record else f"train_{judged}"
        value = record.get(state.monitor, -math.inf)
        if value > state.best_value:
            state.best_value, state.best_epoch = value, state.epoch + 1
            state.epochs_without_improvement = 0
        else:
            state.epochs_without_improvement += 1

    @property
    def improved(self) -> bool:
        """Whether the epoch that just ended is the best so far (read in ``on_epoch_end``)."""
        return self.state.best_epoch == self.state.epoch

    # ----------------------------------------------------------------------------- resumption
    def checkpoint(self) -> tuple[dict[str, Tensor], dict]:
        """Everything needed to resume exactly: (tensors, JSON metadata)."""
        self._fold_clock()
        opt_tensors, opt_rest = ckpt.optimizer_state_to_tensors(self.optimizer.state_dict())
        sums = self._epoch_sums
        parallel: dict[str, Tensor] = {}
        if self._parallel is not None:  # every process's own random state; the global sums
            sums = self._reduce_sums()
            states = self.distributed.gather({k: v.cpu() for k, v in ckpt.rng_state().items()})
            for rank, state in enumerate(states):
                parallel.update(ckpt.prefixed(f"process_rng.{rank}.", state))
        tensors = {
            **ckpt.prefixed("model.", self.model.state_dict()),
            **ckpt.prefixed("optimizer.", opt_tensors),
            **ckpt.prefixed("objective.", self.objective.state_tensors()),
            **ckpt.prefixed("rng.", ckpt.rng_state()),
            **ckpt.prefixed("epoch_start_rng.", self._epoch_start_rng),
            "epoch_sums.sums": sums,
            **parallel,
        }
        metadata = {
            "state": dataclasses.asdict(self.state),
            "optimizer": opt_rest,
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "callbacks": {
                type(c).__name__: c.state_dict() for c in self.callbacks if c.state_dict()
            },
        }
        return tensors, metadata

    def restore(self, tensors: dict[str, Tensor], metadata: dict) -> None:
        """Put back what :meth:`checkpoint` captured; a mismatch raises ``KeyError``,
        ``RuntimeError``, ``ValueError`` or ``TypeError``."""
        self.model.load_state_dict(ckpt.unprefixed("model.", tensors))
        self.optimizer.load_state_dict(
            ckpt.optimizer_state_from_tensors(
                ckpt.unprefixed("optimizer.", tensors), metadata["optimizer"]
            )
        )
        if self.scheduler is not None and metadata.get("scheduler") is not None:
            self.scheduler.load_state_dict(metadata["scheduler"])
        objective_state = ckpt.unprefixed("objective.", tensors)
        if objective_state:
            self.objective.load_state_tensors(objective_state)
        self.state = TrainState(**metadata["state"])
        saved_callbacks = metadata.get("callbacks", {})
        for callback in self.callbacks:
            if type(callback).__name__ in saved_callbacks:
                callback.load_state_dict(saved_callbacks[type(callback).__name__])
        self._epoch_start_rng = ckpt.unprefixed("epoch_start_rng.", tensors)
        self._epoch_sums = tensors["epoch_sums.sums"].to(self.device)
        if self._parallel is not None:
            self._restore_data_parallel(tensors)
            return
        # Mid-epoch, the random stream continues from where the checkpoint left it, after the
        # epoch's permutation is redrawn; at an epoch boundary the two states are the same.
        mid_epoch = self.state.step_in_epoch > 0
        self._rng_after_restore = ckpt.unprefixed("rng.", tensors) if mid_epoch else None
        if any(name.startswith("process_rng.") for name in tensors):
            tqdm.write(
                f"notice: the checkpoint was written by a data-parallel run and one process "
                f"resumes it: the data continue exactly from step {self.state.step}, the "
                "sampling noise is process 0's",
                file=sys.stderr,
            )

    def _restore_data_parallel(self, tensors: dict[str, Tensor]) -> None:
        """Each process's random state from a checkpoint of a data-parallel run, and the
        epoch's sums so far (process 0 holds them). A checkpoint of another number of
        processes (or of one process) continues from the same step, with each process's noise
        drawn afresh from the saved state and its rank."""
        rank, world = self.distributed.rank, self.distributed.world
        saved = {int(name.split(".")[1]) for name in tensors if name.startswith("process_rng.")}
        self._next_epoch_rng = self._epoch_start_rng
        if saved == set(range(world)):
            self._noise_rng = ckpt.unprefixed(f"process_rng.{rank}.", tensors)
        else:
            self._noise_rng = self._own_noise_state(ckpt.unprefixed("rng.", tensors))
            if self.distributed.writer and self.state.step > 0:
                tqdm.write(
                    f"notice: the checkpoint was written by {max(len(saved), 1)} process(es) "
                    f"and {world} resume it: the data continue exactly from step "
                    f"{self.state.step}, the sampling noise is drawn afresh",
                    file=sys.stderr,
                )
        self._reduced_sums = self._epoch_sums.clone()  # the same in every process
        if not self.distributed.writer:
            self._epoch_sums = torch.zeros_like(self._epoch_sums)


class _LossOfModel(nn.Module):
    """The training step's differentiable part as one module, for DistributedDataParallel
    (whose forward must run for its gradient averaging to follow): the loss times a
    process's ``scale`` (see :meth:`Trainer._local_part`), the batch's metric sums (zero
    where the scale is 0), and the loss unweighted (this process's rows' loss per example, for
    callbacks)."""

    def __init__(self, model: VAE):
        super().__init__()
        self.model = model

    def forward(
        self,
        objective: Objective,
        x: Tensor,
        beta: Tensor,
        precision: str,
        labels: Tensor | None,
        scale: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        loss, sums = training_loss(self.model, objective, x, beta, precision, labels)
        return loss * scale, sums * (scale > 0), loss.detach()
