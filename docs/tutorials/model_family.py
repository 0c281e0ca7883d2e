"""Tutorial: the model family on one dataset — VAE, IWAE, IAF, VampPrior, two layers.

    python docs/tutorials/model_family.py [--small] [--out DIR]

Each member of aevb's model family is a setting of ``aevb.TrainConfig`` (a flag of ``aevb
train``): the objective, the posterior, the prior, a second stochastic layer. This script
trains five of them briefly with the same networks, data, optimiser and budget on
scikit-learn's bundled 8×8 digits (no dataset files needed), evaluates each one's test
log-likelihood by importance sampling, and compares them in a table and a bar chart.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from tutorial import save, start

import aevb

NAME = "model_family"


# --8<-- [start:scale]
@dataclasses.dataclass(frozen=True)
class Scale:
    """The sizes that differ between the tutorial and its CI check."""

    epochs: int  # passes over the 1,294 training digits
    hidden: tuple[int, ...]  # hidden layer of every encoder and decoder network
    seeds: tuple[int, ...]  # each member is trained once per seed
    importance_samples: int  # k draws per test digit for log p(x)


FULL = Scale(epochs=50, hidden=(128,), seeds=(0, 1), importance_samples=1000)
SMALL = Scale(epochs=3, hidden=(32,), seeds=(0,), importance_samples=30)
# --8<-- [end:scale]

# --8<-- [start:members]
# Each member: the TrainConfig fields (the `aevb train` flags) that make it.
MEMBERS: dict[str, dict] = {
    "VAE": {},  # SGVB estimator B, diagonal Gaussian q(z|x), N(0, I) prior
    "IWAE k=5": {"objective": "iwae", "samples": 5},  # --objective iwae --samples 5
    "IAF posterior": {"posterior": "iaf"},  # --posterior iaf (2 flow steps)
    "VampPrior": {"prior": "vamp", "prior_components": 50},  # --prior vamp --prior-components 50
    "two layers": {"top_latent_dim": 4, "top_hidden": (64,)},  # --top-latent-dim 4 --top-hidden 64
}
# --8<-- [end:members]


# --8<-- [start:train]
def train_member(settings: dict, seed: int, scale: Scale, run_dir: Path) -> dict:
    """Train one member on digits and evaluate it on the test split; its key numbers."""
    config = aevb.TrainConfig(
        dataset="digits",  # grey 8×8 digits, dynamically binarized for the Bernoulli decoder
        latent_dim=8,  # z (z₁ for the two-layer model)
        hidden=scale.hidden,
        epochs=scale.epochs,
        batch_size=64,
        seed=seed,
        tensorboard=False,
        **settings,
    )
    summary = aevb.train(config, run_dir, progress=False)
    run = aevb.load_run(run_dir)
    result = run.evaluate(run.split("test"), importance_samples=scale.importance_samples)
    return {
        "log_p": result.log_likelihood,
        "se": result.log_likelihood_se,
        "elbo": result.elbo,
        "active": result.active_units_per_layer or [result.active_units],
        "parameters": sum(p.numel() for p in run.model.parameters()),
        "seconds": summary["train_seconds"],
    }


# --8<-- [end:train]


def main(argv: list[str] | None = None) -> int:
    setup = start(NAME, __doc__, argv)
    scale = SMALL if setup.small else FULL
    out, figures = setup.out, setup.figures

    # --8<-- [start:run]
    results: dict[str, list[dict]] = {}
    for name, settings in MEMBERS.items():
        for seed in scale.seeds:
            run_dir = out / f"{name.lower().replace(' ', '-').replace('=', '')}-seed{seed}"
            results.setdefault(name, []).append(train_member(settings, seed, scale, run_dir))
            print(f"  {name}, seed {seed}: log p(x) {results[name][-1]['log_p']:.2f}")
    # --8<-- [end:run]

    # --8<-- [start:table]
    lines = [
        f"| member | test log p(x), k = {scale.importance_samples} | ELBO | log p(x) − ELBO "
        "| active units | parameters | training s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, rows in results.items():
        log_p = np.array([row["log_p"] for row in rows])
        elbo = np.array([row["elbo"] for row in rows])
        seeds = " / ".join(f"{value:.2f}" for value in log_p)  # one value per seed
        active = " / ".join("+".join(map(str, row["active"])) for row in rows)
        lines.append(
            f"| {name} | {log_p.mean():.2f} ({seeds}) | {elbo.mean():.2f} | "
            f"{(log_p - elbo).mean():.2f} | {active} | {rows[0]['parameters']:,} | "
            f"{np.mean([row['seconds'] for row in rows]):.1f} |"
        )
    table = "\n".join(lines)
    print(table)
    (out / f"{NAME}.md").write_text(table + "\n")
    # --8<-- [end:table]

    # --8<-- [start:figure]
    names = list(results)
    log_p = np.array([[row["log_p"] for row in results[name]] for name in names])  # (5, seeds)
    elbo = np.array([[row["elbo"] for row in results[name]] for name in names])
    gain = log_p - log_p[0].mean()  # against the plain VAE (the first member), nats per digit
    position = np.arange(len(names))
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    left.bar(position, gain.mean(1), color="tab:blue")
    for seed, values in zip(scale.seeds, gain.T, strict=True):
        left.plot(position, values, "k.", label="one seed" if seed == scale.seeds[0] else None)
    left.set_ylabel("test log p(x) − the VAE's (nats)")
    left.legend(fontsize=8)
    right.bar(position, (log_p - elbo).mean(1), color="tab:orange")
    right.set_ylabel("test log p(x) − ELBO (nats)")
    for axis in (left, right):
        axis.axhline(0, color="black", linewidth=0.8)
        axis.set_xticks(position, names, rotation=20)
        axis.grid(axis="y", alpha=0.3)
    save(figure, figures / f"{NAME}-bars.png")
    # --8<-- [end:figure]

    best = names[int(np.argmax(log_p.mean(1)))]
    print(
        f"\n{NAME} ({setup.scale_name} scale): best test log p(x) {best} "
        f"{log_p.mean(1).max():.2f}; spread over members {np.ptp(log_p.mean(1)):.2f} nats"
    )
    return setup.finish()


if __name__ == "__main__":
    raise SystemExit(main())
