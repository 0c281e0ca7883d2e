"""Semi-supervised MNIST with 100 labels: M2, and M1+M2 (Kingma, Rezende, Mohamed & Welling
2014, Table 1: 11.97% and 3.33% test error), each an ordinary run folder under ``--out``.

* **M2**: ``aevb train --dataset mnist --labels 100`` (through the API): a conditional VAE with
  a classifier q(y|x), 10 labelled images per class, the rest unlabelled.
* **M1+M2**: M1, a VAE trained on every training image without labels, then M2 trained on
  M1's posterior means z₁ = E[z|x] (a 50-dimensional table with a learned-variance Gaussian
  likelihood) with the same 100 labels. (The paper trains M2 on draws z₁ ~ q(z₁|x); the means
  are used here, which the CLI's table path can also do: encode with ``aevb embed``.)

The test error is the classifier's, argmax q(y|x) on the 10,000 test images. A run whose
folder holds a summary is not trained again, so the script resumes.

    python benchmarks/semi_supervised.py --data-dir ../shared/data --epochs 30 --out ssl
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from aevb.data import Dataset, load_dataset
from aevb.runs import TrainConfig, load_run, train

# Kingma et al. 2014: M2 with one hidden layer of 500 units and 50 latent units; M1 with two
# hidden layers of 600 and 50 latent units.
M2 = {"latent_dim": 50, "hidden": (500,), "activation": "softplus"}
M1 = {"latent_dim": 50, "hidden": (600, 600), "activation": "softplus"}
PUBLISHED = {"m2": 11.97, "m1m2": 3.33}


def _train(config: TrainConfig, run_dir: Path, dataset: Dataset | None = None) -> dict:
    if not (run_dir / "summary.json").exists():
        train(config, run_dir, dataset=dataset, progress=True)
    return json.loads((run_dir / "summary.json").read_text())


def _config(args: argparse.Namespace, **settings) -> TrainConfig:
    return TrainConfig(seed=args.seed, device=args.device, **settings)


def m2(args: argparse.Namespace) -> dict:
    config = _config(
        args, dataset="mnist", data_dir=args.data_dir, labels=args.labels, epochs=args.epochs, **M2
    )
    return _train(config, args.out / "m2")


@torch.no_grad()
def _codes(run_dir: Path, dataset: Dataset, device: str) -> Dataset:
    """The dataset with every split replaced by M1's posterior means (N, 50)."""
    run = load_run(run_dir, device=device)
    splits = {}
    for name in ("train", "val", "test"):
        rows = dataset.split(name)
        means = [
            run.encode(rows[start : start + 5000]).mean.cpu().numpy()
            for start in range(0, len(rows), 5000)
        ]
        splits[name] = np.ascontiguousarray(np.concatenate(means), dtype=np.float32)
    return Dataset(
        name="mnist-m1-codes",
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        binary=False,
        likelihood="gaussian-learned",
        train_labels=dataset.train_labels,
        val_labels=dataset.val_labels,
        test_labels=dataset.test_labels,
    )


def m1m2(args: argparse.Namespace) -> dict:
    m1_config = _config(
        args, dataset="mnist", data_dir=args.data_dir, epochs=args.m1_epochs or args.epochs, **M1
    )
    m1_summary = _train(m1_config, args.out / "m1")
    codes = _codes(args.out / "m1", load_dataset("mnist", args.data_dir), args.device)
    config = _config(args, dataset="mnist-m1-codes", labels=args.labels, epochs=args.epochs, **M2)
    summary = _train(config, args.out / "m1m2", dataset=codes)
    summary["m1_train_seconds"] = m1_summary["train_seconds"]
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", type=Path, default=Path("ssl"))
    parser.add_argument("--labels", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=30, help="epochs of each M2")
    parser.add_argument("--m1-epochs", type=int, default=None, help="epochs of M1 (--epochs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rows", nargs="+", default=["m2", "m1m2"], choices=["m2", "m1m2"])
    args = parser.parse_args()
    for row in args.rows:
        started = time.perf_counter()
        summary = (m2 if row == "m2" else m1m2)(args)
        result = {
            "row": row,
            "labels": args.labels,
            "epochs": summary["epochs"],
            "best_epoch": summary["best_epoch"],
            "test_error_percent": 100 * summary["test_error"],
            "published_percent": PUBLISHED[row],
            "test_elbo": summary["test_elbo"],
            "train_seconds": summary["train_seconds"],
            "m1_train_seconds": summary.get("m1_train_seconds"),
            "seconds_this_call": time.perf_counter() - started,
        }
        (args.out / f"{row}.json").write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result))


if __name__ == "__main__":
    main()
