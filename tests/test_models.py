"""Shapes and construction of the VAE, across architectures (property tests)."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aevb.errors import ConfigError
from aevb.models import LIKELIHOODS, MIN_LIKELIHOOD_SCALE, VAE, ModelConfig


@settings(max_examples=30, deadline=None)
@given(
    batch=st.integers(1, 9),
    data_dim=st.integers(1, 12),
    latent_dim=st.integers(1, 5),
    hidden=st.lists(st.integers(1, 16), min_size=0, max_size=3),
    likelihood=st.sampled_from(LIKELIHOODS),
    num_samples=st.integers(1, 3),
)
def test_shapes(batch, data_dim, latent_dim, hidden, likelihood, num_samples):
    torch.manual_seed(0)
    model = VAE(ModelConfig(data_dim, latent_dim, tuple(hidden), likelihood=likelihood))
    x = torch.rand(batch, data_dim).round()
    posterior = model.posterior(x)
    assert posterior.batch_shape == (batch,) and posterior.event_shape == (latent_dim,)
    z = posterior.rsample((num_samples,))
    assert z.shape == (num_samples, batch, latent_dim)
    likelihood_ = model.likelihood(z)
    assert likelihood_.batch_shape == (num_samples, batch)
    assert likelihood_.event_shape == (data_dim,)
    log_prob = likelihood_.log_prob(x)
    assert log_prob.shape == (num_samples, batch) and torch.isfinite(log_prob).all()
    assert model.sample(3).shape == (3, data_dim)
    assert model.sample(2, mean=False).shape == (2, data_dim)
    assert model.reconstruct(x).shape == (batch, data_dim)
    assert model.prior.event_shape == (latent_dim,)


def test_encode_and_decode_are_posterior_and_likelihood():
    assert VAE.encode is VAE.posterior and VAE.decode is VAE.likelihood


def test_learned_gaussian_scale_has_a_floor_and_squashed_mean():
    model = VAE(ModelConfig(6, 2, (4,), likelihood="gaussian-learned", squash_mean=True))
    with torch.no_grad():
        model.decoder.net[-1].bias.fill_(-1e4)  # drive every raw output far negative
    likelihood = model.likelihood(torch.zeros(3, 2))
    assert (likelihood.base_dist.scale >= MIN_LIKELIHOOD_SCALE).all()
    assert ((likelihood.mean >= 0) & (likelihood.mean <= 1)).all()


def test_fixed_gaussian_scale():
    model = VAE(ModelConfig(6, 2, (4,), likelihood="gaussian", likelihood_std=0.25))
    scale = model.likelihood(torch.zeros(3, 2)).base_dist.scale
    assert torch.equal(scale, torch.full((3, 6), 0.25))


def test_paper_initialisation_scale():
    torch.manual_seed(0)
    model = VAE(ModelConfig(784, 20, (500,), init="paper"))
    weight = model.encoder.net[0].weight
    assert abs(weight.std().item() - 0.01) < 0.0005  # 392k draws: std of the std ≈ 1e-5
    assert abs(weight.mean().item()) < 0.0005


def test_config_round_trips_through_json():
    config = ModelConfig(10, 3, (7, 5), activation="relu", likelihood="gaussian-learned")
    again = ModelConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config


@pytest.mark.parametrize(
    "bad",
    [
        {"latent_dim": 0},
        {"likelihood": "poisson"},
        {"activation": "swish!"},
        {"hidden": (0,)},
        {"init": "zeros"},
    ],
)
def test_invalid_config_is_refused(bad):
    with pytest.raises(ConfigError):
        ModelConfig(**{"data_dim": 4, **bad})
