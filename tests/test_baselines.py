"""The paper's baselines and its marginal-likelihood estimator, against closed forms.

The linear-Gaussian VAE of :mod:`test_exactness` has an exact Gaussian posterior and an exact
log p(x), so HMC, Monte Carlo EM, wake-sleep and the HMC-proposal estimator are each checked
against an exact value. Every Monte Carlo comparison fixes its seed; tolerances are stated.
"""

from __future__ import annotations

import math

import pytest
import torch
from test_exactness import (
    DTYPE,
    digits_case,
    exact_posterior,
    linear_gaussian_vae,
    ppca_log_likelihood,
    random_case,
)

from aevb.builders import mlp
from aevb.data import TensorLoader
from aevb.errors import ConfigError
from aevb.evaluation import evaluate, hmc_proposal
from aevb.experiments.presets import PRESETS, preset_config
from aevb.hmc import HMC, log_joint
from aevb.mcem import MonteCarloEM
from aevb.objectives import SGVBB, WakeSleep, make_objective
from aevb.train import Trainer

pytestmark = pytest.mark.usefixtures("single_thread")


def test_hmc_draws_the_exact_posterior_at_the_target_acceptance():
    """2000 independent chains per datapoint, 60 adapted then 20 frozen transitions.

    The last states are 2000 independent draws; their mean is within 4 standard errors
    (σ/√2000) of the exact posterior mean, and their variance within 4 standard errors
    (σ²·√(2/1999)) of the exact variance, in every coordinate of five datapoints. The
    adapted acceptance rate is 0.9 ± 0.03.
    """
    case = random_case()
    model = linear_gaussian_vae(case.W, case.b, case.sigma)
    x = case.x[:5]
    torch.manual_seed(0)
    chains = 2000
    density = log_joint(model, x)
    sampler = HMC(num_leapfrog=10, target_accept=0.9)
    state = sampler.start(density, torch.randn(chains, 5, 3, dtype=DTYPE))
    step_size = torch.full((chains, 5), 0.1, dtype=DTYPE)
    for t in range(80):
        state, accept_prob, _ = sampler.transition(density, state, step_size, adapt=t < 60)
        if t == 59:
            adapted_rate = accept_prob.mean().item()
    mean, covariance = exact_posterior(x, case.W, case.b, case.sigma)
    variance = covariance.diagonal()
    assert (state.z.mean(0) - mean).abs().le(4 * (variance / chains).sqrt()).all()
    variance_se = variance * math.sqrt(2 / (chains - 1))
    assert (state.z.var(0) - variance).abs().le(4 * variance_se).all()
    assert abs(adapted_rate - 0.9) < 0.03


@pytest.mark.parametrize("make_case", [random_case, digits_case], ids=["random", "digits-ppca"])
def test_hmc_proposal_estimates_the_exact_log_likelihood(make_case):
    """Importance sampling from the HMC-fitted proposal (no encoder involved), k = 1000, on
    100 rows: the mean log p̂(x) is within 4 of its reported standard errors of the exact
    PPCA log-likelihood (measured: 1.6 and 0.2 s.e.)."""
    case = make_case()
    model = linear_gaussian_vae(case.W, case.b, case.sigma)
    x = case.x[:100]
    result = evaluate(model, x, 1000, proposal=hmc_proposal(), float64=True, seed=0)
    exact = case.exact[:100].mean().item()
    assert abs(result.log_likelihood - exact) < 4 * result.log_likelihood_se
    assert result.elbo < exact  # the ELBO of the fitted proposal is a bound


def test_wake_sleep_fits_the_posterior_by_moment_matching():
    """With the decoder fixed, the sleep phase minimises KL(p(z|x) ‖ q(z|x)) over dreams, so
    a diagonal q takes the posterior's *marginal* variances Σ_jj — not the ELBO's optimum
    1/Λ_jj (between 0.22 and 0.43 of Σ_jj here), which AEVB finds (test_exactness).

    1200 Adam steps on 100 dreams each leave the variances within 30% of Σ_jj (measured
    ratios 1.17, 1.04, 1.07; the fit is still converging) and the means within 0.1 of the
    posterior means (posterior standard deviations 0.26–0.35).
    """
    case = random_case()
    torch.manual_seed(0)
    model = linear_gaussian_vae(case.W, case.b, case.sigma)
    optimizer = torch.optim.Adam(model.encoder.parameters(), lr=0.02)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, [600, 1000], 0.1)
    objective = WakeSleep()
    for _ in range(1200):
        optimizer.zero_grad()
        objective(model, case.x).loss.backward()
        optimizer.step()
        schedule.step()
    mean, covariance = exact_posterior(case.x, case.W, case.b, case.sigma)
    q = model.posterior(case.x)
    ratio = q.variance.mean(0) / covariance.diagonal()
    assert ((ratio > 0.8) & (ratio < 1.3)).all(), ratio
    assert (q.mean - mean).abs().max() < 0.1


def test_wake_sleep_routes_each_phase_to_its_own_networks():
    """The wake term moves only the decoder and the sleep term only the encoder; the
    reported ELBO is estimator B's on the same networks."""
    torch.manual_seed(0)
    model = mlp((12,), latent_dim=2, hidden=(8,))
    x = torch.bernoulli(torch.full((16, 12), 0.3))
    torch.manual_seed(1)
    terms = WakeSleep()(model, x)
    terms.loss.backward()
    decoder_wake = [p.grad.clone() for p in model.decoder.parameters()]
    encoder_sleep = [p.grad.clone() for p in model.encoder.parameters()]
    model.zero_grad()
    torch.manual_seed(1)  # the same z ~ q(z|x), then the same dream
    z = model.posterior(x).sample()
    (-model.likelihood(z).log_prob(x).mean()).backward()
    assert all(p.grad is None or not p.grad.any() for p in model.encoder.parameters())
    for expected, p in zip(decoder_wake, model.decoder.parameters(), strict=True):
        torch.testing.assert_close(p.grad, expected)
    model.zero_grad()
    with torch.no_grad():
        z_dream = model.prior().sample((16,))
        x_dream = model.likelihood(z_dream).sample()
    (-model.posterior(x_dream).log_prob(z_dream).mean()).backward()
    assert all(p.grad is None or not p.grad.any() for p in model.decoder.parameters())
    for expected, p in zip(encoder_sleep, model.encoder.parameters(), strict=True):
        torch.testing.assert_close(p.grad, expected)
    torch.manual_seed(1)
    reference = SGVBB()(model, x)
    torch.testing.assert_close(terms.kl, reference.kl)
    with pytest.raises(ConfigError):
        make_objective("wake-sleep", free_bits=1.0)


def test_monte_carlo_em_climbs_to_the_maximum_likelihood():
    """MCEM through the Trainer on a linear-Gaussian decoder (σ fixed): the exact
    log-likelihood rises from about −70 to within 0.5 nats of the closed-form maximum
    (−11.40) in 150 epochs of 4 steps, and the HMC acceptance rate, averaged over the last 50
    epochs' records, adapts to 0.9 ± 0.05."""
    case = random_case()
    torch.manual_seed(0)
    model = mlp((10,), 3, hidden=(), likelihood="gaussian", likelihood_std=case.sigma).double()
    (layer,) = model.decoder.network.layers

    def exact() -> float:
        weight, bias = layer.weight.detach(), layer.bias.detach()
        return ppca_log_likelihood(case.x, weight, bias, case.sigma).mean().item()

    centred = case.x - case.x.mean(0)
    eigenvalues, eigenvectors = torch.linalg.eigh(centred.T @ centred / len(case.x))
    top, vectors = eigenvalues.flip(0)[:3], eigenvectors.flip(1)[:, :3]
    weight_ml = vectors * (top - case.sigma**2).clamp(min=0).sqrt()
    maximum = ppca_log_likelihood(case.x, weight_ml, case.x.mean(0), case.sigma).mean().item()
    initial = exact()
    objective = MonteCarloEM()
    optimizer = torch.optim.Adagrad(objective.trainable_parameters(model), lr=0.05)
    loader = TensorLoader(case.x, 25, shuffle=False)
    state = Trainer(model, objective, loader, optimizer).fit(150)
    assert initial < maximum - 40
    assert maximum - 0.5 < exact() <= maximum + 1e-6
    acceptance = [record["acceptance_rate"] for record in state.history[100:]]
    assert abs(sum(acceptance) / len(acceptance) - 0.9) < 0.05
    assert set(state.history[-1]) >= {"train_reconstruction", "acceptance_rate"}


def test_paper_presets():
    """The paper's §5 set-up, with the N(0, I) parameter prior as weight decay 1/N."""
    config = preset_config("paper-mnist", 60000, latent_dim=3)
    assert (config.hidden, config.activation, config.init) == ((500,), "tanh", "paper")
    assert (config.optimizer, config.batch_size, config.samples) == ("adagrad", 100, 1)
    assert config.lr in (0.01, 0.02, 0.1)
    assert config.weight_decay == pytest.approx(1 / 60000)
    assert config.latent_dim == 3 and config.val_fraction == 0.0
    frey = preset_config("paper-frey", 1769, lr=0.01)
    assert frey.hidden == (200,) and frey.likelihood == "gaussian-learned" and frey.squash_mean
    assert frey.lr == 0.01 and frey.weight_decay == pytest.approx(1 / 1769)
    assert set(PRESETS) == {"paper-mnist", "paper-frey"}
    with pytest.raises(ConfigError, match="unknown preset"):
        preset_config("paper-cifar", 100)
    with pytest.raises(ConfigError, match="unknown training settings"):
        preset_config("paper-mnist", 100, learning_rate=0.1)
    model = mlp((784,), 3, (500,), init="paper")
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert weights.std().item() == pytest.approx(0.01, rel=0.01)
