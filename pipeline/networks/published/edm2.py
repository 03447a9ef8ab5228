"""NVlabs' EDM2 (Karras et al. 2024) magnitude-preserving U-Net and its EDM preconditioner.

Built parameter for parameter like the published `edm2-img512-{xs,s,m,l,xl,xxl}-*.pkl` networks: a
`Precond(**ema.kwargs)` accepts their `state_dict` with `strict=True` and computes D(x; sigma) as the official
code does with `force_fp32=True` (this module never casts to float16; mixed precision is autocast's job).

Project conventions: labels are integer class indices (N,) (one-hot (N, label_dim) floats are accepted too);
`Precond(..., decoder=False)` builds only the embedding and the encoder half (same parameter names), for
`encoder_features`, the input of a ratio head. The log-variance head (`logvar_fourier`, `logvar_linear`) is
loaded with the weights and exposed as `logvar(sigma)`; `forward` does not use it.

Layout (channels c_l = model_channels * channel_mult[l], resolution r_l = img_resolution / 2^l):
  embedding  emb = mp_silu(mp_sum(emb_noise(fourier(c_noise)), emb_label(sqrt(L) onehot), label_balance))
  encoder    `{r}x{r}_conv` on [x, 1] at level 0, `{r}x{r}_down` at later levels, `{r}x{r}_block{i}` x num_blocks
  decoder    `{r}x{r}_in0` (attention), `{r}x{r}_in1` at the lowest resolution, `{r}x{r}_up` elsewhere, then
             num_blocks + 1 blocks, each fed mp_cat(x, skip) with the encoder outputs in reverse order
  output     out_conv with the learned gain out_gain (zero at init: F starts at 0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.networks.preconditioning import per_sample
from pipeline.networks.published.mp_layers import MPConv, MPFourier, mp_cat, mp_silu, mp_sum, normalize, resample
from pipeline.networks.unet import fused_layout

__all__ = ["Block", "UNet", "Precond", "MPConv", "MPFourier", "mp_silu", "mp_sum", "mp_cat", "normalize"]


class Block(nn.Module):
    """A magnitude-preserving residual block, optionally resampling and with multi-head self-attention.

    'enc' blocks resample, project to out_channels (1x1 conv_skip) and pixel-normalise the main path before the
    residual branch; 'dec' blocks feed the raw (concatenated) input to the residual branch and project the main
    path afterwards. Residual branch: conv3x3(mp_silu(x)), modulated by 1 + emb_linear(emb) (zero at init through
    emb_gain), mp_silu, dropout, conv3x3; merged with mp_sum(., ., res_balance).
    """

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, flavor: str = "enc",
                 resample_mode: str = "keep", resample_filter: Sequence[float] = (1, 1), attention: bool = False,
                 channels_per_head: int = 64, dropout: float = 0.0, res_balance: float = 0.3,
                 attn_balance: float = 0.3, clip_act: float | None = 256):
        super().__init__()
        if flavor not in ("enc", "dec"):
            raise ValueError(f"Block flavor must be 'enc' or 'dec', got {flavor!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.flavor = flavor
        self.resample_mode = resample_mode
        self.resample_filter = list(resample_filter)
        self.num_heads = out_channels // channels_per_head if attention else 0
        self.dropout = dropout
        self.res_balance = res_balance
        self.attn_balance = attn_balance
        self.clip_act = clip_act

        self.emb_gain = nn.Parameter(torch.zeros([]))
        self.conv_res0 = MPConv(out_channels if flavor == "enc" else in_channels, out_channels, kernel=(3, 3))
        self.emb_linear = MPConv(emb_channels, out_channels, kernel=())
        self.conv_res1 = MPConv(out_channels, out_channels, kernel=(3, 3))
        self.conv_skip = MPConv(in_channels, out_channels, kernel=(1, 1)) if in_channels != out_channels else None
        self.attn_qkv = MPConv(out_channels, out_channels * 3, kernel=(1, 1)) if self.num_heads else None
        self.attn_proj = MPConv(out_channels, out_channels, kernel=(1, 1)) if self.num_heads else None

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        # Channels of qkv are laid out (head, channel, {q, k, v}); q, k, v are pixel-normalised per head, so
        # the logits q.k / sqrt(d) are cosine similarities scaled by sqrt(d).
        n, c, h, w = x.shape
        qkv = self.attn_qkv(x).reshape(n, self.num_heads, -1, 3, h * w)
        q, k, v = normalize(qkv, dim=2).unbind(3)  # each (n, heads, d, hw)
        if fused_layout(x):  # CUDA: a fused kernel, no (hw x hw) weights in memory; (n, heads, hw, d) contiguous
            out = F.scaled_dot_product_attention(*(t.transpose(2, 3).contiguous() for t in (q, k, v))).transpose(2, 3)
        else:  # the explicit product the golden outputs are pinned with on the CPU
            weights = (q.transpose(2, 3) @ (k / math.sqrt(q.shape[2]))).softmax(dim=3)  # (n, heads, query, key)
            out = v @ weights.transpose(2, 3)  # (n, heads, d, query)
        return self.attn_proj(out.reshape(n, c, h, w))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = resample(x, self.resample_mode, self.resample_filter)
        if self.flavor == "enc":
            if self.conv_skip is not None:
                x = self.conv_skip(x)
            x = normalize(x, dim=1)  # pixel norm: unit RMS over channels at every pixel

        scale = self.emb_linear(emb, gain=self.emb_gain) + 1  # (N, C), 1 at init
        y = self.conv_res0(mp_silu(x))
        y = mp_silu(y * scale[:, :, None, None].to(y.dtype))
        if self.training and self.dropout:
            y = F.dropout(y, p=self.dropout)
        y = self.conv_res1(y)

        if self.flavor == "dec" and self.conv_skip is not None:
            x = self.conv_skip(x)
        x = mp_sum(x, y, t=self.res_balance)
        if self.num_heads:
            x = mp_sum(x, self._attention(x), t=self.attn_balance)
        if self.clip_act is not None:
            x = x.clamp(-self.clip_act, self.clip_act)
        return x


class UNet(nn.Module):
    """EDM2's U-Net F(x_in; c_noise, class one-hot). `decoder=False` builds the embedding and encoder only."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int, model_channels: int = 192,
                 channel_mult: Sequence[int] = (1, 2, 3, 4), channel_mult_noise: int | None = None,
                 channel_mult_emb: int | None = None, num_blocks: int = 3, attn_resolutions: Sequence[int] = (16, 8),
                 label_balance: float = 0.5, concat_balance: float = 0.5, decoder: bool = True, **block_kwargs):
        super().__init__()
        widths = [model_channels * m for m in channel_mult]
        noise_channels = model_channels * channel_mult_noise if channel_mult_noise is not None else widths[0]
        emb_channels = model_channels * channel_mult_emb if channel_mult_emb is not None else max(widths)
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.label_balance = label_balance
        self.concat_balance = concat_balance
        self.has_decoder = decoder
        if decoder:
            self.out_gain = nn.Parameter(torch.zeros([]))

        self.emb_fourier = MPFourier(noise_channels)
        self.emb_noise = MPConv(noise_channels, emb_channels, kernel=())
        self.emb_label = MPConv(label_dim, emb_channels, kernel=()) if label_dim else None

        def block(cin: int, cout: int, flavor: str, **kwargs) -> Block:
            return Block(cin, cout, emb_channels, flavor=flavor, **kwargs, **block_kwargs)

        # Encoder: the input gets a constant ones channel (lets the first conv see the image border).
        self.enc = nn.ModuleDict()
        channels = img_channels + 1
        for level, width in enumerate(widths):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = MPConv(channels, width, kernel=(3, 3))
                channels = width
            else:
                self.enc[f"{res}x{res}_down"] = block(channels, channels, "enc", resample_mode="down")
            for i in range(num_blocks):
                self.enc[f"{res}x{res}_block{i}"] = block(channels, width, "enc", attention=res in attn_resolutions)
                channels = width
        self.encoder_channels = channels  # of the last encoder output
        if not decoder:
            return

        # Decoder: every `block{i}` consumes one encoder output (last in, first out) via mp_cat.
        self.dec = nn.ModuleDict()
        skip_channels = [layer.out_channels for layer in self.enc.values()]
        self._skip_consumers: set[str] = set()
        for level in reversed(range(len(widths))):
            res, width = img_resolution >> level, widths[level]
            if level == len(widths) - 1:
                self.dec[f"{res}x{res}_in0"] = block(channels, channels, "dec", attention=True)
                self.dec[f"{res}x{res}_in1"] = block(channels, channels, "dec")
            else:
                self.dec[f"{res}x{res}_up"] = block(channels, channels, "dec", resample_mode="up")
            for i in range(num_blocks + 1):
                name = f"{res}x{res}_block{i}"
                self.dec[name] = block(channels + skip_channels.pop(), width, "dec",
                                       attention=res in attn_resolutions)
                self._skip_consumers.add(name)
                channels = width
        self.out_conv = MPConv(channels, img_channels, kernel=(3, 3))

    def embed(self, c_noise: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        """The conditioning vector (N, emb_channels) from c_noise (N,) and one-hot labels (N or 1, label_dim)."""
        emb = self.emb_noise(self.emb_fourier(c_noise))
        if self.emb_label is not None:
            if class_labels is None:
                class_labels = emb.new_zeros(1, self.label_dim)  # no class: a zero label embedding
            # sqrt(L) * one-hot has unit RMS, like the other inputs of a magnitude-preserving layer
            label_emb = self.emb_label(class_labels * math.sqrt(class_labels.shape[1]))
            emb = mp_sum(emb, label_emb, t=self.label_balance)
        return mp_silu(emb)

    def encode(self, x: torch.Tensor, emb: torch.Tensor) -> list[torch.Tensor]:
        """Every encoder output, highest resolution first (the decoder's skip connections)."""
        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        outputs = []
        for layer in self.enc.values():
            x = layer(x, emb) if isinstance(layer, Block) else layer(x)
            outputs.append(x)
        return outputs

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, class_labels: torch.Tensor | None = None
                ) -> torch.Tensor:
        if not self.has_decoder:
            raise RuntimeError("this EDM2 U-Net was built with decoder=False: use its encoder only")
        emb = self.embed(c_noise, class_labels)
        skips = self.encode(x, emb)
        x = skips[-1]
        for name, layer in self.dec.items():
            if name in self._skip_consumers:
                x = mp_cat(x, skips.pop(), t=self.concat_balance)
            x = layer(x, emb)
        return self.out_conv(x, gain=self.out_gain)


class Precond(nn.Module):
    """EDM2's denoiser D(x; sigma, labels) = c_skip x + c_out F(c_in x; c_noise, labels), computed in float32.

    Constructed with the kwargs of the official pickle (`use_fp16` is accepted and ignored) plus `decoder`.
    """

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int, use_fp16: bool = True,
                 sigma_data: float = 0.5, logvar_channels: int = 128, decoder: bool = True, **unet_kwargs):
        super().__init__()
        del use_fp16  # precision is the caller's (autocast); the network itself always runs in float32
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.sigma_data = sigma_data
        self.unet = UNet(img_resolution=img_resolution, img_channels=img_channels, label_dim=label_dim,
                         decoder=decoder, **unet_kwargs)
        self.encoder_channels: int = self.unet.encoder_channels
        self.logvar_fourier = MPFourier(logvar_channels)
        self.logvar_linear = MPConv(logvar_channels, 1, kernel=())

    def coefficients(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """EDM's (c_skip, c_out, c_in) shaped (N, 1, 1, 1) and c_noise = ln(sigma) / 4 shaped (N,)."""
        sigma = sigma.float().reshape(-1, 1, 1, 1)
        sd = self.sigma_data
        c_skip = sd ** 2 / (sigma ** 2 + sd ** 2)
        c_out = sigma * sd / (sigma ** 2 + sd ** 2).sqrt()
        c_in = 1 / (sd ** 2 + sigma ** 2).sqrt()
        c_noise = sigma.flatten().log() / 4
        return c_skip, c_out, c_in, c_noise

    def _sigma(self, sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
        return per_sample(sigma, x)

    def _one_hot(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        if self.label_dim == 0 or labels is None:
            return None
        if labels.is_floating_point():  # already one-hot (or soft) vectors
            return labels.float().reshape(-1, self.label_dim)
        return F.one_hot(labels.long().reshape(-1), self.label_dim).float()

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, labels: torch.Tensor | None = None
                ) -> torch.Tensor:
        x = x.float()
        c_skip, c_out, c_in, c_noise = self.coefficients(self._sigma(sigma, x))
        f = self.unet(c_in * x, c_noise, self._one_hot(labels))
        return c_skip * x + c_out * f.float()

    def encoder_features(self, x: torch.Tensor, sigma: torch.Tensor | float, labels: torch.Tensor | None = None
                         ) -> torch.Tensor:
        """The last encoder output (N, encoder_channels, h, w) at the lowest resolution, for input x at sigma."""
        x = x.float()
        _, _, c_in, c_noise = self.coefficients(self._sigma(sigma, x))
        emb = self.unet.embed(c_noise, self._one_hot(labels))
        return self.unet.encode(c_in * x, emb)[-1]

    def logvar(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """The learned log-variance u(sigma) of the loss weighting, shaped (N, 1, 1, 1)."""
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=self.logvar_linear.weight.device).reshape(-1)
        return self.logvar_linear(self.logvar_fourier(sigma.log() / 4)).reshape(-1, 1, 1, 1)
