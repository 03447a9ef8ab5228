"""EDM (Karras et al. 2022): the preconditioned denoiser D, its training loss, and the score it implies.

    D(x; s, c) = c_skip(s) x + c_out(s) F(c_in(s) x; c_noise(s), c)
    c_skip = sd^2 / (s^2 + sd^2)     c_out = s sd / sqrt(s^2 + sd^2)
    c_in   = 1 / sqrt(s^2 + sd^2)    c_noise = ln(s) / 4
    loss   = E[ lambda(s) |D(x0 + s eps; s) - x0|^2 ],  ln s ~ N(P_mean, P_std^2),  lambda = (s^2 + sd^2) / (s sd)^2
             (the log-normal truncated to a wide range: pipeline/noise_levels.py)
    score  = grad log p_s(x) = (D(x; s) - x) / s^2
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.config import NoiseParams
from pipeline.noise_levels import sample_noise_levels
from pipeline.randomness import Draws


def edm_coefficients(sigma: torch.Tensor, sigma_data: float):
    """(c_skip, c_out, c_in, c_noise) for a tensor of noise levels."""
    total = sigma**2 + sigma_data**2
    return sigma_data**2 / total, sigma * sigma_data / total.sqrt(), 1 / total.sqrt(), sigma.log() / 4


def per_sample(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """sigma as a float32 tensor of one value per sample of x, on x's device. A Python number is filled on the
    device (no copy from the host, which would synchronise on CUDA at every call)."""
    if isinstance(sigma, torch.Tensor):
        return sigma.to(device=x.device, dtype=torch.float32).reshape(-1).expand(x.shape[0])
    return torch.full((x.shape[0],), float(sigma), dtype=torch.float32, device=x.device)


def loss_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


class Denoiser(nn.Module):
    """D(x; sigma, labels): wraps a backbone F with EDM's preconditioning. Works in float32."""

    def __init__(self, backbone: nn.Module, sigma_data: float):
        super().__init__()
        self.backbone = backbone
        self.sigma_data = sigma_data

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, labels: torch.Tensor | None = None) -> torch.Tensor:
        sigma = per_sample(sigma, x).view(-1, 1, 1, 1)
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, self.sigma_data)
        f = self.backbone(c_in * x, c_noise.flatten(), labels)
        return c_skip * x + c_out * f.float()


def denoising_loss(denoiser: nn.Module, x0: torch.Tensor, labels: torch.Tensor | None, sigma: torch.Tensor,
                   noise: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """Per-sample lambda(s)-weighted denoising loss at the given noise levels and N(0, I) noise (mean over
    pixels). `denoiser` may be a wrapper (DDP, compiled), so sigma_data is passed in."""
    denoised = denoiser(x0 + sigma.view(-1, 1, 1, 1) * noise, sigma, labels)
    weight = loss_weight(sigma, sigma_data).view(-1, 1, 1, 1)
    return (weight * (denoised - x0) ** 2).flatten(1).mean(1)


def edm_loss(denoiser: nn.Module, x0: torch.Tensor, labels: torch.Tensor | None, noise: NoiseParams, draws: Draws,
             sigma_data: float) -> torch.Tensor:
    """EDM's loss: the denoising loss at levels drawn from `noise` (EDM: log-normal), per sample, so callers can
    reduce or bucket it."""
    sigma = sample_noise_levels(draws, noise)
    return denoising_loss(denoiser, x0, labels, sigma, draws.randn(*x0.shape[1:]), sigma_data)


def score(denoiser: nn.Module, x: torch.Tensor, sigma: torch.Tensor | float, labels=None) -> torch.Tensor:
    sigma = per_sample(sigma, x).view(-1, 1, 1, 1)
    return (denoiser(x, sigma.flatten(), labels) - x) / sigma**2
