"""Build, save and load networks from their JSON configs (weights in safetensors beside them)."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.artifacts import load_module, save_weights
from pipeline.config import NetworkParams
from pipeline.networks.preconditioning import Denoiser
from pipeline.networks.unet import UNet


def denoiser_config(network: NetworkParams, resolution: int, channels: int, num_classes: int,
                    sigma_data: float) -> dict:
    return {"kind": "edm-denoiser", "network": network.model_dump(), "resolution": resolution,
            "channels": channels, "num_classes": num_classes, "sigma_data": sigma_data}


def build_denoiser(config: dict) -> Denoiser:
    backbone = UNet(NetworkParams(**config["network"]), config["resolution"], config["channels"], config["num_classes"])
    return Denoiser(backbone, config["sigma_data"])


def save_denoiser(path: str | Path, net: Denoiser, config: dict) -> None:
    save_weights(path, net.state_dict(), config)


def load_denoiser(path: str | Path, device: torch.device, produced_by: str) -> tuple[Denoiser, dict]:
    return load_module(path, build_denoiser, device, produced_by)
