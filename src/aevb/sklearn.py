"""A scikit-learn estimator over aevb's core: ``from aevb.sklearn import VAEEstimator``.

``fit`` and ``partial_fit`` train through the same :class:`~aevb.train.Trainer`, model
factory, objectives and data path (:mod:`aevb.data`: transforms and loader) as ``aevb
train``, with no run folder; ``transform`` gives posterior means, ``inverse_transform``
decoder means, ``sample`` draws from the model, ``score_samples`` the importance-sampled
log-likelihood of each row (nats; higher is more normal) and ``score`` its mean. For Gaussian
likelihoods the features are standardised (a recorded :class:`~aevb.data.Standardize`, undone
by ``inverse_transform`` and ``sample``; ``score_samples`` includes the Jacobian, so it is the
log-density of the data as given); for a Bernoulli likelihood grey values in [0, 1] are
binarized as ``aevb train`` does: a fresh draw each epoch in training, one fixed draw when
scoring.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data
from torch import Tensor

from aevb.builders import LIKELIHOODS, POSTERIORS, ModelSpec, mlp
from aevb.conditional import bind
from aevb.data import Standardize, TensorLoader, choose_transforms
from aevb.data.tables import check_outliers, outlier_bounds
from aevb.devices import check_device_name, resolve_device
from aevb.evaluation import fixed_randomness, log_likelihood_per_example
from aevb.limits import TRAINING_COPIES
from aevb.objectives import make_objective
from aevb.train import BestWeights, EarlyStopping, ProgressBar, Trainer, Validation, make_optimizer

__all__ = ["VAEEstimator"]

# The objectives the estimator trains with (those taking ``num_samples`` and ``beta``).
ESTIMATOR_OBJECTIVES = ("sgvb-a", "sgvb-b", "iwae")


class VAEEstimator(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """A variational autoencoder as a scikit-learn transformer and density model.

    Parameters mirror ``aevb train``: ``latent_dim``; ``hidden`` layer sizes; ``likelihood``
    (``"gaussian-learned"``, ``"gaussian"`` with σ = 1 on standardised features, or
    ``"bernoulli"`` for data in [0, 1]); ``posterior`` (``"diagonal"``, ``"full"``, or the
    ``"iaf"`` and ``"planar"`` flows with their default steps);
    ``objective`` (``"sgvb-b"``, ``"sgvb-a"``, ``"iwae"``) with ``num_samples`` draws; ``beta``
    (KL weight); ``epochs``, ``batch_size``, ``lr`` (Adam); ``early_stopping`` on a
    ``validation_fraction`` held out of ``fit``'s data, stopping after ``n_iter_no_change``
    epochs without a better validation ELBO and keeping the best weights;
    ``importance_samples`` k for ``score_samples``; ``device``; ``random_state``; ``verbose``
    (progress bar); ``conditional``: a conditional VAE (Sohn et al. 2015) of X given the class
    labels ``y`` that ``fit`` then needs (as do ``transform``, ``inverse_transform``,
    ``score_samples`` and ``score``; ``sample`` draws the classes in turn unless given ``y``).

    Attributes after fit: ``model_`` (the :class:`aevb.models.VAE`), ``n_features_in_``,
    ``feature_names_in_`` (DataFrames), ``mean_`` and ``scale_`` (the standardisation, zeros
    and ones for a Bernoulli likelihood), ``history_`` (per-epoch metrics), ``n_iter_``;
    ``classes_`` (the labels seen by ``fit``) for a conditional model.
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
        conditional: bool = False,
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
        self.conditional = conditional

    # ------------------------------------------------------------------------------ fitting
    def fit(self, X, y=None) -> VAEEstimator:
        """Fit to X: (n_samples, n_features); ``y`` (n_samples,) are the class labels of a
        conditional model (ignored otherwise)."""
        self._check_parameters()
        X = self._validate(X, reset=True)
        labels = self._fit_labels(X, y)
        check_outliers(X, outlier_bounds(X), "X", getattr(self, "feature_names_in_", None))
        seed = int(check_random_state(self.random_state).randint(2**31 - 1))
        held = np.zeros(len(X), dtype=bool)
        if self.early_stopping:
            count = max(1, round(self.validation_fraction * len(X)))
            if count >= len(X):
                raise ValueError("early_stopping needs more samples than the validation split")
            held[np.random.default_rng(seed).permutation(len(X))[:count]] = True
        self._start(X[~held], seed)  # the transforms are fitted on the training rows only
        callbacks = []
        best = BestWeights()
        if self.early_stopping:
            val = self.transforms_.prepare(self._tensor(X[held]))
            val_labels = None if labels is None else labels[torch.from_numpy(held)]
            callbacks += [
                Validation(val, self.transforms_.log_abs_det_jacobian, val_labels),
                EarlyStopping(self.n_iter_no_change),
                best,
            ]
        kept = None if labels is None else labels[torch.from_numpy(~held)]
        trainer = self._trainer(X[~held], callbacks, kept)
        state = trainer.fit(self.epochs)
        best.restore(trainer)
        self.model_.eval()
        self.history_ = state.history
        self.n_iter_ = state.epoch
        return self

    def partial_fit(self, X, y=None) -> VAEEstimator:
        """One pass over X (one chunk of a stream): minibatch AEVB steps, through the same
        Trainer and data path as ``fit``, that continue the model and optimiser of earlier
        calls. The first call (without ``fit``) builds the model and fixes the standardisation
        (or binarization) from that chunk."""
        first = not hasattr(self, "model_")
        self._check_parameters()
        X = self._validate(X, reset=first)
        labels = self._fit_labels(X, y) if first else self._labels(X, y)
        check_outliers(X, outlier_bounds(X), "X", getattr(self, "feature_names_in_", None))
        if first:
            self._start(X, int(check_random_state(self.random_state).randint(2**31 - 1)))
            self.history_, self.n_iter_ = [], 0
        self.history_ += self._trainer(X, [], labels).fit(1).history
        self.model_.eval()
        self.n_iter_ += 1
        return self

    def _start(self, X: np.ndarray, seed: int) -> None:
        """Build the model and optimiser and decide the data's transforms from X."""
        binary = self.likelihood == "bernoulli"
        is_binary = bool(np.isin(X, (0.0, 1.0)).all())
        self.transforms_, _, _ = choose_transforms(X, "X", is_binary, False, binary, None, None)
        torch.manual_seed(seed)
        spec = ModelSpec.of(
            mlp,
            data_shape=[X.shape[1]],
            latent_dim=self.latent_dim,
            hidden=list(self.hidden),
            likelihood=self.likelihood,
            likelihood_std=1.0,
            posterior=self.posterior,
            **({"num_classes": len(self.classes_)} if self.conditional else {}),
        )
        rows = min(self.batch_size, len(X)) * self.num_samples
        self.model_ = spec.build(copies=TRAINING_COPIES, rows=rows).to(resolve_device(self.device))
        self.objective_ = make_objective(self.objective, **self._objective_options())
        self.optimizer_ = make_optimizer("adam", self.model_.parameters(), self.lr)
        self._n_features_out = self.latent_dim
        standardize = next((s for s in self.transforms_.steps if isinstance(s, Standardize)), None)
        n = X.shape[1]
        self.mean_ = np.zeros(n) if standardize is None else np.asarray(standardize.mean)
        self.scale_ = np.ones(n) if standardize is None else np.asarray(standardize.scale)

    def _objective_options(self) -> dict:
        options = {"samples": self.num_samples}
        if self.beta != 1.0:
            options["beta"] = self.beta
        return options

    def _trainer(self, X: np.ndarray, callbacks: list, labels: Tensor | None = None) -> Trainer:
        """A Trainer over the rows X (as given, with their ``labels`` for a conditional
        model) for the estimator's model and optimiser."""
        x = self._tensor(X)
        labels = None if labels is None else labels.to(x.device)
        loader = TensorLoader(x, self.batch_size, self.transforms_, labels=labels)
        if self.verbose:
            callbacks = [*callbacks, ProgressBar()]
        return Trainer(self.model_, self.objective_, loader, self.optimizer_, callbacks=callbacks)

    # ------------------------------------------------------------------------- inference
    def fit_transform(self, X, y=None, **fit_params):
        """``fit(X, y)``, then ``transform(X, y=y)``."""
        return self.fit(X, y, **fit_params).transform(X, y=y)

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        """The latent features' names, ``vae0``, ``vae1``, … (not the class name's prefix)."""
        names = super().get_feature_names_out(input_features)  # checks fitted and the input
        return np.asarray([f"vae{j}" for j in range(len(names))], dtype=object)

    def transform(self, X, return_std: bool = False, y=None):
        """Posterior means E_q[z|x] (E_q[z|x, y] given the labels ``y`` of a conditional
        model): (n_samples, latent_dim); with ``return_std`` also the posterior standard
        deviations (the square roots of the covariance's diagonal)."""
        posterior = self._posterior(X, y)
        mean = posterior.mean.detach().cpu().numpy().astype(np.float64)
        if return_std:
            return mean, posterior.stddev.detach().cpu().numpy().astype(np.float64)
        return mean

    def inverse_transform(self, X, y=None):
        """Decoder means E[x|z] (E[x|z, y] given the labels ``y`` of a conditional model) for
        codes X: (n_samples, latent_dim), in the data's units."""
        check_is_fitted(self)
        z = np.asarray(X, dtype=np.float64)
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"expected codes of shape (n, {self.latent_dim}), got {z.shape}")
        if not (np.abs(z) <= np.finfo(np.float32).max).all():
            raise ValueError("codes must be finite (and within float32's range)")
        labels = self._labels(z, y)
        with torch.no_grad():
            mean = bind(self.model_, labels).likelihood(self._tensor(z)).mean
        return self._in_data_units(mean)

    def sample(
        self, n_samples: int = 1, random_state=None, mean: bool = False, y=None
    ) -> np.ndarray:
        """Ancestral samples: z ~ p(z), then x ~ p(x|z) (the decoder mean if ``mean``),
        in the data's units: (n_samples, n_features). A conditional model draws the classes
        ``y`` (one label, or n_samples of them), by default the classes in turn."""
        check_is_fitted(self)
        seed = int(check_random_state(random_state).randint(2**31 - 1))
        options = {}
        if self.conditional:
            if y is not None:
                wanted = np.broadcast_to(np.asarray(y), (n_samples,))
                options["label"] = self._labels(np.zeros((n_samples, 1)), wanted)
        elif y is not None:
            raise ValueError("y applies to a conditional model (conditional=True)")
        with fixed_randomness(seed, self._device()):
            x = self.model_.sample(n_samples, mean=mean, **options)
        return self._in_data_units(x)

    def score_samples(self, X, y=None) -> np.ndarray:
        """log p(x) of every row (nats), by importance sampling with ``importance_samples``
        draws from the encoder, of the rows as given: for Gaussian likelihoods it includes
        −Σ log scale_, the Jacobian of the standardisation; for a Bernoulli likelihood grey
        rows are binarized with ``aevb score``'s fixed draw. Higher is more normal. A
        conditional model gives log p(x|y) for the labels ``y``."""
        check_is_fitted(self)
        X = self._validate(X, reset=False)
        labels = self._labels(X, y)
        x = self._prepared(X)
        values = log_likelihood_per_example(
            self.model_, x, self.importance_samples, seed=0, labels=labels
        )
        return values.cpu().numpy() + self.transforms_.log_abs_det_jacobian

    def score(self, X, y=None) -> float:
        """Mean log-likelihood of the rows of X (nats per row; given y for a conditional
        model): higher is better."""
        return float(self.score_samples(X, y if self.conditional else None).mean())

    # --------------------------------------------------------------------------- helpers
    def _check_parameters(self) -> None:
        """Refuse parameters of the wrong type or range with one ``ValueError`` (the
        scikit-learn convention: checked in ``fit``, not in ``__init__``)."""
        problems = []

        def integer(name: str, minimum: int) -> None:
            value = getattr(self, name)
            if not (isinstance(value, int | np.integer) and not isinstance(value, bool)):
                problems.append(f"{name} must be an integer, got {value!r}")
            elif value < minimum:
                problems.append(f"{name} must be at least {minimum}, got {value}")

        def number(name: str, low: float, high: float = np.inf, open_low: bool = False) -> None:
            value = getattr(self, name)
            if not (isinstance(value, int | float | np.number) and not isinstance(value, bool)):
                problems.append(f"{name} must be a number, got {value!r}")
            elif not (np.isfinite(value) and (value > low if open_low else value >= low)):
                problems.append(f"{name} must be finite and {'>' if open_low else '≥'} {low}")
            elif value >= high:
                problems.append(f"{name} must be below {high}")

        for name in ("latent_dim", "num_samples", "epochs", "batch_size", "n_iter_no_change"):
            integer(name, 1)
        integer("importance_samples", 1)
        number("beta", 0.0)
        number("lr", 0.0, open_low=True)
        number("validation_fraction", 0.0, 1.0, open_low=True)
        hidden = self.hidden
        if not (
            isinstance(hidden, tuple | list)
            and all(isinstance(h, int | np.integer) and not isinstance(h, bool) for h in hidden)
            and all(h >= 1 for h in hidden)
        ):
            problems.append(f"hidden must be a tuple of positive integers, got {hidden!r}")
        for name, choices in (
            ("likelihood", LIKELIHOODS),
            ("posterior", POSTERIORS),
            ("objective", ESTIMATOR_OBJECTIVES),
        ):
            if getattr(self, name) not in choices:
                problems.append(f"{name} must be one of {', '.join(choices)}")
        for name in ("early_stopping", "verbose", "conditional"):
            if not isinstance(getattr(self, name), bool | np.bool_):
                problems.append(f"{name} must be True or False")
        try:
            check_device_name(self.device)
        except ValueError as error:
            problems.append(str(error))
        if problems:
            raise ValueError(f"invalid parameters of {type(self).__name__}: {'; '.join(problems)}")

    def _validate(self, X, reset: bool) -> np.ndarray:
        """X as a float64 array, refusing sparse input and naming a column with NaN or inf."""
        X = validate_data(
            self, X, reset=reset, dtype=np.float64, ensure_all_finite=False, ensure_min_samples=1
        )
        # Values beyond float32's range would become inf in the model.
        bad = ~(np.abs(X) <= np.finfo(np.float32).max).all(axis=0)
        if bad.any():
            names = getattr(self, "feature_names_in_", None)
            columns = [str(names[j]) if names is not None else str(j) for j in np.flatnonzero(bad)]
            raise ValueError(
                f"Input contains NaN or inf in column(s) {', '.join(columns)} (or values too "
                "large for float32)"
            )
        if self.likelihood == "bernoulli" and (X.min() < 0 or X.max() > 1):
            raise ValueError("the Bernoulli likelihood needs features in [0, 1]")
        return X

    def _device(self) -> torch.device:
        return next(self.model_.parameters()).device

    def _tensor(self, values: np.ndarray) -> Tensor:
        device = self._device() if hasattr(self, "model_") else resolve_device(self.device)
        return torch.as_tensor(np.asarray(values, dtype=np.float32), device=device)

    def _prepared(self, X: np.ndarray) -> Tensor:
        """Rows as given → the model's space (the fitted transforms, deterministically)."""
        return self.transforms_.prepare(self._tensor(X))

    def _in_data_units(self, x: Tensor) -> np.ndarray:
        return self.transforms_.inverse(x.double()).cpu().numpy()

    def _posterior(self, X, y=None):
        check_is_fitted(self)
        X = self._validate(X, reset=False)
        labels = self._labels(X, y)
        x = self._prepared(X)
        with torch.no_grad():
            return bind(self.model_, labels).posterior(x)

    def _fit_labels(self, X: np.ndarray, y) -> Tensor | None:
        """Record ``classes_`` from the labels y of X (a conditional model) and return them
        as class indices."""
        if not self.conditional:
            return None
        if y is None:
            raise ValueError("a conditional model (conditional=True) is fitted with labels y")
        y = column_or_1d(y, warn=True)
        classes = np.unique(y)
        if len(classes) < 2:
            raise ValueError(f"a conditional model needs at least two classes, got {len(classes)}")
        self.classes_ = classes
        return self._labels(X, y)

    def _labels(self, X: np.ndarray, y) -> Tensor | None:
        """The labels y of the rows X as class indices (int64 on the model's device) for a
        conditional model; ``None`` otherwise (y ignored)."""
        if not self.conditional:
            return None
        if y is None:
            raise ValueError("the model is conditional: pass the labels y of the rows")
        y = column_or_1d(y, warn=True)
        if len(y) != len(X):
            raise ValueError(f"{len(y)} labels for {len(X)} rows")
        known = np.isin(y, self.classes_)
        if not known.all():
            raise ValueError(f"labels not seen in fit: {np.unique(y[~known])[:5].tolist()}")
        indices = np.searchsorted(self.classes_, y)
        device = self._device() if hasattr(self, "model_") else resolve_device(self.device)
        return torch.as_tensor(indices, dtype=torch.long, device=device)


def __getattr__(name: str) -> type:
    """``aevb.sklearn.VAE``, the estimator's old name, kept so that code and pickles that use
    it go on working, with a warning: it clashed with :class:`aevb.VAE`, the torch module."""
    if name == "VAE":
        warnings.warn(
            "aevb.sklearn.VAE is now aevb.sklearn.VAEEstimator (aevb.VAE is the torch module); "
            "the old name will be removed in a future release",
            FutureWarning,
            stacklevel=2,
        )
        return VAEEstimator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
