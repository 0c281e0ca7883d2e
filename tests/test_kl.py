"""The one KL path (aevb.kl): analytic where torch knows the pair, Monte Carlo otherwise,
checked against closed forms and independent computations in float64."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import (
    Categorical,
    Independent,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
    kl_divergence,
)

from aevb.distributions import diagonal_gaussian, full_covariance_gaussian, standard_normal
from aevb.kl import KLRule

DTYPE = torch.float64


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def test_diagonal_kl_is_the_papers_closed_form_per_dimension(generator):
    """½ (μ² + σ² − 1 − log σ²) per dimension (paper, Appendix B), and the general Gaussian
    closed form for a prior other than N(0, I)."""
    loc = torch.randn(8, 5, generator=generator, dtype=DTYPE)
    log_variance = torch.randn(8, 5, generator=generator, dtype=DTYPE)
    q, p = diagonal_gaussian(loc, log_variance), standard_normal(5, dtype=DTYPE)
    rule = KLRule.decide(q, p)
    assert rule == KLRule(analytic=True, per_dimension=True)
    kl = rule.estimate(q, p)
    formula = 0.5 * (loc**2 + log_variance.exp() - 1 - log_variance)
    torch.testing.assert_close(kl.per_dimension, formula, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(kl.total, formula.sum(-1), rtol=1e-12, atol=1e-12)
    # p = N(m, s²): log(s/σ) + (σ² + (μ − m)²)/(2s²) − ½ per dimension.
    m = torch.randn(5, generator=generator, dtype=DTYPE)
    s = torch.rand(5, generator=generator, dtype=DTYPE) + 0.5
    other = Independent(Normal(m, s), 1)
    sigma2 = log_variance.exp()
    expected = s.log() - 0.5 * log_variance + (sigma2 + (loc - m) ** 2) / (2 * s**2) - 0.5
    torch.testing.assert_close(KLRule.decide(q, other).estimate(q, other).total, expected.sum(-1))


def test_full_covariance_to_diagonal_prior_matches_the_multivariate_closed_form(generator):
    """The KL registered for (MultivariateNormal, Independent(Normal)) equals torch's
    MVN–MVN KL with the prior written as a diagonal MultivariateNormal."""
    loc = torch.randn(6, 3, generator=generator, dtype=DTYPE)
    raw = torch.randn(6, 3, 3, generator=generator, dtype=DTYPE)
    scale_tril = raw.tril(-1) + torch.diag_embed(raw.diagonal(dim1=-2, dim2=-1).exp())
    q = full_covariance_gaussian(loc, scale_tril)
    m = torch.randn(3, generator=generator, dtype=DTYPE)
    s = torch.rand(3, generator=generator, dtype=DTYPE) + 0.5
    for p, reference in (
        (
            standard_normal(3, dtype=DTYPE),
            MultivariateNormal(torch.zeros(3, dtype=DTYPE), torch.eye(3, dtype=DTYPE)),
        ),
        (Independent(Normal(m, s), 1), MultivariateNormal(m, torch.diag(s**2))),
    ):
        rule = KLRule.decide(q, p)
        assert rule == KLRule(analytic=True, per_dimension=False)
        torch.testing.assert_close(
            rule.estimate(q, p).total, kl_divergence(q, reference), rtol=1e-12, atol=1e-12
        )


def mixture(generator: torch.Generator, components: int = 4, dim: int = 3) -> MixtureSameFamily:
    loc = torch.randn(components, dim, generator=generator, dtype=DTYPE)
    scale = torch.rand(components, dim, generator=generator, dtype=DTYPE) + 0.5
    logits = torch.randn(components, generator=generator, dtype=DTYPE)
    return MixtureSameFamily(Categorical(logits=logits), Independent(Normal(loc, scale), 1))


def test_a_mixture_prior_gets_the_monte_carlo_estimate_which_is_unbiased(generator):
    """No closed form for KL(Gaussian ‖ mixture): the rule is Monte Carlo, and its estimate
    from 20,000 draws agrees with an independent estimate (log q − log p by torch, on 200,000
    other draws) within 4 standard errors of the two combined."""
    q = diagonal_gaussian(
        torch.randn(2, 3, generator=generator, dtype=DTYPE),
        torch.randn(2, 3, generator=generator, dtype=DTYPE) - 1,
    )
    p = mixture(generator)
    rule = KLRule.decide(q, p)
    assert rule == KLRule(analytic=False, per_dimension=False)
    torch.manual_seed(1)
    z = q.sample((20_000,))
    estimate = rule.estimate(q, p, z).total
    reference_draws = q.log_prob(w := q.sample((200_000,))) - p.log_prob(w)
    per_draw = q.log_prob(z) - p.log_prob(z)
    standard_error = torch.sqrt(
        per_draw.var(0) / len(z) + reference_draws.var(0) / len(reference_draws)
    )
    assert ((estimate - reference_draws.mean(0)).abs() < 4 * standard_error).all()
    assert (estimate > 0).all()
    with pytest.raises(ValueError, match="needs the draws"):
        rule.estimate(q, p)


def test_monte_carlo_per_dimension_split_sums_to_the_total(generator):
    """For factorised q and p the Monte Carlo KL (estimator A's) splits per dimension."""
    q = diagonal_gaussian(torch.zeros(4, 3, dtype=DTYPE), torch.zeros(4, 3, dtype=DTYPE) - 1)
    p = standard_normal(3, dtype=DTYPE)
    rule = KLRule(analytic=False, per_dimension=True)
    z = q.sample((50,))
    kl = rule.estimate(q, p, z)
    assert kl.per_dimension.shape == (4, 3)
    torch.testing.assert_close(kl.per_dimension.sum(-1), kl.total)
    torch.testing.assert_close(kl.total, (q.log_prob(z) - p.log_prob(z)).mean(0))


def test_closed_form_matches_monte_carlo(generator):
    """E_q[log q(z) − log p(z)] by 200k draws; tolerance 4 standard errors of that mean."""
    loc = torch.tensor([0.7, -1.2, 0.1], dtype=DTYPE)
    log_variance = torch.tensor([-0.5, 0.3, -2.0], dtype=DTYPE)
    q, p = diagonal_gaussian(loc, log_variance), standard_normal(3, dtype=DTYPE)
    eps = torch.randn(200_000, 3, generator=generator, dtype=DTYPE)
    z = loc + log_variance.mul(0.5).exp() * eps
    draws = q.log_prob(z) - p.log_prob(z)
    standard_error = draws.std() / math.sqrt(len(draws))
    exact = KLRule.decide(q, p).estimate(q, p).total
    assert abs(draws.mean() - exact) < 4 * standard_error


def test_the_analytic_kl_traces_under_torch_compile_once_decided():
    """``decide`` runs kl_divergence eagerly, so the compiled step's own call traces with
    Dynamo (fullgraph; the eager backend, since tracing is what is checked) and gives the eager
    value."""
    loc, log_variance = torch.randn(5, 3), torch.randn(5, 3)
    q, p = diagonal_gaussian(loc, log_variance), standard_normal(3)
    rule = KLRule.decide(q, p)

    def kl(loc, log_variance):
        return rule.estimate(diagonal_gaussian(loc, log_variance), standard_normal(3)).total.sum()

    compiled = torch.compile(kl, fullgraph=True, dynamic=False, backend="eager")
    torch.testing.assert_close(compiled(loc, log_variance), kl(loc, log_variance))
