"""The fast training step: compiled and plain paths agree, fallback, bf16 autocast."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from aevb.builders import mlp
from aevb.cli import main
from aevb.objectives import make_objective
from aevb.runs import train
from aevb.train import Callback, Trainer
from aevb.train import step as step_module
from aevb.train.step import MIN_STEPS_TO_COMPILE_ON_CPU, autocast, should_compile, training_loss


class Capture(Callback):
    """Keeps the Trainer a run builds."""

    def on_fit_start(self, trainer):
        self.trainer = trainer


def _fit_recording_losses(config, run_dir, dataset) -> tuple[Trainer, torch.Tensor]:
    """Train a run, recording the loss of every step; returns its Trainer and the (steps,)
    losses."""
    losses, call = [], step_module.CompiledStep.__call__

    def recording(self, *args):
        loss, metrics = call(self, *args)
        losses.append(loss.detach().clone())
        return loss, metrics

    capture = Capture()
    step_module.CompiledStep.__call__ = recording
    try:
        train(config, run_dir, dataset=dataset, progress=False, callbacks=[capture])
    finally:
        step_module.CompiledStep.__call__ = call
    return capture.trainer, torch.stack(losses)


@pytest.mark.parametrize(
    "settings",
    [
        {"objective": "sgvb-b"},
        {"objective": "iwae", "samples": 3},
        {"objective": "sgvb-a", "posterior": "full"},
        {"objective": "score-function", "likelihood": "gaussian-learned", "binarize": "none"},
    ],
    ids=["sgvb-b", "iwae", "sgvb-a-full", "score-function-gaussian"],
)
# Two epochs of the score-function estimator leave the tiny model's posterior collapsed.
@pytest.mark.filterwarnings("ignore:only 0 of 4 latent units are active")
def test_compiled_step_follows_the_plain_trajectory(tmp_path, digits, quick_config, settings):
    """Same seed, same noise (eager random draws), so the two paths differ only by the
    rounding of fused float32 kernels. 1,294 training rows at batch 64 end each epoch with a
    tail batch of 14, which the compiled path handles with a second static graph."""
    _assert_compiled_matches_plain(
        dataclasses.replace(quick_config, epochs=2, **settings), tmp_path, digits
    )


@pytest.mark.cuda
def test_cuda_graph_step_follows_the_plain_trajectory(tmp_path, digits, quick_config):
    """The same check on a GPU, where the compiled step also runs as CUDA graphs."""
    config = dataclasses.replace(quick_config, epochs=2, device="cuda")
    _assert_compiled_matches_plain(config, tmp_path, digits)


def _assert_compiled_matches_plain(config, tmp_path, digits) -> None:
    plain, plain_losses = _fit_recording_losses(
        dataclasses.replace(config, compile=False), tmp_path / "plain", digits
    )
    fast, fast_losses = _fit_recording_losses(
        dataclasses.replace(config, compile=True), tmp_path / "fast", digits
    )
    assert not plain.training_step.active
    assert fast.training_step.active, "the compiled step fell back to eager"
    assert len(fast_losses) == 2 * plain.steps_per_epoch == len(plain_losses)
    # Fused kernels round differently (float32 ε ≈ 1.2e-7): measured on the CPU over these
    # 42 steps, the losses differ by ≤ 3.3e-7 relative and the weights by ≤ 1e-7. The
    # tolerances allow 30× that; a real difference (another noise draw, a wrong tail batch)
    # moves losses by > 1e-2.
    torch.testing.assert_close(fast_losses, plain_losses, rtol=1e-5, atol=1e-5)
    for name, value in plain.model.state_dict().items():
        torch.testing.assert_close(fast.model.state_dict()[name], value, rtol=1e-5, atol=3e-6)


class _FailingBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.sum()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("no C++ compiler found\nlong internal trace")


@pytest.mark.parametrize("fails_in", ["forward", "backward"])
def test_compile_failure_falls_back_with_one_notice(
    tmp_path, digits, quick_config, monkeypatch, capsys, fails_in
):
    def broken_compile(function, device):
        def compiled(model, *args):
            if fails_in == "forward":
                raise RuntimeError("no C++ compiler found\nlong internal trace")
            return _FailingBackward.apply(next(model.parameters())), None

        return compiled

    monkeypatch.setattr(step_module, "_compile", broken_compile)
    config = dataclasses.replace(quick_config, epochs=1)
    fallen_back, fallback_losses = _fit_recording_losses(
        dataclasses.replace(config, compile=True), tmp_path / "fallback", digits
    )
    notices = [line for line in capsys.readouterr().err.splitlines() if "notice" in line]
    assert notices == [
        "notice: training without torch.compile (RuntimeError: no C++ compiler found); "
        "pass compile=False to skip the attempt"
    ]
    assert not fallen_back.training_step.active
    _, plain_losses = _fit_recording_losses(
        dataclasses.replace(config, compile=False), tmp_path / "plain", digits
    )
    assert torch.equal(fallback_losses, plain_losses)  # the eager fallback is the plain path


def test_auto_compile_rule():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert should_compile(None, cuda, 1)
    assert not should_compile(None, cpu, MIN_STEPS_TO_COMPILE_ON_CPU - 1)
    assert should_compile(None, cpu, MIN_STEPS_TO_COMPILE_ON_CPU)
    assert should_compile(True, cpu, 1) and not should_compile(False, cuda, 10**9)


def test_bf16_autocast_keeps_densities_and_loss_float32():
    torch.manual_seed(0)
    model = mlp((1, 8, 8), latent_dim=4, hidden=(32,))
    x = torch.bernoulli(torch.full((50, 1, 8, 8), 0.3))
    beta = torch.tensor(1.0)
    with autocast(x.device, "bf16"):
        # Inside the network the products are bfloat16; what leaves it is float32.
        hidden = model.encoder.network.layers[0](x.flatten(1))
        posterior = model.posterior(x)
    assert hidden.dtype == torch.bfloat16
    assert posterior.base_dist.loc.dtype == torch.float32
    losses = {}
    for precision in ("float32", "bf16"):
        torch.manual_seed(1)
        loss, metrics = training_loss(model, make_objective("sgvb-b"), x, beta, precision)
        assert loss.dtype == metrics.dtype == torch.float32
        losses[precision] = loss
    # bfloat16 keeps 8 bits of mantissa (relative rounding 2^-9 ≈ 0.2% per product); the loss
    # (~45 nats) sums 64 such terms, so it moves by well under 1%.
    torch.testing.assert_close(losses["bf16"], losses["float32"], rtol=1e-2, atol=0)


def test_bf16_training_run(tmp_path, digits, quick_config):
    config = dataclasses.replace(quick_config, epochs=2, precision="bf16", compile=False)
    capture = Capture()
    summary = train(config, tmp_path / "run", dataset=digits, progress=False, callbacks=[capture])
    history = capture.trainer.state.history
    assert history[1]["train_elbo"] > history[0]["train_elbo"]
    assert torch.isfinite(torch.tensor(summary["test_elbo"]))


def test_cli_speed_flags_are_recorded_and_compile_may_change_on_resume(tmp_path, capsys):
    run, threads = tmp_path / "run", torch.get_num_threads()
    common = ["--no-progress", "--latent-dim", "2", "--hidden", "16", "--batch-size", "200"]
    speed = ["--no-compile", "--precision", "bf16", "--threads", "1"]
    assert main(["train", "--epochs", "1", *speed, *common, "--out", str(run)]) == 0
    settings = json.loads((run / "config.json").read_text())["train"]
    assert settings["compile"] is False and settings["precision"] == "bf16"
    assert torch.get_num_threads() == 1
    torch.set_num_threads(threads)
    assert main(["train", "--resume", str(run), "--epochs", "2", "--no-compile"]) == 0
    assert main(["train", "--resume", str(run), "--precision", "float32"]) == 2
    assert "--precision cannot change when resuming" in capsys.readouterr().err
