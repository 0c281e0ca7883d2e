"""Tutorial: anomaly scores for the rows of a table, from the estimator and from the CLI.

    python docs/tutorials/table_anomalies.py [--small] [--out DIR]

A table with a few unusual rows hidden in it (scikit-learn's bundled breast-cancer data: every
benign tumour plus 18 malignant ones, 5% of the rows) is written to a CSV file. A VAE gives
each row its log-likelihood log p(x); the least likely rows are the anomaly candidates. The same
model is fitted twice — with ``aevb.sklearn.VAEEstimator`` and with ``aevb train`` / ``aevb
score`` on the CSV file — and compared with two baselines, PCA reconstruction error and an
IsolationForest, by ROC AUC against the hidden labels. No dataset files needed.
"""

from __future__ import annotations

import dataclasses

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.datasets import load_breast_cancer
from sklearn.decomposition import PCA
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tutorial import save, start

import aevb.cli
from aevb.sklearn import VAEEstimator

NAME = "table_anomalies"


# --8<-- [start:scale]
@dataclasses.dataclass(frozen=True)
class Scale:
    """The sizes that differ between the tutorial and its CI check."""

    epochs: int  # at most this many passes over the table (early stopping ends sooner)
    importance_samples: int  # k draws per row for its log p(x)


FULL = Scale(epochs=500, importance_samples=1000)
SMALL = Scale(epochs=20, importance_samples=50)
# --8<-- [end:scale]

# --8<-- [start:settings]
# One model, two faces: these settings mean the same to the estimator and to `aevb train`.
LATENT_DIM = 4
HIDDEN = 64
BATCH_SIZE = 64
PATIENCE = 20  # epochs without a better validation ELBO before training stops
# --8<-- [end:settings]


# --8<-- [start:data]
def make_table(anomalies: int = 18, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """All benign tumours plus ``anomalies`` malignant ones, shuffled: (table, is_anomaly)."""
    cancer = load_breast_cancer(as_frame=True)  # 569 rows, 30 numeric columns
    rng = np.random.default_rng(seed)
    benign = np.flatnonzero(cancer.target == 1)
    malignant = rng.choice(np.flatnonzero(cancer.target == 0), anomalies, replace=False)
    rows = rng.permutation(np.concatenate([benign, malignant]))
    table = cancer.data.iloc[rows].reset_index(drop=True)
    table.columns = [name.replace(" ", "_") for name in table.columns]
    return table, (cancer.target.to_numpy()[rows] == 0)


# --8<-- [end:data]


def main(argv: list[str] | None = None) -> int:
    setup = start(NAME, __doc__, argv)
    scale = SMALL if setup.small else FULL
    out, figures = setup.out, setup.figures

    # --8<-- [start:write]
    table, is_anomaly = make_table()
    csv = out / "tumours.csv"
    table.to_csv(csv, index=False)  # a header row, then one row per tumour: numbers only
    print(f"{csv}: {len(table)} rows × {table.shape[1]} columns, {is_anomaly.sum()} anomalies")
    # --8<-- [end:write]

    # --8<-- [start:estimator]
    vae = VAEEstimator(
        latent_dim=LATENT_DIM,
        hidden=(HIDDEN,),
        likelihood="gaussian-learned",  # each column standardised, then N(μ(z), σ²(z))
        epochs=scale.epochs,
        batch_size=BATCH_SIZE,
        early_stopping=True,  # 10% of the rows held out; the best epoch's weights kept
        n_iter_no_change=PATIENCE,
        importance_samples=scale.importance_samples,
        random_state=0,
    ).fit(table)
    log_p = vae.score_samples(table)  # nats per row, in the table's own units
    scores = {"VAE estimator: −log p(x)": -log_p}  # higher = more anomalous
    print(
        f"estimator: {vae.n_iter_} epochs; log p(x) per row from {log_p.min():.1f} to "
        f"{log_p.max():.1f} nats"
    )
    # --8<-- [end:estimator]

    # --8<-- [start:cli]
    run_dir, scores_csv = out / "run", out / "scores.csv"
    # fmt: off
    train = [
        "train", "--dataset", str(csv), "--likelihood", "gaussian-learned",
        "--latent-dim", str(LATENT_DIM), "--hidden", str(HIDDEN),
        "--batch-size", str(BATCH_SIZE), "--patience", str(PATIENCE),
        "--epochs", str(scale.epochs), "--seed", "0", "--no-tensorboard", "--no-progress",
        "--threads", "1", "--out", str(run_dir),
    ]
    score = [
        "score", str(run_dir), "--data", str(csv), "--out", str(scores_csv),
        "--importance-samples", str(scale.importance_samples), "--threads", "1",
    ]
    # fmt: on
    for command in (train, score):  # `aevb train …`, then `aevb score …`, in this process
        if aevb.cli.main(command) != 0:
            raise SystemExit(f"aevb {command[0]} failed")
    cli_log_p = pd.read_csv(scores_csv)["log_likelihood"].to_numpy()  # one line per row
    scores["CLI (aevb score): −log p(x)"] = -cli_log_p
    # --8<-- [end:cli]

    # --8<-- [start:baselines]
    pca = make_pipeline(StandardScaler(), PCA(n_components=LATENT_DIM)).fit(table)
    standardised = pca[0].transform(table)
    rebuilt = pca[1].inverse_transform(pca.transform(table))
    scores[f"PCA({LATENT_DIM}) reconstruction error"] = ((standardised - rebuilt) ** 2).sum(1)
    forest = IsolationForest(random_state=0).fit(table)
    scores["IsolationForest"] = -forest.score_samples(table)
    # --8<-- [end:baselines]

    # --8<-- [start:compare]
    aucs = {name: roc_auc_score(is_anomaly, score) for name, score in scores.items()}
    for name, auc in aucs.items():
        top = np.argsort(-scores[name])[: is_anomaly.sum()]  # as many flagged as there are
        print(
            f"  {name:38} ROC AUC {auc:.3f}; anomalies among the top {len(top)}: "
            f"{is_anomaly[top].sum()}"
        )
    figure, axis = plt.subplots(figsize=(5, 4.4))
    for name, score in scores.items():
        false_positive, true_positive, _ = roc_curve(is_anomaly, score)
        axis.plot(false_positive, true_positive, label=f"{name} ({aucs[name]:.3f})")
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    axis.set(xlabel="false positive rate", ylabel="true positive rate")
    axis.legend(loc="lower right", fontsize=8, title="score (ROC AUC)", title_fontsize=8)
    save(figure, figures / f"{NAME}-roc.png")
    # --8<-- [end:compare]

    # --8<-- [start:agree]
    correlation = np.corrcoef(log_p, cli_log_p)[0, 1]
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    bins = np.linspace(min(log_p.min(), cli_log_p.min()), max(log_p.max(), cli_log_p.max()), 40)
    left.hist(log_p[~is_anomaly], bins=bins, alpha=0.7, label="benign")
    left.hist(log_p[is_anomaly], bins=bins, alpha=0.7, label="malignant (hidden label)")
    left.set(xlabel="log p(x), estimator (nats)", ylabel="rows", yscale="log")
    left.legend(fontsize=8)
    right.scatter(log_p[~is_anomaly], cli_log_p[~is_anomaly], s=6, label="benign")
    right.scatter(log_p[is_anomaly], cli_log_p[is_anomaly], s=12, label="malignant")
    right.set(
        xlabel="log p(x), estimator",
        ylabel="log p(x), aevb score",
        title=f"two fits of one model: correlation {correlation:.2f}",
    )
    right.legend(fontsize=8)
    save(figure, figures / f"{NAME}-scores.png")
    # --8<-- [end:agree]

    summary = ", ".join(f"{name} {auc:.3f}" for name, auc in aucs.items())
    print(
        f"\n{NAME} ({setup.scale_name} scale): ROC AUC {summary}; "
        f"estimator vs CLI log p(x) correlation {correlation:.3f}"
    )
    return setup.finish()


if __name__ == "__main__":
    raise SystemExit(main())
