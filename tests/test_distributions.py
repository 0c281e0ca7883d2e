"""Likelihood densities against scipy in float64; KL closed form against two references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch.distributions import Independent, Normal, kl_divergence

from aevb.distributions import (
    bernoulli,
    diagonal_gaussian,
    gaussian,
    kl_per_dimension,
    standard_normal,
)


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def test_bernoulli_log_prob_matches_scipy(generator):
    logits = torch.randn(5, 7, generator=generator, dtype=torch.float64) * 4
    x = torch.bernoulli(torch.full((5, 7), 0.5, dtype=torch.float64), generator=generator)
    probs = torch.sigmoid(logits).numpy()
    expected = stats.bernoulli.logpmf(x.numpy(), probs).sum(-1)
    np.testing.assert_allclose(bernoulli(logits).log_prob(x).numpy(), expected, rtol=1e-12)


def test_bernoulli_log_prob_is_finite_for_extreme_logits():
    logits = torch.tensor([[-200.0, 200.0]], dtype=torch.float64)
    log_prob = bernoulli(logits).log_prob(torch.tensor([[1.0, 0.0]], dtype=torch.float64))
    assert torch.isfinite(log_prob).all()
    assert log_prob.item() == pytest.approx(-400.0)


@pytest.mark.parametrize("scale", ["tensor", "fixed"])
def test_gaussian_log_prob_matches_scipy(generator, scale):
    loc = torch.randn(4, 6, generator=generator, dtype=torch.float64)
    x = torch.randn(4, 6, generator=generator, dtype=torch.float64)
    std = (
        torch.rand(4, 6, generator=generator, dtype=torch.float64) + 0.1
        if scale == "tensor"
        else 0.3
    )
    expected = stats.norm.logpdf(x.numpy(), loc.numpy(), np.asarray(std)).sum(-1)
    np.testing.assert_allclose(gaussian(loc, std).log_prob(x).numpy(), expected, rtol=1e-12)


def test_diagonal_gaussian_uses_log_variance(generator):
    loc = torch.randn(3, 2, generator=generator, dtype=torch.float64)
    log_variance = torch.randn(3, 2, generator=generator, dtype=torch.float64)
    q = diagonal_gaussian(loc, log_variance)
    torch.testing.assert_close(q.variance, log_variance.exp())
    assert q.batch_shape == (3,) and q.event_shape == (2,)


def test_kl_closed_form_matches_formula_and_torch(generator):
    loc = torch.randn(8, 5, generator=generator, dtype=torch.float64)
    log_variance = torch.randn(8, 5, generator=generator, dtype=torch.float64)
    q, p = diagonal_gaussian(loc, log_variance), standard_normal(5, dtype=torch.float64)
    per_dim = kl_per_dimension(q, p)
    formula = 0.5 * (loc**2 + log_variance.exp() - 1 - log_variance)  # paper, Appendix B
    torch.testing.assert_close(per_dim, formula, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(per_dim.sum(-1), kl_divergence(q, p), rtol=1e-12, atol=1e-12)
    # A prior other than N(0, I): the general closed form against torch's registered KL.
    other = diagonal_gaussian(torch.randn(5, dtype=torch.float64, generator=generator), loc[0])
    torch.testing.assert_close(
        kl_per_dimension(q, other).sum(-1), kl_divergence(q, other), rtol=1e-12, atol=1e-12
    )


def test_kl_closed_form_matches_monte_carlo(generator):
    """E_q[log q(z) − log p(z)] by 200k draws; tolerance 4 standard errors of that mean."""
    loc = torch.tensor([0.7, -1.2, 0.1], dtype=torch.float64)
    log_variance = torch.tensor([-0.5, 0.3, -2.0], dtype=torch.float64)
    q, p = diagonal_gaussian(loc, log_variance), standard_normal(3, dtype=torch.float64)
    eps = torch.randn(200_000, 3, generator=generator, dtype=torch.float64)
    z = loc + log_variance.mul(0.5).exp() * eps
    draws = q.log_prob(z) - p.log_prob(z)
    standard_error = draws.std() / math.sqrt(len(draws))
    exact = kl_per_dimension(q, p).sum()
    assert abs(draws.mean() - exact) < 4 * standard_error


def test_standard_normal_is_the_prior():
    prior = standard_normal(4)
    assert isinstance(prior, Independent) and isinstance(prior.base_dist, Normal)
    torch.testing.assert_close(
        prior.log_prob(torch.zeros(4)), torch.tensor(-2 * math.log(2 * math.pi))
    )
