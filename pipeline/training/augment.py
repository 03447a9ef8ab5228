"""Differentiable augmentation of the ratio net's inputs (DiffRatio only), against a ratio net that learns its
training images.

Every clean sample the ratio net sees, real or generated, in its loss and in the generator's, passes through
the same random operator T before the noise is added: an integer translation (reflect-padded, up to
`translate` of the side in each axis) with probability p and, when `xflip`, a horizontal flip with probability p.
The ratio net then estimates log q_s / p_s of T's images, and the generator's gradient flows through T (a gather
of pixels). T leaves p = q the only fixed point as long as its mixture with the identity can be undone: a
flip with p < 1/2, a translation with p well below 1 (ADA, Karras et al. 2020, measured no leak below about
0.8). It is what ADA and DiffAugment do for a GAN discriminator on little data. Sampling, the verifier and the
diagnostics see the images as they are.
"""

from __future__ import annotations

import torch

from pipeline.config import AugmentParams
from pipeline.randomness import Draws


def augment(x: torch.Tensor, settings: AugmentParams, draws: Draws) -> torch.Tensor:
    """T(x) for a batch [n, C, H, W], one draw of T per row from `draws` (so every pass of a step sees the same
    draws); x itself when settings.p is 0, drawing nothing."""
    if settings.p == 0:
        return x
    n, _, height, width = x.shape
    margin = round(settings.translate * min(height, width))
    shift = draws.rand() < settings.p
    dy = torch.where(shift, draws.randint(2 * margin + 1) - margin, 0)
    dx = torch.where(shift, draws.randint(2 * margin + 1) - margin, 0)
    rows = torch.arange(height, device=x.device) + margin + dy[:, None]  # [n, H] indices into the padded image
    cols = torch.arange(width, device=x.device)
    if settings.xflip:
        flip = draws.rand() < settings.p
        cols = torch.where(flip[:, None], width - 1 - cols, cols)
    cols = cols + margin + dx[:, None]  # [n, W]
    padded = torch.nn.functional.pad(x, (margin,) * 4, mode="reflect") if margin else x
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]
