"""The mixture-of-Gaussians example: exact log p(x), the ELBO/KL identity, EM as ascent."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import norm

EXAMPLE = Path(__file__).parents[1] / "examples" / "mixture_of_gaussians.py"


def load_example():
    spec = importlib.util.spec_from_file_location("mixture_of_gaussians_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


mog = load_example()
TRUE = (mog.TRUE_WEIGHTS, mog.TRUE_MEANS, mog.TRUE_STDS)


def draw(seed: int, num_points: int = mog.NUM_POINTS) -> np.ndarray:
    x, _ = mog.sample_mixture(num_points, *TRUE, np.random.default_rng(seed))
    return x


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return draw(0)


@pytest.fixture(scope="module")
def fit(x):
    return mog.em_fit(x, num_components=3, iterations=100, seed=0)


def variational_choices(x: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "posterior": mog.posterior(x, *TRUE),
        "prior": mog.prior_q(len(x), mog.TRUE_WEIGHTS),
        "hard": mog.hard_q(x, mog.TRUE_MEANS, 0.05),
    }


def test_shapes_and_normalisation(x):
    assert x.dtype == np.float64 and x.shape == (mog.NUM_POINTS,)
    assert mog.log_joint(x, *TRUE).shape == (len(x), 3)
    for q in variational_choices(x).values():
        assert q.shape == (len(x), 3)
        np.testing.assert_allclose(q.sum(axis=1), 1.0, rtol=0, atol=1e-12)


def test_exact_log_likelihood_matches_linear_space_sum():
    points = np.array([-3.5, -2.0, -0.7, 0.0, 0.5, 1.7, 3.0, 4.5])
    direct = np.log(sum(w * norm.pdf(points, m, s) for w, m, s in zip(*TRUE, strict=True)))
    np.testing.assert_allclose(mog.exact_log_likelihood(points, *TRUE), direct, rtol=1e-13)

    rng = np.random.default_rng(1)
    weights = rng.dirichlet(np.ones(5))
    means, stds = rng.normal(0, 3, 5), rng.uniform(0.3, 2.0, 5)
    points = rng.normal(0, 4, 50)
    direct = np.log((weights * norm.pdf(points[:, None], means, stds)).sum(axis=1))
    np.testing.assert_allclose(
        mog.exact_log_likelihood(points, weights, means, stds), direct, rtol=1e-12
    )


def test_log_space_survives_where_linear_space_underflows():
    far = np.array([60.0])
    assert (mog.TRUE_WEIGHTS * norm.pdf(far[:, None], mog.TRUE_MEANS, mog.TRUE_STDS)).sum() == 0
    value = mog.exact_log_likelihood(far, *TRUE)[0]
    # Dominated by the component nearest in standardised distance (μ = 0.5, σ = 0.8); the
    # others are smaller by thousands of nats.
    expected = np.log(0.5) + norm.logpdf(60.0, 0.5, 0.8)
    assert np.isfinite(value) and value == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("choice", ["posterior", "prior", "hard"])
def test_log_likelihood_is_elbo_plus_kl(x, choice):
    q = variational_choices(x)[choice]
    log_px = mog.exact_log_likelihood(x, *TRUE)
    bound = mog.elbo(x, q, *TRUE)
    kl = mog.kl_to_posterior(x, q, *TRUE)
    assert np.abs(log_px - (bound + kl)).max() < 1e-10
    assert kl.min() > -1e-12


def test_elbo_with_exact_posterior_is_log_likelihood(x):
    q = mog.posterior(x, *TRUE)
    log_px = mog.exact_log_likelihood(x, *TRUE)
    assert np.abs(mog.elbo(x, q, *TRUE) - log_px).max() < 1e-10
    assert np.abs(mog.kl_to_posterior(x, q, *TRUE)).max() < 1e-10


@pytest.mark.parametrize("choice", ["prior", "hard"])
def test_elbo_of_other_q_is_below_log_likelihood(x, choice):
    q = variational_choices(x)[choice]
    log_px = mog.exact_log_likelihood(x, *TRUE)
    bound = mog.elbo(x, q, *TRUE)
    assert np.all(bound < log_px)
    assert bound.mean() < log_px.mean() - 0.1


def test_zero_probability_terms_contribute_nothing(x):
    one_hot = np.eye(3)[np.argmax(mog.posterior(x, *TRUE), axis=1)]
    joint = mog.log_joint(x, *TRUE)
    np.testing.assert_allclose(mog.elbo(x, one_hot, *TRUE), joint.max(axis=1), rtol=1e-14)
    log_px = mog.exact_log_likelihood(x, *TRUE)
    kl = mog.kl_to_posterior(x, one_hot, *TRUE)
    assert np.isfinite(kl).all()
    assert np.abs(log_px - mog.elbo(x, one_hot, *TRUE) - kl).max() < 1e-10


def test_em_is_monotone_and_the_elbo_is_sandwiched(fit):
    log_px, bound = fit.log_likelihood, fit.elbo
    assert log_px.shape == (101,) and bound.shape == (100,)
    assert np.diff(log_px).min() >= -1e-9  # EM never lowers log p(x)
    assert np.all(bound <= log_px[1:] + 1e-9)  # ELBO(q_{t-1}, θ_t) ≤ log p(x; θ_t)
    assert np.all(bound >= log_px[:-1] - 1e-9)  # the M-step raised the tight bound
    assert log_px[-1] > log_px[0] + 0.1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_em_recovers_the_true_parameters(seed):
    x = draw(seed)
    fit = mog.em_fit(x, num_components=3, iterations=100, seed=seed)
    weights, means, stds = mog.sort_by_mean(fit.weights, fit.means, fit.stds)

    # The maximum-likelihood fit is at least as likely as the parameters that made the data.
    fitted = mog.exact_log_likelihood(x, weights, means, stds).mean()
    assert fitted >= mog.exact_log_likelihood(x, *TRUE).mean()

    # Loose: 4 standard errors of a mean from N λ_n points with spread σ_n.
    num_points = len(x)
    tolerance = 4 * mog.TRUE_STDS / np.sqrt(num_points * mog.TRUE_WEIGHTS)
    assert np.all(np.abs(means - mog.TRUE_MEANS) < tolerance)

    # Every parameter within 4 standard errors from the observed-data information (which
    # include the uncertainty from not seeing z; over 300 seeds the largest |error|/SE was 3.5).
    for estimate, truth, se in zip(
        (weights, means, stds), TRUE, mog.standard_errors(x, weights, means, stds), strict=True
    ):
        assert np.all(np.abs(estimate - truth) < 4 * se)


def test_observed_standard_errors_exceed_complete_data_ones(x, fit):
    weights, means, stds = mog.sort_by_mean(fit.weights, fit.means, fit.stds)
    observed = mog.standard_errors(x, weights, means, stds)
    complete = mog.complete_data_standard_errors(len(x), weights, stds)
    for obs, comp in zip(observed, complete, strict=True):
        assert np.all(obs > 0.9 * comp) and np.all(obs < 3 * comp)


def test_main_writes_the_figure_and_summary(tmp_path, capsys):
    assert mog.main(["--out", str(tmp_path)]) == 0
    figure = tmp_path / "mixture_of_gaussians.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (tmp_path / "summary.md").read_text(encoding="utf-8")
    assert "exact posterior" in summary and "| component |" in summary
    assert summary in capsys.readouterr().out
