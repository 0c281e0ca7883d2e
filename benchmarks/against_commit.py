"""The paper model's training epoch, this checkout against an earlier commit, in one process.

Two processes on a shared two-core machine drift apart by more than the few percent an issue
may cost (three runs of train_speed.py gave aevb ÷ bare from 0.91 to 1.28 for the same code),
so this benchmark loads both versions into one process and alternates their epochs (ABBA), so
that both see the same machine. The earlier commit's ``src/aevb`` is exported with ``git
archive`` into a temporary folder as a package ``aevb_<commit>`` (its absolute imports
renamed), trained with its own ``start_run`` and ``Trainer``; the epochs include the loop's
per-epoch work (validation, checkpoint), as in ``train_speed.py``'s aevb-plain.

    python benchmarks/against_commit.py 73ce488 --data-dir ../shared/data --rounds 10

Prints each version's median s/epoch, the per-round ratios (this ÷ that) and their median.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import io
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def export_package(commit: str, folder: Path) -> str:
    """Write ``commit``'s ``src/aevb`` into ``folder`` as package ``aevb_<commit>``; its name."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", commit, "src/aevb"],
        check=True,
        capture_output=True,
    ).stdout
    name = "aevb_" + re.sub(r"\W", "_", commit)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    package = folder / name
    (folder / "src" / "aevb").rename(package)
    pattern = re.compile(r"\b(from|import) aevb\b|\"aevb\.")
    for path in package.rglob("*.py"):
        text = path.read_text()
        path.write_text(
            pattern.sub(
                lambda m: f'"{name}.' if m.group(0).startswith('"') else f"{m.group(1)} {name}",
                text,
            )
        )
    return name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("commit", help="the earlier commit (e.g. the one before an issue)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--rounds", type=int, default=10, help="timed epochs of each version")
    parser.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args()

    import aevb.runs as now_runs
    from aevb.data import load_dataset

    with tempfile.TemporaryDirectory() as tmp:
        name = export_package(args.commit, Path(tmp))
        sys.path.insert(0, tmp)
        then_runs = importlib.import_module(f"{name}.runs")
        then_data = importlib.import_module(f"{name}.data")
        settings = dict(
            dataset="mnist",
            latent_dim=20,
            hidden=(500,),
            batch_size=args.batch_size,
            device="cpu",
            epochs=args.rounds + 2,
            seed=0,
            compile=False,
        )
        versions = {
            "this": (now_runs, load_dataset),
            args.commit: (then_runs, then_data.load_dataset),
        }
        trainers, sessions = {}, []
        for label, (runs, load) in versions.items():
            dataset = load("mnist", args.data_dir)
            config = runs.TrainConfig(**settings)
            if hasattr(config, "tensorboard"):  # logging off: the loop itself is compared
                config = dataclasses.replace(config, tensorboard=False)
            session = runs.start_run(config, f"{tmp}/run-{label}", dataset=dataset, progress=False)
            sessions.append(session)
            trainers[label] = session.trainer
            session.trainer.setup(settings["epochs"])
        print(f"paper model on MNIST, batch {args.batch_size}, {args.rounds} rounds (ABBA)")
        times: dict[str, list[float]] = {label: [] for label in trainers}
        order = list(trainers)
        for round_index in range(args.rounds + 1):  # round 0 warms up and is discarded
            for label in order if round_index % 2 == 0 else order[::-1]:
                started = time.perf_counter()
                trainers[label].train_epoch()
                if round_index:
                    times[label].append(time.perf_counter() - started)
        for session in sessions:
            if hasattr(session, "close"):
                session.close()
    for label, values in times.items():
        shown = " ".join(f"{v:.2f}" for v in values)
        print(f"{label:>10}: median {statistics.median(values):.3f} s/epoch ({shown})")
    ratios = [a / b for a, b in zip(times["this"], times[args.commit], strict=True)]
    print("this ÷ " + args.commit + " per round: " + " ".join(f"{r:.3f}" for r in ratios))
    print(f"median ratio {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
