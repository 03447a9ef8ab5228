"""What DiffRatio and the teacher-supervised baseline share: a one-step generator trained against one
online auxiliary network, in the same loop, on the same budget, with the same logs.

Per iteration: (1) `ratio_steps` auxiliary-net steps on fresh generated (and, for DiffRatio, real) batches;
(2) one generator step on fresh z, s, eps through the method's surrogate loss; (3) the loop updates the
generator's EMA. A method supplies `auxiliary_step` and `generator_loss`.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod

import numpy as np
import torch
from torch import nn

from pipeline.config import TrainParams
from pipeline.generator import OneStepGenerator
from pipeline.noise_levels import sample_noise_levels
from pipeline.training_data import TrainingData


def grad_norm(module: nn.Module) -> torch.Tensor:
    return torch.sqrt(sum(p.grad.pow(2).sum() for p in module.parameters() if p.grad is not None))


class OneStepTraining(ABC):
    auxiliary: str  # the name of the auxiliary network in `networks`, checkpoints and artifacts

    def __init__(self, generator: OneStepGenerator, auxiliary: nn.Module, data: TrainingData, p: TrainParams,
                 conditional: bool):
        self.data, self.p, self.conditional = data, p, conditional
        self.networks = {"generator": generator.train(), self.auxiliary: auxiliary.train()}
        self.ema = {"generator": copy.deepcopy(generator).eval().requires_grad_(False)}
        self.optimizers = {
            "generator": torch.optim.Adam(generator.parameters(), lr=p.generator_lr, betas=p.generator_betas),
            self.auxiliary: torch.optim.Adam(auxiliary.parameters(), lr=p.ratio_lr, betas=p.ratio_betas),
        }

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        x, labels = self.data.batch(n)
        return x, labels if self.conditional else None

    def generate(self, labels: torch.Tensor | None, n: int) -> torch.Tensor:
        z = torch.randn(n, *self.data.sample_shape, device=self.data.device)
        return self.networks["generator"](z, labels)

    @abstractmethod
    def auxiliary_step(self, batch_size: int) -> dict[str, torch.Tensor]:
        """One update of the auxiliary network; returns scalars to log."""

    @abstractmethod
    def generator_loss(self, x_gen: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The surrogate whose gradient is the method's generator gradient (the auxiliary net is frozen),
        and scalars to log."""

    @abstractmethod
    def diagnose_level(self, sigma: torch.Tensor) -> dict[str, float]:
        """Diagnostics at one noise level (every entry of `sigma` equal), on fresh batches of len(sigma)."""

    def diagnose(self) -> list[dict]:
        """diagnose_level at log-spaced noise levels over the auxiliary net's training range."""
        p = self.p
        self.networks[self.auxiliary].requires_grad_(False)
        levels = np.geomspace(p.ratio_noise.sigma_min, p.ratio_noise.sigma_max, p.diagnostic_levels)
        return [{"sigma": float(level), **self.diagnose_level(torch.full((p.diagnostic_samples,), float(level),
                                                                        device=self.data.device))}
                for level in levels]

    def step(self, batch_size: int) -> dict[str, torch.Tensor]:
        generator, auxiliary = self.networks["generator"], self.networks[self.auxiliary]
        auxiliary.requires_grad_(True)
        for _ in range(self.p.ratio_steps):
            logs = self.auxiliary_step(batch_size)
        auxiliary.requires_grad_(False)
        _, labels = self.batch(batch_size)  # class labels follow the data's label distribution
        sigma = sample_noise_levels(batch_size, self.p.generator_noise, self.data.device)
        loss_g, generator_logs = self.generator_loss(self.generate(labels, batch_size), sigma, labels)
        self.optimizers["generator"].zero_grad(set_to_none=True)
        loss_g.backward()
        norm = grad_norm(generator)
        self.optimizers["generator"].step()
        return {**logs, **generator_logs, "grad_norm": norm}

    def optimizer_step(self, name: str, loss: torch.Tensor) -> None:
        self.optimizers[name].zero_grad(set_to_none=True)
        loss.backward()
        self.optimizers[name].step()
