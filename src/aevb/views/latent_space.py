"""The latent space of a trained run, as both views show it: posterior means of held-out rows,
their principal plane, the prior's quantiles, decoding z to data, and PNG data URIs.

Everything here takes a :class:`aevb.runs.Run` and returns data in the data's units
(``run.transforms.inverse``), on the CPU.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Independent, Normal

from aevb.conditional import bind, checked_labels, is_conditional
from aevb.distributions import MOMENT_SAMPLES, SampledPosterior
from aevb.errors import DataError
from aevb.evaluation import fixed_randomness, posterior_mean_spread
from aevb.runs import Run

__all__ = [
    "GRID_QUANTILES",
    "Codes",
    "PrincipalPlane",
    "data_uri",
    "decode",
    "encode_rows",
    "grid_over",
    "prior_quantiles",
    "test_labels",
]

# Rows encoded at a time.
ENCODE_BATCH = 1000
# Prior quantiles a decoded grid spans per axis (the paper's Fig. 4: 0.05 to 0.95).
GRID_QUANTILES = (0.05, 0.95)
# Prior draws behind the quantiles of a prior without a closed-form inverse CDF.
QUANTILE_DRAWS = 20_000


@dataclass(frozen=True)
class Codes:
    """Posterior means and standard deviations of q(z|x) of some rows: (N, latent_dim) each;
    ``mean_errors``: the variance (N, latent_dim) of each mean where it is a Monte Carlo
    estimate (:class:`~aevb.distributions.SampledPosterior`), else ``None``."""

    means: Tensor
    stds: Tensor
    mean_errors: Tensor | None = None

    @property
    def activity(self) -> Tensor:
        """Var_x(E_q[z_j]) per unit (latent_dim,), the means' Monte Carlo error taken off
        (:func:`aevb.evaluation.posterior_mean_spread`): a unit is active above 0.01 (Burda
        et al.), as the evaluation counts them."""
        return posterior_mean_spread(self.means, self.mean_errors).float()


@torch.no_grad()
def encode_rows(
    run: Run, x: np.ndarray | Tensor, labels: Tensor | None = None, where: str = "the data"
) -> Codes:
    """q(z|x) of rows as loaded x: (N, *data_shape) (given their ``labels`` (N,) for a
    conditional model), on the CPU. All rows go through the run's transforms at once, as in
    its evaluation (a Bernoulli run's fixed binarization draw covers them all), then are
    encoded in batches. ``where`` names the rows in errors."""
    prepared = run.prepare(x, where)
    labels = checked_labels(run.model, labels, len(prepared))
    means, stds, errors = [], [], []
    for start in range(0, len(prepared), ENCODE_BATCH):
        part = None if labels is None else labels[start : start + ENCODE_BATCH].to(run.device)
        q = bind(run.model, part).posterior(prepared[start : start + ENCODE_BATCH])
        means.append(q.mean.cpu())
        stds.append(q.stddev.cpu())
        if isinstance(q, SampledPosterior):
            errors.append((q.variance / MOMENT_SAMPLES).cpu())
    return Codes(
        torch.cat(means).float(),
        torch.cat(stds).float(),
        torch.cat(errors).float() if errors else None,
    )


def test_labels(run: Run, limit: int | None) -> Tensor | None:
    """The class labels of the first ``limit`` test rows, or ``None`` for unlabelled data."""
    try:
        return run.labels("test", limit)
    except DataError:
        return None


@torch.no_grad()
def decode(run: Run, z: Tensor, label: int | None = None) -> Tensor:
    """Decoder means E[x|z] at z: (n, latent_dim), in the data's units: (n, *data_shape) on
    the CPU. A conditional model decodes every z as class ``label`` (default 0)."""
    model = run.model
    z = z.to(run.device, torch.float32)
    if is_conditional(model):
        labels = torch.full((len(z),), label or 0, dtype=torch.long, device=run.device)
        model = bind(model, labels)
    return run.transforms.inverse(model.likelihood(z).mean).cpu()


@torch.no_grad()
def prior_quantiles(run: Run, probabilities: Tensor) -> Tensor:
    """The prior's marginal quantiles of each latent unit: (len(probabilities), latent_dim).

    Exact for a diagonal Gaussian prior (the inverse CDF, as the paper's Fig. 4); otherwise
    (mixtures, VampPrior, two stochastic layers) empirical, from seeded prior draws."""
    prior = run.model.prior()
    p = probabilities.double().to(run.device)
    if isinstance(prior, Independent) and isinstance(prior.base_dist, Normal):
        normal = prior.base_dist
        loc = normal.loc.double().expand(prior.event_shape)
        scale = normal.scale.double().expand(prior.event_shape)
        return Normal(loc, scale).icdf(p[:, None]).float().cpu()
    with fixed_randomness(0, run.device):
        draws = prior.sample((QUANTILE_DRAWS,)).reshape(QUANTILE_DRAWS, -1).double()
    return torch.quantile(draws, p, dim=0).float().cpu()


@dataclass(frozen=True)
class PrincipalPlane:
    """The plane of the two principal directions of posterior means (PCA): ``center``
    (latent_dim,), orthonormal ``directions`` (2, latent_dim) and the means' standard
    deviation along each, ``scales`` (2,); ``explained``: each direction's share of their
    variance."""

    center: Tensor
    directions: Tensor
    scales: Tensor
    explained: tuple[float, float]

    @classmethod
    def of(cls, means: Tensor) -> PrincipalPlane:
        """The principal plane of ``means`` (N, latent_dim), latent_dim ≥ 2."""
        if means.dim() != 2 or means.shape[1] < 2:
            raise ValueError(f"a plane needs means of 2 or more units, got {tuple(means.shape)}")
        center = means.double().mean(0)
        centred = means.double() - center
        # The covariance's eigenvectors (rather than an SVD of the rows): two directions even
        # for fewer than two rows.
        variances, vectors = torch.linalg.eigh(centred.T @ centred / max(len(means) - 1, 1))
        top = variances.flip(0)[:2].clamp(min=0)
        total = float(variances.clamp(min=0).sum())
        first, second = (float(v) / total if total > 0 else 0.0 for v in top)
        directions = vectors.flip(1)[:, :2].T
        return cls(center.float(), directions.float(), top.sqrt().float(), (first, second))

    def project(self, z: Tensor) -> Tensor:
        """Coordinates of z (N, latent_dim) along the two directions: (N, 2)."""
        return (z - self.center) @ self.directions.T

    def grid(self, size: int, span: float = 2.0) -> Tensor:
        """A size×size grid of latents over center ± ``span`` standard deviations along each
        direction: (size², latent_dim), rows from the top (high second coordinate)."""
        steps = torch.linspace(-span, span, size)
        a, b = torch.meshgrid(steps, steps.flip(0), indexing="xy")
        offsets = torch.stack((a.reshape(-1), b.reshape(-1)), 1) * self.scales
        return self.center + offsets @ self.directions


def grid_over(
    base: Tensor, first: int, second: int, first_values: Tensor, second_values: Tensor
) -> Tensor:
    """Latents equal to ``base`` (latent_dim,) except units ``first`` and ``second``, which run
    over ``first_values`` (columns, left to right) and ``second_values`` (rows, top to bottom):
    (len(second_values) · len(first_values), latent_dim), row by row."""
    a, b = torch.meshgrid(first_values, second_values, indexing="xy")
    z = base.float().repeat(a.numel(), 1)
    z[:, first] = a.reshape(-1)
    z[:, second] = b.reshape(-1)
    return z


def data_uri(data: bytes, media_type: str = "image/png") -> str:
    """``data`` as a ``data:`` URI (base64), for embedding in HTML or JSON."""
    return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"
