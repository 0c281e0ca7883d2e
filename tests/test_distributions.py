"""Likelihood densities against scipy in float64; the prior; reading a likelihood's support."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch.distributions import Independent, Normal

from aevb.distributions import (
    bernoulli,
    diagonal_gaussian,
    gaussian,
    standard_normal,
    support_is_binary,
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


def test_standard_normal_is_the_prior():
    prior = standard_normal(4)
    assert isinstance(prior, Independent) and isinstance(prior.base_dist, Normal)
    torch.testing.assert_close(
        prior.log_prob(torch.zeros(4)), torch.tensor(-2 * math.log(2 * math.pi))
    )


def test_support_tells_binary_likelihoods_apart():
    """A Bernoulli likelihood's support is {0, 1}; a Gaussian's is the real line."""
    like = torch.zeros(3, 1, 4, 4)
    assert support_is_binary(bernoulli(torch.zeros(3, 1, 4, 4), 3), like)
    assert not support_is_binary(gaussian(torch.zeros(3, 1, 4, 4), 0.5, 3), like)
    assert not support_is_binary(diagonal_gaussian(torch.zeros(3, 2), torch.zeros(3, 2)), like)


def test_image_shaped_densities_sum_over_the_event():
    """With event (C, H, W), log_prob sums over all three dimensions: (batch,) nats."""
    logits = torch.randn(2, 3, 1, 4, 5, dtype=torch.float64)
    x = torch.bernoulli(torch.full((3, 1, 4, 5), 0.5, dtype=torch.float64))
    flat = bernoulli(logits.flatten(2)).log_prob(x.flatten(1))
    torch.testing.assert_close(bernoulli(logits, 3).log_prob(x), flat, rtol=1e-12, atol=0)
