"""Stage 1: EDM score-network pretraining, as a task for the shared training loop."""

from __future__ import annotations

import copy

import torch

from pipeline.config import PretrainParams
from pipeline.datasets.training_data import TrainingData
from pipeline.networks.preconditioning import Denoiser, edm_loss
from pipeline.noise_levels import SIGMA_DATA
from pipeline.randomness import Draws
from pipeline.runtime import Runtime
from pipeline.training.task import TrainingTask, adam


class ScorePretraining(TrainingTask):
    def __init__(self, denoiser: Denoiser, data: TrainingData, p: PretrainParams, runtime: Runtime):
        self.data, self.p = data, p
        super().__init__({"score": denoiser.train()}, {"score": copy.deepcopy(denoiser).eval().requires_grad_(False)},
                         {"score": adam(denoiser.parameters(), p.lr, (0.9, 0.999), runtime.device)},
                         p, runtime)

    def loss(self, draws: Draws) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x0, labels = self.data.batch(draws)
        loss = edm_loss(self.run["score"], x0, labels if self.p.class_conditional else None,
                        self.p.noise, draws, SIGMA_DATA).mean()
        return loss, {"loss": loss}

    def step(self, images: int = 0) -> dict[str, torch.Tensor]:
        logs, _ = self.update("score", self.loss)
        return logs
