"""Tutorial: MNIST end to end in Python — train, read the curves, evaluate log p(x), look.

    python docs/tutorials/mnist.py [--small] [--out DIR]

The same steps as ``aevb train``, ``aevb evaluate``, ``aevb sample`` and ``aevb reconstruct``,
through the public API: ``aevb.train`` writes a run folder, ``aevb.load_run`` opens it, and the
``Run``'s methods take images as loaded and apply the run's recorded transforms (here: the
binarization), so they give the numbers the commands give. Needs MNIST in ``AEVB_DATA_DIR``.
"""

from __future__ import annotations

import dataclasses

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.decomposition import PCA
from tutorial import save, start

import aevb
from aevb.plots import image_grid

NAME = "mnist"


# --8<-- [start:scale]
@dataclasses.dataclass(frozen=True)
class Scale:
    """The sizes that differ between the tutorial and its CI check."""

    epochs: int  # passes over MNIST's 54,000 training images
    hidden: tuple[int, ...]  # hidden layer of encoder and decoder (the paper's: 500)
    test_rows: int  # test images evaluated by importance sampling
    importance_samples: int  # k draws from q(z|x) per image


FULL = Scale(epochs=5, hidden=(500,), test_rows=1000, importance_samples=1000)
SMALL = Scale(epochs=1, hidden=(100,), test_rows=100, importance_samples=30)
# --8<-- [end:scale]


def main(argv: list[str] | None = None) -> int:
    setup = start(NAME, __doc__, argv)
    scale = SMALL if setup.small else FULL
    out, figures = setup.out, setup.figures

    # --8<-- [start:train]
    run_dir = out / "mnist"
    config = aevb.TrainConfig(
        dataset="mnist",  # read from AEVB_DATA_DIR, checked against the published checksums
        latent_dim=20,
        hidden=scale.hidden,
        epochs=scale.epochs,
        batch_size=100,
        lr=1e-3,  # Adam
        seed=0,
        tensorboard=False,  # curves are in metrics.jsonl either way
    )
    summary = aevb.train(config, run_dir, progress=False)
    print(f"test ELBO {summary['test_elbo']:.2f} nats after {summary['epochs']} epochs")
    # --8<-- [end:train]

    # --8<-- [start:curves]
    run = aevb.load_run(run_dir)  # the best epoch's weights, by validation ELBO
    history = run.history  # metrics.jsonl: one dict per epoch
    epochs = [row["epoch"] for row in history]
    figure, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2))
    left.plot(epochs, [row["train_elbo"] for row in history], "o-", label="train")
    left.plot(epochs, [row["val_elbo"] for row in history], "s--", label="validation")
    left.set(xlabel="epoch", ylabel="ELBO (nats per image)", title="the bound")
    right.plot(epochs, [-row["val_reconstruction"] for row in history], "o-", label="−E log p(x|z)")
    right.plot(epochs, [row["val_kl"] for row in history], "s-", label="KL(q(z|x) ‖ p(z))")
    right.set(xlabel="epoch", ylabel="nats per image", title="its two terms (validation)")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend()
    save(figure, figures / f"{NAME}-curves.png")
    # --8<-- [end:curves]

    # --8<-- [start:evaluate]
    test = run.split("test", limit=scale.test_rows)  # images as loaded: grey values in [0, 1]
    result = run.evaluate(test, importance_samples=scale.importance_samples)
    for quantity, value in result.rows():  # the table `aevb evaluate` prints
        print(f"  {quantity:34} {value}")
    # --8<-- [end:evaluate]

    # --8<-- [start:diagnostics]
    per_image = aevb.importance_diagnostics(
        run.model, run.prepare(test), importance_samples=scale.importance_samples
    )
    k_hat = per_image.pareto_k.numpy()
    ess = per_image.effective_sample_size.numpy() / scale.importance_samples
    figure, (left, right) = plt.subplots(1, 2, figsize=(8, 3))
    left.hist(k_hat[np.isfinite(k_hat)], bins=40, color="tab:blue")
    left.axvline(0.7, color="tab:red", linestyle="--", label="0.7: unreliable above")
    left.set(xlabel="Pareto k̂ of the importance weights", ylabel="test images")
    left.legend()
    right.hist(ess, bins=40, color="tab:green")
    right.set(xlabel="effective sample size ÷ k", ylabel="test images")
    save(figure, figures / f"{NAME}-diagnostics.png")
    # --8<-- [end:diagnostics]

    # --8<-- [start:samples]
    torch.manual_seed(0)
    samples = run.sample(64)  # decoder means (pixel probabilities) at z ~ N(0, I)
    originals = test[:32]
    reconstructions = run.reconstruct(originals)  # decoder means at the posterior means
    pairs = torch.stack([originals.view(4, 8, 1, 28, 28), reconstructions.view(4, 8, 1, 28, 28)])
    pairs = pairs.transpose(0, 1).reshape(64, 1, 28, 28)  # each row of 8 above its reconstruction
    figure, axes = plt.subplots(1, 2, figsize=(7.2, 3.9))
    for axis, images, title in (
        (axes[0], samples, "samples: decoder means at z ~ N(0, I)"),
        (axes[1], pairs, "test images (odd rows), reconstructions (even)"),
    ):
        grid = image_grid(images.numpy(), ncols=8)  # tiles (N, 1, H, W) into one image
        axis.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        axis.set_title(title, fontsize=10)
        axis.axis("off")
    save(figure, figures / f"{NAME}-samples.png")
    # --8<-- [end:samples]

    # --8<-- [start:latent]
    codes = run.encode(test).mean.numpy()  # E[z|x]: (N, 20), what `aevb embed` writes
    digits = run.labels("test", limit=scale.test_rows).numpy()
    plane = PCA(n_components=2).fit_transform(codes)
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6), width_ratios=(1, 1.2))
    left.bar(np.arange(1, result.latent_dim + 1), result.kl_per_dim, color="tab:purple")
    left.set(xlabel="latent unit", ylabel="KL (nats per image)", title="KL per latent unit")
    points = right.scatter(*plane.T, c=digits, cmap="tab10", s=6, vmin=-0.5, vmax=9.5)
    figure.colorbar(points, ax=right, ticks=range(10), label="digit")
    right.set(xlabel="1st principal direction", ylabel="2nd", title="posterior means, PCA")
    save(figure, figures / f"{NAME}-latent.png")
    # --8<-- [end:latent]

    diagnostics = result.importance_diagnostics
    print(
        f"\n{NAME} ({setup.scale_name} scale): "
        f"test ELBO {summary['test_elbo']:.2f} (all 10,000 images, estimator B); on "
        f"{result.num_examples} test images with k = {result.importance_samples}: log p(x) "
        f"{result.log_likelihood:.2f} ± {result.log_likelihood_se:.3f}, IWAE L_"
        f"{result.iwae_samples} {result.iwae_bound:.2f}, ELBO {result.elbo:.2f}, KL "
        f"{result.kl:.2f}, active units {result.active_units} of {result.latent_dim}"
    )
    if diagnostics is not None:
        print(
            f"importance weights: median ESS {diagnostics.ess_median:.1f} of k, median k̂ "
            f"{diagnostics.pareto_k_median:.2f}, {diagnostics.pareto_k_share_above:.1%} of the "
            f"images above 0.7; reliable: {diagnostics.reliable}"
        )
    print(
        f"the same from the command line: aevb evaluate {run_dir} --importance-samples "
        f"{scale.importance_samples} --num-examples {scale.test_rows}"
    )
    return setup.finish()


if __name__ == "__main__":
    raise SystemExit(main())
