"""The teacher-supervised reference baseline (`method: vsd`): VSD / Diff-Instruct / DMD-style distillation.

Two score estimates replace DiffRatio's one ratio net: the frozen teacher for the data, and an online fake
score net (initialised from the teacher, trained by denoising score matching on generated samples) for
the generator. Their difference is the score difference grad log q_s - grad log p_s, so the surrogate

    L_G = E[ w(s) <stopgrad((D_fake(x_s) - D_teacher(x_s)) / s^2), x_s> ],   x_s = G(z) + s eps

has DiffRatio's reverse-KL (dikl) gradient with both scores estimated; with w = s^2 it is the DMD form.
"""

from __future__ import annotations

import torch

from pipeline.config import TrainParams
from pipeline.datasets.training_data import TrainingData
from pipeline.networks.generator import OneStepGenerator
from pipeline.networks.preconditioning import Denoiser, denoising_loss
from pipeline.noise_levels import sample_noise_levels
from pipeline.randomness import Draws
from pipeline.runtime import Runtime
from pipeline.training.one_step import OneStepTraining
from pipeline.training.weighting import noise_weight


def score_difference_loss(fake: Denoiser, teacher: Denoiser, x_gen: torch.Tensor, sigma: torch.Tensor,
                          labels: torch.Tensor | None, weighting: str, noise: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The surrogate L_G (mean of the per-sample `terms`) and, per sample, the weighted x-space update
    w (D_fake - D_teacher) / s^2 it pushes x_s along. `noise` defaults to fresh N(0, I)."""
    s = sigma.view(-1, *([1] * (x_gen.dim() - 1)))
    x_s = x_gen + s * (torch.randn_like(x_gen) if noise is None else noise)
    with torch.no_grad():
        update = (fake(x_s, sigma, labels) - teacher(x_s, sigma, labels)) / s**2
    update = noise_weight(sigma, weighting, update).view_as(s) * update
    terms = (update * x_s).flatten(1).sum(1)
    return terms.mean(), {"terms": terms, "update": update}


class VSDTraining(OneStepTraining):
    auxiliary = "fake_score"

    def __init__(self, generator: OneStepGenerator, fake: Denoiser, teacher: Denoiser, data: TrainingData,
                 p: TrainParams, conditional: bool, runtime: Runtime):
        super().__init__(generator, fake, data, p, conditional, runtime)
        self.teacher = teacher.eval().requires_grad_(False)

    def trained_with(self) -> dict:
        return {"divergence": "dikl", "ratio_r1": 0.0, "ratio_augment_p": 0.0}  # the reverse-KL gradient; no ratio net

    def auxiliary_loss(self, draws: Draws) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        _, labels = self.batch(draws)
        x_fake = self.auxiliary_samples(labels, draws)
        sigma = sample_noise_levels(draws, self.p.auxiliary_noise)
        loss = denoising_loss(self.run["fake_score"], x_fake, labels, sigma, draws.randn(*x_fake.shape[1:]),
                              self.teacher.sigma_data).mean()
        return loss, {"fake_score_loss": loss}

    def generator_loss(self, x_gen, sigma, labels, draws):
        loss, out = score_difference_loss(self.networks["fake_score"], self.teacher, x_gen, sigma, labels,
                                          self.p.weighting, noise=draws.randn(*x_gen.shape[1:]))
        return loss, {"update_norm": out["update"].flatten(1).norm(dim=1).mean()}

    def diagnose_level(self, sigma, real, labels, draws):
        """The fake score net's denoising loss on generated samples, and the norm of the per-sample x-space
        update w (D_fake - D_teacher) / s^2."""
        fake = self.networks["fake_score"]
        with torch.no_grad():
            x_fake = self.generate(labels, draws)
            loss = denoising_loss(fake, x_fake, labels, sigma, draws.randn(*x_fake.shape[1:]), fake.sigma_data)
        _, out = score_difference_loss(fake, self.teacher, x_fake, sigma, labels, self.p.weighting,
                                       noise=draws.randn(*x_fake.shape[1:]))
        return {"fake_score_loss": loss, "update_norm": out["update"].flatten(1).norm(dim=1)}

    def summarise_level(self, values):
        return {key: value.float().mean().item() for key, value in values.items()}
