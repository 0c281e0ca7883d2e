"""Variational objectives as small interchangeable objects over one shared computation.

Every objective draws k = ``num_samples`` latents per datapoint with :func:`latent_samples`
and combines the same log-densities differently. With the *log-weight*
log w = log p(x|z) + log p(z) − log q(z|x):

* **SGVB estimator A** (paper eq. 6): (1/L) Σ_l log w_l — the KL by Monte Carlo.
* **SGVB estimator B** (paper eq. 7): (1/L) Σ_l log p(x|z_l) − KL(q(z|x) ‖ p(z)), KL analytic.
* **IWAE** (Burda et al. 2015): L_k = log (1/k) Σ_i w_i, a tighter bound for k > 1.
* **Score function** (REINFORCE / black-box VI): the ELBO with its encoder gradient estimated
  by E_q[(log w − b) ∇_φ log q(z|x)] instead of by reparameterisation.
* **Wake-Sleep** (Hinton et al. 1995), the paper's baseline: the same networks, but the
  encoder is fitted to dreams from the decoder instead of to the ELBO.
* **Autoencoder**: a plain deterministic autoencoder on the same networks, for comparison
  (no KL term, not a bound).

Reduction, everywhere in aevb: a per-example value in nats is the sum over data (and latent)
dimensions; a batch value is the mean over the batch. The paper's minibatch estimator
(N/M) Σ_i differs only by the constant factor N, which rescales the learning rate.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.distributions import Distribution

from aevb.distributions import is_factorised, kl_per_dimension, kl_to_standard_normal
from aevb.errors import ConfigError
from aevb.models import VAE

__all__ = [
    "IWAE",
    "OBJECTIVES",
    "SGVBA",
    "SGVBB",
    "Autoencoder",
    "LatentSamples",
    "ObjectiveTerms",
    "ScoreFunction",
    "WakeSleep",
    "kl_weight",
    "latent_samples",
    "make_objective",
]


@dataclass
class LatentSamples:
    """Draws z ~ q(z|x) and the log-densities every objective is built from.

    Shapes: ``z`` (k, batch, latent_dim); ``log_likelihood``, ``log_prior``, ``log_posterior``
    and ``log_weights`` (k, batch), nats. The last three are computed on first use and kept
    (by hand: ``functools.cached_property`` takes a lock that ``torch.compile`` cannot trace).
    """

    model: VAE
    posterior: Distribution
    z: Tensor
    log_likelihood: Tensor
    _cache: dict[str, Tensor] = field(default_factory=dict, repr=False)

    def _cached(self, name: str, compute: Callable[[], Tensor]) -> Tensor:
        if name not in self._cache:
            self._cache[name] = compute()
        return self._cache[name]

    @property
    def log_prior(self) -> Tensor:
        return self._cached("log_prior", lambda: self.model.prior.log_prob(self.z))

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
    noise: Tensor | None = None,
) -> LatentSamples:
    """Encode x: (batch, data_dim), draw k = ``num_samples`` latents per row, decode them.

    With ``reparameterised=False`` the draws carry no gradient (for the score function);
    ``posterior`` reuses an encoding of x that is already computed; ``noise`` (k, latent_dim)
    gives the standard-normal ε of the k draws, shared by every row (z = μ + σ ε, or μ + L ε):
    then each row's draws depend on that row alone.
    """
    posterior = model.posterior(x) if posterior is None else posterior
    shape = (num_samples,)
    if noise is not None:
        z = _transform_noise(posterior, noise.unsqueeze(1))
    else:
        z = posterior.rsample(shape) if reparameterised else posterior.sample(shape)
    return LatentSamples(model, posterior, z, model.likelihood(z).log_prob(x))


def _transform_noise(posterior: Distribution, noise: Tensor) -> Tensor:
    """z = μ + σ ε (diagonal) or μ + L ε (full covariance) for ε: (k, 1, D) → (k, batch, D)."""
    if is_factorised(posterior):
        return posterior.mean + posterior.stddev * noise
    return posterior.loc + (posterior.scale_tril @ noise.unsqueeze(-1)).squeeze(-1)


@dataclass
class ObjectiveTerms:
    """Batch means, in nats per example. ``loss`` is what the optimiser minimises.

    ``elbo = reconstruction − kl``. For the SGVB estimators ``loss = −(reconstruction − β·kl)``
    (with free bits, each latent dimension's KL in the loss is at least the threshold); for
    IWAE ``loss = −L_k``, reported as ``bound``. ``kl_per_dim`` (latent_dim,) is the batch-mean
    KL of each latent dimension, where q factorises (else ``None``).
    """

    loss: Tensor
    elbo: Tensor
    reconstruction: Tensor
    kl: Tensor
    kl_per_dim: Tensor | None
    bound: Tensor


class Objective:
    """Base of all objectives: ``objective(model, x, beta)`` → :class:`ObjectiveTerms`."""

    name: str
    # Free bits clamp each latent dimension's KL term, which only the SGVB losses have.
    supports_free_bits = False

    def __init__(self, num_samples: int = 1, free_bits: float = 0.0):
        if num_samples < 1:
            raise ConfigError(f"num_samples must be at least 1, got {num_samples}")
        if free_bits < 0:
            raise ConfigError(f"free_bits must be non-negative, got {free_bits}")
        if free_bits and not self.supports_free_bits:
            raise ConfigError(f"free bits are not defined for the {self.name} objective")
        self.num_samples = int(num_samples)
        self.free_bits = float(free_bits)

    def __call__(self, model: VAE, x: Tensor, beta: float | Tensor = 1.0) -> ObjectiveTerms:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_samples={self.num_samples}, free_bits={self.free_bits})"


class _SGVB(Objective):
    """Shared machinery of the two SGVB estimators; subclasses supply the KL estimate."""

    supports_free_bits = True

    def kl(self, model: VAE, samples: LatentSamples) -> tuple[Tensor, Tensor | None]:
        """Batch-mean KL estimate (scalar) and, where q factorises, its split per dimension."""
        raise NotImplementedError

    def __call__(self, model: VAE, x: Tensor, beta: float | Tensor = 1.0) -> ObjectiveTerms:
        """Evaluate on x: (batch, data_dim) with KL weight ``beta`` (β = 1 is the ELBO)."""
        samples = latent_samples(model, x, self.num_samples)
        reconstruction = samples.log_likelihood.mean()
        kl, kl_per_dim = self.kl(model, samples)
        kl_in_loss = kl
        if self.free_bits:
            if kl_per_dim is None:
                raise ConfigError("free bits need a posterior that factorises over dimensions")
            # Free bits (Kingma et al. 2016): no pressure on a dimension's batch-mean KL below λ.
            kl_in_loss = kl_per_dim.clamp(min=self.free_bits).sum()
        elbo = reconstruction - kl
        loss = beta * kl_in_loss - reconstruction
        return ObjectiveTerms(loss, elbo, reconstruction, kl, kl_per_dim, elbo)


class SGVBA(_SGVB):
    """SGVB estimator A: the KL term by Monte Carlo, log q(z|x) − log p(z) at the sampled z.

    Valid for any posterior and prior with densities; noisier than B where B applies.
    """

    name = "sgvb-a"

    def kl(self, model: VAE, samples: LatentSamples) -> tuple[Tensor, Tensor | None]:
        if is_factorised(samples.posterior):
            # q (diagonal) and p (standard normal) both factorise, so the Monte Carlo KL
            # splits per dimension too (needed for free bits).
            log_q = samples.posterior.base_dist.log_prob(samples.z)
            log_p = model.prior.base_dist.log_prob(samples.z)
            per_dim = (log_q - log_p).mean((0, 1))
            return per_dim.sum(), per_dim
        return (samples.log_posterior - samples.log_prior).mean(), None


class SGVBB(_SGVB):
    """SGVB estimator B: the KL term in closed form, ½ Σ (μ² + σ² − 1 − log σ²) (diagonal)
    or ½ (tr Σ + μᵀμ − D − log det Σ) (full covariance).

    Valid when KL(q ‖ p) is analytic (Gaussian posterior and prior); lower variance than A.
    """

    name = "sgvb-b"

    def kl(self, model: VAE, samples: LatentSamples) -> tuple[Tensor, Tensor | None]:
        if is_factorised(samples.posterior):
            per_dim = kl_per_dimension(samples.posterior, model.prior).mean(0)
            return per_dim.sum(), per_dim
        return kl_to_standard_normal(samples.posterior).mean(), None


class IWAE(Objective):
    """The importance-weighted bound L_k = E[log (1/k) Σ_i w_i] (Burda et al. 2015).

    The gradient of ``logsumexp`` is Σ_i w̃_i ∇ log w_i with w̃ = softmax(log w): normalised
    weights that carry no gradient themselves, so the best samples weigh most. (Multiplying
    by unnormalised or undetached weights is the bug this avoids.) With β ≠ 1 the prior and
    posterior terms of log w are scaled by β; k = 1 gives SGVB estimator A.
    """

    name = "iwae"

    def __init__(self, num_samples: int = 5, free_bits: float = 0.0):
        super().__init__(num_samples, free_bits)

    def __call__(self, model: VAE, x: Tensor, beta: float | Tensor = 1.0) -> ObjectiveTerms:
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

    def __init__(self, num_samples: int = 1, free_bits: float = 0.0, baseline: str = "none"):
        super().__init__(num_samples, free_bits)
        if baseline not in ("none", "mean"):
            raise ConfigError(f"baseline must be 'none' or 'mean', got {baseline!r}")
        if baseline == "mean" and num_samples < 2:
            raise ConfigError("the leave-one-out mean baseline needs num_samples ≥ 2")
        self.baseline = baseline

    def __call__(self, model: VAE, x: Tensor, beta: float | Tensor = 1.0) -> ObjectiveTerms:
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
        samples = latent_samples(model, x, self.num_samples, reparameterised=False)
        reconstruction = samples.log_likelihood.mean()  # wake: gradient for θ only
        with torch.no_grad():
            z_dream = model.prior.sample((self.num_samples * len(x),))
            x_dream = model.likelihood(z_dream).sample()
        sleep = model.posterior(x_dream).log_prob(z_dream).mean()  # gradient for φ only
        kl = kl_to_standard_normal(samples.posterior).mean().detach()
        elbo = reconstruction.detach() - kl
        return ObjectiveTerms(
            -(reconstruction + sleep), elbo, reconstruction.detach(), kl, None, elbo
        )


class Autoencoder(Objective):
    """A plain autoencoder on the VAE's networks: code z = E_q[z|x], loss −log p(x|z).

    No noise and no KL term, so nothing shapes the codes' distribution: the seed notes'
    contrast to the VAE. Its ``elbo`` and ``bound`` are the reconstruction log-likelihood at
    the code, which is *not* a bound on log p(x); ``kl`` is reported as 0.
    """

    name = "autoencoder"

    def __call__(self, model: VAE, x: Tensor, beta: float | Tensor = 1.0) -> ObjectiveTerms:
        reconstruction = model.likelihood(model.posterior(x).mean).log_prob(x).mean()
        zero = torch.zeros_like(reconstruction)
        value = reconstruction.detach()
        return ObjectiveTerms(-reconstruction, value, value, zero, None, value)


OBJECTIVES: dict[str, type[Objective]] = {
    "sgvb-a": SGVBA,
    "sgvb-b": SGVBB,
    "iwae": IWAE,
    "score-function": ScoreFunction,
    "wake-sleep": WakeSleep,
    "autoencoder": Autoencoder,
}


def make_objective(name: str, num_samples: int = 1, free_bits: float = 0.0) -> Objective:
    """The objective called ``name`` (one of :data:`OBJECTIVES`)."""
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective {name!r}; choose from {sorted(OBJECTIVES)}")
    return OBJECTIVES[name](num_samples=num_samples, free_bits=free_bits)


def kl_weight(step: int, warmup_steps: int, beta: float = 1.0, beta_start: float = 0.0) -> float:
    """KL weight at optimisation ``step`` (0-based): linear from ``beta_start`` to ``beta``.

    Reaches ``beta`` after ``warmup_steps`` steps and stays there; no warm-up when 0.
    """
    if warmup_steps <= 0 or step >= warmup_steps:
        return beta
    return beta_start + (beta - beta_start) * step / warmup_steps


def warn_if_warmup_incomplete(
    total_steps: int, warmup_steps: int, beta: float, beta_start: float
) -> None:
    """Warn when training stops after ``total_steps`` steps, before the KL warm-up ends."""
    if 0 < total_steps < warmup_steps:
        reached = kl_weight(total_steps, warmup_steps, beta, beta_start)
        warnings.warn(
            f"training ends after {total_steps} steps, before the KL warm-up "
            f"({warmup_steps} steps) completes: β reaches only {reached:.3g} of {beta:g}, so "
            "the objective optimised is not the ELBO",
            stacklevel=2,
        )
