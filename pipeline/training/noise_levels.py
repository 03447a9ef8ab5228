"""Noise levels of the stage-2 losses: their distributions (see NoiseParams) and the weighting w(s)."""

from __future__ import annotations

import torch

from pipeline.config import NoiseParams
from pipeline.randomness import Draws


def sample_noise_levels(draws: Draws, p: NoiseParams) -> torch.Tensor:
    """One noise level per row of `draws`."""
    if p.distribution == "lognormal":
        sigma = (draws.randn() * p.p_std + p.p_mean).exp()
        return sigma.clamp(p.sigma_min, p.sigma_max)
    u = draws.rand()
    lo, hi = p.sigma_min ** (1 / p.rho), p.sigma_max ** (1 / p.rho)
    return (lo + u * (hi - lo)) ** p.rho


def noise_weight(sigma: torch.Tensor, weighting: str, update: torch.Tensor | None = None) -> torch.Tensor:
    """w(s) of a generator loss. `s2` matches the x0-space weighting of VSD/DMD; `normalized` rescales each
    sample so that its x-space update (`update`, the direction the surrogate pushes x_s) has unit mean
    magnitude, whatever its noise level."""
    if weighting == "normalized":
        return 1 / update.flatten(1).abs().mean(1).clamp_min(1e-12)
    return torch.ones_like(sigma) if weighting == "uniform" else sigma**2
