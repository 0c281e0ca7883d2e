"""Tutorial: train from an .npy file streamed from disk, then data-parallel with torchrun.

    python docs/tutorials/scale_out.py [--small] [--out DIR]

Writes jittered MNIST digits to an .npy file chunk by chunk (never all in memory), trains a
VAE that reads its training rows from the file batch by batch (``stream=True``), trains the
same model with two processes under ``torchrun`` (gloo on the CPU), resumes that run with one
process, and compares the learning curves of the two runs.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from tutorial import save, start

import aevb

NAME = "scale_out"


# --8<-- [start:scale]
@dataclasses.dataclass(frozen=True)
class Scale:
    """The sizes that differ between the tutorial and its CI check."""

    rows: int  # rows written to the .npy file (a tenth is held out for test)
    epochs: int  # of each run
    parallel_epochs: int  # epochs the two-process run trains before it is resumed
    eval_rows: int  # test rows scored by importance sampling
    importance_samples: int


FULL = Scale(rows=50_000, epochs=4, parallel_epochs=2, eval_rows=1_000, importance_samples=200)
SMALL = Scale(rows=3_000, epochs=2, parallel_epochs=1, eval_rows=100, importance_samples=20)

# The model and optimisation of every run: the paper's MLP with 200 tanh units, 16 latents.
SETTINGS = {"latent_dim": 16, "hidden": (200,), "batch_size": 200, "lr": 2e-3, "seed": 0}
# --8<-- [end:scale]


# --8<-- [start:write]
def write_rows(path: Path, rows: int, chunk: int = 4096, seed: int = 0) -> None:
    """Write ``rows`` MNIST digits, each shifted by up to one pixel, to an (N, 1, 28, 28)
    float32 .npy file, one chunk at a time: memory holds one chunk, never the file. (The
    digits stand in for whatever produces your rows: a simulator, a database, many files.)"""
    digits = aevb.load_dataset("mnist").train[:, 0]  # (54000, 28, 28) in [0, 1]
    rng = np.random.default_rng(seed)
    file = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, 1, 28, 28))
    pixels = np.arange(28)
    for first in range(0, rows, chunk):
        n = min(chunk, rows - first)
        images = np.pad(digits[rng.integers(0, len(digits), n)], ((0, 0), (1, 1), (1, 1)))
        dy, dx = rng.integers(0, 3, (2, n, 1, 1))  # a random 28×28 crop of the padded digit
        file[first : first + n, 0] = images[
            np.arange(n)[:, None, None], dy + pixels[:, None], dx + pixels[None, :]
        ]
    file.flush()
    del file  # closes the memory map


# --8<-- [end:write]


# --8<-- [start:torchrun]
def torchrun_train(rows: Path, run_dir: Path, processes: int, epochs: int) -> None:
    """``torchrun --standalone --nproc-per-node N -m aevb train … --device cpu`` (gloo), one
    CPU thread per process. On a machine with 8 GPUs: ``--nproc-per-node 8 … --device cuda``."""
    hidden = " ".join(str(units) for units in SETTINGS["hidden"])
    arguments = (
        f"--standalone --nproc-per-node {processes} "
        f"-m aevb train --dataset {shlex.quote(str(rows))} --stream --device cpu "
        f"--latent-dim {SETTINGS['latent_dim']} --hidden {hidden} "
        f"--batch-size {SETTINGS['batch_size']} "  # the global batch, shared by the processes
        f"--lr {SETTINGS['lr']} --seed {SETTINGS['seed']} --epochs {epochs} "
        f"--threads 1 --no-tensorboard --no-progress --out {shlex.quote(str(run_dir))}"
    )
    print(f"$ torchrun {arguments}")
    command = [sys.executable, "-m", "torch.distributed.run", *shlex.split(arguments)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(command, check=True, env=environment, stdout=subprocess.DEVNULL)


# --8<-- [end:torchrun]


def show_curves(single: list[dict], parallel: list[dict], resumed_after: int, path: Path) -> None:
    """Validation and training ELBO per epoch of the two runs."""
    figure, axis = plt.subplots(figsize=(5.6, 3.4))
    for history, label, style in ((single, "1 process", "o-"), (parallel, "2 processes", "s--")):
        epochs = [row["epoch"] for row in history]
        axis.plot(epochs, [row["val_elbo"] for row in history], style, label=f"{label}: validation")
        axis.plot(
            epochs,
            [row["train_elbo"] for row in history],
            style,
            alpha=0.4,
            label=f"{label}: training",
        )
    axis.axvline(resumed_after + 0.5, color="0.6", lw=1)
    axis.annotate(
        " 2-process run resumed\n with 1 process",
        (resumed_after + 0.5, 0.05),
        xycoords=("data", "axes fraction"),
        fontsize=8,
        color="0.4",
    )
    axis.set_xlabel("epoch")
    axis.set_ylabel("ELBO (nats per image)")
    axis.set_xticks([row["epoch"] for row in single])
    axis.legend(fontsize=7)
    save(figure, path)


def show_samples(samples: torch.Tensor, path: Path) -> None:
    """Save 48 samples (48, 1, 28, 28) as a 4 × 12 grid."""
    grid = samples[:, 0].reshape(4, 12, 28, 28).permute(0, 2, 1, 3).reshape(4 * 28, 12 * 28)
    figure, axis = plt.subplots(figsize=(6.0, 2.2))
    axis.imshow(grid.numpy(), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    axis.set_title("samples of the streamed run (decoder means)", fontsize=9)
    axis.axis("off")
    save(figure, path)


def main(argv: list[str] | None = None) -> int:
    setup = start(NAME, __doc__, argv)
    scale = SMALL if setup.small else FULL
    out, figures = setup.out, setup.figures

    rows = out / "rows.npy"
    write_rows(rows, scale.rows)
    print(f"wrote {rows}: {rows.stat().st_size / 1e6:.1f} MB, {scale.rows:,} rows")
    times = {}

    # --8<-- [start:stream]
    # = aevb train --dataset rows.npy --stream --latent-dim 16 --hidden 200 --batch-size 200 …
    config = aevb.TrainConfig(
        dataset=str(rows), stream=True, epochs=scale.epochs, tensorboard=False, **SETTINGS
    )
    clock = time.perf_counter()
    summary = aevb.train(config, out / "streamed", progress=False)
    times["streamed, 1 process"] = time.perf_counter() - clock
    run = aevb.load_run(out / "streamed")
    test = run.split("test", limit=scale.eval_rows)  # held-out rows, kept in memory
    result = run.evaluate(test, importance_samples=scale.importance_samples)
    torch.manual_seed(0)
    samples = run.sample(48)
    # --8<-- [end:stream]

    # --8<-- [start:parallel]
    clock = time.perf_counter()
    torchrun_train(rows, out / "parallel", processes=2, epochs=scale.parallel_epochs)
    times["torchrun, 2 processes"] = time.perf_counter() - clock
    clock = time.perf_counter()
    resumed = aevb.resume(out / "parallel", epochs=scale.epochs, progress=False)  # 1 process
    times["resumed, 1 process"] = time.perf_counter() - clock
    # --8<-- [end:parallel]

    single, parallel = run.history, aevb.load_run(out / "parallel").history  # per epoch
    show_curves(single, parallel, scale.parallel_epochs, figures / f"{NAME}-curves.png")
    show_samples(samples, figures / f"{NAME}-samples.png")

    for label, seconds in times.items():
        print(f"{label}: {seconds:.1f} s (start-up and final evaluation included)")
    print("epoch | 1 process: val ELBO, seconds | 2 processes, then 1: val ELBO, seconds")
    for a, b in zip(single, parallel, strict=True):
        print(
            f"{a['epoch']:>5} | {a['val_elbo']:>8.2f} {a['epoch_seconds']:>6.1f} s"
            f" | {b['val_elbo']:>8.2f} {b['epoch_seconds']:>6.1f} s"
        )
    print(
        f"test ELBO: streamed {summary['test_elbo']:.2f}, "
        f"2 processes then 1 {resumed['test_elbo']:.2f} nats"
    )
    print(
        f"streamed run on {result.num_examples} test rows, k = {result.importance_samples}: "
        f"log p(x) {result.log_likelihood:.2f} ± {result.log_likelihood_se:.2f}, "
        f"ELBO {result.elbo:.2f}"
    )
    return setup.finish()


if __name__ == "__main__":
    raise SystemExit(main())
