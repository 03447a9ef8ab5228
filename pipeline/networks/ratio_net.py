"""The density-ratio network d_phi(x, s, c): a scalar logit estimating log q_s(x) / p_s(x).

It is the score U-Net's encoder (embedding, down path, middle block) with EDM's input scaling, global
average pooling and a linear head; class-conditional nets add a projection term <embed(c), h>. Built
from the same config as the score net, it starts from the pretrained encoder with the head at zero
(d = 0: the ratio is 1 everywhere until it has learnt something).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.artifacts import load_module
from pipeline.config import NetworkParams
from pipeline.networks.preconditioning import Denoiser, edm_coefficients
from pipeline.networks.unet import UNetEncoder


class RatioNet(nn.Module):
    def __init__(self, network: NetworkParams, resolution: int, channels: int, num_classes: int, sigma_data: float):
        super().__init__()
        self.sigma_data = sigma_data
        self.encoder = UNetEncoder(network, resolution, channels, num_classes)
        width = self.encoder.out_channels
        self.head = nn.Linear(width, 1)
        self.projection = nn.Embedding(num_classes, width) if num_classes else None
        for p in [*self.head.parameters(), *(self.projection.parameters() if self.projection else [])]:
            nn.init.zeros_(p)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).expand(x.shape[0]).view(-1, 1, 1, 1)
        _, _, c_in, c_noise = edm_coefficients(sigma, self.sigma_data)
        h, _, _ = self.encoder(c_in * x, c_noise.flatten(), labels)
        h = F.silu(h).mean(dim=(2, 3)).float()
        with torch.autocast(x.device.type, enabled=False):  # the logit in fp32, also under bf16 autocast
            logit = self.head(h).squeeze(1)
            if self.projection is not None:
                logit = logit + (self.projection(labels) * h).sum(dim=1)
        return logit


def ratio_config(score_config: dict) -> dict:
    keys = ("network", "resolution", "channels", "num_classes", "sigma_data")
    return {"kind": "ratio-net", **{k: score_config[k] for k in keys}}


def build_ratio_net(config: dict) -> RatioNet:
    return RatioNet(NetworkParams(**config["network"]), config["resolution"], config["channels"],
                    config["num_classes"], config["sigma_data"])


def init_from_score(ratio: RatioNet, score: Denoiser) -> RatioNet:
    """Copy the pretrained encoder (same config, so every shape matches); the head stays at zero."""
    ratio.encoder.load_state_dict(score.backbone.encoder.state_dict())
    return ratio


def load_ratio_net(path: str | Path, device: torch.device) -> tuple[RatioNet, dict]:
    return load_module(path, build_ratio_net, device, "train")
