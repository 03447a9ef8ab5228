"""The weighting w(s) of the stage-2 generator losses (their noise levels: pipeline/noise_levels.py)."""

from __future__ import annotations

import torch


def noise_weight(sigma: torch.Tensor, weighting: str, update: torch.Tensor | None = None) -> torch.Tensor:
    """w(s) of a generator loss. `s2` matches the x0-space weighting of VSD/DMD; `normalized` rescales each
    sample so that its x-space update (`update`, the direction the surrogate pushes x_s) has unit mean
    magnitude, whatever its noise level."""
    if weighting == "normalized":
        return 1 / update.flatten(1).abs().mean(1).clamp_min(1e-12)
    return torch.ones_like(sigma) if weighting == "uniform" else sigma**2
