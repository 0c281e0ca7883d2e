"""Fault injection: NaN and inf in batches and gradients, divergence, SIGKILL at random moments,
and files that try to run code when loaded."""

from __future__ import annotations

import copy
import dataclasses
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from aevb.cli import main
from aevb.errors import AevbError, NumericalFault
from aevb.runs import LAST, load_model, resume, train
from aevb.runs import run as run_module
from aevb.train import Callback, Trainer

QUICK = ["--latent-dim", "4", "--hidden", "32", "--batch-size", "64", "--no-progress"]


def _snapshot(trainer: Trainer) -> tuple[dict, dict]:
    return (
        copy.deepcopy(trainer.model.state_dict()),
        copy.deepcopy(trainer.optimizer.state_dict()["state"]),
    )


def _assert_same(a, b) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_same(a[key], b[key])
    elif isinstance(a, tuple | list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    else:
        assert torch.equal(torch.as_tensor(a), torch.as_tensor(b))


class Inject(Callback):
    """Wraps the run's step so that, at the given (0-based) calls, ``corrupt(trainer)`` runs
    after the backward pass; ``snapshots`` collects (call, state before, state at the next
    call). ``trainer`` is the run's Trainer."""

    def __init__(self, at_calls: set[int], corrupt):
        self.at_calls, self.corrupt, self.snapshots = at_calls, corrupt, []

    def on_fit_start(self, trainer: Trainer) -> None:
        self.trainer = trainer
        step, calls = trainer.training_step, [0]

        def injecting(*args):
            if calls[0] - 1 in self.at_calls:
                self.snapshots[-1] = (*self.snapshots[-1], _snapshot(trainer))
            if calls[0] in self.at_calls:
                self.snapshots.append((calls[0], _snapshot(trainer)))
            outputs = step(*args)
            if calls[0] in self.at_calls:
                self.corrupt(trainer)
            calls[0] += 1
            return outputs

        trainer.training_step = injecting


def _set_first_gradient(value: float):
    def corrupt(trainer: Trainer) -> None:
        next(trainer.model.parameters()).grad[0, 0] = value

    return corrupt


@pytest.mark.parametrize("fused", [True, False], ids=["fused-adam", "foreach-adam"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_gradient_skips_the_update(
    tmp_path, digits, quick_config, capsys, monkeypatch, fused, bad
):
    """A gradient with one NaN/inf entry: parameters and optimiser state stay exactly as
    they were (Adam's step count included), the step is logged, training goes on."""
    if not fused:
        # Without a fused kernel the skip is decided on the host, one sync per step.
        monkeypatch.setattr(
            run_module,
            "make_optimizer",
            lambda name, p, lr, weight_decay: torch.optim.Adam(list(p), lr=lr, foreach=True),
        )
    inject = Inject({3, 11}, _set_first_gradient(bad))
    config = dataclasses.replace(quick_config, epochs=1)
    train(config, tmp_path, dataset=digits, progress=False, callbacks=[inject])
    trainer, snapshots = inject.trainer, inject.snapshots
    assert trainer._fused_optimizer is fused
    for _, before, after in snapshots:
        _assert_same(before, after)  # the faulty step changed nothing
    assert trainer.state.nonfinite_steps == [4, 12]
    assert "non-finite loss or gradient at step 4 (epoch 1); skipped" in capsys.readouterr().err
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert record["nonfinite_steps"] == [4, 12] and np.isfinite(record["train_elbo"])
    assert all(p.isfinite().all() for p in trainer.model.parameters())


def test_nan_in_a_batch_is_skipped(tmp_path, digits, quick_config, capsys):
    """NaN pixels in one batch (the loaders refuse them, so they are planted in the epoch's
    tensor): that step is skipped, its rows leave the epoch's mean, the run learns on."""

    class PlantNaN(Callback):
        def on_fit_start(self, trainer):
            self.trainer, epoch = trainer, trainer.data.epoch

            def with_nan(skip=0):
                batches = list(epoch(skip))
                if trainer.state.epoch == 0:
                    batches[5].x[7, 0, 1, 2] = float("nan")  # row 7 of the 6th batch: step 6
                return iter(batches)

            trainer.data.epoch = with_nan

    plant = PlantNaN()
    config = dataclasses.replace(quick_config, epochs=3)
    train(config, tmp_path, dataset=digits, progress=False, callbacks=[plant])
    trainer = plant.trainer
    assert trainer.state.nonfinite_steps == [6]
    history = trainer.state.history
    assert history[0]["nonfinite_steps"] == [6] and "nonfinite_steps" not in history[1]
    assert all(np.isfinite(r["train_elbo"]) and np.isfinite(r["val_elbo"]) for r in history)
    assert history[-1]["val_elbo"] > history[0]["val_elbo"]
    assert "step 6 (epoch 1); skipped" in capsys.readouterr().err


def test_repeated_faults_stop_with_a_diagnosis_and_keep_the_good_state(
    tmp_path, digits, quick_config
):
    config = dataclasses.replace(quick_config, epochs=2, max_nonfinite_steps=3)
    inject = Inject(set(range(5, 100)), _set_first_gradient(float("nan")))
    with pytest.raises(NumericalFault) as stopped:
        train(config, tmp_path, dataset=digits, progress=False, callbacks=[inject])
    trainer = inject.trainer
    message = str(stopped.value)
    assert "3 steps had a non-finite loss or gradient (steps 6, 7, 8" in message
    assert "Diagnosis: the encoder's log-variances span" in message
    assert "Lower the learning rate (now 0.001)" in message
    assert f"{tmp_path / LAST} holds that last good state" in message
    # The checkpoint holds the state after step 5, the last good one.
    saved = load_model(tmp_path, "last").state_dict()
    _assert_same(saved, {k: v.cpu() for k, v in trainer.model.state_dict().items()})
    assert all(v.isfinite().all() for v in saved.values())


def test_divergence_from_a_huge_learning_rate_is_diagnosed_by_the_cli(tmp_path, capsys):
    """SGD with lr 1000 drives the encoder's log-variances to the edge of their range and the
    loss to infinity within a few steps: exit 2, the steps, and what the model looks like."""
    args = ["train", "--optimizer", "sgd", "--lr", "1000", "--max-nonfinite-steps", "3"]
    assert main([*args, *QUICK, "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err
    assert "error: training stopped: 3 steps had a non-finite loss or gradient" in error
    assert "reach the edge of their range" in error
    assert "Traceback" not in error


# ----------------------------------------------------------------------- kills at any moment
def _train_process(run_dir: Path, resume_run: bool) -> subprocess.Popen:
    args = ["--resume", str(run_dir)] if resume_run else ["--out", str(run_dir), *RUN]
    return subprocess.Popen(
        [sys.executable, "-m", "aevb.cli", "train", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


RUN = ["--epochs", "8", "--checkpoint-every", "7", "--seed", "3", *QUICK]


def test_sigkill_at_random_moments_then_resume_is_bit_identical(tmp_path):
    """SIGKILL (no chance to clean up) at random moments — during start-up, mid-epoch, while a
    checkpoint is written, at the end — then the user's recovery: ``--resume`` if the run
    folder has its config, else the same command again. Three kill times per seed, three
    seeds; every recovered run ends with the uninterrupted run's parameters, bit for bit."""
    started = time.monotonic()
    whole = _train_process(tmp_path / "whole", resume_run=False)
    _, error = whole.communicate(timeout=300)
    assert whole.returncode == 0, error
    duration = time.monotonic() - started
    reference = load_model(tmp_path / "whole", "last").state_dict()

    for seed in range(3):
        rng, run_dir = random.Random(seed), tmp_path / f"killed-{seed}"
        for _ in range(3):
            process = _train_process(run_dir, (run_dir / "config.json").exists())
            time.sleep(rng.uniform(0.2, duration))
            process.send_signal(signal.SIGKILL)
            process.communicate(timeout=60)
        recovery = _train_process(run_dir, (run_dir / "config.json").exists())
        _, error = recovery.communicate(timeout=300)
        assert recovery.returncode == 0, (seed, error)
        recovered = load_model(run_dir, "last").state_dict()
        for name, value in reference.items():
            assert torch.equal(recovered[name], value), (seed, name)
        assert json.loads((run_dir / "summary.json").read_text())["epochs"] == 8
        assert not [*run_dir.glob("**/.*.tmp")]  # no half-written file left behind


def test_resume_after_a_kill_before_the_first_checkpoint(tmp_path, digits, quick_config):
    """config.json written, no checkpoint yet: resuming starts the run over, identically."""
    config = dataclasses.replace(quick_config, epochs=1)

    class KillAtStart(Callback):
        def on_fit_start(self, trainer):
            raise KeyboardInterrupt  # config.json is written, no checkpoint yet

    with pytest.raises(KeyboardInterrupt):
        train(
            config, tmp_path / "killed", dataset=digits, progress=False, callbacks=[KillAtStart()]
        )
    assert (tmp_path / "killed/config.json").exists()
    assert not (tmp_path / "killed" / LAST).exists()
    resume(tmp_path / "killed", dataset=digits, progress=False)
    train(config, tmp_path / "whole", dataset=digits, progress=False)
    _assert_same(
        load_model(tmp_path / "killed", "last").state_dict(),
        load_model(tmp_path / "whole", "last").state_dict(),
    )


# --------------------------------------------------------------- files that try to run code
# (.npy/.npz pickles: tests/test_data.py::test_pickles_are_never_loaded)
def test_a_pickle_planted_as_checkpoint_is_refused_without_running_it(
    tmp_path, digits, quick_config, capsys, exploit
):
    """torch.save writes pickles; one put in place of a checkpoint is not a safetensors file,
    so resume, evaluate and sample refuse it — and nothing in it runs."""
    config = dataclasses.replace(quick_config, epochs=1)
    train(config, tmp_path / "run", dataset=digits, progress=False)
    payload, marker = exploit
    for name in (LAST, "checkpoints/best.safetensors"):
        torch.save({"model.weight": payload}, tmp_path / "run" / name)
    with pytest.raises(AevbError, match="truncated, corrupt or not an aevb checkpoint"):
        resume(tmp_path / "run", dataset=digits, progress=False)
    for command in (["sample", tmp_path / "run"], ["evaluate", tmp_path / "run"]):
        assert main([str(a) for a in command]) == 2
        assert "not an aevb checkpoint" in capsys.readouterr().err
    assert not marker.exists()


def test_no_code_path_unpickles():
    """The package never calls pickle, torch.load or np.load with pickles allowed."""
    package = Path(run_module.__file__).parents[1]
    source = "\n".join(p.read_text() for p in package.glob("**/*.py"))
    for forbidden in ("import pickle", "torch.load(", "allow_pickle=True"):
        assert forbidden not in source, forbidden
