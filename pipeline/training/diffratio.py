"""Stage 2: DiffRatio training as a task for the shared loop, and its per-noise-level diagnostics.

The auxiliary network is the ratio net, trained by logistic regression between noisy generated and noisy
real samples; the generator follows h(r) grad_x d. No teacher network is evaluated. With train.ratio_augment on,
both losses see augmented clean samples (augment.py); the diagnostics see them as they are.
"""

from __future__ import annotations

import torch

from pipeline.config import TrainParams
from pipeline.datasets.training_data import TrainingData
from pipeline.networks.generator import OneStepGenerator
from pipeline.networks.ratio_net import RatioNet
from pipeline.noise_levels import sample_noise_levels
from pipeline.randomness import Draws
from pipeline.runtime import Runtime
from pipeline.training.augment import augment
from pipeline.training.divergences import Divergence
from pipeline.training.one_step import OneStepTraining
from pipeline.training.ratio_losses import generator_loss, ratio_loss


class DiffRatioTraining(OneStepTraining):
    auxiliary = "ratio"

    def __init__(self, generator: OneStepGenerator, ratio: RatioNet, data: TrainingData, p: TrainParams,
                 divergence: Divergence, conditional: bool, runtime: Runtime):
        self.divergence = divergence
        super().__init__(generator, ratio, data, p, conditional, runtime)

    def auxiliary_loss(self, draws: Draws) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x_real, labels = self.batch(draws)
        with torch.no_grad():
            x_fake = augment(self.generate(labels, draws), self.p.ratio_augment, draws)
        x_real = augment(x_real, self.p.ratio_augment, draws)
        sigma = sample_noise_levels(draws, self.p.ratio_noise)
        loss, logits = ratio_loss(self.run["ratio"], x_fake, x_real, labels, sigma, draws, self.p.ratio_r1)
        return loss, {"ratio_loss": loss, "acc_real": (logits["d_real"] < 0).float().mean(),
                      "acc_fake": (logits["d_fake"] > 0).float().mean(), "d_real": logits["d_real"].mean(),
                      "d_fake": logits["d_fake"].mean(), **({"r1": logits["r1"]} if "r1" in logits else {})}

    def generator_loss(self, x_gen, sigma, labels, draws):
        x_gen = augment(x_gen, self.p.ratio_augment, draws)
        loss, out = generator_loss(self.networks["ratio"], x_gen, sigma, labels, self.divergence, self.p.weighting,
                                   self.p.logit_clamp, noise=draws.randn(*x_gen.shape[1:]))
        return loss, {"h_mean": out["h"].mean()}

    def diagnose_level(self, sigma: torch.Tensor, draws: Draws) -> dict[str, torch.Tensor]:
        """The ratio net's accuracy and logit on real and generated samples, the weight h, and the norm of the
        per-sample x-space update w h grad_x d."""
        p, ratio = self.p, self.networks["ratio"]
        x_real, labels = self.batch(draws)
        with torch.no_grad():
            x_fake = self.generate(labels, draws)
            _, logits = ratio_loss(ratio, x_fake, x_real, labels, sigma, draws)
        x_in = x_fake.requires_grad_(True)  # so that x_s carries a gradient to read
        _, out = generator_loss(ratio, x_in, sigma, labels, self.divergence, p.weighting, p.logit_clamp,
                                noise=draws.randn(*x_in.shape[1:]))
        (grad,) = torch.autograd.grad(out["terms"].sum(), out["x_s"])
        return {"acc_real": (logits["d_real"] < 0).float(), "acc_fake": (logits["d_fake"] > 0).float(),
                "d_real": logits["d_real"], "d_fake": logits["d_fake"], "h_mean": out["h"],
                "update_norm": grad.flatten(1).norm(dim=1)}
