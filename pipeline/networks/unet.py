"""The U-Net backbone F(x; c_noise, c) of the EDM denoiser (a DDPM++-style residual U-Net).

Sized by `NetworkParams`: the tiny CPU default and a CIFAR-10-class model are the same family. The encoder
half (noise/label embedding, down path, middle block) is its own module, `UNetEncoder`, so the DiffRatio
ratio network can reuse it and be initialised from a pretrained score net's encoder.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.config import NetworkParams


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels // 4), channels, eps=1e-6)  # >= 4 channels per group


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class NoiseEmbedding(nn.Module):
    """Sinusoidal features of c_noise = ln(sigma)/4, then a two-layer MLP (plus a class embedding)."""

    def __init__(self, channels: int, emb_channels: int, num_classes: int):
        super().__init__()
        self.channels = channels
        self.mlp = nn.Sequential(nn.Linear(channels, emb_channels), nn.SiLU(), nn.Linear(emb_channels, emb_channels))
        self.label = nn.Embedding(num_classes, emb_channels) if num_classes else None

    def forward(self, c_noise: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        half = self.channels // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, device=c_noise.device) / half)
        angles = c_noise.float()[:, None] * freqs[None] * 1000  # c_noise spans ~[-1.5, 1.1]: scale it up
        emb = self.mlp(torch.cat([angles.cos(), angles.sin()], dim=1))
        if self.label is not None:
            if labels is None:
                raise ValueError("this network is class-conditional: pass labels")
            emb = emb + self.label(labels)
        return F.silu(emb)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, modulated by the embedding (scale and shift), optional attention."""

    def __init__(self, cin: int, cout: int, emb_channels: int, dropout: float, attention: bool,
                 resample: str | None = None):
        super().__init__()
        self.resample = resample
        self.norm0, self.conv0 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.affine = nn.Linear(emb_channels, 2 * cout)
        self.norm1, self.dropout = _norm(cout), nn.Dropout(dropout)
        self.conv1 = _zero(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        self.attention = Attention(cout) if attention else None

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2, mode="nearest")
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv0(self._resample(F.silu(self.norm0(x))))
        scale, shift = self.affine(emb)[:, :, None, None].chunk(2, dim=1)
        h = F.silu(torch.addcmul(shift, self.norm1(h), scale + 1))
        h = self.conv1(self.dropout(h))
        x = (h + self.skip(self._resample(x))) / math.sqrt(2)
        return self.attention(x) if self.attention is not None else x


def fused_layout(x: torch.Tensor) -> bool:
    """Whether attention hands SDPA a contiguous head dim: on CUDA, where that selects the flash and
    memory-efficient kernels. On the CPU the layout stays as it was: the fused CPU kernel rounds differently
    (about 1e-7 of the output), and the default run's committed figures are kept bit for bit."""
    return x.is_cuda


class Attention(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.heads = max(1, channels // 64)
        self.norm, self.qkv = _norm(channels), nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        qkv = self.qkv(self.norm(x))
        if fused_layout(x):  # [b, heads, h*w, head dim], head dim contiguous as fused kernels need (NHWC: no copy)
            qkv = qkv.permute(0, 2, 3, 1).contiguous().view(b, hgt * wid, 3, self.heads, c // self.heads)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        else:  # transposed views of NCHW (head dim strided): the kernel the committed CPU figures were made with
            q, k, v = (t.transpose(-1, -2) for t in qkv.reshape(b, 3, self.heads, c // self.heads, hgt * wid).unbind(1))
        h = F.scaled_dot_product_attention(q, k, v)
        return (x + self.proj(h.transpose(-1, -2).reshape(b, c, hgt, wid))) / math.sqrt(2)


class UNetEncoder(nn.Module):
    """Embedding, down path and middle block. Returns the middle features, the skips and the embedding."""

    def __init__(self, net: NetworkParams, resolution: int, in_channels: int, num_classes: int):
        super().__init__()
        ch, emb_ch = net.channels, 4 * net.channels
        self.embedding = NoiseEmbedding(ch, emb_ch, num_classes)
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        self.skip_channels = [ch]
        cin, res = ch, resolution
        for level, mult in enumerate(net.channel_mult):
            if level > 0:
                self.down.append(ResBlock(cin, cin, emb_ch, net.dropout, False, resample="down"))
                res //= 2
                self.skip_channels.append(cin)
            for _ in range(net.num_blocks):
                self.down.append(ResBlock(cin, ch * mult, emb_ch, net.dropout, res in net.attn_resolutions))
                cin = ch * mult
                self.skip_channels.append(cin)
        self.mid = nn.ModuleList([ResBlock(cin, cin, emb_ch, net.dropout, True), ResBlock(cin, cin, emb_ch, net.dropout, False)])
        self.out_channels, self.out_resolution = cin, res

    def forward(self, x, c_noise, labels=None):
        emb = self.embedding(c_noise, labels)
        h = self.conv_in(x)
        skips = [h]
        for block in self.down:
            h = block(h, emb)
            skips.append(h)
        for block in self.mid:
            h = block(h, emb)
        return h, skips, emb


class UNet(nn.Module):
    """F(x; c_noise, labels): the raw backbone, without EDM's preconditioning."""

    def __init__(self, net: NetworkParams, resolution: int, channels: int, num_classes: int):
        super().__init__()
        if resolution % 2 ** (len(net.channel_mult) - 1):
            raise ValueError(f"resolution {resolution} is not divisible by 2^{len(net.channel_mult) - 1} "
                             "(one halving per extra entry of channel_mult)")
        self.encoder = UNetEncoder(net, resolution, channels, num_classes)
        ch, emb_ch = net.channels, 4 * net.channels
        skips = list(self.encoder.skip_channels)
        cin, res = self.encoder.out_channels, self.encoder.out_resolution
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(net.channel_mult))):
            for _ in range(net.num_blocks + 1):
                self.up.append(ResBlock(cin + skips.pop(), ch * mult, emb_ch, net.dropout, res in net.attn_resolutions))
                cin = ch * mult
            if level > 0:
                self.up.append(ResBlock(cin, cin, emb_ch, net.dropout, False, resample="up"))
                res *= 2
        self.norm_out = _norm(cin)
        self.conv_out = _zero(nn.Conv2d(cin, channels, 3, padding=1))

    def forward(self, x, c_noise, labels=None):
        h, skips, emb = self.encoder(x, c_noise, labels)
        for block in self.up:
            if block.resample != "up":
                h = torch.cat([h, skips.pop()], dim=1)
            h = block(h, emb)
        return self.conv_out(F.silu(self.norm_out(h)))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
