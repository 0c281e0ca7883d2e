"""A mixture of Gaussians: the simplest latent-variable model, with a discrete latent.

p(x) = Σ_n λ_n N(x; μ_n, σ_n²), z ∈ {1..K}. Because z takes finitely many values, log p(x) is
a finite sum and can be computed exactly, and so can the ELBO E_q[log p(x, z) − log q(z|x)] and
KL(q(z|x) ‖ p(z|x)) for any q. The script checks log p(x) = ELBO + KL for three choices of q and
fits the mixture by EM, which is coordinate ascent on the ELBO. All values are in nats per data
point, computed in float64.

    python examples/mixture_of_gaussians.py --out mog-example --seed 0
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

TRUE_WEIGHTS = np.array([0.3, 0.5, 0.2])
TRUE_MEANS = np.array([-2.0, 0.5, 3.0])
TRUE_STDS = np.array([0.5, 0.8, 0.4])
NUM_POINTS = 2000
EM_ITERATIONS = 100
HARD_EPSILON = 0.05
LOG_2PI = math.log(2.0 * math.pi)


def logsumexp(a: np.ndarray, axis: int = -1, keepdims: bool = False) -> np.ndarray:
    """log Σ exp(a) along axis, shifted by the maximum so that nothing overflows or underflows.

    Same result as scipy.special.logsumexp for finite input, several times faster on small K.
    """
    peak = a.max(axis=axis, keepdims=True)
    out = peak + np.log(np.exp(a - peak).sum(axis=axis, keepdims=True))
    return out if keepdims else np.squeeze(out, axis=axis)


def xlogx(q: np.ndarray) -> np.ndarray:
    """q log q elementwise, with 0 log 0 = 0."""
    return q * np.log(np.where(q > 0, q, 1.0))


def sample_mixture(
    num_points: int,
    weights: np.ndarray,
    means: np.ndarray,
    stds: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw z ~ Categorical(λ), then x ~ N(μ_z, σ_z²).

    Returns x with shape (N,) (float64) and the component indices z with shape (N,) (int).
    """
    z = rng.choice(len(weights), size=num_points, p=weights)
    x = rng.normal(means[z], stds[z])
    return x, z


def log_joint(
    x: np.ndarray, weights: np.ndarray, means: np.ndarray, stds: np.ndarray
) -> np.ndarray:
    """log p(x, z=n) = log λ_n + log N(x; μ_n, σ_n²) in nats.

    x has shape (N,), the parameters shape (K,); the result has shape (N, K).
    """
    x = np.asarray(x, dtype=np.float64)[:, None]
    standardised = (x - means) / stds
    log_normal = -0.5 * (standardised**2 + LOG_2PI) - np.log(stds)
    return np.log(weights) + log_normal


def exact_log_likelihood(
    x: np.ndarray, weights: np.ndarray, means: np.ndarray, stds: np.ndarray
) -> np.ndarray:
    """log p(x) = log Σ_n p(x, z=n), by logsumexp over the K components; shape (N,), nats."""
    return logsumexp(log_joint(x, weights, means, stds), axis=1)


def log_posterior(
    x: np.ndarray, weights: np.ndarray, means: np.ndarray, stds: np.ndarray
) -> np.ndarray:
    """log p(z=n | x) = log p(x, z=n) − log p(x); shape (N, K), nats."""
    joint = log_joint(x, weights, means, stds)
    return joint - logsumexp(joint, axis=1, keepdims=True)


def posterior(
    x: np.ndarray, weights: np.ndarray, means: np.ndarray, stds: np.ndarray
) -> np.ndarray:
    """The responsibilities p(z=n | x); shape (N, K), rows sum to 1."""
    return np.exp(log_posterior(x, weights, means, stds))


def prior_q(num_points: int, weights: np.ndarray) -> np.ndarray:
    """q(z|x) = p(z) = λ for every point, ignoring x; shape (N, K)."""
    return np.broadcast_to(weights, (num_points, len(weights))).copy()


def hard_q(x: np.ndarray, means: np.ndarray, epsilon: float = HARD_EPSILON) -> np.ndarray:
    """Mass 1 − ε on the component whose mean is nearest x, ε/(K − 1) on each other one.

    x has shape (N,), means shape (K,); the result has shape (N, K), rows sum to 1.
    """
    x = np.asarray(x, dtype=np.float64)
    num_components = len(means)
    nearest = np.argmin(np.abs(x[:, None] - means), axis=1)
    q = np.full((len(x), num_components), epsilon / (num_components - 1))
    q[np.arange(len(x)), nearest] = 1.0 - epsilon
    return q


def elbo(
    x: np.ndarray, q: np.ndarray, weights: np.ndarray, means: np.ndarray, stds: np.ndarray
) -> np.ndarray:
    """ELBO(x) = Σ_n q(n|x) [log p(x, z=n) − log q(n|x)], exactly (no sampling).

    q has shape (N, K) with rows summing to 1; terms with q = 0 contribute 0. Shape (N,), nats.
    """
    joint = log_joint(x, weights, means, stds)
    expected_joint = np.where(q > 0, q * joint, 0.0).sum(axis=1)
    entropy = -xlogx(q).sum(axis=1)
    return expected_joint + entropy


def kl_to_posterior(
    x: np.ndarray, q: np.ndarray, weights: np.ndarray, means: np.ndarray, stds: np.ndarray
) -> np.ndarray:
    """KL(q(z|x) ‖ p(z|x)) = Σ_n q(n|x) [log q(n|x) − log p(z=n|x)]; shape (N,), nats, ≥ 0."""
    log_post = log_posterior(x, weights, means, stds)
    return (xlogx(q) - np.where(q > 0, q * log_post, 0.0)).sum(axis=1)


def m_step(
    x: np.ndarray, q: np.ndarray, min_std: float = 1e-3
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The θ maximising the ELBO for fixed q(z|x): weighted counts, means and standard deviations.

    x has shape (N,), q shape (N, K); returns λ, μ, σ, each of shape (K,).
    """
    counts = q.sum(axis=0)
    weights = counts / counts.sum()
    means = (q * x[:, None]).sum(axis=0) / counts
    variances = (q * (x[:, None] - means) ** 2).sum(axis=0) / counts
    return weights, means, np.maximum(np.sqrt(variances), min_std)


@dataclass
class EMFit:
    """The result of `em_fit`. Histories are means over the data, nats per point.

    log_likelihood[t] is log p(x; θ_t) for t = 0..T (θ_0 the initialisation); elbo[t − 1] is
    ELBO(q_{t−1}, θ_t): the bound with q from the E-step at θ_{t−1}, evaluated after the M-step.
    Then log p(x; θ_{t−1}) ≤ elbo[t − 1] ≤ log p(x; θ_t).
    """

    weights: np.ndarray
    means: np.ndarray
    stds: np.ndarray
    log_likelihood: np.ndarray
    elbo: np.ndarray


def em_fit(
    x: np.ndarray, num_components: int = 3, iterations: int = EM_ITERATIONS, seed: int = 0
) -> EMFit:
    """Fit a K-component 1-D mixture of Gaussians to x (shape (N,)) by EM.

    Initialisation (seeded): means at the data's (n + ½)/K quantiles plus N(0, (0.1 s)²) noise,
    for s the data's standard deviation; every σ equal to s; uniform weights. (Means at K random
    data points often put two in one cluster, and EM then stops at a poorer local maximum.)
    Each iteration is an E-step q = p(z|x; θ) (the bound becomes tight) followed by the M-step
    θ = argmax_θ ELBO(q, θ).
    """
    x = np.asarray(x, dtype=np.float64)
    rng = np.random.default_rng(seed)
    quantiles = np.quantile(x, (np.arange(num_components) + 0.5) / num_components)
    means = np.sort(quantiles + rng.normal(0.0, 0.1 * x.std(), num_components))
    stds = np.full(num_components, x.std())
    weights = np.full(num_components, 1.0 / num_components)
    log_likelihood = [exact_log_likelihood(x, weights, means, stds).mean()]
    bounds = []
    for _ in range(iterations):
        q = posterior(x, weights, means, stds)
        weights, means, stds = m_step(x, q)
        bounds.append(elbo(x, q, weights, means, stds).mean())
        log_likelihood.append(exact_log_likelihood(x, weights, means, stds).mean())
    return EMFit(weights, means, stds, np.array(log_likelihood), np.array(bounds))


def sort_by_mean(
    weights: np.ndarray, means: np.ndarray, stds: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reorder the components by increasing mean (mixtures are identified up to permutation)."""
    order = np.argsort(means)
    return weights[order], means[order], stds[order]


def complete_data_standard_errors(
    num_points: int, weights: np.ndarray, stds: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Standard errors of λ̂, μ̂, σ̂ had the labels z been observed; each shape (K,).

    √(λ(1 − λ)/N), σ/√(Nλ), σ/√(2Nλ). With z unobserved the errors are larger (the missing
    information); `standard_errors` estimates those.
    """
    counts = num_points * weights
    return (
        np.sqrt(weights * (1.0 - weights) / num_points),
        stds / np.sqrt(counts),
        stds / np.sqrt(2.0 * counts),
    )


def standard_errors(
    x: np.ndarray, weights: np.ndarray, means: np.ndarray, stds: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Standard errors of the maximum-likelihood λ̂, μ̂, σ̂ from the observed-data information.

    The information is estimated by the outer product of the per-point scores ∇_θ log p(x_i; θ)
    = Σ_n p(z=n|x_i) ∇_θ log p(x_i, z=n; θ), with θ = (λ_1..λ_{K−1}, μ, σ) and λ_K = 1 − Σ λ_n.
    x has shape (N,); returns three arrays of shape (K,).
    """
    x = np.asarray(x, dtype=np.float64)
    num_components = len(weights)
    r = posterior(x, weights, means, stds)
    d = x[:, None] - means
    scores = np.concatenate(
        [
            r[:, :-1] / weights[:-1] - r[:, -1:] / weights[-1],
            r * d / stds**2,
            r * (d**2 / stds**3 - 1.0 / stds),
        ],
        axis=1,
    )
    covariance = np.linalg.inv(scores.T @ scores)
    free = num_components - 1
    weight_cov = covariance[:free, :free]
    variances = np.diag(covariance)
    return (
        np.sqrt(np.append(np.diag(weight_cov), weight_cov.sum())),
        np.sqrt(variances[free : free + num_components]),
        np.sqrt(variances[free + num_components :]),
    )


def mixture_density(
    grid: np.ndarray, weights: np.ndarray, means: np.ndarray, stds: np.ndarray
) -> np.ndarray:
    """p(x) on a grid of shape (G,); shape (G,)."""
    return np.exp(exact_log_likelihood(grid, weights, means, stds))


def make_figure(x: np.ndarray, fit: EMFit) -> Figure:
    """Histogram with true and fitted densities; EM's log p(x) and ELBO per iteration."""
    fig = Figure(figsize=(9, 3.5), dpi=100, layout="constrained")
    left, right = fig.subplots(1, 2)
    grid = np.linspace(x.min() - 0.5, x.max() + 0.5, 400)
    left.hist(x, bins=60, density=True, color="0.8", label=f"data (N={len(x)})")
    left.plot(grid, mixture_density(grid, TRUE_WEIGHTS, TRUE_MEANS, TRUE_STDS), label="true")
    left.plot(grid, mixture_density(grid, fit.weights, fit.means, fit.stds), "--", label="EM fit")
    left.set_xlabel("x")
    left.set_ylabel("density")
    left.set_title("data and densities", fontsize="medium")
    left.legend(frameon=False, fontsize="small")

    iterations = np.arange(len(fit.log_likelihood))
    right.plot(iterations, fit.log_likelihood, label=r"$\log p(x;\theta_t)$")
    right.plot(iterations[1:], fit.elbo, "--", label=r"ELBO$(q_{t-1}, \theta_t)$")
    right.set_xscale("symlog", linthresh=1.0)
    right.set_xlabel("EM iteration t")
    right.set_ylabel("nats per point")
    right.set_title("EM: mean over the data", fontsize="medium")
    right.legend(frameon=False, fontsize="small")
    return fig


def summary_table(x: np.ndarray, fit: EMFit, epsilon: float = HARD_EPSILON) -> str:
    """The numbers the script reports, as markdown."""
    params = (TRUE_WEIGHTS, TRUE_MEANS, TRUE_STDS)
    log_px = exact_log_likelihood(x, *params)
    choices = {
        "exact posterior p(z\\|x)": posterior(x, *params),
        "prior p(z) = λ": prior_q(len(x), TRUE_WEIGHTS),
        f"hard, ε = {epsilon:g}": hard_q(x, TRUE_MEANS, epsilon),
    }
    lines = [
        f"N = {len(x)} points; true parameters; log p(x) = {log_px.mean():.6f} nats/point "
        "(exact, a sum over z).",
        "",
        "| q(z\\|x) | ELBO | KL(q ‖ p(z\\|x)) | log p(x) − ELBO | max \\|log p − ELBO − KL\\| |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, q in choices.items():
        bound = elbo(x, q, *params)
        kl = kl_to_posterior(x, q, *params)
        residual = np.abs(log_px - bound - kl).max()
        lines.append(
            f"| {name} | {bound.mean():.6f} | {kl.mean():.6f} | {(log_px - bound).mean():.6f} "
            f"| {residual:.1e} |"
        )

    steps = np.diff(fit.log_likelihood)
    lines += [
        "",
        f"EM, K = {len(fit.weights)}, {len(fit.elbo)} iterations: log p(x) from "
        f"{fit.log_likelihood[0]:.6f} to {fit.log_likelihood[-1]:.6f} (true parameters: "
        f"{log_px.mean():.6f}); smallest step {steps.min():.1e}; "
        f"max ELBO − log p(x) {(fit.elbo - fit.log_likelihood[1:]).max():.1e} (≤ 0); "
        f"final gap {fit.log_likelihood[-1] - fit.elbo[-1]:.1e}.",
        "",
        "Fitted components, sorted by mean; ± is the standard error from the observed-data "
        "information.",
        "",
        "| component | λ true | λ̂ | μ true | μ̂ | σ true | σ̂ |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    weights, means, stds = sort_by_mean(fit.weights, fit.means, fit.stds)
    weight_se, mean_se, std_se = standard_errors(x, weights, means, stds)
    for n in range(len(weights)):
        lines.append(
            f"| {n + 1} | {TRUE_WEIGHTS[n]:.3f} | {weights[n]:.3f} ± {weight_se[n]:.3f} "
            f"| {TRUE_MEANS[n]:.3f} | {means[n]:.3f} ± {mean_se[n]:.3f} "
            f"| {TRUE_STDS[n]:.3f} | {stds[n]:.3f} ± {std_se[n]:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="mog-example", help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="seeds the data and EM's start")
    parser.add_argument(
        "--figure", default=None, help="figure path (default OUT/mixture_of_gaussians.png)"
    )
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    x, _ = sample_mixture(NUM_POINTS, TRUE_WEIGHTS, TRUE_MEANS, TRUE_STDS, rng)
    fit = em_fit(x, num_components=len(TRUE_WEIGHTS), iterations=EM_ITERATIONS, seed=args.seed)

    table = summary_table(x, fit)
    print(table, end="")
    (out / "summary.md").write_text(table, encoding="utf-8")
    figure_path = Path(args.figure) if args.figure else out / "mixture_of_gaussians.png"
    figure_path.parent.mkdir(parents=True, exist_ok=True)
    make_figure(x, fit).savefig(figure_path)
    print(f"wrote {out / 'summary.md'} and {figure_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
