"""SGVB estimators A and B: equal expectations, decomposition, β, warm-up and free bits, any
prior; each objective's options and judged metric."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import Independent, Normal

from aevb.builders import mlp
from aevb.errors import ConfigError
from aevb.models import VAE
from aevb.objectives import (
    IWAE,
    SGVBA,
    SGVBB,
    Autoencoder,
    kl_weight,
    make_objective,
    warn_if_warmup_incomplete,
)


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
    objective = SGVBB(warmup_steps=100)
    with pytest.warns(UserWarning, match="before the KL warm-up"):
        warn_if_warmup_incomplete(10, objective)
    warn_if_warmup_incomplete(100, objective)
    assert objective.kl_weight(50) == 0.5 and objective.kl_weight(100) == 1.0


def test_make_objective_takes_the_options_each_objective_accepts():
    assert isinstance(make_objective("sgvb-a", samples=2), SGVBA)
    assert make_objective("sgvb-b").num_samples == 1
    assert make_objective("score-function", samples=2, baseline="mean").baseline == "mean"
    assert make_objective("iwae", samples=7, beta=0.5).beta == 0.5
    with pytest.raises(ValueError, match="unknown objective"):
        make_objective("elbo-c")
    with pytest.raises(ConfigError, match="does not take beta"):
        make_objective("autoencoder", beta=0.5)
    with pytest.raises(ConfigError, match="does not take free_bits"):
        make_objective("iwae", free_bits=0.5)
    with pytest.raises(ValueError):
        SGVBA(num_samples=0)


def test_objectives_say_what_they_are_judged_by():
    assert SGVBB.judged_by == IWAE.judged_by == "elbo"
    assert Autoencoder.judged_by == "reconstruction" and Autoencoder.reported == ("reconstruction",)


class ShiftedPrior(nn.Module):
    """p(z) = N(1, 2²I): a prior other than the paper's."""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.register_buffer("loc", torch.ones(latent_dim, dtype=torch.float64))

    def forward(self):
        return Independent(Normal(self.loc, 2 * torch.ones_like(self.loc)), 1)


def test_estimator_b_uses_the_models_prior_in_closed_form(model_and_batch):
    """With p(z) = N(1, 4I), SGVB-B's KL is Σ_j [log(2/σ_j) + (σ_j² + (μ_j − 1)²)/8 − ½],
    exactly; SGVB-A with 50 samples agrees within 4 standard errors over 200 draws."""
    base, x = model_and_batch
    model = VAE(base.encoder, base.decoder, ShiftedPrior(3))
    q = model.posterior(x)
    mu, sigma = q.mean, q.stddev
    exact = (torch.log(2 / sigma) + (sigma**2 + (mu - 1) ** 2) / 8 - 0.5).sum(-1).mean()
    with torch.no_grad():
        assert SGVBB()(model, x).kl.item() == pytest.approx(exact.item(), rel=1e-12)
        torch.manual_seed(5)
        kl_a = torch.stack([SGVBA(num_samples=50)(model, x).kl for _ in range(200)])
    assert abs(kl_a.mean() - exact) < 4 * kl_a.std() / math.sqrt(len(kl_a))


@pytest.mark.parametrize("prior", ["mixture", "vamp"])
def test_both_estimators_train_with_priors_that_have_no_closed_form_kl(prior):
    """A mixture or VampPrior prior: SGVB-A and B take the Monte Carlo KL (B's is then A's),
    both give finite losses whose gradients reach the prior's parameters; free bits, which
    need a per-dimension KL, are refused."""
    torch.manual_seed(0)
    model = mlp((12,), 3, (16,), prior=prior, prior_components=4).double()
    x = torch.bernoulli(torch.full((20, 12), 0.4, dtype=torch.float64))
    for objective in (SGVBA(2), SGVBB(2)):
        objective.prepare(model, x)
        assert not objective.kl_rule.analytic
        model.zero_grad()
        terms = objective(model, x)
        terms.loss.backward()
        assert torch.isfinite(terms.loss) and terms.kl_per_dim is None
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.prior.parameters())
    torch.manual_seed(3)
    a = SGVBA(2)(model, x)
    torch.manual_seed(3)
    b = SGVBB(2)(model, x)
    torch.testing.assert_close(a.elbo, b.elbo)
    with pytest.raises(ConfigError, match="free bits need a KL that splits"):
        SGVBB(free_bits=0.5).prepare(model, x)
