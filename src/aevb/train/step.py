"""The training step: the differentiable part, and its fast path (``torch.compile``, CUDA
graphs, bf16 autocast).

The differentiable part of a step (encode, sample, decode, objective, metrics) is one function,
:func:`training_loss`. The fast path runs that same function compiled:

* on the CPU, inductor fuses the element-wise work around the matrix products (5–13% off
  an epoch of the paper's MNIST model on two cores, docs/performance.md), at the price of a
  compile of 3–30 s when the run starts;
* on CUDA, the forward and backward are also captured in CUDA graphs (inductor's
  ``reduce-overhead``), which removes the per-kernel launch cost that bounds a small model's
  step on a large GPU.

Shapes are static: a run compiles one graph for its batch size and one for the epoch's shorter
tail batch. Random draws use the eager generator (inductor's ``fallback_random``), so the fast
and plain paths draw the same noise and agree up to floating-point rounding. If compiling is
not possible (no C++ compiler, an unsupported platform, an operation Dynamo cannot trace),
:class:`CompiledStep` prints one line and carries on eagerly.
"""

from __future__ import annotations

import inspect
import sys
import warnings
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from aevb.conditional import bind
from aevb.distributed import collective_failure
from aevb.hints import setting_name
from aevb.models import VAE
from aevb.objectives import Objective

PRECISIONS = ("float32", "bf16")
# On the CPU the compile costs up to half a minute and saves ~1.5 ms a step (paper model,
# batch 100, two cores), so "auto" compiles only runs long enough to repay it.
MIN_STEPS_TO_COMPILE_ON_CPU = 20_000


def should_compile(setting: bool | None, device: torch.device, total_steps: int) -> bool:
    """Resolve ``--compile``: ``True``/``False`` as given; ``None`` (auto) compiles on CUDA, and
    on the CPU when the run has at least :data:`MIN_STEPS_TO_COMPILE_ON_CPU` steps."""
    if setting is not None:
        return setting
    return device.type == "cuda" or total_steps >= MIN_STEPS_TO_COMPILE_ON_CPU


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """bf16 autocast for ``precision="bf16"``: matrix products in bfloat16, while the networks
    hand float32 parameters to the distributions, so log-densities, KL and loss stay float32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def training_loss(
    model: VAE,
    objective: Objective,
    x: Tensor,
    beta: Tensor,
    precision: str = "float32",
    labels: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The differentiable part of a training step, compiled on the fast path.

    x: (batch, *data_shape); ``beta`` the KL weight, a 0-dim tensor on x's device (a tensor,
    so that a warm-up does not recompile); ``labels`` (batch,) for a conditional model, bound
    to it here. Returns the loss to minimise (nats per example) and the batch's summed (ELBO,
    reconstruction, KL, rows), (4,), detached.
    """
    with autocast(x.device, precision):
        terms = objective(bind(model, labels), x, beta)
    values = (terms.elbo, terms.reconstruction, terms.kl, torch.ones_like(terms.elbo))
    return terms.loss, torch.stack(values).detach() * x.shape[0]


def _compile(function: Callable, device: torch.device) -> Callable:
    options: dict[str, Any] = {"fallback_random": True}
    if device.type == "cuda":
        options["triton.cudagraphs"] = True  # what mode="reduce-overhead" sets
    kwargs: dict[str, Any] = {"fullgraph": True, "dynamic": False, "options": options}
    if "isolate_recompiles" in inspect.signature(torch.compile).parameters:
        # Count this run's recompilations (batch and tail shapes) apart from other models
        # compiled in the same process, which share the function's code object.
        kwargs["isolate_recompiles"] = True
    return torch.compile(function, **kwargs)


class CompiledStep:
    """One training step's forward and backward: ``function(*args)``, whose first output is
    the scalar loss, then ``loss.backward()``; ``function`` compiled for ``device`` when
    ``enabled``.

    If compiling or running the compiled forward or backward raises (inductor compiles the
    backward at its first use), a one-line notice goes to stderr, the gradients of
    ``parameters`` are cleared, and this and later steps run ``function`` eagerly. A compile
    error in the forward happens while tracing with fake tensors, before any random draw, so
    the run stays the plain path exactly; one in the backward redraws that step's noise.
    """

    def __init__(
        self,
        function: Callable,
        device: torch.device,
        enabled: bool,
        parameters: Iterable[torch.Tensor] = (),
    ):
        self.function = function
        self.device = device
        self.parameters = list(parameters)
        self.compiled: Callable | None = None
        if enabled:
            try:
                self.compiled = _compile(function, device)
            except Exception as error:  # torch.compile unsupported on this platform
                self._fall_back(error)

    @property
    def active(self) -> bool:
        """Whether steps currently go through the compiled function."""
        return self.compiled is not None

    def __call__(self, *args: Any) -> Any:
        if self.compiled is not None:
            if self.device.type == "cuda":
                # Tells the CUDA graph trees that a new training step begins, so the previous
                # step's graph outputs (already consumed) may be overwritten.
                torch.compiler.cudagraph_mark_step_begin()
            try:
                with warnings.catch_warnings():
                    # Compiling calls some of torch's own deprecated helpers: not the user's
                    # concern, and an error where warnings are errors.
                    for category in (DeprecationWarning, FutureWarning):
                        warnings.filterwarnings("ignore", category=category, module=r"torch\.")
                    outputs = self.compiled(*args)
                    outputs[0].backward()
                return outputs
            except Exception as error:
                if collective_failure(error):  # a peer process is gone: not the compiler's fault
                    raise
                self._fall_back(error)
                for parameter in self.parameters:
                    parameter.grad = None
        outputs = self.function(*args)
        outputs[0].backward()
        return outputs

    def _fall_back(self, error: Exception) -> None:
        self.compiled = None
        error = getattr(error, "inner_exception", None) or error  # the compiler's own error
        reason = (str(error).strip().splitlines() or [""])[0][:160]
        tqdm.write(
            f"notice: training without torch.compile ({type(error).__name__}: {reason}); "
            f"pass {setting_name('compile', False)} to skip the attempt",
            file=sys.stderr,
        )
