"""Importance-sampled log-likelihood: aevb's batched evaluator against a per-datapoint loop.

Both compute log (1/k) Σ_i p(x, z_i)/q(z_i|x) with k draws from the encoder for the first N
test images of a trained run; the reference loop handles one datapoint at a time (all k
samples at once), as several libraries do. Times come from one process; compare the ratio.

    python benchmarks/eval_speed.py RUN_DIR --num-examples 200 --importance-samples 5000
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from aevb.evaluation import evaluate
from aevb.objectives import latent_samples
from aevb.runs import load_run


@torch.no_grad()
def per_datapoint(model, x: torch.Tensor, k: int) -> float:
    total = 0.0
    for row in x:
        log_w = latent_samples(model, row[None], k).log_weights
        total += float(torch.logsumexp(log_w, 0) - math.log(k))
    return total / len(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--num-examples", type=int, default=200)
    parser.add_argument("--importance-samples", type=int, default=5000)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    run = load_run(args.run_dir, device=args.device)
    model = run.model
    x = run.prepare(run.split("test", args.num_examples))
    k, n = args.importance_samples, len(x)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}; "
        f"{n} test images × {k} samples"
    )
    timings = {}
    for name, run in (
        ("per-datapoint loop", lambda: per_datapoint(model, x, k)),
        ("aevb evaluate", lambda: evaluate(model, x, k).log_likelihood),
    ):
        started = time.perf_counter()
        value = run()
        timings[name] = time.perf_counter() - started
        print(
            f"{name:<20} log p(x) {value:9.3f}   {timings[name]:7.2f} s   "
            f"{n * k / timings[name]:9.0f} samples/s"
        )
    ratio = timings["per-datapoint loop"] / timings["aevb evaluate"]
    print(
        f"aevb is {ratio:.2f}× the per-datapoint loop; the full 10k test set at this rate: "
        f"{10_000 * k / (n * k / timings['aevb evaluate']) / 60:.1f} min"
    )


if __name__ == "__main__":
    main()
