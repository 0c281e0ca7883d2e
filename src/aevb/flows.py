"""Flow posteriors: q(z|x) = a diagonal Gaussian pushed through invertible maps conditioned on x.

z₀ ~ N(μ(x), diag σ²(x)), z_t = f_t(z_{t−1}; x) for t = 1…K, and
log q(z_K|x) = log N(z₀; μ, σ²) − Σ_t log |det ∂f_t/∂z_{t−1}|. Sampling and the density of the
sample are computed together in one pass (:meth:`FlowPosterior.rsample_and_log_prob`, which
:func:`aevb.objectives.latent_samples` uses); the density of any other z inverts the maps.

Two families, both as posterior heads (:mod:`aevb.heads`), so the encoder network is any
module and only its output width changes:

* **planar flows** (Rezende & Mohamed 2015), f(z) = z + û tanh(wᵀz + b), with (u, w, b) per
  example from the encoder (amortised). Hand-written: zuko, the flow library used below, has
  no planar transform.
* **inverse autoregressive flow** (Kingma et al. 2016): each step an affine autoregressive map
  z ← exp(a)·z + m with (m, a) from a MADE over z and a context h(x) the encoder outputs; the
  order of the latent dimensions is reversed between steps. The steps are zuko's
  ``MaskedAutoregressiveTransform``: its forward map is the parallel one, which for IAF is
  the sampling direction; its inverse takes D sequential passes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Independent

from aevb.distributions import SampledPosterior, diagonal_gaussian
from aevb.heads import LOG_VARIANCE_RANGE, Head

__all__ = ["FLOW_POSTERIORS", "FlowPosterior", "IAFPosterior", "PlanarPosterior"]

FLOW_POSTERIORS = ("iaf", "planar")
# Least slope of a planar flow along w (1 + wᵀû ≥ this): keeps it invertible, and its
# log-determinant finite, whatever the encoder outputs.
PLANAR_MIN_SLOPE = 1e-4
# Bisection steps of the planar inverse: the bracket shrinks to 2⁻⁶⁰ of its width, below
# float64's resolution.
BISECTION_STEPS = 60


class FlowPosterior(SampledPosterior):
    """q(z|x) as a base diagonal Gaussian and a stack of invertible maps (batch shape (B,),
    event shape (D,)).

    ``steps`` are objects with ``forward(z) -> (z', log|det|)`` and ``inverse(z') -> z``,
    acting on (..., B, D) with per-example parameters broadcast over the leading dimensions.
    """

    def __init__(self, base: Independent, steps: Sequence[_Step]):
        self.base = base
        self.steps = tuple(steps)
        super().__init__(base.batch_shape, base.event_shape[0], base.mean)

    def push(self, z0: Tensor) -> tuple[Tensor, Tensor]:
        """z = f_K ∘ … ∘ f_1(z₀) and log q(z|x), for base draws z₀: (..., B, D)."""
        log_q = self.base.log_prob(z0)
        z = z0
        for step in self.steps:
            z, log_det = step.forward(z)
            log_q = log_q - log_det
        return z, log_q

    def push_noise(self, noise: Tensor) -> tuple[Tensor, Tensor]:
        """z and log q(z|x) from standard-normal ε: z₀ = μ + σ ε, then the maps."""
        return self.push(self.base.mean + self.base.stddev * noise)

    def log_prob(self, value: Tensor) -> Tensor:
        """log q(z|x) of any z (..., B, D), by inverting the maps (slower than the density of
        the posterior's own draws, which :meth:`rsample_and_log_prob` returns)."""
        z = value
        log_det = torch.zeros((), dtype=value.dtype, device=value.device)
        for step in reversed(self.steps):
            previous = step.inverse(z)
            _, step_log_det = step.forward(previous)
            log_det = log_det + step_log_det
            z = previous
        return self.base.log_prob(z) - log_det


class _Step:
    """One invertible map of a flow posterior, its parameters fixed for a batch."""

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def inverse(self, z: Tensor) -> Tensor:
        raise NotImplementedError


class _PlanarStep(_Step):
    """f(z) = z + û tanh(wᵀz + b) with û = u + (m(wᵀu) − wᵀu) w/‖w‖², so that wᵀû = m(wᵀu)
    > −1 and f is invertible (Rezende & Mohamed 2015, appendix A). Here m(a) = −1 +
    softplus(a) + :data:`PLANAR_MIN_SLOPE`: the paper's m without the margin rounds to −1 for
    wᵀu below −37 (float64), where log|det| becomes −∞. u, w: (B, D); b: (B,)."""

    def __init__(self, u: Tensor, w: Tensor, b: Tensor):
        wu = (w * u).sum(-1, keepdim=True)
        squared_norm = w.square().sum(-1, keepdim=True)
        clamped = squared_norm.clamp(min=1e-12)
        # 1 + wᵀû, kept apart: adding 1 to m(a) ≈ −1 would cancel. (w = 0 makes f the identity:
        # û = u, and 1 + wᵀû = 1, which ``covered`` = 0 selects.)
        covered = squared_norm / clamped
        slope = (F.softplus(wu) + PLANAR_MIN_SLOPE) * covered + (1 + wu) * (1 - covered)
        self.u = u + (slope - 1 - wu) * w / clamped
        self.w, self.b = w, b
        self.slope = slope.squeeze(-1)
        self.wu = self.slope - 1  # wᵀû

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        h = torch.tanh((z * self.w).sum(-1) + self.b)
        # det(I + û ψᵀ) = 1 + ψᵀû with ψ = tanh'(·) w: 1 + (1 − h²) wᵀû = h² + (1 − h²)(1 +
        # wᵀû), a sum of non-negative terms, the second at least (1 − h²)·PLANAR_MIN_SLOPE.
        squared = h.square()
        log_det = torch.log(squared + (1 - squared) * self.slope)
        return z + self.u * h.unsqueeze(-1), log_det

    def inverse(self, z: Tensor) -> Tensor:
        """z₀ = z − û tanh(α + b), where α = wᵀz₀ solves g(α) = α + wᵀû tanh(α + b) − wᵀz = 0.

        g is increasing (wᵀû > −1) and |α − wᵀz| ≤ |wᵀû|, so bisection on that bracket finds
        α; a last Newton step through autograd gives α its gradient (implicit function
        theorem) without changing its value.
        """
        target = (z * self.w).sum(-1)
        with torch.no_grad():
            spread = self.wu.abs().expand_as(target) + 1e-6
            low, high = target - spread, target + spread
            for _ in range(BISECTION_STEPS):
                middle = 0.5 * (low + high)
                above = self._g(middle, target) > 0
                high = torch.where(above, middle, high)
                low = torch.where(above, low, middle)
            alpha = 0.5 * (low + high)
        squared = torch.tanh(alpha + self.b).square()
        slope = squared + (1 - squared) * self.slope
        alpha = alpha - self._g(alpha, target) / slope
        return z - self.u * torch.tanh(alpha + self.b).unsqueeze(-1)

    def _g(self, alpha: Tensor, target: Tensor) -> Tensor:
        return alpha + self.wu * torch.tanh(alpha + self.b) - target


class _TransformStep(_Step):
    """A step given by a ``torch.distributions.Transform`` with ``call_and_ladj`` (zuko's)."""

    def __init__(self, transform):
        self.transform = transform

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return self.transform.call_and_ladj(z)

    def inverse(self, z: Tensor) -> Tensor:
        return self.transform.inv(z)


class PlanarPosterior(Head):
    """Posterior head: a diagonal Gaussian and ``steps`` planar flows whose parameters the
    encoder outputs per example, (..., 2D + steps·(2D + 1)): μ, log σ², then each step's u, w
    and b. The log-variance is clamped as in :class:`aevb.heads.DiagonalGaussian`."""

    def __init__(self, latent_dim: int, steps: int):
        super().__init__()
        if steps < 1:
            raise ValueError(f"a flow posterior needs at least one step, got {steps}")
        self.latent_dim, self.steps = int(latent_dim), int(steps)
        self.parameter_shape = (2 * self.latent_dim + self.steps * (2 * self.latent_dim + 1),)

    def forward(self, parameters: Tensor) -> FlowPosterior:
        d = self.latent_dim
        loc, log_variance = parameters[..., :d], parameters[..., d : 2 * d]
        flows = parameters[..., 2 * d :].unflatten(-1, (self.steps, 2 * d + 1))
        steps = [
            _PlanarStep(flows[..., t, :d], flows[..., t, d : 2 * d], flows[..., t, 2 * d])
            for t in range(self.steps)
        ]
        return FlowPosterior(diagonal_gaussian(loc, log_variance.clamp(*LOG_VARIANCE_RANGE)), steps)


class IAFPosterior(Head):
    """Posterior head: a diagonal Gaussian and ``steps`` inverse autoregressive flow steps,
    each a MADE with two hidden layers of ``hidden`` units over z and the context h(x).

    The encoder outputs (..., 2D + context): μ, log σ², then h. The MADEs' weights are this
    head's own parameters, shared by all examples; zuko's affine step bounds the log-scale
    softly (slope ≥ 10⁻³), so a step cannot collapse or blow up a dimension.
    """

    def __init__(self, latent_dim: int, steps: int, hidden: int, context: int | None = None):
        super().__init__()
        from zuko.flows import MaskedAutoregressiveTransform

        if steps < 1:
            raise ValueError(f"a flow posterior needs at least one step, got {steps}")
        self.latent_dim, self.steps = int(latent_dim), int(steps)
        self.context = int(context if context is not None else latent_dim)
        self.parameter_shape = (2 * self.latent_dim + self.context,)
        order = torch.arange(self.latent_dim)
        self.made = nn.ModuleList(
            MaskedAutoregressiveTransform(
                features=self.latent_dim,
                context=self.context,
                order=order if t % 2 == 0 else order.flip(0),
                hidden_features=(int(hidden), int(hidden)),
            )
            for t in range(self.steps)
        )

    def forward(self, parameters: Tensor) -> FlowPosterior:
        d = self.latent_dim
        loc, log_variance = parameters[..., :d], parameters[..., d : 2 * d]
        context = parameters[..., 2 * d :]
        steps = [_TransformStep(made(context)) for made in self.made]
        return FlowPosterior(diagonal_gaussian(loc, log_variance.clamp(*LOG_VARIANCE_RANGE)), steps)


def default_flow_steps(posterior: str) -> int:
    """Flow steps when not given: 2 IAF steps (Kingma et al. 2016's MNIST models used 2 to 8)
    and 10 planar flows (Rezende & Mohamed 2015 used 10 to 80)."""
    return {"iaf": 2, "planar": 10}[posterior]


def default_flow_hidden(latent_dim: int) -> int:
    """Hidden units of each IAF MADE layer when not given: 4·latent_dim, at least 64."""
    return max(64, 4 * int(latent_dim))
