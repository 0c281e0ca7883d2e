"""The scikit-learn estimator examples run end to end (tiny settings) and write sane results."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import numpy as np

EXAMPLES = Path(__file__).parents[1] / "examples"


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_example", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def table_rows(text: str) -> list[list[str]]:
    """The body rows of the markdown table in text, as lists of cell strings."""
    rows = [line for line in text.splitlines() if line.startswith("|")]
    return [[c.strip() for c in row.strip("|").split("|")] for row in rows[2:]]


def test_dimensionality_reduction_example(tmp_path):
    example = load_example("dimensionality_reduction")
    argv = ["--out", str(tmp_path), "--seed", "1", "--epochs", "3"]
    argv += ["--importance-samples", "16", "--latent-dims", "2", "5"]
    assert example.main(argv) == 0
    summary = (tmp_path / "summary.md").read_text()
    figure = tmp_path / "codes.png"
    assert figure.stat().st_size > 1000
    rows = table_rows(summary)
    assert [int(r[0]) for r in rows] == [2, 5]
    for row in rows:
        pca_mse, vae_mse, pca_ll, vae_ll = (float(c) for c in row[1:5])
        assert 0 < pca_mse < 1 and 0 < vae_mse < 1  # pixels lie in [0, 1]
        assert np.isfinite(pca_ll) and np.isfinite(vae_ll)
        assert 1 <= int(row[5]) <= 3
    # PCA's reconstruction error falls with k (nested subspaces).
    assert float(rows[1][1]) < float(rows[0][1])


def test_anomaly_detection_example(tmp_path):
    example = load_example("anomaly_detection")
    argv = ["--out", str(tmp_path), "--seed", "0", "--seeds", "2", "--epochs", "3"]
    argv += ["--importance-samples", "16", "--latent-dim", "4"]
    assert example.main(argv) == 0
    summary = (tmp_path / "summary.md").read_text()
    assert (tmp_path / "roc.png").stat().st_size > 1000
    assert "anomaly = digit 9" in summary
    rows = table_rows(summary)
    assert len(rows) == 3
    assert rows[1][0] == "PCA(4) recon. error"
    for row in rows:
        aucs = [float(c) for c in row[1:3]]
        assert all(0.0 <= a <= 1.0 for a in aucs)
        mean, std = (float(v) for v in re.findall(r"[\d.]+", row[3]))
        assert abs(mean - np.mean(aucs)) < 1e-3 and 0 <= std <= 0.5
