"""Learning-rate schedules (aevb.train.schedules): closed forms, the run layer, exact resume."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from crashes import CrashAfter, train_until_crash

from aevb.cli import main
from aevb.errors import ConfigError
from aevb.runs import TrainConfig, load_model, resume, train
from aevb.train import Callback
from aevb.train.schedules import WarmupSchedule, make_schedule


def learning_rates(schedule: WarmupSchedule, steps: int) -> list[float]:
    """The learning rate each of ``steps`` optimiser steps runs with."""
    optimizer = schedule.optimizer
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return rates


def sgd(lr: float = 1.0) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_warmup_then_cosine_follows_its_closed_form():
    warmup, total, final = 4, 20, 0.1
    schedule = WarmupSchedule(
        sgd(2.0), "cosine", warmup_steps=warmup, total_steps=total, minimum=final
    )
    rates = learning_rates(schedule, total + 3)
    expected = [2.0 * (t + 1) / warmup for t in range(warmup)]
    for t in range(warmup, total + 3):
        done = min(1.0, (t - warmup) / (total - warmup - 1))
        expected.append(2.0 * (final + (1 - final) * (1 + math.cos(math.pi * done)) / 2))
    assert rates == pytest.approx(expected, rel=1e-12)
    assert rates[warmup] == pytest.approx(2.0)  # the full rate right after the warm-up
    assert rates[total - 1] == pytest.approx(2.0 * final)  # the last step at the floor


def test_step_schedule_decays_every_few_epochs():
    schedule = WarmupSchedule(sgd(), "step", steps_per_epoch=5, step_epochs=2, gamma=0.5)
    rates = learning_rates(schedule, 30)
    assert rates == pytest.approx([0.5 ** (t // 10) for t in range(30)])


def test_plateau_decays_after_patience_epochs_without_improvement():
    schedule = WarmupSchedule(sgd(), "plateau", patience=2, gamma=0.1)
    seen = []
    for improved in (True, False, False, True, False, True, False, False):
        schedule.epoch_end(improved)
        seen.append(schedule.optimizer.param_groups[0]["lr"])
    assert seen == pytest.approx([1, 1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.01])


def test_warmup_composes_with_the_plateau():
    schedule = WarmupSchedule(sgd(), "plateau", warmup_steps=4, patience=1, gamma=0.5)
    assert learning_rates(schedule, 2) == pytest.approx([0.25, 0.5])
    schedule.epoch_end(False)  # halved mid-warm-up: the warm-up goes on at half the rate
    assert learning_rates(schedule, 3) == pytest.approx([0.375, 0.5, 0.5])


def test_constant_without_warmup_adds_no_scheduler():
    assert make_schedule(sgd(), "constant", 0, epochs=3, steps_per_epoch=10) is None


class LearningRates(Callback):
    """Records the learning rate of every step (read before the step's scheduler update)."""

    def __init__(self) -> None:
        self.rates: list[float] = []

    def on_fit_start(self, trainer):
        self.rates = []
        self.trainer = trainer

    def on_step_end(self, trainer):  # the scheduler has stepped: the next step's rate
        self.rates.append(trainer.optimizer.param_groups[0]["lr"])


def test_a_run_trains_with_its_schedule(tmp_path, digits, quick_config):
    config = dataclasses.replace(
        quick_config, lr_schedule="cosine", lr_warmup_steps=10, lr_final=0.2, lr=1e-2
    )
    recorder = LearningRates()
    train(config, tmp_path / "run", dataset=digits, progress=False, callbacks=[recorder])
    steps = 3 * 21
    expected = WarmupSchedule(sgd(1e-2), "cosine", warmup_steps=10, total_steps=steps, minimum=0.2)
    assert recorder.rates == pytest.approx(learning_rates(expected, steps + 1)[1:], rel=1e-6)
    assert recorder.rates[-1] == pytest.approx(0.2 * 1e-2)


@pytest.mark.parametrize(
    "settings",
    [
        {"lr_schedule": "cosine", "lr_warmup_steps": 15},
        {"lr_schedule": "step", "lr_step_epochs": 1, "lr_decay": 0.5},
        {"lr_schedule": "plateau", "lr_patience": 1, "lr_decay": 0.5},
    ],
    ids=["cosine", "step", "plateau"],
)
def test_a_schedule_resumes_exactly_mid_epoch(tmp_path, digits, quick_config, settings):
    """Killed at step 95 (checkpoint at 88, epoch 5 of 21-step epochs), resumed: every
    learning rate and the final weights are those of the run that was never interrupted. At
    lr 0.03 the validation ELBO of epoch 4 is worse than epoch 3's, so the plateau schedule
    halves the rate before the kill, and its state must survive it."""
    config = dataclasses.replace(quick_config, epochs=5, checkpoint_every=8, lr=3e-2, **settings)
    whole = LearningRates()
    train(config, tmp_path / "whole", dataset=digits, progress=False, callbacks=[whole])
    before = LearningRates()
    train_until_crash(config, tmp_path / "split", CrashAfter(steps=95), before, dataset=digits)
    after = LearningRates()
    resume(tmp_path / "split", dataset=digits, progress=False, callbacks=[after])
    assert before.rates[:88] + after.rates == whole.rates
    assert len(set(whole.rates[:88])) > 1  # the schedule changed the rate before the kill
    a, b = load_model(tmp_path / "whole", "last"), load_model(tmp_path / "split", "last")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name


def test_settings_of_another_schedule_are_refused():
    with pytest.raises(ConfigError, match="lr_final applies to lr_schedule cosine"):
        TrainConfig(lr_schedule="step", lr_final=0.1)
    with pytest.raises(ConfigError, match="lr_patience applies to lr_schedule plateau"):
        TrainConfig(lr_patience=3)


def test_cli_refuses_a_bad_schedule_in_one_line(tmp_path, capsys):
    code = main(["train", "--lr-schedule", "step", "--lr-final", "0.5", "--out", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if not line.startswith("notice:")]  # threads
    assert len(lines) == 1 and "--lr-final applies to" in err
