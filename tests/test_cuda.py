"""The CUDA paths: runs, resumption, evaluation, the conv net, bf16 and the estimator on a GPU.

Every test here is marked ``cuda`` and skipped without a CUDA device; on a GPU machine
``python -m pytest -m cuda`` runs them (with the compiled CUDA-graph step's check in
tests/test_acceleration.py).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from crashes import Crash, CrashAfter

from aevb.builders import mlp
from aevb.evaluation import evaluate
from aevb.objectives import SGVBB
from aevb.runs import TrainConfig, load_run, resume, train

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("compile_step", [False, True], ids=["eager", "cuda-graphs"])
def test_a_cuda_run_resumes_to_the_uninterrupted_parameters(
    tmp_path, digits, quick_config, compile_step
):
    config = dataclasses.replace(quick_config, epochs=3, device="cuda", compile=compile_step)
    summary = train(config, tmp_path / "whole", dataset=digits, progress=False)
    assert summary["device"].startswith("cuda") and np.isfinite(summary["test_elbo"])
    with pytest.raises(Crash):
        train(config, tmp_path / "split", dataset=digits, progress=False, callbacks=[CrashAfter(1)])
    resume(tmp_path / "split", dataset=digits, progress=False)
    whole = load_run(tmp_path / "whole", "last").model.state_dict()
    split = load_run(tmp_path / "split", "last").model.state_dict()
    for name, value in whole.items():
        torch.testing.assert_close(split[name], value, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("compile_step", [False, True], ids=["eager", "cuda-graphs"])
def test_tensorboard_logs_every_step_on_the_gpu(tmp_path, digits, quick_config, compile_step):
    """Each step's loss is copied on the device before the next step overwrites it (CUDA
    graphs reuse their output buffers): an epoch's losses, weighted by batch size, are its
    −ELBO, and each step appears once."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = dataclasses.replace(
        quick_config, epochs=2, device="cuda", compile=compile_step, tensorboard=True
    )
    train(config, tmp_path / "run", dataset=digits, progress=False)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), {"scalars": 0})
    events.Reload()
    losses = events.Scalars("train/loss")
    records = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").open()]
    steps = records[0]["step"]
    assert [e.step for e in losses] == list(range(1, 2 * steps + 1))
    sizes = [quick_config.batch_size] * (steps - 1)
    sizes.append(digits.num_train - sum(sizes))
    for epoch, record in enumerate(records):
        values = [e.value for e in losses[epoch * steps : (epoch + 1) * steps]]
        weighted = float(np.dot(values, sizes)) / digits.num_train
        assert weighted == pytest.approx(-record["train_elbo"], rel=1e-4)


def test_a_cpu_checkpoint_resumes_on_the_gpu(tmp_path, digits, quick_config):
    config = dataclasses.replace(quick_config, epochs=2, device="cpu")
    with pytest.raises(Crash):
        train(config, tmp_path / "run", dataset=digits, progress=False, callbacks=[CrashAfter(1)])
    summary = resume(tmp_path / "run", device="cuda", dataset=digits, progress=False)
    assert summary["device"].startswith("cuda") and summary["epochs"] == 2


def test_evaluation_on_the_gpu_agrees_with_the_cpu(tmp_path, digits, quick_config):
    """The same model on both devices: deterministic outputs agree to float32 rounding, and
    the importance-sampled log-likelihoods (different random streams) within 4 standard
    errors of their difference."""
    train(
        dataclasses.replace(quick_config, epochs=3),
        tmp_path / "run",
        dataset=digits,
        progress=False,
    )
    cpu, gpu = load_run(tmp_path / "run"), load_run(tmp_path / "run", device="cuda")
    x = cpu.split("test")
    torch.testing.assert_close(gpu.reconstruct(x).cpu(), cpu.reconstruct(x), rtol=1e-4, atol=1e-5)
    a = cpu.evaluate(x, importance_samples=500)
    b = gpu.evaluate(x, importance_samples=500)
    assert abs(a.log_likelihood - b.log_likelihood) < 4 * np.hypot(
        a.log_likelihood_se, b.log_likelihood_se
    )
    assert a.kl == pytest.approx(b.kl, rel=1e-4)


@pytest.mark.parametrize(
    "changes",
    [
        {"architecture": "conv", "channels": (8, 16)},
        {"prior": "vamp", "prior_components": 20},
        {"precision": "bf16"},
        {"posterior": "iaf"},
        {"posterior": "planar"},
        {"top_latent_dim": 4},
        {"conditional": True, "compile": True},
        {"labels": 50, "compile": True},
    ],
    ids=["conv", "vamp", "bf16", "iaf", "planar", "two-layer", "conditional", "m2"],
)
def test_the_model_family_trains_on_the_gpu(tmp_path, digits, quick_config, changes):
    config = dataclasses.replace(quick_config, epochs=2, device="cuda", **changes)
    summary = train(config, tmp_path / "run", dataset=digits, progress=False)
    assert np.isfinite(summary["test_elbo"])
    run = load_run(tmp_path / "run", device="cuda")
    labels = run.labels("test") if config.conditional or config.labels else None
    result = run.evaluate(run.split("test"), importance_samples=50, labels=labels)
    assert result.elbo_a < result.log_likelihood


def test_the_objective_and_evaluation_keep_float32_under_bf16_on_the_gpu():
    torch.manual_seed(0)
    model = mlp((64,), 4, (32,)).cuda()
    x = torch.bernoulli(torch.full((50, 64), 0.3, device="cuda"))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        terms = SGVBB()(model, x)
    assert terms.loss.dtype == torch.float32
    assert np.isfinite(evaluate(model, x, 100).log_likelihood)


def test_the_estimator_on_the_gpu():
    from aevb.sklearn import VAEEstimator

    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6)) + 3
    model = VAEEstimator(epochs=10, hidden=(16,), device="cuda", random_state=0).fit(X)
    assert next(model.model_.parameters()).device.type == "cuda"
    assert model.transform(X).shape == (300, 2)
    assert np.isfinite(model.score_samples(X)).all()
    assert model.sample(5, random_state=0).shape == (5, 6)


def test_a_streamed_run_on_the_gpu_resumes_exactly(tmp_path, digits):
    """Rows read by a worker process into pinned memory, moved to the GPU, binarized there
    from the batch's own generator; a crash and a resume give the uninterrupted bits."""
    path = tmp_path / "rows.npy"
    np.save(path, digits.train[:, 0])
    config = dataclasses.replace(
        TrainConfig(dataset=str(path), stream=True, workers=1, latent_dim=4, hidden=(32,)),
        epochs=3,
        batch_size=64,
        device="cuda",
        compile=False,
    )
    train(config, tmp_path / "whole", progress=False)
    with pytest.raises(Crash):
        train(config, tmp_path / "split", progress=False, callbacks=[CrashAfter(1)])
    resume(tmp_path / "split", progress=False)
    whole = load_run(tmp_path / "whole", "last").model.state_dict()
    split = load_run(tmp_path / "split", "last").model.state_dict()
    for name, value in whole.items():
        assert torch.equal(value, split[name]), name


def test_torchrun_with_nccl_trains_on_every_gpu(tmp_path):
    """``torchrun --nproc-per-node G -m aevb train --device cuda`` for every GPU G of the
    machine (NCCL; one process, without process group, on a single GPU)."""
    gpus = torch.cuda.device_count()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", str(gpus), "-m", "aevb", "train", "--dataset", "digits"]
    command += ["--device", "cuda", "--epochs", "2", "--no-progress", "--out", "run"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["epochs"] == 2 and np.isfinite(summary["test_elbo"])
