"""Tutorial: Frey Face with a learned-variance Gaussian likelihood and a 2-D latent space.

    python docs/tutorials/frey.py [--small] [--out DIR]

Grey faces are not coin flips: each pixel gets a Gaussian p(x|z) = N(μ(z), σ²(z)) whose mean
and standard deviation both come from the decoder (``likelihood="gaussian-learned"``). With two
latent dimensions the decoder's means can be laid out on a grid over the plane, as in the
paper's Figure 4, and the learned σ shows where the model is sure of a pixel and where not.
Needs Frey Face in ``AEVB_DATA_DIR``.
"""

from __future__ import annotations

import dataclasses
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from scipy.stats import norm
from tutorial import save, start

import aevb
from aevb.plots import image_grid

NAME = "frey"


# --8<-- [start:scale]
@dataclasses.dataclass(frozen=True)
class Scale:
    """The sizes that differ between the tutorial and its CI check."""

    epochs: int  # at most this many passes over the 1,592 training faces
    hidden: tuple[int, ...]  # hidden layer of encoder and decoder (the paper's: 200)
    importance_samples: int  # k draws from q(z|x) per test face
    grid: int  # the manifold figure decodes grid × grid points of z


FULL = Scale(epochs=400, hidden=(200,), importance_samples=1000, grid=9)
SMALL = Scale(epochs=15, hidden=(50,), importance_samples=50, grid=6)
# --8<-- [end:scale]


def main(argv: list[str] | None = None) -> int:
    setup = start(NAME, __doc__, argv)
    scale = SMALL if setup.small else FULL
    out, figures = setup.out, setup.figures

    # --8<-- [start:train]
    run_dir = out / "frey"
    config = aevb.TrainConfig(
        dataset="frey",  # 1,965 faces of 28×20 grey pixels in [0, 1]
        likelihood="gaussian-learned",  # μ(z) through a sigmoid (squash_mean), σ(z) > 0
        latent_dim=2,
        hidden=scale.hidden,
        epochs=scale.epochs,
        patience=50,  # stop once the validation ELBO has not improved for 50 epochs
        batch_size=100,
        seed=0,
        tensorboard=False,
    )
    summary = aevb.train(config, run_dir, progress=False)
    run = aevb.load_run(run_dir)  # the best epoch's weights, by validation ELBO
    print(
        f"best epoch {summary['best_epoch']} of {summary['epochs']}; data transforms:",
        run.transforms.describe(),
    )
    # --8<-- [end:train]

    # --8<-- [start:curves]
    history = run.history  # metrics.jsonl: one dict per epoch
    figure, axis = plt.subplots(figsize=(5, 3.2))
    axis.plot([r["epoch"] for r in history], [r["train_elbo"] for r in history], label="train")
    axis.plot([r["epoch"] for r in history], [r["val_elbo"] for r in history], label="validation")
    axis.axvline(summary["best_epoch"], color="grey", linestyle=":", label="best epoch (kept)")
    axis.set(xlabel="epoch", ylabel="ELBO (nats per face)")
    axis.grid(alpha=0.3)
    axis.legend()
    save(figure, figures / f"{NAME}-curves.png")
    # --8<-- [end:curves]

    # --8<-- [start:evaluate]
    test = run.split("test")  # the 196 held-out faces
    result = run.evaluate(test, importance_samples=scale.importance_samples)
    for quantity, value in result.rows():
        print(f"  {quantity:34} {value}")
    # --8<-- [end:evaluate]

    # --8<-- [start:manifold]
    with torch.no_grad():
        codes = run.encode(run.split("train")).mean.numpy()  # E[z|x] of the training faces
    low, high = np.quantile(codes, [0.02, 0.98], axis=0)  # a grid over 96% of them per axis
    z1, z2 = np.meshgrid(
        np.linspace(low[0], high[0], scale.grid), np.linspace(high[1], low[1], scale.grid)
    )  # z₁ grows to the right, z₂ upwards
    z = torch.tensor(np.stack([z1.ravel(), z2.ravel()], 1), dtype=torch.float32)
    with torch.no_grad():
        faces = run.model.likelihood(z).mean  # decoder means μ(z): (grid², 1, 28, 20)
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 6), width_ratios=(1.1, 1))
    left.scatter(*codes.T, s=3)
    left.add_patch(plt.Rectangle(low, *(high - low), fill=False, color="red", label="grid"))
    edge = norm.ppf(0.95)  # the prior's central 90% on each axis
    prior = plt.Rectangle((-edge, -edge), 2 * edge, 2 * edge, fill=False, linestyle="--")
    prior.set_label("prior: 5–95% per axis")
    left.add_patch(prior)
    left.set(xlabel="z₁", ylabel="z₂", title="training faces: posterior means", aspect="equal")
    left.legend(fontsize=8, loc="upper left")
    grid = image_grid(faces.numpy(), ncols=scale.grid)  # tiles the faces into one image
    right.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    right.set_title("decoder means μ(z) on the red grid", fontsize=10)
    right.axis("off")
    save(figure, figures / f"{NAME}-manifold.png")
    # --8<-- [end:manifold]

    # --8<-- [start:sigma]
    faces = test[:8]
    with torch.no_grad():
        likelihood = run.model.likelihood(run.encode(faces).mean)  # p(x|z) at E[z|x]
        mean, sigma = likelihood.mean, likelihood.stddev
        torch.manual_seed(0)
        draw = likelihood.sample()  # x ~ N(μ, σ²): what the model calls a plausible face
    rows = [("test faces", faces), ("mean μ(z)", mean), ("σ(z)", sigma), ("x ~ N(μ, σ²)", draw)]
    figure, axes = plt.subplots(4, 1, figsize=(6.4, 5.4))
    for axis, (title, images) in zip(axes, rows, strict=True):
        colours = (
            {"cmap": "magma", "vmin": 0}
            if title == "σ(z)"
            else {"cmap": "gray", "vmin": 0, "vmax": 1}
        )
        shown = axis.imshow(image_grid(images.numpy(), ncols=8, pad=0), **colours)
        figure.colorbar(shown, ax=axis, fraction=0.03, pad=0.01)
        axis.set_ylabel(title, fontsize=9)
        axis.set_xticks([])
        axis.set_yticks([])
    save(figure, figures / f"{NAME}-sigma.png")
    # --8<-- [end:sigma]

    # --8<-- [start:calibration]
    with torch.no_grad():
        likelihood = run.model.likelihood(run.encode(test).mean)
        residual = (test - likelihood.mean) / likelihood.stddev  # ≈ N(0, 1) if σ is honest
        sigma = likelihood.stddev
    per_pixel = -torch.log(sigma).mean() - 0.5 * math.log(2 * math.pi)
    print(
        f"σ over test pixels: median {sigma.median():.3f} (×255 = {255 * sigma.median():.1f} grey "
        f"levels), 5% {sigma.quantile(0.05):.3f}, 95% {sigma.quantile(0.95):.3f}; "
        f"mean squared standardised residual {residual.pow(2).mean():.2f} (1 = calibrated); "
        f"−log σ − ½ log 2π averages {per_pixel:.2f} nats per pixel"
    )
    # --8<-- [end:calibration]

    print(
        f"\n{NAME} ({setup.scale_name} scale): best epoch "
        f"{summary['best_epoch']} of {summary['epochs']}; on the {result.num_examples} test "
        f"faces with k = {result.importance_samples}: log p(x) {result.log_likelihood:.2f} ± "
        f"{result.log_likelihood_se:.3f}, ELBO {result.elbo:.2f}, KL {result.kl:.2f}, active "
        f"units {result.active_units} of {result.latent_dim} (nats per face; densities of grey "
        f"values, so positive)"
    )
    return setup.finish()


if __name__ == "__main__":
    raise SystemExit(main())
