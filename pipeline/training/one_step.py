"""What DiffRatio and the teacher-supervised baseline share: a one-step generator trained against one
online auxiliary network, in the same loop, on the same budget, with the same logs.

Per iteration: (1) `auxiliary_steps` auxiliary-net steps on fresh generated (and, for DiffRatio, real) batches;
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
from pipeline.noise_levels import density, sample_noise_levels
from pipeline.randomness import Draws, seed_torch
from pipeline.runtime import Runtime
from pipeline.training.task import TrainingTask, adam


class OneStepTraining(TrainingTask, ABC):
    auxiliary: str  # the name of the auxiliary network in `networks`, checkpoints and artifacts

    @abstractmethod
    def trained_with(self) -> dict:
        """What shapes this task's generator gradient, for the reports: the divergence whose gradient it
        follows, and the ratio net's R1 weight and augmentation (0 where it has no ratio net)."""

    def __init__(self, generator: OneStepGenerator, auxiliary: nn.Module, data: TrainingData, p: TrainParams,
                 conditional: bool, runtime: Runtime):
        self.data, self.p, self.conditional = data, p, conditional
        networks = {"generator": generator.train(), self.auxiliary: auxiliary.train()}
        ema = {"generator": copy.deepcopy(generator).eval().requires_grad_(False)}
        optimizers = {
            "generator": adam(generator.parameters(), p.generator_lr, p.generator_betas, runtime.device),
            self.auxiliary: adam(auxiliary.parameters(), p.auxiliary_lr, p.auxiliary_betas, runtime.device,
                                 p.auxiliary_weight_decay),
        }
        super().__init__(networks, ema, optimizers, p, runtime)

    def batch(self, draws: Draws) -> tuple[torch.Tensor, torch.Tensor | None]:
        x, labels = self.data.batch(draws)
        return x, labels if self.conditional else None

    def generate(self, labels: torch.Tensor | None, draws: Draws, generator: nn.Module | None = None) -> torch.Tensor:
        """G(z, labels) for fresh z, through `generator` (default: the weights, e.g. without gradients)."""
        z = draws.randn(*self.data.sample_shape)
        return (self.networks["generator"] if generator is None else generator)(z, labels)

    def auxiliary_samples(self, labels: torch.Tensor | None, draws: Draws) -> torch.Tensor:
        """The generated samples the auxiliary net learns from (no gradient), per train.auxiliary_against: the raw
        generator's (online), its EMA's (ema: the generator that is sampled), or the EMA's on the even rows of the
        global batch and the raw generator's on the odd ones (mixed: the critic sees both)."""
        against = self.p.auxiliary_against
        with torch.no_grad():
            if against != "mixed":
                return self.generate(labels, draws, self.ema["generator"] if against == "ema" else None)
            z = draws.randn(*self.data.sample_shape)
            even = torch.arange(*draws.rows.indices(draws.size), device=z.device) % 2 == 0
            out = torch.empty_like(z)
            for rows, generator in ((even, self.ema["generator"]), (~even, self.networks["generator"])):
                if rows.any():
                    out[rows] = generator(z[rows], None if labels is None else labels[rows])
            return out

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
    def diagnose_level(self, sigma: torch.Tensor, real: torch.Tensor, labels: torch.Tensor | None, draws: Draws
                       ) -> dict[str, torch.Tensor]:
        """Per-sample diagnostics at one noise level (every entry of `sigma` equal) on the rows of `draws`: held-out
        real samples `real` with their `labels`, and as many generated ones with the same labels."""

    @abstractmethod
    def summarise_level(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        """One level's figures from the per-sample diagnostics of all its samples."""

    def _generator_gradient(self, n: int, sigma: float | None) -> torch.Tensor:
        """The generator's gradient (flattened) on a fresh batch of n, at one noise level, or (None) at the
        generator's training distribution; in chunks of a training pass."""
        params = [q for q in self.networks["generator"].parameters() if q.requires_grad]
        total = [torch.zeros_like(q) for q in params]
        chunk = self.passes[0].stop - self.passes[0].start
        draws = Draws(n, self.data.device)
        for start in range(0, n, chunk):
            draws.select(slice(start, start + chunk))
            _, labels = self.batch(draws)
            s = (sample_noise_levels(draws, self.p.generator_noise) if sigma is None
                 else torch.full((draws.n,), sigma, device=self.data.device))
            loss, _ = self.generator_loss(self.generate(labels, draws), s, labels, draws)
            # allow_unused: a published architecture may hold parameters the one-step generator never uses
            for acc, g in zip(total, torch.autograd.grad(loss * (draws.n / n), params, allow_unused=True)):
                if g is not None:
                    acc += g
        return torch.cat([g.flatten() for g in total])

    def gradient_agreement(self, n: int, sigma: float | None) -> float:
        """The cosine between the generator's gradients on two independent batches of n: near 1 when the update
        is signal, near 0 when it is noise."""
        a, b = self._generator_gradient(n, sigma), self._generator_gradient(n, sigma)
        return torch.nn.functional.cosine_similarity(a, b, dim=0).item()

    def diagnose(self, real: torch.Tensor, labels: torch.Tensor, images: int) -> list[dict]:
        """Per-level figures at log-spaced noise levels over the auxiliary net's training range (summarise_level,
        each level's share of the generator's update, the agreement of two batches' generator gradients), and a
        row at the generator's training distribution (sigma 0 in the table). `real`, `labels`: held-out images in
        model space, diagnostic_samples of them. Run in chunks of a training pass's rows (the memory of one pass),
        from torch's generator forked and seeded by `images` (the images seen so far), so training draws the same numbers with or without
        diagnostics. Dropout is off (eval mode)."""
        p, n = self.p, len(real)
        chunk = self.passes[0].stop - self.passes[0].start
        labels = labels if self.conditional else None
        self.networks[self.auxiliary].requires_grad_(False)
        modes = {name: net.training for name, net in self.networks.items()}
        for net in self.networks.values():
            net.eval()
        rows, levels = [], np.geomspace(p.auxiliary_noise.sigma_min, p.auxiliary_noise.sigma_max, p.diagnostic_levels)
        with torch.random.fork_rng(devices=[self.data.device] if self.data.device.type == "cuda" else []):
            seed_torch("stage2_diagnostics", self.p.seed, images)
            for level in levels:
                draws, values = Draws(n, self.data.device), {}
                for start in range(0, n, chunk):
                    rows_ = slice(start, start + chunk)
                    draws.select(rows_)
                    sigma = torch.full((draws.n,), float(level), device=self.data.device)
                    out = self.diagnose_level(sigma, real[rows_], None if labels is None else labels[rows_], draws)
                    for key, value in out.items():
                        values.setdefault(key, []).append(value.detach())
                values = {key: torch.cat(v) for key, v in values.items()}
                rows.append({"sigma": float(level), **self.summarise_level(values),
                             "gradient_agreement": self.gradient_agreement(n, float(level))})
            training = {"sigma": 0.0, "gradient_agreement": self.gradient_agreement(n, None)}
        # each level's share of the generator's expected update: the generator's density per unit of log sigma
        # times the mean per-sample update at that level, over the ladder
        mass = [density(torch.tensor(r["sigma"]), p.generator_noise).item() * r["sigma"] * r["update_norm"]
                for r in rows]
        for row, m in zip(rows, mass):
            row["update_share"] = m / sum(mass) if sum(mass) > 0 else 0.0
        for name, net in self.networks.items():
            net.train(modes[name])
        return rows + [training]

    def generator_step_loss(self, draws: Draws) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        _, labels = self.batch(draws)  # class labels follow the data's label distribution
        sigma = sample_noise_levels(draws, self.p.generator_noise)
        return self.generator_loss(self.generate(labels, draws, self.run["generator"]), sigma, labels, draws)

    def step(self, images: int = 0) -> dict[str, torch.Tensor]:
        """One iteration at `images` images into training: auxiliary_steps auxiliary-net updates, then one generator
        update, except during the warm-up (the first train.auxiliary_warmup_images), when the generator stays as
        it was initialised."""
        auxiliary = self.networks[self.auxiliary]
        auxiliary.requires_grad_(True)
        skipped = 0
        for _ in range(self.p.auxiliary_steps):
            logs, _ = self.update(self.auxiliary, self.auxiliary_loss)
            skipped += logs.pop("skipped")
        auxiliary.requires_grad_(False)
        if images < self.p.auxiliary_warmup_images:
            return {**logs, "skipped": skipped}
        generator_logs, norm = self.update("generator", self.generator_step_loss)
        skipped += generator_logs.pop("skipped")
        return {**logs, **generator_logs, "grad_norm": norm, "skipped": skipped}
