"""Variational objectives as small interchangeable objects over one shared computation.

Every objective draws k = ``num_samples`` latents per datapoint with :func:`latent_samples`
and combines the same log-densities differently. With the *log-weight*
log w = log p(x|z) + log p(z) − log q(z|x):

* **SGVB estimator A** (paper eq. 6): (1/L) Σ_l log w_l — the KL by Monte Carlo.
* **SGVB estimator B** (paper eq. 7): (1/L) Σ_l log p(x|z_l) − KL(q(z|x) ‖ p(z)), with the KL
  analytic where torch knows the pair (else a Monte Carlo estimate from the same draws:
  :mod:`aevb.kl`).
* **IWAE** (Burda et al. 2015): L_k = log (1/k) Σ_i w_i, a tighter bound for k > 1.
* **Score function** (REINFORCE / black-box VI): the ELBO with its encoder gradient estimated
  by E_q[(log w − b) ∇_φ log q(z|x)] instead of by reparameterisation.
* **Wake-Sleep** (Hinton et al. 1995), the paper's baseline: the same networks, but the
  encoder is fitted to dreams from the decoder instead of to the ELBO.
* **Autoencoder**: a plain deterministic autoencoder on the same networks, for comparison
  (no KL term, not a bound; judged by its reconstruction).
* **Monte Carlo EM** (:mod:`aevb.mcem`), the paper's other baseline, is registered here too.

Each objective says which training settings it accepts (``options``) and which metric a run
is judged by (``judged_by``: the ELBO, or the autoencoder's reconstruction). Before the first
(possibly compiled) step, :meth:`Objective.prepare` decides the KL rule for the model's
posterior and prior, once.

Reduction, everywhere in aevb: a per-example value in nats is the sum over data (and latent)
dimensions; a batch value is the mean over the batch. The paper's minibatch estimator
(N/M) Σ_i differs only by the constant factor N, which rescales the learning rate.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from aevb.distributions import SampledPosterior, is_factorised
from aevb.errors import ConfigError
from aevb.kl import KLRule
from aevb.models import VAE

if TYPE_CHECKING:
    from aevb.train.trainer import Trainer

__all__ = [
    "IWAE",
    "OBJECTIVES",
    "SGVBA",
    "SGVBB",
    "Autoencoder",
    "LatentSamples",
    "Objective",
    "ObjectiveTerms",
    "ScoreFunction",
    "SemiSupervised",
    "WakeSleep",
    "held_out_metrics",
    "kl_weight",
    "latent_samples",
    "make_objective",
]

# Rows per batch of the metrics computed on held-out data (validation, test).
METRICS_BATCH = 10_000
METRICS_SEED = 0


@dataclass
class LatentSamples:
    """Draws z ~ q(z|x) and the log-densities every objective is built from.

    Shapes: ``z`` (k, batch, latent_dim); ``log_likelihood``, ``log_prior``, ``log_posterior``
    and ``log_weights`` (k, batch), nats. The last three are computed on first use and kept
    (by hand: ``functools.cached_property`` takes a lock that ``torch.compile`` cannot trace).
    """

    posterior: Distribution
    prior: Distribution
    z: Tensor
    log_likelihood: Tensor
    _cache: dict[str, Tensor] = field(default_factory=dict, repr=False)

    def _cached(self, name: str, compute: Callable[[], Tensor]) -> Tensor:
        if name not in self._cache:
            self._cache[name] = compute()
        return self._cache[name]

    @property
    def log_prior(self) -> Tensor:
        return self._cached("log_prior", lambda: self.prior.log_prob(self.z))

    @property
    def log_posterior(self) -> Tensor:
        return self._cached("log_posterior", lambda: self.posterior.log_prob(self.z))

    @property
    def log_weights(self) -> Tensor:
        """log w = log p(x, z) − log q(z|x): (k, batch)."""
        return self._cached(
            "log_weights", lambda: self.log_likelihood + self.log_prior - self.log_posterior
        )


def latent_samples(
    model: VAE,
    x: Tensor,
    num_samples: int = 1,
    reparameterised: bool = True,
    posterior: Distribution | None = None,
    prior: Distribution | None = None,
    noise: Tensor | None = None,
) -> LatentSamples:
    """Encode x: (batch, *data_shape), draw k = ``num_samples`` latents per row, decode them.

    With ``reparameterised=False`` the draws carry no gradient (for the score function);
    ``posterior`` and ``prior`` reuse distributions already computed; ``noise`` (k, latent_dim)
    gives the standard-normal ε of the k draws, shared by every row (z = μ + σ ε, or μ + L ε):
    then each row's draws depend on that row alone.
    """
    posterior = model.posterior(x) if posterior is None else posterior
    prior = model.prior() if prior is None else prior
    shape = (num_samples,)
    log_posterior = None
    if isinstance(posterior, SampledPosterior):
        # A flow or a hierarchy gives the density of its own draws in the same pass (a flow
        # would need its maps inverted for any other z).
        if noise is not None:
            z, log_posterior = posterior.push_noise(noise.unsqueeze(1))
        elif reparameterised:
            z, log_posterior = posterior.rsample_and_log_prob(shape)
        else:
            z = posterior.sample(shape)  # the score function's log q needs z held fixed
    elif noise is not None:
        z = _transform_noise(posterior, noise.unsqueeze(1))
    else:
        z = posterior.rsample(shape) if reparameterised else posterior.sample(shape)
    samples = LatentSamples(posterior, prior, z, model.likelihood(z).log_prob(x))
    if log_posterior is not None:
        samples._cache["log_posterior"] = log_posterior
    return samples


def _transform_noise(posterior: Distribution, noise: Tensor) -> Tensor:
    """z = μ + σ ε (diagonal) or μ + L ε (full covariance) for ε: (k, 1, D) → (k, batch, D)."""
    if is_factorised(posterior):
        return posterior.mean + posterior.stddev * noise
    if hasattr(posterior, "scale_tril"):
        return posterior.loc + (posterior.scale_tril @ noise.unsqueeze(-1)).squeeze(-1)
    raise ConfigError(
        f"per-row scores share one set of standard-normal draws, which needs a Gaussian "
        f"posterior, not {type(posterior).__name__}; use aevb evaluate (independent draws)"
    )


@dataclass
class ObjectiveTerms:
    """Batch means, in nats per example. ``loss`` is what the optimiser minimises.

    ``elbo = reconstruction − kl``. For the SGVB estimators ``loss = −(reconstruction − β·kl)``
    (with free bits, each latent dimension's KL in the loss is at least the threshold); for
    IWAE ``loss = −L_k``, reported as ``bound``. ``kl_per_dim`` (latent_dim,) is the batch-mean
    KL of each latent dimension, where the KL splits per dimension (else ``None``).
    """

    loss: Tensor
    elbo: Tensor
    reconstruction: Tensor
    kl: Tensor
    kl_per_dim: Tensor | None
    bound: Tensor


def check_beta(beta: float | Tensor) -> None:
    """Refuse a KL weight given as a number that is negative or not finite. (The training
    loop passes a tensor, set from checked settings; it is not inspected, which would cost a
    host sync per step.)"""
    if isinstance(beta, int | float) and not (0 <= beta < math.inf):
        raise ConfigError(f"beta must be finite and non-negative, got {beta!r}")


def kl_weight(step: int, warmup_steps: int, beta: float = 1.0, beta_start: float = 0.0) -> float:
    """KL weight at optimisation ``step`` (0-based): linear from ``beta_start`` to ``beta``.

    Reaches ``beta`` after ``warmup_steps`` steps and stays there; no warm-up when 0.
    """
    if warmup_steps <= 0 or step >= warmup_steps:
        return beta
    return beta_start + (beta - beta_start) * step / warmup_steps


class Objective:
    """Base of all objectives: ``objective(model, x, beta)`` → :class:`ObjectiveTerms`.

    ``options`` names the training settings (:class:`aevb.runs.TrainConfig` fields) the
    objective accepts; ``judged_by`` the metric that selects the best checkpoint and stops
    training early; ``reported`` the training metrics it defines.
    """

    name: ClassVar[str]
    options: ClassVar[tuple[str, ...]] = ("samples",)
    judged_by: ClassVar[str] = "elbo"
    reported: ClassVar[tuple[str, ...]] = ("elbo", "reconstruction", "kl")
    # A training step of its own (update()) instead of the Trainer's gradient step on the loss.
    custom_update: ClassVar[bool] = False

    def __init__(
        self,
        num_samples: int = 1,
        *,
        beta: float = 1.0,
        beta_start: float = 0.0,
        warmup_steps: int = 0,
    ):
        if num_samples < 1:
            raise ConfigError(f"num_samples must be at least 1, got {num_samples}")
        if not (beta >= 0 and beta_start >= 0) or warmup_steps < 0:
            raise ConfigError("beta, beta_start and warmup_steps must be non-negative")
        self.num_samples = int(num_samples)
        self.beta, self.beta_start, self.warmup_steps = float(beta), float(beta_start), warmup_steps
        self.kl_rule: KLRule | None = None

    def prepare(self, model: VAE, x: Tensor, num_examples: int | None = None) -> None:
        """Decide the KL rule for ``model``'s posterior and prior from a batch x, eagerly and
        once (never inside a compiled step); check the objective's needs against them.
        ``num_examples`` is the size of the training set, for objectives that keep state per
        datapoint. The Trainer passes two rows; a conditioned model's labels are x's own."""
        with torch.no_grad():
            self.kl_rule = KLRule.decide(model.posterior(x), model.prior())

    def _rule(self, model: VAE, x: Tensor) -> KLRule:
        if self.kl_rule is None:  # used directly, without a Trainer: decide on first call
            self.prepare(model, x)
        assert self.kl_rule is not None
        return self.kl_rule

    def kl_weight(self, step: int) -> float:
        """β at optimisation step ``step`` (0-based): the warm-up from ``beta_start``."""
        return kl_weight(step, self.warmup_steps, self.beta, self.beta_start)

    def __call__(self, model: VAE, x: Tensor, beta: float | Tensor = 1.0) -> ObjectiveTerms:
        raise NotImplementedError

    def trainable_parameters(self, model: VAE) -> Iterable[nn.Parameter]:
        """The parameters the optimiser updates (all of the model's)."""
        return model.parameters()

    def update(self, trainer: Trainer, x: Tensor, index: Tensor) -> Tensor:
        """The training step of an objective with ``custom_update``, for the batch x with
        training-set rows ``index``; returns its summed (ELBO, reconstruction, KL, rows), (4,).
        Other objectives train by the Trainer's gradient step on their loss."""
        raise NotImplementedError

    def epoch_metrics(self) -> dict[str, float]:
        """Extra values for the epoch's training record (read once per epoch)."""
        return {}

    def state_tensors(self) -> dict[str, Tensor]:
        """Tensors a checkpoint must keep for the objective to resume (none by default)."""
        return {}

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        """Restore what :meth:`state_tensors` returned."""

    @torch.no_grad()
    def metrics(self, model: VAE, x: Tensor, labels: Tensor | None = None) -> dict[str, Any]:
        """Held-out metrics of ``model`` on x (nats per example, model space; ``labels`` (N,)
        for a conditional model): by default the ELBO by estimator B with one sample per row,
        its reconstruction and KL, the number of active units, and the KL of each latent
        dimension (a list; only where the KL splits over dimensions)."""
        from aevb.evaluation import evaluate

        result = evaluate(model, x, 1, batch_size=METRICS_BATCH, seed=METRICS_SEED, labels=labels)
        metrics: dict[str, Any] = {
            "elbo": result.elbo,
            "reconstruction": result.reconstruction,
            "kl": result.kl,
            "active_units": result.active_units,
        }
        if result.kl_per_dim is not None:
            metrics["kl_per_dim"] = result.kl_per_dim
        return metrics

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_samples={self.num_samples})"


class _SGVB(Objective):
    """Shared machinery of the two SGVB estimators; subclasses supply the KL estimate."""

    options = ("samples", "beta", "beta_start", "warmup_steps", "free_bits")

    def __init__(self, num_samples: int = 1, free_bits: float = 0.0, **kl_weighting: Any):
        super().__init__(num_samples, **kl_weighting)
        if free_bits < 0:
            raise ConfigError(f"free_bits must be non-negative, got {free_bits}")
        self.free_bits = float(free_bits)

    def prepare(self, model: VAE, x: Tensor, num_examples: int | None = None) -> None:
        super().prepare(model, x, num_examples)
        assert self.kl_rule is not None
        if self.free_bits and not self.kl_rule.per_dimension:
            raise ConfigError(
                "free bits need a KL that splits over latent dimensions: a diagonal posterior "
                "and a factorised prior (not a full-covariance posterior or a mixture or vamp "
                "prior)"
            )

    def kl(self, rule: KLRule, samples: LatentSamples) -> tuple[Tensor, Tensor | None]:
        """Batch-mean KL estimate (scalar) and, where it splits, its split per dimension."""
        raise NotImplementedError

    def __call__(self, model: VAE, x: Tensor, beta: float | Tensor = 1.0) -> ObjectiveTerms:
        """Evaluate on x: (batch, *data_shape) with KL weight ``beta`` (β = 1 is the ELBO)."""
        check_beta(beta)
        rule = self._rule(model, x)
        samples = latent_samples(model, x, self.num_samples)
        reconstruction = samples.log_likelihood.mean()
        kl, kl_per_dim = self.kl(rule, samples)
        kl_in_loss = kl
        if self.free_bits:
            if kl_per_dim is None:
                raise ConfigError("free bits need a KL that splits over latent dimensions")
            # Free bits (Kingma et al. 2016): no pressure on a dimension's batch-mean KL below λ.
            kl_in_loss = kl_per_dim.clamp(min=self.free_bits).sum()
        elbo = reconstruction - kl
        loss = beta * kl_in_loss - reconstruction
        return ObjectiveTerms(loss, elbo, reconstruction, kl, kl_per_dim, elbo)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_samples={self.num_samples}, free_bits={self.free_bits})"


class SGVBA(_SGVB):
    """SGVB estimator A: the KL term by Monte Carlo, log q(z|x) − log p(z) at the sampled z.

    Valid for any posterior and prior with densities; noisier than B where B applies.
    """

    name = "sgvb-a"

    def kl(self, rule: KLRule, samples: LatentSamples) -> tuple[Tensor, Tensor | None]:
        monte_carlo = KLRule(analytic=False, per_dimension=rule.per_dimension)
        log_ratio = None if rule.per_dimension else samples.log_posterior - samples.log_prior
        estimate = monte_carlo.estimate(samples.posterior, samples.prior, samples.z, log_ratio)
        per_dim = None if estimate.per_dimension is None else estimate.per_dimension.mean(0)
        return estimate.total.mean(), per_dim


class SGVBB(_SGVB):
    """SGVB estimator B: the KL term in closed form — ½ Σ (μ² + σ² − 1 − log σ²) for a diagonal
    posterior and N(0, I), ½ (tr Σ + μᵀμ − D − log det Σ) for a full covariance — wherever
    ``torch.distributions`` knows the pair; a Monte Carlo estimate from the same draws
    otherwise (then it equals estimator A). Lower variance than A where the KL is analytic.
    """

    name = "sgvb-b"

    def kl(self, rule: KLRule, samples: LatentSamples) -> tuple[Tensor, Tensor | None]:
        log_ratio = None
        if not rule.analytic and not rule.per_dimension:
            log_ratio = samples.log_posterior - samples.log_prior
        estimate = rule.estimate(samples.posterior, samples.prior, samples.z, log_ratio)
        per_dim = None if estimate.per_dimension is None else estimate.per_dimension.mean(0)
        return estimate.total.mean(), per_dim


class IWAE(Objective):
    """The importance-weighted bound L_k = E[log (1/k) Σ_i w_i] (Burda et al. 2015).

    The gradient of ``logsumexp`` is Σ_i w̃_i ∇ log w_i with w̃ = softmax(log w): normalised
    weights that carry no gradient themselves, so the best samples weigh most. (Multiplying
    by unnormalised or undetached weights is the bug this avoids.) With β ≠ 1 the prior and
    posterior terms of log w are scaled by β; k = 1 gives SGVB estimator A.
    """

    name = "iwae"
    options = ("samples", "beta", "beta_start", "warmup_steps")

    def __init__(self, num_samples: int = 5, **kl_weighting: Any):
        super().__init__(num_samples, **kl_weighting)

    def __call__(self, model: VAE, x: Tensor, beta: float | Tensor = 1.0) -> ObjectiveTerms:
        check_beta(beta)
        samples = latent_samples(model, x, self.num_samples)
        log_ratio = samples.log_prior - samples.log_posterior
        log_weights = samples.log_likelihood + beta * log_ratio
        bound = (torch.logsumexp(log_weights, 0) - math.log(self.num_samples)).mean()
        reconstruction = samples.log_likelihood.mean()
        kl = -log_ratio.mean()
        return ObjectiveTerms(-bound, reconstruction - kl, reconstruction, kl, None, bound)


class ScoreFunction(Objective):
    """The ELBO with the score-function (REINFORCE) gradient for the encoder.

    The loss is a surrogate whose gradient is, for the decoder, E_q[∇_θ log p(x, z)] and, for
    the encoder, E_q[(log w − b) ∇_φ log q(z|x)] — unbiased, but with a much larger variance
    than the reparameterised gradient (the seeds' central comparison). ``baseline="mean"``
    uses for b the mean log-weight of the *other* k − 1 samples (needs k ≥ 2), which keeps
    the estimator unbiased and lowers its variance.
    """

    name = "score-function"
    options = ("samples", "beta", "beta_start", "warmup_steps", "baseline")
    BASELINES = ("none", "mean")

    def __init__(self, num_samples: int = 1, baseline: str = "none", **kl_weighting: Any):
        super().__init__(num_samples, **kl_weighting)
        if baseline not in self.BASELINES:
            raise ConfigError(f"baseline must be 'none' or 'mean', got {baseline!r}")
        if baseline == "mean" and num_samples < 2:
            raise ConfigError("the leave-one-out mean baseline needs num_samples ≥ 2")
        self.baseline = baseline

    def __call__(self, model: VAE, x: Tensor, beta: float | Tensor = 1.0) -> ObjectiveTerms:
        check_beta(beta)
        samples = latent_samples(model, x, self.num_samples, reparameterised=False)
        log_ratio = samples.log_prior - samples.log_posterior
        reward = (samples.log_likelihood + beta * log_ratio).detach()
        if self.baseline == "mean":
            k = self.num_samples
            reward = reward - (reward.sum(0, keepdim=True) - reward) / (k - 1)
        log_joint = samples.log_likelihood + beta * samples.log_prior  # θ-gradient
        surrogate = log_joint + reward * samples.log_posterior  # φ-gradient via the score
        reconstruction = samples.log_likelihood.mean()
        kl = -log_ratio.mean()
        elbo = (reconstruction - kl).detach()
        return ObjectiveTerms(
            -surrogate.mean(), elbo, reconstruction.detach(), kl.detach(), None, elbo
        )


class WakeSleep(Objective):
    """The wake-sleep algorithm (Hinton et al. 1995) as a surrogate loss on the VAE's networks.

    *Wake*: z ~ q(z|x) without reparameterisation, and the decoder follows ∇_θ log p(x|z).
    *Sleep*: a dream z' ~ p(z), x' ~ p(x'|z') from the current decoder (no gradient), and the
    encoder follows ∇_φ log q(z'|x'). The two terms touch disjoint parameters, so one backward
    pass gives both phases' gradients. The encoder minimises KL(p(z|x) ‖ q(z|x)) averaged
    over dreams, not the ELBO's KL(q ‖ p), so it optimises no single bound; ``elbo`` is the
    ELBO (estimator B) of the current networks on x, the same estimate AEVB reports.
    """

    name = "wake-sleep"

    def __call__(self, model: VAE, x: Tensor, beta: float | Tensor = 1.0) -> ObjectiveTerms:
        rule = self._rule(model, x)
        samples = latent_samples(model, x, self.num_samples, reparameterised=False)
        reconstruction = samples.log_likelihood.mean()  # wake: gradient for θ only
        with torch.no_grad():
            z_dream = samples.prior.sample((self.num_samples * len(x),))
            x_dream = model.likelihood(z_dream).sample()
            log_ratio = None
            if not rule.analytic and not rule.per_dimension:
                log_ratio = samples.log_posterior - samples.log_prior
            kl = rule.estimate(samples.posterior, samples.prior, samples.z, log_ratio).total
            kl = kl.mean()
        sleep = model.posterior(x_dream).log_prob(z_dream).mean()  # gradient for φ only
        elbo = reconstruction.detach() - kl
        return ObjectiveTerms(
            -(reconstruction + sleep), elbo, reconstruction.detach(), kl, None, elbo
        )


class Autoencoder(Objective):
    """A plain autoencoder on the VAE's networks: code z = E_q[z|x], loss −log p(x|z).

    No noise and no KL term, so nothing shapes the codes' distribution: the seed notes'
    contrast to the VAE. It is not a bound on log p(x): it is judged, and reported, by its
    reconstruction log-likelihood at the code; ``elbo`` and ``bound`` carry the same value
    and ``kl`` is 0.
    """

    name = "autoencoder"
    options = ()
    judged_by = "reconstruction"
    reported = ("reconstruction",)

    def __init__(self) -> None:
        super().__init__(1)

    def __call__(self, model: VAE, x: Tensor, beta: float | Tensor = 1.0) -> ObjectiveTerms:
        reconstruction = model.likelihood(model.posterior(x).mean).log_prob(x).mean()
        zero = torch.zeros_like(reconstruction)
        value = reconstruction.detach()
        return ObjectiveTerms(-reconstruction, value, value, zero, None, value)

    @torch.no_grad()
    def metrics(self, model: VAE, x: Tensor) -> dict[str, float]:
        """The reconstruction log-likelihood at the code, log p(x | z = E_q[z|x]), and the
        number of active units (nats per example)."""
        from aevb.evaluation import count_active_units, likelihood_width

        total, codes = 0.0, []
        rows = max(1, METRICS_BATCH // likelihood_width(model))
        for start in range(0, len(x), rows):
            batch = x[start : start + rows]
            code = model.posterior(batch).mean
            total += float(model.likelihood(code).log_prob(batch).double().sum())
            codes.append(code)
        return {
            "reconstruction": total / len(x),
            "active_units": count_active_units(torch.cat(codes)),
        }

    def __repr__(self) -> str:
        return "Autoencoder()"


def _objectives() -> dict[str, type[Objective]]:
    from aevb.mcem import MonteCarloEM

    return {
        cls.name: cls
        for cls in (
            SGVBA,
            SGVBB,
            IWAE,
            ScoreFunction,
            WakeSleep,
            Autoencoder,
            MonteCarloEM,
            SemiSupervised,
        )
    }


class SemiSupervised(Objective):
    """M2's objective (Kingma, Rezende, Mohamed & Welling 2014, eq. 9), for a
    :class:`~aevb.conditional.SemiSupervisedVAE` on batches where unlabelled rows carry the
    label −1.

    For a labelled (x, y) the bound on log p(x, y),
    L(x, y) = E_q(z|x,y)[log p(x|y, z)] − KL(q(z|x, y) ‖ p(z)) + log p(y); for an unlabelled x,
    y is a latent variable and the bound on log p(x) sums over the classes,
    U(x) = Σ_y q(y|x) L(x, y) + H(q(y|x)). The loss per example is the paper's J^α / N:

        −[(N_u/N) mean_u U(x) + (N_l/N) mean_l L(x, y) + α mean_l log q(y|x)],

    with N_l = ``num_labelled`` labelled and N_u unlabelled training rows (N_u is the loader's
    size, known at :meth:`prepare`), so that a labelled example's classifier term weighs
    α N / N_l against its bound (the paper's α = 0.1 N). Every class is decoded for every row
    (C× a VAE step's work). The reported ``elbo`` is the mean U(x), a bound on log p(x) that
    uses no label; ``kl`` is KL(q(y, z|x) ‖ p(y) p(z)) = reconstruction − U; held-out
    ``error`` is the classifier's error rate argmax q(y|x) ≠ y.
    """

    name = "m2"
    options = ("samples", "beta", "beta_start", "warmup_steps", "alpha", "labels")
    reported = ("elbo", "reconstruction", "kl", "error")
    # Rows per batch of the held-out metrics (each decoded once per class).
    METRICS_ROWS = 1000

    def __init__(
        self,
        num_samples: int = 1,
        alpha: float = 0.1,
        num_labelled: int | None = None,
        **kl_weighting: Any,
    ):
        super().__init__(num_samples, **kl_weighting)
        if not (alpha >= 0 and math.isfinite(alpha)):
            raise ConfigError(f"alpha must be finite and non-negative, got {alpha!r}")
        if num_labelled is not None and num_labelled < 1:
            raise ConfigError(f"num_labelled must be positive, got {num_labelled}")
        self.alpha = float(alpha)
        self.num_labelled = num_labelled
        self.labelled_share: float | None = None

    @staticmethod
    def _model(model: Any) -> Any:
        from aevb.conditional import Conditioned, SemiSupervisedVAE

        parent = model.model if isinstance(model, Conditioned) else model
        if not isinstance(parent, SemiSupervisedVAE):
            raise ConfigError(
                "the m2 objective trains a semi-supervised model (aevb.conditional."
                "SemiSupervisedVAE: a conditional VAE with a classifier), not "
                f"{type(parent).__name__}"
            )
        return parent

    def prepare(self, model: Any, x: Tensor, num_examples: int | None = None) -> None:
        parent = self._model(model)
        labels = torch.zeros(min(len(x), 2), dtype=torch.long, device=x.device)
        with torch.no_grad():
            self.kl_rule = KLRule.decide(parent.posterior(x[:2], labels), parent.prior())
        if num_examples and self.num_labelled:
            self.labelled_share = self.num_labelled / (self.num_labelled + num_examples)

    def class_bounds(
        self, model: Any, x: Tensor, beta: float | Tensor = 1.0
    ) -> tuple[Tensor, Tensor, Tensor]:
        """For every class c and row: L(x, c) with KL weight β, its reconstruction term and
        its KL, each (C, batch)."""
        parent = self._model(model)
        rule = self._rule(parent, x)
        rows, classes = len(x), parent.num_classes
        every = torch.arange(classes, device=x.device).repeat_interleave(rows)
        x_all = x.repeat(classes, *([1] * (x.dim() - 1)))
        samples = latent_samples(parent.given(every), x_all, self.num_samples)
        log_ratio = None
        if not rule.analytic and not rule.per_dimension:
            log_ratio = samples.log_posterior - samples.log_prior
        kl = rule.estimate(samples.posterior, samples.prior, samples.z, log_ratio).total
        if kl.dim() > 1:
            kl = kl.mean(0)
        reconstruction = samples.log_likelihood.mean(0).view(classes, rows)
        kl = kl.view(classes, rows)
        log_p_y = -math.log(classes)
        return reconstruction - beta * kl + log_p_y, reconstruction, kl

    def __call__(self, model: Any, x: Tensor, beta: float | Tensor = 1.0) -> ObjectiveTerms:
        check_beta(beta)
        parent = self._model(model)
        labels = getattr(model, "labels", None)
        if labels is None:
            labels = torch.full((len(x),), -1, dtype=torch.long, device=x.device)
        bound, reconstruction, kl = self.class_bounds(parent, x, beta)
        log_q = parent.classify(x).logits  # normalised: (batch, C)
        q = log_q.exp()
        entropy = -(q * log_q).sum(-1)
        unlabelled_bound = (q.T * bound).sum(0) + entropy  # U(x) with weight β on the KL
        labelled = labels >= 0
        known = labels.clamp(min=0)
        labelled_bound = bound.gather(0, known[None]).squeeze(0)  # L(x, y)
        log_q_known = log_q.gather(1, known[:, None]).squeeze(1)
        count_l = labelled.sum()
        count_u = len(x) - count_l
        mean_u = torch.where(labelled, 0.0, unlabelled_bound).sum() / count_u.clamp(min=1)
        mean_l = torch.where(labelled, labelled_bound, 0.0).sum() / count_l.clamp(min=1)
        mean_log_q = torch.where(labelled, log_q_known, 0.0).sum() / count_l.clamp(min=1)
        share = self.labelled_share
        if share is None:  # no training-set sizes: the batch's own proportions
            share_l = count_l.to(mean_l.dtype) / len(x)
        else:
            share_l = share * (count_l > 0).to(mean_l.dtype)
        objective = (1 - share_l) * mean_u + share_l * mean_l + self.alpha * mean_log_q
        # Reported, per row and without labels: U(x) at β = 1 and its two parts.
        expected_reconstruction = (q.T * reconstruction).sum(0)
        elbo = (q.T * (reconstruction - kl - math.log(parent.num_classes))).sum(0) + entropy
        elbo_mean, reconstruction_mean = elbo.mean(), expected_reconstruction.mean()
        return ObjectiveTerms(
            -objective,
            elbo_mean,
            reconstruction_mean,
            reconstruction_mean - elbo_mean,
            None,
            elbo_mean,
        )

    @torch.no_grad()
    def metrics(self, model: VAE, x: Tensor, labels: Tensor | None = None) -> dict[str, float]:
        """U(x) (one latent draw per row and class), its reconstruction and KL, and where
        ``labels`` are given the classifier's error rate."""
        parent = self._model(model)
        totals = torch.zeros(4, dtype=torch.float64, device=x.device)
        from aevb.evaluation import fixed_randomness

        with fixed_randomness(METRICS_SEED, x.device):
            for start in range(0, len(x), self.METRICS_ROWS):
                batch = x[start : start + self.METRICS_ROWS]
                terms = self(parent, batch)
                totals[:3] += torch.stack(
                    (terms.elbo, terms.reconstruction, terms.kl)
                ).double() * len(batch)
                if labels is not None:
                    predicted = parent.classify(batch).logits.argmax(-1)
                    truth = labels[start : start + self.METRICS_ROWS].to(x.device)
                    totals[3] += (predicted != truth).sum()
        elbo, reconstruction, kl, errors = (totals / len(x)).tolist()
        metrics = {"elbo": elbo, "reconstruction": reconstruction, "kl": kl}
        if labels is not None:
            metrics["error"] = errors
        return metrics

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_samples={self.num_samples}, alpha={self.alpha}, "
            f"num_labelled={self.num_labelled})"
        )


OBJECTIVES: tuple[str, ...] = (
    "sgvb-a",
    "sgvb-b",
    "iwae",
    "score-function",
    "wake-sleep",
    "autoencoder",
    "mcem",
    "m2",
)
# The training settings any objective accepts, and the objective argument each one sets.
OPTION_ARGUMENTS = {
    "samples": "num_samples",
    "beta": "beta",
    "beta_start": "beta_start",
    "warmup_steps": "warmup_steps",
    "free_bits": "free_bits",
    "baseline": "baseline",
    "alpha": "alpha",
    "labels": "num_labelled",
}


def objective_class(name: str) -> type[Objective]:
    """The objective class called ``name`` (one of :data:`OBJECTIVES`)."""
    classes = _objectives()
    if name not in classes:
        raise ConfigError(f"unknown objective {name!r}; choose from {', '.join(OBJECTIVES)}")
    return classes[name]


def make_objective(name: str, **options: Any) -> Objective:
    """The objective called ``name`` with training settings ``options`` (``samples``,
    ``beta``, ``free_bits``, …: the :class:`aevb.runs.TrainConfig` names). A setting the
    objective does not accept is refused."""
    cls = objective_class(name)
    refused = sorted(set(options) - set(cls.options))
    if refused:
        raise ConfigError(f"the {name} objective does not take {', '.join(refused)}")
    return cls(**{OPTION_ARGUMENTS[key]: value for key, value in options.items()})


def held_out_metrics(
    objective: Objective, model: VAE, x: Tensor, labels: Tensor | None = None
) -> dict[str, Any]:
    """``objective.metrics(model, x)``, with ``labels`` for a conditional model (an objective
    of one's own that takes no labels is called without them)."""
    if labels is None:
        return objective.metrics(model, x)
    return objective.metrics(model, x, labels)


def warn_if_warmup_incomplete(total_steps: int, objective: Objective) -> None:
    """Warn when training stops after ``total_steps`` steps, before the KL warm-up ends."""
    if 0 < total_steps < objective.warmup_steps:
        reached = objective.kl_weight(total_steps)
        warnings.warn(
            f"training ends after {total_steps} steps, before the KL warm-up "
            f"({objective.warmup_steps} steps) completes: β reaches only {reached:.3g} of "
            f"{objective.beta:g}, so the objective optimised is not the ELBO",
            stacklevel=2,
        )
