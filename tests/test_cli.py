"""End-to-end runs of every ``aevb`` command, and the one-line errors for bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from aevb.cli import EXIT_INTERRUPTED, EXIT_USER_ERROR, main
from aevb.runs import load_model

QUICK = ["--latent-dim", "4", "--hidden", "32", "--batch-size", "64", "--no-progress"]


def run_cli(args, cwd=None, timeout=300):
    """Run the installed ``aevb`` entry point in a fresh process."""
    return subprocess.run(
        [sys.executable, "-m", "aevb.cli", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_train_sample_reconstruct_end_to_end(tmp_path):
    """The README's main job (default dataset: digits), then the two image commands."""
    run_dir = tmp_path / "run"
    done = run_cli(["train", "--epochs", "3", "--out", run_dir, *QUICK])
    assert done.returncode == 0, done.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert np.isfinite(summary["test_elbo"]) and summary["epochs"] == 3
    assert f"run folder: {run_dir}" in done.stdout

    sampled = run_cli(["sample", run_dir, "--num", "16", "--out", tmp_path / "new/s.png"])
    assert sampled.returncode == 0, sampled.stderr
    assert (tmp_path / "new/s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rebuilt = run_cli(["reconstruct", run_dir, "--num", "8", "--out", tmp_path / "r.png"])
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    evaluated = run_cli(
        ["evaluate", run_dir, "--importance-samples", "40", "--json", "--no-progress"]
    )
    assert evaluated.returncode == 0, evaluated.stderr
    result = json.loads(evaluated.stdout)
    for key in (
        "elbo",
        "iwae_bound",
        "log_likelihood",
        "reconstruction",
        "kl",
        "bits_per_dim",
        "active_units",
        "latent_dim",
        "num_examples",
        "importance_samples",
        "seconds",
    ):
        assert key in result, key
    assert result["elbo"] < result["log_likelihood"] and result["importance_samples"] == 40
    assert result["num_examples"] == 359  # digits' test split
    table = run_cli(
        ["evaluate", run_dir, "--importance-samples", "10", "--split", "val", "--no-progress"]
    )
    assert table.returncode == 0 and "log-likelihood log p(x)" in table.stdout


def test_default_out_folder_is_under_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--epochs", "1", *QUICK]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.startswith("digits-") and (run_dir / "summary.json").is_file()


def test_sigint_checkpoints_and_resume_matches_uninterrupted(tmp_path):
    """Ctrl-C mid-training: checkpoint, exit 130 with a resume hint; resuming gives the same
    parameters, bit for bit, as a run that was never interrupted."""
    args = ["--epochs", "60", "--seed", "5", *QUICK]
    whole = run_cli(["train", "--out", tmp_path / "whole", *args])
    assert whole.returncode == 0, whole.stderr

    process = subprocess.Popen(
        [sys.executable, "-m", "aevb.cli", "train", "--out", str(tmp_path / "split"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = tmp_path / "split" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 3):
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == EXIT_INTERRUPTED, stderr
    assert f"aevb train --resume {tmp_path / 'split'}" in stderr
    assert "Traceback" not in stderr

    resumed = run_cli(["train", "--resume", tmp_path / "split", "--no-progress"])
    assert resumed.returncode == 0, resumed.stderr
    a, b = load_model(tmp_path / "whole", "last"), load_model(tmp_path / "split", "last")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


def _npy(path: Path, array) -> Path:
    np.save(path, np.asarray(array))
    return path


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda d: ["train", "--dataset", "cifar-12"], "unknown dataset"),
        (lambda d: ["train", "--dataset", d / "missing.npy"], "missing.npy"),
        (lambda d: ["train", "--dataset", _npy(d / "nan.npy", [[0.5, np.nan]] * 20)], "NaN"),
        (lambda d: ["train", "--dataset", _npy(d / "flat.npy", np.ones(20))], "flat.npy"),
        (
            lambda d: [
                "train",
                "--dataset",
                _npy(d / "big.npy", np.full((20, 3), 4.0)),
                "--likelihood",
                "bernoulli",
            ],
            "needs data in [0, 1]",
        ),
        (lambda d: ["train", "--binarize", "none", "--likelihood", "bernoulli"], "grey values"),
        (lambda d: ["train", "--dataset", "mnist", "--data-dir", d / "empty"], "not found"),
        (lambda d: ["train", "--lr", "-1"], "lr must be positive"),
        (lambda d: ["sample", d / "nowhere"], "not an aevb run folder"),
        (lambda d: ["train", "--resume", d / "nowhere"], "not an aevb run folder"),
    ],
)
def test_bad_input_gets_one_clear_error(tmp_path, capsys, make_args, message):
    (tmp_path / "empty").mkdir()
    args = make_args(tmp_path)
    code = main(
        [*map(str, args), "--out", str(tmp_path / "run")]
        if args[0] == "train" and "--resume" not in args
        else list(map(str, args))
    )
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR
    assert err.startswith("error: ") and message.lower() in err.lower(), err
    assert "Traceback" not in err


def test_resume_refuses_changed_settings(tmp_path, capsys):
    assert main(["train", "--epochs", "1", "--out", str(tmp_path / "run"), *QUICK]) == 0
    code = main(["train", "--resume", str(tmp_path / "run"), "--lr", "0.1"])
    assert code == EXIT_USER_ERROR
    assert "--lr cannot change when resuming" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "run"), "--epochs", "2", "--no-progress"]) == 0


def test_existing_run_folder_is_an_error(tmp_path, capsys):
    assert main(["train", "--epochs", "1", "--out", str(tmp_path / "run"), *QUICK]) == 0
    assert main(["train", "--epochs", "1", "--out", str(tmp_path / "run"), *QUICK]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_corrupt_data_file_from_a_data_dir(tmp_path, capsys):
    (tmp_path / "mnist").mkdir()
    for name in (
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ):
        (tmp_path / "mnist" / name).write_bytes(os.urandom(100))
    code = main(
        ["train", "--dataset", "mnist", "--data-dir", str(tmp_path), "--out", str(tmp_path / "run")]
    )
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR and "checksum" in err.lower() and "Traceback" not in err


@pytest.mark.parametrize("prior", ["mixture", "vamp"])
def test_priors_without_a_closed_form_kl_evaluate_consistently(tmp_path, capsys, prior):
    """``--prior mixture|vamp``: the KL has no closed form, so ``evaluate`` estimates it by
    Monte Carlo from its own draws; estimators B and A then agree within 4 standard errors
    (here exactly: the same draws), and the bounds keep their order."""
    run_dir = tmp_path / prior
    args = ["train", "--prior", prior, "--prior-components", "8", "--epochs", "3", *QUICK]
    assert main([*args, "--out", str(run_dir)]) == 0
    capsys.readouterr()
    assert (
        main(["evaluate", str(run_dir), "--importance-samples", "100", "--json", "--no-progress"])
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["kl_estimator"] == "Monte Carlo"
    assert abs(result["elbo"] - result["elbo_a"]) <= 4 * result["log_likelihood_se"]
    assert result["elbo_a"] < result["iwae_bound"] < result["log_likelihood"]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"]["arguments"]["prior"] == prior


def test_conv_architecture_end_to_end(tmp_path):
    """``--architecture conv`` on digits' 8×8 images: trains, evaluates and samples."""
    run_dir = tmp_path / "conv"
    done = run_cli(
        [
            "train",
            "--architecture",
            "conv",
            "--channels",
            "8",
            "16",
            "--epochs",
            "2",
            "--out",
            run_dir,
            *QUICK,
        ]
    )
    assert done.returncode == 0, done.stderr
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"]["factory"] == "aevb.builders:conv"
    assert config["train"]["activation"] == "relu"
    sampled = run_cli(["sample", run_dir, "--num", "9", "--out", tmp_path / "s.png"])
    assert sampled.returncode == 0, sampled.stderr


def test_invalid_pairs_are_refused_before_the_run_folder_exists(tmp_path, capsys):
    """The corrected command can be run at once: nothing was written by the refused one."""
    run_dir = tmp_path / "run"
    bad = ["train", "--posterior", "full", "--free-bits", "0.5", "--out", str(run_dir), *QUICK]
    assert main(bad) == EXIT_USER_ERROR
    assert "free bits need a diagonal posterior" in capsys.readouterr().err
    assert not run_dir.exists()
    assert (
        main(["train", "--posterior", "full", "--epochs", "1", "--out", str(run_dir), *QUICK]) == 0
    )


def test_train_flags_come_from_the_settings_declaration():
    """Every setting of TrainConfig is a flag of ``aevb train``, with its help and default."""
    from aevb.cli import build_parser
    from aevb.runs.config import setting_fields

    train_parser = build_parser()._subparsers._group_actions[0].choices["train"]
    flags = {a.dest: a for a in train_parser._actions}
    for field in setting_fields():
        assert field.name in flags, field.name
        assert field.metadata["help"] in flags[field.name].help
        assert "(default: " in flags[field.name].help
