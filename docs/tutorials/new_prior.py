"""Tutorial: a new prior — a learnable Student-t p(z) — against N(0, I) on the same MNIST model.

    python docs/tutorials/new_prior.py [--small] [--out DIR]

A prior is an ``nn.Module`` whose ``forward()`` returns p(z). torch knows no closed-form
KL(Normal ‖ StudentT), so aevb's one KL path (``aevb.kl.KLRule``) falls back to a Monte Carlo
estimate — in training and in evaluation — without any code here.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Distribution, Independent, Laplace, StudentT
from tutorial import save, start

import aevb
from aevb.evaluation import Evaluation
from aevb.kl import KLRule

NAME = "new_prior"


# --8<-- [start:prior]
class StudentTPrior(nn.Module):
    """p(z) = Π_j t(z_j; ν_j, 0, s_j): a heavy-tailed prior whose degrees of freedom ν_j > 1
    and scales s_j are learned with the model, one per latent dimension."""

    def __init__(self, latent_dim: int, degrees_of_freedom: float = 5.0):
        super().__init__()
        # ν = 1 + softplus(raw), so ν stays above 1 (a finite mean) whatever the optimiser does.
        raw = torch.full((latent_dim,), float(np.log(np.expm1(degrees_of_freedom - 1.0))))
        self.raw_degrees_of_freedom = nn.Parameter(raw)
        self.log_scale = nn.Parameter(torch.zeros(latent_dim))

    @property
    def degrees_of_freedom(self) -> torch.Tensor:
        return 1.0 + F.softplus(self.raw_degrees_of_freedom)

    def forward(self) -> Distribution:
        scale = self.log_scale.exp()
        t = StudentT(self.degrees_of_freedom, torch.zeros_like(scale), scale, validate_args=False)
        return Independent(t, 1)  # event shape (latent_dim,): a density over latent vectors


# --8<-- [end:prior]


# --8<-- [start:factory]
@aevb.model_factory
def mnist_vae(prior: str = "student-t", latent_dim: int = 16, hidden: int = 256) -> aevb.VAE:
    """The paper's MLP encoder and decoder (one tanh layer) with the prior named by ``prior``:
    ``"standard"`` N(0, I) or ``"student-t"`` (:class:`StudentTPrior`)."""
    base = aevb.mlp((1, 28, 28), latent_dim, hidden=(hidden,))
    if prior == "standard":
        return base  # aevb.mlp's prior is N(0, I)
    if prior == "student-t":
        return aevb.VAE(base.encoder, base.decoder, StudentTPrior(latent_dim))
    raise ValueError(f"prior must be 'standard' or 'student-t', got {prior!r}")


# --8<-- [end:factory]


# --8<-- [start:scale]
@dataclasses.dataclass(frozen=True)
class Scale:
    """The sizes that differ between the tutorial and its CI check."""

    train_rows: int  # MNIST training images (of 54,000)
    epochs: int
    eval_rows: int  # test images scored by importance sampling
    importance_samples: int


FULL = Scale(train_rows=54_000, epochs=8, eval_rows=500, importance_samples=1_000)
SMALL = Scale(train_rows=2_000, epochs=1, eval_rows=100, importance_samples=50)
# --8<-- [end:scale]


# --8<-- [start:decision]
def kl_paths(latent_dim: int = 16) -> dict[str, str]:
    """The KL path aevb decides for a diagonal Gaussian q(z|x) against several priors."""
    posterior = mnist_vae("standard", latent_dim).posterior(torch.rand(2, 1, 28, 28))
    zeros, ones = torch.zeros(latent_dim), torch.ones(latent_dim)
    candidates = {
        "N(0, I)": aevb.priors.StandardNormal(latent_dim)(),
        "Laplace(0, 1)": Independent(Laplace(zeros, ones), 1),
        "learnable Student-t": StudentTPrior(latent_dim)(),
    }
    return {name: KLRule.decide(posterior, prior).description for name, prior in candidates.items()}


# --8<-- [end:decision]


def show_kl(results: dict[str, Evaluation], path: Path) -> None:
    """KL per latent dimension, each model's dimensions sorted by it."""
    figure, axis = plt.subplots(figsize=(6.0, 3.0))
    width = 0.4
    for offset, (label, result) in zip((-width / 2, width / 2), results.items(), strict=True):
        values = sorted(result.kl_per_dim, reverse=True)
        axis.bar(
            np.arange(len(values)) + offset,
            values,
            width,
            label=f"{label} ({result.kl_estimator} KL, total {result.kl:.1f})",
        )
    axis.set_xlabel("latent dimension (sorted by its KL)")
    axis.set_ylabel("KL(q(z_j|x) ‖ p(z_j)), nats")
    axis.legend(fontsize=8)
    save(figure, path)


def show_marginals(runs: dict[str, aevb.Run], test: torch.Tensor, path: Path) -> None:
    """For each model, its three most active dimensions: the aggregate posterior
    (z ~ q(z|x) over test images) against the model's prior, log scale."""
    grid = torch.linspace(-10, 10, 401)
    figure, axes = plt.subplots(len(runs), 3, figsize=(7.5, 4.4), sharex=True, sharey=True)
    for row, (label, run) in zip(axes, runs.items(), strict=True):
        with torch.no_grad():
            posterior = run.encode(test)
            z = posterior.sample((10,)).reshape(-1, posterior.event_shape[0])
            prior = run.model.prior()
            density = prior.base_dist.log_prob(grid[:, None].expand(-1, z.shape[1])).exp()
            active = posterior.mean.var(0).argsort(descending=True)[:3]  # the most active
        for axis, j in zip(row, active.tolist(), strict=True):
            axis.hist(z[:, j].numpy(), bins=80, range=(-10, 10), density=True, color="0.75")
            axis.plot(grid, density[:, j], color="C3", label="the model's p(z_j)")
            axis.plot(
                grid,
                torch.distributions.Normal(0, 1).log_prob(grid).exp(),
                "k--",
                lw=1,
                label="N(0, 1)",
            )
            axis.set_yscale("log")
            axis.set_ylim(1e-4, 2)
            axis.set_title(f"{label}: z_{j}", fontsize=8)
    axes[0, 0].legend(fontsize=7)
    figure.supxlabel("z_j (histogram: z ~ q(z|x) over test images)", fontsize=9)
    save(figure, path)


def main(argv: list[str] | None = None) -> int:
    setup = start(NAME, __doc__, argv)
    scale = SMALL if setup.small else FULL
    out, figures = setup.out, setup.figures

    # --8<-- [start:show-decision]
    for prior, path in kl_paths().items():
        print(f"KL(diagonal Gaussian q ‖ {prior}): {path}")
    # --8<-- [end:show-decision]

    # --8<-- [start:train]
    mnist = aevb.load_dataset("mnist")
    data = dataclasses.replace(  # the first train_rows training images; the test split as is
        mnist,
        train=mnist.train[: scale.train_rows],
        train_labels=mnist.train_labels[: scale.train_rows],
    )
    config = aevb.TrainConfig(dataset="mnist", epochs=scale.epochs, seed=0, tensorboard=False)
    runs: dict[str, aevb.Run] = {}
    for prior in ("standard", "student-t"):
        spec = aevb.ModelSpec.of(mnist_vae, prior=prior)  # same networks, same seed
        aevb.train(config, out / prior, model=spec, dataset=data, progress=False)
        runs[prior] = aevb.load_run(out / prior)
    # --8<-- [end:train]

    # --8<-- [start:evaluate]
    test = runs["standard"].split("test", limit=scale.eval_rows)
    results = {
        prior: run.evaluate(test, importance_samples=scale.importance_samples)
        for prior, run in runs.items()
    }
    # --8<-- [end:evaluate]

    # --8<-- [start:monte-carlo]
    model = runs["student-t"].model
    with torch.no_grad():
        q, p = model.posterior(runs["student-t"].prepare(test)), model.prior()
        rule = KLRule.decide(q, p)  # what training and evaluation used
        z = q.sample((1000,))  # (draws, images, latent_dim)
        kl = rule.estimate(q, p, z).total  # per image, from 1,000 draws
        one_draw = q.log_prob(z) - p.log_prob(z)  # the estimate a training step takes
    # --8<-- [end:monte-carlo]

    show_kl(results, figures / f"{NAME}-kl.png")
    show_marginals(runs, test, figures / f"{NAME}-marginals.png")

    prior_module = model.prior
    print(f"Student-t run's KL path: {rule.description} (per dimension: {rule.per_dimension})")
    print(
        f"KL per test image: {kl.mean():.2f} nats from 1,000 draws; one draw's estimate has a "
        f"standard deviation of {one_draw.std(0).mean():.2f} nats"
    )
    print("learned ν:", " ".join(f"{v:.1f}" for v in prior_module.degrees_of_freedom.tolist()))
    print("learned s:", " ".join(f"{s:.2f}" for s in prior_module.log_scale.exp().tolist()))
    for prior, result in results.items():
        summary = json.loads((out / prior / "summary.json").read_text())
        print(
            f"{prior:>9}: test ELBO (10,000 images) {summary['test_elbo']:.2f}; on "
            f"{result.num_examples} images, k = {result.importance_samples}: log p(x) "
            f"{result.log_likelihood:.2f} ± {result.log_likelihood_se:.2f}, ELBO "
            f"{result.elbo:.2f}, KL {result.kl:.2f} ({result.kl_estimator}), active units "
            f"{result.active_units} of {result.latent_dim}"
        )
        if result.importance_diagnostics is not None:
            share = result.importance_diagnostics.pareto_k_share_above
            print(f"{'':>9}  {share:.0%} of the images with Pareto k̂ above 0.7")
    return setup.finish()


if __name__ == "__main__":
    raise SystemExit(main())
