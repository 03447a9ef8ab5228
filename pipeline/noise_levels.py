"""Noise-level distributions for the DiffRatio losses (see NoiseParams)."""

from __future__ import annotations

import torch

from pipeline.config import NoiseParams


def sample_noise_levels(n: int, p: NoiseParams, device: torch.device) -> torch.Tensor:
    if p.distribution == "lognormal":
        sigma = (torch.randn(n, device=device) * p.p_std + p.p_mean).exp()
        return sigma.clamp(p.sigma_min, p.sigma_max)
    u = torch.rand(n, device=device)
    lo, hi = p.sigma_min ** (1 / p.rho), p.sigma_max ** (1 / p.rho)
    return (lo + u * (hi - lo)) ** p.rho
