"""What the data mean to the model: binarization and standardisation, as recorded objects.

A run decides its transforms once, when it starts (:func:`choose_transforms`, from the data and
the model's likelihood), records them in its ``config.json``, and every later use — training,
validation, evaluation, the CLI, the scikit-learn estimator, the experiments — applies the same
recorded objects through :meth:`Transforms.prepare` (held-out data) or the loader (training
data, :mod:`aevb.data.loaders`). Nothing is re-derived from a dataset's name.

* :class:`Binarize` — ``dynamic``: a fresh Bernoulli draw of the grey values each training
  epoch (held-out data: one draw with a fixed seed); ``static``: one draw with that seed for
  every split (binary data pass unchanged); ``threshold``: x > 0.5.
* :class:`Standardize` — (x − mean) / scale per feature, fitted on the training split. Reported
  log-densities add its log-Jacobian, −Σ log scale, so they are densities of the data as given,
  and outputs (samples, reconstructions) are mapped back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from aevb.errors import ConfigError, DataError
from aevb.hints import setting_name

__all__ = [
    "BINARIZATIONS",
    "EVAL_BINARIZATION_SEED",
    "Binarize",
    "Standardize",
    "Transforms",
    "choose_transforms",
]

BINARIZATIONS = ("dynamic", "static", "threshold", "none")
# Held-out splits (and static training binarization) are binarized once with this seed,
# whatever the run's seed, so that evaluations of different runs see the same binary images.
EVAL_BINARIZATION_SEED = 2014


@dataclass(frozen=True)
class Binarize:
    """Grey values p in [0, 1] → binary x ~ Bernoulli(p) (``dynamic``, ``static``) or x = [p > ½]
    (``threshold``)."""

    mode: str

    def __post_init__(self) -> None:
        if self.mode not in ("dynamic", "static", "threshold"):
            raise ConfigError(f"binarization must be dynamic, static or threshold: {self.mode!r}")

    @property
    def dynamic(self) -> bool:
        """Whether training draws anew each epoch."""
        return self.mode == "dynamic"

    def prepare(self, x: Tensor) -> Tensor:
        """The deterministic binarization of held-out rows: a Bernoulli draw seeded with
        :data:`EVAL_BINARIZATION_SEED` (the same bits on every device; the first rows get the
        same draws whatever follows them), or the threshold."""
        if self.mode == "threshold":
            return (x > 0.5).to(x.dtype)
        generator = torch.Generator().manual_seed(EVAL_BINARIZATION_SEED)
        return torch.bernoulli(x.cpu(), generator=generator).to(x.device)

    def check(self, x: Tensor, where: str) -> None:
        low, high = float(x.min()), float(x.max())
        if low < 0.0 or high > 1.0:
            raise DataError(
                f"{where} spans [{low:g}, {high:g}], but the run binarizes its data, reading "
                "values as probabilities in [0, 1] (as its Bernoulli likelihood needs)"
            )

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "binarize", "mode": self.mode}


@dataclass(frozen=True)
class Standardize:
    """x ↦ (x − mean) / scale per feature (``mean``, ``scale``: one value per data value)."""

    mean: tuple[float, ...]
    scale: tuple[float, ...]

    @classmethod
    def fit(cls, train: np.ndarray) -> Standardize:
        """Mean and standard deviation of each feature over the training rows (a feature that
        never varies keeps scale 1), in float64."""
        flat = np.asarray(train, dtype=np.float64).reshape(len(train), -1)
        scale = flat.std(0)
        scale = np.where(scale > 0, scale, 1.0)
        return cls(tuple(flat.mean(0).tolist()), tuple(scale.tolist()))

    def _parameters(self, x: Tensor) -> tuple[Tensor, Tensor]:
        shape = x.shape[1:]
        if math.prod(shape) != len(self.mean):
            raise DataError(
                f"the standardisation was fitted to {len(self.mean)} values per example, but "
                f"the data have shape {tuple(shape)}"
            )
        mean = torch.tensor(self.mean, dtype=torch.float64, device=x.device).reshape(shape)
        scale = torch.tensor(self.scale, dtype=torch.float64, device=x.device).reshape(shape)
        return mean, scale

    # In float64, then rounded to the data's dtype: data that differ by a change of units
    # (c·x) standardise to the same float32 values.
    def prepare(self, x: Tensor) -> Tensor:
        mean, scale = self._parameters(x)
        return ((x.double() - mean) / scale).to(x.dtype)

    def inverse(self, x: Tensor) -> Tensor:
        mean, scale = self._parameters(x)
        return (x.double() * scale + mean).to(x.dtype)

    @property
    def log_abs_det_jacobian(self) -> float:
        """log |det ∂x_model/∂x| = −Σ_j log scale_j, nats per example."""
        return -float(np.log(np.asarray(self.scale)).sum())

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "standardize", "mean": list(self.mean), "scale": list(self.scale)}


Transform = Binarize | Standardize


class Transforms:
    """The ordered transforms between the data as loaded and the model's space."""

    def __init__(self, steps: Sequence[Transform] = ()):
        self.steps = tuple(steps)

    def prepare(self, x: Tensor) -> Tensor:
        """Held-out rows (N, *data_shape) in the model's space, deterministically."""
        for step in self.steps:
            x = step.prepare(x)
        return x

    def inverse(self, x: Tensor) -> Tensor:
        """Model outputs (decoder means, samples) back in the data's units."""
        for step in reversed(self.steps):
            if isinstance(step, Standardize):
                x = step.inverse(x)
        return x

    def check(self, x: Tensor, where: str = "the data") -> None:
        """Refuse data the transforms cannot take (binarization of values outside [0, 1])."""
        for step in self.steps:
            if isinstance(step, Binarize):
                step.check(x, where)

    @property
    def dynamic_binarization(self) -> bool:
        """Whether training draws a fresh binarization each epoch."""
        return any(isinstance(s, Binarize) and s.dynamic for s in self.steps)

    @property
    def log_abs_det_jacobian(self) -> float:
        """What the transforms add to a log-density of the data (nats per example)."""
        return sum(s.log_abs_det_jacobian for s in self.steps if isinstance(s, Standardize))

    def describe(self) -> str:
        parts = [
            f"binarize {s.mode}" if isinstance(s, Binarize) else "standardise" for s in self.steps
        ]
        return ", ".join(parts) or "none"

    def to_list(self) -> list[dict[str, Any]]:
        return [step.to_dict() for step in self.steps]

    @classmethod
    def from_list(cls, values: Sequence[dict[str, Any]]) -> Transforms:
        """The transforms recorded as ``values`` (:meth:`to_list`); anything malformed raises
        :class:`~aevb.errors.ConfigError`."""
        steps: list[Transform] = []
        for value in values:
            kind = value.get("kind") if isinstance(value, dict) else None
            if kind == "binarize":
                steps.append(Binarize(value.get("mode")))
            elif kind == "standardize":
                mean, scale = value.get("mean"), value.get("scale")
                if not (_finite_list(mean) and _finite_list(scale) and len(mean) == len(scale)):
                    raise ConfigError(
                        "a standardisation needs lists 'mean' and 'scale' of equal "
                        "length, of finite numbers"
                    )
                if min(scale, default=1.0) <= 0:
                    raise ConfigError("a standardisation's scales must be positive")
                steps.append(Standardize(tuple(map(float, mean)), tuple(map(float, scale))))
            else:
                raise ConfigError(f"unknown data transform {value!r:.80}")
        return cls(steps)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Transforms) and self.steps == other.steps

    def __repr__(self) -> str:
        return f"Transforms({self.describe()})"


def _finite_list(values: Any) -> bool:
    return isinstance(values, list) and all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values
    )


def on_eight_bit_grid(values: np.ndarray) -> bool:
    """Whether every value is an 8-bit level k/255 in [0, 1] (to float32 round-off)."""
    if values.size == 0 or values.min() < 0 or values.max() > 1:
        return False
    levels = values * 255.0
    return bool(np.all(np.abs(levels - np.round(levels)) < 1e-3))


class ValueSummary(Protocol):
    """What choosing the transforms needs of training rows held on disk
    (:class:`aevb.data.streaming.StreamSummary`): their range, whether they are 8-bit levels,
    and their standardisation."""

    min: float
    max: float
    eight_bit: bool

    def standardize(self) -> Standardize: ...


def choose_transforms(
    train: np.ndarray | ValueSummary,
    name: str,
    binary_data: bool,
    is_image: bool,
    binary_likelihood: bool,
    binarize: str | None,
    standardize: bool | None,
    *,
    eight_bit_likelihood: bool = False,
) -> tuple[Transforms, str, bool]:
    """The transforms for training data ``train`` (of dataset ``name``; the rows, or a
    :class:`ValueSummary` of rows on disk) under a likelihood that
    is (``binary_likelihood``) or is not a distribution over {0, 1}, or is one over the 8-bit
    levels k/255 (``eight_bit_likelihood``: the data are taken as they are, and must be such
    levels).

    Defaults: a binary likelihood binarizes grey data dynamically (binary data pass through
    a static draw unchanged); a real-valued likelihood standardises tables (not images) and
    binarizes nothing. Returns
    the transforms and the resolved ``binarize`` and ``standardize`` settings; impossible
    combinations raise :class:`~aevb.errors.DataError` or :class:`~aevb.errors.ConfigError`.
    """
    if eight_bit_likelihood:
        if binarize not in (None, "none") or standardize:
            raise ConfigError(
                "an 8-bit likelihood models the levels k/255 themselves: "
                f"{setting_name('binarize')} and {setting_name('standardize')} do not apply"
            )
        if not (train.eight_bit if _summarised(train) else on_eight_bit_grid(train)):
            raise DataError(
                f"an 8-bit likelihood is a distribution over the 256 levels k/255 in [0, 1], "
                f"but {name} holds other values (8×8 digits, for one, have 17 levels); use it "
                "on 8-bit images (mnist, fashion-mnist, frey) or a Gaussian likelihood"
            )
        return Transforms([]), "none", False
    if _summarised(train):
        low, high = float(train.min), float(train.max)
    else:
        low, high = float(train.min()), float(train.max())
    in_unit_interval = low >= 0.0 and high <= 1.0
    if binarize is None:
        # Binary data under a Bernoulli likelihood pass a static draw unchanged (and say so).
        binarize = ("static" if binary_data else "dynamic") if binary_likelihood else "none"
    if standardize is None:
        standardize = not binary_likelihood and not is_image and binarize == "none"
    if binary_likelihood:
        if not in_unit_interval:
            raise DataError(
                f"the Bernoulli likelihood needs data in [0, 1], but {name} spans "
                f"[{low:g}, {high:g}]; rescale the data or use "
                f"{setting_name('likelihood', 'gaussian-learned')}"
            )
        if binarize == "none" and not binary_data:
            raise DataError(
                f"{name} holds grey values, and a Bernoulli likelihood is a distribution over "
                "{0, 1}: its log-probability of a grey value is not a log-likelihood. Binarize "
                f"({setting_name('binarize')}: dynamic, static or threshold) or use a Gaussian "
                "likelihood"
            )
        if standardize:
            raise ConfigError(
                "standardised values are not in {0, 1}: a Bernoulli likelihood cannot model "
                f"them; use a Gaussian likelihood or {setting_name('standardize', False)}"
            )
    elif binarize != "none" and not in_unit_interval:
        raise DataError(
            f"binarization reads values as probabilities in [0, 1], but {name} spans "
            f"[{low:g}, {high:g}]"
        )
    if standardize and binarize != "none":
        raise ConfigError("binarized data cannot also be standardised; choose one")
    steps: list[Transform] = []
    if binarize != "none":
        steps.append(Binarize(binarize))
    if standardize:
        steps.append(train.standardize() if _summarised(train) else Standardize.fit(train))
    return Transforms(steps), binarize, standardize


def _summarised(train: np.ndarray | ValueSummary) -> bool:
    return not isinstance(train, np.ndarray)
