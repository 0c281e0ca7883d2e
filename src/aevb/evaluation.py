"""Evaluation on held-out data: the ELBO, the IWAE bound and the importance-sampled log p(x).

All three come from one computation, the log-weights log w = log p(x, z) − log q(z|x) of k
draws z ~ q(z|x) (:func:`aevb.objectives.latent_samples`), batched over datapoints *and*
samples in chunks sized to a memory budget, and reduced with running ``logsumexp``:

* log p̂(x) = log (1/k) Σ_i w_i — consistent for log p(x) as k → ∞, and an unbiased estimate
  of the bound L_k, so its expectation is at most log p(x);
* the IWAE bound L_m for m < k, estimated from the same draws split into k/m groups;
* the ELBO by estimator B (analytic KL) with all k draws, and by estimator A.

The proposal is the encoder q(z|x) unless another is given: :func:`hmc_proposal` fits one to
Hamiltonian Monte Carlo draws from the posterior, for models without a usable encoder (Monte
Carlo EM) or to compare differently trained models with one estimator (the paper's Fig. 3).

The same weights say how far log p̂(x) can be trusted (:class:`ImportanceDiagnostics`): each
datapoint's effective sample size and the Pareto k̂ of its weights' tail (PSIS: Vehtari,
Simpson, Gelman, Yao and Gabry 2024), computed with every evaluation of k ≥ 21 draws.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from numbers import Integral

import torch
from torch import Tensor
from torch.distributions import Distribution

from aevb.conditional import bind, checked_labels
from aevb.data.loaders import shard_of
from aevb.distributed import Distributed
from aevb.distributions import (
    MOMENT_SAMPLES,
    SampledPosterior,
    full_covariance_gaussian,
    support_is_binary,
    support_is_eight_bit,
)
from aevb.errors import DataError
from aevb.hints import setting_name
from aevb.hmc import HMC, log_joint
from aevb.kl import KLRule
from aevb.limits import MAX_COUNT, MAX_SEED
from aevb.models import VAE
from aevb.objectives import latent_samples
from aevb.progress import Progress, progress_bar

# Elements of the (samples × datapoints × data_dim) likelihood tensor per chunk. On the CPU
# 2²² float32 values (16 MiB) ran 23% faster than 2²⁴ (52k vs 42k MNIST samples/s on two
# cores), the working set staying nearer the caches; a GPU wants larger chunks to stay busy.
CHUNK_ELEMENTS = {"cpu": 1 << 22, "cuda": 1 << 24}

# PSIS's threshold on the Pareto k̂ of the importance weights (Vehtari et al. 2024, §3): above
# 0.7 the draws needed for a usable estimate grow impractically fast, even Pareto-smoothed
# (and log p̂(x) is not smoothed). The paper's stricter 1 − 1/log10(k) for k < 2154 draws is
# not used: aevb's k̂ then rests on M ≤ 3√k tail draws (20 at k = 100, a standard error near
# 0.25), and a lower threshold would flag datapoints by the estimate's noise alone.
PARETO_K_THRESHOLD = 0.7
# The fewest tail draws a generalized Pareto fit uses, as ArviZ and loo; k ≥ 21 gives M ≥ 5.
MIN_TAIL_SAMPLES = 5
MIN_DIAGNOSED_SAMPLES = 21
# The share of datapoints above the threshold from which an evaluation is called unreliable:
# below it, even rows each estimated 10 nats low move the mean log p̂(x) by under 0.1 nats. At
# small k the k̂ are noisy (at k = 100, M = 20, a row of true k = 0.3 is above 0.7 about 4% of
# the time), so a small-k evaluation of a sound model can be flagged: more draws settle it.
UNRELIABLE_SHARE = 0.01
# Log-weights within this many ulps (relative) of the largest count as equal to it: the
# rounding of float32 sums of a few hundred terms, as the exact posterior's weights show.
ROUNDING_ULPS = 64
# Elements of the (rows × grid × tail) tensor of one slice of the Zhang–Stephens fit.
FIT_ELEMENTS = 1 << 22


@contextmanager
def fixed_randomness(seed: int, device: torch.device):
    """Run a block with its own seeded random stream, leaving the global streams untouched.

    Evaluations are then repeatable and a training run resumed mid-way draws exactly the
    same random numbers as one that never stopped.
    """
    if isinstance(seed, bool) or not isinstance(seed, Integral) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be an integer in [0, 2**63 - 1], got {seed!r}")
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type):
        torch.manual_seed(seed)
        yield


@dataclass
class Evaluation:
    """Per-example means over a data split, in nats (``bits_per_dim``: bits per dimension).
    ``active_units_per_layer``: for a posterior over several stochastic layers, the active
    units of each (``None`` otherwise).

    ``log_likelihood_se`` is the Monte Carlo standard error of the mean log p̂(x) (delta
    method per example, combined over examples): the spread to expect across seeds. ``kl`` is
    analytic where torch knows the (posterior, prior) pair and a Monte Carlo estimate from the
    same draws otherwise (``kl_estimator``). ``importance_diagnostics``: the effective sample
    sizes and Pareto k̂ of the weights behind log p̂(x) (``None`` below k = 21 draws, too few
    for a tail fit); per row from :func:`importance_diagnostics`.
    """

    log_likelihood: float
    log_likelihood_se: float
    iwae_bound: float
    iwae_samples: int
    elbo: float
    elbo_a: float
    reconstruction: float
    kl: float
    kl_per_dim: list[float] | None
    kl_estimator: str
    bits_per_dim: float
    active_units: int
    active_units_per_layer: list[int] | None
    latent_dim: int
    data_dim: int
    num_examples: int
    importance_samples: int
    seconds: float
    importance_diagnostics: ImportanceDiagnostics | None = None

    def to_dict(self) -> dict:
        values = asdict(self)
        if self.importance_diagnostics is not None:
            values["importance_diagnostics"] = self.importance_diagnostics.to_dict()
        return values

    def rows(self) -> list[tuple[str, str]]:
        """The evaluation as (quantity, value) lines of a table (``aevb evaluate``, the
        report): log p̂(x) with its standard error and diagnostics, the bounds, KL, bits per
        dimension and active units."""
        active = f"{self.active_units} of {self.latent_dim}"
        if self.active_units_per_layer:
            active += f" (by layer: {', '.join(map(str, self.active_units_per_layer))})"
        diagnostics = (
            [("ESS, PSIS Pareto k̂", f"not computed (k < {MIN_DIAGNOSED_SAMPLES} draws)")]
            if self.importance_diagnostics is None
            else self.importance_diagnostics.rows()
        )
        return [
            (
                "log-likelihood log p(x)",
                f"{self.log_likelihood:.3f} ± {self.log_likelihood_se:.3f} nats "
                f"(k = {self.importance_samples}; ± one Monte Carlo standard error)",
            ),
            *diagnostics,
            (f"IWAE bound L_{self.iwae_samples}", f"{self.iwae_bound:.3f} nats"),
            ("ELBO (estimator B)", f"{self.elbo:.3f} nats"),
            ("ELBO (estimator A)", f"{self.elbo_a:.3f} nats"),
            ("reconstruction E_q log p(x|z)", f"{self.reconstruction:.3f} nats"),
            (f"KL(q(z|x) ‖ p(z)) ({self.kl_estimator})", f"{self.kl:.3f} nats"),
            ("bits per dimension", f"{self.bits_per_dim:.4f}"),
            ("active units", active),
        ]

    def in_data_units(self, log_abs_det_jacobian: float) -> Evaluation:
        """The same evaluation for data a transform mapped into the model's space: every
        log-density of x (not the KL) gains log |det ∂x_model/∂x| (nats per example), e.g.
        −Σ_j log s_j for standardisation by scales s (:mod:`aevb.data.transforms`)."""
        if not log_abs_det_jacobian:
            return self
        values = {key: getattr(self, key) + log_abs_det_jacobian for key in LOG_DENSITIES}
        values["bits_per_dim"] = _bits_per_dim(values["log_likelihood"], self.data_dim)
        return dataclasses.replace(self, **values)


@dataclass
class ImportanceDiagnostics:
    """How far an evaluation's importance-sampled log p̂(x) can be trusted, over its rows.

    ``ess_*``: the effective sample size (Σw)²/Σw² of each row's k weights, in draws (1 … k;
    ``ess_median_fraction`` is the median over k). ``pareto_k_*``: the Pareto k̂ of each row's
    weights (:func:`pareto_k`): below 0.5 the weights have finite variance and the standard
    error holds; above ``pareto_k_threshold`` (0.7) log p̂(x) can be far below log p(x) with a
    small reported error. ``pareto_k_share_above``: the share of rows above it;
    ``tail_samples``: the M largest draws per row that the fits use. Medians are lower medians
    (a row's value). k̂ = −inf: every tail weight equal (a bounded, constant weight: the exact
    posterior); +inf: a row with nothing to fit (:func:`pareto_k`).
    """

    ess_median: float
    ess_min: float
    ess_median_fraction: float
    pareto_k_median: float
    pareto_k_max: float
    pareto_k_share_above: float
    pareto_k_threshold: float
    tail_samples: int

    @property
    def reliable(self) -> bool:
        """At most :data:`UNRELIABLE_SHARE` (1%) of the rows have k̂ above the threshold."""
        return self.pareto_k_share_above <= UNRELIABLE_SHARE

    def rows(self) -> list[tuple[str, str]]:
        """(quantity, value) lines of a table: the effective sample sizes and the k̂."""
        return [
            (
                "effective sample size",
                f"median {self.ess_median:.1f} ({self.ess_median_fraction:.1%} of k), "
                f"min {self.ess_min:.1f}",
            ),
            (
                "PSIS Pareto k̂ of the weights",
                f"median {self.pareto_k_median:.2f}, worst {self.pareto_k_max:.2f}; "
                f"{self.pareto_k_share_above:.1%} of the examples above "
                f"{self.pareto_k_threshold:g}",
            ),
        ]

    def warning(self) -> str | None:
        """What an unreliable estimate means and what helps, in one sentence (``None`` when
        :attr:`reliable`)."""
        if self.reliable:
            return None
        return (
            f"{self.pareto_k_share_above:.1%} of the examples have a Pareto k̂ above "
            f"{self.pareto_k_threshold:g} (worst {self.pareto_k_max:.2f}): their importance "
            "weights are too heavy-tailed for the log-likelihood estimate to be trusted (it can "
            "be far too low, beyond its ± error). More importance samples, a posterior closer "
            f"to the true one (train with {setting_name('posterior')}: full, iaf or planar) or "
            "aevb.evaluation.hmc_proposal help"
        )

    def to_dict(self) -> dict:
        """The fields, for JSON (which has no infinities): k̂ = ±inf as the strings "-inf" and
        "inf", which ``float`` reads back."""
        return {
            key: value if not isinstance(value, float) or math.isfinite(value) else str(value)
            for key, value in asdict(self).items()
        }


@dataclass
class ExampleDiagnostics:
    """Each row's importance-weight diagnostics: ``effective_sample_size`` (N,) float64, in
    draws (1 … k; 0 for a row whose weights are all 0), and ``pareto_k`` (N,) float64
    (:func:`pareto_k`), from k = ``importance_samples`` draws per row."""

    effective_sample_size: Tensor
    pareto_k: Tensor
    importance_samples: int

    def summary(self) -> ImportanceDiagnostics:
        """The medians, extremes and share above :data:`PARETO_K_THRESHOLD` over the rows."""
        ess, k_hat, k = self.effective_sample_size, self.pareto_k, self.importance_samples
        ess_median = float(ess.median())
        return ImportanceDiagnostics(
            ess_median=ess_median,
            ess_min=float(ess.min()),
            ess_median_fraction=ess_median / k,
            pareto_k_median=float(k_hat.median()),
            pareto_k_max=float(k_hat.max()),
            pareto_k_share_above=float((k_hat > PARETO_K_THRESHOLD).double().mean()),
            pareto_k_threshold=PARETO_K_THRESHOLD,
            tail_samples=pareto_tail_size(k),
        )

    def to(self, device: str) -> ExampleDiagnostics:
        return dataclasses.replace(
            self,
            effective_sample_size=self.effective_sample_size.to(device),
            pareto_k=self.pareto_k.to(device),
        )

    @staticmethod
    def cat(parts: list[ExampleDiagnostics]) -> ExampleDiagnostics:
        """The diagnostics of consecutive parts of the rows, in order."""
        return ExampleDiagnostics(
            effective_sample_size=torch.cat([p.effective_sample_size for p in parts]),
            pareto_k=torch.cat([p.pareto_k for p in parts]),
            importance_samples=parts[0].importance_samples,
        )


# The per-example log-densities of x an evaluation reports (the KL is not one).
LOG_DENSITIES = ("log_likelihood", "iwae_bound", "elbo", "elbo_a", "reconstruction")


def _bits_per_dim(log_likelihood: float, data_dim: int) -> float:
    return -log_likelihood / (data_dim * math.log(2))


def check_data(model: VAE, x: Tensor, labels: Tensor | None = None) -> Tensor | None:
    """Refuse x that the model gives no density: rows of another shape than its likelihood's
    event, NaN or infinite values, and values other than 0 and 1 for a Bernoulli likelihood
    (its log-probability of a grey value is not a log-likelihood). A conditional model needs
    ``labels`` (N,), one per row; returned checked (int64 on x's device)."""
    if not isinstance(x, Tensor) or x.dim() < 2 or not x.is_floating_point():
        raise DataError(
            "x must be a floating-point tensor of shape (N, *data_shape), got "
            f"{type(x).__name__} {tuple(getattr(x, 'shape', ()))}"
        )
    if len(x) == 0:
        raise DataError("x has no rows")
    parameter = next(model.parameters(), None)
    if parameter is not None and parameter.dtype != x.dtype:
        raise DataError(
            f"x is {x.dtype} but the model's parameters are {parameter.dtype}; convert one to "
            "the other (x.to(dtype) or model.to(dtype))"
        )
    labels = checked_labels(model, labels, len(x))
    with torch.no_grad():
        first = bind(model, None if labels is None else labels[:1].to(x.device))
        likelihood = first.likelihood(x.new_zeros(1, model.latent_dim))
        event_shape = tuple(likelihood.event_shape)
        if event_shape and tuple(x.shape[1:]) != event_shape:
            raise DataError(
                f"x has rows of shape {tuple(x.shape[1:])}, but the model's likelihood is over "
                f"rows of shape {event_shape}"
            )
        finite = torch.isfinite(x)
        if not bool(finite.all()):
            row = int((~finite).reshape(len(x), -1).any(1).nonzero()[0])
            raise DataError(
                f"x holds {int((~finite).sum())} NaN or infinite value(s) (first in row {row}); "
                "a log-likelihood of them is not defined"
            )
        if support_is_binary(likelihood, x[:1]) and not bool(((x == 0) | (x == 1)).all()):
            raise DataError(
                "the model's likelihood is a distribution over {0, 1} (Bernoulli), but x holds "
                "other values: their log-probability is not a log-likelihood. Binarize x as the "
                "model's run does (aevb.load_run(RUN).prepare(x)), or pass binary data"
            )
        if support_is_eight_bit(likelihood) and not bool(likelihood.support.check(x).all()):
            raise DataError(
                "the model's likelihood is a distribution over the 8-bit levels k/255 in "
                "[0, 1], but x holds other values: pass the images as loaded (k/255), not "
                "binarized, standardised or rescaled"
            )
    return None if labels is None else labels.to(x.device)


@torch.no_grad()
def evaluate(
    model: VAE,
    x: Tensor,
    importance_samples: int = 5000,
    iwae_samples: int = 50,
    batch_size: int | None = None,
    chunk_elements: int | None = None,
    float64: bool = False,
    seed: int = 0,
    progress: bool = False,
    proposal: Callable[[VAE, Tensor], Distribution] | None = None,
    labels: Tensor | None = None,
    parallel: Distributed | None = None,
) -> Evaluation:
    """Importance-sampled log p(x), IWAE bound, ELBO (A and B), KL and active units of x.

    x: (N, *data_shape) on the model's device, in the model's space (a run's data go through
    its transforms first: :meth:`aevb.runs.Run.evaluate` does both). ``importance_samples`` k
    draws per datapoint from the encoder; ``iwae_samples`` m (a divisor of k is used: the
    largest ≤ m) sets the reported L_m. ``batch_size`` datapoints are processed together
    (default: as many as keep one draw's likelihood values for the batch within
    ``chunk_elements``, by default 2²² on the CPU and 2²⁴ on a GPU: :func:`_chunk_sizes`), as
    many draws at a time as keep them within it too; ``float64`` accumulates the log-weights in
    double precision. ``proposal(model, batch)`` replaces the encoder as the importance
    distribution (and as the q of the reported ELBO and KL). Values that the likelihood gives
    no density (grey values for a Bernoulli likelihood) are refused. A conditional model
    (:mod:`aevb.conditional`) needs the rows' ``labels`` (N,) and is evaluated given them:
    log p(x|y), its bounds and q(z|x, y).

    ``progress``: a progress report on stderr (:func:`aevb.progress.progress_bar`), off by
    default: this is also the per-epoch validation inside training, which has its own.

    ``parallel``: in a data-parallel run (every process passing the same x), each process
    scores its part of the rows, with its own seeded draws (``seed`` + rank), and the sums
    and per-row values are gathered and combined exactly; every process returns the result.
    """
    labels = check_data(model, x, labels)
    n = len(x)
    if n == 0:
        raise ValueError("cannot evaluate on an empty data split")
    started = time.perf_counter()
    _check_counts(importance_samples=importance_samples, iwae_samples=iwae_samples)
    if batch_size is not None:
        _check_counts(batch_size=batch_size)
    data_dim = x[0].numel()
    k = int(importance_samples)
    m = max(d for d in range(1, min(iwae_samples, k) + 1) if k % d == 0)
    part = _all_sums(
        model,
        x,
        labels,
        k,
        m,
        batch_size,
        chunk_elements,
        float64,
        seed,
        progress,
        proposal,
        parallel,
    )
    return part.evaluation(model, m, data_dim, k, time.perf_counter() - started)


@torch.no_grad()
def importance_diagnostics(
    model: VAE,
    x: Tensor,
    importance_samples: int = 5000,
    seed: int = 0,
    labels: Tensor | None = None,
    proposal: Callable[[VAE, Tensor], Distribution] | None = None,
    batch_size: int | None = None,
    chunk_elements: int | None = None,
    float64: bool = False,
) -> ExampleDiagnostics:
    """Each row's effective sample size and Pareto k̂: the per-row values behind
    :attr:`Evaluation.importance_diagnostics`, to find the datapoints whose log p̂(x) cannot be
    trusted (k̂ > 0.7). The same draws as :func:`evaluate` with the same arguments; x (N,
    *data_shape) in the model's space. Needs k = ``importance_samples`` ≥ 21 (M ≥ 5 tail
    draws for the fit)."""
    labels = check_data(model, x, labels)
    _check_counts(importance_samples=importance_samples)
    if batch_size is not None:
        _check_counts(batch_size=batch_size)
    k = int(importance_samples)
    if pareto_tail_size(k) < MIN_TAIL_SAMPLES:
        raise ValueError(f"importance_samples must be at least 21 for a tail fit, got {k}")
    part = _all_sums(
        model, x, labels, k, 1, batch_size, chunk_elements, float64, seed, False, proposal, None
    )
    assert part.diagnostics is not None
    return part.diagnostics


def _all_sums(
    model: VAE,
    x: Tensor,
    labels: Tensor | None,
    k: int,
    m: int,
    batch_size: int | None,
    chunk_elements: int | None,
    float64: bool,
    seed: int,
    progress: bool,
    proposal: Callable[[VAE, Tensor], Distribution] | None,
    parallel: Distributed | None,
) -> _Sums:
    """The sums of all the rows of checked x: of this process's part, gathered and combined
    in a data-parallel run."""
    n = len(x)
    width = likelihood_width(model)
    tail = pareto_tail_size(k)
    tail = tail if tail >= MIN_TAIL_SAMPLES else 0
    held = 2 * (tail + 1) if tail else 0  # :class:`_RunningLargest`'s buffer
    batch_size, samples_per_chunk = _chunk_sizes(x, k, batch_size, chunk_elements, width, held)
    dtype = torch.float64 if float64 else torch.float32
    sharded = parallel is not None and parallel.active and 1 < parallel.world <= n
    if sharded:
        assert parallel is not None
        rows = shard_of(n, parallel.rank, parallel.world)
        x, labels = x[rows], None if labels is None else labels[rows]
        seed = (seed + parallel.rank) % (MAX_SEED + 1)
    part = _evaluation_sums(
        model, x, labels, k, m, tail, batch_size, samples_per_chunk, dtype, seed, progress, proposal
    )
    if sharded:
        assert parallel is not None
        part = _Sums.combine(parallel.gather(part.to("cpu")))
    return part


@dataclass
class _Sums:
    """What an evaluation of some rows adds up, before it becomes an :class:`Evaluation`:
    ``totals`` (6,) float64 — the sums over rows of log p̂(x), its delta-method variance, the
    IWAE bound, ELBO A, reconstruction and KL; the rows' posterior ``means`` (rows, L) and
    their Monte Carlo error variances (for sampled posteriors); the KL per dimension summed
    over rows; the KL rule; the stochastic layers' sizes, if several; the rows' importance
    diagnostics (for k ≥ 21)."""

    totals: Tensor
    rows: int
    means: Tensor
    mean_errors: Tensor | None
    kl_per_dim: Tensor | None
    kl_estimator: str
    layer_sizes: list[int] | None
    diagnostics: ExampleDiagnostics | None

    def to(self, device: str) -> _Sums:
        def moved(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device)

        return dataclasses.replace(
            self,
            totals=self.totals.to(device),
            means=self.means.to(device),
            mean_errors=moved(self.mean_errors),
            kl_per_dim=moved(self.kl_per_dim),
            diagnostics=None if self.diagnostics is None else self.diagnostics.to(device),
        )

    @staticmethod
    def combine(parts: list[_Sums]) -> _Sums:
        """The sums of disjoint parts of the rows, in order (exact: sums and
        concatenations)."""
        first = parts[0]
        return _Sums(
            totals=torch.stack([p.totals for p in parts]).sum(0),
            rows=sum(p.rows for p in parts),
            means=torch.cat([p.means for p in parts]),
            mean_errors=(
                None
                if first.mean_errors is None
                else torch.cat([p.mean_errors for p in parts if p.mean_errors is not None])
            ),
            kl_per_dim=(
                None
                if first.kl_per_dim is None
                else torch.stack([p.kl_per_dim for p in parts if p.kl_per_dim is not None]).sum(0)
            ),
            kl_estimator=first.kl_estimator,
            layer_sizes=first.layer_sizes,
            diagnostics=(
                None
                if first.diagnostics is None
                else ExampleDiagnostics.cat([p.diagnostics for p in parts if p.diagnostics])
            ),
        )

    def evaluation(self, model: VAE, m: int, data_dim: int, k: int, seconds: float) -> Evaluation:
        n, means, errors = self.rows, self.means, self.mean_errors
        layers = None
        if self.layer_sizes is not None:  # stochastic layers (aevb.hierarchy): each counted
            sizes = self.layer_sizes
            layers = [
                count_active_units(part, mean_error_variance=None if errors is None else error)
                for part, error in zip(
                    means.split(sizes, -1),
                    errors.split(sizes, -1) if errors is not None else [None] * len(sizes),
                    strict=True,
                )
            ]
        log_likelihood, variance_sum, iwae, elbo_a, reconstruction, kl = (self.totals / n).tolist()
        log_likelihood_se = math.sqrt(variance_sum * n) / n
        kl_per_dim = None if self.kl_per_dim is None else (self.kl_per_dim / n).tolist()
        return Evaluation(
            log_likelihood=log_likelihood,
            log_likelihood_se=log_likelihood_se,
            iwae_bound=iwae,
            iwae_samples=m,
            elbo=reconstruction - kl,
            elbo_a=elbo_a,
            reconstruction=reconstruction,
            kl=kl,
            kl_per_dim=kl_per_dim,
            kl_estimator=self.kl_estimator,
            bits_per_dim=_bits_per_dim(log_likelihood, data_dim),
            active_units=count_active_units(means, mean_error_variance=errors),
            active_units_per_layer=layers,
            latent_dim=model.latent_dim,
            data_dim=data_dim,
            num_examples=n,
            importance_samples=k,
            seconds=seconds,
            importance_diagnostics=None if self.diagnostics is None else self.diagnostics.summary(),
        )


def _evaluation_sums(
    model: VAE,
    x: Tensor,
    labels: Tensor | None,
    k: int,
    m: int,
    tail: int,
    batch_size: int,
    samples_per_chunk: int,
    dtype: torch.dtype,
    seed: int,
    progress: bool,
    proposal: Callable[[VAE, Tensor], Distribution] | None,
) -> _Sums:
    """:func:`evaluate`'s sums over the rows of x, ``batch_size`` rows at a time, with their
    importance diagnostics from the ``tail`` M largest log-weights of each (none for 0)."""
    n = len(x)
    was_training = model.training
    model.eval()
    totals = torch.zeros(6, dtype=torch.float64, device=x.device)
    posterior_means, mean_errors, kl_dims, diagnostics = [], [], [], []
    rule = None
    # Counted in draws (datapoints × samples), updated per chunk: on the CPU a batch is
    # thousands of datapoints, so a count of datapoints would move a few times in an hour.
    bar = progress_bar(n * k, "evaluate", "draw", unit_scale=True, disable=not progress)
    with fixed_randomness(seed, x.device), bar:
        prior = model.prior()  # once: a VampPrior encodes its pseudo-inputs to make it
        for start in range(0, n, batch_size):
            batch = x[start : start + batch_size]
            bound = bind(model, None if labels is None else labels[start : start + batch_size])
            posterior = bound.posterior(batch) if proposal is None else proposal(bound, batch)
            rule = rule or KLRule.decide(posterior, prior)
            stats, kl_dim, weights = _batch_statistics(
                bound, batch, posterior, prior, rule, k, m, samples_per_chunk, dtype, bar, tail=tail
            )
            totals += stats.sum(1).double()
            if weights is not None:
                diagnostics.append(weights)
            posterior_means.append(posterior.mean)
            if isinstance(posterior, SampledPosterior):
                mean_errors.append(posterior.variance / MOMENT_SAMPLES)
            if kl_dim is not None:
                kl_dims.append(kl_dim.double().sum(0))
    model.train(was_training)
    assert rule is not None
    return _Sums(
        totals=totals,
        rows=n,
        means=torch.cat(posterior_means),
        mean_errors=torch.cat(mean_errors) if mean_errors else None,
        kl_per_dim=torch.stack(kl_dims).sum(0) if kl_dims else None,
        kl_estimator=rule.description,
        layer_sizes=getattr(posterior, "layer_sizes", None),
        diagnostics=ExampleDiagnostics.cat(diagnostics) if diagnostics else None,
    )


def _check_counts(**counts: object) -> None:
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if value > MAX_COUNT:
            raise ValueError(f"{name} must be at most {MAX_COUNT:,}, got {value!r}")


def likelihood_width(model: VAE) -> int:
    """Values the model's likelihood holds per data value (its head's ``width``; 1 for a
    decoder without a head that says)."""
    width = getattr(getattr(model.decoder, "head", None), "width", 1)
    return width if isinstance(width, int) and width > 0 else 1


def _chunk_sizes(
    x: Tensor,
    k: int,
    batch_size: int | None,
    chunk_elements: int | None,
    width: int = 1,
    held_per_row: int = 0,
) -> tuple[int, int]:
    """Datapoints per batch and samples per chunk, so that one chunk's likelihood tensors hold
    about ``chunk_elements`` values (default by device: :data:`CHUNK_ELEMENTS`), ``width`` per
    data value; by default no more rows than keep ``held_per_row`` values each (the running
    top of their log-weights) within that budget too."""
    n, data_dim = len(x), max(1, x[0].numel() * width if len(x) else 1)
    if chunk_elements is None:
        chunk_elements = CHUNK_ELEMENTS.get(x.device.type, CHUNK_ELEMENTS["cuda"])
    if batch_size is None:
        batch_size = max(1, min(n, chunk_elements // max(data_dim, held_per_row)))
    return batch_size, max(1, min(k, chunk_elements // (batch_size * data_dim)))


@torch.no_grad()
def log_likelihood_per_example(
    model: VAE,
    x: Tensor,
    importance_samples: int = 1000,
    seed: int = 0,
    labels: Tensor | None = None,
) -> Tensor:
    """Importance-sampled log p̂(x) of every row of x: (N, *data_shape) → (N,) nats, float64.

    The estimate of :func:`evaluate`'s ``log_likelihood``, per row, with k =
    ``importance_samples`` draws from the encoder per row, made from the same k standard
    normal draws for every row, so that each row's value depends only on that row (scores are
    invariant to the order and to the subset of rows scored). Higher is more typical of the
    training data: an anomaly score with the sign flipped. x is in the model's space, as for
    :func:`evaluate` (with its ``labels`` for a conditional model: log p̂(x|y)).
    """
    labels = check_data(model, x, labels)
    _check_counts(importance_samples=importance_samples)
    k = int(importance_samples)
    was_training = model.training
    model.eval()
    with fixed_randomness(seed, x.device):
        # The same k standard-normal draws for every row: a row's estimate then depends on
        # that row alone, not on its position or on the other rows in the call.
        noise = torch.randn(k, model.latent_dim, device=x.device, dtype=x.dtype)
        values = _per_example(model, x, noise, labels)
        unrepresentable = ~torch.isfinite(values)
        if unrepresentable.any():
            # A row so far from the data (an anomaly 1e30 away) that its float32 densities
            # overflow: its honest score (about -1e60) is computed again in float64.
            model64 = copy.deepcopy(model).double()
            values[unrepresentable] = _per_example(
                model64,
                x[unrepresentable].double(),
                noise.double(),
                None if labels is None else labels[unrepresentable],
            )
    model.train(was_training)
    return values


def _per_example(model: VAE, x: Tensor, noise: Tensor, labels: Tensor | None) -> Tensor:
    """log p̂(x) of each row of x with the k latent draws ``noise`` (k, latent_dim): (N,)."""
    k = len(noise)
    batch_size, samples_per_chunk = _chunk_sizes(x, k, None, None, likelihood_width(model))
    values = []
    prior = model.prior()
    rule = KLRule(analytic=False, per_dimension=False)  # the KL row is not used here
    with progress_bar(disable=True) as bar:
        for start in range(0, len(x), batch_size):
            batch = x[start : start + batch_size]
            bound = bind(model, None if labels is None else labels[start : start + batch_size])
            stats, _, _ = _batch_statistics(
                bound,
                batch,
                bound.posterior(batch),
                prior,
                rule,
                k,
                1,
                samples_per_chunk,
                torch.float64,
                bar,
                noise,
            )
            values.append(stats[0])
    return torch.cat(values) if values else x.new_zeros(0, dtype=torch.float64)


def _batch_statistics(
    model: VAE,
    x: Tensor,
    posterior: Distribution,
    prior: Distribution,
    rule: KLRule,
    k: int,
    m: int,
    chunk: int,
    dtype: torch.dtype,
    bar: Progress,
    noise: Tensor | None = None,
    tail: int = 0,
) -> tuple[Tensor, Tensor | None, ExampleDiagnostics | None]:
    """Per-example sums for one batch of datapoints: (6, batch), the KL per latent dimension
    (batch, latent_dim) where it splits, and, for ``tail`` M > 0, the rows' effective sample
    sizes and Pareto k̂ from their M + 1 largest log-weights.

    Rows: log p̂(x); the delta-method variance of log p̂(x); L_m (mean over the k/m groups);
    the estimator-A ELBO; mean log p(x|z); the KL (by ``rule``: analytic, or the Monte Carlo
    mean of log q − log p over the same k draws). Log-weights are reduced chunk by chunk with
    a running logsumexp (and a running top M + 1), so memory does not grow with k.
    """
    b = len(x)
    largest = _RunningLargest(tail + 1, b, dtype, x.device) if tail else None
    log_sum_w = torch.full((b,), -math.inf, dtype=dtype, device=x.device)
    log_sum_w2 = torch.full((b,), -math.inf, dtype=dtype, device=x.device)
    group_bound_sum = torch.zeros(b, dtype=dtype, device=x.device)
    group = torch.empty(0, b, dtype=dtype, device=x.device)  # log-weights of an open group
    sum_log_w = torch.zeros(b, dtype=dtype, device=x.device)
    sum_log_likelihood = torch.zeros(b, dtype=dtype, device=x.device)
    monte_carlo_kl_dims = None
    for start in range(0, k, chunk):
        count = min(chunk, k - start)
        shared = None if noise is None else noise[start : start + count]
        samples = latent_samples(model, x, count, posterior=posterior, prior=prior, noise=shared)
        compute_dtype = samples.log_weights.dtype
        log_w = samples.log_weights.to(dtype)
        log_sum_w = torch.logaddexp(log_sum_w, torch.logsumexp(log_w, 0))
        log_sum_w2 = torch.logaddexp(log_sum_w2, torch.logsumexp(2 * log_w, 0))
        sum_log_w += log_w.sum(0)
        sum_log_likelihood += samples.log_likelihood.to(dtype).sum(0)
        if largest is not None:
            largest.add(log_w)
        if rule.per_dimension and not rule.analytic:
            part = rule.estimate(posterior, prior, samples.z).per_dimension
            assert part is not None
            part = part.to(dtype) * count
            if monte_carlo_kl_dims is not None:
                part = part + monte_carlo_kl_dims
            monte_carlo_kl_dims = part
        group = torch.cat((group, log_w))
        full = len(group) // m * m
        if full:
            groups = group[:full].reshape(-1, m, b)
            group_bound_sum += (torch.logsumexp(groups, 1) - math.log(m)).sum(0)
            group = group[full:]
        bar.update(len(log_w) * b)
    log_mean_w = log_sum_w - math.log(k)
    # Delta method: Var[log p̂] ≈ Var[w] / (k E[w]²) = (E[w²]/E[w]² − 1) / k.
    relative_second_moment = torch.exp(log_sum_w2 - math.log(k) - 2 * log_mean_w)
    variance = (relative_second_moment - 1).clamp(min=0) / k
    if rule.analytic:
        kl = rule.estimate(posterior, prior)
        kl_total, kl_dims = kl.total.to(dtype), kl.per_dimension
    else:
        # log w = log p(x|z) − (log q − log p): the Monte Carlo KL is their difference's mean.
        kl_total = (sum_log_likelihood - sum_log_w) / k
        kl_dims = None if monte_carlo_kl_dims is None else monte_carlo_kl_dims / k
    statistics = torch.stack(
        (
            log_mean_w,
            variance,
            group_bound_sum / (k // m),
            sum_log_w / k,
            sum_log_likelihood / k,
            kl_total,
        )
    )
    diagnostics = None
    if largest is not None:
        diagnostics = ExampleDiagnostics(
            effective_sample_size=_effective_sample_size(log_sum_w, log_sum_w2, k),
            pareto_k=_pareto_k_of_largest(largest.values(), torch.finfo(compute_dtype).eps),
            importance_samples=k,
        )
    return statistics, kl_dims, diagnostics


def _effective_sample_size(log_sum_w: Tensor, log_sum_w2: Tensor, k: int) -> Tensor:
    """(Σw)²/Σw² of k weights from log Σw and log Σw² (N,): (N,) float64, at most k (equal
    weights give k up to rounding), 0 where every weight is 0."""
    ess = torch.exp(2 * log_sum_w.double() - log_sum_w2.double()).clamp(max=k)
    return ess.masked_fill(log_sum_w == -math.inf, 0.0)


class _RunningLargest:
    """The ``size`` largest log-weights of each of ``rows`` rows among the chunks seen: a
    buffer of 2 × size draws that chunks fill and ``torch.topk`` reduces only when it is full.
    On the CPU a chunk is often one draw of thousands of rows, and a top-k per chunk would
    cost more than the rest of the bookkeeping."""

    def __init__(self, size: int, rows: int, dtype: torch.dtype, device: torch.device):
        self.size = size
        self.buffer = torch.empty(2 * size, rows, dtype=dtype, device=device)
        self.filled = 0

    def add(self, log_w: Tensor) -> None:
        """Take in a chunk's log-weights (count, rows)."""
        if len(log_w) > self.size:
            log_w = log_w.topk(self.size, 0).values
        if self.filled + len(log_w) > len(self.buffer):
            self.buffer[: self.size] = self.values()
            self.filled = self.size
        self.buffer[self.filled : self.filled + len(log_w)] = log_w
        self.filled += len(log_w)

    def values(self) -> Tensor:
        """The largest log-weights of each row so far: (min(size, seen), rows)."""
        return self.buffer[: self.filled].topk(min(self.size, self.filled), 0).values


def pareto_tail_size(k: int) -> int:
    """M = ⌈min(k/5, 3√k)⌉, the number of largest of k weights that PSIS fits a generalized
    Pareto distribution to (Vehtari et al. 2024, §3; relative efficiency 1: independent draws)."""
    return math.ceil(min(k / 5, 3 * math.sqrt(k)))


def pareto_k(log_weights: Tensor) -> Tensor:
    """The Pareto k̂ of each column of importance log-weights: (k, N) → (N,) float64.

    PSIS's diagnostic (Vehtari, Simpson, Gelman, Yao and Gabry 2024): a generalized Pareto
    distribution is fitted to the exceedances of the M = :func:`pareto_tail_size` (k) largest
    weights over the (M + 1)-th, by the profile-likelihood empirical Bayes estimate of Zhang
    and Stephens (2009) with PSIS's weakly informative prior (weight 10, toward 0.5). The
    weights' moments of order below 1/k̂ are finite: k̂ < 0.5, finite variance; k̂ > 0.7, an
    estimate not to be trusted. k ≥ 21 draws (M ≥ 5). Ties with the (M + 1)-th largest weight
    are left out of the fit, as in ArviZ. Special values: −inf where the M + 1 largest weights
    are equal up to rounding (their log-weights within :data:`ROUNDING_ULPS` · ε · max(1,
    |log w|), ε the machine epsilon of the dtype they were computed in), a constant, bounded
    tail, as with the exact posterior; +inf where fewer than 5 weights exceed the (M + 1)-th
    otherwise, or where a column's largest weight is 0 or not finite (no fit: not to be
    trusted).
    """
    tail = pareto_tail_size(len(log_weights))
    if tail < MIN_TAIL_SAMPLES:
        raise ValueError(f"a Pareto fit needs at least 21 draws per column, got {len(log_weights)}")
    eps = torch.finfo(log_weights.dtype).eps
    return _pareto_k_of_largest(log_weights.topk(tail + 1, 0).values, eps)


def _pareto_k_of_largest(largest: Tensor, eps: float) -> Tensor:
    """:func:`pareto_k` of columns from their M + 1 largest log-weights (M + 1, N), computed
    in a dtype of machine epsilon ``eps``: (N,)."""
    values = largest.double().T.sort(1).values  # (N, M + 1), ascending
    top = values[:, -1:]
    fittable = torch.isfinite(top[:, 0])
    # Rounding in the log-weights (sums of hundreds of terms) leaves the exact posterior's
    # constant weights a few ulps apart: their tail is constant too. The tolerance scales
    # with ε of the dtype the model computed in (not the one they are accumulated in), and
    # is far below any real tail's spread (at |log w| = 7000 in float32: 0.05 nats).
    rounding = ROUNDING_ULPS * eps * top[:, 0].abs().clamp(min=1)
    constant = fittable & (top[:, 0] - values[:, 0] <= rounding)
    # Weights over the largest, in float64, with ArviZ's floor on the cutoff: the smallest
    # positive normal float.
    scaled = torch.where(fittable[:, None], values - top, torch.zeros_like(values))
    cutoff = scaled[:, :1].clamp(min=math.log(torch.finfo(torch.float64).tiny))
    above = scaled[:, 1:] > cutoff
    exceedances = torch.where(above, scaled[:, 1:].exp() - cutoff.exp(), 0.0)  # ascending
    counts = above.sum(1)
    shape = torch.full_like(cutoff[:, 0], math.inf)
    shape[constant] = -math.inf
    fitted = (fittable & ~constant & (counts >= MIN_TAIL_SAMPLES)).nonzero()[:, 0]
    grid = 30 + math.isqrt(exceedances.shape[1])
    rows = max(1, FIT_ELEMENTS // (grid * exceedances.shape[1]))
    for part in fitted.split(rows):
        shape[part] = _generalized_pareto_shape(exceedances[part], counts[part])
    return shape


def _generalized_pareto_shape(exceedances: Tensor, counts: Tensor) -> Tensor:
    """The shape ξ̂ of a generalized Pareto distribution fitted to each row's exceedances
    (N, M) float64, ascending, its ``counts`` (N,) positive values last (the zeros before them
    are not data: they add nothing to the sums below).

    Zhang and Stephens (2009): in θ = −ξ/σ the GPD's profile log-likelihood is
    l(θ) = n (log(θ/k) + k − 1) with k(θ) = −mean log(1 − θx) (their shape, −ξ); over a grid
    of 30 + ⌊√n⌋ values of θ set by the sample's maximum and first quartile, θ̂ is the
    posterior mean (weights ∝ e^l), ξ̂ = mean log(1 − θ̂x), and PSIS's prior gives
    (n ξ̂ + 10 · 0.5)/(n + 10) — as ArviZ's ``_gpdfit``. Written here, vectorised over rows in
    float64, because ArviZ (the maintained implementation) loops over rows in numpy and
    brings xarray; tests compare the two.
    """
    size = exceedances.shape[1]
    n = counts.to(exceedances.dtype)[:, None]  # (N, 1)
    grid_size = 30 + n.sqrt().floor()
    j = torch.arange(1, 31 + math.isqrt(size), dtype=exceedances.dtype, device=n.device)
    quartile = exceedances.gather(1, size - counts[:, None] + (counts[:, None] + 2) // 4 - 1)
    theta = 1 / exceedances[:, -1:] + (1 - (grid_size / (j - 0.5)).sqrt()) / (3 * quartile)
    # (N, grid): ξ(θ) = mean log(1 − θx) over each row's n exceedances (−k(θ) in their sign)
    xi_grid = torch.log1p(-theta[:, :, None] * exceedances[:, None, :]).sum(2) / n
    profile = n * (torch.log(-theta / xi_grid) - xi_grid - 1)
    profile = profile.masked_fill((j > grid_size) | profile.isnan(), -math.inf)
    weights = torch.softmax(profile, 1)
    weights = weights * (weights >= 10 * torch.finfo(weights.dtype).eps)  # ArviZ's pruning
    theta_hat = (theta * weights).sum(1, keepdim=True) / weights.sum(1, keepdim=True)
    xi = torch.log1p(-theta_hat * exceedances).sum(1, keepdim=True) / n
    return ((n * xi + 10 * 0.5) / (n + 10))[:, 0]


def posterior_mean_spread(
    posterior_means: Tensor, mean_error_variance: Tensor | None = None
) -> Tensor:
    """Var_x(E_q[z_j]) of each latent unit over the rows: (latent_dim,) float64, from the
    posterior means (N, latent_dim); zeros for fewer than 2 rows.

    Where the means are Monte Carlo estimates (:class:`~aevb.distributions.SampledPosterior`),
    ``mean_error_variance`` (N, latent_dim), the variance of each estimate, is taken off:
    Var_x(m̂) = Var_x(m) + E_x[Var(m̂ − m)], so a collapsed unit (σ ≈ 1, 64 draws) does not
    show a spread of 1/64. The result can then be slightly negative.
    """
    if len(posterior_means) < 2:
        return posterior_means.new_zeros(posterior_means.shape[1], dtype=torch.float64)
    spread = posterior_means.double().var(0)
    if mean_error_variance is not None:
        spread = spread - mean_error_variance.double().mean(0)
    return spread


# Var_x(E_q[z_j]) above which a latent unit counts as active (Burda et al. 2015).
ACTIVITY_THRESHOLD = 0.01


def count_active_units(
    posterior_means: Tensor,
    threshold: float = ACTIVITY_THRESHOLD,
    mean_error_variance: Tensor | None = None,
) -> int:
    """Latent units whose posterior mean varies over the data: Var_x(E_q[z_j]) > threshold,
    the criterion of Burda et al. (2015), with :func:`posterior_mean_spread` of the posterior
    means (N, latent_dim) and their Monte Carlo error variances (N, latent_dim) if any."""
    return int((posterior_mean_spread(posterior_means, mean_error_variance) > threshold).sum())


def hmc_proposal(
    num_chains: int = 2,
    burn_in: int = 50,
    num_draws: int = 25,
    num_leapfrog: int = 10,
    inflation: float = 2.0,
    initial_step_size: float = 0.1,
) -> Callable[[VAE, Tensor], Distribution]:
    """An importance distribution fitted to HMC draws from the posterior p_θ(z|x).

    For each datapoint, ``num_chains`` chains start at prior draws, run ``burn_in`` HMC
    transitions while their step sizes adapt (toward 90% acceptance), then ``num_draws``
    more with the step size frozen; the proposal is N(m, c·S) with m, S the mean and
    covariance of all the chains' draws and c = ``inflation``. Importance sampling with it
    gives an unbiased estimate of p(x) — a stochastic lower bound in log space, like the
    encoder-based estimate — whatever the quality of the fit. Inflation guards the variance:
    for a Gaussian posterior N(m, Σ) and proposal N(m, cΣ) the weights have finite variance
    iff 2Σ⁻¹ − (cΣ)⁻¹ ≻ 0, i.e. c > ½, so c = 2 tolerates a fitted covariance up to four
    times too small (few draws, chains that missed some of the mass).

    Returns ``proposal(model, x)`` for :func:`evaluate`: x (batch, data_dim) → a
    full-covariance Gaussian with batch shape (batch,).
    """
    if min(num_chains, num_draws) < 1 or num_chains * num_draws < 2:
        raise ValueError("hmc_proposal needs at least two draws per datapoint")
    sampler = HMC(num_leapfrog=num_leapfrog)

    def proposal(model: VAE, x: Tensor) -> Distribution:
        density = log_joint(model, x)
        z = model.prior().sample((num_chains, len(x)))
        state = sampler.start(density, z)
        step_size = torch.full((num_chains, len(x)), initial_step_size, dtype=z.dtype)
        step_size = step_size.to(z.device)
        draws = []
        for t in range(burn_in + num_draws):
            state, _, _ = sampler.transition(density, state, step_size, adapt=t < burn_in)
            if t >= burn_in:
                draws.append(state.z)
        draws = torch.cat(draws).transpose(0, 1)  # (batch, draws, D)
        mean = draws.mean(1)
        centred = draws - mean.unsqueeze(1)
        covariance = centred.transpose(1, 2) @ centred / (draws.shape[1] - 1)
        return full_covariance_gaussian(mean, _cholesky(inflation * covariance))

    return proposal


def _cholesky(covariance: Tensor) -> Tensor:
    """Cholesky factors of a batch of sample covariances (..., D, D), with a jitter on the
    diagonal that grows (from 10⁻⁶) until every factorisation succeeds — chains that stuck
    give singular covariances."""
    eye = torch.eye(covariance.shape[-1], dtype=covariance.dtype, device=covariance.device)
    jitter = 1e-6
    while True:
        scale_tril, info = torch.linalg.cholesky_ex(covariance + jitter * eye)
        if not info.any():
            return scale_tril
        if jitter > 1e6:
            raise ValueError("the covariance of the HMC draws is not finite")
        jitter *= 100
