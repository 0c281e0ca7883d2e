"""Your own convolutional encoder and decoder, trained on MNIST through aevb's public API.

    python examples/custom_networks.py --data-dir ../shared/data --epochs 2 --out RUN
    aevb evaluate RUN --importance-samples 100 --num-examples 1000 --json
    aevb sample RUN
    aevb train --resume RUN --epochs 3

You write only the networks: a head (``aevb.heads``) turns each network's output into a
distribution, and ``aevb.Encoder`` / ``aevb.Decoder`` hand your networks exactly one batch
dimension. The run folder records the factory below by its import path
(``custom_networks:conv_vae``, and this file's location) with its JSON arguments — nothing is
pickled — so every ``aevb`` command rebuilds the model from this file.
"""

from __future__ import annotations

import argparse
import json

from torch import nn

import aevb
from aevb import heads, priors


@aevb.model_factory
def conv_vae(latent_dim: int = 16, width: int = 32) -> aevb.VAE:
    """A VAE for 28×28 grey images with a small convolutional encoder and decoder."""
    encoder = nn.Sequential(
        nn.Conv2d(1, width, 4, stride=2, padding=1),  # 28 → 14
        nn.ReLU(),
        nn.Conv2d(width, 2 * width, 4, stride=2, padding=1),  # 14 → 7
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(2 * width * 7 * 7, 2 * latent_dim),  # μ and log σ² of q(z|x)
    )
    decoder = nn.Sequential(
        nn.Linear(latent_dim, 2 * width * 7 * 7),
        nn.ReLU(),
        nn.Unflatten(1, (2 * width, 7, 7)),
        nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1),  # 7 → 14
        nn.ReLU(),
        nn.ConvTranspose2d(width, 1, 4, stride=2, padding=1),  # 14 → 28: Bernoulli logits
    )
    return aevb.VAE(
        aevb.Encoder(encoder, heads.DiagonalGaussian(latent_dim), data_shape=(1, 28, 28)),
        aevb.Decoder(decoder, heads.Bernoulli((1, 28, 28)), latent_dim),
        priors.StandardNormal(latent_dim),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", help="folder with the MNIST files (or AEVB_DATA_DIR)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--latent-dim", type=int, default=16)
    parser.add_argument("--width", type=int, default=32, help="feature maps of the first layer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/custom-conv-mnist", help="run folder to create")
    args = parser.parse_args()

    config = aevb.TrainConfig(
        dataset="mnist", data_dir=args.data_dir, epochs=args.epochs, seed=args.seed
    )
    model = aevb.ModelSpec.of(conv_vae, latent_dim=args.latent_dim, width=args.width)
    summary = aevb.train(config, args.out, model=model)
    print(json.dumps(summary, indent=2))
    print(f"run folder: {args.out}")


if __name__ == "__main__":
    main()
