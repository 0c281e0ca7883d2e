"""SGVB estimators A and B: equal expectations, decomposition, β, warm-up and free bits."""

from __future__ import annotations

import math

import pytest
import torch

from aevb.objectives import SGVBA, SGVBB, kl_weight, make_objective, warn_if_warmup_incomplete


def _draws(objective, model, x, n):
    """n independent single-sample ELBO estimates of the batch mean."""
    with torch.no_grad():
        return torch.stack([objective(model, x).elbo for _ in range(n)])


def test_estimators_a_and_b_have_equal_expectations(model_and_batch):
    """Means of 4000 draws each differ by less than 4 standard errors of the difference."""
    model, x = model_and_batch
    torch.manual_seed(1)
    a, b = _draws(SGVBA(), model, x, 4000), _draws(SGVBB(), model, x, 4000)
    standard_error = math.sqrt(a.var() / len(a) + b.var() / len(b))
    assert abs(a.mean() - b.mean()) < 4 * standard_error
    # Estimator B removes the KL's Monte Carlo noise, so its variance is the smaller one.
    assert b.var() < a.var()


def test_estimator_b_kl_is_exact_and_a_converges_to_it(model_and_batch):
    model, x = model_and_batch
    torch.manual_seed(2)
    posterior = model.posterior(x)
    exact = 0.5 * (posterior.mean**2 + posterior.variance - 1 - posterior.variance.log())
    exact = exact.sum(-1).mean()
    with torch.no_grad():
        assert SGVBB()(model, x).kl.item() == pytest.approx(exact.item(), rel=1e-12)
        kl_a = torch.stack([SGVBA(num_samples=50)(model, x).kl for _ in range(200)])
    assert abs(kl_a.mean() - exact) < 4 * kl_a.std() / math.sqrt(len(kl_a))


@pytest.mark.parametrize("objective", [SGVBA(num_samples=3), SGVBB(num_samples=3)])
def test_terms_decompose(model_and_batch, objective):
    model, x = model_and_batch
    terms = objective(model, x, beta=0.25)
    torch.testing.assert_close(terms.elbo, terms.reconstruction - terms.kl)
    torch.testing.assert_close(terms.loss, 0.25 * terms.kl - terms.reconstruction)
    torch.testing.assert_close(terms.kl_per_dim.sum(), terms.kl)
    assert terms.kl_per_dim.shape == (3,)


def test_more_samples_reduce_variance(model_and_batch):
    model, x = model_and_batch
    torch.manual_seed(3)
    one, ten = _draws(SGVBB(1), model, x, 500), _draws(SGVBB(10), model, x, 500)
    assert ten.var() < one.var() / 3  # expected ratio 10; 500 draws make 3 a safe bound


def test_free_bits_only_change_the_loss(model_and_batch):
    model, x = model_and_batch
    torch.manual_seed(4)
    plain = SGVBB()(model, x)
    torch.manual_seed(4)
    free = SGVBB(free_bits=1.0)(model, x)
    torch.testing.assert_close(free.elbo, plain.elbo)
    clamped = plain.kl_per_dim.clamp(min=1.0).sum()
    torch.testing.assert_close(free.loss, clamped - plain.reconstruction)


def test_gradients_reach_encoder_and_decoder(model_and_batch):
    model, x = model_and_batch
    SGVBA()(model, x).loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_kl_weight_schedule():
    assert kl_weight(0, 0) == 1.0
    assert kl_weight(0, 100, beta=2.0, beta_start=0.0) == 0.0
    assert kl_weight(50, 100, beta=2.0, beta_start=0.0) == 1.0
    assert kl_weight(100, 100, beta=2.0) == 2.0
    assert kl_weight(10_000, 100, beta=0.5, beta_start=0.1) == 0.5
    assert kl_weight(25, 100, beta=1.0, beta_start=0.2) == pytest.approx(0.4)


def test_warning_when_training_ends_before_warmup():
    with pytest.warns(UserWarning, match="before the KL warm-up"):
        warn_if_warmup_incomplete(total_steps=10, warmup_steps=100, beta=1.0, beta_start=0.0)
    warn_if_warmup_incomplete(total_steps=100, warmup_steps=100, beta=1.0, beta_start=0.0)


def test_make_objective():
    assert isinstance(make_objective("sgvb-a", 2), SGVBA)
    assert make_objective("sgvb-b").num_samples == 1
    with pytest.raises(ValueError, match="unknown objective"):
        make_objective("elbo-c")
    with pytest.raises(ValueError):
        SGVBA(num_samples=0)
