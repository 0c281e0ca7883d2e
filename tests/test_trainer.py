"""The one loop on its own, without a run folder: callbacks and their order, a learning-rate
scheduler resumed exactly, the judged metric, best weights kept in memory."""

from __future__ import annotations

import torch

from aevb.builders import mlp
from aevb.data import Binarize, TensorLoader, Transforms
from aevb.objectives import SGVBB, Autoencoder
from aevb.train import BestWeights, Callback, Trainer, Validation, make_optimizer


def _parts(digits, seed: int = 0):
    torch.manual_seed(seed)
    model = mlp(digits.event_shape, latent_dim=3, hidden=(16,))
    loader = TensorLoader(torch.from_numpy(digits.train), 128, Transforms([Binarize("dynamic")]))
    return model, loader, make_optimizer("adam", model.parameters(), 1e-2)


class Recorder(Callback):
    def __init__(self):
        self.calls = []

    def on_fit_start(self, trainer):
        self.calls.append("fit_start")

    def on_step_end(self, trainer):
        self.calls.append("step")

    def on_validation(self, trainer, record):
        self.calls.append("validation")

    def on_epoch_end(self, trainer, record):
        self.calls.append(f"epoch_end:{record['epoch']}")

    def on_fit_end(self, trainer):
        self.calls.append("fit_end")

    def close(self, trainer):
        self.calls.append("close")


def test_callbacks_run_in_their_documented_order(digits):
    model, loader, optimizer = _parts(digits)
    recorder = Recorder()
    state = Trainer(model, SGVBB(), loader, optimizer, callbacks=[recorder]).fit(2)
    steps = len(loader)
    epoch = ["step"] * steps + ["validation"]
    expected = ["fit_start", *epoch, "epoch_end:1", *epoch, "epoch_end:2", "fit_end", "close"]
    assert recorder.calls == expected
    assert [r["epoch"] for r in state.history] == [1, 2] and state.step == 2 * steps
    assert state.monitor == "train_elbo"  # no validation callback: judged on training data


def test_a_scheduler_is_stepped_per_step_and_resumed_exactly(digits):
    """StepLR every 5 steps: after 3 epochs the learning rate and the parameters equal those
    of a Trainer that stopped after 1 epoch, was checkpointed, and resumed in a new one."""

    def trainer(seed=0):
        model, loader, optimizer = _parts(digits, seed)
        schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.8)
        return Trainer(model, SGVBB(), loader, optimizer, schedule)

    torch.manual_seed(42)
    whole = trainer()
    whole.fit(3)
    torch.manual_seed(42)
    first = trainer()
    first.fit(1)
    tensors, metadata = first.checkpoint()
    torch.manual_seed(7)  # the resumed Trainer must not depend on the global random state
    second = trainer(seed=1)  # other initial weights: overwritten by the checkpoint
    second.restore(tensors, metadata)
    second.fit(3)
    assert second.optimizer.param_groups[0]["lr"] == whole.optimizer.param_groups[0]["lr"]
    assert whole.optimizer.param_groups[0]["lr"] < 1e-2
    for name, value in whole.model.state_dict().items():
        assert torch.equal(second.model.state_dict()[name], value), name


def test_the_autoencoder_is_judged_by_its_reconstruction_and_best_weights_are_kept(digits):
    model, loader, optimizer = _parts(digits)
    val = Binarize("dynamic").prepare(torch.from_numpy(digits.val))
    best = BestWeights()
    trainer = Trainer(model, Autoencoder(), loader, optimizer, callbacks=[Validation(val), best])
    state = trainer.fit(4)
    assert state.monitor == "val_reconstruction"
    assert set(state.history[0]) >= {"train_reconstruction", "val_reconstruction"}
    assert "train_elbo" not in state.history[0]
    values = [r["val_reconstruction"] for r in state.history]
    assert state.best_epoch == 1 + values.index(max(values))
    best.restore(trainer)
    restored = Autoencoder().metrics(trainer.model, val)["reconstruction"]
    assert abs(restored - max(values)) < 1e-9
