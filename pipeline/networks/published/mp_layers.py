"""Magnitude-preserving (MP) layers of NVlabs' EDM2 (Karras et al. 2024).

EDM2 keeps every activation at unit expected magnitude (RMS ~ 1) by construction instead of with
normalisation layers: each operation below maps unit-RMS, uncorrelated inputs to a unit-RMS output.

- `normalize`: divide by the RMS over the reduced dims (eps guards the zero vector).
- `mp_silu`: SiLU of a standard normal has RMS ~0.596; dividing by it restores unit magnitude.
- `mp_sum`: a lerp (1-t) a + t b of independent unit tensors has RMS sqrt((1-t)^2 + t^2); divide by it.
- `mp_cat`: scale two blocks of channels so the concatenation has unit RMS and block b carries weight t.
- `MPFourier`: sqrt(2) cos(2 pi (f x + phi)) with random f, phi has unit RMS.
- `MPConv`: weights normalised to unit RMS per output channel and scaled by 1/sqrt(fan_in), so a unit input
  gives a unit output; in training mode the stored weights are themselves renormalised every call
  ("forced weight normalisation"), which keeps their magnitude from growing under the optimiser.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["normalize", "resample", "mp_silu", "mp_sum", "mp_cat", "MPFourier", "MPConv"]

SILU_RMS = 0.596  # E[silu(z)^2]^(1/2) for z ~ N(0, 1)


def normalize(x: torch.Tensor, dim: int | Sequence[int] | None = None, eps: float = 1e-4) -> torch.Tensor:
    """x / (RMS(x) + eps), the RMS taken over `dim` (default: every dim but the first), in float32."""
    if dim is None:
        dim = tuple(range(1, x.ndim))
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32)
    rms = eps + norm * math.sqrt(norm.numel() / x.numel())  # ||.|| / sqrt(#elements reduced)
    return x / rms.to(x.dtype)


@functools.cache
def _filter(taps: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """outer(f, f) / sum(f)^2 on `device`, made once: a copy from host memory in every forward pass would make
    the host wait for the GPU."""
    f = torch.tensor(taps, dtype=torch.float32)
    if f.ndim != 1 or len(f) % 2:
        raise ValueError(f"resampling filter must be 1-D of even length, got {list(taps)}")
    f = f / f.sum()
    return torch.outer(f, f).to(dtype=dtype, device=device)


def _resample_kernel(taps: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """The separable 2-D filter, one copy per channel (depthwise), like `like`."""
    kernel = _filter(tuple(float(t) for t in taps), like.dtype, like.device)
    return kernel.expand(like.shape[1], 1, *kernel.shape)


def resample(x: torch.Tensor, mode: str = "keep", taps: Sequence[float] = (1, 1)) -> torch.Tensor:
    """Downsample ('down'), upsample ('up') by 2 with the given FIR filter, or return x ('keep').

    With the default [1, 1] filter these are 2x2 average pooling and nearest-neighbour upsampling; the
    upsampling kernel is scaled by 4 so that each output pixel sees the full filter mass.
    """
    if mode == "keep":
        return x
    kernel = _resample_kernel(taps, x)
    pad = (len(taps) - 1) // 2
    if mode == "down":
        return F.conv2d(x, kernel, stride=2, padding=pad, groups=x.shape[1])
    if mode == "up":
        return F.conv_transpose2d(x, kernel * 4, stride=2, padding=pad, groups=x.shape[1])
    raise ValueError(f"unknown resampling mode {mode!r}")


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU rescaled to keep a unit-variance Gaussian input at unit RMS."""
    return F.silu(x) / SILU_RMS


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float = 0.5) -> torch.Tensor:
    """(1-t) a + t b, rescaled so that independent unit-RMS inputs give a unit-RMS output."""
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t ** 2)


def mp_cat(a: torch.Tensor, b: torch.Tensor, dim: int = 1, t: float = 0.5) -> torch.Tensor:
    """Concatenate along `dim`, weighting a by (1-t) and b by t, with unit RMS over the result.

    Each block is first brought to equal per-element weight (1/sqrt of its size), then the total is rescaled
    to sqrt(Na + Nb) / sqrt((1-t)^2 + t^2), so the output magnitude does not depend on the split.
    """
    na, nb = a.shape[dim], b.shape[dim]
    total = math.sqrt((na + nb) / ((1 - t) ** 2 + t ** 2))
    return torch.cat([a * (total * (1 - t) / math.sqrt(na)), b * (total * t / math.sqrt(nb))], dim=dim)


class MPFourier(nn.Module):
    """Random Fourier features of a scalar per sample: (N,) -> (N, num_channels), unit RMS.

    `freqs` (2 pi N(0, bandwidth^2)) and `phases` (2 pi U[0, 1)) are fixed buffers saved with the weights.
    """

    def __init__(self, num_channels: int, bandwidth: float = 1.0):
        super().__init__()
        self.register_buffer("freqs", 2 * math.pi * torch.randn(num_channels) * bandwidth)
        self.register_buffer("phases", 2 * math.pi * torch.rand(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angles = torch.outer(x.float(), self.freqs.float()) + self.phases.float()
        return (angles.cos() * math.sqrt(2)).to(x.dtype)


class MPConv(nn.Module):
    """Magnitude-preserving convolution (kernel=(k, k)) or fully connected layer (kernel=()).

    The effective weight is normalize(weight) * gain / sqrt(fan_in): every output channel's weight vector has
    norm `gain`, so unit-RMS uncorrelated inputs give outputs of RMS `gain`. `gain` may be a learned scalar
    (a zero-initialised Parameter makes the layer start as the zero map).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: Sequence[int] = ()):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, *kernel))

    @torch.no_grad()
    def renormalize_(self) -> None:
        """Forced weight normalisation: project the stored weights back to unit RMS per output channel. EDM2
        does this at the start of every training-mode forward; here the training loop calls it after every
        update instead (and once before the first), which gives the same weights at every forward but leaves
        no in-place change inside a graph that a second forward of the same step would invalidate."""
        self.weight.copy_(normalize(self.weight.float()))

    def forward(self, x: torch.Tensor, gain: float | torch.Tensor = 1.0) -> torch.Tensor:
        w = normalize(self.weight.float())
        fan_in = w[0].numel()
        w = (w * (gain / math.sqrt(fan_in))).to(x.dtype)
        if w.ndim == 2:
            return x @ w.t()
        if w.ndim != 4:
            raise ValueError(f"MPConv supports kernel=() or a 2-D kernel, got weight of shape {tuple(w.shape)}")
        return F.conv2d(x, w, padding=w.shape[-1] // 2)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel={tuple(self.weight.shape[2:])}"


def renormalize_weights(net: nn.Module) -> None:
    """Forced weight normalisation of every magnitude-preserving layer of `net` (a no-op for other networks)."""
    for module in net.modules():
        if isinstance(module, MPConv):
            module.renormalize_()
