"""Model factories: functions that build a :class:`~aevb.models.VAE` from JSON arguments.

A run folder records how to rebuild its model as a :class:`ModelSpec`: the import path of a
factory (``package.module:function``) and its arguments. Nothing is pickled. A factory is any
function decorated with :func:`model_factory` that returns a VAE; only such functions are ever
called from a recorded spec, so a run folder cannot name an arbitrary function to run.

Two factories are built in: :func:`mlp` (the paper's multilayer perceptrons) and :func:`conv`
(a small DCGAN-style convolutional pair for images). Both take the same description of the
posterior, likelihood and prior.
"""

from __future__ import annotations

import importlib
import inspect
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from numbers import Integral
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from aevb import heads
from aevb.conditional import (
    ConditionalDecoder,
    ConditionalEncoder,
    ConditionalVAE,
    SemiSupervisedVAE,
)
from aevb.errors import ConfigError
from aevb.flows import (
    FLOW_POSTERIORS,
    IAFPosterior,
    PlanarPosterior,
    default_flow_hidden,
    default_flow_steps,
)
from aevb.hierarchy import (
    DEFAULT_TOP_HIDDEN,
    FirstUnits,
    LadderPosteriorHead,
    TwoLayerPosteriorHead,
    TwoLayerPrior,
)
from aevb.hints import setting_name
from aevb.limits import check_memory
from aevb.models import VAE, Decoder, Encoder
from aevb.networks import MLP, ConvDecoderNetwork, ConvEncoderNetwork, initialise
from aevb.priors import MixtureOfGaussians, StandardNormal, VampPrior

__all__ = [
    "ARCHITECTURES",
    "LIKELIHOODS",
    "POSTERIORS",
    "ModelSpec",
    "conv",
    "mlp",
    "model_factory",
]

ARCHITECTURES = ("mlp", "conv")
LIKELIHOODS = ("bernoulli", "gaussian", "gaussian-learned", "logistic-mixture", "categorical")
# Logistic components per value of the discretised mixture likelihood when not given.
DEFAULT_LIKELIHOOD_COMPONENTS = 5
POSTERIORS = ("diagonal", "full", *FLOW_POSTERIORS)
# Components of the mixture and VampPrior priors when not given: Tomczak & Welling (2018) used
# 500 pseudo-inputs for MNIST.
DEFAULT_COMPONENTS = {"mixture": 10, "vamp": 500}
# Copies of a step's activations alive at its peak: the forward values and their gradients.
ACTIVATION_COPIES = 2
_MARK = "__aevb_model_factory__"

Factory = TypeVar("Factory", bound=Callable[..., VAE])


def model_factory(function: Factory) -> Factory:
    """Mark ``function`` as a model factory: it takes JSON-serialisable keyword arguments and
    returns a :class:`~aevb.models.VAE`. Run folders can then rebuild models with it."""
    setattr(function, _MARK, True)
    return function


@dataclass(frozen=True)
class ModelSpec:
    """How to build a model: ``factory`` (``"package.module:function"``) called with
    ``arguments`` (JSON values). ``source`` is the file that defined the factory when it was
    not importable by name (a script run as ``python my_models.py``), so that it can be found
    again from another process."""

    factory: str
    arguments: dict[str, Any] = field(default_factory=dict)
    source: str | None = None

    @classmethod
    def of(cls, function: Callable[..., VAE], **arguments: Any) -> ModelSpec:
        """The spec of ``function(**arguments)``; ``function`` must be a :func:`model_factory`."""
        if not getattr(function, _MARK, False):
            raise ConfigError(
                f"{getattr(function, '__qualname__', function)!r} is not marked as a model "
                "factory; decorate it with @aevb.model_factory"
            )
        module = function.__module__
        source = None
        if module == "__main__":
            # A script: recorded under its module's name (``python -m pkg.mod``) or its file's,
            # and the file, to be imported again.
            path = Path(inspect.getfile(function)).resolve()
            main_spec = getattr(sys.modules["__main__"], "__spec__", None)
            module = main_spec.name if main_spec is not None else path.stem
            source = str(path)
        spec = cls(f"{module}:{function.__qualname__}", _plain(arguments), source)
        spec.resolve()  # fail now, not when the run is loaded
        return spec

    def resolve(self) -> Callable[..., VAE]:
        """The factory function; an :class:`~aevb.errors.ConfigError` naming it if it cannot be
        imported or is not a model factory."""
        module_name, _, name = self.factory.partition(":")
        if not module_name or not name:
            raise ConfigError(f"model factory {self.factory!r} is not 'package.module:function'")
        try:
            module = _import(module_name, self.source)
        except ImportError as error:
            where = f" (defined in {self.source})" if self.source else ""
            raise ConfigError(
                f"cannot import the model factory {self.factory}{where}: {error}. Install or "
                "put on PYTHONPATH the package that defines it"
            ) from error
        function: Any = module
        for part in name.split("."):
            function = getattr(function, part, None)
        if function is None or not getattr(function, _MARK, False):
            raise ConfigError(
                f"{self.factory} is not a model factory (a function decorated with "
                "@aevb.model_factory)"
            )
        return function

    def build(self, copies: int = 0, rows: int = 0) -> VAE:
        """Call the factory with the arguments; the result must be a VAE.

        With ``copies`` > 0 the model is first built on the ``meta`` device (no memory, no
        initialisation) and refused if ``copies`` times its parameters, plus the activations
        of a training step on ``rows`` rows (batch × latent samples; estimated for the
        built-in factories, :meth:`activation_values`), would take more than a quarter of the
        available memory (:func:`aevb.limits.check_memory`). A factory that cannot build on
        the meta device is not checked."""
        factory = self.resolve()
        if copies:
            try:
                with torch.device("meta"):
                    meta = factory(**self.arguments)
            except Exception:  # any failure here only means "not measured"
                meta = None
            if isinstance(meta, nn.Module):
                count = sum(p.numel() for p in meta.parameters())
                size = sum(p.numel() * p.element_size() for p in meta.parameters())
                activations = ACTIVATION_COPIES * 4 * rows * self.activation_values()
                check_memory(
                    copies * size + activations,
                    f"the model ({count:,} parameters, {copies} cop"
                    f"{'ies' if copies > 1 else 'y'}"
                    + (f"; activations of {rows:,} rows per step" if activations else "")
                    + ")",
                    "choose smaller layers ("
                    + ", ".join(
                        map(setting_name, ("hidden", "latent_dim", "channels", "prior_components"))
                    )
                    + ") or batches",
                    share=0.25,
                )
        try:
            model = factory(**self.arguments)
        except (TypeError, ValueError, IndexError, KeyError, AttributeError, RuntimeError) as e:
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(
                f"model factory {self.factory} failed: {type(e).__name__}: {e}"
            ) from e
        if not isinstance(model, VAE):
            raise ConfigError(
                f"model factory {self.factory} returned {type(model).__name__}, not an aevb.VAE"
            )
        return model

    def activation_values(self) -> int:
        """Values one row keeps for the backward pass of a built-in model (both networks'
        hidden layers before and after their nonlinearity, the data-sized output and its
        density, the latent draws); 0 for other factories, which are not estimated."""
        arguments = self.arguments
        try:
            hidden = sum(int(h) for h in arguments["hidden"])
            data = math.prod(int(s) for s in arguments["data_shape"])
            latent = int(arguments["latent_dim"])
            width = 1
            if arguments.get("likelihood") in ("categorical", "logistic-mixture"):
                with torch.device("meta"):
                    head = likelihood_head(
                        arguments["likelihood"],
                        arguments["data_shape"],
                        0.1,
                        False,
                        arguments.get("likelihood_components"),
                    )
                width = head.width
        except (KeyError, TypeError, ValueError, ConfigError):
            return 0
        return 4 * hidden + 2 * data * width + 4 * latent

    def to_dict(self) -> dict[str, Any]:
        values: dict[str, Any] = {"factory": self.factory, "arguments": self.arguments}
        if self.source is not None:
            values["source"] = self.source
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelSpec:
        """The spec recorded as ``values`` (a run's ``model``); wrong types raise
        :class:`~aevb.errors.ConfigError`."""
        if not isinstance(values, dict):
            raise ConfigError(f"a model spec must be an object, got {values!r:.60}")
        factory, arguments = values.get("factory"), values.get("arguments", {})
        source = values.get("source")
        if not isinstance(factory, str) or not isinstance(arguments, dict):
            raise ConfigError(
                "a model spec needs 'factory' (a string 'package.module:function') and "
                "'arguments' (an object)"
            )
        if source is not None and not isinstance(source, str):
            raise ConfigError(f"a model spec's 'source' must be a file path, got {source!r:.60}")
        return cls(factory, dict(arguments), source)


def _import(module_name: str, source: str | None):
    """Import ``module_name``; if it is not importable and ``source`` names its file, from
    that file's folder."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if source is None or error.name != module_name or not Path(source).is_file():
            raise
    folder = str(Path(source).parent)
    sys.path.insert(0, folder)
    try:
        return importlib.import_module(module_name)
    finally:
        sys.path.remove(folder)


def _plain(value: Any) -> Any:
    """Tuples to lists, recursively, so that arguments compare equal after a JSON round trip."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


# --------------------------------------------------------------------------- built-in parts
def posterior_head(
    posterior: str,
    latent_dim: int,
    flow_steps: int | None = None,
    flow_hidden: int | None = None,
) -> heads.Head:
    """The head of q(z|x): ``"diagonal"`` or ``"full"`` covariance, or a diagonal Gaussian
    through ``flow_steps`` ``"iaf"`` or ``"planar"`` flows (:mod:`aevb.flows`; defaults by
    kind; ``flow_hidden`` units per IAF MADE layer)."""
    if posterior not in POSTERIORS:
        raise ConfigError(f"posterior must be one of {POSTERIORS}, got {posterior!r}")
    if posterior not in FLOW_POSTERIORS and (flow_steps, flow_hidden) != (None, None):
        raise ConfigError("flow_steps and flow_hidden apply to the iaf and planar posteriors")
    if posterior == "diagonal":
        return heads.DiagonalGaussian(latent_dim)
    if posterior == "full":
        return heads.FullCovarianceGaussian(latent_dim)
    steps = default_flow_steps(posterior) if flow_steps is None else flow_steps
    if isinstance(steps, bool) or not isinstance(steps, Integral) or steps < 1:
        raise ConfigError(f"flow_steps must be a positive integer, got {steps!r}")
    if posterior == "planar":
        if flow_hidden is not None:
            raise ConfigError("flow_hidden applies to the iaf posterior (planar flows have none)")
        return PlanarPosterior(latent_dim, steps)
    hidden = default_flow_hidden(latent_dim) if flow_hidden is None else flow_hidden
    if isinstance(hidden, bool) or not isinstance(hidden, Integral) or hidden < 1:
        raise ConfigError(f"flow_hidden must be a positive integer, got {hidden!r}")
    return IAFPosterior(latent_dim, steps, hidden)


def likelihood_head(
    likelihood: str,
    data_shape: Sequence[int],
    likelihood_std: float,
    squash_mean: bool,
    components: int | None = None,
) -> heads.Head:
    """The head of p(x|z): Bernoulli, Gaussian with fixed σ, Gaussian with learned σ, or for
    8-bit data a discretised logistic mixture (``components`` per value) or a 256-way
    categorical."""
    if components is not None and likelihood != "logistic-mixture":
        raise ConfigError("likelihood_components applies to the logistic-mixture likelihood")
    if likelihood == "bernoulli":
        return heads.Bernoulli(data_shape)
    if likelihood == "gaussian":
        return heads.Gaussian(data_shape, likelihood_std)
    if likelihood == "gaussian-learned":
        return heads.LearnedGaussian(data_shape, squash_mean)
    if likelihood == "logistic-mixture":
        count = DEFAULT_LIKELIHOOD_COMPONENTS if components is None else components
        if isinstance(count, bool) or not isinstance(count, Integral) or count < 1:
            raise ConfigError(f"likelihood_components must be a positive integer, got {count!r}")
        return heads.DiscretizedLogisticMixture(data_shape, count)
    if likelihood == "categorical":
        return heads.EightBitCategorical(data_shape)
    raise ConfigError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")


def make_prior(
    prior: str,
    latent_dim: int,
    encoder: nn.Module,
    data_shape: Sequence[int],
    components: int | None,
) -> nn.Module:
    """``"standard"`` N(0, I), a learnable ``"mixture"`` of Gaussians, or the ``"vamp"`` prior."""
    if prior == "standard":
        if components is not None:
            raise ConfigError("prior_components applies to the mixture and vamp priors only")
        return StandardNormal(latent_dim)
    if prior == "mixture":
        return MixtureOfGaussians(latent_dim, components or DEFAULT_COMPONENTS["mixture"])
    if prior == "vamp":
        return VampPrior(encoder, components or DEFAULT_COMPONENTS["vamp"], data_shape)
    raise ConfigError(f"prior must be one of standard, mixture, vamp, got {prior!r}")


def _assemble(
    encoder_network: nn.Module,
    decoder_network: nn.Module,
    posterior: heads.Head,
    likelihood: heads.Head,
    data_shape: tuple[int, ...],
    latent_dim: int,
    init: str,
    prior: str,
    prior_components: int | None,
    top: TopLayer | None = None,
    labels: Labels | None = None,
) -> VAE:
    """The VAE of these parts; with a ``top`` stochastic layer, the decoder network sees the
    first ``latent_dim`` units of z = (z₁, z₂) and the prior is the two-layer one; with
    ``labels``, a conditional (or semi-supervised) VAE whose networks take the one-hot label
    after their input."""
    if top is not None:
        decoder_network = nn.Sequential(FirstUnits(latent_dim), decoder_network)
    if labels is None:
        encoder = Encoder(encoder_network, posterior, data_shape)
        decoder = Decoder(decoder_network, likelihood, latent_dim + (top.latent_dim if top else 0))
    else:
        encoder = ConditionalEncoder(encoder_network, posterior, data_shape, labels.num_classes)
        decoder = ConditionalDecoder(decoder_network, likelihood, latent_dim, labels.num_classes)
    if top is None:
        prior_module = make_prior(prior, latent_dim, encoder, data_shape, prior_components)
    else:
        prior_module = TwoLayerPrior((latent_dim, top.latent_dim), top.hidden, top.activation)
        if isinstance(posterior, LadderPosteriorHead):
            posterior.attach(prior_module)
    parts: list[nn.Module] = [encoder, decoder, prior_module]
    if labels is not None and labels.classifier is not None:
        parts.append(labels.classifier)
    for part in parts:
        initialise(part, init)
    if labels is None:
        return VAE(encoder, decoder, prior_module)
    if labels.classifier is None:
        return ConditionalVAE(encoder, decoder, prior_module, labels.num_classes)
    return SemiSupervisedVAE(encoder, decoder, prior_module, labels.classifier, labels.num_classes)


@dataclass
class Labels:
    """How a model takes class labels: ``num_classes``, and for the semi-supervised M2 its
    ``classifier`` network (x → logits)."""

    num_classes: int
    classifier: nn.Module | None = None


def _labels(
    num_classes: int | None,
    semi_supervised: bool,
    classifier_hidden: Sequence[int],
    data_shape: tuple[int, ...],
    activation: str,
    posterior: str,
    prior: str,
    top_latent_dim: int | None,
) -> Labels | None:
    """The checked label settings of a factory call, if any."""
    if num_classes is None:
        if semi_supervised:
            raise ConfigError("a semi-supervised model needs num_classes")
        return None
    if isinstance(num_classes, bool) or not isinstance(num_classes, Integral) or num_classes < 2:
        raise ConfigError(f"num_classes must be an integer ≥ 2, got {num_classes!r}")
    if prior == "vamp":
        raise ConfigError(
            "the VampPrior encodes pseudo-inputs, which have no labels; a conditional model "
            "takes the standard or mixture prior"
        )
    if top_latent_dim is not None:
        raise ConfigError("a conditional model has one stochastic layer (no top_latent_dim)")
    classifier = None
    if semi_supervised:
        _check(num_classes, classifier_hidden, data_shape)
        classifier = MLP(data_shape, tuple(classifier_hidden), (num_classes,), activation)
    return Labels(int(num_classes), classifier)


@dataclass(frozen=True)
class TopLayer:
    """A second stochastic layer z₂ of ``latent_dim`` units above z₁, with MLPs of ``hidden``
    layers between them both ways (Burda et al. 2015's two-layer models); ``ladder``: the
    ladder's top-down inference (Sønderby et al. 2016)."""

    latent_dim: int
    hidden: tuple[int, ...]
    activation: str
    ladder: bool = False


def _top_layer(
    top_latent_dim: int | None,
    top_hidden: Sequence[int],
    activation: str,
    posterior: str,
    prior: str,
    latent_dim: int,
    ladder: bool = False,
) -> TopLayer | None:
    """The checked second layer, if asked for: it needs the diagonal posterior (for q(z₁|x))
    and the standard prior (for z₂)."""
    if top_latent_dim is None:
        if ladder:
            raise ConfigError("the ladder's top-down inference needs a second layer")
        return None
    _check(top_latent_dim, top_hidden, (latent_dim,))
    if posterior != "diagonal":
        raise ConfigError(
            "a second stochastic layer has its own posterior, q(z₁|x) q(z₂|z₁) with diagonal "
            f"Gaussians; it does not take the {posterior} posterior"
        )
    if prior != "standard":
        raise ConfigError(
            "a second stochastic layer has its own prior, p(z₁|z₂) N(z₂; 0, I); it does not "
            f"take the {prior} prior"
        )
    return TopLayer(
        int(top_latent_dim), tuple(int(h) for h in top_hidden), activation, bool(ladder)
    )


def _posterior_of(
    top: TopLayer | None,
    posterior: str,
    latent_dim: int,
    flow_steps: int | None,
    flow_hidden: int | None,
) -> heads.Head:
    if top is None:
        return posterior_head(posterior, latent_dim, flow_steps, flow_hidden)
    head = LadderPosteriorHead if top.ladder else TwoLayerPosteriorHead
    return head((latent_dim, top.latent_dim), top.hidden, top.activation)


def _check(latent_dim: int, hidden: Sequence[int], data_shape: Sequence[int]) -> None:
    def integers(values: Any) -> bool:
        return isinstance(values, Sequence) and all(
            isinstance(v, Integral) and not isinstance(v, bool) for v in values
        )

    if not (integers([latent_dim]) and integers(hidden) and integers(data_shape)):
        raise ConfigError(
            f"latent_dim, hidden sizes and data_shape must be integers, got latent_dim "
            f"{latent_dim!r}, hidden {hidden!r}, data_shape {data_shape!r}"
        )
    if latent_dim < 1 or any(h < 1 for h in hidden) or any(s < 1 for s in data_shape):
        raise ConfigError(
            f"latent_dim, hidden sizes and data_shape must be positive, got latent_dim "
            f"{latent_dim}, hidden {tuple(hidden)}, data_shape {tuple(data_shape)}"
        )


@model_factory
def mlp(
    data_shape: Sequence[int],
    latent_dim: int = 20,
    hidden: Sequence[int] = (500,),
    activation: str = "tanh",
    likelihood: str = "bernoulli",
    likelihood_std: float = 0.1,
    squash_mean: bool = False,
    init: str = "default",
    posterior: str = "diagonal",
    prior: str = "standard",
    prior_components: int | None = None,
    flow_steps: int | None = None,
    flow_hidden: int | None = None,
    likelihood_components: int | None = None,
    top_latent_dim: int | None = None,
    top_hidden: Sequence[int] = DEFAULT_TOP_HIDDEN,
    ladder: bool = False,
    num_classes: int | None = None,
    semi_supervised: bool = False,
    classifier_hidden: Sequence[int] = (500,),
) -> VAE:
    """The paper's model: encoder and decoder MLPs with ``hidden`` layers (the decoder's in
    reverse order) and ``activation`` between them.

    ``likelihood``: ``"bernoulli"``, ``"gaussian"`` (σ = ``likelihood_std``) or
    ``"gaussian-learned"`` (``squash_mean``: sigmoid on the mean), or for 8-bit data
    ``"logistic-mixture"`` (``likelihood_components`` per value) or ``"categorical"``
    (256-way); ``posterior``:
    ``"diagonal"`` or ``"full"`` covariance, or ``"iaf"`` / ``"planar"`` flows with
    ``flow_steps`` steps (``flow_hidden``: units of each IAF MADE layer); ``init="paper"``
    draws every weight from N(0, 0.01²); ``prior``: ``"standard"``, ``"mixture"`` or ``"vamp"`` with
    ``prior_components`` components (10 and 500 when not given); ``top_latent_dim``: a
    second stochastic layer z₂ above z = z₁ (``latent_dim`` units), with ``top_hidden`` MLP
    layers between them both ways (:mod:`aevb.hierarchy`), inferred top-down as the ladder VAE
    with ``ladder``. ``num_classes``: a conditional VAE
    (:mod:`aevb.conditional`) whose encoder and decoder also take a one-hot label;
    ``semi_supervised``: M2, with a classifier q(y|x) of ``classifier_hidden`` layers.
    """
    data_shape, hidden = tuple(data_shape), tuple(hidden)
    _check(latent_dim, hidden, data_shape)
    top = _top_layer(top_latent_dim, top_hidden, activation, posterior, prior, latent_dim, ladder)
    labels = _labels(
        num_classes,
        semi_supervised,
        classifier_hidden,
        data_shape,
        activation,
        posterior,
        prior,
        top_latent_dim,
    )
    condition = labels.num_classes if labels else 0
    q_head = _posterior_of(top, posterior, latent_dim, flow_steps, flow_hidden)
    p_head = likelihood_head(
        likelihood, data_shape, likelihood_std, squash_mean, likelihood_components
    )
    data_dim = math.prod(data_shape)
    return _assemble(
        MLP(
            (data_dim + condition,) if labels else data_shape,
            hidden,
            q_head.parameter_shape,
            activation,
        ),
        MLP((latent_dim + condition,), tuple(reversed(hidden)), p_head.parameter_shape, activation),
        q_head,
        p_head,
        data_shape,
        latent_dim,
        init,
        prior,
        prior_components,
        top,
        labels,
    )


@model_factory
def conv(
    data_shape: Sequence[int],
    latent_dim: int = 20,
    channels: Sequence[int] = (32, 64),
    hidden: Sequence[int] = (500,),
    activation: str = "relu",
    likelihood: str = "bernoulli",
    likelihood_std: float = 0.1,
    squash_mean: bool = False,
    init: str = "default",
    posterior: str = "diagonal",
    prior: str = "standard",
    prior_components: int | None = None,
    flow_steps: int | None = None,
    flow_hidden: int | None = None,
    likelihood_components: int | None = None,
    top_latent_dim: int | None = None,
    top_hidden: Sequence[int] = DEFAULT_TOP_HIDDEN,
    ladder: bool = False,
) -> VAE:
    """A small DCGAN-style pair for (C, H, W) images: 4×4 stride-2 convolutions with
    ``channels`` feature maps and fully connected ``hidden`` layers in the encoder, the mirror
    image (transposed convolutions) in the decoder. H and W must be multiples of
    2^len(channels) (28×28 grey and 32×32 colour images are, with the default two).

    The other arguments are those of :func:`mlp`.
    """
    data_shape, hidden, channels = tuple(data_shape), tuple(hidden), tuple(channels)
    _check(latent_dim, (*hidden, *channels), data_shape)
    if not channels:
        raise ConfigError("the conv net needs at least one convolution (channels)")
    top = _top_layer(top_latent_dim, top_hidden, activation, posterior, prior, latent_dim, ladder)
    q_head = _posterior_of(top, posterior, latent_dim, flow_steps, flow_hidden)
    p_head = likelihood_head(
        likelihood, data_shape, likelihood_std, squash_mean, likelihood_components
    )
    (out_features,) = q_head.parameter_shape
    try:
        encoder_network = ConvEncoderNetwork(data_shape, channels, hidden, out_features, activation)
        decoder_network = ConvDecoderNetwork(
            latent_dim, channels, tuple(reversed(hidden)), p_head.parameter_shape, activation
        )
    except ValueError as error:
        raise ConfigError(str(error)) from error
    return _assemble(
        encoder_network,
        decoder_network,
        q_head,
        p_head,
        data_shape,
        latent_dim,
        init,
        prior,
        prior_components,
        top,
    )
