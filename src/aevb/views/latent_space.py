"""The latent space of a trained run, as both views show it: posterior means of held-out rows,
their principal plane, the prior's quantiles, decoding z to data, and images as PNG bytes.

Everything here takes a :class:`aevb.runs.Run` and returns data in the data's units
(``run.transforms.inverse``), on the CPU.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.distributions import Independent, Normal

from aevb.conditional import bind, checked_labels, is_conditional
from aevb.errors import DataError
from aevb.evaluation import fixed_randomness
from aevb.plots import image_grid
from aevb.runs import Run

__all__ = [
    "Codes",
    "PrincipalPlane",
    "data_uri",
    "decode",
    "encode_rows",
    "grid_over",
    "png_bytes",
    "prior_quantiles",
    "test_labels",
]

# Rows encoded at a time.
ENCODE_BATCH = 1000
# Prior draws behind the quantiles of a prior without a closed-form inverse CDF.
QUANTILE_DRAWS = 20_000


@dataclass(frozen=True)
class Codes:
    """Posterior means and standard deviations of q(z|x) of some rows: (N, latent_dim) each."""

    means: Tensor
    stds: Tensor

    @property
    def activity(self) -> Tensor:
        """Var_x(E_q[z_j]) per unit (latent_dim,): a unit is active above 0.01 (Burda et al.)."""
        if len(self.means) < 2:
            return torch.zeros(self.means.shape[1])
        return self.means.double().var(0).float()


@torch.no_grad()
def encode_rows(run: Run, x: Tensor, labels: Tensor | None = None) -> Codes:
    """q(z|x) of rows as loaded x: (N, *data_shape) (given their ``labels`` (N,) for a
    conditional model). All rows go through the run's transforms at once, as in its
    evaluation (a Bernoulli run's fixed binarization draw covers them all), then are encoded
    in batches."""
    prepared = run.prepare(x)
    labels = checked_labels(run.model, labels, len(x))
    means, stds = [], []
    for start in range(0, len(x), ENCODE_BATCH):
        part = None if labels is None else labels[start : start + ENCODE_BATCH].to(run.device)
        q = bind(run.model, part).posterior(prepared[start : start + ENCODE_BATCH])
        means.append(q.mean.cpu())
        stds.append(q.stddev.cpu())
    return Codes(torch.cat(means).float(), torch.cat(stds).float())


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


def png_bytes(images: Tensor | np.ndarray, ncols: int | None = None, min_pixels: int = 0) -> bytes:
    """Images (N, C, H, W) with values in [0, 1] (clipped) as one PNG grid (grey for C = 1,
    RGB for C = 3), each pixel a k×k block so that the longer side has at least
    ``min_pixels`` pixels (k = 1 for 0)."""
    if isinstance(images, Tensor):
        images = images.detach().cpu().numpy()
    grid = np.clip(image_grid(images, ncols), 0.0, 1.0)
    k = max(1, math.ceil(min_pixels / max(grid.shape[:2])))
    pixels = np.round(grid * 255).astype(np.uint8).repeat(k, 0).repeat(k, 1)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "L" if pixels.ndim == 2 else "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri(data: bytes, media_type: str = "image/png") -> str:
    """``data`` as a ``data:`` URI (base64), for embedding in HTML or JSON."""
    return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"
