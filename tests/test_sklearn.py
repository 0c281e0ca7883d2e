"""The scikit-learn estimator ``aevb.sklearn.VAEEstimator``: scikit-learn's own checks, its
conventions (Pipeline, GridSearchCV, pickle, partial_fit, DataFrames), and exact facts about
its standardisation."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
import scipy.sparse
import torch
from sklearn.decomposition import PCA
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.utils.estimator_checks import check_estimator

from aevb.sklearn import VAEEstimator

pytestmark = pytest.mark.usefixtures("single_thread")


def factor_data(n: int = 400, seed: int = 0) -> np.ndarray:
    """Rows from a 2-factor Gaussian model in 6 dimensions, far from zero mean and unit scale."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 2))
    return z @ rng.normal(size=(2, 6)) * 3 + 0.5 * rng.normal(size=(n, 6)) + 10


def quick(**settings) -> VAEEstimator:
    return VAEEstimator(**{"epochs": 20, "hidden": (16,), "random_state": 0, **settings})


def test_passes_scikit_learns_estimator_checks():
    """Every applicable check of ``check_estimator`` passes (array-API input is skipped by
    scikit-learn itself unless SCIPY_ARRAY_API is set)."""
    estimator = VAEEstimator(epochs=3, hidden=(8,), importance_samples=50, batch_size=32)
    results = check_estimator(estimator, on_skip=None)  # raises on the first failure
    skipped = {r["check_name"] for r in results if r["status"] == "skipped"}
    assert skipped <= {"check_array_api_input"} and len(results) > 40


def test_methods_shapes_and_units():
    X = factor_data()
    model = quick().fit(X)
    codes, std = model.transform(X[:5], return_std=True)
    assert codes.shape == std.shape == (5, 2) and (std > 0).all()
    assert model.inverse_transform(codes).shape == (5, 6)
    # decoder means of codes stay in the data's units (features centred near 10, not 0)
    assert abs(model.inverse_transform(model.transform(X)).mean() - X.mean()) < 1.0
    samples = model.sample(2000, random_state=0)
    assert samples.shape == (2000, 6)
    np.testing.assert_array_equal(samples, model.sample(2000, random_state=0))
    assert np.abs(samples.mean(0) - X.mean(0)).max() < 0.5 * X.std(0).max()
    scores = model.score_samples(X)
    assert scores.shape == (400,) and np.isfinite(scores).all()
    assert model.score(X) == pytest.approx(scores.mean())
    assert list(model.get_feature_names_out()) == ["vae0", "vae1"]


def test_log_likelihood_is_of_the_data_as_given():
    """Standardisation is internal: the same model fitted to c·X has the same standardised
    data, so its log-density is lower by exactly D·log c (the Jacobian), to rounding."""
    X = factor_data()
    c = 7.0
    plain = quick().fit(X).score_samples(X)
    scaled = quick().fit(c * X).score_samples(c * X)
    np.testing.assert_allclose(scaled, plain - 6 * np.log(c), rtol=1e-5, atol=1e-4)


def test_scores_depend_on_each_row_only():
    """Per-row scores use the same draws for every row: order and subsets do not matter."""
    X = factor_data()
    model = quick().fit(X)
    scores = model.score_samples(X)
    order = np.random.default_rng(1).permutation(len(X))
    np.testing.assert_allclose(model.score_samples(X[order]), scores[order], rtol=1e-6)
    np.testing.assert_allclose(model.score_samples(X[:7]), scores[:7], rtol=1e-6)


def test_log_likelihood_reaches_the_true_model_class():
    """On held-out rows of 2-factor data, the VAE's log-likelihood is far above independent
    Gaussians per feature and close to probabilistic PCA with two factors, the model class
    the data came from (measured: VAE −9.94, pPCA −9.62, independent −16.98 nats)."""
    data = factor_data(1200, 0)
    X, X_test = data[:1000], data[1000:]
    model = VAEEstimator(epochs=60, hidden=(32,), random_state=0).fit(X)
    ppca = PCA(2).fit(X).score(X_test)
    independent = -0.5 * (np.log(2 * np.pi * X.var(0)) + (X_test - X.mean(0)) ** 2 / X.var(0))
    vae = model.score(X_test)
    assert vae > independent.sum(1).mean() + 3
    assert vae > ppca - 0.5


def test_pipeline_gridsearch_pickle_and_partial_fit():
    X = factor_data()
    pipeline = make_pipeline(quick(epochs=5)).fit(X)
    assert pipeline.transform(X).shape == (400, 2)
    search = GridSearchCV(quick(epochs=5), {"latent_dim": [1, 2]}, cv=2).fit(X)
    assert search.best_params_["latent_dim"] in (1, 2)
    model = quick().fit(X)
    restored = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(restored.transform(X), model.transform(X))
    np.testing.assert_array_equal(restored.score_samples(X), model.score_samples(X))
    streamed = quick()
    first = None
    for chunk in np.array_split(X, 4) * 10:  # ten passes over a stream of four chunks
        streamed.partial_fit(chunk)
        first = streamed.score(X) if first is None else first
    assert streamed.n_iter_ == 40 and streamed.score(X) > first + 1
    restored.partial_fit(X)  # continues a fitted model
    assert restored.n_iter_ == model.n_iter_ + 1


def test_dataframes_and_bad_input():
    X = factor_data()
    frame = pd.DataFrame(X, columns=[f"f{j}" for j in range(6)])
    model = quick(epochs=2).fit(frame)
    assert list(model.feature_names_in_) == list(frame.columns)
    broken = frame.copy()
    broken.loc[3, "f4"] = np.nan
    with pytest.raises(ValueError, match="NaN or inf in column"):
        quick(epochs=2).fit(broken)
    with pytest.raises(ValueError, match="f4"):
        model.transform(broken)
    with pytest.raises(TypeError, match=r"[Ss]parse"):
        quick(epochs=2).fit(scipy.sparse.csr_matrix(X))
    with pytest.raises(ValueError, match="missing:\n- f5"):
        model.transform(frame.iloc[:, :5])
    array_model = quick(epochs=2).fit(X)
    with pytest.raises(ValueError, match="5 features, but VAEEstimator is expecting 6"):
        array_model.transform(X[:, :5])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        quick(epochs=2, likelihood="bernoulli").fit(X)


def test_early_stopping_keeps_the_best_weights():
    X = factor_data()
    model = quick(epochs=200, early_stopping=True, n_iter_no_change=3, lr=3e-2).fit(X)
    assert model.n_iter_ < 200
    best = max(record["val_elbo"] for record in model.history_)
    assert best == max(r["val_elbo"] for r in model.history_[: model.n_iter_])


def test_binary_data_with_a_bernoulli_likelihood():
    rng = np.random.default_rng(0)
    X = (rng.random((300, 16)) < np.linspace(0.1, 0.9, 16)).astype(float)
    model = quick(likelihood="bernoulli").fit(X)
    assert (model.mean_ == 0).all() and (model.scale_ == 1).all()
    probabilities = model.inverse_transform(model.transform(X))
    assert ((probabilities > 0) & (probabilities < 1)).all()
    # at most the entropy bound: 16 independent Bernoullis at the true rates
    p = np.linspace(0.1, 0.9, 16)
    independent = (X * np.log(p) + (1 - X) * np.log(1 - p)).sum(1).mean()
    assert independent - 1.0 < model.score(X) < 0


def test_grey_values_for_a_bernoulli_likelihood_are_binarized_as_aevb_does(monkeypatch):
    """``fit`` and ``partial_fit`` train on fresh Bernoulli draws of grey rows; ``score_samples``
    scores the fixed-seed draw ``aevb score`` uses — never the grey values themselves."""
    from aevb.data import Binarize
    from aevb.evaluation import log_likelihood_per_example
    from aevb.objectives import SGVBB

    rng = np.random.default_rng(0)
    X = rng.random((200, 10))
    model = quick(likelihood="bernoulli", epochs=3).fit(X)
    assert model.transforms_.describe() == "binarize dynamic"
    binary = Binarize("dynamic").prepare(torch.as_tensor(X, dtype=torch.float32))
    expected = log_likelihood_per_example(model.model_, binary, model.importance_samples)
    np.testing.assert_allclose(model.score_samples(X), expected.numpy(), rtol=1e-7)

    seen = []
    original = SGVBB.__call__

    def recording(self, model_, batch, beta=1.0):
        seen.append(bool(((batch == 0) | (batch == 1)).all()))
        return original(self, model_, batch, beta)

    monkeypatch.setattr(SGVBB, "__call__", recording)
    streamed = quick(likelihood="bernoulli").partial_fit(X)
    assert streamed.transforms_ == model.transforms_
    assert seen and all(seen)  # every batch partial_fit trained on was binary


def test_standardisation_is_fitted_on_the_training_rows_only():
    """With early stopping, the validation rows do not enter the fitted means and scales."""
    X = factor_data()
    model = quick(epochs=2, early_stopping=True).fit(X)
    held = np.zeros(len(X), dtype=bool)
    seed = int(np.random.RandomState(0).randint(2**31 - 1))
    held[np.random.default_rng(seed).permutation(len(X))[: round(0.1 * len(X))]] = True
    np.testing.assert_allclose(model.mean_, X[~held].mean(0), rtol=1e-12)
    np.testing.assert_allclose(model.scale_, X[~held].std(0), rtol=1e-12)
    streamed = quick().partial_fit(X[:100])
    streamed.partial_fit(X[100:200])
    assert len(streamed.history_) == 2 and "train_elbo" in streamed.history_[0]


def test_the_old_name_still_works_with_a_warning():
    """``aevb.sklearn.VAE`` (the name before it clashed with ``aevb.VAE``, the torch module)
    is the estimator still, with a FutureWarning, so old code and old pickles load."""
    import pickle

    import aevb.sklearn

    with pytest.warns(FutureWarning, match="VAEEstimator"):
        old = aevb.sklearn.VAE
    assert old is VAEEstimator and aevb.VAE is not VAEEstimator
    # An old pickle names the class ``aevb.sklearn.VAE`` (the GLOBAL opcode, as pickle writes it).
    with pytest.warns(FutureWarning):
        assert pickle.loads(b"caevb.sklearn\nVAE\n.") is VAEEstimator
