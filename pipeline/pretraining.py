"""Stage 1: EDM score-network pretraining, as a task for the shared training loop."""

from __future__ import annotations

import copy

import torch

from pipeline.config import PretrainParams
from pipeline.preconditioning import Denoiser, edm_loss
from pipeline.training_data import TrainingData


class ScorePretraining:
    def __init__(self, denoiser: Denoiser, data: TrainingData, p: PretrainParams):
        self.data, self.p = data, p
        self.networks = {"score": denoiser.train()}
        self.ema = {"score": copy.deepcopy(denoiser).eval().requires_grad_(False)}
        self.optimizers = {"score": torch.optim.Adam(denoiser.parameters(), lr=p.lr, betas=(0.9, 0.999), eps=1e-8)}

    def step(self, batch_size: int) -> dict[str, torch.Tensor]:
        x0, labels = self.data.batch(batch_size)
        loss = edm_loss(self.networks["score"], x0, labels if self.p.class_conditional else None,
                        self.p.p_mean, self.p.p_std).mean()
        opt = self.optimizers["score"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.detach()}
