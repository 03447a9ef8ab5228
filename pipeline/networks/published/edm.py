"""The published EDM networks (NVlabs' EDM, Karras et al. 2022), re-implemented so their checkpoints load.

Backbones F(x; c_noise, class_labels, augment_labels):
- `SongUNet`: DDPM++ (positional noise embedding, standard encoder, [1,1] resampling) and NCSN++ (Fourier
  embedding, residual encoder, [1,3,3,1] resampling), with skip encoders/decoders as options;
- `DhariwalUNet`: ADM.

Preconditioners (EDM paper, Table 1) D(x; sigma) = c_skip x + c_out F(c_in x; c_noise), wrapping a backbone as
`self.model`: `VPPrecond`, `VEPrecond`, `EDMPrecond`. Each is built from the constructor kwargs stored in a
published pickle (`PersistentObject.kwargs`) plus our `decoder` flag, and its `state_dict()` names and shapes
are the published ones, so `load_state_dict(state_dict(snapshot["ema"]), strict=True)` works.

With `decoder=False` a backbone builds only its embedding and encoder (`map_*`, `enc`), under the same names:
`encoder_features` then gives the lowest-resolution encoder output, e.g. to initialise a classifier from a
teacher. Labels are integer class indices (one-hot inside); computation stays in float32 (mixed precision is the
caller's autocast).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.networks.preconditioning import per_sample
from pipeline.networks.published.edm_layers import (
    FourierEmbedding,
    GroupNorm,
    Init,
    Linear,
    PositionalEmbedding,
    ResampleConv,
    UNetBlock,
)

__all__ = ["SongUNet", "DhariwalUNet", "VPPrecond", "VEPrecond", "EDMPrecond", "BACKBONES", "PRECONDITIONERS"]


class _UNet(nn.Module):
    """What both backbones share: a role for each entry of `enc` / `dec`, and the passes over them.

    Encoder roles: 'conv' (input conv), 'block' (UNetBlock; its output is a skip), 'aux_down', 'aux_skip',
    'aux_residual' (NCSN++'s image-pyramid path). Decoder roles: 'block', 'cat_block' (takes the next skip
    first), 'aux_up', 'aux_norm', 'aux_conv' (output heads summed across resolutions).
    """

    label_dim: int
    label_dropout: float
    encoder_channels: int
    has_decoder: bool

    def _setup(self, label_dim: int, label_dropout: float) -> None:
        self.label_dim, self.label_dropout = label_dim, label_dropout
        self._enc_roles: dict[str, str] = {}
        self._dec_roles: dict[str, str] = {}

    def _enc_add(self, name: str, module: nn.Module, role: str) -> None:
        self.enc[name] = module
        self._enc_roles[name] = role

    def _dec_add(self, name: str, module: nn.Module, role: str) -> None:
        self.dec[name] = module
        self._dec_roles[name] = role

    def _enc_blocks(self, res: int, cin: int, cout: int, count: int, attention: bool, block: dict) -> int:
        """The residual blocks of one encoder level; returns their output width."""
        for idx in range(count):
            self._enc_add(f"{res}x{res}_block{idx}", UNetBlock(cin, cout, attention=attention, **block), "block")
            cin = cout
        return cout

    def _dec_start_level(self, res: int, lowest: bool, channels: int, block: dict) -> None:
        """What opens each decoder level: two bottleneck blocks (the first with attention) at the lowest
        resolution, an upsampling block at the others."""
        if lowest:
            self._dec_add(f"{res}x{res}_in0", UNetBlock(channels, channels, attention=True, **block), "block")
            self._dec_add(f"{res}x{res}_in1", UNetBlock(channels, channels, **block), "block")
        else:
            self._dec_add(f"{res}x{res}_up", UNetBlock(channels, channels, up=True, **block), "block")

    def _drop_labels(self, class_labels: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
        """The one-hot labels (zeros when None), each zeroed with probability `label_dropout` in training."""
        if class_labels is None:
            class_labels = torch.zeros(1, self.label_dim, device=device)
        if self.training and self.label_dropout:
            keep = torch.rand(batch, 1, device=device) >= self.label_dropout
            class_labels = class_labels * keep.to(class_labels.dtype)
        return class_labels

    def embed(self, noise_labels: torch.Tensor, class_labels: torch.Tensor | None,
              augment_labels: torch.Tensor | None, batch: int) -> torch.Tensor:
        raise NotImplementedError

    def _encode(self, x: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips: list[torch.Tensor] = []
        aux = x
        for name, module in self.enc.items():
            role = self._enc_roles[name]
            if role == "aux_down":
                aux = module(aux)
            elif role == "aux_skip":
                x = skips[-1] = x + module(aux)
            elif role == "aux_residual":
                x = skips[-1] = aux = (x + module(aux)) / math.sqrt(2)
            else:
                x = module(x, emb) if role == "block" else module(x)
                skips.append(x)
        return x, skips

    def _decode(self, x: torch.Tensor, skips: list[torch.Tensor], emb: torch.Tensor) -> torch.Tensor:
        out = head = None
        for name, module in self.dec.items():
            role = self._dec_roles[name]
            if role == "aux_up":
                out = module(out)
            elif role == "aux_norm":
                head = module(x)
            elif role == "aux_conv":
                head = module(F.silu(head))
                out = head if out is None else head + out
            else:
                if role == "cat_block":
                    x = torch.cat([x, skips.pop()], dim=1)
                x = module(x, emb)
        return self._output(x, out)

    def _output(self, x: torch.Tensor, aux: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None = None,
                augment_labels: torch.Tensor | None = None) -> torch.Tensor:
        """F(x; noise_labels), class_labels one-hot (N, label_dim) or None."""
        if not self.has_decoder:
            raise RuntimeError(f"this {type(self).__name__} was built with decoder=False: use encoder_features")
        emb = self.embed(noise_labels, class_labels, augment_labels, x.shape[0])
        return self._decode(*self._encode(x, emb), emb)

    def encoder_features(self, x: torch.Tensor, noise_labels: torch.Tensor,
                         class_labels: torch.Tensor | None = None,
                         augment_labels: torch.Tensor | None = None) -> torch.Tensor:
        """The output of the last `enc` entry (lowest resolution, main path), shape (N, encoder_channels, h, w)."""
        emb = self.embed(noise_labels, class_labels, augment_labels, x.shape[0])
        return self._encode(x, emb)[0]


class SongUNet(_UNet):
    """DDPM++ / NCSN++ (Song et al. 2021) as published with EDM.

    `embedding_type` 'positional' | 'fourier' (noise embedding of `model_channels * channel_mult_noise`
    channels), `encoder_type` 'standard' | 'skip' | 'residual', `decoder_type` 'standard' | 'skip'. One-head
    attention at `attn_resolutions` (and in the first bottleneck block); `resample_filter` is the FIR filter
    used for all 2x resampling.
    """

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, label_dim: int = 0,
                 augment_dim: int = 0, model_channels: int = 128, channel_mult: Sequence[int] = (1, 2, 2, 2),
                 channel_mult_emb: int = 4, num_blocks: int = 4, attn_resolutions: Sequence[int] = (16,),
                 dropout: float = 0.10, label_dropout: float = 0, embedding_type: str = "positional",
                 channel_mult_noise: int = 1, encoder_type: str = "standard", decoder_type: str = "standard",
                 resample_filter: Sequence[float] = (1, 1), decoder: bool = True):
        if embedding_type not in ("positional", "fourier"):
            raise ValueError(f"embedding_type must be 'positional' or 'fourier', not {embedding_type!r}")
        if encoder_type not in ("standard", "skip", "residual"):
            raise ValueError(f"encoder_type must be 'standard', 'skip' or 'residual', not {encoder_type!r}")
        if decoder_type not in ("standard", "skip"):
            raise ValueError(f"decoder_type must be 'standard' or 'skip', not {decoder_type!r}")
        super().__init__()
        self._setup(label_dim, label_dropout)
        self.has_decoder = decoder
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        init = Init("xavier_uniform")
        init_zero = Init("xavier_uniform", weight=1e-5)
        block = dict(emb_channels=emb_channels, num_heads=1, dropout=dropout, skip_scale=math.sqrt(0.5), eps=1e-6,
                     resample_filter=resample_filter, resample_proj=True, adaptive_scale=False, init=init,
                     init_zero=init_zero, init_attn=Init("xavier_uniform", weight=math.sqrt(0.2)))

        # embedding: sin features first, then cos
        if embedding_type == "positional":
            self.map_noise = PositionalEmbedding(noise_channels, endpoint=True, sin_first=True)
        else:
            self.map_noise = FourierEmbedding(noise_channels, sin_first=True)
        self.map_label = Linear(label_dim, noise_channels, init=init) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_channels, bias=False, init=init) if augment_dim else None
        self.map_layer0 = Linear(noise_channels, emb_channels, init=init)
        self.map_layer1 = Linear(emb_channels, emb_channels, init=init)

        # encoder
        self.enc = nn.ModuleDict()
        levels = list(enumerate(channel_mult))
        cout = caux = in_channels
        for level, mult in levels:
            res = img_resolution >> level
            if level == 0:
                self._enc_add(f"{res}x{res}_conv", ResampleConv(cout, model_channels, 3, init=init), "conv")
                cout = model_channels
            else:
                self._enc_add(f"{res}x{res}_down", UNetBlock(cout, cout, down=True, **block), "block")
                if encoder_type == "skip":
                    self._enc_add(f"{res}x{res}_aux_down",
                                  ResampleConv(caux, caux, 0, down=True, resample_filter=resample_filter), "aux_down")
                    self._enc_add(f"{res}x{res}_aux_skip", ResampleConv(caux, cout, 1, init=init), "aux_skip")
                elif encoder_type == "residual":
                    self._enc_add(f"{res}x{res}_aux_residual",
                                  ResampleConv(caux, cout, 3, down=True, resample_filter=resample_filter, fused=True,
                                               init=init), "aux_residual")
                    caux = cout
            cout = self._enc_blocks(res, cout, model_channels * mult, num_blocks, res in attn_resolutions, block)
        self.encoder_channels = cout
        if not decoder:
            return

        # decoder: one output head at the top (standard) or one per resolution, summed (skip)
        skips = [m.out_channels for name, m in self.enc.items() if self._enc_roles[name] in ("conv", "block")]
        self.dec = nn.ModuleDict()
        for level, mult in reversed(levels):
            res = img_resolution >> level
            self._dec_start_level(res, level == len(levels) - 1, cout, block)
            for idx in range(num_blocks + 1):
                attn = idx == num_blocks and res in attn_resolutions
                self._dec_add(f"{res}x{res}_block{idx}",
                              UNetBlock(cout + skips.pop(), model_channels * mult, attention=attn, **block),
                              "cat_block")
                cout = model_channels * mult
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < len(levels) - 1:
                    self._dec_add(f"{res}x{res}_aux_up", ResampleConv(out_channels, out_channels, 0, up=True,
                                                                      resample_filter=resample_filter), "aux_up")
                self._dec_add(f"{res}x{res}_aux_norm", GroupNorm(cout, eps=1e-6), "aux_norm")
                self._dec_add(f"{res}x{res}_aux_conv", ResampleConv(cout, out_channels, 3, init=init_zero), "aux_conv")

    def embed(self, noise_labels, class_labels, augment_labels, batch):
        emb = self.map_noise(noise_labels)
        if self.map_label is not None:
            labels = self._drop_labels(class_labels, batch, noise_labels.device)
            emb = emb + self.map_label(labels * math.sqrt(self.label_dim))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        return F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))

    def _output(self, x, aux):
        return aux


class DhariwalUNet(_UNet):
    """ADM (Dhariwal & Nichol 2021) as published with EDM: scale-and-shift embedding injection and
    `out_channels // 64` attention heads at `attn_resolutions` (none where that is 0) and in the first
    bottleneck block."""

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, label_dim: int = 0,
                 augment_dim: int = 0, model_channels: int = 192, channel_mult: Sequence[int] = (1, 2, 3, 4),
                 channel_mult_emb: int = 4, num_blocks: int = 3, attn_resolutions: Sequence[int] = (32, 16, 8),
                 dropout: float = 0.10, label_dropout: float = 0, decoder: bool = True):
        super().__init__()
        self._setup(label_dim, label_dropout)
        self.has_decoder = decoder
        emb_channels = model_channels * channel_mult_emb
        init = Init("kaiming_uniform", weight=math.sqrt(1 / 3), bias=math.sqrt(1 / 3))
        init_zero = Init("kaiming_uniform", weight=0.0, bias=0.0)
        block = dict(emb_channels=emb_channels, channels_per_head=64, dropout=dropout, init=init,
                     init_zero=init_zero)

        self.map_noise = PositionalEmbedding(model_channels)
        self.map_augment = Linear(augment_dim, model_channels, bias=False, init=init_zero) if augment_dim else None
        self.map_layer0 = Linear(model_channels, emb_channels, init=init)
        self.map_layer1 = Linear(emb_channels, emb_channels, init=init)
        self.map_label = (Linear(label_dim, emb_channels, bias=False, init=Init(weight=math.sqrt(label_dim)))
                          if label_dim else None)

        self.enc = nn.ModuleDict()
        levels = list(enumerate(channel_mult))
        cout = in_channels
        for level, mult in levels:
            res = img_resolution >> level
            if level == 0:
                self._enc_add(f"{res}x{res}_conv", ResampleConv(cout, model_channels * mult, 3, init=init), "conv")
                cout = model_channels * mult
            else:
                self._enc_add(f"{res}x{res}_down", UNetBlock(cout, cout, down=True, **block), "block")
            cout = self._enc_blocks(res, cout, model_channels * mult, num_blocks, res in attn_resolutions, block)
        self.encoder_channels = cout
        if not decoder:
            return

        skips = [m.out_channels for m in self.enc.values()]
        self.dec = nn.ModuleDict()
        for level, mult in reversed(levels):
            res = img_resolution >> level
            self._dec_start_level(res, level == len(levels) - 1, cout, block)
            for idx in range(num_blocks + 1):
                self._dec_add(f"{res}x{res}_block{idx}",
                              UNetBlock(cout + skips.pop(), model_channels * mult,
                                        attention=res in attn_resolutions, **block), "cat_block")
                cout = model_channels * mult
        self.out_norm = GroupNorm(cout)
        self.out_conv = ResampleConv(cout, out_channels, 3, init=init_zero)

    def embed(self, noise_labels, class_labels, augment_labels, batch):
        emb = self.map_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = self.map_layer1(F.silu(self.map_layer0(emb)))
        if self.map_label is not None:
            emb = emb + self.map_label(self._drop_labels(class_labels, batch, noise_labels.device))
        return F.silu(emb)

    def _output(self, x, aux):
        return self.out_conv(F.silu(self.out_norm(x)))


BACKBONES: dict[str, type[_UNet]] = {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet}


class _Precond(nn.Module):
    """D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) around a backbone `self.model`; subclasses give
    `coefficients`. Built from a published pickle's kwargs; `use_fp16` is accepted and ignored."""

    sigma_data: float = 0.5
    sigma_min: float
    sigma_max: float

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int, use_fp16: bool, model_type: str,
                 decoder: bool, model_kwargs: dict):
        super().__init__()
        if model_type not in BACKBONES:
            raise ValueError(f"unknown model_type {model_type!r}: expected one of {sorted(BACKBONES)}")
        self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
        self.use_fp16 = use_fp16  # kept for reference only: precision is the caller's autocast
        self.model = BACKBONES[model_type](img_resolution=img_resolution, in_channels=img_channels,
                                           out_channels=img_channels, label_dim=label_dim, decoder=decoder,
                                           **model_kwargs)
        self.encoder_channels: int = self.model.encoder_channels

    def coefficients(self, sigma: torch.Tensor):
        """(c_skip, c_out, c_in) shaped (N, 1, 1, 1) and c_noise shaped (N,), for sigma of shape (N,)."""
        raise NotImplementedError

    def _one_hot(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        """Class indices (N,) to one-hot float32 (N, label_dim); one-hot / soft labels (N, label_dim) pass as is."""
        if not self.label_dim or labels is None:
            return None
        if labels.is_floating_point() and labels.ndim == 2:
            return labels.to(torch.float32)
        return F.one_hot(labels.reshape(-1).long(), self.label_dim).to(torch.float32)

    def _inputs(self, x: torch.Tensor, sigma: torch.Tensor | float, labels: torch.Tensor | None):
        x = x.to(torch.float32)
        sigma = per_sample(sigma, x)
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        return x, c_skip, c_out, c_in * x, c_noise, self._one_hot(labels)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, labels: torch.Tensor | None = None,
                augment_labels: torch.Tensor | None = None) -> torch.Tensor:
        """D(x; sigma) in float32. `labels`: class indices (N,) or None; `sigma`: float, (N,) or broadcastable."""
        x, c_skip, c_out, x_in, c_noise, onehot = self._inputs(x, sigma, labels)
        f = self.model(x_in, c_noise, onehot, augment_labels)
        return c_skip * x + c_out * f.to(torch.float32)

    def encoder_features(self, x: torch.Tensor, sigma: torch.Tensor | float, labels: torch.Tensor | None = None,
                         augment_labels: torch.Tensor | None = None) -> torch.Tensor:
        """The backbone's last encoder output for F(c_in x; c_noise): (N, encoder_channels, h, w)."""
        _, _, _, x_in, c_noise, onehot = self._inputs(x, sigma, labels)
        return self.model.encoder_features(x_in, c_noise, onehot, augment_labels)

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)


class VPPrecond(_Precond):
    """Variance-preserving preconditioning: c_skip = 1, c_out = -sigma, c_in = 1/sqrt(sigma^2 + 1),
    c_noise = (M - 1) t(sigma) for the schedule sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 beta_d: float = 19.9, beta_min: float = 0.1, M: int = 1000, epsilon_t: float = 1e-5,
                 model_type: str = "SongUNet", decoder: bool = True, **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, decoder, model_kwargs)
        self.beta_d, self.beta_min, self.M, self.epsilon_t = beta_d, beta_min, M, epsilon_t
        # on the CPU explicitly, so that building under `torch.device("meta")` still gives numbers
        self.sigma_min = float(self.sigma(torch.tensor(epsilon_t, device="cpu")))
        self.sigma_max = float(self.sigma(torch.tensor(1.0, device="cpu")))

    def sigma(self, t) -> torch.Tensor:
        t = t if isinstance(t, torch.Tensor) else torch.as_tensor(t)
        return ((0.5 * self.beta_d * t**2 + self.beta_min * t).exp() - 1).sqrt()

    def sigma_inv(self, sigma) -> torch.Tensor:
        sigma = sigma if isinstance(sigma, torch.Tensor) else torch.as_tensor(sigma)
        return ((self.beta_min**2 + 2 * self.beta_d * (1 + sigma**2).log()).sqrt() - self.beta_min) / self.beta_d

    def coefficients(self, sigma: torch.Tensor):
        s = sigma.reshape(-1, 1, 1, 1)
        return torch.ones_like(s), -s, 1 / (s**2 + 1).sqrt(), (self.M - 1) * self.sigma_inv(sigma)


class VEPrecond(_Precond):
    """Variance-exploding preconditioning: c_skip = 1, c_out = sigma, c_in = 1, c_noise = ln(sigma / 2)."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 sigma_min: float = 0.02, sigma_max: float = 100, model_type: str = "SongUNet",
                 decoder: bool = True, **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, decoder, model_kwargs)
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def coefficients(self, sigma: torch.Tensor):
        s = sigma.reshape(-1, 1, 1, 1)
        return torch.ones_like(s), s, torch.ones_like(s), (0.5 * sigma).log()


class EDMPrecond(_Precond):
    """EDM's preconditioning: c_skip = sd^2/(s^2+sd^2), c_out = s sd/sqrt(s^2+sd^2), c_in = 1/sqrt(s^2+sd^2),
    c_noise = ln(s)/4 with sd = sigma_data."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 sigma_min: float = 0, sigma_max: float = float("inf"), sigma_data: float = 0.5,
                 model_type: str = "DhariwalUNet", decoder: bool = True, **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, decoder, model_kwargs)
        self.sigma_min, self.sigma_max, self.sigma_data = sigma_min, sigma_max, sigma_data

    def coefficients(self, sigma: torch.Tensor):
        s, sd2 = sigma.reshape(-1, 1, 1, 1), self.sigma_data**2
        return sd2 / (s**2 + sd2), s * self.sigma_data / (s**2 + sd2).sqrt(), 1 / (sd2 + s**2).sqrt(), sigma.log() / 4


PRECONDITIONERS: dict[str, type[_Precond]] = {"VPPrecond": VPPrecond, "VEPrecond": VEPrecond,
                                              "EDMPrecond": EDMPrecond}
