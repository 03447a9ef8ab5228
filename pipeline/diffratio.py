"""Stage 2: DiffRatio training as a task for the shared loop, and its per-noise-level diagnostics.

Per iteration: (1) `ratio_steps` ratio-net steps on fresh real and generated batches; (2) one generator
step on fresh z, s, eps; (3) the loop updates the generator's EMA. No teacher network is evaluated.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from pipeline.config import TrainParams
from pipeline.divergences import Divergence
from pipeline.generator import OneStepGenerator
from pipeline.noise_levels import sample_noise_levels
from pipeline.ratio_losses import generator_loss, ratio_loss
from pipeline.ratio_net import RatioNet
from pipeline.training_data import TrainingData


def grad_norm(module: torch.nn.Module) -> torch.Tensor:
    return torch.sqrt(sum(p.grad.pow(2).sum() for p in module.parameters() if p.grad is not None))


class DiffRatioTraining:
    def __init__(self, generator: OneStepGenerator, ratio: RatioNet, data: TrainingData, p: TrainParams,
                 divergence: Divergence, conditional: bool):
        self.data, self.p, self.divergence, self.conditional = data, p, divergence, conditional
        self.networks = {"generator": generator.train(), "ratio": ratio.train()}
        self.ema = {"generator": copy.deepcopy(generator).eval().requires_grad_(False)}
        self.optimizers = {
            "generator": torch.optim.Adam(generator.parameters(), lr=p.generator_lr, betas=p.generator_betas),
            "ratio": torch.optim.Adam(ratio.parameters(), lr=p.ratio_lr, betas=p.ratio_betas),
        }

    def _batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        x, labels = self.data.batch(n)
        return x, labels if self.conditional else None

    def _generate(self, labels: torch.Tensor | None, n: int) -> torch.Tensor:
        z = torch.randn(n, *self.data.sample_shape, device=self.data.device)
        return self.networks["generator"](z, labels)

    def step(self, batch_size: int) -> dict[str, torch.Tensor]:
        generator, ratio = self.networks["generator"], self.networks["ratio"]
        ratio.requires_grad_(True)
        for _ in range(self.p.ratio_steps):
            x_real, labels = self._batch(batch_size)
            with torch.no_grad():
                x_fake = self._generate(labels, batch_size)
            sigma = sample_noise_levels(batch_size, self.p.ratio_noise, self.data.device)
            loss_r, logits = ratio_loss(ratio, x_fake, x_real, labels, sigma)
            self.optimizers["ratio"].zero_grad(set_to_none=True)
            loss_r.backward()
            self.optimizers["ratio"].step()

        ratio.requires_grad_(False)
        _, labels = self._batch(batch_size)  # class labels follow the data's label distribution
        sigma = sample_noise_levels(batch_size, self.p.generator_noise, self.data.device)
        loss_g, out = generator_loss(ratio, self._generate(labels, batch_size), sigma, labels, self.divergence,
                                     self.p.weighting, self.p.logit_clamp)
        self.optimizers["generator"].zero_grad(set_to_none=True)
        loss_g.backward()
        norm = grad_norm(generator)
        self.optimizers["generator"].step()
        return {"ratio_loss": loss_r.detach(), "acc_real": (logits["d_real"] < 0).float().mean(),
                "acc_fake": (logits["d_fake"] > 0).float().mean(), "d_real": logits["d_real"].mean(),
                "d_fake": logits["d_fake"].mean(), "h_mean": out["h"].mean(), "grad_norm": norm}

    def diagnose(self) -> list[dict]:
        """At log-spaced noise levels over the ratio net's training range, on fresh batches: the ratio net's
        accuracy and mean logit on real and generated samples, the weights h, and the mean norm of the
        per-sample x-space update w h grad_x d."""
        p, ratio = self.p, self.networks["ratio"].requires_grad_(False)
        n = p.diagnostic_samples
        rows = []
        for level in np.geomspace(p.ratio_noise.sigma_min, p.ratio_noise.sigma_max, p.diagnostic_levels):
            sigma = torch.full((n,), float(level), device=self.data.device)
            x_real, labels = self._batch(n)
            with torch.no_grad():
                x_fake = self._generate(labels, n)
                _, logits = ratio_loss(ratio, x_fake, x_real, labels, sigma)
            x_in = x_fake.detach().requires_grad_(True)
            _, out = generator_loss(ratio, x_in, sigma, labels, self.divergence, p.weighting, p.logit_clamp)
            (grad,) = torch.autograd.grad(out["terms"].sum(), out["x_s"])
            rows.append({"sigma": float(level),
                         "acc_real": (logits["d_real"] < 0).float().mean().item(),
                         "acc_fake": (logits["d_fake"] > 0).float().mean().item(),
                         "d_real": logits["d_real"].mean().item(), "d_fake": logits["d_fake"].mean().item(),
                         "h_mean": out["h"].mean().item(), "update_norm": grad.flatten(1).norm(dim=1).mean().item()})
        return rows
