"""Flow posteriors (planar, IAF): log-determinants against autograd, densities that integrate
to one, inverses, and the importance-sampled log-likelihood against the ELBO."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aevb.builders import mlp
from aevb.cli import main
from aevb.distributions import MOMENT_SAMPLES
from aevb.errors import ConfigError
from aevb.evaluation import count_active_units, evaluate
from aevb.flows import PLANAR_MIN_SLOPE, FlowPosterior, IAFPosterior, PlanarPosterior
from aevb.objectives import SGVBB, ScoreFunction, WakeSleep
from aevb.runs import TrainConfig, load_run, train

QUICK = ["--latent-dim", "4", "--hidden", "32", "--batch-size", "64", "--no-progress"]


def _head(kind: str, latent_dim: int, steps: int = 3) -> torch.nn.Module:
    if kind == "planar":
        return PlanarPosterior(latent_dim, steps)
    head = IAFPosterior(latent_dim, steps, hidden=16)
    # Away from the identity that a fresh MADE starts near, so the test sees real maps.
    with torch.no_grad():
        for parameter in head.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    return head


def _posterior(kind: str, latent_dim: int, batch: int, seed: int = 0) -> FlowPosterior:
    """A float64 flow posterior with random (but fixed) per-example parameters."""
    torch.manual_seed(seed)
    head = _head(kind, latent_dim).double().requires_grad_(False)
    parameters = torch.randn(batch, *head.parameter_shape, dtype=torch.float64)
    parameters[:, latent_dim : 2 * latent_dim] = -1.0  # σ ≈ 0.6
    return head(parameters)


@pytest.mark.parametrize("kind", ["planar", "iaf"])
def test_log_determinant_matches_autograds_jacobian(kind):
    """log q(z) = log N(z₀) − log|det ∂z/∂z₀|, with the Jacobian of the whole flow from
    autograd in float64 (agreement to 1e-10)."""
    posterior = _posterior(kind, latent_dim=3, batch=4)
    z0 = posterior.base.sample((2,))  # (2, 4, 3)
    _, log_q = posterior.push(z0)
    for draw in range(2):
        for row in range(4):

            def flow(point, draw=draw, row=row):
                points = z0[draw].clone()
                points[row] = point
                return posterior.push(points)[0][row]

            jacobian = torch.autograd.functional.jacobian(flow, z0[draw, row])
            sign, log_det = torch.linalg.slogdet(jacobian)
            assert sign > 0
            expected = posterior.base.log_prob(z0[draw])[row] - log_det
            assert log_q[draw, row].item() == pytest.approx(expected.item(), abs=1e-10)


@pytest.mark.parametrize("kind", ["planar", "iaf"])
def test_log_prob_inverts_the_flow(kind):
    """The density of any z (by inverting the maps) equals the one returned with the draw,
    and the inverse recovers z₀ (float64, to 1e-9)."""
    posterior = _posterior(kind, latent_dim=5, batch=6, seed=1)
    z, log_q = posterior.rsample_and_log_prob((3,))
    torch.testing.assert_close(posterior.log_prob(z), log_q, atol=1e-9, rtol=0)


@pytest.mark.parametrize("kind", ["planar", "iaf"])
def test_a_two_dimensional_flow_density_integrates_to_one(kind):
    """q(z) of a 2-D flow, by inversion on a 1001² grid over a box holding all but a
    negligible part of the mass, sums to 1 (midpoint rule; tolerance 2e-3 covers the grid
    error and the mass outside the box, both measured below 1e-4)."""
    posterior = _posterior(kind, latent_dim=2, batch=1, seed=2)
    draws, _ = posterior.rsample_and_log_prob((20_000,))
    low = draws.min(0).values.min(0).values - 3.0
    high = draws.max(0).values.max(0).values + 3.0
    n = 1001
    axes = [
        torch.linspace(float(lo), float(hi), n, dtype=torch.float64)
        for lo, hi in zip(low, high, strict=True)
    ]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 1, 2)
    with torch.no_grad():
        density = posterior.log_prob(grid).exp()
    cell = math.prod(float((hi - lo) / (n - 1)) for lo, hi in zip(low, high, strict=True))
    assert float(density.sum()) * cell == pytest.approx(1.0, abs=2e-3)


@settings(max_examples=50, deadline=None)
@given(
    u=st.lists(st.floats(-50, 50), min_size=3, max_size=3),
    w=st.lists(st.floats(-50, 50), min_size=3, max_size=3),
    b=st.floats(-50, 50),
)
def test_planar_flows_stay_invertible_for_any_parameters(u, w, b):
    """Whatever the encoder outputs (hypothesis found wᵀu = −36, where the paper's m(a) =
    −1 + softplus(a) rounds to −1), wᵀû > −1, so f is invertible and log|det| finite, and the
    inverse recovers z₀."""
    head = PlanarPosterior(3, 1).double()
    parameters = torch.tensor([[0.0, 0.0, 0.0, -2.0, -2.0, -2.0, *u, *w, b]], dtype=torch.float64)
    posterior = head(parameters)
    (step,) = posterior.steps
    assert float(step.wu) >= -1 + PLANAR_MIN_SLOPE / 2
    z0 = posterior.base.sample((4,))
    z, log_q = posterior.push(z0)
    assert torch.isfinite(log_q).all()
    torch.testing.assert_close(step.inverse(z), z0, atol=1e-7, rtol=1e-7)


@pytest.mark.parametrize("kind", ["planar", "iaf"])
def test_identity_flows_give_the_diagonal_gaussian(kind):
    """Steps that do nothing (planar u = 0; IAF with its last layer zeroed: shift 0, scale 1)
    leave q(z|x) the base Gaussian: same draws' densities."""
    torch.manual_seed(3)
    head = _head(kind, 4).double()
    parameters = torch.randn(5, *head.parameter_shape, dtype=torch.float64)
    if kind == "planar":
        parameters[:, 8:].view(5, 3, 9)[:, :, :4] = 0.0  # u = 0
    else:
        for made in head.made:
            torch.nn.init.zeros_(made.hyper[-1].weight)
            torch.nn.init.zeros_(made.hyper[-1].bias)
    posterior = head(parameters)
    if kind == "planar":
        # u = 0 is mapped to û = (m(0) − 0) w/‖w‖² ≠ 0: the planar identity needs w = 0 too.
        parameters[:, 8:].view(5, 3, 9)[:, :, 4:] = 0.0
        posterior = head(parameters)
    z, log_q = posterior.rsample_and_log_prob((7,))
    torch.testing.assert_close(log_q, posterior.base.log_prob(z), atol=1e-12, rtol=0)


@pytest.mark.parametrize("kind", ["planar", "iaf"])
def test_importance_sampled_log_likelihood_is_above_the_elbo(digits, kind):
    """After training on digits, log p̂(x) (k = 1000) ≥ L_50 ≥ ELBO, as the bounds say
    (measured gaps 1–3 nats; each estimate's Monte Carlo error is below 0.05 nats)."""
    torch.manual_seed(0)
    model = mlp((64,), latent_dim=4, hidden=(64,), posterior=kind, flow_steps=2)
    x = (torch.from_numpy(digits.train).reshape(len(digits.train), -1)[:300] > 0.5).float()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    objective = SGVBB()
    for _ in range(150):
        optimiser.zero_grad()
        objective(model, x).loss.backward()
        optimiser.step()
    result = evaluate(model, x, importance_samples=1000, iwae_samples=50)
    assert result.log_likelihood_se < 0.05
    assert result.log_likelihood >= result.iwae_bound >= result.elbo
    assert result.kl_estimator == "Monte Carlo"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"posterior": "iaf", "prior": "vamp"}, "VampPrior"),
        ({"posterior": "planar", "objective": "autoencoder"}, "autoencoder"),
        ({"posterior": "iaf", "free_bits": 0.1}, "free bits need a diagonal"),
        ({"flow_steps": 3}, "flow_steps and flow_hidden apply"),
        ({"posterior": "planar", "flow_hidden": 8}, "flow_hidden applies"),
    ],
)
def test_settings_that_do_not_fit_a_flow_are_refused(settings, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(dataset="digits", **settings).check()


@pytest.mark.parametrize("kind", ["iaf", "planar"])
def test_flow_runs_train_resume_and_evaluate_from_the_cli(tmp_path, capsys, kind):
    """``--posterior iaf|planar --flow-steps K`` end to end: train, resume, evaluate with the
    same importance sampler; the run records the flow and reloads it."""
    run = tmp_path / "run"
    args = ["--epochs", "2", "--posterior", kind, "--flow-steps", "3", *QUICK]
    assert main(["train", *args, "--out", str(run)]) == 0
    assert main(["train", "--resume", str(run), "--epochs", "3", "--no-progress"]) == 0
    loaded = load_run(run)
    assert loaded.config.posterior == kind and loaded.config.flow_steps == 3
    assert loaded.model.encoder.head.steps == 3
    capsys.readouterr()
    assert (
        main(["evaluate", str(run), "--importance-samples", "50", "--json", "--no-progress"]) == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert np.isfinite(result["log_likelihood"]) and result["log_likelihood"] > result["elbo"]
    assert result["kl_estimator"] == "Monte Carlo"


def test_a_flow_run_through_the_api_matches_its_settings(quick_config, tmp_path):
    config = TrainConfig(**{**quick_config.__dict__, "posterior": "planar", "epochs": 1})
    summary = train(config, tmp_path / "run", progress=False)
    assert np.isfinite(summary["test_elbo"])


def test_a_flow_posteriors_mean_is_repeatable_and_leaves_the_random_stream_alone():
    """Embeddings (``transform``) of a flow posterior are its Monte Carlo mean from draws with
    their own seeded generator: the same on every call, and the global stream untouched."""
    from aevb.sklearn import VAEEstimator as Estimator

    X = np.random.default_rng(0).normal(size=(200, 5))
    estimator = Estimator(posterior="planar", epochs=2, random_state=0).fit(X)
    state = torch.random.get_rng_state()
    first = estimator.transform(X[:10])
    assert torch.equal(torch.random.get_rng_state(), state)
    np.testing.assert_array_equal(first, estimator.transform(X[:10]))


@pytest.mark.parametrize("kind", ["planar", "iaf"])
@pytest.mark.parametrize("objective", [ScoreFunction(2, baseline="mean"), WakeSleep()])
def test_objectives_that_need_the_density_of_other_points_train_flows(kind, objective):
    """The score function (log q at draws held fixed) and wake-sleep (log q at dreams) need
    log q(z|x) away from the posterior's own draws, i.e. through the inverse: the encoder's
    gradient is finite and reaches the flow's parameters (the planar inverse gets its
    gradient from the implicit-function step)."""
    torch.manual_seed(5)
    model = mlp((64,), latent_dim=3, hidden=(16,), posterior=kind, flow_steps=2)
    x = (torch.rand(20, 64) > 0.5).float()
    objective(model, x).loss.backward()
    gradients = [p.grad for p in model.encoder.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in gradients)
    assert sum(float(g.abs().sum()) for g in gradients) > 0
    # IAF's MADEs are the head's own parameters; planar flows' (u, w, b) are the network's
    # outputs after μ and log σ², made by the last layer's rows from 2·latent_dim on.
    if kind == "iaf":
        flow_gradients = [p.grad for p in model.encoder.head.parameters()]
    else:
        flow_gradients = [model.encoder.network.layers[-1].weight.grad[6:]]
    assert all(float(g.abs().sum()) > 0 for g in flow_gradients)


def test_active_units_discount_the_noise_of_monte_carlo_means():
    """A flow posterior's mean is a 64-draw estimate: a collapsed unit (σ = 1 for every x)
    shows a spread of about 1/64 > 0.01 across x and would count as active. With the estimate's
    own variance taken off, only the unit whose mean varies is counted."""
    head = PlanarPosterior(4, 1)
    parameters = torch.zeros(500, *head.parameter_shape)
    parameters[:, 0] = torch.linspace(-2, 2, 500)  # unit 0 moves with x; log σ² = 0, u = w = 0
    posterior = head(parameters)
    assert count_active_units(posterior.mean) > 1
    noise = posterior.variance / MOMENT_SAMPLES
    assert count_active_units(posterior.mean, mean_error_variance=noise) == 1
