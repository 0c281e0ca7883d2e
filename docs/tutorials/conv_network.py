"""Tutorial: your own residual convolutional VAE, trained on MNIST, reloaded and evaluated.

    python docs/tutorials/conv_network.py [--small] [--out DIR]

The encoder and decoder are plain ``torch.nn`` modules; heads turn their outputs into
q(z|x) and p(x|z); a ``@aevb.model_factory`` function assembles the VAE, and the run folder
records that factory as an import path plus JSON arguments, so any process can rebuild it.
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
from torch import Tensor, nn
from tutorial import save, start

import aevb
from aevb import heads, priors

NAME = "conv_network"


# --8<-- [start:networks]
class ResidualBlock(nn.Module):
    """x + f(x), f = two 3×3 convolutions with SiLU before each; keeps the shape."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def encoder_network(latent_dim: int, width: int) -> nn.Module:
    """(N, 1, 28, 28) images → (N, 2·latent_dim): μ and log σ² of q(z|x)."""
    return nn.Sequential(
        nn.Conv2d(1, width, 4, stride=2, padding=1),  # 28 → 14
        ResidualBlock(width),
        nn.Conv2d(width, 2 * width, 4, stride=2, padding=1),  # 14 → 7
        ResidualBlock(2 * width),
        nn.SiLU(),
        nn.Flatten(),
        nn.Linear(2 * width * 7 * 7, 2 * latent_dim),
    )


def decoder_network(latent_dim: int, width: int) -> nn.Module:
    """(N, latent_dim) codes → (N, 1, 28, 28) Bernoulli logits. Nearest-neighbour upsampling
    followed by a 3×3 convolution instead of transposed convolutions (no checkerboard)."""
    return nn.Sequential(
        nn.Linear(latent_dim, 2 * width * 7 * 7),
        nn.Unflatten(1, (2 * width, 7, 7)),
        ResidualBlock(2 * width),
        nn.Upsample(scale_factor=2),  # 7 → 14
        nn.Conv2d(2 * width, width, 3, padding=1),
        ResidualBlock(width),
        nn.Upsample(scale_factor=2),  # 14 → 28
        nn.SiLU(),
        nn.Conv2d(width, 1, 3, padding=1),
    )


# --8<-- [end:networks]


# --8<-- [start:factory]
@aevb.model_factory
def residual_vae(latent_dim: int = 16, width: int = 16) -> aevb.VAE:
    """A VAE for 28×28 grey images with the residual conv networks above."""
    shape = (1, 28, 28)
    return aevb.VAE(
        aevb.Encoder(encoder_network(latent_dim, width), heads.DiagonalGaussian(latent_dim), shape),
        aevb.Decoder(decoder_network(latent_dim, width), heads.Bernoulli(shape), latent_dim),
        priors.StandardNormal(latent_dim),
    )


# --8<-- [end:factory]


# --8<-- [start:scale]
@dataclasses.dataclass(frozen=True)
class Scale:
    """The sizes that differ between the tutorial and its CI check."""

    train_rows: int  # MNIST training images used (of 54,000)
    val_rows: int  # validation images (of 6,000)
    epochs: int
    width: int  # feature maps of the first convolution
    eval_rows: int  # test images scored by importance sampling
    importance_samples: int


FULL = Scale(
    train_rows=15_000, val_rows=2_000, epochs=4, width=16, eval_rows=500, importance_samples=100
)
SMALL = Scale(
    train_rows=1_000, val_rows=500, epochs=1, width=8, eval_rows=100, importance_samples=20
)
# --8<-- [end:scale]


def image_grid(images: Tensor, columns: int) -> np.ndarray:
    """(N, 1, H, W) images in [0, 1] → one (rows·H, columns·W) array, light grey padding."""
    n, _, h, w = images.shape
    rows = -(-n // columns)
    grid = np.full((rows * (h + 1), columns * (w + 1)), 0.2, dtype=np.float32)
    for i, image in enumerate(images[:, 0].numpy()):
        r, c = divmod(i, columns)
        grid[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = image
    return grid


def show(grid: np.ndarray, title: str, path: Path) -> None:
    """Save an image grid as a PNG figure (dark strokes on white) with a title."""
    figure, axis = plt.subplots(figsize=(4.2, 4.2 * grid.shape[0] / grid.shape[1] + 0.3))
    axis.imshow(grid, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    axis.set_title(title, fontsize=9)
    axis.axis("off")
    save(figure, path)


def main(argv: list[str] | None = None) -> int:
    setup = start(NAME, __doc__, argv)
    scale = SMALL if setup.small else FULL
    out, figures = setup.out, setup.figures

    # --8<-- [start:data]
    mnist = aevb.load_dataset("mnist")  # AEVB_DATA_DIR, or a checked download
    data = dataclasses.replace(  # fewer training rows; the official test split unchanged
        mnist,
        train=mnist.train[: scale.train_rows],
        train_labels=mnist.train_labels[: scale.train_rows],
        val=mnist.val[: scale.val_rows],
        val_labels=mnist.val_labels[: scale.val_rows],
    )
    # --8<-- [end:data]

    # --8<-- [start:train]
    run_dir = out / "residual-vae"
    spec = aevb.ModelSpec.of(residual_vae, latent_dim=16, width=scale.width)
    print("recorded as:", json.dumps(spec.to_dict()))
    config = aevb.TrainConfig(
        dataset="mnist", epochs=scale.epochs, batch_size=100, seed=0, tensorboard=False
    )
    summary = aevb.train(config, run_dir, model=spec, dataset=data, progress=False)
    # --8<-- [end:train]

    # --8<-- [start:load]
    run = aevb.load_run(run_dir)  # imports the factory again and loads the best weights
    test = run.split("test", limit=scale.eval_rows)  # checked against the run's fingerprint
    result = run.evaluate(test, importance_samples=scale.importance_samples)
    # --8<-- [end:load]

    # --8<-- [start:pictures]
    torch.manual_seed(0)
    samples = run.sample(64)  # decoder means at z ~ p(z)
    originals = test[:32]
    reconstructions = run.reconstruct(originals)  # decoder means at the posterior means
    pairs = torch.stack([originals, reconstructions], 1)  # each image above its reconstruction
    pairs = pairs.view(4, 8, 2, 1, 28, 28).transpose(1, 2).reshape(64, 1, 28, 28)
    # --8<-- [end:pictures]
    show(
        image_grid(samples, 8),
        "samples: decoder mean at z ~ N(0, I)",
        figures / f"{NAME}-samples.png",
    )
    show(
        image_grid(pairs, 8),
        "test images (odd rows) and their reconstructions",
        figures / f"{NAME}-reconstructions.png",
    )

    parameters = sum(p.numel() for p in run.model.parameters())
    print(f"\n{parameters:,} parameters; {summary['train_seconds']:.0f} s of training")
    for row in run.history:  # metrics.jsonl: one dict per epoch
        print(
            f"epoch {row['epoch']}: train ELBO {row['train_elbo']:.2f}, "
            f"validation ELBO {row['val_elbo']:.2f}"
        )
    print(f"test ELBO (all 10,000 test images, estimator B): {summary['test_elbo']:.2f} nats")
    print(
        f"on {result.num_examples} test images, k = {result.importance_samples}: "
        f"log p(x) {result.log_likelihood:.2f} ± {result.log_likelihood_se:.2f}, "
        f"IWAE L_{result.iwae_samples} {result.iwae_bound:.2f}, ELBO {result.elbo:.2f}, "
        f"KL {result.kl:.2f} ({result.kl_estimator}), "
        f"active units {result.active_units} of {result.latent_dim}"
    )
    diagnostics = result.importance_diagnostics
    if diagnostics is not None:
        print(
            f"importance weights: median ESS {diagnostics.ess_median:.1f} of k, "
            f"{diagnostics.pareto_k_share_above:.0%} of the images with Pareto k̂ above 0.7"
        )
    print(
        f"the same from another process: aevb evaluate {run_dir} --importance-samples "
        f"{scale.importance_samples} --num-examples {scale.eval_rows}"
    )
    return setup.finish()


if __name__ == "__main__":
    raise SystemExit(main())
