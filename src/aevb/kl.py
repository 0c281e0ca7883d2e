"""The one KL path: KL(q(z|x) ‖ p(z)) for any posterior and prior.

The KL term of the ELBO is computed in closed form where ``torch.distributions.kl_divergence``
knows the (posterior, prior) pair — diagonal Gaussians against a Gaussian prior (paper,
Appendix B: ½ Σ (μ² + σ² − 1 − log σ²) for p = N(0, I)), a full-covariance posterior against
a diagonal Gaussian prior (registered below) — and estimated by Monte Carlo from the same
draws z ~ q otherwise (a mixture or VampPrior prior, flows): the mean of log q(z|x) − log p(z).

Which of the two applies is decided once, by :meth:`KLRule.decide`, outside any compiled
step: the decision calls ``kl_divergence`` eagerly, which also fills torch's dispatch cache for
the pair, so the compiled step's own call traces (torch's type dispatch does not, on a cold
cache). The objectives (:mod:`aevb.objectives`) and the evaluation (:mod:`aevb.evaluation`)
both compute the KL through :meth:`KLRule.estimate`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.distributions import (
    Distribution,
    Independent,
    MultivariateNormal,
    kl_divergence,
    register_kl,
)

from aevb.distributions import is_factorised

__all__ = ["KLEstimate", "KLRule"]


@register_kl(MultivariateNormal, Independent)
def _kl_full_covariance_to_diagonal(q: MultivariateNormal, p: Independent) -> Tensor:
    """KL(N(μ, LLᵀ) ‖ N(m, diag s²)) = ½ [Σ_jk L_jk²/s_j² + Σ_j ((μ_j − m_j)/s_j)² − D
    + 2 Σ_j log s_j − 2 Σ_j log L_jj].

    torch registers no KL between a ``MultivariateNormal`` and an ``Independent(Normal)`` (the
    full-covariance posterior against the standard normal prior), so it is added to torch's
    registry here; any other ``Independent`` prior is left to the Monte Carlo estimate.
    """
    if not is_factorised(p):
        raise NotImplementedError
    scale = p.base_dist.scale
    scale_tril = q.scale_tril
    trace = (scale_tril / scale.unsqueeze(-1)).square().sum((-2, -1))
    mahalanobis = ((q.loc - p.base_dist.loc) / scale).square().sum(-1)
    log_det_ratio = 2 * scale.log().sum(-1) - 2 * scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(
        -1
    )
    return 0.5 * (trace + mahalanobis - q.event_shape[-1] + log_det_ratio)


def _splits_per_dimension(distribution: Distribution) -> bool:
    """An ``Independent`` over one dimension of an element-wise distribution: its log-density
    and KL are sums over latent dimensions."""
    return isinstance(distribution, Independent) and distribution.reinterpreted_batch_ndims == 1


@dataclass(frozen=True)
class KLEstimate:
    """KL(q(z|x) ‖ p(z)) per example, ``total`` (batch,) nats, and where both distributions
    factorise over latent dimensions its split ``per_dimension`` (batch, latent_dim)."""

    total: Tensor
    per_dimension: Tensor | None


@dataclass(frozen=True)
class KLRule:
    """How KL(q ‖ p) is computed for one kind of (posterior, prior) pair.

    ``analytic``: by ``kl_divergence`` (exact); otherwise a Monte Carlo estimate from the draws
    of the objective or evaluation. ``per_dimension``: the KL splits over latent dimensions
    (both distributions are ``Independent`` over one dimension), as free bits need.
    """

    analytic: bool
    per_dimension: bool

    @classmethod
    def decide(cls, posterior: Distribution, prior: Distribution) -> KLRule:
        """The rule for this pair's types. Call it eagerly (not under ``torch.compile``)."""
        per_dimension = _splits_per_dimension(posterior) and _splits_per_dimension(prior)
        with torch.no_grad():
            try:
                if per_dimension:
                    kl_divergence(posterior.base_dist, prior.base_dist)
                kl_divergence(posterior, prior)
            except NotImplementedError:
                return cls(analytic=False, per_dimension=per_dimension)
        return cls(analytic=True, per_dimension=per_dimension)

    @property
    def description(self) -> str:
        return "analytic" if self.analytic else "Monte Carlo"

    def estimate(
        self,
        posterior: Distribution,
        prior: Distribution,
        z: Tensor | None = None,
        log_ratio: Tensor | None = None,
    ) -> KLEstimate:
        """KL(q ‖ p) for q with batch shape (batch,).

        The Monte Carlo estimate needs the draws ``z`` (k, batch, latent_dim) of q; pass
        ``log_ratio`` = log q(z|x) − log p(z) (k, batch) when it is already computed.
        """
        if self.analytic:
            if self.per_dimension:
                per_dimension = kl_divergence(posterior.base_dist, prior.base_dist)
                return KLEstimate(per_dimension.sum(-1), per_dimension)
            return KLEstimate(kl_divergence(posterior, prior), None)
        if z is None:
            raise ValueError("the Monte Carlo KL estimate needs the draws z of the posterior")
        if self.per_dimension:
            log_q = posterior.base_dist.log_prob(z)
            log_p = prior.base_dist.log_prob(z)
            per_dimension = (log_q - log_p).mean(0)
            return KLEstimate(per_dimension.sum(-1), per_dimension)
        if log_ratio is None:
            log_ratio = posterior.log_prob(z) - prior.log_prob(z)
        return KLEstimate(log_ratio.mean(0), None)
