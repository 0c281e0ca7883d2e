"""Likelihoods for 8-bit images: the discretised logistic mixture and the 256-way categorical.

Each is a distribution over the levels k/255: the tests check that the 256 probabilities sum
to one, the mixture's against scipy's logistic CDF, the exact means, and the data checks."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from aevb import heads
from aevb.builders import mlp
from aevb.cli import main
from aevb.data import load_dataset
from aevb.data.transforms import choose_transforms
from aevb.distributions import LEVELS, DiscretizedLogisticMixture, EightBitCategorical
from aevb.errors import ConfigError, DataError
from aevb.evaluation import evaluate
from aevb.runs import TrainConfig, train

GRID = torch.arange(LEVELS, dtype=torch.float64) / (LEVELS - 1)
QUICK = ["--latent-dim", "4", "--hidden", "32", "--batch-size", "32", "--no-progress"]


def _mixture(logits, loc, log_scale) -> DiscretizedLogisticMixture:
    """A float64 mixture from nested lists or arrays of parameters (..., K)."""
    values = (torch.from_numpy(np.asarray(v, dtype=np.float64)) for v in (logits, loc, log_scale))
    return DiscretizedLogisticMixture(*values)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(-20, 20), st.floats(-2, 3), st.floats(-8.5, 3)),
        min_size=1,
        max_size=4,
    )
)
def test_the_logistic_mixture_sums_to_one_over_the_256_levels(components):
    """For any parameters — scales from a twentieth of a level to e³, locations outside
    [0, 1] — the 256 probabilities sum to one (float64, 1e-9)."""
    logits, loc, log_scale = (list(values) for values in zip(*components, strict=True))
    mixture = _mixture([logits], [loc], [log_scale])
    log_p = mixture.log_prob(GRID.unsqueeze(-1))
    assert torch.isfinite(log_p).all()
    assert float(torch.logsumexp(log_p, 0)) == pytest.approx(0.0, abs=1e-9)


def test_the_logistic_mixture_matches_scipys_logistic_cdf():
    """Each level's probability is the mixture of the logistics' CDF differences over its
    bin [k/255 ± 1/510], the end levels taking the tails (scipy, float64, 1e-10)."""
    rng = np.random.default_rng(0)
    logits, loc, log_scale = rng.normal(size=3), rng.uniform(0, 1, 3), rng.uniform(-5, -1, 3)
    mixture = _mixture([logits], [loc], [log_scale])
    ours = mixture.log_prob(GRID.unsqueeze(-1)).exp().squeeze(-1).numpy()
    weights = np.exp(logits) / np.exp(logits).sum()
    edges = np.concatenate(([-np.inf], (np.arange(255) + 0.5) / 255, [np.inf]))
    cdf = stats.logistic.cdf(edges[:, None], loc=loc, scale=np.exp(log_scale))
    expected = (np.diff(cdf, axis=0) * weights).sum(1)
    np.testing.assert_allclose(ours, expected, rtol=1e-10, atol=1e-300)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-30, 30), min_size=LEVELS, max_size=LEVELS))
def test_the_categorical_sums_to_one_over_the_256_levels(logits):
    categorical = EightBitCategorical(torch.tensor([logits], dtype=torch.float64))
    log_p = categorical.log_prob(GRID.unsqueeze(-1))
    assert float(torch.logsumexp(log_p, 0)) == pytest.approx(0.0, abs=1e-9)


def test_means_are_exact():
    """The means are Σ_k (k/255) P(k/255) over the levels (float64, 1e-12)."""
    torch.manual_seed(0)
    mixture = DiscretizedLogisticMixture(
        torch.randn(5, 3, dtype=torch.float64),
        torch.rand(5, 3, dtype=torch.float64) * 1.4 - 0.2,
        torch.randn(5, 3, dtype=torch.float64) - 3,
    )
    categorical = EightBitCategorical(torch.randn(5, LEVELS, dtype=torch.float64))
    for distribution in (mixture, categorical):
        probabilities = distribution.log_prob(GRID.unsqueeze(-1).expand(LEVELS, 5)).exp()
        expected = (probabilities * GRID.unsqueeze(-1)).sum(0)
        torch.testing.assert_close(distribution.mean, expected, atol=1e-12, rtol=0)


def test_draws_are_levels_with_the_models_frequencies():
    """Draws land on the grid and follow the distribution: with 20,000 draws, the largest gap
    between the empirical and the exact CDF stays below 2.1/√n = 0.015 (the Kolmogorov
    bound at level 10⁻³, conservative for discrete laws), and the draws' mean is within 4
    standard errors of the exact mean."""
    torch.manual_seed(1)
    n = 20_000
    mixture = _mixture([[0.0, 1.0]], [[0.3, 0.7]], [[-3.0, -4.0]])
    categorical = EightBitCategorical(torch.randn(1, LEVELS, dtype=torch.float64))
    for distribution in (mixture, categorical):
        draws = distribution.sample((n,)).squeeze(-1)
        levels = draws * 255
        assert torch.equal(levels, levels.round())
        counts = torch.bincount(levels.round().long(), minlength=LEVELS).double() / n
        probabilities = distribution.log_prob(GRID.unsqueeze(-1)).exp().squeeze(-1)
        gap = (counts.cumsum(0) - probabilities.cumsum(0)).abs().max()
        assert float(gap) < 2.1 / n**0.5
        standard_error = float(draws.std()) / n**0.5
        assert abs(float(draws.mean() - distribution.mean)) < 4 * standard_error


@pytest.mark.parametrize("head", [heads.DiscretizedLogisticMixture, heads.EightBitCategorical])
def test_image_heads_give_one_distribution_per_image(head):
    """A head over (C, H, W) images: batch shape the leading dimensions, event the image, and
    each pixel's distribution summing to one."""
    part = head((2, 3, 4))
    parameters = torch.randn(5, 7, *part.parameter_shape)
    likelihood = part(parameters)
    assert likelihood.batch_shape == (5, 7) and likelihood.event_shape == (2, 3, 4)
    x = torch.randint(0, LEVELS, (7, 2, 3, 4)) / 255.0
    assert likelihood.log_prob(x).shape == (5, 7)


def test_data_that_are_not_8_bit_are_refused():
    """8×8 digits have 17 levels, not 256: training refuses them with the reason; so does
    evaluation of values off the grid, and binarization under an 8-bit likelihood."""
    digits = np.arange(17, dtype=np.float32).repeat(4).reshape(-1, 4) / 16
    with pytest.raises(DataError, match="256 levels"):
        choose_transforms(
            digits, "digits", False, False, False, None, None, eight_bit_likelihood=True
        )
    levels = np.arange(256, dtype=np.float32).reshape(-1, 4) / 255
    with pytest.raises(ConfigError, match="do not apply"):
        choose_transforms(
            levels, "x", False, False, False, "dynamic", None, eight_bit_likelihood=True
        )
    model = mlp((4,), latent_dim=2, hidden=(8,), likelihood="categorical")
    with pytest.raises(DataError, match="8-bit levels"):
        evaluate(model, torch.full((3, 4), 0.5), importance_samples=2)
    with pytest.raises(ConfigError, match="likelihood_components"):
        TrainConfig(dataset="mnist", likelihood="categorical", likelihood_components=3).check()


@pytest.mark.parametrize("likelihood", ["logistic-mixture", "categorical"])
def test_8_bit_images_train_and_evaluate_in_bits_per_dimension(tmp_path, capsys, likelihood):
    """An 8-bit image file end to end: nothing binarized or standardised, and ``evaluate``'s
    bits per dimension are −log p̂(x) / (D log 2) of the discrete probabilities."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(120, 1, 8, 8)).astype(np.float32) / 255
    np.save(tmp_path / "images.npy", images)
    run = tmp_path / "run"
    args = ["train", "--dataset", str(tmp_path / "images.npy"), "--likelihood", likelihood]
    assert main([*args, "--epochs", "2", *QUICK, "--out", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["binarize"] == "none" and not config["train"]["standardize"]
    assert config["data"]["transforms"] == []
    capsys.readouterr()
    evaluated = ["evaluate", str(run), "--importance-samples", "20", "--json", "--no-progress"]
    assert main(evaluated) == 0
    result = json.loads(capsys.readouterr().out)
    expected = -result["log_likelihood"] / (64 * np.log(2))
    assert result["bits_per_dim"] == pytest.approx(expected, rel=1e-12)
    # Uniform noise: no model beats 8 bits per dimension by much on held-out rows.
    assert 7.5 < result["bits_per_dim"] < 12


def test_mnist_in_its_256_levels(data_dir, tmp_path):
    """Real data: MNIST's grey levels (not binarized) under the logistic mixture, one short
    epoch on 2,000 images; the test ELBO in bits per dimension lands between zero and a
    uniform model's 8 bits."""
    full = load_dataset("mnist", data_dir=str(data_dir))
    subset = dataclasses.replace(
        full,
        train=full.train[:2000],
        val=full.val[:200],
        test=full.test[:500],
        train_labels=None,
        val_labels=None,
        test_labels=None,
    )
    config = TrainConfig(
        dataset="mnist", likelihood="logistic-mixture", latent_dim=8, hidden=(64,), epochs=1
    )
    summary = train(config, tmp_path / "run", dataset=subset, progress=False)
    bits = -summary["test_elbo"] / (784 * np.log(2))
    assert 0.5 < bits < 8
