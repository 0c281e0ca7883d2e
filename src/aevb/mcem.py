"""Monte Carlo EM with Hamiltonian Monte Carlo posterior sampling: the paper's second baseline.

Each datapoint keeps a persistent latent sample z_i. A step takes a minibatch, moves its
samples with one HMC transition on log p_θ(x_i, z) (``num_leapfrog`` = 10 leapfrog steps,
each datapoint's step size adapted toward 90% acceptance), then takes ``weight_updates`` = 5
gradient steps on θ that maximise (1/M) Σ_i log p_θ(x_i | z_i) with the samples held fixed
(the M-step of a stochastic EM). Only the decoder is trained; the encoder, if any, is
ignored. Unlike AEVB it has per-datapoint state, so it is not an online algorithm — the
reason the paper ran it only on the small training set.

It is an :class:`~aevb.objectives.Objective` with its own update, so it trains through the
same :class:`~aevb.train.Trainer` (data, checkpoints, resumption) as every other objective.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from aevb.hmc import HMC, log_joint
from aevb.models import VAE
from aevb.objectives import Objective, ObjectiveTerms

if TYPE_CHECKING:
    from aevb.train.trainer import Trainer


class MonteCarloEM(Objective):
    """Fits a model's decoder to its training set by HMC-based Monte Carlo EM.

    :meth:`prepare` allocates one chain per training row (started at prior draws); each
    :meth:`update` moves the batch's chains and takes the θ steps with the Trainer's
    optimiser. The epoch's training record gets the mean HMC ``acceptance_rate``.
    """

    name = "mcem"
    options = ()
    judged_by = "reconstruction"
    reported = ("reconstruction",)
    custom_update = True

    def __init__(
        self,
        num_leapfrog: int = 10,
        weight_updates: int = 5,
        target_accept: float = 0.9,
        initial_step_size: float = 0.05,
    ):
        super().__init__(1)
        if weight_updates < 1:
            raise ValueError(f"weight_updates must be at least 1, got {weight_updates}")
        self.sampler = HMC(num_leapfrog=num_leapfrog, target_accept=target_accept)
        self.weight_updates = weight_updates
        self.initial_step_size = initial_step_size
        self.z: Tensor | None = None  # (N, latent_dim): the persistent chains
        self.step_size: Tensor | None = None
        self._accept_sum: Tensor | None = None
        self._accept_count = 0

    def prepare(self, model: VAE, x: Tensor, num_examples: int | None = None) -> None:
        super().prepare(model, x, num_examples)
        if num_examples is not None and (self.z is None or len(self.z) != num_examples):
            with torch.no_grad():
                self.z = model.prior().sample((num_examples,))
            self.step_size = torch.full_like(self.z[:, 0], self.initial_step_size)
            self._accept_sum = torch.zeros((), device=self.z.device)

    def trainable_parameters(self, model: VAE) -> Iterable[nn.Parameter]:
        return model.decoder.parameters()

    def __call__(self, model: VAE, x: Tensor, beta: float | Tensor = 1.0) -> ObjectiveTerms:
        raise TypeError("Monte Carlo EM has no loss of its own; it trains by update()")

    def update(self, trainer: Trainer, x: Tensor, index: Tensor) -> Tensor:
        """One HMC transition for the rows ``index``, then the θ updates. Returns the batch's
        summed (0, log p_θ(x|z) before the last update, 0, rows), detached."""
        if self.z is None or self.step_size is None or self._accept_sum is None:
            raise RuntimeError("MonteCarloEM.prepare was not given the number of rows")
        model, optimizer = trainer.model, trainer.optimizer
        prior = model.prior()
        density = log_joint(model, x, prior)
        state = self.sampler.start(density, self.z[index])
        step_size = self.step_size[index]
        state, accept_prob, _ = self.sampler.transition(density, state, step_size)
        self.z[index] = state.z
        self.step_size[index] = step_size
        self._accept_sum += accept_prob.sum()
        self._accept_count += len(index)
        z = state.z
        for _ in range(self.weight_updates):
            optimizer.zero_grad(set_to_none=True)
            log_likelihood = model.likelihood(z).log_prob(x).mean()
            (-log_likelihood).backward()
            optimizer.step()
        zero = torch.zeros((), device=x.device)
        rows = torch.full((), float(len(x)), device=x.device)
        return torch.stack((zero, log_likelihood.detach() * len(x), zero, rows))

    def epoch_metrics(self) -> dict[str, float]:
        """The mean HMC acceptance probability since the last call."""
        if self._accept_sum is None or not self._accept_count:
            return {}
        rate = float(self._accept_sum) / self._accept_count
        self._accept_sum.zero_()
        self._accept_count = 0
        return {"acceptance_rate": rate}

    def state_tensors(self) -> dict[str, Tensor]:
        if self.z is None or self.step_size is None or self._accept_sum is None:
            return {}
        count = torch.tensor(float(self._accept_count), device=self.z.device)
        return {
            "z": self.z,
            "step_size": self.step_size,
            "accept_sum": self._accept_sum,
            "accept_count": count,
        }

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        if self.z is not None and self.step_size is not None and self._accept_sum is not None:
            self.z.copy_(tensors["z"])
            self.step_size.copy_(tensors["step_size"])
            self._accept_sum.copy_(tensors["accept_sum"])
            self._accept_count = int(tensors["accept_count"].item())

    def metrics(self, model: VAE, x: Tensor) -> dict[str, float]:
        """None: the model has no trained encoder to score held-out data with. Estimate its
        log-likelihood with an HMC-fitted proposal (:func:`aevb.evaluation.hmc_proposal`)."""
        return {}

    def __repr__(self) -> str:
        return f"MonteCarloEM(weight_updates={self.weight_updates})"
