"""Labels in the model: the conditional VAE and the semi-supervised VAE (M2).

* :class:`ConditionalVAE` (Sohn et al. 2015): q_φ(z|x, y), p_θ(x|z, y), p(z), for a class label
  y of ``num_classes``; its bound is on log p(x|y) = log ∫ p(x|z, y) p(z) dz.
* :class:`SemiSupervisedVAE`, M2 of Kingma, Rezende, Mohamed & Welling (2014): the same parts
  plus a classifier q_φ(y|x) and a uniform prior p(y); y is a latent variable where it is not
  observed (:class:`aevb.objectives.SemiSupervised` trains it).

Labels are integer class indices (N,). ``model.given(y)`` binds labels to a batch and returns a
:class:`Conditioned` view with the plain VAE interface — ``posterior(x)``, ``likelihood(z)``,
``prior()`` — so every objective, the importance sampler and the training loop work on a
conditional model unchanged: p(x|y)'s bound and log-likelihood are computed exactly as p(x)'s.

The networks see the label as a one-hot vector appended to their input (x flattened for the
encoder, z for the decoder), as in both papers.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution

from aevb.errors import DataError
from aevb.heads import Head
from aevb.models import VAE, Decoder, Encoder, decode_prior_draws, reconstruct

__all__ = [
    "UNLABELLED",
    "ConditionalDecoder",
    "ConditionalEncoder",
    "ConditionalVAE",
    "Conditioned",
    "SemiSupervisedVAE",
    "bind",
    "check_labels",
    "checked_labels",
    "is_conditional",
]

# The label of an unlabelled example (semi-supervised data).
UNLABELLED = -1


def check_labels(
    labels: Tensor | Sequence[int],
    num_classes: int,
    rows: int | None = None,
    allow_unlabelled: bool = False,
) -> Tensor:
    """``labels`` as an int64 tensor (N,) of class indices in [0, num_classes) (or
    :data:`UNLABELLED` where ``allow_unlabelled``); ``rows``: the N it must have."""
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(
            f"labels must be integer class indices of shape (N,), got dtype {labels.dtype} and "
            f"shape {tuple(labels.shape)}"
        )
    if rows is not None and len(labels) != rows:
        raise ValueError(f"{len(labels)} labels for {rows} rows")
    labels = labels.long()
    low = UNLABELLED if allow_unlabelled else 0
    if len(labels) and (labels.min() < low or labels.max() >= num_classes):
        raise ValueError(
            f"labels must be class indices in [0, {num_classes - 1}]"
            f"{' (or -1: unlabelled)' if allow_unlabelled else ''}, got values from "
            f"{int(labels.min())} to {int(labels.max())}"
        )
    return labels


def _with_label(inputs: Tensor, one_hot: Tensor) -> Tensor:
    """Flattened ``inputs`` (..., *event) with ``one_hot`` (batch, C) appended, the batch being
    the last leading dimension of ``inputs``: (..., event size + C)."""
    leading = inputs.shape[: inputs.dim() - 1]
    return torch.cat((inputs, one_hot.to(inputs.dtype).expand(*leading, one_hot.shape[-1])), -1)


class ConditionalEncoder(Encoder):
    """q_φ(z|x, y) = head(network([flatten(x), one_hot(y)])): ``network`` maps (N, D + C) to
    the head's parameters, D = prod(data_shape)."""

    def __init__(self, network: nn.Module, head: Head, data_shape: Sequence[int], num_classes: int):
        self.data_shape = tuple(int(s) for s in data_shape)
        data_dim = int(torch.Size(self.data_shape).numel())
        super().__init__(network, head, (data_dim + int(num_classes),))

    def forward(self, x: Tensor, one_hot: Tensor) -> Distribution:  # type: ignore[override]
        """x: (batch, *data_shape), one_hot: (batch, C)."""
        events = len(self.data_shape)
        if tuple(x.shape[x.dim() - events :]) != self.data_shape:
            raise ValueError(
                f"the encoder expects x of shape (..., {', '.join(map(str, self.data_shape))}), "
                f"got {tuple(x.shape)}"
            )
        flat = x.reshape(*x.shape[: x.dim() - events], -1)
        return super().forward(_with_label(flat, one_hot))


class ConditionalDecoder(Decoder):
    """p_θ(x|z, y) = head(network([z, one_hot(y)])): ``network`` maps (N, latent_dim + C) to
    the head's parameters."""

    def __init__(self, network: nn.Module, head: Head, latent_dim: int, num_classes: int):
        super().__init__(network, head, int(latent_dim) + int(num_classes))
        self.latent_dim = int(latent_dim)

    def forward(self, z: Tensor, one_hot: Tensor) -> Distribution:  # type: ignore[override]
        """z: (..., batch, latent_dim), one_hot: (batch, C)."""
        return super().forward(_with_label(z, one_hot))


class ConditionalVAE(VAE):
    """p_θ(x, z|y) = p_θ(x|z, y) p(z) with recognition model q_φ(z|x, y).

    ``posterior(x, y)`` and ``likelihood(z, y)`` take integer labels y (batch,);
    :meth:`given` binds them for the objectives and the evaluator.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, prior: nn.Module, num_classes: int):
        if (
            isinstance(num_classes, bool)
            or not isinstance(num_classes, Integral)
            or (num_classes < 2)
        ):
            raise ValueError(f"num_classes must be an integer ≥ 2, got {num_classes!r}")
        self.num_classes = int(num_classes)
        super().__init__(encoder, decoder, prior)

    def one_hot(self, labels: Tensor) -> Tensor:
        """Integer labels (batch,) → one-hot float32 (batch, C)."""
        return F.one_hot(labels, self.num_classes).float()

    def posterior(self, x: Tensor, labels: Tensor) -> Distribution:  # type: ignore[override]
        """q_φ(z|x, y) for x: (batch, *data_shape) and labels (batch,)."""
        return self.encoder(x, self.one_hot(labels))

    def likelihood(self, z: Tensor, labels: Tensor) -> Distribution:  # type: ignore[override]
        """p_θ(x|z, y) for z: (..., batch, latent_dim) and labels (batch,)."""
        return self.decoder(z, self.one_hot(labels))

    encode = posterior
    decode = likelihood

    def given(self, labels: Tensor) -> Conditioned:
        """The model with labels (batch,) bound: a view with the plain VAE interface."""
        return Conditioned(self, labels)

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def _values_per_sample(self) -> int:
        zero = torch.zeros(1, self.latent_dim, device=self._device())
        labels = torch.zeros(1, dtype=torch.long, device=self._device())
        return self.likelihood(zero, labels).event_shape.numel() + self.latent_dim

    def sample_labels(self, num_samples: int, label: int | Tensor | None = None) -> Tensor:
        """Labels for ``num_samples`` draws: ``label`` for all (an int), one each (a tensor),
        or the classes in turn (None)."""
        if label is None:
            return torch.arange(num_samples, device=self._device()) % self.num_classes
        if isinstance(label, Integral) and not isinstance(label, bool):
            labels = torch.full((num_samples,), int(label), dtype=torch.long)
        else:
            labels = torch.as_tensor(label)
        return check_labels(labels, self.num_classes, num_samples).to(self._device())

    @torch.no_grad()
    def sample(
        self,
        num_samples: int,
        mean: bool = True,  # type: ignore[override]
        label: int | Tensor | None = None,
    ) -> Tensor:
        """Draws of x given y: z ~ p(z), then the decoder's mean (or a draw if ``mean=False``)
        given ``label`` (an int for every draw, a tensor (num_samples,) of labels, or None: the
        classes in turn). Returns (num_samples, *data_shape)."""
        self._check_sample_count(num_samples)
        labels = self.sample_labels(num_samples, label)
        return self.given(labels).draw(num_samples, mean)

    @torch.no_grad()
    def reconstruct(
        self,
        x: Tensor,
        labels: Tensor,  # type: ignore[override]
        mean: bool = True,
    ) -> Tensor:
        """Decode the posterior mean of x given its labels (a draw if ``mean=False``)."""
        return self.given(labels).reconstruct(x, mean)


class SemiSupervisedVAE(ConditionalVAE):
    """M2: a :class:`ConditionalVAE` with a classifier q_φ(y|x) = Cat(softmax(classifier(x)))
    and a uniform prior p(y) over ``num_classes``.

    ``classifier`` maps x: (N, *data_shape) to logits (N, C).
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        prior: nn.Module,
        classifier: nn.Module,
        num_classes: int,
    ):
        super().__init__(encoder, decoder, prior, num_classes)
        self.classifier = classifier

    def classify(self, x: Tensor) -> Categorical:
        """q_φ(y|x) for x: (batch, *data_shape); batch shape (batch,)."""
        return Categorical(logits=self.classifier(x), validate_args=False)


class Conditioned:
    """A conditional model with the labels of one batch bound: ``posterior(x)``,
    ``likelihood(z)`` and ``prior()`` as a plain :class:`~aevb.models.VAE` has them.

    A plain object, not a module, so that it can be made inside a compiled training step;
    ``training`` and ``parameters()`` are the model's, for code written against a VAE.
    Semi-supervised batches may hold :data:`UNLABELLED` rows; only the M2 objective reads
    those (through ``labels``).
    """

    def __init__(self, model: ConditionalVAE, labels: Tensor):
        self.model = model
        self.labels = labels
        self.latent_dim = model.latent_dim
        self.encoder, self.decoder, self.prior = model.encoder, model.decoder, model.prior

    @property
    def training(self) -> bool:
        return self.model.training

    def parameters(self):
        return self.model.parameters()

    def _one_hot(self) -> Tensor:
        # Unlabelled rows (−1) get a zero vector; they are never read as a condition.
        return F.one_hot(self.labels.clamp(min=0), self.model.num_classes).float()

    def posterior(self, x: Tensor) -> Distribution:
        return self.model.encoder(x, self._one_hot())

    def likelihood(self, z: Tensor) -> Distribution:
        return self.model.decoder(z, self._one_hot())

    encode = posterior
    decode = likelihood

    def draw(self, num_samples: int, mean: bool = True) -> Tensor:
        """``num_samples`` (one per bound label) draws z ~ p(z) decoded."""
        return decode_prior_draws(self, num_samples, mean)

    def reconstruct(self, x: Tensor, mean: bool = True) -> Tensor:
        return reconstruct(self, x, mean)


def is_conditional(model: object) -> bool:
    """Whether ``model`` needs labels (a :class:`ConditionalVAE`)."""
    return isinstance(model, ConditionalVAE)


def checked_labels(model: object, labels: object, rows: int) -> Tensor | None:
    """The labels a model needs for ``rows`` rows: checked class indices (N,) for a
    conditional model, ``None`` for another (which is given none)."""
    if not is_conditional(model):
        if labels is not None:
            raise DataError("labels were given, but the model is not conditional")
        return None
    if labels is None:
        raise DataError(
            "the model is conditional (it models x given a class label): pass the rows' labels"
        )
    assert isinstance(model, ConditionalVAE)
    try:
        return check_labels(labels, model.num_classes, rows)  # type: ignore[arg-type]
    except (ValueError, TypeError, RuntimeError) as error:
        raise DataError(str(error)) from error


def bind(model: object, labels: Tensor | None):
    """``model`` itself without labels, else ``model.given(labels)``."""
    if labels is None:
        return model
    if not isinstance(model, ConditionalVAE):
        raise ValueError("labels were given, but the model is not conditional")
    return model.given(labels)
