"""``aevb reproduce``: each figure command end to end at a tiny scale on the real data, its
resumption, and the pieces the figures are built from."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import norm

from aevb.cli import main
from aevb.errors import AevbError
from aevb.experiments.reproduce import (
    elbo_measure,
    latent_grid,
    log_spaced_epochs,
    read_curve,
    train_with_curve,
)
from aevb.runs import TrainConfig
from aevb.train.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("single_thread")


def read_rows(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def reproduce(figure: str, out: Path, data_dir: Path, *extra: str) -> int:
    common = ["--out", str(out), "--data-dir", str(data_dir), "--no-progress"]
    return main(["reproduce", figure, *common, *extra])


def test_log_spaced_epochs_and_latent_grid():
    assert log_spaced_epochs(1, 12) == [1]
    epochs = log_spaced_epochs(1000, 8)
    assert epochs[0] == 1 and epochs[-1] == 1000 and epochs == sorted(set(epochs))
    ratios = np.diff(np.log(epochs))
    assert ratios.max() < 1.5 * ratios.min() + 1e-9  # evenly spaced in log scale
    grid = latent_grid(5)
    assert grid.shape == (25, 2)
    quantiles = norm.cdf(grid.numpy())
    np.testing.assert_allclose(np.unique(quantiles[:, 0].round(6)), np.linspace(0.05, 0.95, 5))
    assert grid[0, 1] > grid[-1, 1] and grid[0, 0] < grid[4, 0]  # top-left is (low z1, high z2)


def test_figure2_writes_every_point_and_resumes_without_retraining(tmp_path, data_dir):
    out = tmp_path / "figure2"
    # Frey Face has 1769 training images here: 3600 samples are 3 epochs per run.
    args = ("--dataset", "frey", "--latent-dims", "2", "--train-samples", "3600")
    assert reproduce("figure2", out, data_dir, *args) == 0
    rows = read_rows(out / "figure2-frey.csv")
    assert {(r["method"], r["split"]) for r in rows} == {
        (m, s) for m in ("aevb", "wake-sleep") for s in ("train", "test")
    }
    assert sorted({int(r["epoch"]) for r in rows}) == [1, 2, 3]
    assert all(np.isfinite(float(r["value"])) for r in rows)
    assert (out / "figure2-frey.png").stat().st_size > 10_000
    summary = (out / "figure2-frey.md").read_text()
    assert "| 2 | aevb | 5,307 |" in summary and "| 2 | wake-sleep |" in summary
    last = out / "runs" / "frey-z2-aevb" / "checkpoints" / "last.safetensors"
    written = last.stat().st_mtime_ns
    assert reproduce("figure2", out, data_dir, *args) == 0  # finished runs are reused
    assert read_rows(out / "figure2-frey.csv") == rows
    assert last.stat().st_mtime_ns == written
    # More samples continue the runs from their checkpoints; earlier points are kept.
    assert reproduce("figure2", out, data_dir, "--dataset", "frey", "--latent-dims", "2",
                     "--train-samples", "5400") == 0  # fmt: skip
    more = read_rows(out / "figure2-frey.csv")
    assert sorted({int(r["epoch"]) for r in more}) == [1, 2, 3, 4]
    assert [r for r in more if int(r["epoch"]) <= 3] == rows


def test_figure3_scores_all_three_methods_with_one_estimator(tmp_path, data_dir):
    out = tmp_path / "figure3"
    extra = ("--train-sizes", "1000", "--train-samples", "2000", "--eval-rows", "5")
    assert reproduce("figure3", out, data_dir, *extra, "--importance-samples", "20") == 0
    rows = read_rows(out / "figure3.csv")
    assert {r["method"] for r in rows} == {"aevb", "wake-sleep", "mcem"}
    assert {int(r["epoch"]) for r in rows} == {1, 2}
    mcem = [r for r in rows if r["method"] == "mcem"]
    assert all(0 < float(r["acceptance_rate"]) <= 1 for r in mcem)
    # log p(x) of 784 binary pixels: negative, and far above the uniform model's −543 nats
    assert all(-543 < float(r["value"]) < 0 for r in rows)
    # Monte Carlo EM trains through the same loop: an ordinary run folder, its chains in the
    # resumable checkpoint.
    run = out / "runs" / "mnist-n1000-z3-h100-mcem"
    assert json.loads((run / "config.json").read_text())["train"]["objective"] == "mcem"
    tensors, _ = load_checkpoint(run / "checkpoints" / "last.safetensors")
    assert tensors["objective.z"].shape == (1000, 3)
    assert (out / "figure3.png").exists() and "| 1000 | mcem |" in (out / "figure3.md").read_text()


def test_figures_4_and_5_share_runs_and_draw_images(tmp_path, data_dir):
    out = tmp_path / "paper"
    quick = ("--train-samples", "2000", "--train-rows", "1000")
    assert reproduce("figure4", out, data_dir, *quick) == 0
    manifold = read_rows(out / "figure4.csv")
    assert len(manifold) == 2 * 20 * 20 and {r["dataset"] for r in manifold} == {"frey", "mnist"}
    assert (out / "figure4.png").stat().st_size > 20_000
    mnist_2d = out / "runs" / "mnist-n1000-z2-aevb" / "summary.json"
    trained = json.loads(mnist_2d.read_text())["steps"]
    assert trained == 20  # 2000 samples of 1000 rows: 2 epochs of 10 steps
    assert reproduce("figure5", out, data_dir, *quick) == 0
    samples = read_rows(out / "figure5.csv")
    assert [int(r["latent_dim"]) for r in samples] == [2, 5, 10, 20]
    assert json.loads(mnist_2d.read_text())["steps"] == trained  # the 2-D run was reused
    assert (out / "figure5.png").stat().st_size > 20_000


def test_reproduce_refuses_other_datasets(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["reproduce", "figure2", "--dataset", "digits"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'digits'" in capsys.readouterr().err


def test_contrast_commands_run_end_to_end(tmp_path, capsys):
    out = tmp_path / "ae"
    quick = ("--dataset", "digits", "--epochs", "2", "--no-progress")
    assert main(["reproduce", "ae-vs-vae", "--out", str(out), *quick]) == 0
    metrics = {row["metric"]: row for row in read_rows(out / "results.csv")}
    assert float(metrics["test_elbo"]["vae"]) < 0 and metrics["test_elbo"]["autoencoder"] == ""
    assert (out / "contrast-ae-vae.png").exists()
    assert "wrote" in capsys.readouterr().out
    out = tmp_path / "pca"
    args = ("--latent-dims", "2", "--epochs", "300", "--no-progress")
    assert main(["reproduce", "pca", "--out", str(out), *args]) == 0
    (row,) = read_rows(out / "results.csv")
    # on the training split the pPCA solution is the maximum the linear VAE climbs toward
    assert int(row["latent_dim"]) == 2
    assert float(row["vae_train_gap"]) >= 0 and float(row["ae_train_gap"]) >= 0
    assert (out / "contrast-pca.png").exists()


def test_a_point_cut_short_by_a_kill_is_measured_on_resume(tmp_path, digits):
    """A kill while a point is measured (after its epoch's checkpoint) loses nothing: the
    resumed run measures it from the checkpoint, and every point equals an uninterrupted
    run's. A rerun with other settings is refused instead of mixing two runs."""
    config = TrainConfig(
        dataset="digits", latent_dim=2, hidden=(16,), epochs=4, batch_size=128, device="cpu"
    )
    eval_sets = {"train": digits.train[:200], "test": digits.test}
    labels = {"method": "aevb"}
    calls = []

    def killed_at_third_call(model, x):
        calls.append(1)
        if len(calls) == 3:  # epoch 2, first split
            raise KeyboardInterrupt
        return elbo_measure(model, x)

    run = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        train_with_curve(run, config, digits, eval_sets, killed_at_third_call, 4, labels, False)
    assert sorted({row["epoch"] for row in read_curve(run)}) == [1]
    resumed = train_with_curve(run, config, digits, eval_sets, elbo_measure, 4, labels, False)
    reference = train_with_curve(
        tmp_path / "reference", config, digits, eval_sets, elbo_measure, 4, labels, False
    )
    key = lambda row: (row["epoch"], row["split"])  # noqa: E731
    assert [key(r) for r in sorted(resumed, key=key)] == [
        (e, s) for e in (1, 2, 3, 4) for s in ("test", "train")
    ]
    values = {key(r): r["value"] for r in reference}
    assert all(r["value"] == values[key(r)] for r in resumed)
    other_seed = dataclasses.replace(config, seed=1)
    with pytest.raises(AevbError, match="other settings: seed 0"):
        train_with_curve(run, other_seed, digits, eval_sets, elbo_measure, 4, labels, False)
