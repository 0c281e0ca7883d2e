"""Conditional and semi-supervised (M2) VAEs: densities against a closed form, the M2 bound
and loss against exact posteriors, the semi-supervised loader, runs through the CLI and API."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.distributions import MultivariateNormal

from aevb.builders import mlp
from aevb.cli import EXIT_USER_ERROR, main
from aevb.conditional import (
    ConditionalDecoder,
    ConditionalEncoder,
    ConditionalVAE,
    SemiSupervisedVAE,
    check_labels,
)
from aevb.data import SemiSupervisedLoader, TensorLoader
from aevb.errors import ConfigError, DataError
from aevb.evaluation import evaluate, log_likelihood_per_example
from aevb.heads import DiagonalGaussian, Gaussian
from aevb.objectives import SemiSupervised, latent_samples, make_objective
from aevb.priors import StandardNormal
from aevb.runs import TrainConfig
from aevb.runs.run import labelled_rows

D, L, C = 3, 2, 3
SIGMA = 0.5


class _LinearGaussian:
    """p(z) = N(0, I), p(x|z, y) = N(W z + b_y, σ² I) with orthogonal columns of W, so that
    the exact posterior q(z|x, y) = N(A (x − b_y), σ² M⁻¹), M = WᵀW + σ² I, is diagonal."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        q, _ = torch.linalg.qr(torch.randn(D, D, generator=generator, dtype=torch.float64))
        self.scales = torch.tensor([1.5, 0.7], dtype=torch.float64)
        self.w = q[:, :L] * self.scales
        self.b = torch.randn(C, D, generator=generator, dtype=torch.float64) * 2
        self.m = self.scales**2 + SIGMA**2  # diagonal of M
        self.a = self.w.T / self.m[:, None]  # M⁻¹ Wᵀ, (L, D)

    def log_p_x_given_y(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        covariance = self.w @ self.w.T + SIGMA**2 * torch.eye(D, dtype=torch.float64)
        return MultivariateNormal(self.b[y], covariance).log_prob(x)

    def log_p_x_y(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x, c) for every class: (N, C)."""
        every = [self.log_p_x_given_y(x, torch.full((len(x),), c)) for c in range(C)]
        return torch.stack(every, -1) - math.log(C)

    def parts(self) -> tuple[nn.Module, nn.Module]:
        encoder_net = nn.Linear(D + C, 2 * L).double()
        decoder_net = nn.Linear(L + C, D).double()
        with torch.no_grad():
            encoder_net.weight.zero_()
            encoder_net.weight[:L, :D] = self.a
            encoder_net.weight[:L, D:] = -(self.a @ self.b.T)
            encoder_net.bias.zero_()
            encoder_net.bias[L:] = torch.log(SIGMA**2 / self.m)
            decoder_net.weight[:, :L] = self.w
            decoder_net.weight[:, L:] = self.b.T
            decoder_net.bias.zero_()
        encoder = ConditionalEncoder(encoder_net, DiagonalGaussian(L), (D,), C)
        decoder = ConditionalDecoder(decoder_net, Gaussian((D,), SIGMA), L, C)
        return encoder, decoder

    def conditional(self) -> ConditionalVAE:
        encoder, decoder = self.parts()
        return ConditionalVAE(encoder, decoder, StandardNormal(L).double(), C)

    def semi_supervised(self) -> SemiSupervisedVAE:
        encoder, decoder = self.parts()
        exact = self

        class ExactClassifier(nn.Module):  # logits log p(x, c): q(y|x) = p(y|x)
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return exact.log_p_x_y(x)

        return SemiSupervisedVAE(encoder, decoder, StandardNormal(L).double(), ExactClassifier(), C)

    def data(self, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(1)
        y = torch.randint(0, C, (rows,), generator=generator)
        z = torch.randn(rows, L, generator=generator, dtype=torch.float64)
        noise = torch.randn(rows, D, generator=generator, dtype=torch.float64)
        return z @ self.w.T + self.b[y] + SIGMA * noise, y


def test_conditional_log_likelihood_is_the_closed_form():
    # With the exact posterior every importance weight is p(x|y): the estimate is exact.
    case = _LinearGaussian()
    model = case.conditional()
    x, y = case.data(40)
    exact = case.log_p_x_given_y(x, y)
    result = evaluate(model, x, importance_samples=20, labels=y, float64=True)
    assert result.log_likelihood == pytest.approx(exact.mean().item(), abs=1e-9)
    # Estimator A's log-weights are constant too (KL(q ‖ p(z|x, y)) = 0).
    assert result.elbo_a == pytest.approx(exact.mean().item(), abs=1e-9)
    per_row = log_likelihood_per_example(model, x, 20, labels=y)
    torch.testing.assert_close(per_row, exact, atol=1e-9, rtol=0)
    # Another label gives another (lower, for most rows) density: the label is used.
    other = (y + 1) % C
    shifted = log_likelihood_per_example(model, x, 20, labels=other)
    torch.testing.assert_close(shifted, case.log_p_x_given_y(x, other), atol=1e-9, rtol=0)


def test_m2_bounds_equal_log_p_with_exact_posteriors():
    """With q(z|x, y) and q(y|x) exact, U(x) = log p(x) and L(x, y) = log p(x, y); the SGVB-B
    estimates of them average to those (tolerance: 5 standard errors of the k draws)."""
    case = _LinearGaussian()
    model = case.semi_supervised()
    x, y = case.data(6)
    k = 20_000
    objective = SemiSupervised(num_samples=k, alpha=0.0)
    torch.manual_seed(0)
    bound, _, _ = objective.class_bounds(model, x)  # (C, rows)
    exact_joint = case.log_p_x_y(x).T  # (C, rows)
    # Standard error of a k-draw mean of log p(x|z, c): from the draws' own spread.
    draws = latent_samples(model.given(torch.zeros(len(x), dtype=torch.long)), x, 2000)
    se = draws.log_likelihood.std(0).max().item() / math.sqrt(k)
    torch.testing.assert_close(bound, exact_joint, atol=5 * se, rtol=0)
    # The loss: −mean over rows of U (unlabelled) or L (labelled), with α = 0 and the
    # batch's own proportions; U(x) = log p(x).
    labels = y.clone()
    labels[:3] = -1
    torch.manual_seed(0)
    terms = objective(model.given(labels), x)
    exact_row = torch.where(
        labels >= 0,
        exact_joint.T.gather(1, labels.clamp(min=0)[:, None]).squeeze(1),
        torch.logsumexp(exact_joint, 0),
    )
    assert terms.loss.item() == pytest.approx(-exact_row.mean().item(), abs=5 * se)
    assert terms.elbo.item() == pytest.approx(
        torch.logsumexp(exact_joint, 0).mean().item(), abs=5 * se
    )


def test_m2_classifier_term_is_alpha_times_the_labelled_log_q():
    case = _LinearGaussian()
    model = case.semi_supervised()
    x, y = case.data(8)
    labels = y.clone()
    labels[::2] = -1
    losses = {}
    for alpha in (0.0, 2.5):
        torch.manual_seed(3)
        losses[alpha] = SemiSupervised(num_samples=2, alpha=alpha)(model.given(labels), x).loss
    log_q = model.classify(x).logits.gather(1, y[:, None]).squeeze(1)
    expected = -2.5 * log_q[labels >= 0].mean()
    assert (losses[2.5] - losses[0.0]).item() == pytest.approx(expected.item(), abs=1e-9)


def test_m2_classifier_learns_only_from_unlabelled_bound_and_labels():
    # With every row labelled and α = 0 the loss does not involve q(y|x) at all.
    torch.manual_seed(0)
    model = mlp((6,), latent_dim=2, hidden=(8,), num_classes=3, semi_supervised=True)
    x = (torch.rand(10, 6) > 0.5).float()
    y = torch.randint(0, 3, (10,))
    objective = make_objective("m2", alpha=0.0, labels=10)
    objective(model.given(y), x).loss.backward()
    assert all(p.grad is None or not p.grad.any() for p in model.classifier.parameters())
    model.zero_grad()
    unlabelled = torch.full((10,), -1)
    objective(model.given(unlabelled), x).loss.backward()
    assert any(p.grad is not None and p.grad.any() for p in model.classifier.parameters())


def test_m2_weighs_labelled_rows_by_their_share_of_the_training_set():
    case = _LinearGaussian()
    model = case.semi_supervised()
    x, y = case.data(8)
    labels = y.clone()
    labels[:6] = -1
    objective = SemiSupervised(num_samples=1, alpha=0.0, num_labelled=10)
    objective.prepare(model.given(labels), x, num_examples=990)
    assert objective.labelled_share == pytest.approx(0.01)
    torch.manual_seed(0)
    loss = objective(model.given(labels), x).loss
    torch.manual_seed(0)
    bound, _, _ = objective.class_bounds(model, x)
    q = model.classify(x).probs
    u = (q.T * bound).sum(0) + model.classify(x).entropy()
    l_bound = bound.T.gather(1, labels.clamp(min=0)[:, None]).squeeze(1)
    expected = -(0.99 * u[:6].mean() + 0.01 * l_bound[6:].mean())
    assert loss.item() == pytest.approx(expected.item(), abs=1e-9)


def test_semi_supervised_loader_batches_and_resume():
    x = torch.arange(50, dtype=torch.float32)[:, None].repeat(1, 2) / 50
    labels = torch.arange(50) % 5
    keep = torch.tensor(labelled_rows(labels.numpy(), 10, 5, seed=0))
    rest = torch.ones(50, dtype=torch.bool)
    rest[keep] = False
    unlabelled = TensorLoader(x[rest], 8, labels=torch.full((40,), -1))
    labelled = TensorLoader(x[keep], 4, labels=labels[keep])
    loader = SemiSupervisedLoader(unlabelled, labelled)
    assert len(loader) == 5 and loader.num_examples == 40
    torch.manual_seed(0)
    state = torch.get_rng_state()
    batches = list(loader.epoch())
    seen = torch.cat([b.index[b.y < 0] for b in batches])
    assert sorted(seen.tolist()) == list(range(40))  # each unlabelled row once
    for batch in batches:
        known = batch.y >= 0
        assert int(known.sum()) == 4
        rows = batch.index[known] - 40
        assert torch.equal(batch.y[known], labels[keep][rows])
        assert torch.equal(batch.x[known], x[keep][rows])
    counts = torch.bincount(torch.cat([b.index[b.y >= 0] - 40 for b in batches]), minlength=10)
    assert counts.min() >= 1 and counts.max() <= 2  # 20 labelled draws: two passes of 10
    torch.set_rng_state(state)  # a resumed epoch redraws the same batches from step 2 on
    again = list(loader.epoch(skip=2))
    for first, second in zip(batches[2:], again, strict=True):
        assert torch.equal(first.x, second.x) and torch.equal(first.y, second.y)


def test_labelled_rows_are_balanced_and_seeded():
    labels = np.repeat(np.arange(10), 30)
    rows = labelled_rows(labels, 100, 10, seed=4)
    assert len(rows) == 100 and np.bincount(labels[rows]).tolist() == [10] * 10
    assert np.array_equal(rows, labelled_rows(labels, 100, 10, seed=4))
    assert not np.array_equal(rows, labelled_rows(labels, 100, 10, seed=5))
    with pytest.raises(ConfigError, match="fewer labels than"):
        labelled_rows(labels, 5, 10, seed=0)
    with pytest.raises(ConfigError, match="has 30"):
        labelled_rows(labels, 400, 10, seed=0)


def test_label_checks():
    assert check_labels([0, 2, 1], 3).dtype == torch.long
    for bad in ([0, 3], [-1, 0], [[0, 1]], [0.5, 1.0]):
        with pytest.raises(ValueError):
            check_labels(bad, 3)
    assert check_labels([-1, 2], 3, allow_unlabelled=True).tolist() == [-1, 2]
    model = mlp((4,), latent_dim=2, hidden=(4,), num_classes=3)
    x = torch.zeros(2, 4)
    with pytest.raises(DataError, match="pass the rows' labels"):
        evaluate(model, x, 2)
    with pytest.raises(DataError, match="class indices"):
        evaluate(model, x, 2, labels=torch.tensor([0, 5]))
    with pytest.raises(DataError, match="2 labels for 3 rows"):
        evaluate(model, torch.zeros(3, 4), 2, labels=torch.tensor([0, 1]))
    plain = mlp((4,), latent_dim=2, hidden=(4,))
    with pytest.raises(DataError, match="not conditional"):
        evaluate(plain, x, 2, labels=torch.tensor([0, 1]))


def test_conditional_samples_follow_the_label():
    torch.manual_seed(0)
    model = mlp((4,), latent_dim=2, hidden=(8,), num_classes=3, likelihood="gaussian")
    with torch.no_grad():
        model.decoder.network.layers[-1].weight[:, 2:].mul_(50)  # the label dominates
    for label in range(3):
        samples = model.sample(200, label=label)
        others = [model.sample(200, label=c).mean(0) for c in range(3) if c != label]
        for other in others:
            assert (samples.mean(0) - other).abs().max() > 0.5
    cycled = model.sample(6)
    assert cycled.shape == (6, 4)
    with pytest.raises(ValueError, match="class indices"):
        model.sample(2, label=3)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"labels": 100, "conditional": True}, "exclude each other"),
        ({"objective": "m2"}, "give labels"),
        ({"labels": 100, "objective": "iwae"}, "does not take the iwae objective"),
        ({"conditional": True, "architecture": "conv"}, "architecture='mlp' only"),
        ({"conditional": True, "prior": "vamp"}, "vamp"),
        ({"labels": 100, "top_latent_dim": 5}, "one stochastic layer"),
        ({"alpha": 0.5}, "does not apply to the sgvb-b objective"),
    ],
)
def test_config_refuses_impossible_label_settings(settings, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**settings)


def test_labels_select_m2():
    config = TrainConfig(labels=100)
    assert config.objective == "m2"
    assert config.objective_options()["labels"] == 100


def _cli(capsys, *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


QUICK = ("--latent-dim", "4", "--hidden", "32", "--batch-size", "64", "--no-progress")


def test_cli_conditional_run(tmp_path, capsys):
    run = tmp_path / "cvae"
    code, _, err = _cli(capsys, "train", "--conditional", "--epochs", "2", "--out", run, *QUICK)
    assert code == 0, err
    out = tmp_path / "three.png"
    code, stdout, _ = _cli(capsys, "sample", run, "--label", "3", "--num", "8", "--out", out)
    assert code == 0 and "of class 3" in stdout and out.read_bytes()[:4] == b"\x89PNG"
    code, stdout, _ = _cli(
        capsys, "evaluate", run, "--importance-samples", "10", "--json", "--no-progress"
    )
    values = json.loads(stdout)
    assert code == 0 and values["given_labels"]
    assert values["log_likelihood"] > values["elbo"]
    code, _, _ = _cli(capsys, "reconstruct", run, "--num", "4", "--out", tmp_path / "r.png")
    assert code == 0
    code, _, err = _cli(capsys, "sample", run, "--label", "10", "--out", tmp_path / "ten.png")
    assert code == EXIT_USER_ERROR and "label must be a class in 0…9" in err
    table = tmp_path / "rows.npy"
    np.save(table, np.random.default_rng(0).random((30, 64)).astype(np.float32))
    code, _, err = _cli(capsys, "embed", run, "--data", table, "--out", tmp_path / "e.csv")
    assert code == EXIT_USER_ERROR and "conditional" in err and "Traceback" not in err
    code, _, err = _cli(
        capsys, "train", "--dataset", table, "--conditional", "--out", tmp_path / "x", *QUICK
    )
    assert code == EXIT_USER_ERROR and "no class labels" in err


def test_cli_semi_supervised_run_resumes_exactly(tmp_path, capsys):
    semi, straight = tmp_path / "m2", tmp_path / "m2-straight"
    settings = ("--labels", "50", *QUICK)
    assert _cli(capsys, "train", "--epochs", "1", "--out", semi, *settings)[0] == 0
    summary = json.loads((semi / "summary.json").read_text())
    assert 0 <= summary["test_error"] < 0.9 and np.isfinite(summary["test_elbo"])
    assert _cli(capsys, "train", "--resume", semi, "--epochs", "2", "--no-progress")[0] == 0
    assert _cli(capsys, "train", "--epochs", "2", "--out", straight, *settings)[0] == 0
    resumed = json.loads((semi / "summary.json").read_text())
    uninterrupted = json.loads((straight / "summary.json").read_text())
    for key in ("test_elbo", "test_error", "best_val_elbo"):
        assert resumed[key] == uninterrupted[key]  # the same run, bit for bit
    code, stdout, _ = _cli(
        capsys, "evaluate", semi, "--importance-samples", "5", "--json", "--no-progress"
    )
    assert code == 0 and json.loads(stdout)["classification_error"] == resumed["test_error"]


def test_estimator_takes_labels(digits):
    from aevb.sklearn import VAEEstimator

    x, y = digits.train[:400].reshape(400, -1), digits.train_labels[:400]
    estimator = VAEEstimator(
        latent_dim=2,
        hidden=(32,),
        likelihood="bernoulli",
        epochs=2,
        conditional=True,
        random_state=0,
    )
    binary = (x > 0.5).astype(np.float64)
    estimator.fit(binary, y)
    assert list(estimator.classes_) == sorted(set(y.tolist()))
    codes = estimator.transform(binary[:5], y=y[:5])
    assert codes.shape == (5, 2)
    assert np.isfinite(estimator.score(binary[:50], y[:50]))
    with pytest.raises(ValueError, match="pass the labels"):
        estimator.transform(binary[:5])
    with pytest.raises(ValueError, match="fitted with labels"):
        VAEEstimator(conditional=True, epochs=1).fit(binary)
    draws = estimator.sample(4, random_state=0, y=2, mean=True)
    assert draws.shape == (4, 64)


@settings(max_examples=25, deadline=None)
@given(
    samples=st.integers(1, 4),
    rows=st.integers(1, 5),
    latent=st.integers(1, 3),
    classes=st.integers(2, 4),
)
def test_labels_bind_to_their_rows_for_any_number_of_draws(samples, rows, latent, classes):
    """z (k, batch, latent) decoded given labels (batch,) equals each draw decoded alone with
    its row's label: the one-hot vector follows the batch dimension, not the draws'."""
    torch.manual_seed(0)
    model = mlp((3,), latent_dim=latent, hidden=(4,), num_classes=classes, likelihood="gaussian")
    labels = torch.randint(0, classes, (rows,))
    z = torch.randn(samples, rows, latent)
    together = model.given(labels).likelihood(z).mean
    for draw in range(samples):
        for row in range(rows):
            alone = model.likelihood(z[draw, row : row + 1], labels[row : row + 1]).mean
            torch.testing.assert_close(together[draw, row], alone[0])
    x = torch.randn(rows, 3)
    posterior = model.given(labels).posterior(x)
    assert posterior.batch_shape == (rows,) and posterior.event_shape == (latent,)
