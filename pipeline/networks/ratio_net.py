"""The density-ratio network d_phi(x, s, c): a scalar logit estimating log q_s(x) / p_s(x).

It is the teacher architecture's encoder half (embedding, down path; the project's U-Net adds its middle
block) with the teacher's input scaling, global average pooling and a head; class-conditional nets add a
projection term <embed(c), h>. Built from the teacher's config, it starts from the teacher's encoder
weights with the head at zero (d = 0: the ratio is 1 everywhere until it has learnt something). For an EDM2
teacher the head is magnitude-preserving like the rest of EDM2 (a unit-norm linear map times a learnt gain
that starts at zero).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.artifacts import load_module
from pipeline.config import NetworkParams
from pipeline.networks.preconditioning import Denoiser, edm_coefficients, per_sample
from pipeline.networks.published.convert import PUBLISHED, build_published
from pipeline.networks.published.edm2 import MPConv, mp_silu
from pipeline.networks.unet import UNetEncoder


class ProjectEncoder(UNetEncoder):
    """The project U-Net's encoder half behind the published networks' `encoder_features` interface."""

    def __init__(self, config: dict):
        super().__init__(NetworkParams(**config["network"]), config["resolution"], config["channels"],
                         config["num_classes"])
        self.sigma_data, self.encoder_channels = config["sigma_data"], self.out_channels

    def encoder_features(self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        _, _, c_in, c_noise = edm_coefficients(sigma.view(-1, 1, 1, 1), self.sigma_data)
        return self(c_in * x, c_noise.flatten(), labels)[0]


class MPHead(nn.Module):
    """EDM2-style logit head: a unit-norm linear map of mp_silu features, times a gain that starts at zero."""

    def __init__(self, width: int):
        super().__init__()
        self.linear, self.gain = MPConv(width, 1, kernel=()), nn.Parameter(torch.zeros([]))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.linear(h) * self.gain


class RatioNet(nn.Module):
    def __init__(self, score_config: dict):
        super().__init__()
        published = score_config["kind"] == PUBLISHED
        self.encoder = build_published(score_config, decoder=False) if published else ProjectEncoder(score_config)
        self.magnitude_preserving = published and score_config["family"] == "edm2"
        num_classes, width = score_config["num_classes"], self.encoder.encoder_channels
        self.head = MPHead(width) if self.magnitude_preserving else nn.Linear(width, 1)
        self.projection = nn.Embedding(num_classes, width) if num_classes else None
        zeroed = [] if self.magnitude_preserving else [self.head.weight, self.head.bias]  # MP: its gain is zero
        for p in zeroed + ([self.projection.weight] if self.projection is not None else []):
            nn.init.zeros_(p)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        sigma = per_sample(sigma, x)
        h = self.encoder.encoder_features(x, sigma, labels)
        h = (mp_silu(h) if self.magnitude_preserving else F.silu(h)).mean(dim=(2, 3)).float()
        with torch.autocast(x.device.type, enabled=False):  # the logit in fp32, also under bf16 autocast
            logit = self.head(h).squeeze(1)
            if self.projection is not None:
                logit = logit + (self.projection(labels) * h).sum(dim=1)
        return logit


def ratio_config(score_config: dict) -> dict:
    return {"kind": "ratio-net", "score": score_config}


def build_ratio_net(config: dict) -> RatioNet:
    return RatioNet(config["score"])


def init_from_score(ratio: RatioNet, score: nn.Module) -> RatioNet:
    """Copy the teacher's encoder weights (same architecture, so every name and shape matches); the head stays
    at zero."""
    source = score.backbone.encoder.state_dict() if isinstance(score, Denoiser) else score.state_dict()
    ratio.encoder.load_state_dict({name: source[name] for name in ratio.encoder.state_dict()})
    return ratio


def load_ratio_net(path: str | Path, device: torch.device) -> tuple[RatioNet, dict]:
    return load_module(path, build_ratio_net, device, "train")
