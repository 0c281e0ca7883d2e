"""examples/custom_networks.py: a user's conv encoder and decoder on MNIST through the public
API, then every command on its run folder (the model rebuilt from its recorded factory)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).parents[1] / "examples" / "custom_networks.py"


def run(args, cwd):
    return subprocess.run(
        [sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_custom_conv_networks_train_evaluate_sample_and_resume(tmp_path, data_dir):
    """One epoch of a narrow version (width 8) of the example's conv VAE, then ``aevb
    evaluate``, ``aevb sample`` and ``aevb train --resume`` from another folder, where the
    example's module is not importable by name: the run folder's recorded source is used."""
    out = tmp_path / "run"
    trained = run(
        [EXAMPLE, "--data-dir", data_dir, "--epochs", "1", "--width", "8", "--out", out],
        cwd=tmp_path,
    )
    assert trained.returncode == 0, trained.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["factory"] == "custom_networks:conv_vae"
    assert config["model"]["arguments"] == {"latent_dim": 16, "width": 8}
    assert config["custom_model"] and "latent_dim" not in config["train"]

    cli = [Path(sys.executable).parent / "aevb"]
    evaluated = subprocess.run(
        [
            *cli,
            "evaluate",
            out,
            "--importance-samples",
            "20",
            "--num-examples",
            "200",
            "--json",
            "--no-progress",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert evaluated.returncode == 0, evaluated.stderr
    result = json.loads(evaluated.stdout)
    assert result["elbo"] < result["log_likelihood"] < 0 and result["num_examples"] == 200
    sampled = subprocess.run(
        [*cli, "sample", out, "--out", tmp_path / "s.png"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert sampled.returncode == 0, sampled.stderr
    resumed = subprocess.run(
        [*cli, "train", "--resume", out, "--epochs", "2", "--no-progress"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((out / "summary.json").read_text())["epochs"] == 2
