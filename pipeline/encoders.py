"""Encoders between pixels and the space the diffusion models train in.

    identity  pixels scaled to [-1, 1]: x = u8 / 127.5 - 1
    sd-vae    diffusers' AutoencoderKL with EDM2's conventions: input in [0, 1]; the posterior mean and
              std are stored in fp16; a latent is drawn from the posterior each time the data is loaded,
              then whitened per channel to std 0.5 with statistics measured on the training set

Stored form (what encode writes): identity {"x": fp32}; sd-vae {"mean": fp16, "std": fp16}. The
`to_training` step turns stored tensors into model-space tensors; `decode` maps model space to uint8 NHWC.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from pipeline.artifacts import atomic_path, read_json, require, write_json
from pipeline.errors import PipelineError

SIGMA_DATA = 0.5  # the std the whitened latents are scaled to (EDM's sigma_data)


def _to_nchw_float(images: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float()


def _to_nhwc_uint8(x: torch.Tensor) -> np.ndarray:
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


class IdentityEncoder:
    name = "identity"

    def __init__(self, config: dict | None = None):
        self.config = dict(config or {"encoder": self.name})

    def encode(self, images: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
        return {"x": _to_nchw_float(images, device) / 127.5 - 1}

    def finish(self, stored: dict[str, torch.Tensor]) -> dict:
        """Called once after all batches: the config that `to_training` and `decode` need."""
        x = stored["x"]
        self.config.update(channels=x.shape[1], resolution=x.shape[2])
        return self.config

    def to_training(self, stored: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        return stored["x"].float()

    def decode(self, x: torch.Tensor) -> np.ndarray:
        return _to_nhwc_uint8((x.float() + 1) * 127.5)


class VAEEncoder:
    name = "sd-vae"

    def __init__(self, config: dict, device: torch.device | None = None):
        self.config = dict(config)
        self.device = device or torch.device("cpu")
        self._vae = None

    @property
    def vae(self):
        if self._vae is None:
            self._vae = load_vae(self.config["vae"], self.device)
        return self._vae

    @torch.no_grad()
    def encode(self, images: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
        dist = self.vae.encode(_to_nchw_float(images, device) / 255).latent_dist
        return {"mean": dist.mean.half().contiguous(), "std": dist.std.half().contiguous()}

    def finish(self, stored: dict[str, torch.Tensor]) -> dict:
        mean, std = stored["mean"].float(), stored["std"].float()
        # Per-channel moments of a posterior sample: E[z] = E[mean], Var[z] = Var[mean] + E[std^2].
        shift = mean.mean(dim=(0, 2, 3))
        var = mean.var(dim=(0, 2, 3)) + std.square().mean(dim=(0, 2, 3))
        self.config.update(channels=mean.shape[1], resolution=mean.shape[2], shift=shift.tolist(),
                           scale=var.sqrt().tolist())
        return self.config

    def _whitening(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shift = torch.tensor(self.config["shift"], device=like.device).view(1, -1, 1, 1)
        scale = torch.tensor(self.config["scale"], device=like.device).view(1, -1, 1, 1)
        return shift, scale

    def to_training(self, stored: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        mean, std = stored["mean"].float(), stored["std"].float()
        noise = torch.randn(mean.shape, generator=generator, device=mean.device)
        shift, scale = self._whitening(mean)
        return (mean + std * noise - shift) / scale * SIGMA_DATA

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> np.ndarray:
        shift, scale = self._whitening(x)
        z = (x.float() / SIGMA_DATA * scale + shift).to(self.device)
        return _to_nhwc_uint8(self.vae.decode(z).sample.clamp(0, 1) * 255)


def decode_batched(encoder, latents: torch.Tensor, batch_size: int, device: torch.device) -> np.ndarray:
    """Model-space samples (any device) -> uint8 NHWC images, `batch_size` at a time."""
    return np.concatenate([encoder.decode(latents[s : s + batch_size].to(device))
                           for s in range(0, len(latents), batch_size)])


def load_vae(name: str, device: torch.device):
    """An AutoencoderKL from a local folder or a hub id (downloaded unless HF_HUB_OFFLINE=1)."""
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        raise PipelineError("encode.encoder: sd-vae needs diffusers: pip install -e '.[latent]'") from None
    try:
        vae = AutoencoderKL.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise PipelineError(
            f"encode.vae = {name!r}: cannot load an AutoencoderKL ({type(exc).__name__}). Point encode.vae at a "
            "local folder holding config.json and the weights (a download of stabilityai/sd-vae-ft-mse), "
            "or use a hub id on a machine that can reach the hub") from None
    return vae.eval().requires_grad_(False).to(device)


def make_encoder(config: dict, device: torch.device | None = None) -> IdentityEncoder | VAEEncoder:
    """Rebuild an encoder from the config encode wrote (or from the encode params, before encoding)."""
    if config["encoder"] == "identity":
        return IdentityEncoder(config)
    if config["encoder"] == "sd-vae":
        return VAEEncoder(config, device)
    raise PipelineError(f"unknown encoder {config['encoder']!r}: expected identity or sd-vae")


def write_encoded(out_dir, images: np.ndarray, labels: np.ndarray, num_classes: int, encoder, batch_size: int,
                  device: torch.device, progress=lambda n: None) -> dict:
    """Encode uint8 NHWC images batch by batch into `<out_dir>/train.safetensors` + `encoder.json`."""
    parts: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(images), batch_size):
        for key, value in encoder.encode(images[start : start + batch_size], device).items():
            parts.setdefault(key, []).append(value.cpu())
        progress(min(batch_size, len(images) - start))
    stored = {key: torch.cat(values) for key, values in parts.items()}
    config = {**encoder.finish(stored), "num_classes": num_classes, "num_images": len(labels)}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        save_file({**stored, "labels": torch.from_numpy(np.asarray(labels, np.int64))}, str(tmp / "train.safetensors"))
        write_json(tmp / "encoder.json", config)
    return config


def load_encoded(path, device: torch.device | None = None):
    """(encoder, stored tensors, labels) from an encode output folder."""
    config = read_json(require(Path(path) / "encoder.json", "encode"))
    try:
        stored = load_file(str(require(Path(path) / "train.safetensors", "encode")))
    except Exception as exc:
        raise PipelineError(f"{path}/train.safetensors is unreadable ({exc}): rerun `dvc repro encode`") from None
    labels = stored.pop("labels")
    return make_encoder(config, device), stored, labels
