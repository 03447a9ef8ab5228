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
from pipeline.datasets.training_data import TrainingData
from pipeline.networks.generator import OneStepGenerator
from pipeline.noise_levels import sample_noise_levels
from pipeline.randomness import Draws
from pipeline.runtime import Runtime
from pipeline.training.task import TrainingTask, adam


class OneStepTraining(TrainingTask, ABC):
    auxiliary: str  # the name of the auxiliary network in `networks`, checkpoints and artifacts

    def __init__(self, generator: OneStepGenerator, auxiliary: nn.Module, data: TrainingData, p: TrainParams,
                 conditional: bool, runtime: Runtime):
        self.data, self.p, self.conditional = data, p, conditional
        networks = {"generator": generator.train(), self.auxiliary: auxiliary.train()}
        ema = {"generator": copy.deepcopy(generator).eval().requires_grad_(False)}
        optimizers = {
            "generator": adam(generator.parameters(), p.generator_lr, p.generator_betas, runtime.device),
            self.auxiliary: adam(auxiliary.parameters(), p.ratio_lr, p.ratio_betas, runtime.device,
                                 p.ratio_weight_decay),
        }
        super().__init__(networks, ema, optimizers, p, runtime)

    def batch(self, draws: Draws) -> tuple[torch.Tensor, torch.Tensor | None]:
        x, labels = self.data.batch(draws)
        return x, labels if self.conditional else None

    def generate(self, labels: torch.Tensor | None, draws: Draws, generator: nn.Module | None = None) -> torch.Tensor:
        """G(z, labels) for fresh z, through `generator` (default: the weights, e.g. without gradients)."""
        z = draws.randn(*self.data.sample_shape)
        return (self.networks["generator"] if generator is None else generator)(z, labels)

    @abstractmethod
    def auxiliary_loss(self, draws: Draws) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The auxiliary network's loss on the rows of `draws` (fresh generated, and for DiffRatio real,
        samples), and scalars to log."""

    @abstractmethod
    def generator_loss(self, x_gen: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None, draws: Draws
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The surrogate whose gradient is the method's generator gradient (the auxiliary net is frozen),
        and scalars to log."""

    @abstractmethod
    def diagnose_level(self, sigma: torch.Tensor, draws: Draws) -> dict[str, torch.Tensor]:
        """Per-sample diagnostics at one noise level (every entry of `sigma` equal) on the rows of `draws`."""

    def diagnose(self) -> list[dict]:
        """The means of diagnose_level at log-spaced noise levels over the auxiliary net's training range, over
        train.diagnostic_samples fresh samples, run in chunks of a training pass's rows (the memory of one pass).
        Every random number is drawn for all samples at once and every mean taken over all of them, so the
        chunks change nothing but the batch size the networks see. Dropout is off (eval mode)."""
        p, n = self.p, self.p.diagnostic_samples
        chunk = self.passes[0].stop - self.passes[0].start
        self.networks[self.auxiliary].requires_grad_(False)
        modes = {name: net.training for name, net in self.networks.items()}
        for net in self.networks.values():
            net.eval()
        rows = []
        for level in np.geomspace(p.ratio_noise.sigma_min, p.ratio_noise.sigma_max, p.diagnostic_levels):
            draws, values = Draws(n, self.data.device), {}
            for start in range(0, n, chunk):
                draws.select(slice(start, start + chunk))
                sigma = torch.full((draws.n,), float(level), device=self.data.device)
                for key, value in self.diagnose_level(sigma, draws).items():
                    values.setdefault(key, []).append(value.detach())
            rows.append({"sigma": float(level), **{key: torch.cat(v).mean().item() for key, v in values.items()}})
        for name, net in self.networks.items():
            net.train(modes[name])
        return rows

    def generator_step_loss(self, draws: Draws) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        _, labels = self.batch(draws)  # class labels follow the data's label distribution
        sigma = sample_noise_levels(draws, self.p.generator_noise)
        return self.generator_loss(self.generate(labels, draws, self.run["generator"]), sigma, labels, draws)

    def step(self) -> dict[str, torch.Tensor]:
        auxiliary = self.networks[self.auxiliary]
        auxiliary.requires_grad_(True)
        skipped = 0
        for _ in range(self.p.ratio_steps):
            logs, _ = self.update(self.auxiliary, self.auxiliary_loss)
            skipped += logs.pop("skipped")
        auxiliary.requires_grad_(False)
        generator_logs, norm = self.update("generator", self.generator_step_loss)
        skipped += generator_logs.pop("skipped")
        return {**logs, **generator_logs, "grad_norm": norm, "skipped": skipped}
