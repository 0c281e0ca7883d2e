"""Variance of the reparameterised (SGVB) and score-function gradients for the encoder.

For one trained model and one fixed batch, draws many independent gradient estimates of the
batch ELBO with respect to the encoder parameters φ and reports the total variance (the trace
of their covariance) for each estimator, and the ratios. This is the comparison that
motivates the reparameterisation trick (Kingma & Welling 2014, section 2.4).

    python examples/gradient_variance.py RUN_DIR --draws 200 --batch-size 100
"""

from __future__ import annotations

import argparse
import time

from aevb.diagnostics import gradient_variance
from aevb.objectives import SGVBA, SGVBB, ScoreFunction
from aevb.runs import load_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    run = load_run(args.run_dir)
    model = run.model.train()
    x = run.prepare(run.split("test", args.batch_size))  # as aevb evaluate sees them
    estimators = {
        "SGVB-B (reparameterised, analytic KL)": SGVBB(1),
        "SGVB-A (reparameterised, MC KL)": SGVBA(1),
        "score function, no baseline": ScoreFunction(1),
        "score function, leave-one-out baseline, k=2": ScoreFunction(2, baseline="mean"),
    }
    started = time.perf_counter()
    stats = gradient_variance(model, x, estimators, num_draws=args.draws, seed=args.seed)
    reference = stats["SGVB-B (reparameterised, analytic KL)"].total_variance
    print(
        f"encoder gradient of the batch-mean ELBO, {len(x)} test images, {args.draws} draws "
        f"each ({time.perf_counter() - started:.0f} s)"
    )
    print(f"{'estimator':<46}{'total variance':>16}{'÷ SGVB-B':>12}{'‖E g‖²':>12}")
    for name, s in stats.items():
        print(
            f"{name:<46}{s.total_variance:>16.4g}{s.total_variance / reference:>12.1f}"
            f"{s.mean_norm_squared:>12.4g}"
        )


if __name__ == "__main__":
    main()
