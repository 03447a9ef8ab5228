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
from pipeline.networks.ratio_net import RatioNet, logit_scale
from pipeline.noise_levels import SIGMA_DATA, expectation, sample_noise_levels
from pipeline.randomness import Draws
from pipeline.runtime import Runtime
from pipeline.training.augment import augment
from pipeline.training.divergences import Divergence
from pipeline.training.one_step import OneStepTraining
from pipeline.training.ratio_losses import Bootstrap, generator_loss, ratio_loss


def auc(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """The probability that a positive scores above a negative (ties count half): the Mann-Whitney AUC (0-d, on
    the device: no wait for the host)."""
    diff = positive.float()[:, None] - negative.float()[None, :]
    return (diff > 0).float().mean() + 0.5 * (diff == 0).float().mean()


class DiffRatioTraining(OneStepTraining):
    auxiliary = "ratio"

    def __init__(self, generator: OneStepGenerator, ratio: RatioNet, data: TrainingData, p: TrainParams,
                 divergence: Divergence, conditional: bool, runtime: Runtime):
        self.divergence = divergence
        kind = p.ratio_net.logit_scale
        self.balanced_mean = (expectation(lambda s: 1 / logit_scale(s, SIGMA_DATA, kind), p.auxiliary_noise)
                              if p.ratio_level_weighting == "balanced" else None)
        super().__init__(generator, ratio, data, p, conditional, runtime)
        b = p.ratio_bootstrap
        self.bootstrap = (Bootstrap(self.networks["ratio"], b.lower, b.label_weight, p.auxiliary_noise.sigma_min)
                          if b.lower > 0 else None)

    def trained_with(self) -> dict:
        return {"divergence": self.divergence.name, "ratio_r1": self.p.ratio_r1,
                "ratio_augment_p": self.p.ratio_augment.p}

    def auxiliary_loss(self, draws: Draws) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x_real, labels = self.batch(draws)
        x_fake = augment(self.auxiliary_samples(labels, draws), self.p.ratio_augment, draws)
        x_real = augment(x_real, self.p.ratio_augment, draws)
        sigma = sample_noise_levels(draws, self.p.auxiliary_noise)
        scale = logit_scale(sigma, SIGMA_DATA, self.p.ratio_net.logit_scale)
        loss, logits = ratio_loss(self.run["ratio"], x_fake, x_real, labels, sigma, draws, self.p.ratio_r1, scale,
                                  self.balanced_mean, self.bootstrap, self.p.ratio_r1_subsample)
        # AUC, not accuracy at d = 0: a shift of every logit moves the two accuracies apart
        return loss, {"ratio_loss": loss, "auc": auc(logits["d_fake"], logits["d_real"]),
                      "d_real": logits["d_real"].mean(),
                      "d_fake": logits["d_fake"].mean(), **({"r1": logits["r1"]} if "r1" in logits else {})}

    def generator_loss(self, x_gen, sigma, labels, draws):
        x_gen = augment(x_gen, self.p.ratio_augment, draws)
        loss, out = generator_loss(self.networks["ratio"], x_gen, sigma, labels, self.divergence, self.p.weighting,
                                   self.p.logit_clamp, noise=draws.randn(*x_gen.shape[1:]))
        return loss, {"h_mean": out["h"].mean()}

    def diagnose_level(self, sigma, real, labels, draws):
        """The ratio net's logits on held-out real and generated samples, the weight h on generated ones and the
        norm of their per-sample x-space update w h grad_x d."""
        p, ratio = self.p, self.networks["ratio"]
        with torch.no_grad():
            x_fake = self.generate(labels, draws)
            _, logits = ratio_loss(ratio, x_fake, real, labels, sigma, draws)
        x_in = x_fake.requires_grad_(True)  # so that x_s carries a gradient to read
        _, out = generator_loss(ratio, x_in, sigma, labels, self.divergence, p.weighting, p.logit_clamp,
                                noise=draws.randn(*x_in.shape[1:]))
        (grad,) = torch.autograd.grad(out["terms"].sum(), out["x_s"])
        return {"d_real": logits["d_real"], "d_fake": logits["d_fake"], "h": out["h"],
                "update_norm": grad.flatten(1).norm(dim=1)}

    def summarise_level(self, values):
        """AUC of the logits between generated and held-out real samples (0.5: the net cannot tell them apart),
        their means and sds, the range of h (5th to 95th percentile) and the mean update."""
        d_real, d_fake, h = values["d_real"].float(), values["d_fake"].float(), values["h"].float()
        return {"auc": auc(d_fake, d_real).item(),
                "d_real": d_real.mean().item(), "d_real_sd": d_real.std().item(),
                "d_fake": d_fake.mean().item(), "d_fake_sd": d_fake.std().item(),
                "h_p05": h.quantile(0.05).item(), "h_mean": h.mean().item(), "h_p95": h.quantile(0.95).item(),
                "update_norm": values["update_norm"].mean().item()}
