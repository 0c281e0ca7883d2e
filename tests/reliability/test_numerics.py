"""The numerical layer: NaN and inf in batches and gradients, parameters that stop being
finite, and divergence without any NaN. Keeps the issue's findings 12 (``--lr inf``: a NaN
update after finite gradients was saved as "the last good state") and 13 (Adam at lr 1e3
exiting 0 with a test ELBO of −5e12) as regression tests."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch
from helpers import QUICK, assert_same, cli

from aevb.cli import main
from aevb.errors import NumericalFault
from aevb.runs import BEST, LAST, load_model, train
from aevb.runs import run as run_module
from aevb.train import Callback, Trainer
from aevb.train import checkpoint as ckpt


def _snapshot(trainer: Trainer) -> tuple[dict, dict]:
    return (
        copy.deepcopy(trainer.model.state_dict()),
        copy.deepcopy(trainer.optimizer.state_dict()["state"]),
    )


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
        assert_same(before, after)  # the faulty step changed nothing
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
    assert_same(saved, {k: v.cpu() for k, v in trainer.model.state_dict().items()})
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


class PoisonParameter(Callback):
    """After step ``at`` (1-based), one parameter entry becomes NaN: what an update from
    finite gradients does when it overflows (the issue's ``--lr inf``)."""

    def __init__(self, at: int):
        self.at = at

    def on_step_end(self, trainer: Trainer) -> None:
        if trainer.state.step == self.at:
            with torch.no_grad():
                next(trainer.model.parameters())[0, 0] = float("nan")


def test_parameters_that_stop_being_finite_are_never_saved(tmp_path, digits, quick_config):
    """A NaN parameter after step 7: the checkpoint due at step 10 is not written, the run
    stops saying so, and last.safetensors still holds step 5 — finite, and resumable."""
    config = dataclasses.replace(quick_config, epochs=2, checkpoint_every=5)
    with pytest.raises(NumericalFault) as stopped:
        train(config, tmp_path, dataset=digits, progress=False, callbacks=[PoisonParameter(7)])
    message = str(stopped.value)
    assert "are no longer finite" in message and "was not saved" in message
    assert "holds that last good state" not in message
    assert f"{tmp_path / LAST} was not overwritten: it holds the state at epoch 1, step 5" in (
        message
    )
    assert not stopped.value.saved
    _, metadata = ckpt.load_checkpoint(tmp_path / LAST)  # refuses non-finite tensors
    assert metadata["state"]["step"] == 5


def test_a_huge_learning_rate_never_leaves_a_non_finite_checkpoint(tmp_path):
    """``--lr 1e30`` (``inf`` is refused as a setting): whatever stops the run, it is one clear
    error, and every checkpoint left loads (loading refuses NaN or infinite tensors)."""
    run = tmp_path / "run"
    outcome = cli(
        "train", "--lr", "1e30", "--epochs", "2", "--checkpoint-every", "3", *QUICK, "--out", run
    )
    assert outcome.clear_error, outcome.err
    assert "training stopped" in outcome.err
    for name in (LAST, BEST):
        if (run / name).exists():
            tensors, _ = ckpt.load_checkpoint(run / name)
            assert all(t.isfinite().all() for t in tensors.values() if t.is_floating_point())


def test_divergence_without_nan_is_stopped_and_not_saved(tmp_path):
    """Adam at lr 1e3 on digits: the ELBO falls to about −1e13 with no NaN (the issue's
    finding 13). The divergence guard stops the run at the end of epoch 1 with a diagnosis;
    no diverged state is written as the best or last checkpoint."""
    run = tmp_path / "run"
    outcome = cli("train", "--lr", "1e3", "--epochs", "3", *QUICK, "--out", run)
    assert outcome.clear_error, outcome.err
    assert "the run diverged: its training elbo is" in outcome.err
    assert "--no-divergence-guard" in outcome.err and "Lower the learning rate (now 1000)" in (
        outcome.err
    )
    assert not (run / BEST).exists() and not (run / "summary.json").exists()


def test_the_divergence_guard_can_be_turned_off(tmp_path):
    """``--no-divergence-guard``: the same diverging run trains to the end (the user asked)."""
    run = tmp_path / "run"
    outcome = cli(
        "train", "--lr", "1e3", "--epochs", "2", "--no-divergence-guard", *QUICK, "--out", run
    )
    assert outcome.status == 0, outcome.err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test_elbo"] < -1e4  # diverged, as asked for, and reported as such
