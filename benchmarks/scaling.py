"""Scale-out measurements: streamed against in-memory training, and data-parallel processes.

``stream``: writes an .npy file of MNIST-like rows — the 70,000 MNIST images repeated with
their pixels jittered, ``--gigabytes`` in all (784 float32 values a row) — then trains the
paper's model (784-500-20, batch 100) on it for ``--steps`` steps twice, each in a fresh
process: streamed (``--stream``) and loaded into memory (``--no-stream``). Reports each
process's peak resident memory (VmHWM), its start-up time (loading, or the streaming pass
that chooses the transforms and fingerprints the file) and its training samples per second
over steps 2 … ``--steps``, and the ratios streamed ÷ in memory.

``ddp``: one epoch of MNIST (the paper's model) with ``torchrun --nproc-per-node N`` for N in
``--processes`` (one thread each) against one process with as many threads, all in fresh
processes: epoch seconds, samples per second and the test ELBO, and each ratio to one process.

    python benchmarks/scaling.py stream --gigabytes 5 --steps 3000 --data-dir ../shared/data
    python benchmarks/scaling.py ddp --processes 2 --batch-size 100 --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from aevb.data import load_dataset

ROW_BYTES = 784 * 4


def write_rows(path: Path, gigabytes: float, data_dir: str) -> int:
    """MNIST's 70,000 images, repeated with uniform jitter of ±1/255 (clipped to [0, 1]),
    until the file holds ``gigabytes`` GB; returns its rows."""
    mnist = load_dataset("mnist", data_dir)
    images = np.concatenate([mnist.train, mnist.val, mnist.test]).reshape(-1, 784)
    rows = int(gigabytes * 1e9 // ROW_BYTES)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, 784))
    rng = np.random.default_rng(0)
    for start in range(0, rows, len(images)):
        chunk = images[: min(len(images), rows - start)]
        jitter = rng.uniform(-1 / 255, 1 / 255, chunk.shape).astype(np.float32)
        out[start : start + len(chunk)] = np.clip(chunk + jitter, 0, 1)
    out.flush()
    del out
    return rows


def run_child(command: list[str], env: dict | None = None) -> float:
    """Run ``command``; return its wall seconds."""
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def measure_stream(args: argparse.Namespace) -> None:
    folder = Path(args.work or tempfile.mkdtemp(prefix="aevb-scaling-"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "rows.npy"
    if not path.exists():
        started = time.perf_counter()
        rows = write_rows(path, args.gigabytes, args.data_dir)
        print(f"wrote {path}: {rows:,} rows, {path.stat().st_size / 1e9:.2f} GB, "
              f"{time.perf_counter() - started:.0f} s")  # fmt: skip
    results = {}
    for mode in args.modes:
        out = folder / f"run-{mode}"
        subprocess.run(["rm", "-rf", str(out)], check=True)
        command = [sys.executable, __file__, "child", str(path), str(out), mode,
                   str(args.steps), str(args.threads)]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{mode} failed:\n{done.stderr[-3000:]}")
        results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
        print(mode, json.dumps(results[mode]))
    if {"stream", "no-stream"} <= results.keys():
        s, m = results["stream"], results["no-stream"]
        print(
            f"streamed ÷ in memory: peak RSS {s['peak_rss_gb']:.2f} ÷ {m['peak_rss_gb']:.2f} GB "
            f"= {s['peak_rss_gb'] / m['peak_rss_gb']:.3f}; samples/s {s['samples_per_s']:.0f} ÷ "
            f"{m['samples_per_s']:.0f} = {s['samples_per_s'] / m['samples_per_s']:.3f}; start-up "
            f"{s['startup_s']:.1f} ÷ {m['startup_s']:.1f} s"
        )


class _Enough(Exception):
    pass


def child(path: str, out: str, mode: str, steps: int, threads: int) -> None:
    """``steps`` training steps of a run in this process; prints a JSON line."""
    import torch

    from aevb.runs import TrainConfig, start_run
    from aevb.train import Callback

    class StopAfter(Callback):
        """Times steps 2 … ``steps``: the steady state, without the epoch's start (an
        in-memory epoch draws its permutation and binarization of the whole table first)."""

        def on_step_end(self, trainer) -> None:
            if trainer.state.step == 1:
                self.started = time.perf_counter()
            if trainer.state.step == steps:
                self.seconds = time.perf_counter() - self.started
                raise _Enough

    torch.set_num_threads(threads)
    started = time.perf_counter()
    config = TrainConfig(
        dataset=path, stream=mode == "stream", epochs=1, batch_size=100, hidden=(500,),
        latent_dim=20, device="cpu", val_fraction=0.001, compile=False,
    )  # fmt: skip
    clock = StopAfter()
    session = start_run(config, out, progress=False, callbacks=[clock])
    startup = time.perf_counter() - started
    try:
        session.trainer.fit(1)
    except _Enough:
        pass
    finally:
        session.close()
    print(json.dumps({
        "mode": mode, "file_gb": os.path.getsize(path) / 1e9,
        "train_rows": session.trainer.data.num_examples, "steps": steps,
        "samples_per_s": (steps - 1) * 100 / clock.seconds, "startup_s": startup,
        "peak_rss_gb": peak_rss() / 1e9,
    }))  # fmt: skip


def peak_rss() -> int:
    """This process's peak resident memory in bytes (VmHWM: unlike ``ru_maxrss``, not
    inherited from the parent across exec)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))


def measure_ddp(args: argparse.Namespace) -> None:
    folder = Path(args.work or tempfile.mkdtemp(prefix="aevb-ddp-"))
    common = ["train", "--dataset", "mnist", "--data-dir", args.data_dir, "--epochs", "1",
              "--no-progress", "--seed", "0", "--batch-size", str(args.batch_size)]  # fmt: skip
    rows = {}
    for processes in [1, *args.processes]:
        out = folder / f"p{processes}"
        subprocess.run(["rm", "-rf", str(out)], check=True)
        if processes == 1:
            command = [sys.executable, "-m", "aevb", *common, "--threads", str(args.threads)]
            env = None
        else:
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                       "--nproc-per-node", str(processes), "-m", "aevb", *common]  # fmt: skip
            env = {**os.environ, "OMP_NUM_THREADS": str(max(1, args.threads // processes))}
        wall = run_child([*command, "--out", str(out)], env)
        summary = json.loads((out / "summary.json").read_text())
        record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
        rows[processes] = {
            "processes": processes,
            "epoch_seconds": record["epoch_seconds"],
            "samples_per_s": 50_000 / record["epoch_seconds"],
            "train_elbo": record["train_elbo"],
            "test_elbo": summary["test_elbo"],
            "wall_seconds": wall,
        }
        print(json.dumps(rows[processes]))
    for processes, row in rows.items():
        if processes != 1:
            ratio = rows[1]["epoch_seconds"] / row["epoch_seconds"]
            print(f"{processes} processes: epoch {row['epoch_seconds']:.2f} s against "
                  f"{rows[1]['epoch_seconds']:.2f} s alone: speed-up {ratio:.2f}×; test ELBO "
                  f"{row['test_elbo']:.2f} against {rows[1]['test_elbo']:.2f}")  # fmt: skip


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    stream = commands.add_parser("stream", help="streamed against in-memory training")
    stream.add_argument("--gigabytes", type=float, default=5.0)
    stream.add_argument("--steps", type=int, default=3000)
    stream.add_argument("--modes", nargs="+", default=["stream", "no-stream"])
    ddp = commands.add_parser("ddp", help="data-parallel processes against one")
    ddp.add_argument("--processes", type=int, nargs="+", default=[2])
    ddp.add_argument("--batch-size", type=int, default=100, help="the global batch")
    for sub in (stream, ddp):
        sub.add_argument("--data-dir", default=os.environ.get("AEVB_DATA_DIR", "data"))
        sub.add_argument("--threads", type=int, default=2)
        sub.add_argument("--work", help="folder for the data and runs (default: a temporary one)")
    args = parser.parse_args()
    if args.command == "stream":
        measure_stream(args)
    else:
        measure_ddp(args)


if __name__ == "__main__":
    main()
