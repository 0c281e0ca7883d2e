"""Importance-weight diagnostics: the effective sample size and PSIS's Pareto k̂, against
ArviZ, against samples of known tail shape, and on models whose weights' tails are known in
closed form; through ``evaluate``, a sharded evaluation and ``aevb evaluate``."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from torch import Tensor, nn
from torch.distributions import Independent

import aevb.evaluation
from aevb.builders import mlp
from aevb.cli import main
from aevb.data.loaders import shard_of
from aevb.distributions import diagonal_gaussian
from aevb.evaluation import (
    PARETO_K_THRESHOLD,
    ExampleDiagnostics,
    evaluate,
    importance_diagnostics,
    pareto_k,
    pareto_tail_size,
)
from aevb.models import VAE

QUICK = ["--latent-dim", "4", "--hidden", "32", "--batch-size", "64", "--no-progress"]

# z ~ N(0, I₂), x|z ~ N(Wz, σ²I₄) with W = a [I₂; 0]: the posterior is N(m(x), s²I₂) with
# s² = σ²/(σ² + a²) and m(x) = a x₁,₂/(σ² + a²).
LATENT, DATA, NOISE, LOADING = 2, 4, 0.5, 1.5
POSTERIOR_VARIANCE = NOISE**2 / (NOISE**2 + LOADING**2)


class ScaledPosterior(nn.Module):
    """q(z|x) = N(m(x), (c s)² I₂): the exact posterior scaled by c = ``scale``.

    Under q, u = |z − m|²/(c s)² ~ χ²₂, and log w = log p(x) + log p(z|x) − log q(z|x) =
    const + (1 − c²) u/2: u/2 is Exp(1), so for c < 1 the weights are exactly Pareto with
    shape ξ = 1 − c² beyond their minimum; for c > 1 they are bounded (near their maximum w
    has a GPD tail of shape −2/L = −1); for c = 1 they are constant, p(x)."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, x: Tensor) -> Independent:
        mean = LOADING * x[:, :LATENT] / (NOISE**2 + LOADING**2)
        log_variance = math.log(self.scale**2 * POSTERIOR_VARIANCE)
        return diagonal_gaussian(mean, torch.full_like(mean, log_variance))


def gaussian_model(scale: float) -> VAE:
    """The linear-Gaussian model above (float32) with the encoder :class:`ScaledPosterior`."""
    model = mlp((DATA,), LATENT, hidden=(), likelihood="gaussian", likelihood_std=NOISE)
    (layer,) = model.decoder.network.layers
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[:LATENT] = LOADING * torch.eye(LATENT)
        layer.bias.zero_()
    model.encoder = ScaledPosterior(scale)
    return model


def gaussian_data(rows: int = 100) -> Tensor:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(rows, LATENT, generator=g)
    return z @ (LOADING * torch.eye(LATENT, DATA)) + NOISE * torch.randn(rows, DATA, generator=g)


def fitted_shape_sd(shape: float, tail: int) -> float:
    """Standard deviation of k̂ fitted to ``tail`` GPD draws of shape ξ: the MLE's asymptotic
    (1 + ξ)/√n, times the prior's shrinkage n/(n + 10)."""
    return (1 + shape) / math.sqrt(tail) * tail / (tail + 10)


def with_prior(shape: float, tail: int) -> float:
    """What k̂ estimates for true shape ξ: PSIS's prior pulls it to (n ξ + 10 · 0.5)/(n + 10)."""
    return (tail * shape + 5) / (tail + 10)


def test_pareto_k_matches_arviz():
    """Against ArviZ's ``psislw`` (its per-row numpy loop) on the same float64 log-weights: a
    range of tails (bounded to very heavy), tail sizes at the edges of ⌈min(k/5, 3√k)⌉, and
    a column rounded to quarters: ties at the cutoff, left out of the fit by both (22 of them
    at k = 1000), and too few weights above it to fit at k = 21 (+inf in both)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ArviZ announces its refactor on import
        arviz = pytest.importorskip("arviz")
    g = torch.Generator().manual_seed(0)
    for k in (21, 35, 100, 1000, 5000):
        u = torch.randn(k, 60, generator=g, dtype=torch.float64) ** 2
        log_weights = 0.5 * u * torch.linspace(-1, 0.95, 60, dtype=torch.float64) + 3
        log_weights[:, 0] = (log_weights[:, -1] * 4).round() / 4  # ties
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, expected = arviz.psislw(log_weights.T.numpy().copy())
        assert torch.isfinite(torch.from_numpy(expected[1:])).all()
        torch.testing.assert_close(
            pareto_k(log_weights), torch.from_numpy(expected), atol=1e-9, rtol=0
        )


@pytest.mark.parametrize("shape", [0.3, 0.8])
def test_pareto_k_recovers_a_generalized_pareto_shape(shape):
    """400 columns of k = 10⁴ draws from a GPD of shape ξ (threshold stability: the tail over
    any cutoff is a GPD of the same ξ). The mean k̂ is within 4 standard errors of ξ with the
    prior's pull, the standard error from the asymptotic sd (1 + ξ)/√M of the fit; and the
    spread of k̂ over columns is that sd within 4 of its own standard errors (1/√(2·399))."""
    k, columns = 10_000, 400
    g = torch.Generator().manual_seed(1)
    uniform = torch.rand(k, columns, generator=g, dtype=torch.float64)
    draws = (uniform.pow(-shape) - 1) / shape  # inverse CDF of GPD(ξ, σ = 1)
    k_hat = pareto_k(draws.log())
    tail = pareto_tail_size(k)
    sd = fitted_shape_sd(shape, tail)
    assert abs(float(k_hat.mean()) - with_prior(shape, tail)) < 4 * sd / math.sqrt(columns)
    assert abs(float(k_hat.std()) / sd - 1) < 4 / math.sqrt(2 * (columns - 1))


def test_pareto_k_special_values():
    """−inf for a constant tail (equal up to float32 rounding too); +inf where there is
    nothing to fit: all weights 0, or one weight above many tied ones; k < 21 refused."""
    log_weights = torch.zeros(100, 4)
    log_weights[:, 1] = -50 + 4e-6 * (torch.arange(100) % 3)  # three levels, an ulp apart
    log_weights[:, 2] = -math.inf
    log_weights[0, 3] = 5.0  # one weight e⁵ times the other 99 (equal)
    assert pareto_k(log_weights).tolist() == [-math.inf, -math.inf, math.inf, math.inf]
    with pytest.raises(ValueError, match="at least 21"):
        pareto_k(torch.zeros(20, 3))


def test_a_narrow_proposal_is_flagged():
    """Encoder scale c = 0.5: Pareto weights of shape 1 − c² = 0.75 > 0.7. Over 100 rows with
    k = 2000 draws (M = 135 tail draws) the mean k̂ is within 4 standard errors of 0.75 with
    the prior's pull, and ``evaluate`` flags the estimate (about half the rows above 0.7)."""
    model, x, k = gaussian_model(0.5), gaussian_data(), 2000
    rows = importance_diagnostics(model, x, k, seed=3)
    tail = pareto_tail_size(k)
    shape = 1 - 0.5**2
    assert abs(float(rows.pareto_k.mean()) - with_prior(shape, tail)) < 4 * fitted_shape_sd(
        shape, tail
    ) / math.sqrt(len(x))
    assert ((rows.effective_sample_size >= 1) & (rows.effective_sample_size <= k)).all()
    result = evaluate(model, x, k, seed=3)
    diagnostics = result.importance_diagnostics
    assert diagnostics == rows.summary()  # the same draws, one code path
    assert diagnostics.pareto_k_share_above > 0.25 and not diagnostics.reliable
    assert diagnostics.pareto_k_threshold == PARETO_K_THRESHOLD == 0.7
    assert diagnostics.tail_samples == tail == 135


@pytest.mark.parametrize("float64", [False, True])
def test_the_exact_posterior_gives_constant_weights(float64):
    """Encoder = posterior: every weight is p(x) up to float32 rounding, so ESS = k and every
    tail is constant (k̂ = −inf), which JSON holds as the string "-inf" — also when the
    float32 log-weights are accumulated in float64 (the rounding is float32's)."""
    result = evaluate(gaussian_model(1.0), gaussian_data(), 500, float64=float64)
    diagnostics = result.importance_diagnostics
    assert diagnostics.ess_min > 0.9999 * 500 and diagnostics.ess_median_fraction > 0.9999
    assert diagnostics.pareto_k_max == -math.inf and diagnostics.reliable
    assert diagnostics.pareto_k_share_above == 0
    written = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert written["importance_diagnostics"]["pareto_k_max"] == "-inf"


def test_a_wider_proposal_is_not_flagged():
    """Encoder scale c = 1.5: bounded weights (limit shape −1). Every row's k̂ is below 0.5,
    which lies about 20 standard deviations of k̂ (0.07 at M = 135) above their mean, −0.86."""
    result = evaluate(gaussian_model(1.5), gaussian_data(), 2000)
    diagnostics = result.importance_diagnostics
    assert diagnostics.pareto_k_max < 0.5 and diagnostics.reliable
    assert 0.5 < diagnostics.ess_median_fraction < 1


def test_too_few_draws_give_no_diagnostics():
    """k < 21 leaves M < 5 tail draws: no diagnostics (None), and the per-row call refuses."""
    model, x = gaussian_model(0.5), gaussian_data(10)
    assert evaluate(model, x, 20).importance_diagnostics is None
    assert evaluate(model, x, 20).to_dict()["importance_diagnostics"] is None
    assert evaluate(model, x, 21).importance_diagnostics.tail_samples == 5
    with pytest.raises(ValueError, match="at least 21"):
        importance_diagnostics(model, x, 20)


class _TwoProcesses:
    """A data-parallel run of two processes played in turn in this one, for ``evaluate``'s
    ``parallel``: each call's ``gather`` returns both processes' values, in rank order,
    those not yet computed replaced by the caller's own."""

    active, world = True, 2

    def __init__(self) -> None:
        self.rank, self.parts = 0, {}

    def gather(self, value):
        self.parts[self.rank] = value
        return [self.parts.get(rank, value) for rank in range(self.world)]


def test_sharded_evaluation_combines_the_rows_diagnostics_exactly():
    """Each process scores its shard with seed + rank; the per-row ESS and k̂ travel with the
    sums, so the combined summary is that of all the rows' values (medians do not combine
    from the parts' summaries)."""
    model, x, k = gaussian_model(0.6), gaussian_data(41), 200
    parallel = _TwoProcesses()
    parallel.rank = 1
    evaluate(model, x, k, seed=5, parallel=parallel)
    parallel.rank = 0
    combined = evaluate(model, x, k, seed=5, parallel=parallel).importance_diagnostics
    parts = [importance_diagnostics(model, x[shard_of(len(x), r, 2)], k, 5 + r) for r in (0, 1)]
    assert combined == ExampleDiagnostics.cat(parts).summary()


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("diagnostics") / "run"
    assert main(["train", "--epochs", "1", "--out", str(run_dir), *QUICK]) == 0
    return run_dir


def test_cli_evaluate_reports_the_diagnostics(digits_run, capsys):
    """``--json`` holds the diagnostics; the table shows ESS and k̂ (median, worst, share)."""
    capsys.readouterr()
    args = ["evaluate", str(digits_run), "--importance-samples", "100", "--no-progress"]
    assert main([*args, "--json"]) == 0
    written = json.loads(capsys.readouterr().out)["importance_diagnostics"]
    assert written["tail_samples"] == 20 and written["pareto_k_threshold"] == 0.7
    assert 1 <= written["ess_min"] <= written["ess_median"] <= 100
    assert main(args) == 0
    table = capsys.readouterr().out
    assert f"median {written['ess_median']:.1f} ({written['ess_median_fraction']:.1%} of k)" in (
        table
    )
    assert (
        f"worst {written['pareto_k_max']:.2f}; {written['pareto_k_share_above']:.1%} of the "
        "examples above 0.7" in table
    )


@pytest.mark.parametrize("share", [-1.0, 1.0])
def test_cli_evaluate_warns_when_the_estimate_is_unreliable(digits_run, capsys, monkeypatch, share):
    """One stderr line, exactly when the share of k̂ above 0.7 exceeds the tolerated share
    (set here to below any share, then to above every one)."""
    monkeypatch.setattr(aevb.evaluation, "UNRELIABLE_SHARE", share)
    args = ["evaluate", str(digits_run), "--importance-samples", "30", "--no-progress"]
    capsys.readouterr()
    assert main(args) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "Pareto" in line]
    if share < 0:
        assert len(lines) == 1 and "More importance samples" in lines[0]
        assert "--posterior: full" in lines[0] and "hmc_proposal" in lines[0]
    else:
        assert lines == []


def test_pareto_k_does_not_depend_on_the_level_of_the_weights():
    """Shifting every log-weight by a constant (log p(x) of another scale) leaves k̂ as it was,
    up to float32 rounding of the shifted values: weights w = U^(−0.9), a Pareto tail of shape
    0.9, at log-levels 0, −100 and −7000 (|log w| of 8-bit colour images)."""
    g = torch.Generator().manual_seed(0)
    log_weights = -0.9 * torch.rand(2000, 50, generator=g, dtype=torch.float64).log()
    at_zero = pareto_k(log_weights.float())
    for level in (-100.0, -7000.0):
        shifted = pareto_k((log_weights + level).float())
        assert torch.isfinite(shifted).all()
        assert (shifted - at_zero).abs().max() < 0.05
