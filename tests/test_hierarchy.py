"""Two stochastic layers: the densities against closed forms (a linear-Gaussian hierarchy,
whose every marginal is Gaussian), the importance-sampled log p(x) against the exact one, and
the model through training, IWAE, evaluation per layer and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import stats

from aevb.builders import mlp
from aevb.cli import main
from aevb.errors import ConfigError
from aevb.evaluation import evaluate
from aevb.objectives import IWAE
from aevb.runs import TrainConfig, load_run

QUICK = ["--latent-dim", "4", "--hidden", "32", "--batch-size", "64", "--no-progress"]


def _linear_hierarchy(seed: int = 0, data_dim: int = 3, d1: int = 2, d2: int = 1):
    """A float64 two-layer model with linear networks and constant variances: x = W z₁ + b +
    σ ε, z₁ = A z₂ + a + s ε', z₂ ~ N(0, I) — Gaussian all through. Returns the model and
    the matrices of p(z₁|z₂) and p(x|z₁)."""
    torch.manual_seed(seed)
    model = mlp(
        (data_dim,),
        latent_dim=d1,
        hidden=(),
        likelihood="gaussian",
        likelihood_std=0.5,
        top_latent_dim=d2,
        top_hidden=(),
    ).double()
    with torch.no_grad():
        for layer in (model.prior.downward.layers[-1], model.encoder.head.upward.layers[-1]):
            half = layer.out_features // 2
            layer.weight[half:] = 0.0  # log-variances that do not depend on the input
            layer.bias[half:] = torch.randn(half, dtype=torch.float64) * 0.3 - 0.5
    down = model.prior.downward.layers[-1]
    A, a = down.weight[:d1].detach(), down.bias[:d1].detach()
    s2 = down.bias[d1:].detach().exp()
    decoder = model.decoder.network[-1].layers[-1]
    W, b = decoder.weight.detach(), decoder.bias.detach()
    return model, (A, a, s2), (W, b, 0.25)


def test_the_prior_is_the_closed_form_gaussian():
    """log p(z₁, z₂) = log N((z₁, z₂); 0-mean joint with Cov(z₁) = AAᵀ + diag s²,
    Cov(z₁, z₂) = A), from scipy, to 1e-10; and ancestral draws have that covariance."""
    model, (A, a, s2), _ = _linear_hierarchy()
    covariance_z1 = A @ A.T + torch.diag(s2)
    joint_cov = torch.block_diag(covariance_z1, torch.eye(1, dtype=torch.float64))
    joint_cov[:2, 2:] = A
    joint_cov[2:, :2] = A.T
    mean = torch.cat((a, torch.zeros(1, dtype=torch.float64)))
    prior = model.prior()
    z = torch.randn(50, 3, dtype=torch.float64)
    expected = stats.multivariate_normal(mean.numpy(), joint_cov.numpy()).logpdf(z.numpy())
    np.testing.assert_allclose(prior.log_prob(z).detach().numpy(), expected, rtol=0, atol=1e-10)
    draws = prior.sample((200_000,))
    # Covariance entries of order 1 from 2·10⁵ draws: standard errors about 3e-3.
    np.testing.assert_allclose(np.cov(draws.numpy().T), joint_cov.numpy(), atol=0.02)


def test_the_posterior_density_matches_an_independent_computation():
    """log q(z₁, z₂|x) = log N(z₁; μ₁(x), σ₁²(x)) + log N(z₂; μ₂(z₁), σ₂²(z₁)), each term from
    scipy on the networks' outputs (float64, 1e-10); draws carry the same density."""
    model, _, _ = _linear_hierarchy(seed=1)
    x = torch.randn(4, 3, dtype=torch.float64)
    posterior = model.posterior(x)
    z, log_q = posterior.rsample_and_log_prob((5,))
    torch.testing.assert_close(posterior.log_prob(z), log_q, atol=1e-10, rtol=0)
    with torch.no_grad():
        loc1, log_var1 = (v.numpy() for v in model.encoder.network(x).chunk(2, -1))
        z1, z2 = z[..., :2], z[..., 2:]
        loc2, log_var2 = (v.numpy() for v in model.encoder.head.upward(z1).chunk(2, -1))
    bottom = stats.norm.logpdf(z1.detach().numpy(), loc1, np.exp(0.5 * log_var1)).sum(-1)
    top = stats.norm.logpdf(z2.detach().numpy(), loc2, np.exp(0.5 * log_var2)).sum(-1)
    expected = bottom + top
    np.testing.assert_allclose(log_q.detach().numpy(), expected, rtol=0, atol=1e-10)


def test_importance_sampled_log_likelihood_reaches_the_exact_one():
    """For the linear-Gaussian hierarchy p(x) = N(x; W a + b, W (AAᵀ + diag s²) Wᵀ + σ² I):
    the importance-sampled log p̂(x) (k = 20,000, the model's own encoder as proposal) is
    within 4 of its reported standard errors (plus 0.01 nats of bias) of the exact value."""
    model, (A, a, s2), (W, b, variance) = _linear_hierarchy(seed=2)
    x = torch.randn(6, 3, dtype=torch.float64)
    covariance = W @ (A @ A.T + torch.diag(s2)) @ W.T + variance * torch.eye(3, dtype=torch.float64)
    exact = stats.multivariate_normal((W @ a + b).numpy(), covariance.numpy()).logpdf(x.numpy())
    result = evaluate(model, x, importance_samples=20_000, iwae_samples=1, float64=True)
    assert result.log_likelihood == pytest.approx(
        exact.mean(), abs=4 * result.log_likelihood_se + 0.01
    )
    assert result.elbo < result.log_likelihood


def test_iwae_trains_both_layers_and_evaluation_counts_units_per_layer(digits):
    """IWAE (k = 5) on digits improves the bound and moves every network, q(z₂|z₁) and
    p(z₁|z₂) included; the evaluation reports active units per layer."""
    torch.manual_seed(0)
    model = mlp((64,), latent_dim=6, hidden=(64,), top_latent_dim=3, top_hidden=(16,))
    x = (torch.from_numpy(digits.train).reshape(len(digits.train), -1)[:400] > 0.5).float()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    objective = IWAE(5)
    start = objective(model, x).bound.item()
    for _ in range(100):
        optimiser.zero_grad()
        objective(model, x).loss.backward()
        optimiser.step()
    assert objective(model, x).bound.item() > start + 5
    for name, parameter in model.named_parameters():
        assert not torch.equal(parameter, before[name]), name
    result = evaluate(model, x, importance_samples=100)
    assert result.active_units_per_layer is not None
    assert len(result.active_units_per_layer) == 2
    assert sum(result.active_units_per_layer) == result.active_units


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"top_latent_dim": 2, "posterior": "full"}, "own posterior"),
        ({"top_latent_dim": 2, "prior": "mixture"}, "own prior"),
        ({"top_latent_dim": 2, "free_bits": 0.1}, "free bits"),
        ({"top_latent_dim": 2, "objective": "wake-sleep"}, "second layer"),
        ({"top_hidden": (8,)}, "top_hidden applies"),
    ],
)
def test_settings_that_do_not_fit_two_layers_are_refused(settings, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(dataset="digits", **settings)


def test_two_layer_runs_train_resume_and_evaluate_from_the_cli(tmp_path, capsys):
    run = tmp_path / "run"
    layers = ["--top-latent-dim", "2", "--top-hidden", "8", "8"]
    assert main(["train", "--epochs", "2", *layers, *QUICK, "--out", str(run)]) == 0
    assert main(["train", "--resume", str(run), "--epochs", "3", "--no-progress"]) == 0
    loaded = load_run(run)
    assert loaded.model.latent_dim == 6 and loaded.config.top_hidden == (8, 8)
    capsys.readouterr()
    evaluated = ["evaluate", str(run), "--importance-samples", "50", "--no-progress"]
    assert main(evaluated) == 0
    assert "(by layer: " in capsys.readouterr().out
    assert main([*evaluated, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["log_likelihood"] > result["elbo"] and result["kl_estimator"] == "Monte Carlo"


# ---------------------------------------------------------------------------- the ladder
def test_precision_weighting_is_the_normalised_product_of_the_two_gaussians():
    from aevb.distributions import diagonal_gaussian
    from aevb.hierarchy import precision_weighted

    generator = torch.Generator().manual_seed(0)
    shape = (5, 3)
    mu_hat, mu_p, z = (torch.randn(shape, generator=generator, dtype=torch.float64) for _ in "abc")
    lv_hat, lv_p = (torch.randn(shape, generator=generator, dtype=torch.float64) for _ in "ab")
    merged = precision_weighted(diagonal_gaussian(mu_hat, lv_hat), diagonal_gaussian(mu_p, lv_p))
    s_hat, s_p = (0.5 * lv_hat).exp().numpy(), (0.5 * lv_p).exp().numpy()
    z, mu_hat, mu_p = z.numpy(), mu_hat.numpy(), mu_p.numpy()
    product = (
        stats.norm.logpdf(z, mu_hat, s_hat)
        + stats.norm.logpdf(z, mu_p, s_p)
        - stats.norm.logpdf(mu_hat, mu_p, np.sqrt(s_hat**2 + s_p**2))
    ).sum(-1)
    log_q = merged.log_prob(torch.from_numpy(z)).numpy()
    np.testing.assert_allclose(log_q, product, rtol=0, atol=1e-12)


def _ladder_model(w=1.7, b=0.3, sigma=0.5, a=0.8, s1=0.6):
    """A float64 ladder model, every part linear: z₂ ~ N(0, 1), z₁|z₂ ~ N(a z₂, s₁²),
    x|z₁ ~ N(w z₁ + b, σ²), with the exact posterior: the encoder's estimate of z₁ is the
    likelihood's N((x − b)/w, σ²/w²), so its merge with p(z₁|z₂) is p(z₁|z₂, x), and q(z₂|x)
    is p(z₂|x). Returns the model and the exact marginal N(x; b, w²(a² + s₁²) + σ²)."""
    model = mlp(
        (1,),
        latent_dim=1,
        hidden=(),
        likelihood="gaussian",
        likelihood_std=sigma,
        top_latent_dim=1,
        top_hidden=(),
        ladder=True,
    ).double()
    c, v = w * a, w**2 * s1**2 + sigma**2  # x|z₂ ~ N(c z₂ + b, v)
    with torch.no_grad():
        encoder = model.encoder.network.layers[0]
        encoder.weight.copy_(torch.tensor([[1 / w], [0.0]], dtype=torch.float64))
        encoder.bias.copy_(torch.tensor([-b / w, np.log(sigma**2 / w**2)], dtype=torch.float64))
        upward = model.encoder.head.upward.layers[0]  # (μ̂₁, log σ̂₁²) → q(z₂|x)
        upward.weight.copy_(
            torch.tensor([[c * w / (v + c**2), 0.0], [0.0, 0.0]], dtype=torch.float64)
        )
        upward.bias.copy_(torch.tensor([0.0, -np.log(1 + c**2 / v)], dtype=torch.float64))
        downward = model.prior.downward.layers[0]
        downward.weight.copy_(torch.tensor([[a], [0.0]], dtype=torch.float64))
        downward.bias.copy_(torch.tensor([0.0, np.log(s1**2)], dtype=torch.float64))
        decoder = model.decoder.network[1].layers[0]
        decoder.weight.copy_(torch.tensor([[w]], dtype=torch.float64))
        decoder.bias.copy_(torch.tensor([b], dtype=torch.float64))
    marginal = stats.norm(b, np.sqrt(w**2 * (a**2 + s1**2) + sigma**2))
    return model, marginal


def test_the_ladder_with_its_exact_posterior_gives_the_exact_log_likelihood():
    model, marginal = _ladder_model()
    x = torch.linspace(-3, 3, 13, dtype=torch.float64)[:, None]
    result = evaluate(model, x, importance_samples=50, float64=True)
    exact = marginal.logpdf(x.numpy()[:, 0]).mean()
    # Every importance weight is p(x): estimator A and the estimate are exact.
    assert result.log_likelihood == pytest.approx(exact, abs=1e-9)
    assert result.elbo_a == pytest.approx(exact, abs=1e-9)
    assert result.active_units_per_layer is not None


def test_the_ladder_density_integrates_to_one_and_matches_its_draws():
    torch.manual_seed(0)
    model = mlp((3,), latent_dim=1, hidden=(4,), top_latent_dim=1, top_hidden=(4,), ladder=True)
    model = model.double()
    x = torch.tensor([[1.0, 0.0, 1.0]], dtype=torch.float64)
    posterior = model.posterior(x)
    grid = torch.linspace(-9, 9, 721, dtype=torch.float64)
    z1, z2 = torch.meshgrid(grid, grid, indexing="ij")
    points = torch.stack((z1, z2), -1).reshape(-1, 1, 2)
    step = float(grid[1] - grid[0])
    total = posterior.log_prob(points).exp().sum().item() * step**2
    assert total == pytest.approx(1.0, abs=1e-6)
    draws, log_q = posterior.rsample_and_log_prob((200,))
    torch.testing.assert_close(log_q, posterior.log_prob(draws), atol=1e-12, rtol=0)


def test_the_ladder_shares_the_priors_network_and_trains_from_the_cli(tmp_path, capsys):
    model = mlp((4,), latent_dim=3, hidden=(8,), top_latent_dim=2, top_hidden=(5,), ladder=True)
    names = [name for name, _ in model.named_parameters()]
    assert sum("downward" in name for name in names) == 4  # once: the prior's (two layers)
    with pytest.raises(ConfigError, match="give top_latent_dim"):
        TrainConfig(ladder=True)
    run = tmp_path / "ladder"
    args = ["train", "--top-latent-dim", "2", "--ladder", "--epochs", "2", "--out", str(run)]
    assert main([*args, *QUICK]) == 0
    capsys.readouterr()
    assert (
        main(["evaluate", str(run), "--importance-samples", "20", "--json", "--no-progress"]) == 0
    )
    values = json.loads(capsys.readouterr().out)
    assert values["log_likelihood"] > values["elbo"]
    assert len(values["active_units_per_layer"]) == 2
