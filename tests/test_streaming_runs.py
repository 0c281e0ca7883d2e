"""Streamed runs (``aevb train --stream``): the held-out splits, exact resumption mid-epoch,
image folders with their labels, the automatic choice, refusals, and training under a memory
limit below the file's size."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from crashes import Crash, CrashAfter
from PIL import Image

from aevb.cli import main
from aevb.data import load_dataset
from aevb.data import streamed as streamed_module
from aevb.data.streamed import load_streamed, should_stream
from aevb.errors import AevbError, ConfigError, DataError
from aevb.hints import command_line
from aevb.runs import LAST, TrainConfig, load_model, load_run, resume, train
from aevb.train import checkpoint as checkpoints


@pytest.fixture
def digits_npy(tmp_path):
    """The 1,797 8×8 digits (grey values in [0, 1]) as one (N, 8, 8) .npy file."""
    rows = np.concatenate([load_dataset("digits").split(s) for s in ("train", "val", "test")])
    path = tmp_path / "digits.npy"
    np.save(path, rows[:, 0])
    return path, rows


def _config(path, **changes) -> TrainConfig:
    values = dict(
        dataset=str(path), stream=True, workers=0, latent_dim=4, hidden=(32,), epochs=3,
        batch_size=64, device="cpu", seed=0,
    )  # fmt: skip
    return TrainConfig(**{**values, **changes})


def test_held_out_rows_and_training_rows_partition_the_file(digits_npy):
    path, rows = digits_npy
    data = load_streamed(path, val_fraction=0.1)
    n = len(rows)
    assert len(data.test_rows) == round(0.1 * n)
    assert len(data.val_rows) == round(0.1 * (n - len(data.test_rows)))
    assert not set(data.val_rows) & set(data.test_rows)
    np.testing.assert_array_equal(data.val, rows[data.val_rows])
    np.testing.assert_array_equal(data.test, rows[data.test_rows])
    train_rows = np.setdiff1d(np.arange(n), data.held_out)
    assert data.num_train == len(train_rows)
    np.testing.assert_array_equal(data.split("train"), rows[train_rows])
    summary = data.summary
    np.testing.assert_allclose(summary.mean, rows[train_rows].reshape(len(train_rows), -1).mean(0))
    assert summary.min == rows[train_rows].min() and summary.max == rows[train_rows].max()


def test_a_streamed_run_resumes_mid_epoch_exactly(tmp_path, digits_npy):
    """Checkpoints every 5 steps; a crash after step 25 (epoch 2, step 2 of 23) and a
    resume give the bits of an uninterrupted run: the stream's order is redrawn from the
    epoch's saved random state, the batches before the checkpoint skipped unread, and the
    dynamic binarization continues from the saved state."""
    path, _ = digits_npy
    config = _config(path, checkpoint_every=5)
    train(config, tmp_path / "whole", progress=False)
    with pytest.raises(Crash):
        train(config, tmp_path / "split", progress=False, callbacks=[CrashAfter(steps=25)])
    _, metadata = checkpoints.load_checkpoint(tmp_path / "split" / LAST)
    assert metadata["state"]["step"] == 25 and metadata["state"]["step_in_epoch"] == 2
    torch.manual_seed(99)
    resume(tmp_path / "split", progress=False)
    whole = load_model(tmp_path / "whole", "last").state_dict()
    split = load_model(tmp_path / "split", "last").state_dict()
    assert whole.keys() == split.keys()
    for name, value in whole.items():
        assert torch.equal(value, split[name]), name
    record = json.loads((tmp_path / "whole" / "config.json").read_text())
    assert record["train"]["stream"] is True and record["data"]["num_train"] == 1455


def test_a_streamed_run_learns_and_its_splits_are_evaluated(tmp_path, digits_npy):
    path, _ = digits_npy
    summary = train(_config(path, epochs=8, lr=3e-3), tmp_path / "run", progress=False)
    history = [
        json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()
    ]
    # −44 nats is an untrained model on 64 binary pixels; 5 nats is far beyond the noise.
    assert history[-1]["val_elbo"] > history[0]["val_elbo"] + 5
    assert summary["test_elbo"] > -40
    run = load_run(tmp_path / "run")
    assert run.split("train", 100).shape == (100, 1, 8, 8)
    assert main(["evaluate", str(tmp_path / "run"), "--split", "train", "--num-examples", "50",
                 "--importance-samples", "10", "--json"]) == 0  # fmt: skip


def _image_folder(root, rows, labels):
    for i, (image, label) in enumerate(zip(rows, labels, strict=True)):
        folder = root / f"class-{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image[0] * 255).round().astype(np.uint8)).save(folder / f"{i:05d}.png")


def test_an_image_folder_streams_unasked_with_its_labels(tmp_path, capsys):
    digits = load_dataset("digits")
    rows, labels = digits.train[:400], digits.train_labels[:400]
    _image_folder(tmp_path / "images", rows, labels)
    out = tmp_path / "run"
    args = ["train", "--dataset", str(tmp_path / "images"), "--conditional", "--epochs", "1"]
    assert main([*args, "--hidden", "16", "--latent-dim", "2", "--workers", "1", "--out",
                 str(out)]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "is a folder: its images are streamed from disk" in err
    record = json.loads((out / "config.json").read_text())
    assert record["train"]["stream"] is True and record["data"]["event_shape"] == [1, 8, 8]
    run = load_run(out)
    test_labels = run.labels("test")
    assert set(test_labels.tolist()) <= set(range(10)) and len(test_labels) == 40


def test_a_large_file_streams_unasked_and_no_stream_keeps_it_in_memory(digits_npy, monkeypatch):
    path, _ = digits_npy
    monkeypatch.setattr(streamed_module, "available_memory", lambda: 100_000)
    stream, reason = should_stream(path)
    assert stream and "more than a quarter of the" in reason and "(stream=False loads" in reason
    with command_line():
        assert "(--no-stream loads" in should_stream(path)[1]
    monkeypatch.setattr(streamed_module, "available_memory", lambda: 10**12)
    assert should_stream(path) == (False, None)
    assert should_stream("mnist") == (False, None)


def test_what_cannot_stream_is_refused_in_one_line(tmp_path, digits_npy):
    path, _ = digits_npy
    with pytest.raises(DataError, match="named dataset"):
        train(_config("digits"), tmp_path / "a", progress=False)
    with pytest.raises(ConfigError, match="static"):
        train(_config(path, binarize="static"), tmp_path / "b", progress=False)
    with pytest.raises(AevbError, match="labels"):
        train(_config(path, labels=20, conditional=True), tmp_path / "c", progress=False)
    csv = tmp_path / "table.csv"
    csv.write_text("1,2\n3,4\n")
    with pytest.raises(DataError, match=r"not \.csv files"):
        train(_config(csv), tmp_path / "d", progress=False)
    assert not any((tmp_path / name).exists() for name in "abcd")


def test_training_streams_a_file_larger_than_the_memory_limit(tmp_path):
    """A 410 MB file (1.6 million rows of 64 float32 values) trained under an address-space
    limit (RLIMIT_AS) of what the process needs without data plus 250 MB — room for the
    model, the 20,000 held-out rows and the work on them, not for the file: streamed, one
    epoch completes; loaded into memory, the same command is refused for want of memory."""
    rows, width = 1_600_000, 64
    path = tmp_path / "big.npy"
    data = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, width))
    rng = np.random.default_rng(0)
    for start in range(0, rows, 100_000):
        data[start : start + 100_000] = rng.random((min(100_000, rows - start), width), np.float32)
    del data
    script = textwrap.dedent(
        f"""
        import resource, sys
        import aevb.cli, torch, numpy, pyarrow, sklearn, matplotlib.pyplot  # imports first
        from PIL import Image
        with open("/proc/self/status") as f:
            size = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize"))
        limit = size + 250 * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        sys.exit(aevb.cli.main(["train", "--dataset", {str(path)!r}, "--epochs", "1",
            "--batch-size", "2000", "--hidden", "32", "--latent-dim", "4",
            "--likelihood", "gaussian-learned", "--no-progress", "--threads", "1",
            "--out", sys.argv[1], *sys.argv[2:]]))
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    streamed = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "s"), "--stream", "--workers", "0"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert streamed.returncode == 0, streamed.stderr[-2000:]
    assert json.loads((tmp_path / "s" / "summary.json").read_text())["epochs"] == 1
    in_memory = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "m"), "--no-stream"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert in_memory.returncode != 0
    assert in_memory.stderr.startswith("error: ") and "memory" in in_memory.stderr
    assert "Traceback" not in in_memory.stderr, in_memory.stderr[-2000:]


def test_resume_may_change_the_reader_processes(tmp_path, digits_npy):
    path, _ = digits_npy
    train(_config(path, epochs=1), tmp_path / "run", progress=False)
    summary = resume(tmp_path / "run", epochs=2, workers=1, progress=False)
    assert summary["epochs"] == 2
    record = json.loads((tmp_path / "run/config.json").read_text())
    assert record["train"]["workers"] == 1
    assert main(["train", "--resume", str(tmp_path / "run"), "--epochs", "3", "--workers",
                 "0", "--no-progress"]) == 0  # fmt: skip


def test_stream_left_unset_is_recorded_as_decided(digits_npy, tmp_path):
    path, _ = digits_npy
    config = dataclasses.replace(_config(path), stream=None, workers=None, epochs=1)
    train(config, tmp_path / "r", progress=False)
    assert json.loads((tmp_path / "r/config.json").read_text())["train"]["stream"] is False
    with pytest.raises(ConfigError, match="workers sets"):  # a setting of streamed runs only
        train(dataclasses.replace(config, stream=False, workers=2), tmp_path / "w")
    assert not (tmp_path / "w").exists()
