"""VAEs on numeric tables: train on a .csv/.parquet file, then ``aevb embed`` and ``aevb score``."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from aevb.cli import EXIT_USER_ERROR, main
from aevb.data import Binarize, load_dataset, load_table
from aevb.errors import DataError
from aevb.evaluation import log_likelihood_per_example
from aevb.runs import load_run

ROWS, COLUMNS = 300, [f"x{i}" for i in range(1, 6)]
QUICK = ["--latent-dim", "2", "--hidden", "16", "--epochs", "3", "--no-progress"]
K = 1000  # importance samples per row (the default of aevb score)


def factor_table(rows: int = ROWS, seed: int = 0) -> pd.DataFrame:
    """x = W f + noise with 2 standard-normal factors f: a (rows, 5) table."""
    rng = np.random.default_rng(seed)
    loadings = rng.normal(size=(2, len(COLUMNS)))
    x = rng.normal(size=(rows, 2)) @ loadings + 0.3 * rng.normal(size=(rows, len(COLUMNS)))
    return pd.DataFrame(x, columns=COLUMNS)


def write(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)
    return path


def error_of(args: list, capsys) -> str:
    """Run the CLI in-process, expecting a user error; return its one stderr line."""
    assert main(list(map(str, args))) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and err.count("\n") == 1, err
    return err


@pytest.fixture(scope="module", params=[".csv", ".parquet"])
def trained(request, tmp_path_factory) -> tuple[Path, Path]:
    """(table file, run folder): a gaussian-learned VAE trained on the table for 3 epochs."""
    folder = tmp_path_factory.mktemp("table")
    table = write(factor_table(), folder / f"data{request.param}")
    run_dir = folder / "run"
    args = ["train", "--dataset", table, "--likelihood", "gaussian-learned", "--out", run_dir]
    assert main([*map(str, args), *QUICK]) == 0
    return table, run_dir


def test_embed_writes_posterior_means_and_stds(trained, tmp_path, capsys):
    table, run_dir = trained
    assert (
        main(["embed", str(run_dir), "--data", str(table), "--out", str(tmp_path / "z.csv")]) == 0
    )
    codes = pd.read_csv(tmp_path / "z.csv")
    assert list(codes.columns) == ["z1", "z2"] and codes.shape == (ROWS, 2)
    x, names = load_table(table)
    assert names == COLUMNS and x.shape == (ROWS, 5)
    q = load_run(run_dir).encode(x)  # the run's standardisation, then q(z|x)
    np.testing.assert_allclose(codes.to_numpy(), q.mean.numpy(), rtol=1e-6, atol=1e-6)

    out = tmp_path / "deeper" / "zs.csv"
    assert main(["embed", str(run_dir), "--data", str(table), "--out", str(out), "--std"]) == 0
    both = pd.read_csv(out)
    assert list(both.columns) == ["z1", "z2", "std1", "std2"] and both.shape == (ROWS, 4)
    np.testing.assert_allclose(both[["std1", "std2"]], q.stddev.numpy(), rtol=1e-6, atol=1e-6)
    assert (both[["std1", "std2"]].to_numpy() > 0).all()
    assert f"wrote {ROWS} codes" in capsys.readouterr().out


def test_score_is_the_per_row_log_likelihood(trained, tmp_path):
    """aevb score writes the run's per-row log-likelihoods (standardised, then the Jacobian
    added: a density of the table as given); their mean estimates the same log p(x) as
    ``aevb evaluate`` (``Run.evaluate(...).log_likelihood``)."""
    table, run_dir = trained
    out = tmp_path / "scores.csv"
    args = ["score", run_dir, "--data", table, "--out", out, "--importance-samples", K]
    assert main([*map(str, args), "--seed", "3"]) == 0
    scores = pd.read_csv(out)
    assert list(scores.columns) == ["log_likelihood"] and len(scores) == ROWS
    assert np.isfinite(scores["log_likelihood"]).all()
    run, x = load_run(run_dir), torch.from_numpy(load_table(table)[0])
    assert run.transforms.describe() == "standardise"
    direct = run.log_likelihood_per_example(x, K, seed=3).numpy()
    np.testing.assert_allclose(scores["log_likelihood"], direct, rtol=1e-7, atol=1e-6)
    # Both are Monte Carlo estimates of the mean log p(x). evaluate draws independent noise per
    # row, score shares the k draws across rows (so its errors are correlated): bound the gap by
    # 4 standard errors of each, the shared one by the mean per-row error <= se * sqrt(N).
    result = run.evaluate(x, importance_samples=K, seed=3, warn=False)
    tolerance = 4 * result.log_likelihood_se * (1 + math.sqrt(ROWS))
    assert abs(scores["log_likelihood"].mean() - result.log_likelihood) < max(tolerance, 1e-4)


def test_score_binarizes_like_the_run_for_a_bernoulli_model(tmp_path, capsys):
    grey = np.random.default_rng(1).random((120, 6))
    table = write(pd.DataFrame(grey, columns=[f"p{i}" for i in range(6)]), tmp_path / "g.csv")
    run_dir = tmp_path / "run"
    args = ["train", "--dataset", table, "--likelihood", "bernoulli", "--out", run_dir]
    assert main([*map(str, args), *QUICK]) == 0  # binarize: dynamic (the default)
    out = tmp_path / "s.csv"
    assert main(["score", str(run_dir), "--data", str(table), "--out", str(out)]) == 0
    scores = pd.read_csv(out)["log_likelihood"].to_numpy()
    model, x = load_run(run_dir).model, torch.from_numpy(load_table(table)[0])
    binary = log_likelihood_per_example(model, Binarize("dynamic").prepare(x), K, 0).numpy()
    np.testing.assert_allclose(scores, binary, rtol=1e-7, atol=1e-6)
    with pytest.raises(DataError, match="Bernoulli"):  # the grey values are never scored
        log_likelihood_per_example(model, x, K, 0)

    write(pd.DataFrame(grey * 3, columns=[f"p{i}" for i in range(6)]), tmp_path / "big.csv")
    big = ["score", run_dir, "--data", tmp_path / "big.csv", "--out", tmp_path / "big-s.csv"]
    err = error_of(big, capsys)
    assert "Bernoulli likelihood" in err and "[0, 1]" in err


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_non_numeric_column_is_named(tmp_path, capsys, suffix):
    frame = factor_table(20)
    frame.insert(2, "city", ["Lyon", "Nice", "Paris", *["Rome"] * 17])
    frame.loc[0, "city"] = "1.5"  # a number-like first cell: the first bad value is in row 2
    table = write(frame, tmp_path / f"cities{suffix}")
    err = error_of(["train", "--dataset", table, "--out", tmp_path / "run"], capsys)
    assert str(table) in err and "column 3 'city' is not numeric" in err and "'Nice'" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_nan_is_refused_naming_its_column(tmp_path, suffix):
    frame = factor_table(20)
    frame.loc[4, "x3"] = np.nan
    frame.loc[7, "x5"] = np.inf
    table = tmp_path / f"holes{suffix}"
    if suffix == ".csv":
        frame.to_csv(table, index=False, na_rep="nan")
    else:
        frame.to_parquet(table)
    pattern = r"columns 'x3', 'x5' hold 2 value\(s\).*first in column 'x3', data row 5"
    with pytest.raises(DataError, match=pattern):
        load_dataset(str(table))


def test_empty_csv_cell_is_refused_naming_its_column(tmp_path, capsys):
    frame = factor_table(20)
    frame.loc[4, "x3"] = np.nan
    table = write(frame, tmp_path / "gaps.csv")  # pandas writes NaN as an empty cell
    err = error_of(["train", "--dataset", table, "--out", tmp_path / "run"], capsys)
    assert "column 3 'x3' is not numeric (line 6 has '', a missing value)" in err


def test_empty_tables_are_refused(tmp_path):
    write(factor_table(0), tmp_path / "empty.csv")
    write(factor_table(0), tmp_path / "empty.parquet")
    for name in ("empty.csv", "empty.parquet"):
        with pytest.raises(DataError, match="empty"):
            load_table(tmp_path / name)


def test_embed_refuses_a_table_with_other_columns(trained, tmp_path, capsys):
    _, run_dir = trained
    table = write(factor_table(10).iloc[:, :4], tmp_path / "four.csv")
    err = error_of(["embed", run_dir, "--data", table, "--out", tmp_path / "z.csv"], capsys)
    assert "has 4 column(s) (x1, x2, x3, x4)" in err and "trained on 5" in err
    assert not (tmp_path / "z.csv").exists()


def test_headerless_csv_and_missing_pyarrow(tmp_path, monkeypatch):
    x = factor_table(12).to_numpy()
    np.savetxt(tmp_path / "bare.csv", x, delimiter=",")
    values, names = load_table(tmp_path / "bare.csv")
    assert names is None and values.dtype == np.float32 and values.shape == (12, 5)
    np.testing.assert_allclose(values, x, rtol=1e-6)

    table = write(factor_table(12), tmp_path / "t.parquet")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # makes `import pyarrow` fail
    with pytest.raises(DataError, match="needs pandas and pyarrow"):
        load_table(table)
