"""A scikit-learn estimator over aevb's core: ``from aevb.sklearn import VAE``.

``fit`` trains with the same :class:`~aevb.training.Trainer`, model and objectives as
``aevb train`` (in a temporary run folder that is removed afterwards); ``transform`` gives
posterior means, ``inverse_transform`` decoder means, ``sample`` draws from the model,
``score_samples`` the importance-sampled log-likelihood of each row (nats; higher is more
normal) and ``score`` its mean. For Gaussian likelihoods the features are standardised
internally (undone by ``inverse_transform`` and ``sample``; ``score_samples`` includes the
Jacobian, so it is the log-density of the data as given).
"""

from __future__ import annotations

import tempfile

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import Tensor

from aevb.data import Dataset
from aevb.evaluation import fixed_randomness, log_likelihood_per_example
from aevb.models import VAE as _VAE
from aevb.models import ModelConfig
from aevb.objectives import make_objective
from aevb.training import (
    BEST,
    TrainConfig,
    Trainer,
    load_weights,
    make_optimizer,
    resolve_device,
    training_loss,
)

__all__ = ["VAE"]


class VAE(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """A variational autoencoder as a scikit-learn transformer and density model.

    Parameters mirror ``aevb train``: ``latent_dim``; ``hidden`` layer sizes; ``likelihood``
    (``"gaussian-learned"``, ``"gaussian"`` with σ = 1 on standardised features, or
    ``"bernoulli"`` for data in [0, 1]); ``posterior`` (``"diagonal"`` or ``"full"``);
    ``objective`` (``"sgvb-b"``, ``"sgvb-a"``, ``"iwae"``) with ``num_samples`` draws; ``beta``
    (KL weight); ``epochs``, ``batch_size``, ``lr`` (Adam); ``early_stopping`` on a
    ``validation_fraction`` held out of ``fit``'s data, stopping after ``n_iter_no_change``
    epochs without a better validation ELBO and keeping the best weights;
    ``importance_samples`` k for ``score_samples``; ``device``; ``random_state``; ``verbose``
    (progress bar).

    Attributes after fit: ``model_`` (the :class:`aevb.models.VAE`), ``n_features_in_``,
    ``feature_names_in_`` (DataFrames), ``mean_`` and ``scale_`` (the standardisation, zeros
    and ones for a Bernoulli likelihood), ``history_`` (per-epoch metrics), ``n_iter_``.
    """

    def __init__(
        self,
        latent_dim: int = 2,
        hidden: tuple[int, ...] = (128,),
        likelihood: str = "gaussian-learned",
        posterior: str = "diagonal",
        objective: str = "sgvb-b",
        num_samples: int = 1,
        beta: float = 1.0,
        epochs: int = 100,
        batch_size: int = 128,
        lr: float = 1e-3,
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        n_iter_no_change: int = 10,
        importance_samples: int = 1000,
        device: str = "cpu",
        random_state: int | np.random.RandomState | None = None,
        verbose: bool = False,
    ):
        self.latent_dim = latent_dim
        self.hidden = hidden
        self.likelihood = likelihood
        self.posterior = posterior
        self.objective = objective
        self.num_samples = num_samples
        self.beta = beta
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.importance_samples = importance_samples
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------------------ fitting
    def fit(self, X, y=None) -> VAE:
        """Fit to X: (n_samples, n_features). ``y`` is ignored."""
        X = self._validate(X, reset=True)
        self._set_scaling(X)
        seed = int(check_random_state(self.random_state).randint(2**31 - 1))
        rows = self._scaled(X)
        held = np.zeros(len(rows), dtype=bool)
        if self.early_stopping:
            count = max(1, round(self.validation_fraction * len(rows)))
            if count >= len(rows):
                raise ValueError("early_stopping needs more samples than the validation split")
            held[np.random.default_rng(seed).permutation(len(rows))[:count]] = True
        train, val = rows[~held], rows[held]
        dataset = Dataset("array", train, val, val if len(val) else train[:1], None, self._binary)
        config = self._config(seed)
        with tempfile.TemporaryDirectory(prefix="aevb-sklearn-") as run_dir:
            trainer = Trainer(config, run_dir, dataset, progress=self.verbose)
            trainer.fit(finish=False)
            if self.early_stopping and trainer.state.best_epoch > 0:
                trainer.model.load_state_dict(load_weights(trainer.run_dir / BEST))
        self.model_ = trainer.model.eval()
        self.optimizer_ = trainer.optimizer
        self.history_ = trainer.state.history
        self.n_iter_ = trainer.state.epoch
        self._n_features_out = self.latent_dim
        return self

    def partial_fit(self, X, y=None) -> VAE:
        """One pass over X (one chunk of a stream): minibatch AEVB steps that continue the
        model and optimiser of earlier calls. The first call (without ``fit``) builds the
        model and fixes the standardisation from that chunk."""
        first = not hasattr(self, "model_")
        X = self._validate(X, reset=first)
        if first:
            self._set_scaling(X)
            seed = int(check_random_state(self.random_state).randint(2**31 - 1))
            config = self._config(seed)
            torch.manual_seed(seed)
            self.model_ = _VAE(self._model_config(config)).to(resolve_device(self.device))
            self.optimizer_ = make_optimizer(config, self.model_.parameters())
            self.history_, self.n_iter_ = [], 0
            self._n_features_out = self.latent_dim
        objective = make_objective(self.objective, self.num_samples)
        x = self._tensor(self._scaled(X))
        beta = torch.tensor(float(self.beta), device=x.device)
        self.model_.train()
        for start in range(0, len(x), self.batch_size):
            self.optimizer_.zero_grad(set_to_none=True)
            loss, _ = training_loss(
                self.model_, objective, x[start : start + self.batch_size], beta
            )
            if not torch.isfinite(loss):
                raise FloatingPointError("partial_fit: the loss is not finite; lower lr")
            loss.backward()
            self.optimizer_.step()
        self.model_.eval()
        self.n_iter_ += 1
        return self

    # ------------------------------------------------------------------------- inference
    def transform(self, X, return_std: bool = False):
        """Posterior means E_q[z|x]: (n_samples, latent_dim); with ``return_std`` also the
        posterior standard deviations (the square roots of the covariance's diagonal)."""
        posterior = self._posterior(X)
        mean = posterior.mean.detach().cpu().numpy().astype(np.float64)
        if return_std:
            return mean, posterior.stddev.detach().cpu().numpy().astype(np.float64)
        return mean

    def inverse_transform(self, X):
        """Decoder means E[x|z] for codes X: (n_samples, latent_dim), in the data's units."""
        check_is_fitted(self)
        z = np.asarray(X, dtype=np.float64)
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"expected codes of shape (n, {self.latent_dim}), got {z.shape}")
        with torch.no_grad():
            mean = self.model_.likelihood(self._tensor(z)).mean
        return self._unscaled(mean.cpu().numpy().astype(np.float64))

    def sample(self, n_samples: int = 1, random_state=None, mean: bool = False) -> np.ndarray:
        """Ancestral samples: z ~ N(0, I), then x ~ p(x|z) (the decoder mean if ``mean``),
        in the data's units: (n_samples, n_features)."""
        check_is_fitted(self)
        seed = int(check_random_state(random_state).randint(2**31 - 1))
        device = self._device()
        with fixed_randomness(seed, device):
            x = self.model_.sample(n_samples, mean=mean)
        return self._unscaled(x.cpu().numpy().astype(np.float64))

    def score_samples(self, X) -> np.ndarray:
        """log p(x) of every row (nats), by importance sampling with ``importance_samples``
        draws from the encoder; for Gaussian likelihoods it includes −Σ log scale_, the
        Jacobian of the standardisation. Higher is more normal."""
        check_is_fitted(self)
        X = self._validate(X, reset=False)
        x = self._tensor(self._scaled(X))
        values = log_likelihood_per_example(self.model_, x, self.importance_samples, seed=0)
        return values.cpu().numpy() - np.log(self.scale_).sum()

    def score(self, X, y=None) -> float:
        """Mean log-likelihood of the rows of X (nats per row): higher is better."""
        return float(self.score_samples(X).mean())

    # --------------------------------------------------------------------------- helpers
    def _config(self, seed: int) -> TrainConfig:
        return TrainConfig(
            dataset="array",
            likelihood=self.likelihood,
            likelihood_std=1.0,
            squash_mean=False,
            binarize="dynamic" if self.likelihood == "bernoulli" and not self._binary else "none",
            latent_dim=self.latent_dim,
            hidden=tuple(self.hidden),
            posterior=self.posterior,
            objective=self.objective,
            samples=self.num_samples,
            beta=self.beta,
            optimizer="adam",
            lr=self.lr,
            batch_size=self.batch_size,
            epochs=self.epochs,
            patience=self.n_iter_no_change if self.early_stopping else None,
            seed=seed,
            device=self.device,
            compile=False,
        )

    def _model_config(self, config: TrainConfig) -> ModelConfig:
        return ModelConfig(
            data_dim=self.n_features_in_,
            latent_dim=config.latent_dim,
            hidden=config.hidden,
            likelihood=config.likelihood,
            likelihood_std=config.likelihood_std,
            squash_mean=False,
            posterior=config.posterior,
        )

    def _validate(self, X, reset: bool) -> np.ndarray:
        """X as a float64 array, refusing sparse input and naming a column with NaN or inf."""
        X = validate_data(
            self, X, reset=reset, dtype=np.float64, ensure_all_finite=False, ensure_min_samples=1
        )
        bad = ~np.isfinite(X).all(axis=0)
        if bad.any():
            names = getattr(self, "feature_names_in_", None)
            columns = [str(names[j]) if names is not None else str(j) for j in np.flatnonzero(bad)]
            raise ValueError(f"Input contains NaN or inf in column(s) {', '.join(columns)}")
        if self.likelihood == "bernoulli" and (X.min() < 0 or X.max() > 1):
            raise ValueError("the Bernoulli likelihood needs features in [0, 1]")
        return X

    def _set_scaling(self, X: np.ndarray) -> None:
        self._binary = bool(np.isin(X, (0.0, 1.0)).all())
        if self.likelihood == "bernoulli":
            self.mean_, self.scale_ = np.zeros(X.shape[1]), np.ones(X.shape[1])
            return
        self.mean_ = X.mean(0)
        scale = X.std(0)
        self.scale_ = np.where(scale > 0, scale, 1.0)

    def _scaled(self, X: np.ndarray) -> np.ndarray:
        return ((X - self.mean_) / self.scale_).astype(np.float32)

    def _unscaled(self, X: np.ndarray) -> np.ndarray:
        return X * self.scale_ + self.mean_

    def _device(self) -> torch.device:
        return next(self.model_.parameters()).device

    def _tensor(self, values: np.ndarray) -> Tensor:
        device = self._device() if hasattr(self, "model_") else resolve_device(self.device)
        return torch.as_tensor(np.asarray(values, dtype=np.float32), device=device)

    def _posterior(self, X):
        check_is_fitted(self)
        X = self._validate(X, reset=False)
        with torch.no_grad():
            return self.model_.posterior(self._tensor(self._scaled(X)))
