"""Flags and arguments of aevb's three faces: the ``aevb`` command line, the Python API
(``aevb.evaluate``, ``VAE.sample``, ``Run``, ``TrainConfig``, ``load_run``) and the
scikit-learn estimator ``aevb.sklearn.VAEEstimator``.

Regression tests for the issue's findings ("no traceback, no silent damage, no lost run"):

* out-of-range seeds (2**63, -1, 2**64) reached ``torch.manual_seed`` and ended in a
  traceback; device names other than auto/cpu/cuda/cuda:N (``cudafoo``, ``cuda:-1``, ``CPU``,
  ``mps``) failed late, inside torch;
* ``--hidden 1000000000`` tried to allocate the model (swap, then the kernel's OOM killer);
  it is refused at once from a model built on the meta device;
* zero, negative, NaN and infinite sizes, rates and fractions were accepted or failed deep in
  training; non-integer sizes (4.5, "4") slipped through ``TrainConfig``;
* output paths that cannot become the promised file or folder (a folder, a device, a path
  under a file, /proc, a name without .png) failed after the work, with a traceback, or wrote
  nothing silently;
* ``evaluate`` gave numbers for data it defines no density for (NaN, wrong width, grey values
  under a Bernoulli likelihood); ``sample`` took 0, -1 and 2.5;
* the estimator took invalid parameters until deep in ``fit``, fitted an infinite ``scale_``
  from a 1e300 cell, and returned a model diverged by a huge learning rate without a word.
"""

from __future__ import annotations

import copy
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import QUICK, cli

import aevb
from aevb.errors import ConfigError, DataError, NumericalFault
from aevb.runs import TrainConfig, train
from aevb.sklearn import VAEEstimator as Estimator

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A digits run (latent 4, hidden 32, one epoch) shared by the module's tests."""
    folder = tmp_path_factory.mktemp("flags") / "run"
    config = TrainConfig(
        dataset="digits", latent_dim=4, hidden=(32,), epochs=1, batch_size=64, device="cpu"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a collapse warning after one epoch is expected
        train(config, folder, progress=False)
    return folder


@pytest.fixture(scope="module")
def run(run_dir) -> aevb.Run:
    return aevb.load_run(run_dir)


def factor_table(rows: int = 400, seed: int = 0) -> np.ndarray:
    """(rows, 6): two standard-normal factors through random loadings, plus noise."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(rows, 2)) @ rng.normal(size=(2, 6)) + 0.3 * rng.normal(size=(rows, 6))


# ----------------------------------------------------------------------------- aevb train


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        pytest.param(["--seed", "9223372036854775808"], "--seed", id="seed-2**63"),
        pytest.param(["--seed", "-1"], "--seed", id="seed-negative"),
        pytest.param(["--device", "cudafoo"], "device must be auto", id="device-cudafoo"),
        pytest.param(["--device", "cuda:-1"], "device must be auto", id="device-cuda:-1"),
        pytest.param(["--device", "CPU"], "device must be auto", id="device-CPU"),
        pytest.param(["--device", "mps"], "device must be auto", id="device-mps"),
        pytest.param(["--latent-dim", "0"], "--latent-dim", id="latent-dim-0"),
        pytest.param(["--batch-size", "0"], "--batch-size", id="batch-size-0"),
        pytest.param(["--lr", "nan"], "lr must be", id="lr-nan"),
        pytest.param(["--lr", "inf"], "lr must be finite", id="lr-inf"),
        pytest.param(["--lr", "-1"], "lr must be positive", id="lr-negative"),
        pytest.param(["--val-fraction", "1"], "val_fraction must be in [0, 1)", id="val-1"),
        pytest.param(["--epochs", "-1"], "epochs must be at least 0", id="epochs-negative"),
        pytest.param(["--beta", "-1"], "beta must be at least 0", id="beta-negative"),
    ],
)
def test_train_refuses_bad_settings_before_the_run_folder(tmp_path, flags, message):
    out = cli("train", "--epochs", "1", *QUICK, *flags, "--out", tmp_path / "run")
    assert out.clear_error, out.err
    error = next(line for line in out.err.splitlines() if "error:" in line)
    assert message in error
    if flags[0] in ("--seed", "--device"):
        assert flags[1] in error  # the value given is named
    assert not (tmp_path / "run").exists()


def test_train_refuses_a_billion_hidden_units_at_once(tmp_path):
    started = time.perf_counter()
    out = cli("train", *QUICK, "--hidden", "1000000000", "--out", tmp_path / "run")
    assert time.perf_counter() - started < 10
    assert out.clear_error, out.err
    assert "parameters" in out.err and "of memory" in out.err and "--hidden" in out.err
    assert not (tmp_path / "run").exists()


def _existing_file(tmp: Path) -> Path:
    (tmp / "a-file").write_text("keep me")
    return tmp / "a-file"


@pytest.mark.parametrize(
    ("make_out", "reason"),
    [
        pytest.param(_existing_file, "it exists and is not a folder", id="existing-file"),
        pytest.param(lambda t: _existing_file(t) / "run", "is a file", id="under-a-file"),
        pytest.param(lambda t: Path("/dev/null"), "not a folder", id="dev-null"),
        pytest.param(lambda t: Path("/proc/aevb-test"), "/proc/aevb-test", id="proc"),
    ],
)
def test_train_refuses_an_out_folder_it_cannot_write(tmp_path, make_out, reason):
    out_dir = make_out(tmp_path)
    out = cli("train", "--epochs", "1", *QUICK, "--out", out_dir)
    assert out.clear_error, out.err
    assert f"cannot write {out_dir}" in out.err and reason in out.err
    if out_dir.is_relative_to(tmp_path):
        assert (tmp_path / "a-file").read_text() == "keep me"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]
    assert not Path("/proc/aevb-test").exists()


# ----------------------------------------------------------------- aevb sample, reconstruct

IMAGE_COMMANDS = ["sample", "reconstruct"]


@pytest.mark.parametrize("command", IMAGE_COMMANDS)
@pytest.mark.parametrize(
    ("make_out", "message"),
    [
        pytest.param(lambda t: t / "grid.png", "{out}: it is a folder", id="folder-named-png"),
        pytest.param(lambda t: t, "{out}: the output must be a .png file", id="folder"),
        pytest.param(lambda t: t / "grid", "{out}: the output must be a .png file", id="no-suffix"),
        pytest.param(lambda t: t / "grid.jpg", "must be a .png file (got .jpg)", id="jpg"),
        pytest.param(lambda t: Path("/dev/null"), "/dev/null: the output must be a", id="null"),
        pytest.param(
            lambda t: _existing_file(t) / "x.png",
            "cannot write {parent}: it exists and is not a folder",
            id="under-a-file",
        ),
        pytest.param(lambda t: Path("/proc/x.png"), "cannot write /proc", id="proc"),
    ],
)
def test_image_commands_refuse_an_out_they_cannot_write(
    run_dir, tmp_path, command, make_out, message
):
    (tmp_path / "grid.png").mkdir()
    out_file = make_out(tmp_path)
    out = cli(command, run_dir, "--num", "4", "--out", out_file)
    assert out.clear_error, out.err
    assert message.format(out=out_file, parent=out_file.parent) in out.err
    assert not list((tmp_path / "grid.png").iterdir())
    assert not Path("/proc/x.png").exists()


@pytest.mark.parametrize("command", IMAGE_COMMANDS)
@pytest.mark.parametrize("num", ["0", "-3"])
def test_image_commands_refuse_a_count_below_one(run_dir, tmp_path, command, num):
    out = cli(command, run_dir, "--num", num, "--out", tmp_path / "x.png")
    assert out.clear_error, out.err
    assert f"argument --num: must be an integer in [1, 2,147,483,647], got {num}" in out.err
    assert not (tmp_path / "x.png").exists()


def test_sample_refuses_a_seed_of_2_to_the_64(run_dir, tmp_path):
    out = cli("sample", run_dir, "--seed", 2**64, "--out", tmp_path / "x.png")
    assert out.clear_error, out.err
    assert "argument --seed" in out.err and str(2**64) in out.err


@pytest.mark.parametrize("command", IMAGE_COMMANDS)
def test_image_commands_write_a_png_into_a_new_nested_folder(run_dir, tmp_path, command):
    target = tmp_path / "new" / "nested" / f"{command}.png"
    out = cli(command, run_dir, "--num", "4", "--out", target)
    assert out.status == 0, out.err
    assert target.read_bytes()[:8] == PNG_SIGNATURE
    assert str(target) in out.out


# ------------------------------------------------------------- evaluate, reproduce, tables


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        pytest.param(
            ["--importance-samples", "0"],
            "argument --importance-samples: must be an integer in [1, ",
            id="importance-samples-0",
        ),
        pytest.param(
            ["--num-examples", "0"],
            "argument --num-examples: must be an integer in [1, ",
            id="num-examples-0",
        ),
        pytest.param(["--device", "cudafoo"], "device must be auto", id="device-cudafoo"),
    ],
)
def test_evaluate_refuses_bad_flags(run_dir, flags, message):
    out = cli("evaluate", run_dir, *flags, "--no-progress")
    assert out.clear_error, out.err
    assert message in out.err


@pytest.mark.parametrize(
    "make_out",
    [
        pytest.param(lambda t: Path("/dev/null"), id="dev-null"),
        pytest.param(_existing_file, id="existing-file"),
    ],
)
def test_reproduce_refuses_an_out_that_is_not_a_folder(tmp_path, make_out):
    out_dir = make_out(tmp_path)
    started = time.perf_counter()
    out = cli("reproduce", "pca", "--out", out_dir, "--epochs", "1", "--no-progress")
    assert out.clear_error, out.err
    assert f"cannot write {out_dir}: it exists and is not a folder" in out.err
    assert time.perf_counter() - started < 5  # refused before any training


@pytest.mark.parametrize("command", ["embed", "score"])
def test_table_commands_refuse_a_folder_as_out(run_dir, tmp_path, command):
    rows = tmp_path / "rows.npy"
    np.save(rows, np.zeros((3, 1, 8, 8)))
    out = cli(command, run_dir, "--data", rows, "--out", tmp_path)
    assert out.clear_error, out.err
    assert f"cannot write {tmp_path}: it is a folder" in out.err


# ------------------------------------------------------------------------------ Python API


def test_evaluate_refuses_nan(run):
    x = run.prepare(run.split("test", 20))
    x[2, 0, 3, 3] = float("nan")
    with pytest.raises(DataError, match=r"1 NaN or infinite value\(s\) \(first in row 2\)"):
        aevb.evaluate(run.model, x, importance_samples=10)


@pytest.mark.parametrize(
    ("shape", "named"),
    [
        pytest.param((5, 10), "(10,)", id="flat-rows"),
        pytest.param((5, 1, 8, 7), "(1, 8, 7)", id="narrower-images"),
    ],
)
def test_evaluate_refuses_rows_of_the_wrong_shape(run, shape, named):
    with pytest.raises(DataError, match="rows of shape") as error:
        aevb.evaluate(run.model, torch.zeros(shape), importance_samples=10)
    assert f"x has rows of shape {named}" in str(error.value)
    assert "(1, 8, 8)" in str(error.value)


def test_evaluate_refuses_grey_values_under_a_bernoulli_likelihood(run):
    with pytest.raises(DataError, match=r"over \{0, 1\} \(Bernoulli\)"):
        aevb.evaluate(run.model, torch.full((5, 1, 8, 8), 0.5), importance_samples=10)


def test_evaluate_refuses_zero_importance_samples(run):
    x = run.prepare(run.split("test", 5))
    with pytest.raises(ValueError, match="importance_samples must be a positive integer"):
        aevb.evaluate(run.model, x, importance_samples=0)


@pytest.mark.parametrize(
    "num", [pytest.param(-1, id="-1"), pytest.param(0, id="0"), pytest.param(2.5, id="2.5")]
)
def test_model_sample_refuses_a_count_that_is_not_positive_integer(run, num):
    with pytest.raises(ValueError, match=f"num_samples must be a positive integer, got {num}"):
        run.model.sample(num)


def test_model_sample_takes_a_numpy_integer(run):
    assert run.model.sample(np.int64(3)).shape == (3, 1, 8, 8)


def test_loaded_run_refuses_bad_counts_and_data(run_dir):
    run = aevb.load_run(run_dir)
    with pytest.raises(ValueError, match="num_samples must be a positive integer, got -1"):
        run.sample(-1)
    with pytest.raises(DataError, match=r"has rows of shape \(10,\), but the model in"):
        run.evaluate(np.zeros((5, 10), np.float32), importance_samples=10)
    with pytest.raises(DataError, match="must hold numbers, got dtype <U1"):
        run.prepare(np.array([["a"] * 64] * 2))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        pytest.param({"latent_dim": 4.5}, "latent_dim must be an integer, got 4.5", id="ld-4.5"),
        pytest.param({"batch_size": 1.5}, "batch_size must be an integer", id="batch-1.5"),
        pytest.param({"seed": 2**64}, "seed must be at most 9,223,372,036,854,775,807", id="seed"),
        pytest.param({"device": "cudafoo"}, "device must be auto, cpu, cuda", id="cudafoo"),
        pytest.param({"hidden": (0,)}, "hidden must be at least 1", id="hidden-0"),
        pytest.param({"latent_dim": "4"}, "latent_dim must be an integer, got '4'", id="ld-str"),
    ],
)
def test_train_config_refuses_bad_settings(settings, message):
    with pytest.raises(ConfigError, match="invalid training settings") as error:
        TrainConfig(**settings)
    assert isinstance(error.value, ValueError)
    assert message in str(error.value)


def test_load_run_refuses_an_unknown_device(run_dir):
    with pytest.raises(ConfigError, match="device must be auto, cpu, cuda or cuda:N, got 'cudaf"):
        aevb.load_run(run_dir, device="cudafoo")


# ----------------------------------------------------------------------- sklearn estimator

QUICK_ESTIMATOR = {"latent_dim": 2, "hidden": (16,), "epochs": 2, "batch_size": 64}


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        pytest.param({"latent_dim": 2.5}, "latent_dim must be an integer", id="latent-dim-2.5"),
        pytest.param({"latent_dim": 0}, "latent_dim must be at least 1", id="latent-dim-0"),
        pytest.param({"device": "cudafoo"}, "device must be auto", id="device-cudafoo"),
        pytest.param({"epochs": -1}, "epochs must be at least 1", id="epochs-negative"),
        pytest.param({"hidden": (0,)}, "hidden must be a tuple of positive", id="hidden-0"),
        pytest.param({"hidden": (2.5,)}, "hidden must be a tuple of positive", id="hidden-2.5"),
        pytest.param({"lr": float("inf")}, "lr must be finite and > 0", id="lr-inf"),
        pytest.param({"lr": 0}, "lr must be finite and > 0", id="lr-0"),
        pytest.param({"beta": -1}, "beta must be finite and ≥ 0", id="beta-negative"),
        pytest.param({"likelihood": "poisson"}, "likelihood must be one of", id="poisson"),
        pytest.param({"objective": "wake-sleep"}, "objective must be one of", id="wake-sleep"),
        pytest.param(
            {"validation_fraction": 1.0}, "validation_fraction must be below 1", id="val-1"
        ),
        pytest.param({"batch_size": 0}, "batch_size must be at least 1", id="batch-size-0"),
    ],
)
def test_estimator_refuses_bad_parameters_at_fit(parameters, message):
    estimator = Estimator(**{**QUICK_ESTIMATOR, **parameters})  # accepted here, by convention
    with pytest.raises(ValueError, match="invalid parameters of VAE") as error:
        estimator.fit(factor_table(50))
    assert message in str(error.value)
    assert not hasattr(estimator, "model_")


@pytest.fixture(scope="module")
def fitted() -> Estimator:
    return Estimator(**QUICK_ESTIMATOR, random_state=0).fit(factor_table())


def test_fitted_estimator_refuses_bad_counts_and_columns(fitted):
    x = factor_table(10, seed=1)
    with pytest.raises(ValueError, match="num_samples must be a positive integer, got -1"):
        fitted.sample(-1)
    with pytest.raises(ValueError, match="X has 5 features, but VAEEstimator is expecting 6"):
        fitted.transform(x[:, :5])
    x[4, 2] = 1e39  # beyond float32
    with pytest.raises(ValueError, match=r"column\(s\) 2 \(or values too large for float32\)"):
        fitted.score_samples(x)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param(1e300, r"NaN or inf in column\(s\) f3 \(or values too large", id="1e300"),
        pytest.param(1e30, r"row 5 \(from 0\), column 'f3' holds 1e\+30", id="1e30"),
    ],
)
def test_estimator_refuses_a_huge_cell_naming_its_column(fitted, value, message):
    frame = pd.DataFrame(factor_table(), columns=[f"f{j}" for j in range(6)])
    frame.iloc[5, 3] = value
    estimator = Estimator(**QUICK_ESTIMATOR, random_state=0)
    with pytest.raises(ValueError, match=message):
        estimator.fit(frame)
    assert not hasattr(estimator, "scale_")
    # Refitting a fitted estimator on such data is refused too, and leaves no infinite scale.
    refitted = copy.deepcopy(fitted)
    with pytest.raises(ValueError, match="f3"):
        refitted.fit(frame)
    assert np.isfinite(refitted.scale_).all() and (refitted.scale_ > 0).all()


def test_estimator_with_a_huge_learning_rate_raises_instead_of_returning_a_diverged_model():
    estimator = Estimator(
        latent_dim=2, hidden=(16,), epochs=20, batch_size=64, lr=1e3, random_state=0
    )
    with pytest.raises(NumericalFault, match="diverged") as error:
        estimator.fit(factor_table())
    assert "learning rate" in str(error.value)
