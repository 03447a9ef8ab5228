"""Build, save and load denoisers from their JSON configs (weights in safetensors beside them).

Two kinds: the project's U-Net trained by `pretrain` (`edm-denoiser`) and a published EDM/EDM2 teacher
converted by the `teacher` stage (`published`). Both take (x, sigma, integer labels) and expose sigma_data.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.artifacts import load_module, save_weights
from pipeline.config import NetworkParams
from pipeline.networks.preconditioning import Denoiser
from pipeline.networks.published.convert import PUBLISHED, build_published
from pipeline.networks.unet import UNet


def denoiser_config(network: NetworkParams, resolution: int, channels: int, num_classes: int,
                    sigma_data: float) -> dict:
    return {"kind": "edm-denoiser", "network": network.model_dump(), "resolution": resolution,
            "channels": channels, "num_classes": num_classes, "sigma_data": sigma_data}


def build_denoiser(config: dict) -> torch.nn.Module:
    if config["kind"] == PUBLISHED:
        return build_published(config)
    backbone = UNet(NetworkParams(**config["network"]), config["resolution"], config["channels"], config["num_classes"])
    return Denoiser(backbone, config["sigma_data"])


def save_denoiser(path: str | Path, net: torch.nn.Module, config: dict) -> None:
    save_weights(path, net.state_dict(), config)


def load_denoiser(path: str | Path, device: torch.device, produced_by: str) -> tuple[torch.nn.Module, dict]:
    return load_module(path, build_denoiser, device, produced_by)
