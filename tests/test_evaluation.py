"""Importance-sampled log-likelihood, IWAE bound, diagnostics and the gradient-variance tool."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_objectives import ShiftedPrior
from torch.distributions import MultivariateNormal

from aevb.builders import mlp
from aevb.diagnostics import gradient_variance, warn_if_collapsed
from aevb.errors import DataError
from aevb.evaluation import count_active_units, evaluate, log_likelihood_per_example
from aevb.models import VAE
from aevb.objectives import IWAE, SGVBA, SGVBB, ScoreFunction, latent_samples


def test_full_covariance_encoder_is_a_valid_gaussian(model_and_batch):
    _, x = model_and_batch
    model = mlp((12,), 4, (8,), posterior="full").double()
    q = model.posterior(x)
    assert isinstance(q, MultivariateNormal) and q.event_shape == (4,)
    assert (q.scale_tril.diagonal(dim1=-2, dim2=-1) > 0).all()
    assert torch.equal(q.scale_tril, q.scale_tril.tril())
    for objective in (SGVBA(2), SGVBB(2), IWAE(4)):
        terms = objective(model, x)
        assert torch.isfinite(terms.loss)
        terms.loss.backward()


def test_iwae_gradient_uses_normalised_detached_weights(model_and_batch):
    """∇L_k = Σ_i w̃_i ∇ log w_i with w̃ = softmax(log w) treated as constants."""
    model, x = model_and_batch
    params = list(model.parameters())
    torch.manual_seed(7)
    iwae_grads = torch.autograd.grad(IWAE(num_samples=6)(model, x).loss, params)
    torch.manual_seed(7)
    log_w = latent_samples(model, x, 6).log_weights
    weights = torch.softmax(log_w.detach(), 0)
    reference = torch.autograd.grad(-(weights * log_w).sum(0).mean(), params)
    for a, b in zip(iwae_grads, reference, strict=True):
        torch.testing.assert_close(a, b)


def test_iwae_with_one_sample_is_estimator_a(model_and_batch):
    model, x = model_and_batch
    torch.manual_seed(3)
    iwae = IWAE(num_samples=1)(model, x)
    torch.manual_seed(3)
    sgvb = SGVBA(num_samples=1)(model, x)
    torch.testing.assert_close(iwae.bound, sgvb.elbo)


def test_iwae_bound_increases_with_k(model_and_batch):
    """Means over 400 draws: L_1 ≤ L_5 ≤ L_50, each gap beyond 4 standard errors."""
    model, x = model_and_batch
    torch.manual_seed(4)
    with torch.no_grad():
        bounds = {k: torch.stack([IWAE(k)(model, x).bound for _ in range(400)]) for k in (1, 5, 50)}
    for small, large in ((1, 5), (5, 50)):
        a, b = bounds[small], bounds[large]
        assert b.mean() - a.mean() > 4 * math.sqrt(a.var() / len(a) + b.var() / len(b))


def test_evaluate_orders_the_bounds(model_and_batch):
    model, x = model_and_batch
    result = evaluate(model, x, importance_samples=2000, iwae_samples=10, float64=True)
    assert result.elbo_a < result.iwae_bound < result.log_likelihood
    assert abs(result.elbo - result.elbo_a) < 0.5  # B and A from the same 2000 draws
    assert result.importance_samples == 2000 and result.iwae_samples == 10
    assert result.num_examples == 20 and result.latent_dim == 3
    assert result.bits_per_dim == pytest.approx(-result.log_likelihood / (12 * math.log(2)))
    assert len(result.kl_per_dim) == 3
    assert sum(result.kl_per_dim) == pytest.approx(result.kl)
    assert result.reconstruction - result.kl == pytest.approx(result.elbo)


def test_evaluate_with_one_sample_is_the_elbo(model_and_batch):
    model, x = model_and_batch
    result = evaluate(model, x, importance_samples=1)
    assert result.log_likelihood == pytest.approx(result.elbo_a)
    assert result.log_likelihood_se == 0


def test_evaluate_is_independent_of_chunking_in_distribution(model_and_batch):
    """Two chunkings of 3000 draws agree within 4 Monte Carlo standard errors."""
    model, x = model_and_batch
    big = evaluate(model, x, importance_samples=3000, seed=1)
    small = evaluate(model, x, importance_samples=3000, batch_size=3, chunk_elements=1000, seed=2)
    tolerance = 4 * math.hypot(big.log_likelihood_se, small.log_likelihood_se)
    assert abs(big.log_likelihood - small.log_likelihood) < tolerance


def test_evaluate_repeats_with_a_seed(model_and_batch):
    model, x = model_and_batch
    assert (
        evaluate(model, x, 50, seed=5).log_likelihood
        == evaluate(model, x, 50, seed=5).log_likelihood
    )


def test_active_units():
    means = torch.zeros(100, 4)
    means[:, 0] = torch.linspace(-1, 1, 100)  # variance ≈ 0.34: active
    means[:, 1] = torch.linspace(-0.05, 0.05, 100)  # variance ≈ 0.0009: inactive
    assert count_active_units(means) == 1
    with pytest.warns(UserWarning, match="only 1 of 4 latent units"):
        warn_if_collapsed(1, 4)


def test_score_function_and_reparameterised_gradients(model_and_batch):
    """Same expectation (projection on a random direction, 4 SE); far larger variance."""
    model, x = model_and_batch
    stats = gradient_variance(
        model,
        x,
        {
            "sgvb": SGVBA(1),
            "score": ScoreFunction(1),
            "score-baseline": ScoreFunction(2, baseline="mean"),
        },
        num_draws=600,
    )
    sgvb, score, baseline = stats["sgvb"], stats["score"], stats["score-baseline"]
    difference = abs(sgvb.projection_mean - score.projection_mean)
    assert difference < 4 * math.hypot(sgvb.projection_se, score.projection_se)
    difference = abs(sgvb.projection_mean - baseline.projection_mean)
    assert difference < 4 * math.hypot(sgvb.projection_se, baseline.projection_se)
    assert score.total_variance > 10 * sgvb.total_variance
    assert baseline.total_variance < score.total_variance


def test_score_function_decoder_gradient_matches_reparameterised(model_and_batch):
    """For θ both estimators are E_q[∇_θ log p(x|z)]; same draws give the same gradient."""
    model, x = model_and_batch
    params = list(model.decoder.parameters())
    torch.manual_seed(9)
    a = torch.autograd.grad(SGVBA(3)(model, x).loss, params)
    torch.manual_seed(9)
    b = torch.autograd.grad(ScoreFunction(3)(model, x).loss, params)
    for g, h in zip(a, b, strict=True):
        torch.testing.assert_close(g, h)


def test_evaluate_uses_the_models_prior_for_the_kl(model_and_batch):
    """The KL that ``evaluate`` reports to a N(1, 4I) prior is the closed form, exactly (it was
    hard-coded to N(0, I) once), and its ELBO is reconstruction − that KL."""
    base, x = model_and_batch
    model = VAE(base.encoder, base.decoder, ShiftedPrior(3))
    with torch.no_grad():
        q = model.posterior(x)
    mu, sigma = q.mean, q.stddev
    per_dim = torch.log(2 / sigma) + (sigma**2 + (mu - 1) ** 2) / 8 - 0.5
    result = evaluate(model, x, importance_samples=100, float64=True)
    assert result.kl_estimator == "analytic"
    assert result.kl == pytest.approx(float(per_dim.sum(-1).mean()), rel=1e-10)
    np.testing.assert_allclose(result.kl_per_dim, per_dim.mean(0).numpy(), rtol=1e-10)
    assert result.elbo == pytest.approx(result.reconstruction - result.kl)


def test_evaluate_with_a_vamp_prior_estimates_the_kl_from_the_same_draws():
    """No closed form: the KL is the Monte Carlo mean of log q − log p over the evaluation's
    draws, so estimators A and B coincide, and the bounds keep their order."""
    torch.manual_seed(0)
    model = mlp((12,), 3, (16,), prior="vamp", prior_components=5).double()
    x = torch.bernoulli(torch.full((20, 12), 0.4, dtype=torch.float64))
    result = evaluate(model, x, importance_samples=500, iwae_samples=10, float64=True)
    assert result.kl_estimator == "Monte Carlo" and result.kl_per_dim is None
    assert result.elbo == pytest.approx(result.elbo_a, rel=1e-9)
    assert result.elbo_a < result.iwae_bound < result.log_likelihood


def test_grey_values_for_a_bernoulli_likelihood_are_refused(model_and_batch):
    """A Bernoulli likelihood gives no density to grey values: evaluate and the per-row scores
    refuse them with an explanation instead of scoring them."""
    model, x = model_and_batch
    grey = x * 0.5 + 0.25
    with pytest.raises(DataError, match=r"\{0, 1\} \(Bernoulli\).*Binarize x"):
        evaluate(model, grey, importance_samples=10)
    with pytest.raises(DataError, match="Bernoulli"):
        log_likelihood_per_example(model, grey, 10)


@pytest.mark.parametrize(
    "parts",
    [{"posterior": "iaf"}, {"posterior": "planar"}, {"top_latent_dim": 2}],
    ids=["iaf", "planar", "two-layers"],
)
def test_per_row_scores_of_sampled_posteriors_depend_on_the_row_alone(parts):
    """Posteriors that transform noise (flows, two stochastic layers) share the standard-normal
    draws between rows too: a row's log p̂(x) is the same scored alone or among others (to
    float32 round-off: a batch of one and of six go through different matrix kernels)."""
    torch.manual_seed(4)
    model = mlp((10,), latent_dim=3, hidden=(16,), likelihood="gaussian", **parts)
    x = torch.randn(6, 10)
    together = log_likelihood_per_example(model, x, importance_samples=50)
    alone = torch.cat([log_likelihood_per_example(model, x[i : i + 1], 50) for i in range(6)])
    torch.testing.assert_close(together, alone, atol=0, rtol=1e-6)
