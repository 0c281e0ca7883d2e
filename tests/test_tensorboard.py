"""TensorBoard logging (aevb.train.tensorboard), read back with tensorboard's own reader."""

from __future__ import annotations

import dataclasses
import io
import json
import math

import numpy as np
import pytest
from crashes import CrashAfter, train_until_crash
from PIL import Image

from aevb.data import load_dataset
from aevb.runs import TrainConfig, resume, train
from aevb.runs.run import read_run
from aevb.train import TensorBoard

pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

EPOCH_TAGS = (
    "elbo/train",
    "reconstruction/train",
    "kl/train",
    "elbo/val",
    "reconstruction/val",
    "kl/val",
    "active_units/val",
)


def events_of(run_dir) -> EventAccumulator:
    """Every event file of the run, as TensorBoard itself reads them (purging included)."""
    accumulator = EventAccumulator(
        str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "histograms": 0}
    )
    accumulator.Reload()
    return accumulator


def scalar_steps(events: EventAccumulator, tag: str) -> list[int]:
    return [event.step for event in events.Scalars(tag)]


def metrics_of(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_run_logs_losses_curves_images_and_hparams(tmp_path, digits, quick_config):
    run_dir = tmp_path / "run"
    train(
        dataclasses.replace(quick_config, tensorboard=True), run_dir, dataset=digits, progress=False
    )
    events, records = events_of(run_dir), metrics_of(run_dir)
    num_train, batch = read_run(run_dir).data["num_train"], quick_config.batch_size
    steps_per_epoch = math.ceil(num_train / batch)
    epoch_steps = [r["step"] for r in records]
    assert epoch_steps == [steps_per_epoch * (e + 1) for e in range(3)]

    # Every step's loss, once, in order; an epoch's losses weighted by their batch sizes are
    # its −ELBO (β = 1: the loss is the negative SGVB-B estimate per example).
    losses = events.Scalars("train/loss")
    assert [e.step for e in losses] == list(range(1, 3 * steps_per_epoch + 1))
    sizes = [batch] * (steps_per_epoch - 1) + [num_train - batch * (steps_per_epoch - 1)]
    for epoch, record in enumerate(records):
        values = [e.value for e in losses[epoch * steps_per_epoch : (epoch + 1) * steps_per_epoch]]
        weighted = float(np.dot(values, sizes)) / num_train
        assert weighted == pytest.approx(-record["train_elbo"], rel=1e-5)

    for tag in (*EPOCH_TAGS, "lr", "beta", "epoch_seconds"):
        assert scalar_steps(events, tag) == epoch_steps, tag
    for record, elbo, units in zip(
        records, events.Scalars("elbo/val"), events.Scalars("active_units/val"), strict=True
    ):
        assert elbo.value == pytest.approx(record["val_elbo"], rel=1e-6)
        assert units.value == record["val_active_units"]
    for dim in range(quick_config.latent_dim):
        logged = [e.value for e in events.Scalars(f"kl_per_dim/{dim}")]
        assert logged == pytest.approx([r["val_kl_per_dim"][dim] for r in records], rel=1e-6)
    assert [e.value for e in events.Scalars("lr")] == pytest.approx([quick_config.lr] * 3)
    assert [e.value for e in events.Scalars("beta")] == [1.0] * 3
    assert [h.step for h in events.Histograms("kl_per_dim")] == epoch_steps

    # Image grids each epoch: 64 samples of 8×8 in an 8×8 grid with 1-pixel gaps, and 16
    # validation images above their reconstructions (4 rows of 8).
    for tag, size in (("samples", (71, 71)), ("reconstructions", (71, 35))):
        images = events.Images(tag)
        assert [i.step for i in images] == epoch_steps
        decoded = Image.open(io.BytesIO(images[-1].encoded_image_string))
        assert decoded.size == size
        assert len(np.unique(np.asarray(decoded))) > 2  # not blank

    # The settings as hyperparameters.
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert hparams["latent_dim"].number_value == quick_config.latent_dim
    assert hparams["optimizer"].string_value == quick_config.optimizer


def test_a_resumed_run_continues_the_curves_without_duplicate_steps(tmp_path, digits, quick_config):
    """Killed at step 25 with the last checkpoint at step 20: the interrupted run logged steps
    21–25, the resumed run logs them again, and TensorBoard keeps the second copy only —
    equal to an uninterrupted run's (CPU resumption is exact)."""
    config = dataclasses.replace(quick_config, checkpoint_every=10, tensorboard=True)
    train(config, tmp_path / "whole", dataset=digits, progress=False)
    train_until_crash(config, tmp_path / "split", CrashAfter(steps=25), dataset=digits)
    assert scalar_steps(events_of(tmp_path / "split"), "train/loss") == list(range(1, 26))
    resume(tmp_path / "split", dataset=digits, progress=False)

    whole, split = events_of(tmp_path / "whole"), events_of(tmp_path / "split")
    for tag in ("train/loss", *EPOCH_TAGS, "lr"):
        assert [(e.step, e.value) for e in split.Scalars(tag)] == [
            (e.step, e.value) for e in whole.Scalars(tag)
        ], tag
    assert [i.step for i in split.Images("samples")] == [i.step for i in whole.Images("samples")]


def test_without_tensorboard_nothing_is_written(tmp_path, digits, quick_config):
    config = dataclasses.replace(quick_config, epochs=1, tensorboard=False)
    train(config, tmp_path / "run", dataset=digits, progress=False)
    assert not (tmp_path / "run" / "tensorboard").exists()


def test_a_three_epoch_mnist_run_logs_everything_and_resumes_at_the_right_step(tmp_path, data_dir):
    """The paper's MNIST model, 3 epochs of 540 steps, killed at step 700 (checkpoint at 600)
    and resumed: every step's loss once, each epoch's curves and image grids."""
    config = TrainConfig(
        dataset="mnist",
        data_dir=str(data_dir),
        epochs=3,
        checkpoint_every=300,
        tensorboard=True,
        device="cpu",
    )
    run_dir = tmp_path / "mnist"
    train_until_crash(config, run_dir, CrashAfter(steps=700))
    assert scalar_steps(events_of(run_dir), "train/loss")[-1] == 700
    resume(run_dir, progress=False)
    events, records = events_of(run_dir), metrics_of(run_dir)
    assert [r["step"] for r in records] == [540, 1080, 1620]
    assert scalar_steps(events, "train/loss") == list(range(1, 1621))
    for tag in EPOCH_TAGS:
        assert scalar_steps(events, tag) == [540, 1080, 1620], tag
    assert len(events.Tags()["scalars"]) >= len(EPOCH_TAGS) + 20  # and KL of each of 20 dims
    for tag in ("samples", "reconstructions"):
        assert [i.step for i in events.Images(tag)] == [540, 1080, 1620]
    assert events.Scalars("elbo/val")[-1].value == pytest.approx(records[-1]["val_elbo"], rel=1e-6)


def test_objectives_without_one_loss_log_the_batch_elbo(tmp_path, digits, quick_config):
    """Monte Carlo EM's update has no single loss: each step logs minus its judged metric,
    the batch's reconstruction log p(x|z) per example, whose batch-size-weighted mean over the
    epoch is the epoch's (negated)."""
    config = dataclasses.replace(quick_config, epochs=1, objective="mcem", tensorboard=True)
    train(config, tmp_path / "run", dataset=digits, progress=False)
    losses = [e.value for e in events_of(tmp_path / "run").Scalars("train/loss")]
    (record,) = metrics_of(tmp_path / "run")
    num_train, batch = read_run(tmp_path / "run").data["num_train"], quick_config.batch_size
    sizes = [batch] * (len(losses) - 1) + [num_train - batch * (len(losses) - 1)]
    expected = -record["train_reconstruction"]
    assert float(np.dot(losses, sizes)) / num_train == pytest.approx(expected, 1e-5)


def test_without_validation_rows_samples_are_still_drawn(tmp_path, quick_config):
    config = dataclasses.replace(quick_config, epochs=1, val_fraction=0.0, tensorboard=True)
    dataset = load_dataset("digits", val_fraction=0.0)
    train(config, tmp_path / "run", dataset=dataset, progress=False)
    tags = events_of(tmp_path / "run").Tags()["images"]
    assert tags == ["samples"]


def test_turned_on_when_resuming_it_writes_the_hyperparameters(tmp_path, digits, quick_config):
    config = dataclasses.replace(quick_config, epochs=1, tensorboard=False)
    train(config, tmp_path / "run", dataset=digits, progress=False)
    resume(tmp_path / "run", epochs=2, tensorboard=True, dataset=digits, progress=False)
    events = events_of(tmp_path / "run")
    assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")
    assert scalar_steps(events, "train/loss") == list(range(22, 43))  # the second epoch's


def test_a_failed_write_stops_the_logging_not_the_run(tmp_path, digits, quick_config, capsys):
    """The event folder cannot be made (a file is in its place): one warning line, and the
    run trains to its end."""
    blocked = tmp_path / "blocked"
    blocked.write_text("not a folder")
    config = dataclasses.replace(quick_config, epochs=2, tensorboard=False)
    summary = train(
        config,
        tmp_path / "run",
        dataset=digits,
        progress=False,
        callbacks=[TensorBoard(blocked / "tensorboard")],
    )
    assert summary["epochs"] == 2
    warnings = [line for line in capsys.readouterr().err.splitlines() if "TensorBoard" in line]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"warning: TensorBoard logging stopped: cannot write {blocked}")
