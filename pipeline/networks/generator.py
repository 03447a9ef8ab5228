"""The one-step generator G(z, c) = D_theta(t_init z; t_init, c): one network evaluation per sample.

theta starts as a copy of the pretrained score net; at initialisation G is the teacher's denoiser
applied once to pure noise at sigma = t_init.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pipeline.artifacts import load_module, save_weights
from pipeline.networks.models import build_denoiser
from pipeline.networks.preconditioning import Denoiser


class OneStepGenerator(nn.Module):
    def __init__(self, denoiser: Denoiser, t_init: float):
        super().__init__()
        self.denoiser, self.t_init = denoiser, t_init

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.denoiser(self.t_init * z, self.t_init, labels)


def generator_config(score_config: dict, t_init: float) -> dict:
    return {"kind": "one-step-generator", "t_init": t_init, "denoiser": score_config}


def save_generator(path: str | Path, net: OneStepGenerator, config: dict) -> None:
    save_weights(path, net.denoiser.state_dict(), config)


def load_generator(path: str | Path, device: torch.device) -> tuple[OneStepGenerator, dict]:
    denoiser, config = load_module(path, lambda c: build_denoiser(c["denoiser"]), device, "train")
    return OneStepGenerator(denoiser, config["t_init"]), config
