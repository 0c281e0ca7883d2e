"""The VampPrior's density and the Monte Carlo KL through it, against a computation by hand."""

import math

import torch

from aevb.builders import mlp
from aevb.kl import KLRule
from aevb.objectives import latent_samples


def _log_normal(z, mu, sd):
    return (-0.5 * math.log(2 * math.pi) - sd.log() - 0.5 * ((z - mu) / sd) ** 2).sum(-1)


def _model():
    torch.manual_seed(0)
    model = mlp(
        data_shape=(1, 4, 4), latent_dim=3, hidden=(8,), prior="vamp", prior_components=5
    ).double()
    with torch.no_grad():  # components apart from each other
        model.prior.pseudo_inputs.uniform_(0, 1)
    x = torch.bernoulli(torch.full((3, 1, 4, 4), 0.3, dtype=torch.float64))
    return model, x


def _by_hand(model, z):
    """log (1/K) Σ_k N(z; μ(u_k), σ²(u_k)) from the encoder network's raw outputs."""
    out = model.encoder.network(model.prior.pseudo_inputs)
    loc, log_variance = out.chunk(2, dim=-1)
    per_component = _log_normal(z.unsqueeze(-2), loc, (0.5 * log_variance).exp())
    return torch.logsumexp(per_component, -1) - math.log(len(loc))


def test_vamp_log_density_is_the_mixture_of_encoder_posteriors():
    model, _ = _model()
    z = torch.randn(4, 2, 3, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model.prior().log_prob(z), _by_hand(model, z))


def test_monte_carlo_kl_through_the_vamp_mixture_matches_an_independent_estimate():
    model, x = _model()
    with torch.no_grad():
        q = model.posterior(x)
        rule = KLRule.decide(q, model.prior())
        assert not rule.analytic and not rule.per_dimension
        torch.manual_seed(1)
        samples = latent_samples(model, x, 100_000)
        library = rule.estimate(samples.posterior, samples.prior, samples.z).total
        mu, sd = q.base_dist.loc, q.base_dist.scale
        torch.manual_seed(2)
        z = mu + sd * torch.randn(100_000, *mu.shape, dtype=torch.float64)
        log_ratio = _log_normal(z, mu, sd) - _by_hand(model, z)
        independent = log_ratio.mean(0)
        error = 4 * log_ratio.std(0) / math.sqrt(100_000) * math.sqrt(2)
    assert torch.all((library - independent).abs() < error), (library, independent, error)
