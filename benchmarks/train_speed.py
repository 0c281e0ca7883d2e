"""Epoch time of aevb training against reference loops, measured in one process.

* ``conventional``: the loop of the well-known PyTorch VAE example — a ``DataLoader`` with
  shuffling over a dataset that, like torchvision's MNIST, turns each uint8 image into a PIL
  image and then a float tensor (``ToTensor``), batches moved to the device one by one,
  binarized there, default ``Adam``.
* ``bare``: the floor — forward, backward and optimiser step (default ``torch.optim.Adam``) of
  a hand-written VAE of the same size over pre-binarized tensors already on the device, with no
  shuffling, metrics or checks. ``bare-fused`` is the same with the fused Adam kernel.
* ``aevb-plain``: one epoch of the :class:`aevb.train.Trainer` that ``aevb train`` builds
  (:func:`aevb.runs.start_run`), with ``compile=False`` (eager
  step; permutation and dynamic binarization on the device, device-side metrics, fused Adam),
  then the validation ELBO and a checkpoint, as in a real run, without TensorBoard.
* ``aevb-tensorboard``: ``aevb-plain`` with TensorBoard logging on (every step's loss, the
  epoch's curves, sample and reconstruction grids; :mod:`aevb.train.tensorboard`).
* ``aevb-fast``: ``aevb-plain`` with ``compile=True``: the step through ``torch.compile`` (and CUDA
  graphs on a GPU). Its compile happens in the discarded warm-up round.

The loops run interleaved, round after round, and the median epoch time of each is reported
with its ratio to the bare loop; for aevb, also the time of the step loop alone (without the
validation and checkpoint that end each epoch). CPU timings on shared machines swing by 1.6×:
compare the ratios printed by one run, never numbers from different runs.

    python benchmarks/train_speed.py --data-dir ../shared/data --batch-sizes 100 1000
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import tempfile
import time
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from aevb.data import load_dataset
from aevb.runs import TrainConfig, start_run
from aevb.train import Trainer


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


class ImageDataset(torch.utils.data.Dataset):
    """uint8 images served one at a time as torchvision's MNIST with ``ToTensor`` does."""

    def __init__(self, images: np.ndarray):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        picture = Image.fromarray(self.images[index])
        pixels = torch.from_numpy(np.array(picture, copy=True))
        return pixels.view(1, *pixels.shape).float().div(255)


def conventional_epoch(model, optimizer, loader: DataLoader, device: torch.device) -> None:
    for batch in loader:
        x = torch.bernoulli(batch.to(device).view(len(batch), -1))
        loss = model.loss(x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def bare_epoch(model, optimizer, binary: torch.Tensor, batch_size: int) -> None:
    for start in range(0, len(binary), batch_size):
        loss = model.loss(binary[start : start + batch_size])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def aevb_epoch(trainer: Trainer, loop_seconds: list[float]) -> None:
    before = trainer.state.train_seconds
    trainer.train_epoch()
    loop_seconds.append(trainer.state.train_seconds - before)


LOOPS = ["conventional", "bare", "bare-fused", "aevb-plain", "aevb-tensorboard", "aevb-fast"]
# aevb loop → (compile, tensorboard)
AEVB_LOOPS = {
    "aevb-plain": (False, False),
    "aevb-tensorboard": (False, True),
    "aevb-fast": (True, False),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--rounds", type=int, default=3, help="timed epochs of each loop")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--loops", nargs="+", choices=LOOPS, default=LOOPS, help="which loops to time (all)"
    )
    args = parser.parse_args()

    dataset = load_dataset(args.dataset, args.data_dir)
    device = torch.device(args.device)
    if not dataset.is_image:
        parser.error("the conventional loop needs an image dataset")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, "
        f"{args.dataset}: {len(dataset.train)} training rows of {dataset.data_dim}"
    )
    images = np.rint(dataset.train[:, 0] * 255).astype(np.uint8)  # (N, H, W) grey images
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
            sessions = {
                name: start_run(
                    dataclasses.replace(config, compile=compile_step, tensorboard=tensorboard),
                    f"{run_dir}/{name}",
                    dataset=dataset,
                    progress=False,
                )
                for name, (compile_step, tensorboard) in AEVB_LOOPS.items()
                if name in args.loops
            }
            trainers = {name: session.trainer for name, session in sessions.items()}
            for trainer in trainers.values():
                trainer.setup(config.epochs)
                for callback in trainer.callbacks:  # as fit() does: the TensorBoard writer
                    callback.on_fit_start(trainer)
            grey = torch.from_numpy(dataset.train.reshape(len(dataset.train), -1)).to(device)
            binary = torch.bernoulli(grey)
            reference = BareVAE(dataset.data_dim, 500, 20).to(device)
            ref_optimizer = torch.optim.Adam(reference.parameters(), lr=1e-3)
            fused = BareVAE(dataset.data_dim, 500, 20).to(device)
            fused_optimizer = torch.optim.Adam(fused.parameters(), lr=1e-3, fused=True)
            loader = DataLoader(ImageDataset(images), batch_size=batch_size, shuffle=True)
            loop_seconds: dict[str, list[float]] = {name: [] for name in trainers}
            loops = {
                "conventional": partial(
                    conventional_epoch, reference, ref_optimizer, loader, device
                ),
                "bare": partial(bare_epoch, reference, ref_optimizer, binary, batch_size),
                "bare-fused": partial(bare_epoch, fused, fused_optimizer, binary, batch_size),
                **{
                    name: partial(aevb_epoch, trainer, loop_seconds[name])
                    for name, trainer in trainers.items()
                },
            }
            loops = {name: loops[name] for name in args.loops}
            times: dict[str, list[float]] = {name: [] for name in loops}
            for round_index in range(args.rounds + 1):  # round 0 warms up and is discarded
                for name, run_epoch in loops.items():
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    started = time.perf_counter()
                    run_epoch()
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    if round_index:
                        times[name].append(time.perf_counter() - started)
            fast = trainers.get("aevb-fast")
            fallen_back = fast is not None and not fast.training_step.active
            for session in sessions.values():
                for callback in session.trainer.callbacks:
                    callback.close(session.trainer)
                session.close()  # the run folders' locks
        bare = statistics.median(times["bare"]) if "bare" in times else math.nan
        print(f"\nbatch size {batch_size}, median of {args.rounds} epochs")
        print(
            f"{'loop':<14}{'s/epoch':>9}{'samples/s':>11}{'÷ bare':>8}{'steps only':>12}"
            "   all epochs (s)"
        )
        for name, values in times.items():
            median = statistics.median(values)
            steps = f"{statistics.median(loop_seconds[name][1:]):.3f}" if name in trainers else ""
            print(
                f"{name:<14}{median:>9.3f}{len(binary) / median:>11.0f}{median / bare:>8.2f}"
                f"{steps:>12}   " + " ".join(f"{v:.2f}" for v in values)
            )
        for name in [name for name in trainers if name in times and "conventional" in times]:
            conventional = statistics.median(times["conventional"])
            print(
                f"{name} is {conventional / statistics.median(times[name]):.2f}× faster than "
                "the conventional loop"
            )
        if fallen_back:
            print("note: aevb-fast fell back to eager (see the notice above)")


if __name__ == "__main__":
    main()
