"""The model as a composition: shapes across architectures (property tests), heads, priors,
custom parts, and model factories saved as import paths."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.distributions import Independent, MixtureSameFamily, Normal

from aevb import heads
from aevb.builders import LIKELIHOODS, ModelSpec, conv, mlp, model_factory
from aevb.errors import ConfigError
from aevb.heads import MIN_LIKELIHOOD_SCALE
from aevb.models import VAE, Decoder, Encoder
from aevb.objectives import SGVBA, SGVBB
from aevb.priors import MixtureOfGaussians, StandardNormal, VampPrior


@settings(max_examples=30, deadline=None)
@given(
    batch=st.integers(1, 9),
    data_shape=st.sampled_from([(1,), (7,), (12,), (1, 4, 4), (3, 2, 5)]),
    latent_dim=st.integers(1, 5),
    hidden=st.lists(st.integers(1, 16), min_size=0, max_size=3),
    likelihood=st.sampled_from(LIKELIHOODS),
    posterior=st.sampled_from(["diagonal", "full"]),
    prior=st.sampled_from(["standard", "mixture", "vamp"]),
    num_samples=st.integers(1, 3),
)
def test_shapes(batch, data_shape, latent_dim, hidden, likelihood, posterior, prior, num_samples):
    """Data keep their shape through the MLP: q over (latent_dim,), p(x|z) over data_shape,
    for any number of leading sample dimensions."""
    torch.manual_seed(0)
    components = None if prior == "standard" else 3
    model = mlp(
        data_shape,
        latent_dim,
        tuple(hidden),
        likelihood=likelihood,
        posterior=posterior,
        prior=prior,
        prior_components=components,
    )
    x = torch.rand(batch, *data_shape).round()
    q = model.posterior(x)
    assert q.batch_shape == (batch,) and q.event_shape == (latent_dim,)
    z = q.rsample((num_samples,))
    assert z.shape == (num_samples, batch, latent_dim)
    p = model.likelihood(z)
    assert p.batch_shape == (num_samples, batch) and p.event_shape == data_shape
    log_prob = p.log_prob(x)
    assert log_prob.shape == (num_samples, batch) and torch.isfinite(log_prob).all()
    assert model.sample(3).shape == (3, *data_shape)
    assert model.sample(2, mean=False).shape == (2, *data_shape)
    assert model.reconstruct(x).shape == (batch, *data_shape)
    assert model.prior().event_shape == (latent_dim,) and model.latent_dim == latent_dim


@pytest.mark.parametrize(
    ("data_shape", "likelihood"),
    [((1, 28, 28), "bernoulli"), ((3, 32, 32), "gaussian-learned"), ((1, 28, 20), "gaussian")],
)
def test_conv_builder_keeps_image_shapes(data_shape, likelihood):
    """28×28 grey, 32×32 colour and Frey Face's 28×20 images go through the conv pair
    unflattened; its gradients reach every parameter."""
    torch.manual_seed(0)
    model = conv(data_shape, latent_dim=4, channels=(8, 16), hidden=(32,), likelihood=likelihood)
    x = torch.rand(5, *data_shape)
    if likelihood == "bernoulli":
        x = x.round()
    assert model.likelihood(model.posterior(x).rsample((2,))).event_shape == data_shape
    assert model.sample(3).shape == (3, *data_shape)
    SGVBB()(model, x).loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_conv_builder_refuses_sizes_it_cannot_halve():
    with pytest.raises(ConfigError, match="multiples of 4"):
        conv((1, 30, 30))
    with pytest.raises(ConfigError, match=r"\(C, H, W\) images"):
        conv((64,))


def test_encode_and_decode_are_posterior_and_likelihood():
    assert VAE.encode is VAE.posterior and VAE.decode is VAE.likelihood


def test_learned_gaussian_scale_has_a_floor_and_squashed_mean():
    model = mlp((6,), 2, (4,), likelihood="gaussian-learned", squash_mean=True)
    with torch.no_grad():
        model.decoder.network.layers[-1].bias.fill_(-1e4)  # drive every raw output far negative
    likelihood = model.likelihood(torch.zeros(3, 2))
    assert (likelihood.base_dist.scale >= MIN_LIKELIHOOD_SCALE).all()
    assert ((likelihood.mean >= 0) & (likelihood.mean <= 1)).all()


def test_learned_gaussian_head_splits_along_the_first_event_axis():
    """Means are the first C channels, raw scales the next C, for images and vectors alike."""
    head = heads.LearnedGaussian((2, 3, 4))
    parameters = torch.arange(2 * 2 * 3 * 4, dtype=torch.float32).reshape(1, 4, 3, 4)
    likelihood = head(parameters)
    torch.testing.assert_close(likelihood.mean, parameters[:, :2])
    assert head.parameter_shape == (4, 3, 4) and likelihood.event_shape == (2, 3, 4)


def test_fixed_gaussian_scale():
    model = mlp((6,), 2, (4,), likelihood="gaussian", likelihood_std=0.25)
    scale = model.likelihood(torch.zeros(3, 2)).base_dist.scale
    assert torch.equal(scale, torch.full((3, 6), 0.25))


def test_paper_initialisation_scale():
    torch.manual_seed(0)
    model = mlp((784,), 20, (500,), init="paper")
    weight = model.encoder.network.layers[0].weight
    assert abs(weight.std().item() - 0.01) < 0.0005  # 392k draws: std of the std ≈ 1e-5
    assert abs(weight.mean().item()) < 0.0005


class TinyConv(nn.Module):
    """A user's own network: it sees exactly one batch dimension."""

    def __init__(self, out_features: int):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 6 * 6, out_features)
        )

    def forward(self, x):
        assert x.dim() == 4
        return self.layers(x)


def test_custom_networks_plug_in_with_heads():
    """Any network plus a head is an encoder; the decoder's network sees (N, latent_dim) even
    when the objective draws several samples per row."""
    torch.manual_seed(0)
    seen = []

    class Recording(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(3, 36)

        def forward(self, z):
            seen.append(z.dim())
            return self.linear(z).reshape(-1, 1, 6, 6)

    encoder = Encoder(TinyConv(6), heads.DiagonalGaussian(3), (1, 6, 6))
    decoder = Decoder(Recording(), heads.Bernoulli((1, 6, 6)), 3)
    model = VAE(encoder, decoder, StandardNormal(3))
    x = torch.rand(7, 1, 6, 6).round()
    terms = SGVBA(num_samples=4)(model, x)
    terms.loss.backward()
    assert set(seen) == {2} and torch.isfinite(terms.loss)
    with pytest.raises(ValueError, match=r"expects inputs of shape \(\.\.\., 1, 6, 6\)"):
        model.posterior(torch.zeros(7, 36))


def test_priors_are_modules_returning_distributions():
    torch.manual_seed(0)
    assert isinstance(StandardNormal(3)(), Independent)
    mixture = MixtureOfGaussians(3, 5)()
    assert isinstance(mixture, MixtureSameFamily) and mixture.event_shape == (3,)
    assert sum(p.numel() for p in MixtureOfGaussians(3, 5).parameters()) == 5 + 15 + 15


def test_vamp_prior_is_the_encoders_mixture_at_its_pseudo_inputs():
    """p(z) = (1/K) Σ_k q(z|u_k): its density at z equals the mean of the encoder's densities
    at the pseudo-inputs, computed directly (float64). Its encoder is the model's own, not a
    copy: the state holds the encoder's weights once, and the pseudo-inputs."""
    torch.manual_seed(0)
    model = mlp((5,), 2, (8,), prior="vamp", prior_components=4).double()
    assert isinstance(model.prior, VampPrior) and model.prior.encoder is model.encoder
    z = torch.randn(6, 2, dtype=torch.float64)
    components = model.encoder(model.prior.pseudo_inputs)
    direct = torch.logsumexp(components.log_prob(z[:, None]), 1) - torch.log(
        torch.tensor(4.0, dtype=torch.float64)
    )
    torch.testing.assert_close(model.prior().log_prob(z), direct, rtol=1e-12, atol=1e-12)
    names = list(model.state_dict())
    assert "prior.pseudo_inputs" in names
    assert sum(n.startswith("encoder.") for n in names) == 4  # two layers, once


@model_factory
def tiny_factory(latent_dim: int = 2) -> VAE:
    """A factory in a test module: importable by name."""
    return mlp((4,), latent_dim, (8,))


def not_a_factory(latent_dim: int = 2) -> VAE:
    return mlp((4,), latent_dim, (8,))


def test_model_spec_round_trips_through_json_and_rebuilds():
    spec = ModelSpec.of(tiny_factory, latent_dim=3)
    again = ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec and again.factory == "test_models:tiny_factory"
    assert again.build().latent_dim == 3
    built_in = ModelSpec.of(mlp, data_shape=(1, 8, 8), hidden=(16,))
    assert built_in.arguments["data_shape"] == [1, 8, 8]  # JSON values
    assert built_in.build().sample(1).shape == (1, 1, 8, 8)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (ModelSpec("no_such_module_xyz:build"), "cannot import the model factory"),
        (ModelSpec("os:system"), "is not a model factory"),
        (ModelSpec("test_models:not_a_factory"), "is not a model factory"),
        (ModelSpec("aevb.builders:mlp", {"data_shape": [4], "colour": 1}), "failed"),
        (ModelSpec("nocolon"), "is not 'package.module:function'"),
    ],
)
def test_bad_model_specs_get_one_clear_error(spec, message):
    """Only functions marked @model_factory are ever called: a run folder cannot name
    os.system."""
    with pytest.raises(ConfigError, match=message):
        spec.build()


def test_unmarked_functions_cannot_make_a_spec():
    with pytest.raises(ConfigError, match=r"decorate it with @aevb\.model_factory"):
        ModelSpec.of(not_a_factory)


@pytest.mark.parametrize(
    "bad",
    [
        {"latent_dim": 0},
        {"likelihood": "poisson"},
        {"activation": "swish!"},
        {"hidden": (0,)},
        {"init": "zeros"},
        {"posterior": "flow"},
        {"prior": "laplace"},
        {"prior_components": 3},
    ],
)
def test_invalid_builder_arguments_are_refused(bad):
    with pytest.raises((ConfigError, ValueError)):
        mlp(**{"data_shape": (4,), **bad})


def test_a_prior_over_matrices_is_refused():
    class MatrixPrior(nn.Module):
        def forward(self):
            return Independent(Normal(torch.zeros(2, 2), torch.ones(2, 2)), 2)

    model = mlp((4,), 2, (8,))
    with pytest.raises(ValueError, match="latent vectors"):
        VAE(model.encoder, model.decoder, MatrixPrior())
