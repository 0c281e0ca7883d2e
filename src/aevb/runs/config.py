"""The settings of a training run, each declared once — with its default, help and group — in
:class:`TrainConfig`. The CLI's ``aevb train`` flags are generated from these declarations
(:func:`setting_fields`), and :meth:`TrainConfig.check` refuses every impossible combination
before anything is written.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any

from aevb.builders import (
    ARCHITECTURES,
    DEFAULT_COMPONENTS,
    DEFAULT_LIKELIHOOD_COMPONENTS,
    LIKELIHOODS,
    POSTERIORS,
    ModelSpec,
    conv,
    mlp,
)
from aevb.data.datasets import DATASETS, Dataset
from aevb.data.transforms import BINARIZATIONS
from aevb.devices import check_device_name
from aevb.errors import ConfigError
from aevb.flows import FLOW_POSTERIORS, default_flow_hidden, default_flow_steps
from aevb.hierarchy import DEFAULT_TOP_HIDDEN
from aevb.hints import setting_name
from aevb.limits import MAX_COUNT, MAX_SEED
from aevb.networks import ACTIVATIONS, INITIALISATIONS
from aevb.objectives import OBJECTIVES, ScoreFunction, objective_class
from aevb.priors import PRIORS
from aevb.train.optim import OPTIMIZERS
from aevb.train.schedules import LR_SCHEDULES, SCHEDULE_OPTIONS
from aevb.train.step import PRECISIONS

__all__ = ["GROUPS", "TrainConfig", "setting_fields"]

GROUPS = {
    "data": "data",
    "model": "model (the built-in architectures)",
    "objective": "objective",
    "optimizer": "optimiser",
    "training": "training",
}
# Larger values are surely mistakes (a million epochs of even the smallest data set take days;
# 10⁵ latent samples per datapoint exhaust memory in the first step).
MAX_EPOCHS = 1_000_000
MAX_TRAINING_SAMPLES = 100_000
# Activation of each architecture when none is given.
DEFAULT_ACTIVATION = {"mlp": "tanh", "conv": "relu"}


def setting(
    default: Any,
    help: str,
    group: str,
    *,
    choices: tuple[str, ...] | None = None,
    default_text: str | None = None,
    resumable: bool = False,
    minimum: float | None = None,
    maximum: float | None = None,
) -> Any:
    """Declare one setting: its default, help text and group; ``choices`` for strings;
    ``default_text`` for a default that is decided later (``None`` values); ``resumable`` if
    it may change when a run is resumed; ``minimum`` and ``maximum`` for numbers."""
    return dataclasses.field(
        default=default,
        metadata={
            "help": help,
            "group": group,
            "choices": choices,
            "default_text": default_text,
            "resumable": resumable,
            "minimum": minimum,
            "maximum": maximum,
        },
    )


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved as JSON in the run folder.

    Settings left as ``None`` are decided when the run starts, from the data and the model, and
    recorded: the likelihood (Bernoulli for images in [0, 1], a learned-variance Gaussian for
    Frey Face and real-valued data), the binarization (dynamic for a Bernoulli likelihood on
    grey data), the standardisation (on for tables with a Gaussian likelihood), the activation
    (tanh for the MLP, relu for the conv net) and the prior's components.

    The ``model`` group describes the built-in architectures; a run with a model factory of
    its own (``aevb.train(config, run_dir, model=ModelSpec.of(...))``) leaves those at their
    defaults.
    """

    # data
    dataset: str = setting(
        "digits",
        f"one of {', '.join(DATASETS)}, a .npy/.npz/.csv/.parquet file, or a folder of "
        "PNG/JPEG images (streamed)",
        "data",
    )
    data_dir: str | None = setting(
        None,
        "folder holding the dataset files (or set AEVB_DATA_DIR); read without network access",
        "data",
        default_text="AEVB_DATA_DIR, then the cache, then a download",
    )
    val_fraction: float = setting(
        0.1, "part of the training set held out for validation", "data", minimum=0.0
    )
    binarize: str | None = setting(
        None,
        "dynamic: a fresh Bernoulli draw of the grey values each epoch; static: one fixed "
        "draw; threshold: > 0.5; none",
        "data",
        choices=BINARIZATIONS,
        default_text="dynamic for a Bernoulli likelihood on grey data, none otherwise",
    )
    standardize: bool | None = setting(
        None,
        "standardise each feature to mean 0, variance 1 on the training split (reported "
        "log-densities and outputs stay in the data's units)",
        "data",
        default_text="on for tables with a Gaussian likelihood",
    )
    stream: bool | None = setting(
        None,
        "read the training rows from disk batch by batch (an .npy or .parquet file, a folder "
        "of images), for data larger than memory",
        "data",
        default_text="for folders, and files larger than a quarter of the available memory",
    )
    workers: int | None = setting(
        None,
        "processes reading and decoding streamed batches (0: the training process)",
        "data",
        default_text="0 on the CPU; on a GPU up to 4, leaving one core free",
        minimum=0,
        resumable=True,
    )
    labels: int | None = setting(
        None,
        "semi-supervised training (M2 of Kingma et al. 2014): keep the labels of this many "
        "training rows, an equal number per class, the rest unlabelled; reports the test "
        "classification error",
        "data",
        default_text="all labels unused (unsupervised), or all used with --conditional",
        minimum=1,
    )
    # model
    conditional: bool = setting(
        False,
        "a conditional VAE (Sohn et al. 2015): encoder and decoder also take the class label; "
        "needs a labelled dataset",
        "model",
    )
    architecture: str = setting(
        "mlp",
        "mlp (the paper's) or conv (a DCGAN-style pair, for images)",
        "model",
        choices=ARCHITECTURES,
    )
    latent_dim: int = setting(20, "size of z", "model", minimum=1)
    hidden: tuple[int, ...] = setting((500,), "hidden layer sizes", "model", minimum=1)
    channels: tuple[int, ...] = setting(
        (32, 64), "feature maps of the conv net's stride-2 convolutions", "model", minimum=1
    )
    activation: str | None = setting(
        None,
        "nonlinearity between layers",
        "model",
        choices=tuple(sorted(ACTIVATIONS)),
        default_text="tanh for mlp, as in the paper; relu for conv",
    )
    init: str = setting(
        "default", "'paper' draws every weight from N(0, 0.01²)", "model", choices=INITIALISATIONS
    )
    top_latent_dim: int | None = setting(
        None,
        "a second stochastic layer z₂ of this many units above z₁ (--latent-dim), as in Burda "
        "et al.'s two-layer models",
        "model",
        default_text="none",
        minimum=1,
    )
    top_hidden: tuple[int, ...] = setting(
        DEFAULT_TOP_HIDDEN, "hidden layers between z₁ and z₂, both ways", "model", minimum=1
    )
    ladder: bool = setting(
        False,
        "infer the two layers top-down as the ladder VAE (Sønderby et al. 2016): q(z₂|x), then "
        "q(z₁|z₂, x) merging the bottom-up estimate of z₁ with p(z₁|z₂)",
        "model",
    )
    posterior: str = setting(
        "diagonal",
        "q(z|x): a diagonal or full-covariance Gaussian, or a diagonal Gaussian through "
        "inverse autoregressive (iaf) or planar flows",
        "model",
        choices=POSTERIORS,
    )
    flow_steps: int | None = setting(
        None,
        "flow steps of the iaf or planar posterior",
        "model",
        default_text="2 for iaf, 10 for planar",
        minimum=1,
    )
    flow_hidden: int | None = setting(
        None,
        "units of each hidden layer of an IAF step's MADE",
        "model",
        default_text="4 × latent dim, at least 64",
        minimum=1,
    )
    likelihood: str | None = setting(
        None,
        "p(x|z): bernoulli, gaussian (fixed σ = --likelihood-std), gaussian-learned, or for "
        "8-bit images (levels k/255, not binarized) logistic-mixture or categorical (256-way)",
        "model",
        choices=LIKELIHOODS,
        default_text="chosen from the data",
    )
    likelihood_components: int | None = setting(
        None,
        "logistic components per value of the logistic-mixture likelihood",
        "model",
        default_text=str(DEFAULT_LIKELIHOOD_COMPONENTS),
        minimum=1,
    )
    likelihood_std: float = setting(
        0.1, "σ of the fixed Gaussian likelihood (c = σ²)", "model", minimum=0.0
    )
    squash_mean: bool | None = setting(
        None,
        "sigmoid on the learned Gaussian's mean (the paper's Frey Face decoder)",
        "model",
        default_text="on for gaussian-learned on data in [0, 1]",
    )
    prior: str = setting(
        "standard",
        "p(z): standard N(0, I), a learnable mixture of Gaussians, or the VampPrior",
        "model",
        choices=PRIORS,
    )
    prior_components: int | None = setting(
        None,
        "components of the mixture prior, pseudo-inputs of the VampPrior",
        "model",
        default_text=f"{DEFAULT_COMPONENTS['mixture']} and {DEFAULT_COMPONENTS['vamp']}",
        minimum=1,
    )
    # objective
    objective: str = setting(
        "sgvb-b",
        "sgvb-a, sgvb-b, iwae (with --samples k), score-function, wake-sleep (the paper's "
        "baseline), mcem (Monte Carlo EM, its other baseline; trains the decoder only) or "
        "autoencoder (plain, no KL: not a VAE)",
        "objective",
        choices=OBJECTIVES,
    )
    samples: int = setting(
        1,
        "latent samples L (for IWAE: k) per datapoint",
        "objective",
        minimum=1,
        maximum=MAX_TRAINING_SAMPLES,
    )
    beta: float = setting(1.0, "weight of the KL term (1: the ELBO)", "objective", minimum=0.0)
    beta_start: float = setting(0.0, "KL weight at step 0 of the warm-up", "objective", minimum=0.0)
    warmup_steps: int = setting(
        0, "steps of linear KL warm-up from --beta-start (0: none)", "objective", minimum=0
    )
    free_bits: float = setting(
        0.0, "minimum KL per latent dimension in the loss, nats", "objective", minimum=0.0
    )
    alpha: float = setting(
        0.1,
        "weight α of M2's classification term per example (the paper's α / N; each labelled "
        "row's log q(y|x) then weighs α N / (labelled rows) against its bound)",
        "objective",
        minimum=0.0,
    )
    baseline: str = setting(
        "none",
        "control variate of the score-function estimator: none, or mean (leave-one-out, k ≥ 2)",
        "objective",
        choices=ScoreFunction.BASELINES,
    )
    # optimiser
    optimizer: str = setting(
        "adam", "adam, adagrad (the paper's) or sgd", "optimizer", choices=OPTIMIZERS
    )
    lr: float = setting(1e-3, "learning rate", "optimizer")
    weight_decay: float = setting(0.0, "L2 weight decay", "optimizer", minimum=0.0)
    clip_grad_norm: float | None = setting(
        None, "clip the gradient norm at this value", "optimizer", default_text="off"
    )
    lr_schedule: str = setting(
        "constant",
        "the learning rate after the warm-up: constant; cosine (down to --lr-final × --lr at "
        "the last step); step (× --lr-decay every --lr-step-epochs epochs); plateau (× "
        "--lr-decay after --lr-patience epochs without a better judged metric)",
        "optimizer",
        choices=LR_SCHEDULES,
    )
    lr_warmup_steps: int = setting(
        0, "steps of linear learning-rate warm-up from --lr / N (0: none)", "optimizer", minimum=0
    )
    lr_decay: float = setting(
        0.1, "factor of the step and plateau schedules", "optimizer", minimum=0.0, maximum=1.0
    )
    lr_step_epochs: int = setting(
        10, "epochs between the step schedule's decays", "optimizer", minimum=1
    )
    lr_patience: int = setting(
        5, "epochs without improvement before the plateau schedule decays", "optimizer", minimum=1
    )
    lr_final: float = setting(
        0.0,
        "the cosine schedule's last learning rate, as a fraction of --lr",
        "optimizer",
        minimum=0.0,
        maximum=1.0,
    )
    # training
    batch_size: int = setting(100, "minibatch size M", "training", minimum=1)
    epochs: int = setting(
        50,
        "passes over the training set",
        "training",
        resumable=True,
        minimum=0,
        maximum=MAX_EPOCHS,
    )
    patience: int | None = setting(
        None,
        "stop after this many epochs without a better validation value of the judged metric",
        "training",
        default_text="never",
        minimum=1,
    )
    checkpoint_every: int = setting(
        0, "also checkpoint every N steps (0: once per epoch)", "training", minimum=0
    )
    seed: int = setting(
        0,
        "random seed; a CPU run is repeatable bit for bit",
        "training",
        minimum=0,
        maximum=MAX_SEED,
    )
    device: str = setting("auto", "auto, cpu, cuda or cuda:N", "training", resumable=True)
    compile: bool | None = setting(
        None,
        "compile the training step (CUDA graphs on a GPU); falls back to eager with a notice",
        "training",
        default_text="on for CUDA, and on the CPU for runs of 20,000 steps or more",
        resumable=True,
    )
    precision: str = setting(
        "float32",
        "bf16: networks under bfloat16 autocast (for GPUs); densities and loss stay float32",
        "training",
        choices=PRECISIONS,
    )
    max_nonfinite_steps: int = setting(
        10,
        "stop with a diagnosis after this many steps with a NaN or infinite loss or gradient; "
        "each such step is skipped",
        "training",
        minimum=1,
    )
    tensorboard: bool | None = setting(
        None,
        "write TensorBoard curves, images and hyperparameters to RUN/tensorboard (pip install "
        "'aevb[tensorboard]')",
        "training",
        default_text="on when the tensorboard package is installed",
        resumable=True,
    )
    divergence_guard: bool = setting(
        True,
        "stop, keeping the last good checkpoint, when the training objective falls far below "
        "the untrained model's (a divergence that produces no NaN)",
        "training",
        resumable=True,
    )

    def __post_init__(self) -> None:
        for name in ("hidden", "channels", "top_hidden"):  # lists after a JSON round trip
            if isinstance(getattr(self, name), list):
                setattr(self, name, tuple(getattr(self, name)))
        if self.labels is not None and self.objective == "sgvb-b":
            self.objective = "m2"  # the default objective, with labels: M2's
        self.check()

    # ----------------------------------------------------------------------------- checks
    def check(self) -> None:
        """Refuse wrong types, values out of range and impossible combinations."""
        problems = self._type_problems()
        for more in (self._range_problems, self._combination_problems):
            if not problems:
                problems = more()
        if problems:
            raise ConfigError("invalid training settings: " + "; ".join(problems))

    def _type_problems(self) -> list[str]:
        hints = typing.get_type_hints(type(self))
        return [
            f"{f.name} must be {_type_name(hints[f.name])}, got {getattr(self, f.name)!r}"
            for f in dataclasses.fields(self)
            if not _is_instance(getattr(self, f.name), hints[f.name])
        ]

    def _range_problems(self) -> list[str]:
        problems = []
        for f in dataclasses.fields(self):
            value, meta = getattr(self, f.name), f.metadata
            values = value if isinstance(value, tuple) else (value,)
            if meta["choices"] and value is not None and value not in meta["choices"]:
                problems.append(f"{f.name} must be one of {', '.join(meta['choices'])}")
            minimum, maximum = meta["minimum"], meta["maximum"]
            if minimum is not None and any(v is not None and v < minimum for v in values):
                problems.append(f"{f.name} must be at least {minimum:g}")
            if maximum is None and any(isinstance(v, int) for v in values):
                maximum = MAX_COUNT
            if maximum is not None and any(v is not None and v > maximum for v in values):
                problems.append(f"{f.name} must be at most {maximum:,}")
            if any(isinstance(v, float) and not math.isfinite(v) for v in values):
                problems.append(f"{f.name} must be finite")
            if isinstance(value, str) and not value.strip():
                problems.append(f"{f.name} must not be empty")
        if not self.val_fraction < 1:
            problems.append("val_fraction must be in [0, 1)")
        if not self.lr > 0:
            problems.append("lr must be positive")
        if not self.likelihood_std > 0:
            problems.append("likelihood_std must be positive")
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            problems.append("clip_grad_norm must be positive")
        try:
            check_device_name(self.device)
        except ConfigError as error:
            problems.append(str(error))
        return problems

    def _combination_problems(self) -> list[str]:
        problems = []
        defaults = TrainConfig.__dataclass_fields__
        accepted = objective_class(self.objective).options
        for name in (
            "samples",
            "beta",
            "beta_start",
            "warmup_steps",
            "free_bits",
            "baseline",
            "alpha",
        ):
            if name not in accepted and getattr(self, name) != defaults[name].default:
                problems.append(
                    f"{setting_name(name)} does not apply to the {self.objective} objective"
                )
        problems += self._label_problems()
        for name, shapes in SCHEDULE_OPTIONS.items():
            if self.lr_schedule not in shapes and getattr(self, name) != defaults[name].default:
                problems.append(
                    f"{setting_name(name)} applies to {setting_name('lr_schedule')} "
                    f"{' or '.join(shapes)}, not {self.lr_schedule}"
                )
        if self.lr_decay == 0:
            problems.append(f"{setting_name('lr_decay')} must be above 0 (0 would stop training)")
        if self.free_bits and self.posterior != "diagonal":
            problems.append("free bits need a diagonal posterior, whose KL splits per dimension")
        flow = self.posterior in FLOW_POSTERIORS
        if not flow and (self.flow_steps, self.flow_hidden) != (None, None):
            problems.append(
                f"{setting_name('flow_steps')} and {setting_name('flow_hidden')} apply to "
                f"{setting_name('posterior')} iaf or planar"
            )
        if self.posterior == "planar" and self.flow_hidden is not None:
            problems.append(
                f"{setting_name('flow_hidden')} applies to {setting_name('posterior', 'iaf')} "
                "(planar flows have none)"
            )
        if flow and self.prior == "vamp":
            problems.append(
                "the VampPrior's density is a mixture of the posterior at its pseudo-inputs, "
                "which a flow gives at other points only by inverting its maps for each of "
                f"them; use {setting_name('posterior', 'diagonal')} with "
                f"{setting_name('prior', 'vamp')}"
            )
        if self.top_latent_dim is None and self.top_hidden != DEFAULT_TOP_HIDDEN:
            problems.append(
                f"{setting_name('top_hidden')} applies with {setting_name('top_latent_dim')}"
            )
        if self.top_latent_dim is None and self.ladder:
            problems.append(
                f"{setting_name('ladder')} infers two stochastic layers: give "
                f"{setting_name('top_latent_dim')}"
            )
        if self.top_latent_dim is not None:
            if self.posterior != "diagonal":
                problems.append(
                    "a second stochastic layer has its own posterior q(z₁|x) q(z₂|z₁); it "
                    f"does not take {setting_name('posterior', self.posterior)}"
                )
            if self.prior != "standard":
                problems.append(
                    "a second stochastic layer has its own prior p(z₁|z₂) N(z₂; 0, I); it does "
                    f"not take {setting_name('prior', self.prior)}"
                )
            if self.free_bits:
                problems.append(
                    "free bits need a KL that splits per dimension; two layers' does not"
                )
            if self.objective in ("wake-sleep", "mcem", "autoencoder"):
                problems.append(f"the {self.objective} objective does not take a second layer")
        if flow and self.objective == "autoencoder":
            problems.append(
                "the autoencoder's code is the posterior mean, which a flow posterior has "
                f"only as a Monte Carlo estimate; use {setting_name('posterior', 'diagonal')}"
            )
        if self.objective in ("wake-sleep", "mcem") and self.prior != "standard":
            problems.append(
                f"the {self.objective} objective has no term that trains a {self.prior} prior"
            )
        if self.free_bits and self.prior != "standard":
            problems.append(f"free bits need a factorised prior; the {self.prior} prior is not")
        if self.channels != defaults["channels"].default and self.architecture != "conv":
            problems.append(
                f"{setting_name('channels')} applies to {setting_name('architecture', 'conv')} only"
            )
        if self.prior_components is not None and self.prior == "standard":
            problems.append(
                f"{setting_name('prior_components')} applies to the mixture and vamp priors only"
            )
        if self.likelihood not in (None, "gaussian") and (
            self.likelihood_std != defaults["likelihood_std"].default
        ):
            problems.append(
                f"{setting_name('likelihood_std')} applies to "
                f"{setting_name('likelihood', 'gaussian')} only"
            )
        if self.likelihood_components is not None and self.likelihood != "logistic-mixture":
            problems.append(
                f"{setting_name('likelihood_components')} applies to "
                f"{setting_name('likelihood', 'logistic-mixture')}"
            )
        if self.squash_mean and self.likelihood not in (None, "gaussian-learned"):
            problems.append(
                f"{setting_name('squash_mean')} applies to "
                f"{setting_name('likelihood', 'gaussian-learned')} only"
            )
        return problems

    def _label_problems(self) -> list[str]:
        problems = []
        if self.objective == "m2" and self.labels is None:
            problems.append(
                f"the m2 objective is semi-supervised: give {setting_name('labels')}, the number "
                "of training labels it keeps"
            )
        if self.labels is not None and self.objective != "m2":
            problems.append(
                f"{setting_name('labels')} trains the semi-supervised M2 model; it does not "
                f"take the {self.objective} objective"
            )
        if self.labels is not None and self.conditional:
            problems.append(
                f"{setting_name('labels')} (semi-supervised M2) and "
                f"{setting_name('conditional')} (every label known) exclude each other; M2's "
                "model is conditional already"
            )
        if self.conditional or self.labels is not None:
            kind = "a conditional model" if self.conditional else "M2"
            if self.architecture != "mlp":
                problems.append(f"{kind} is built with {setting_name('architecture', 'mlp')} only")
            if self.prior == "vamp":
                problems.append(
                    f"{kind} does not take {setting_name('prior', 'vamp')} (its pseudo-inputs "
                    "have no labels)"
                )
            if self.top_latent_dim is not None:
                problems.append(
                    f"{kind} has one stochastic layer (no {setting_name('top_latent_dim')})"
                )
            if self.objective in ("wake-sleep", "mcem", "autoencoder"):
                problems.append(f"{kind} does not take the {self.objective} objective")
        return problems

    def check_custom_model(self) -> None:
        """Refuse settings of the built-in architectures for a run with its own model factory
        (its arguments describe the model)."""
        changed = [
            setting_name(f.name)
            for f in dataclasses.fields(self)
            if f.metadata["group"] == "model" and getattr(self, f.name) != f.default
        ]
        if changed:
            raise ConfigError(
                f"{', '.join(changed)} describe the built-in architectures; a run with its own "
                "model factory takes the model's settings as the factory's arguments"
            )

    # ----------------------------------------------------------------------------- resolution
    def resolved_for(self, dataset: Dataset) -> TrainConfig:
        """This config with the model settings left to the data decided (likelihood, mean
        squashing, activation, prior and likelihood components, flow sizes); refuses a conv net
        for non-images."""
        if self.architecture == "conv" and not dataset.is_image:
            raise ConfigError(
                f"{setting_name('architecture', 'conv')} needs images (C, H, W); "
                f"{dataset.name} has rows of shape {dataset.event_shape}"
            )
        likelihood = self.likelihood or dataset.suggested_likelihood
        squash_mean = self.squash_mean
        if squash_mean is None:
            squash_mean = likelihood == "gaussian-learned" and dataset.in_unit_interval
        components = self.prior_components
        if components is None and self.prior != "standard":
            components = DEFAULT_COMPONENTS[self.prior]
        likelihood_components = self.likelihood_components
        if likelihood_components is None and likelihood == "logistic-mixture":
            likelihood_components = DEFAULT_LIKELIHOOD_COMPONENTS
        flow_steps, flow_hidden = self.flow_steps, self.flow_hidden
        if self.posterior in FLOW_POSTERIORS:
            flow_steps = flow_steps or default_flow_steps(self.posterior)
            if self.posterior == "iaf":
                flow_hidden = flow_hidden or default_flow_hidden(self.latent_dim)
        return dataclasses.replace(
            self,
            likelihood=likelihood,
            likelihood_components=likelihood_components,
            squash_mean=squash_mean,
            activation=self.activation or DEFAULT_ACTIVATION[self.architecture],
            prior_components=components,
            flow_steps=flow_steps,
            flow_hidden=flow_hidden,
        )

    def model_spec(self, data_shape: tuple[int, ...], num_classes: int | None = None) -> ModelSpec:
        """The built-in factory call that this (resolved) config describes; ``num_classes``
        of the labels, for a conditional or semi-supervised model."""
        arguments: dict[str, Any] = {
            "data_shape": list(data_shape),
            "latent_dim": self.latent_dim,
            "hidden": list(self.hidden),
            "activation": self.activation or DEFAULT_ACTIVATION[self.architecture],
            "likelihood": self.likelihood or "bernoulli",
            "likelihood_std": self.likelihood_std,
            "squash_mean": bool(self.squash_mean),
            "init": self.init,
            "posterior": self.posterior,
            "prior": self.prior,
            "prior_components": self.prior_components,
        }
        if self.conditional or self.labels is not None:
            if num_classes is None:
                raise ConfigError("a conditional model needs the number of classes")
            arguments["num_classes"] = num_classes
            if self.labels is not None:
                arguments["semi_supervised"] = True
                arguments["classifier_hidden"] = list(self.hidden)
        if self.top_latent_dim is not None:
            arguments["top_latent_dim"] = self.top_latent_dim
            arguments["top_hidden"] = list(self.top_hidden)
            if self.ladder:
                arguments["ladder"] = True
        if self.likelihood == "logistic-mixture":
            arguments["likelihood_components"] = self.likelihood_components
        if self.posterior in FLOW_POSTERIORS:
            arguments["flow_steps"] = self.flow_steps
            arguments["flow_hidden"] = self.flow_hidden
        if self.architecture == "conv":
            return ModelSpec.of(conv, channels=list(self.channels), **arguments)
        return ModelSpec.of(mlp, **arguments)

    def objective_options(self) -> dict[str, Any]:
        """The settings the chosen objective accepts, by name."""
        return {name: getattr(self, name) for name in objective_class(self.objective).options}

    # ----------------------------------------------------------------------------- JSON
    def to_dict(self, include_model: bool = True) -> dict[str, Any]:
        """The settings as JSON values; ``include_model=False`` leaves out the built-in
        architectures' settings (for a run with its own model factory)."""
        return {
            f.name: list(value) if isinstance(value := getattr(self, f.name), tuple) else value
            for f in dataclasses.fields(self)
            if include_model or f.metadata["group"] != "model"
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ConfigError(f"unknown training settings: {sorted(unknown)}")
        return cls(**values)


def setting_fields() -> tuple[dataclasses.Field, ...]:
    """The declared settings, in order."""
    return dataclasses.fields(TrainConfig)


def _is_instance(value: Any, hint: Any) -> bool:
    """``isinstance`` for the annotations used here: int, float, str, bool, X | None and
    tuple[int, ...] (a bool is not an int, an int is a float)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return any(_is_instance(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if typing.get_origin(hint) is tuple:
        (item, _) = typing.get_args(hint)
        return isinstance(value, tuple) and all(_is_instance(v, item) for v in value)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    if isinstance(hint, types.UnionType):
        names = [_type_name(a) for a in typing.get_args(hint) if a is not type(None)]
        return " or ".join(names) + " or null"
    if typing.get_origin(hint) is tuple:
        return "a list of integers"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        hint, str(hint)
    )
