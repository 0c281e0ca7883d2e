"""Epoch time of aevb training against two reference loops, measured in one process.

* ``dataloader``: the conventional loop (as in the well-known PyTorch VAE example): a
  ``DataLoader`` over a ``TensorDataset`` with shuffling, binarizing each batch.
* ``bare``: the floor — forward, backward and optimiser step (default ``torch.optim.Adam``) of
  a hand-written VAE of the same size over pre-binarized, in-memory tensors, with no
  shuffling, metrics or checks. ``bare-fused`` is the same with the fused Adam kernel, which
  aevb uses where torch has it.
* ``aevb``: one epoch of :class:`aevb.training.Trainer` (permutation and dynamic binarization
  on the device, metrics, then validation ELBO and a checkpoint, as in a real run).

The loops run interleaved, round after round, and the median epoch time of each is reported
with its ratio to the bare loop. CPU timings on shared machines swing by 1.6×: compare the
ratios printed by one run, never numbers from different runs.

    python benchmarks/train_speed.py --data-dir ../shared/data --batch-sizes 100 1000
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from aevb.data import load_dataset
from aevb.training import TrainConfig, Trainer


class BareVAE(nn.Module):
    """The paper's MNIST model (784-500-20 tanh, Bernoulli decoder), written out directly."""

    def __init__(self, data_dim: int, hidden: int, latent_dim: int):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(data_dim, hidden), nn.Tanh(), nn.Linear(hidden, 2 * latent_dim)
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, hidden), nn.Tanh(), nn.Linear(hidden, data_dim)
        )

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Negative single-sample SGVB-B estimate, nats per example."""
        loc, log_variance = self.encoder(x).chunk(2, dim=-1)
        z = loc + torch.exp(0.5 * log_variance) * torch.randn_like(loc)
        logits = self.decoder(z)
        reconstruction = -F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
        kl = 0.5 * (loc.pow(2) + log_variance.exp() - 1 - log_variance).sum()
        return (kl - reconstruction) / len(x)


def dataloader_epoch(model, optimizer, grey: torch.Tensor, batch_size: int) -> None:
    loader = DataLoader(TensorDataset(grey), batch_size=batch_size, shuffle=True)
    for (batch,) in loader:
        loss = model.loss(torch.bernoulli(batch))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def bare_epoch(model, optimizer, binary: torch.Tensor, batch_size: int) -> None:
    for start in range(0, len(binary), batch_size):
        loss = model.loss(binary[start : start + batch_size])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--rounds", type=int, default=3, help="timed epochs of each loop")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    dataset = load_dataset(args.dataset, args.data_dir)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
        f"{args.dataset}: {len(dataset.train)} training rows of {dataset.data_dim}"
    )
    for batch_size in args.batch_sizes:
        config = TrainConfig(
            dataset=args.dataset,
            data_dir=args.data_dir,
            latent_dim=20,
            hidden=(500,),
            batch_size=batch_size,
            device=args.device,
            epochs=args.rounds + 1,
            seed=0,
        )
        with tempfile.TemporaryDirectory() as run_dir:
            trainer = Trainer(config, run_dir, dataset=dataset, progress=False)
            trainer.start()
            grey = trainer.train_x
            binary = torch.bernoulli(grey)
            reference = BareVAE(dataset.data_dim, 500, 20).to(trainer.device)
            ref_optimizer = torch.optim.Adam(reference.parameters(), lr=1e-3)
            fused = BareVAE(dataset.data_dim, 500, 20).to(trainer.device)
            fused_optimizer = torch.optim.Adam(fused.parameters(), lr=1e-3, fused=True)
            loops = {
                "dataloader": partial(dataloader_epoch, reference, ref_optimizer, grey, batch_size),
                "bare": partial(bare_epoch, reference, ref_optimizer, binary, batch_size),
                "bare-fused": partial(bare_epoch, fused, fused_optimizer, binary, batch_size),
                "aevb": trainer.train_epoch,
            }
            times: dict[str, list[float]] = {name: [] for name in loops}
            for round_index in range(args.rounds + 1):  # round 0 warms up and is discarded
                for name, run_epoch in loops.items():
                    if trainer.device.type == "cuda":
                        torch.cuda.synchronize()
                    started = time.perf_counter()
                    run_epoch()
                    if trainer.device.type == "cuda":
                        torch.cuda.synchronize()
                    if round_index:
                        times[name].append(time.perf_counter() - started)
        bare = statistics.median(times["bare"])
        print(f"\nbatch size {batch_size}, median of {args.rounds} epochs")
        print(f"{'loop':<12}{'s/epoch':>10}{'samples/s':>12}{'÷ bare':>9}   all epochs (s)")
        for name, values in times.items():
            median = statistics.median(values)
            print(
                f"{name:<12}{median:>10.3f}{len(grey) / median:>12.0f}{median / bare:>9.2f}   "
                + " ".join(f"{v:.2f}" for v in values)
            )
        dataloader = statistics.median(times["dataloader"])
        print(
            f"aevb is {dataloader / statistics.median(times['aevb']):.2f}× faster than the "
            "DataLoader loop"
        )


if __name__ == "__main__":
    main()
