"""Diagnostics: gradient variance of the estimators, and posterior collapse."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from aevb.hints import setting_name
from aevb.models import VAE
from aevb.objectives import Objective


@dataclass
class GradientStatistics:
    """Over ``num_draws`` independent gradient estimates of the same batch objective.

    ``total_variance`` is Σ_p Var[g_p] over the chosen parameters (the trace of the
    covariance); ``mean_norm_squared`` is ‖E[g]‖²; a projection onto one fixed random unit
    direction v (``projection_mean`` ± ``projection_se``) allows an unbiasedness check.
    """

    total_variance: float
    mean_norm_squared: float
    projection_mean: float
    projection_se: float
    num_draws: int


def gradient_variance(
    model: VAE,
    x: Tensor,
    objectives: Mapping[str, Objective],
    num_draws: int = 100,
    parameters: str = "encoder",
    seed: int = 0,
) -> dict[str, GradientStatistics]:
    """Variance of each objective's gradient for the same model and batch x: (batch, D).

    ``parameters`` is ``"encoder"`` (φ, where the reparameterised and score-function
    estimators differ), ``"decoder"`` or ``"all"``. Uses Welford's running moments, so
    memory is three copies of the parameters whatever ``num_draws`` is.
    """
    if num_draws < 2:
        raise ValueError("num_draws must be at least 2")
    chosen = {"encoder": model.encoder, "decoder": model.decoder, "all": model}[parameters]
    params = [p for p in chosen.parameters() if p.requires_grad]
    size = sum(p.numel() for p in params)
    generator = torch.Generator().manual_seed(seed)
    direction = torch.randn(size, generator=generator, dtype=torch.float64)
    direction = (direction / direction.norm()).to(x.device)
    results = {}
    for name, objective in objectives.items():
        torch.manual_seed(seed)
        mean = torch.zeros(size, dtype=torch.float64, device=x.device)
        m2 = torch.zeros_like(mean)
        projections = []
        for draw in range(1, num_draws + 1):
            model.zero_grad(set_to_none=True)
            objective(model, x).loss.backward()
            g = (
                torch.cat(
                    [
                        (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                        for p in params
                    ]
                )
                .double()
                .neg()
            )  # the gradient of the objective, not of the loss
            delta = g - mean
            mean += delta / draw
            m2 += delta * (g - mean)
            projections.append(g @ direction)
        model.zero_grad(set_to_none=True)
        projection = torch.stack(projections)
        results[name] = GradientStatistics(
            total_variance=float(m2.sum() / (num_draws - 1)),
            mean_norm_squared=float(mean.square().sum()),
            projection_mean=float(projection.mean()),
            projection_se=float(projection.std() / num_draws**0.5),
            num_draws=num_draws,
        )
    return results


def warn_if_collapsed(active_units: int, latent_dim: int, stacklevel: int = 2) -> None:
    """Warn when fewer than half the latent units are active (posterior collapse);
    ``stacklevel`` as :func:`warnings.warn` counts it from the caller of this function."""
    if active_units < latent_dim / 2:
        warnings.warn(
            f"only {active_units} of {latent_dim} latent units are active (Var_x E_q[z_j] > "
            "0.01): the posterior has collapsed onto the prior in most dimensions. KL warm-up "
            f"({setting_name('warmup_steps')}), free bits ({setting_name('free_bits')}) or a "
            f"smaller {setting_name('latent_dim')} may help",
            stacklevel=stacklevel + 1,
        )
