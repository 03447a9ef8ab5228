"""Noise levels: every distribution of noise levels the pipeline draws from, Heun's ladder, and the data scale.

Variance-exploding noising, x_s = x0 + s eps. Each distribution (config.NoiseParams) lives on [sigma_min,
sigma_max] and is sampled by its inverse CDF at u in [0, 1): truncation, never clamping (a clamp would pile the
mass outside the range onto its bounds). With `stratified`, the u of a batch are stratified (one in each of the
batch's equal strata of [0, 1), in random order), which keeps every level's share of a batch close to its
probability and so cuts the variance of a batch mean over levels.

    lognormal    ln s ~ N(p_mean, p_std^2) truncated to the range (EDM's training distribution when wide)
    loguniform   ln s uniform on [ln sigma_min, ln sigma_max]
    uniform_rho  s^(1/rho) uniform on [sigma_min^(1/rho), sigma_max^(1/rho)] (the spacing of Heun's ladder)
"""

from __future__ import annotations

import math

import torch

from pipeline.config import NoiseParams
from pipeline.randomness import Draws

SIGMA_DATA = 0.5  # the data's scale (EDM's sigma_data): pixels in [-1, 1], latents whitened to it; every published
# EDM and EDM2 teacher assumes it


def rho_ladder(t: torch.Tensor, start: float, end: float, rho: float) -> torch.Tensor:
    """(start^(1/rho) + t (end^(1/rho) - start^(1/rho)))^rho: rho-spacing from `start` (t = 0) to `end` (t = 1)."""
    return (start ** (1 / rho) + t * (end ** (1 / rho) - start ** (1 / rho))) ** rho


def heun_sigmas(nfe: int, sigma_min: float, sigma_max: float, rho: float) -> torch.Tensor:
    """EDM's sampling ladder: s_i = rho_ladder(i / (N - 1), sigma_max, sigma_min), i < N, then 0; NFE = 2N - 1."""
    n = (nfe + 1) // 2
    t = torch.arange(n, dtype=torch.float64) / max(n - 1, 1)
    return torch.cat([rho_ladder(t, sigma_max, sigma_min, rho), torch.zeros(1, dtype=torch.float64)])


def _normal_cdf(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1 + torch.erf(z / math.sqrt(2)))


def quantile(u: torch.Tensor, p: NoiseParams) -> torch.Tensor:
    """The noise level at quantile u of p's distribution on [sigma_min, sigma_max]."""
    u = u.double()
    lo, hi = math.log(p.sigma_min), math.log(p.sigma_max)
    if p.distribution == "lognormal":
        a, b = (_normal_cdf(torch.tensor((v - p.p_mean) / p.p_std, dtype=torch.float64)) for v in (lo, hi))
        z = torch.special.ndtri((a + u * (b - a)).clamp(1e-300, 1 - 1e-16))  # the clamp only guards float ends
        sigma = (p.p_mean + p.p_std * z).exp()
    elif p.distribution == "loguniform":
        sigma = (lo + u * (hi - lo)).exp()
    else:
        sigma = rho_ladder(u, p.sigma_min, p.sigma_max, p.rho)
    return sigma.clamp(p.sigma_min, p.sigma_max).float()  # rounding only: the quantiles lie inside already


def expectation(fn, p: NoiseParams, points: int = 4096) -> float:
    """E[fn(sigma)] under p's distribution, by the midpoint rule on its quantile function: a constant of the params,
    the same in every process and accumulation pass (a batch's own mean of fn is not)."""
    with torch.device("cpu"):  # a number, also where the networks are built on the meta device
        u = (torch.arange(points, dtype=torch.float64) + 0.5) / points
        return float(fn(quantile(u, p).double()).mean())


def density(sigma: torch.Tensor, p: NoiseParams) -> torch.Tensor:
    """The probability density of p's distribution at sigma (per unit of sigma), zero outside its range; for
    importance weights between two distributions of levels."""
    s = sigma.double()
    lo, hi = math.log(p.sigma_min), math.log(p.sigma_max)
    if p.distribution == "lognormal":
        mass = float(_normal_cdf(torch.tensor((hi - p.p_mean) / p.p_std)) - _normal_cdf(torch.tensor((lo - p.p_mean) / p.p_std)))
        z = (s.log() - p.p_mean) / p.p_std
        pdf = torch.exp(-0.5 * z**2) / (math.sqrt(2 * math.pi) * p.p_std * s) / mass
    elif p.distribution == "loguniform":
        pdf = 1 / (s * (hi - lo))
    else:
        a, b = p.sigma_min ** (1 / p.rho), p.sigma_max ** (1 / p.rho)
        pdf = s ** (1 / p.rho - 1) / (p.rho * (b - a))
    inside = (s >= p.sigma_min) & (s <= p.sigma_max)
    return torch.where(inside, pdf, torch.zeros_like(pdf)).float()


def sample_noise_levels(draws: Draws, p: NoiseParams) -> torch.Tensor:
    """One noise level per row of `draws`, stratified over the global batch when p.stratified."""
    return quantile(draws.stratified() if p.stratified else draws.rand(), p).to(draws.device)
