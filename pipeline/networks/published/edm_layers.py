"""Building blocks of the published EDM networks (NVlabs' EDM, Karras et al. 2022), re-implemented.

Every module here keeps the parameter and buffer names, shapes and forward numerics of the published layers,
so that a published checkpoint's `state_dict` loads into them unchanged:

- `Linear` and `GroupNorm` are `torch.nn` layers with EDM's initialisation and group count;
- `ResampleConv` is a convolution (kernel 0 = none) preceded (up) or followed (down) by a fixed FIR resampling
  filter, which it stores as the persistent buffer `resample_filter`;
- `UNetBlock` is the residual block shared by DDPM++, NCSN++ and ADM, with optional self-attention;
- `PositionalEmbedding` / `FourierEmbedding` embed the noise level c_noise.

Initialisation follows EDM's recipes (xavier / kaiming, with gains) so the nets train from scratch, but it is
not meant to reproduce the published random draws.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.networks.unet import fused_layout

__all__ = ["Init", "Linear", "GroupNorm", "ResampleConv", "UNetBlock", "PositionalEmbedding", "FourierEmbedding"]


@dataclass(frozen=True)
class Init:
    """How a layer's weight and bias are drawn: a fan-based `mode`, then scaled by `weight` / `bias` gains."""

    mode: str = "kaiming_normal"
    weight: float = 1.0
    bias: float = 0.0


def _draw(tensor: torch.Tensor, mode: str, fan_in: int, fan_out: int, gain: float) -> None:
    """Fill `tensor` in place from the fan-based distribution `mode`, scaled by `gain`."""
    with torch.no_grad():
        if gain == 0:
            tensor.zero_()
            return
        if mode == "xavier_uniform":
            bound = math.sqrt(6 / (fan_in + fan_out))
        elif mode == "kaiming_uniform":
            bound = math.sqrt(3 / fan_in)
        elif mode == "xavier_normal":
            tensor.normal_(0, gain * math.sqrt(2 / (fan_in + fan_out)))
            return
        elif mode == "kaiming_normal":
            tensor.normal_(0, gain * math.sqrt(1 / fan_in))
            return
        else:
            raise ValueError(f"unknown init mode {mode!r}")
        tensor.uniform_(-gain * bound, gain * bound)


def _init_params(weight: torch.Tensor | None, bias: torch.Tensor | None, init: Init, fan_in: int,
                 fan_out: int) -> None:
    if weight is not None:
        _draw(weight, init.mode, fan_in, fan_out, init.weight)
    if bias is not None:
        _draw(bias, init.mode, fan_in, fan_out, init.bias)


class Linear(nn.Linear):
    """`nn.Linear` (parameters `weight` (out, in), `bias` (out,)) with EDM's initialisation."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, init: Init = Init()):
        super().__init__(in_features, out_features, bias=bias)
        _init_params(self.weight, self.bias, init, in_features, out_features)


class GroupNorm(nn.GroupNorm):
    """`nn.GroupNorm` with at most 32 groups and at least `min_per_group` channels in each."""

    def __init__(self, num_channels: int, eps: float = 1e-5, max_groups: int = 32, min_per_group: int = 4):
        super().__init__(min(max_groups, num_channels // min_per_group), num_channels, eps=eps)


def _fir_kernel(taps: Sequence[float]) -> torch.Tensor:
    """The separable 2-D filter of a 1-D tap list, normalised to unit sum, shaped (1, 1, k, k)."""
    t = torch.as_tensor(taps, dtype=torch.float32)
    return (torch.outer(t, t) / t.sum().square())[None, None]


class ResampleConv(nn.Module):
    """A `kernel` x `kernel` convolution (none when `kernel` is 0) with optional 2x up- or downsampling.

    Upsampling is a depthwise transposed convolution with the FIR filter (gain 4) before the convolution;
    downsampling a depthwise strided convolution with it, before the convolution, or, when `fused`, after it
    (the convolution then runs on the padded full-resolution input). The filter is the persistent buffer
    `resample_filter`, present only when the layer resamples.
    """

    resample_filter: torch.Tensor | None

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True, up: bool = False,
                 down: bool = False, resample_filter: Sequence[float] = (1, 1), fused: bool = False,
                 init: Init = Init()):
        super().__init__()
        if up and down:
            raise ValueError("a layer resamples one way: up or down")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.up, self.down, self.fused = up, down, fused
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel, kernel)) if kernel else None
        self.bias = nn.Parameter(torch.empty(out_channels)) if kernel and bias else None
        k2 = kernel * kernel
        _init_params(self.weight, self.bias, init, in_channels * k2, out_channels * k2)
        self.register_buffer("resample_filter", _fir_kernel(resample_filter) if up or down else None)

    def _fir(self, x: torch.Tensor, up: bool, padding: int) -> torch.Tensor:
        """Depthwise 2x resampling of `x` with the FIR filter."""
        f = self.resample_filter.to(x.dtype)
        c = x.shape[1]
        if up:
            return F.conv_transpose2d(x, (f * 4).expand(c, 1, -1, -1), groups=c, stride=2, padding=padding)
        return F.conv2d(x, f.expand(c, 1, -1, -1), groups=c, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.to(x.dtype)
        w_pad = 0 if w is None else w.shape[-1] // 2
        f_pad = 0 if self.resample_filter is None else (self.resample_filter.shape[-1] - 1) // 2
        if self.fused and w is not None and self.up:
            x = self._fir(x, up=True, padding=max(f_pad - w_pad, 0))
            x = F.conv2d(x, w, padding=max(w_pad - f_pad, 0))
        elif self.fused and w is not None and self.down:
            x = F.conv2d(x, w, padding=w_pad + f_pad)
            x = self._fir(x, up=False, padding=0)
        else:
            if self.up or self.down:
                x = self._fir(x, up=self.up, padding=f_pad)
            if w is not None:
                x = F.conv2d(x, w, padding=w_pad)
        if self.bias is not None:
            x = x + self.bias.to(x.dtype).view(1, -1, 1, 1)
        return x


class UNetBlock(nn.Module):
    """Residual block: GroupNorm-SiLU-conv, embedding injection, GroupNorm-SiLU-dropout-conv, skip, attention.

    The embedding enters as a shift (`adaptive_scale=False`, DDPM++/NCSN++) or as scale and shift
    (`adaptive_scale=True`, ADM). Self-attention over the pixels follows when `num_heads` > 0: `num_heads`
    heads, or `out_channels // channels_per_head` when `num_heads` is None (zero heads = no attention layers).
    Both the residual and the attention sums are multiplied by `skip_scale`.
    """

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, *, up: bool = False,
                 down: bool = False, attention: bool = False, num_heads: int | None = None,
                 channels_per_head: int = 64, dropout: float = 0.0, skip_scale: float = 1.0, eps: float = 1e-5,
                 resample_filter: Sequence[float] = (1, 1), resample_proj: bool = False,
                 adaptive_scale: bool = True, init: Init = Init(), init_zero: Init = Init(weight=0.0),
                 init_attn: Init | None = None):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.dropout, self.skip_scale, self.adaptive_scale = dropout, skip_scale, adaptive_scale
        if not attention:
            self.num_heads = 0
        else:
            self.num_heads = num_heads if num_heads is not None else out_channels // channels_per_head
        resample = dict(up=up, down=down, resample_filter=resample_filter)

        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = ResampleConv(in_channels, out_channels, 3, init=init, **resample)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1), init=init)
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = ResampleConv(out_channels, out_channels, 3, init=init_zero)
        self.skip = None
        if in_channels != out_channels or up or down:
            # a 1x1 projection when the width changes (or when asked to), else resampling alone
            kernel = 1 if resample_proj or in_channels != out_channels else 0
            self.skip = ResampleConv(in_channels, out_channels, kernel, init=init, **resample)
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = ResampleConv(out_channels, out_channels * 3, 1, init=init_attn or init)
            self.proj = ResampleConv(out_channels, out_channels, 1, init=init_zero)

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        # channel layout of qkv: (head, channel within head, q/k/v)
        qkv = self.qkv(self.norm2(x))
        if fused_layout(x):  # CUDA: (n, heads, hw, d) with the head dim contiguous: the fused kernels take only that
            qkv = qkv.reshape(n, self.num_heads, c // self.num_heads, 3, h * w)
            q, k, v = (t.transpose(2, 3).contiguous() for t in qkv.unbind(3))
            a = F.scaled_dot_product_attention(q, k, v).transpose(2, 3)
            return self.proj(a.contiguous().view(n, c, h, w))
        q, k, v = qkv.reshape(n * self.num_heads, c // self.num_heads, 3, h * w).unbind(2)
        a = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)))  # (n * heads, hw, d)
        return self.proj(a.transpose(1, 2).contiguous().view(n, c, h, w))  # keep NCHW memory order

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv0(F.silu(self.norm0(x)))
        params = self.affine(emb)[:, :, None, None].to(h.dtype)
        if self.adaptive_scale:
            scale, shift = params.chunk(2, dim=1)
            h = F.silu(shift + self.norm1(h) * (scale + 1))
        else:
            h = F.silu(self.norm1(h + params))
        h = self.conv1(F.dropout(h, p=self.dropout, training=self.training))
        x = (h + (x if self.skip is None else self.skip(x))) * self.skip_scale
        if self.num_heads:
            x = (self._attend(x) + x) * self.skip_scale
        return x


def _sinusoids(angles: torch.Tensor, sin_first: bool) -> torch.Tensor:
    parts = (angles.sin(), angles.cos()) if sin_first else (angles.cos(), angles.sin())
    return torch.cat(parts, dim=1)


class PositionalEmbedding(nn.Module):
    """Transformer-style sinusoids of a scalar per sample: frequencies max_positions^(-i / d), i < d = C / 2
    (d - 1 in the denominator with `endpoint`). No parameters."""

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = False,
                 sin_first: bool = False):
        super().__init__()
        self.num_channels, self.max_positions = num_channels, max_positions
        self.endpoint, self.sin_first = endpoint, sin_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        exponents = torch.arange(half, dtype=torch.float32, device=x.device) / (half - int(self.endpoint))
        freqs = (1 / self.max_positions) ** exponents
        return _sinusoids(torch.outer(x, freqs.to(x.dtype)), self.sin_first)


class FourierEmbedding(nn.Module):
    """Random Fourier features of a scalar per sample, frequencies N(0, scale^2) kept in the buffer `freqs`."""

    freqs: torch.Tensor

    def __init__(self, num_channels: int, scale: float = 16, sin_first: bool = False):
        super().__init__()
        self.sin_first = sin_first
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _sinusoids(torch.outer(x, (2 * math.pi * self.freqs).to(x.dtype)), self.sin_first)
