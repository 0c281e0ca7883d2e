"""The seed notes' contrasts (SPEC §5), each as a function that trains, measures and plots.

* :func:`autoencoder_vs_vae` — a plain autoencoder and a VAE on the same networks, data,
  optimiser, seed and epochs. The autoencoder's code space is irregular: nothing makes its
  codes fill N(0, I), so decoded prior draws and decoded midpoints between codes need not
  look like data. The KL term of the VAE is meant to make the space continuous and complete.
* :func:`pca_vs_linear_vae` — PCA, a linear autoencoder and a linear-Gaussian VAE. A linear
  autoencoder finds the PCA subspace (Baldi & Hornik 1989); a linear VAE with σ fixed at the
  probabilistic-PCA value has the pPCA maximum-likelihood solution as its global optimum
  (Tipping & Bishop 1999; Lucas et al. 2019), so its *exact* log-likelihood, computable in
  closed form, must reach pPCA's.

Each writes ``results.csv`` (its numbers), a PNG figure and ``summary.md`` into an output
folder and returns the numbers as a dict. Distances are mean squared errors per pixel; all
log-likelihoods and ELBOs are nats per example (summed over dimensions, averaged over rows).
"""

from __future__ import annotations

import csv
import functools
import io
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Circle
from scipy.linalg import subspace_angles
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from tqdm.auto import tqdm

from aevb.builders import mlp
from aevb.data import Dataset, TensorLoader, load_dataset
from aevb.errors import AevbError, ConfigError
from aevb.models import VAE
from aevb.objectives import make_objective
from aevb.plots import image_grid
from aevb.runs import CONFIG_FILE, TrainConfig, load_run, train
from aevb.storage import atomic_write_bytes, atomic_write_text, make_folder
from aevb.train import Callback, Trainer, make_optimizer

__all__ = [
    "autoencoder_vs_vae",
    "gaussian_kl_to_standard_normal",
    "linear_gaussian_elbo",
    "nearest_neighbour_distance",
    "pca_vs_linear_vae",
    "ppca_fit",
    "ppca_log_likelihood",
]

MODELS = ("autoencoder", "vae")


# ---------------------------------------------------------------------------------------------
# Shared measurements
# ---------------------------------------------------------------------------------------------


def nearest_neighbour_distance(
    queries: np.ndarray | Tensor, reference: np.ndarray | Tensor, chunk: int = 8192
) -> np.ndarray:
    """Mean squared error per dimension from each query row to its nearest reference row.

    queries: (N, D), reference: (M, D) → (N,). Computed as ‖a‖² + ‖b‖² − 2a·b over chunks of
    the reference in float32 (the rounding, ~1e-7 of ‖a‖², is far below the distances).
    """
    q = torch.as_tensor(np.asarray(queries, dtype=np.float32))
    r_all = torch.as_tensor(np.asarray(reference, dtype=np.float32))
    q_norm = q.square().sum(1, keepdim=True)
    best = torch.full((len(q),), math.inf)
    for start in range(0, len(r_all), chunk):
        r = r_all[start : start + chunk]
        squared = q_norm + r.square().sum(1) - 2 * q @ r.T
        best = torch.minimum(best, squared.min(1).values)
    return (best.clamp(min=0) / q.shape[1]).double().numpy()


def gaussian_kl_to_standard_normal(mean: np.ndarray, covariance: np.ndarray) -> float:
    """KL(N(mean, covariance) ‖ N(0, I)) in nats: ½(tr Σ + μᵀμ − d − log det Σ)."""
    mean = np.asarray(mean, dtype=np.float64)
    covariance = np.asarray(covariance, dtype=np.float64)
    _, log_det = np.linalg.slogdet(covariance)
    return 0.5 * float(np.trace(covariance) + mean @ mean - len(mean) - log_det)


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence]) -> None:
    def cell(value) -> str:
        if value is None:
            return ""
        if isinstance(value, float):
            return f"{value:.10g}"
        return str(value)

    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(header)
    for row in rows:
        writer.writerow([cell(v) for v in row])
    atomic_write_text(path, text.getvalue())


def _save_png(figure: Figure, path: Path, dpi: int) -> None:
    """Write ``figure`` as a PNG with a 256-colour palette: grey-scale digit grids and a few
    line colours lose nothing visible, and the file is about a third of the RGBA one."""
    from PIL import Image  # matplotlib's own dependency

    canvas = FigureCanvasAgg(figure)
    figure.set_dpi(dpi)
    canvas.draw()
    rgb = Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3])
    buffer = io.BytesIO()
    rgb.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(
        buffer, format="png", optimize=True
    )
    atomic_write_bytes(path, buffer.getvalue())


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


# ---------------------------------------------------------------------------------------------
# 1. Autoencoder vs VAE: irregular vs regular latent space
# ---------------------------------------------------------------------------------------------

# What each row of the autoencoder-vs-VAE results means (also the CSV's description column).
AE_VAE_METRICS: dict[str, str] = {
    "train_seconds": "training time (s)",
    "test_reconstruction": "test log p(x | z = E_q[z|x]), nats per example (the AE's objective)",
    "test_elbo": "test ELBO, nats per example (estimator B, 1 draw; VAE only)",
    "recon_nn_mse": "mean NN distance of test reconstructions to the training set (MSE/pixel)",
    "prior_nn_mse": "mean NN distance of decoded z ~ N(0, I)",
    "midpoint_nn_mse": "mean NN distance of decoded midpoints of two test codes",
    "fitted_nn_mse": "mean NN distance of decoded z ~ N(mean, cov) fitted to training codes",
    "prior_nn_ratio": "prior_nn_mse / recon_nn_mse (1 = as close to data as a reconstruction)",
    "midpoint_nn_ratio": "midpoint_nn_mse / recon_nn_mse",
    "fitted_nn_ratio": "fitted_nn_mse / recon_nn_mse",
    "prior_like_data": "fraction of decoded prior draws within the 90th percentile of "
    "reconstructions' NN distance (reconstructions: 0.9)",
    "midpoint_like_data": "same fraction for decoded midpoints",
    "fitted_like_data": "same fraction for draws from the Gaussian fitted to the codes",
    "prior_coverage_ratio": "coverage: mean distance from each validation image to its nearest "
    "decoded prior draw / the same to its nearest test reconstruction (equal set sizes; 1 = "
    "the draws cover the data as well as reconstructions do)",
    "fitted_coverage_ratio": "the same coverage ratio for draws from the Gaussian fitted to the "
    "codes",
    "path_length_ratio": "pixel-space length of the decoded interpolation / distance between "
    "its ends (1 = straight, no detour)",
    "max_step_share": "largest of the interpolation's pixel-space steps / their sum "
    "(1/(steps-1) = even, 1 = one jump)",
    "code_mean_norm": "‖mean of the test codes (posterior means)‖",
    "code_cov_eig_min": "smallest eigenvalue of the test codes' covariance",
    "code_cov_eig_max": "largest eigenvalue of the test codes' covariance",
    "code_kl": "KL(Gaussian fitted to the test codes ‖ N(0, I)), nats",
    "aggregate_kl": "KL(Gaussian moment-matched to the aggregate posterior q(z) ‖ N(0, I)), "
    "nats (VAE only: the AE's variance head is untrained)",
}


@torch.no_grad()
def _decode(model: VAE, z: Tensor, batch: int = 4096) -> Tensor:
    """Decoder means for z: (N, latent_dim) → (N, data_dim), flattened."""
    means = [model.likelihood(z[s : s + batch]).mean for s in range(0, len(z), batch)]
    return torch.cat(means).flatten(1)


@torch.no_grad()
def _encode(model: VAE, x: Tensor, batch: int = 4096) -> tuple[Tensor, Tensor]:
    """Posterior means and variances of q(z|x) for x: (N, *data_shape) → two (N, latent_dim)
    tensors."""
    means, variances = [], []
    for s in range(0, len(x), batch):
        q = model.posterior(x[s : s + batch])
        means.append(q.mean)
        variances.append(q.variance)
    return torch.cat(means), torch.cat(variances)


@torch.no_grad()
def _reconstruction_log_likelihood(model: VAE, x: Tensor, codes: Tensor) -> float:
    """Mean log p(x | z = code) over rows, nats."""
    total = 0.0
    for s in range(0, len(x), 4096):
        total += float(model.likelihood(codes[s : s + 4096]).log_prob(x[s : s + 4096]).sum())
    return total / len(x)


def _pairs(num_pairs: int, labels: np.ndarray | None, n: int, rng: np.random.Generator):
    """``num_pairs`` index pairs of distinct rows (of different labels where labels exist)."""
    if n < 2:
        raise AevbError("interpolation needs at least two test images")
    any_pair = labels is None or len(np.unique(labels)) == 1
    pairs: list[tuple[int, int]] = []
    while len(pairs) < num_pairs:
        i, j = (int(v) for v in rng.choice(n, 2, replace=False))
        if any_pair or labels[i] != labels[j]:
            pairs.append((i, j))
    return np.array(pairs)


def _analyse_latent_space(
    model: VAE,
    test_x: Tensor,
    train_codes_x: Tensor,
    train_grey: np.ndarray,
    val_grey: np.ndarray,
    recon_index: np.ndarray,
    pairs: np.ndarray,
    eps: Tensor,
    steps: int,
) -> tuple[dict, dict]:
    """The numbers of :data:`AE_VAE_METRICS` for one model, and the images for the figure."""
    codes, variances = _encode(model, test_x)
    recon = _decode(model, codes[recon_index])
    z_a, z_b = codes[pairs[:, 0]], codes[pairs[:, 1]]
    midpoints = _decode(model, 0.5 * (z_a + z_b))
    t = torch.linspace(0, 1, steps)[None, :, None]
    path_z = (1 - t) * z_a[:, None] + t * z_b[:, None]  # (pairs, steps, latent_dim)
    paths = _decode(model, path_z.reshape(-1, codes.shape[1])).reshape(len(pairs), steps, -1)
    prior = _decode(model, eps)
    train_codes, _ = _encode(model, train_codes_x)
    fit_mean = train_codes.double().mean(0)
    fit_cov = torch.atleast_2d(torch.cov(train_codes.double().T))
    jitter = 1e-9 * float(fit_cov.diagonal().mean()) * torch.eye(len(fit_mean), dtype=torch.float64)
    fitted_z = fit_mean + eps.double() @ torch.linalg.cholesky(fit_cov + jitter).T
    fitted = _decode(model, fitted_z.float())

    d_recon = nearest_neighbour_distance(recon, train_grey)
    d_prior = nearest_neighbour_distance(prior, train_grey)
    d_mid = nearest_neighbour_distance(midpoints, train_grey)
    d_fit = nearest_neighbour_distance(fitted, train_grey)
    # Coverage, the other half of completeness: draws may all look like data yet show only
    # one kind of digit. Distances from held-out validation images to the nearest draw, over
    # those to the nearest reconstruction (sets of equal size).
    cover_recon = nearest_neighbour_distance(val_grey, recon).mean()
    cover_prior = nearest_neighbour_distance(val_grey, prior).mean()
    cover_fit = nearest_neighbour_distance(val_grey, fitted).mean()
    threshold = float(np.quantile(d_recon, 0.9))
    step_norms = (paths[:, 1:] - paths[:, :-1]).norm(dim=-1).double()  # (pairs, steps − 1)
    ends = (paths[:, -1] - paths[:, 0]).norm(dim=-1).double()
    length = step_norms.sum(1)
    # Pairs whose decoded ends coincide have no defined ratio; they are left out.
    moved = ends > 1e-6
    code_mean = codes.double().mean(0).numpy()
    code_cov = np.atleast_2d(np.cov(codes.double().numpy().T))
    aggregate_cov = code_cov + np.diag(variances.double().mean(0).numpy())
    eigenvalues = np.linalg.eigvalsh(code_cov)
    metrics = {
        "test_reconstruction": _reconstruction_log_likelihood(model, test_x, codes),
        "recon_nn_mse": float(d_recon.mean()),
        "prior_nn_mse": float(d_prior.mean()),
        "midpoint_nn_mse": float(d_mid.mean()),
        "fitted_nn_mse": float(d_fit.mean()),
        "prior_nn_ratio": float(d_prior.mean() / d_recon.mean()),
        "midpoint_nn_ratio": float(d_mid.mean() / d_recon.mean()),
        "fitted_nn_ratio": float(d_fit.mean() / d_recon.mean()),
        "prior_like_data": float((d_prior <= threshold).mean()),
        "midpoint_like_data": float((d_mid <= threshold).mean()),
        "fitted_like_data": float((d_fit <= threshold).mean()),
        "prior_coverage_ratio": float(cover_prior / cover_recon),
        "fitted_coverage_ratio": float(cover_fit / cover_recon),
        "path_length_ratio": float((length[moved] / ends[moved]).mean()),
        "max_step_share": float((step_norms.max(1).values[moved] / length[moved]).mean()),
        "code_mean_norm": float(np.linalg.norm(code_mean)),
        "code_cov_eig_min": float(eigenvalues.min()),
        "code_cov_eig_max": float(eigenvalues.max()),
        "code_kl": gaussian_kl_to_standard_normal(code_mean, code_cov),
        "aggregate_kl": gaussian_kl_to_standard_normal(code_mean, aggregate_cov),
    }
    images = {
        "codes": codes.numpy(),
        "paths": paths.numpy(),
        "prior": prior.numpy(),
        "fitted": fitted.numpy(),
    }
    return metrics, images


def _plot_ae_vae(
    path: Path,
    images: dict[str, dict],
    metrics: dict[str, dict],
    test_grey: np.ndarray,
    pairs: np.ndarray,
    labels: np.ndarray | None,
    image_shape: tuple[int, ...],
    num_show: int = 6,
    num_draws: int = 48,
) -> None:
    """Interpolations, prior draws, draws from the fitted Gaussian and (2-D latents) the code
    scatter; autoencoder left, VAE right."""
    latent_dim = images["vae"]["codes"].shape[1]
    rows = 4 if latent_dim == 2 else 3
    figure = Figure(figsize=(10, 3.9 * rows))
    grid = figure.add_gridspec(rows, 2, height_ratios=[0.8, 1.0, 1.0, 1.3][:rows])
    titles = {"autoencoder": "Autoencoder", "vae": "VAE"}
    show = pairs[:num_show]
    for column, name in enumerate(MODELS):
        m = metrics[name]
        paths = images[name]["paths"][:num_show]
        tiles = []
        for (i, j), path_images in zip(show, paths, strict=True):
            tiles += [test_grey[i], *path_images, test_grey[j]]
        ncols = paths.shape[1] + 2
        axes = figure.add_subplot(grid[0, column])
        axes.imshow(
            image_grid(np.array(tiles).reshape(-1, *image_shape), ncols=ncols),
            cmap="gray",
            vmin=0,
            vmax=1,
            interpolation="nearest",
        )
        axes.set_title(
            f"{titles[name]}: decoded straight lines between two test codes\n(ends: the test "
            f"images; midpoint NN ratio {m['midpoint_nn_ratio']:.2f})",
            fontsize=9,
        )
        axes.axis("off")
        for row, key, what in (
            (1, "prior", "z ~ N(0, I)"),
            (2, "fitted", "z ~ N(mean, cov) of its training codes"),
        ):
            axes = figure.add_subplot(grid[row, column])
            draws = np.clip(images[name][key][:num_draws], 0, 1)
            axes.imshow(
                image_grid(draws.reshape(-1, *image_shape), ncols=8),
                cmap="gray",
                vmin=0,
                vmax=1,
                interpolation="nearest",
            )
            axes.set_title(
                f"{titles[name]}: decoded {what}\n(NN ratio {m[f'{key}_nn_ratio']:.2f}, "
                f"{100 * m[f'{key}_like_data']:.0f}% like data, coverage ratio "
                f"{m[f'{key}_coverage_ratio']:.2f})",
                fontsize=9,
            )
            axes.axis("off")
        if latent_dim == 2:
            axes = figure.add_subplot(grid[3, column])
            codes = images[name]["codes"][:3000]
            colours = None if labels is None else labels[: len(codes)]
            scatter = axes.scatter(
                codes[:, 0],
                codes[:, 1],
                c=colours,
                cmap="tab10",
                s=3,
                alpha=0.6,
                linewidths=0,
                rasterized=True,
            )
            for radius, style in ((1, "-"), (2, "--")):
                axes.add_patch(
                    Circle(
                        (0, 0),
                        radius,
                        fill=False,
                        color="k",
                        linestyle=style,
                        linewidth=1.2,
                        label=f"N(0, I) {radius}σ",
                    )
                )
            axes.set_aspect("equal", adjustable="datalim")
            axes.autoscale_view()
            axes.set_title(
                f"{titles[name]}: test codes E_q[z|x] by label\n(KL of fitted Gaussian to "
                f"N(0, I): {m['code_kl']:.2f} nats)",
                fontsize=9,
            )
            axes.legend(loc="upper right", fontsize=7)
            if labels is not None and column == 1:
                figure.colorbar(scatter, ax=axes, ticks=range(10), shrink=0.8)
    figure.tight_layout()
    _save_png(figure, path, dpi=70)


def autoencoder_vs_vae(
    out_dir: Path,
    dataset: str = "mnist",
    data_dir: str | None = None,
    latent_dim: int = 2,
    epochs: int = 5,
    hidden: tuple[int, ...] = (500,),
    seed: int = 0,
    progress: bool = True,
    *,
    batch_size: int = 100,
    lr: float = 1e-3,
    device: str = "auto",
    num_points: int = 500,
    num_pairs: int = 200,
    steps: int = 8,
) -> dict:
    """Train a plain autoencoder and a VAE alike, and measure how regular their codes are.

    Both use :func:`aevb.runs.train` with the same networks (``hidden``, ``latent_dim``), data
    (the library's default likelihood and binarization for ``dataset``), Adam (``lr``,
    ``batch_size``), ``seed`` and ``epochs``; only the objective differs ("autoencoder" vs
    "sgvb-b"). Runs go to ``out_dir/runs/{autoencoder,vae}`` (which must not exist yet); the
    last checkpoint of each is analysed, so both had the same number of updates.

    Measured on ``num_points`` test images, ``num_pairs`` pairs of test images of different
    labels and as many latent draws ε ~ N(0, I) as test images, shared by both models: each
    decoded image's mean squared distance per pixel to its nearest *training* image (grey
    values), relative to the same for reconstructions of test images (fidelity); the distance
    from ``num_points`` validation images to the nearest decoded draw, relative to the nearest
    reconstruction (coverage); the interpolations' smoothness; and the test codes' moments
    against N(0, I). See :data:`AE_VAE_METRICS`.

    Writes ``results.csv``, ``contrast-ae-vae.png`` and ``summary.md`` into ``out_dir``;
    returns ``{"autoencoder": metrics, "vae": metrics, "reference": ..., "settings": ...}``.
    """
    out_dir = Path(out_dir)
    for name in MODELS:
        if (out_dir / "runs" / name / CONFIG_FILE).exists():
            raise AevbError(f"{out_dir} already holds contrast runs; choose another folder")
    make_folder(out_dir)
    data = load_dataset(dataset, data_dir, progress=progress)
    if not data.is_image:
        raise AevbError(f"{dataset} is not an image dataset; this contrast decodes images")
    summaries, models = {}, {}
    for name, objective in zip(MODELS, ("autoencoder", "sgvb-b"), strict=True):
        config = TrainConfig(
            dataset=dataset,
            data_dir=data_dir,
            latent_dim=latent_dim,
            hidden=tuple(hidden),
            objective=objective,
            optimizer="adam",
            lr=lr,
            batch_size=batch_size,
            epochs=epochs,
            seed=seed,
            device=device,
        )
        summaries[name] = train(config, out_dir / "runs" / name, dataset=data, progress=progress)
        models[name] = load_run(out_dir / "runs" / name, which="last").model
    vae_run = load_run(out_dir / "runs" / "vae", which="last")
    binarize = vae_run.config.binarize
    # Flat grey images, for distances between images.
    train_grey, test_grey, val_grey = (
        split.reshape(len(split), -1) for split in (data.train, data.test, data.val)
    )

    rng = np.random.default_rng(seed)
    test_x = vae_run.prepare(data.test)
    recon_index = rng.permutation(len(test_x))[: min(num_points, len(test_x))]
    num_draws = len(recon_index)  # as many draws as reconstructions, for the coverage ratio
    val_rows = rng.permutation(len(data.val))[:num_points]
    if len(val_rows) == 0:
        raise AevbError("the coverage measurement needs a validation split (val_fraction > 0)")
    train_rows = rng.permutation(len(data.train))[:10_000]
    train_codes_x = vae_run.prepare(data.train[np.sort(train_rows)])
    pairs = _pairs(num_pairs, data.test_labels, len(test_x), rng)
    eps = torch.randn(num_draws, latent_dim, generator=torch.Generator().manual_seed(seed))
    metrics, images = {}, {}
    for name in MODELS:
        metrics[name], images[name] = _analyse_latent_space(
            models[name],
            test_x,
            train_codes_x,
            train_grey,
            val_grey[np.sort(val_rows)],
            recon_index,
            pairs,
            eps,
            steps,
        )
        metrics[name]["train_seconds"] = summaries[name]["train_seconds"]
    metrics["vae"]["test_elbo"] = summaries["vae"]["test_elbo"]
    metrics["autoencoder"]["test_elbo"] = None
    metrics["autoencoder"]["aggregate_kl"] = None
    test_nn = nearest_neighbour_distance(test_grey[recon_index], train_grey)
    reference = {"test_images_nn_mse": float(test_nn.mean())}
    settings = {
        "dataset": dataset,
        "latent_dim": latent_dim,
        "hidden": list(hidden),
        "epochs": epochs,
        "seed": seed,
        "batch_size": batch_size,
        "lr": lr,
        "likelihood": vae_run.config.likelihood,
        "binarize": binarize,
        "num_points": len(recon_index),
        "num_pairs": num_pairs,
        "steps": steps,
    }

    rows = [
        (key, metrics["autoencoder"].get(key), metrics["vae"].get(key), description)
        for key, description in AE_VAE_METRICS.items()
    ]
    rows.append(
        (
            "test_images_nn_mse",
            reference["test_images_nn_mse"],
            reference["test_images_nn_mse"],
            "mean NN distance of the test images themselves (grey) to the training set",
        )
    )
    _write_csv(out_dir / "results.csv", ("metric", "autoencoder", "vae", "description"), rows)
    _plot_ae_vae(
        out_dir / "contrast-ae-vae.png",
        images,
        metrics,
        test_grey,
        pairs,
        data.test_labels,
        data.event_shape,
    )
    lines = [
        f"# Autoencoder vs VAE on {dataset}",
        "",
        f"Same networks (hidden {tuple(hidden)}, latent {latent_dim}), data "
        f"({settings['likelihood']} likelihood, binarize {binarize}), Adam (lr {lr:g}, batch "
        f"{batch_size}), seed {seed}, {epochs} epochs; only the objective differs.",
        "NN = mean squared distance per pixel to the nearest training image; ratios are "
        "relative to test reconstructions (1 = as close to the data as a reconstruction).",
        "",
        "| metric | autoencoder | VAE |",
        "|---|---:|---:|",
    ]
    for key, ae, vae, _ in rows:
        lines.append(f"| {key} | {_fmt(ae, 4)} | {_fmt(vae, 4)} |")
    atomic_write_text(out_dir / "summary.md", "\n".join(lines) + "\n")
    return {
        "autoencoder": metrics["autoencoder"],
        "vae": metrics["vae"],
        "reference": reference,
        "settings": settings,
    }


# ---------------------------------------------------------------------------------------------
# 2. PCA vs linear autoencoder vs linear VAE: probabilistic PCA in closed form
# ---------------------------------------------------------------------------------------------


def ppca_fit(x: np.ndarray, latent_dim: int) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """Maximum-likelihood probabilistic PCA in closed form (Tipping & Bishop 1999, eqs. 7–8).

    x: (N, D). With S the sample covariance normalised by N (the MLE; scikit-learn's PCA
    divides by N − 1): b = mean, σ² = mean of the D − k discarded eigenvalues of S,
    W = U_k (Λ_k − σ²I)^{1/2}. Returns W (D, k), b (D,), σ² and all eigenvalues (descending).
    """
    x = np.asarray(x, dtype=np.float64)
    b = x.mean(0)
    centred = x - b
    eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred / len(x))
    eigenvalues, eigenvectors = eigenvalues[::-1], eigenvectors[:, ::-1]
    noise_variance = float(eigenvalues[latent_dim:].mean())
    W = eigenvectors[:, :latent_dim] * np.sqrt(eigenvalues[:latent_dim] - noise_variance)
    return W, b, noise_variance, eigenvalues


def ppca_log_likelihood(x: np.ndarray, W: np.ndarray, b: np.ndarray, noise_variance: float):
    """Exact mean log N(x; b, WWᵀ + σ²I) over the rows of x: (N, D), nats (float64)."""
    x = np.asarray(x, dtype=np.float64)
    covariance = W @ W.T + noise_variance * np.eye(len(b))
    cholesky = np.linalg.cholesky(covariance)
    whitened = np.linalg.solve(cholesky, (x - b).T)
    log_det = 2 * np.log(np.diag(cholesky)).sum()
    return float(
        -0.5 * (whitened**2).sum(0).mean() - 0.5 * log_det - 0.5 * len(b) * math.log(2 * math.pi)
    )


def linear_gaussian_elbo(
    x: np.ndarray,
    W: np.ndarray,
    b: np.ndarray,
    noise_variance: float,
    mean: np.ndarray,
    variance: np.ndarray,
) -> float:
    """Exact mean ELBO over rows for p(x|z) = N(Wz + b, σ²I), p(z) = N(0, I), and
    q(z|x_i) = N(mean_i, diag variance_i): (N, D), (N, k), (N, k) → nats (float64).

    E_q log p(x|z) = log N(x; Wμ + b, σ²I) − Σ_j s_j²‖W_j‖²/(2σ²); KL = ½Σ(μ² + s² − 1 − log s²).
    """
    x, mean, variance = (np.asarray(a, dtype=np.float64) for a in (x, mean, variance))
    residual = x - mean @ W.T - b
    expected = (
        -0.5 * x.shape[1] * math.log(2 * math.pi * noise_variance)
        - (residual**2).sum(1) / (2 * noise_variance)
        - variance @ (W**2).sum(0) / (2 * noise_variance)
    )
    kl = 0.5 * (mean**2 + variance - 1 - np.log(variance)).sum(1)
    return float((expected - kl).mean())


def _linear_weights(model: VAE) -> tuple[np.ndarray, np.ndarray]:
    """The decoder N(Wz + b, σ²I) of a ``hidden=()`` model: W (D, k), b (D,), float64."""
    (layer,) = model.decoder.network.layers
    return (
        layer.weight.detach().double().numpy().copy(),
        layer.bias.detach().double().numpy().copy(),
    )


def _largest_angle_degrees(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.degrees(subspace_angles(a, b).max()))


def _matched_columns(reference: np.ndarray, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Permute and sign-flip ``columns`` (D, k) to best match ``reference`` (D, k) by |cos|.

    Returns the matched columns and their |cosines| with the reference columns, (k,).
    """
    ref = reference / np.linalg.norm(reference, axis=0)
    col = columns / np.maximum(np.linalg.norm(columns, axis=0), 1e-300)
    cosines = ref.T @ col
    rows, order = linear_sum_assignment(-np.abs(cosines))
    matched = columns[:, order] * np.sign(cosines[rows, order])
    return matched, np.abs(cosines[rows, order])


class _EveryEpochs(Callback):
    """Calls ``check(epoch)`` every ``every`` epochs and after the last one."""

    def __init__(self, check, every: int):
        self.check, self.every = check, every

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        epoch = trainer.state.epoch
        if epoch % self.every == 0 or epoch == trainer.epochs:
            self.check(epoch)


def _fit_linear(
    model: VAE,
    objective_name: str,
    x: Tensor,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    on_check,
    check_every: int,
) -> float:
    """Adam on ``objective_name`` with a cosine-annealed learning rate, through the Trainer
    (no validation or checkpoints: an epoch here is one full-batch step); returns seconds.

    ``on_check(epoch)`` is called every ``check_every`` epochs and after the last one.
    """
    objective = make_objective(objective_name)
    optimiser = make_optimizer("adam", model.parameters(), lr)
    loader = TensorLoader(x, batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, epochs * len(loader))
    started = time.perf_counter()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        trainer = Trainer(
            model,
            objective,
            loader,
            optimiser,
            schedule,
            callbacks=[_EveryEpochs(on_check, check_every)],
        )
        trainer.fit(epochs)
    return time.perf_counter() - started


def _check_vae(
    model: VAE,
    train_x: Tensor,
    train64: np.ndarray,
    noise_variance: float,
    train_ll_ppca: float,
    records: dict[int, dict],
    epoch: int,
) -> None:
    """Record the linear VAE's exact training gap to pPCA and its exact training ELBO."""
    W, b = _linear_weights(model)
    with torch.no_grad():
        q = model.posterior(train_x)
    record = records.setdefault(epoch, {"epoch": epoch})
    record["vae_train_gap"] = train_ll_ppca - ppca_log_likelihood(train64, W, b, noise_variance)
    record["vae_train_elbo"] = linear_gaussian_elbo(
        train64, W, b, noise_variance, q.mean.double().numpy(), q.variance.double().numpy()
    )


def _check_ae(
    model: VAE,
    train64: np.ndarray,
    pca_error: float,
    records: dict[int, dict],
    epoch: int,
) -> None:
    """Record the linear AE's training reconstruction error above PCA's (per example).

    The affine maps x → code → x̂ are applied in float64, so the Eckart–Young bound
    error ≥ Σ_{j>k} λ_j holds for the recorded value up to float64 rounding.
    """
    (encoder,) = model.encoder.network.layers
    k = model.latent_dim
    A = encoder.weight.detach().double().numpy()[:k]
    c = encoder.bias.detach().double().numpy()[:k]
    W, b = _linear_weights(model)
    reconstruction = (train64 @ A.T + c) @ W.T + b
    error = float(((train64 - reconstruction) ** 2).sum(1).mean())
    records.setdefault(epoch, {"epoch": epoch})["ae_train_gap"] = error - pca_error


def _plot_pca(
    path: Path,
    results: dict[int, dict],
    curves: dict[int, list[dict]],
    columns: dict[str, np.ndarray],
    shown_k: int,
    image_shape: tuple[int, int] | None,
) -> None:
    """Angles, log-likelihoods, training curves and (image data) decoder columns."""
    ks = sorted(results)
    has_images = image_shape is not None
    figure = Figure(figsize=(11, 9 if has_images else 6.5), layout="constrained")
    if has_images:
        top, bottom = figure.subfigures(2, 1, height_ratios=[2, 1])
    else:
        top, bottom = figure, None
    grid = top.add_gridspec(2, 3)
    positions = np.arange(len(ks))
    axes = top.add_subplot(grid[0, 0])
    width = 0.38
    for offset, key, label in (
        (-width / 2, "angle_ae", "linear AE"),
        (width / 2, "angle_vae", "linear VAE"),
    ):
        axes.bar(positions + offset, [results[k][key] for k in ks], width, label=label)
    axes.set_xticks(positions, [str(k) for k in ks])
    axes.set_yscale("log")
    axes.set_xlabel("latent size k")
    axes.set_ylabel("largest principal angle to PCA (°)")
    axes.set_title("Decoder column space vs PCA subspace", fontsize=9)
    top_angle = max(max(results[k]["angle_ae"], results[k]["angle_vae"]) for k in ks)
    axes.set_ylim(top=top_angle * 100)  # room for the legend above the bars
    axes.legend(fontsize=7, loc="upper left", ncols=2)
    axes.grid(alpha=0.3, axis="y")

    axes = top.add_subplot(grid[0, 1])
    axes.plot(ks, [results[k]["ll_ppca"] for k in ks], "o-", label="pPCA (closed-form MLE)")
    axes.plot(
        ks,
        [results[k]["ll_vae_exact"] for k in ks],
        "x",
        markersize=9,
        label="linear VAE, exact log p(x)",
    )
    axes.plot(
        ks, [results[k]["elbo_vae"] for k in ks], "+", markersize=11, label="linear VAE, ELBO"
    )
    axes.plot(
        ks,
        [results[k]["ll_ppca_one_fewer"] for k in ks],
        "s:",
        color="grey",
        markersize=4,
        label="pPCA with k − 1",
    )
    axes.set_xlabel("latent size k")
    axes.set_ylabel("test log-likelihood (nats per example)")
    axes.set_title("Test log-likelihood", fontsize=9)
    axes.legend(fontsize=7)
    axes.grid(alpha=0.3)

    axes = top.add_subplot(grid[0, 2])
    differences = {
        "VAE exact − pPCA": [results[k]["ll_vae_exact"] - results[k]["ll_ppca"] for k in ks],
        "VAE ELBO − pPCA": [results[k]["elbo_vae"] - results[k]["ll_ppca"] for k in ks],
        "pPCA(k−1) − pPCA(k)": [
            results[k]["ll_ppca_one_fewer"] - results[k]["ll_ppca"] for k in ks
        ],
    }
    for i, (label, values) in enumerate(differences.items()):
        axes.bar(positions + (i - 1) * 0.27, values, 0.27, label=label)
    axes.set_xticks(positions, [str(k) for k in ks])
    axes.set_yscale("symlog", linthresh=1e-2)
    axes.axhline(0, color="k", linewidth=0.8)
    axes.set_xlabel("latent size k")
    axes.set_ylabel("difference in test log-lik (nats)")
    axes.set_title("Differences to pPCA (symlog scale)", fontsize=9)
    axes.legend(fontsize=7, loc="lower left")

    for column, (key, label) in enumerate(
        (
            ("vae_train_gap", "pPCA train log-lik − linear VAE exact train log-lik (nats)"),
            ("ae_train_gap", "linear AE train MSE − PCA's (per example)"),
        )
    ):
        axes = top.add_subplot(grid[1, column])
        for k in ks:
            epochs = [c["epoch"] for c in curves[k]]
            axes.plot(epochs, [max(c[key], 1e-15) for c in curves[k]], label=f"k = {k}")
        axes.set_yscale("log")
        axes.set_xlabel("epoch")
        axes.set_title(label, fontsize=9)
        axes.legend(fontsize=7)
        axes.grid(alpha=0.3)
    axes = top.add_subplot(grid[1, 2])
    for k in ks:
        axes.plot(
            [c["epoch"] for c in curves[k]],
            [c["vae_train_elbo"] for c in curves[k]],
            label=f"ELBO, k = {k}",
        )
        axes.axhline(results[k]["train_ll_ppca"], color="grey", linestyle=":", linewidth=0.8)
    axes.set_xlabel("epoch")
    axes.set_title("Linear VAE exact train ELBO (dotted: pPCA)", fontsize=9)
    axes.set_ylim(bottom=min(results[k]["train_ll_ppca"] for k in ks) - 15)
    axes.legend(fontsize=7)
    axes.grid(alpha=0.3)

    if bottom is not None and image_shape is not None:
        bottom.suptitle(
            f"Decoder columns at k = {shown_k}, each scaled to its largest |value| (VAE and AE "
            "columns permuted and sign-flipped to best match pPCA's)",
            fontsize=9,
        )
        rows = bottom.subplots(3, 1)
        for axes, (key, label) in zip(
            rows, (("ppca", "pPCA W"), ("vae", "linear VAE W"), ("ae", "linear AE W")), strict=True
        ):
            scaled = columns[key] / np.abs(columns[key]).max(0)
            tiles = [
                np.pad(c.reshape(image_shape), ((0, 0), (0, 1)), constant_values=np.nan)
                for c in scaled.T
            ]
            axes.imshow(np.hstack(tiles), cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
            axes.set_xticks([])
            axes.set_yticks([])
            axes.set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center")
            for side in axes.spines.values():
                side.set_visible(False)
    _save_png(figure, path, dpi=70)


def pca_vs_linear_vae(
    out_dir: Path,
    dataset: str = "digits",
    data_dir: str | None = None,
    latent_dims: tuple[int, ...] = (2, 5, 10),
    epochs: int = 10_000,
    seed: int = 0,
    progress: bool = True,
    *,
    lr: float = 0.05,
    batch_size: int | None = None,
    check_every: int = 50,
) -> dict:
    """PCA, a linear autoencoder and a linear VAE, per latent size k, against closed forms.

    For each k: scikit-learn's ``PCA(k)``; the pPCA MLE in closed form (:func:`ppca_fit`,
    covariance normalised by N); a linear autoencoder (``hidden=()``, Gaussian likelihood,
    objective "autoencoder") and a linear VAE (``hidden=()``, Gaussian likelihood with σ fixed
    at the pPCA MLE √σ², objective "sgvb-b", diagonal posterior), both from the same seeded
    initialisation, trained by Adam for ``epochs`` passes over the training split (default:
    full batch, so an epoch is one step) with the learning rate annealed from ``lr`` to 0 on
    a cosine (without annealing Adam keeps jittering around the optimum), through the
    :class:`~aevb.train.Trainer` with no run folder: no per-epoch checkpoint or validation,
    which would cost more than a full-batch step here.

    Measured: the largest principal angle (degrees) between the PCA subspace and each decoder's
    column space; the linear VAE's exact test log-likelihood from its decoder, N(b, WWᵀ + σ²I)
    in float64, against pPCA's and against pPCA with k − 1 components; its exact test ELBO
    (closed form, from its encoder's means and variances). Every ``check_every`` epochs the
    curves record the exact training gaps to the optimum, which theory says are ≥ 0 and reach
    0 at the global optimum (pPCA is the maximum of the training log-likelihood at this σ; PCA's
    reconstruction error Σ_{j>k} λ_j is the minimum of any rank-k affine map's).

    Writes ``results.csv``, ``curves.csv``, ``contrast-pca.png`` and ``summary.md`` into
    ``out_dir``; returns ``{"results": {k: numbers}, "settings": ...}``.
    """
    from sklearn.decomposition import PCA  # scikit-learn takes about a second to import

    out_dir = Path(out_dir)
    data: Dataset = load_dataset(dataset, data_dir, progress=progress)
    problems = []
    if not latent_dims or any(not 1 <= k < data.data_dim for k in latent_dims):
        problems.append(f"latent_dims must be in [1, {data.data_dim - 1}], got {latent_dims}")
    if epochs < 1 or check_every < 1 or lr <= 0 or (batch_size is not None and batch_size < 1):
        problems.append("epochs, check_every and batch_size must be positive, and lr > 0")
    if problems:
        raise ConfigError("invalid contrast settings: " + "; ".join(problems))
    make_folder(out_dir)
    # The linear models work on flat vectors.
    train_flat = np.ascontiguousarray(data.train.reshape(len(data.train), -1))
    test_flat = np.ascontiguousarray(data.test.reshape(len(data.test), -1))
    train_x = torch.from_numpy(train_flat)
    train64 = train_flat.astype(np.float64)
    test64 = test_flat.astype(np.float64)
    data_dim = data.data_dim
    batch = len(train_x) if batch_size is None else batch_size
    image_shape = data.event_shape[1:] if data.is_image and data.event_shape[0] == 1 else None
    results: dict[int, dict] = {}
    curves: dict[int, list[dict]] = {}
    shown_k = sorted(latent_dims)[len(latent_dims) // 2]
    columns: dict[str, np.ndarray] = {}
    for k in latent_dims:
        W_ppca, b_ppca, noise_variance, eigenvalues = ppca_fit(train64, k)
        W_fewer, b_fewer, noise_fewer, _ = ppca_fit(train64, k - 1)
        pca = PCA(n_components=k, svd_solver="full").fit(train64)
        sigma = math.sqrt(noise_variance)
        pca_error = float(eigenvalues[k:].sum())  # minimum mean ‖x − x̂‖² of rank-k maps
        train_ll_ppca = ppca_log_likelihood(train64, W_ppca, b_ppca, noise_variance)
        models = {}
        for name in ("ae", "vae"):
            with torch.random.fork_rng():  # the same initial networks for both
                torch.manual_seed(seed)
                models[name] = mlp(
                    (data_dim,), k, hidden=(), likelihood="gaussian", likelihood_std=sigma
                )
        records: dict[int, dict] = {}
        checks = {
            "ae": functools.partial(_check_ae, models["ae"], train64, pca_error, records),
            "vae": functools.partial(
                _check_vae,
                models["vae"],
                train_x,
                train64,
                noise_variance,
                train_ll_ppca,
                records,
            ),
        }
        seconds = {}
        for name, objective in (("ae", "autoencoder"), ("vae", "sgvb-b")):
            seconds[name] = _fit_linear(
                models[name],
                objective,
                train_x,
                epochs,
                lr,
                batch,
                seed,
                checks[name],
                check_every,
            )
            if progress:
                tqdm.write(
                    f"k = {k}: linear {name} trained in {seconds[name]:.1f} s", file=sys.stderr
                )
        log = [records[e] for e in sorted(records)]
        curves[k] = log

        W_vae, b_vae = _linear_weights(models["vae"])
        W_ae, _ = _linear_weights(models["ae"])
        with torch.no_grad():
            q = models["vae"].posterior(torch.from_numpy(test_flat))
        ll_vae = ppca_log_likelihood(test64, W_vae, b_vae, noise_variance)
        ll_ppca = ppca_log_likelihood(test64, W_ppca, b_ppca, noise_variance)
        ll_fewer = ppca_log_likelihood(test64, W_fewer, b_fewer, noise_fewer)
        matched_vae, cos_vae = _matched_columns(W_ppca, W_vae)
        matched_ae, cos_ae = _matched_columns(W_ppca, W_ae)
        subspace = pca.components_.T
        results[k] = {
            "latent_dim": k,
            "noise_variance": noise_variance,
            "sklearn_noise_variance": float(pca.noise_variance_),
            "eigengap_ratio": float(eigenvalues[k - 1] / eigenvalues[k]),
            "angle_ae": _largest_angle_degrees(subspace, W_ae),
            "angle_vae": _largest_angle_degrees(subspace, W_vae),
            "ll_ppca": ll_ppca,
            "ll_ppca_sklearn": float(pca.score(test64)),
            "ll_ppca_one_fewer": ll_fewer,
            "ll_vae_exact": ll_vae,
            "elbo_vae": linear_gaussian_elbo(
                test64,
                W_vae,
                b_vae,
                noise_variance,
                q.mean.double().numpy(),
                q.variance.double().numpy(),
            ),
            "ll_gap_relative": abs(ll_vae - ll_ppca) / abs(ll_ppca - ll_fewer),
            "train_ll_ppca": train_ll_ppca,
            "vae_train_gap": log[-1]["vae_train_gap"],
            "ae_train_gap": log[-1]["ae_train_gap"],
            "vae_column_min_cos": float(cos_vae.min()),
            "ae_column_min_cos": float(cos_ae.min()),
            "vae_column_norm_error": float(
                np.abs(
                    np.linalg.norm(matched_vae, axis=0) / np.linalg.norm(W_ppca, axis=0) - 1
                ).max()
            ),
            "seconds_ae": seconds["ae"],
            "seconds_vae": seconds["vae"],
        }
        if k == shown_k:
            shown = min(k, 6)
            columns = {
                "ppca": W_ppca[:, :shown],
                "vae": matched_vae[:, :shown],
                "ae": matched_ae[:, :shown],
            }

    keys = list(next(iter(results.values())))
    _write_csv(out_dir / "results.csv", keys, [[r[key] for key in keys] for r in results.values()])
    curve_keys = ["latent_dim", "epoch", "vae_train_gap", "vae_train_elbo", "ae_train_gap"]
    _write_csv(
        out_dir / "curves.csv",
        curve_keys,
        [[k, *[c[key] for key in curve_keys[1:]]] for k in curves for c in curves[k]],
    )
    _plot_pca(out_dir / "contrast-pca.png", results, curves, columns, shown_k, image_shape)
    settings = {
        "dataset": dataset,
        "latent_dims": list(latent_dims),
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch,
        "seed": seed,
        "sigma_convention": "σ² = pPCA MLE (covariance normalised by N) on the training split",
    }
    lines = [
        f"# PCA vs linear autoencoder vs linear VAE on {dataset}",
        "",
        f"Adam, lr {lr:g} cosine-annealed to 0, batch {batch}, {epochs} epochs, seed {seed}. "
        "σ² of the linear VAE = the pPCA MLE σ² (covariance / N) of the training split; "
        "log-likelihoods are test-set means in nats, exact (float64).",
        "",
        "| k | λ_k/λ_k+1 | angle AE (°) | angle VAE (°) | pPCA | VAE exact | VAE ELBO | "
        "pPCA k−1 | \\|VAE−pPCA\\| / \\|pPCA−pPCA k−1\\| | VAE min \\|cos\\| |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for k, r in results.items():
        lines.append(
            f"| {k} | {r['eigengap_ratio']:.3f} | {r['angle_ae']:.3f} | {r['angle_vae']:.3f} | "
            f"{r['ll_ppca']:.4f} | {r['ll_vae_exact']:.4f} | {r['elbo_vae']:.4f} | "
            f"{r['ll_ppca_one_fewer']:.4f} | {r['ll_gap_relative']:.2e} | "
            f"{r['vae_column_min_cos']:.4f} |"
        )
    atomic_write_text(out_dir / "summary.md", "\n".join(lines) + "\n")
    return {"results": results, "settings": settings}
