"""Encoders between pixels and the space the diffusion models train in.

    identity  pixels scaled to [-1, 1]: x = u8 / 127.5 - 1
    sd-vae    diffusers' AutoencoderKL with EDM2's conventions: input in [0, 1]; the posterior mean and
              std are stored in fp16; a latent is drawn from the posterior each time the data is loaded,
              then whitened per channel to std 0.5: with statistics measured on the training set
              (whitening: measured), or with EDM2's fixed constants (whitening: edm2), which a published
              EDM2 teacher was trained with

Stored form (what encode writes): identity {"pixels": uint8 NCHW}, a quarter of fp32's size (in-memory callers
may pass model-space {"x": float} instead); sd-vae {"mean": fp16, "std": fp16}. The
`to_training` step turns stored tensors into model-space tensors; `decode` maps model space to uint8 NHWC.

The encoded format (data/encoded/), written by `write_encoded` under torchrun, each process encoding its
share of fixed shards of `prepare.shard_size` training images (the same shards for any process count):

    shard-00000.safetensors, ...  the stored tensors of the shard's images plus "labels" (int64)
    encoder.json                  the encoder's config (whitening statistics over every shard), num_images,
                                  num_classes, channels, resolution, and "shards": the images per shard
"""

from __future__ import annotations

import json
import mmap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from pipeline.artifacts import read_json, require, write_json
from pipeline.datasets.prepared import TRAIN, PreparedData
from pipeline.errors import PipelineError
from pipeline.noise_levels import SIGMA_DATA
from pipeline.randomness import Draws
from pipeline.runtime import Runtime

# EDM2's per-channel statistics of sd-vae-ft-mse latents of ImageNet-512 (Karras et al. 2024), used as they are
EDM2_RAW_MEAN, EDM2_RAW_STD = [5.81, 3.25, 0.12, -2.15], [4.17, 4.62, 3.71, 3.28]


def _to_nchw_float(images: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float()


def _to_nhwc_uint8(x: torch.Tensor) -> np.ndarray:
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


class IdentityEncoder:
    name = "identity"

    def __init__(self, config: dict | None = None):
        self.config = dict(config or {"encoder": self.name})

    def encode(self, images: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
        return {"pixels": torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).contiguous()}

    def moments(self, stored: dict[str, torch.Tensor]) -> torch.Tensor:
        """The float64 sums over a batch that `finish` needs (added up over every batch): none here."""
        return torch.zeros(0, dtype=torch.float64)

    def finish(self, moments: torch.Tensor, shape: list[int]) -> dict:
        """Called once with the summed `moments` and the stored (C, H, W): the config that `to_training` and
        `decode` need."""
        self.config.update(channels=shape[0], resolution=shape[1])
        return self.config

    def to_training(self, stored: dict[str, torch.Tensor], draws: Draws) -> torch.Tensor:
        if "x" in stored:
            return stored["x"].float()
        return stored["pixels"].float() / 127.5 - 1  # the same float32 operations as before storing

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

    def moments(self, stored: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-channel float64 sums over a batch: rows count, sum of mean, sum of mean^2, sum of std^2."""
        mean, std = stored["mean"].double(), stored["std"].double()
        dims = (0, 2, 3)
        count = torch.full((mean.shape[1],), mean.numel() / mean.shape[1], dtype=torch.float64)
        return torch.stack([count, mean.sum(dims), mean.square().sum(dims), std.square().sum(dims)])

    def finish(self, moments: torch.Tensor, shape: list[int]) -> dict:
        count, total, squares, variances = moments
        # Per-channel moments of a posterior sample: E[z] = E[mean], Var[z] = Var[mean] + E[std^2].
        shift = total / count
        var = (squares - count * shift.square()) / (count - 1) + variances / count
        self.config.update(channels=shape[0], resolution=shape[1], shift=shift.tolist(), scale=var.sqrt().tolist())
        if self.config.get("whitening") == "edm2":  # the measured ones stay on record beside the constants
            self.config.update(measured_shift=self.config["shift"], measured_scale=self.config["scale"],
                               shift=EDM2_RAW_MEAN, scale=EDM2_RAW_STD)
        return self.config

    def _whitening(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shift = torch.tensor(self.config["shift"], device=like.device).view(1, -1, 1, 1)
        scale = torch.tensor(self.config["scale"], device=like.device).view(1, -1, 1, 1)
        return shift, scale

    def to_training(self, stored: dict[str, torch.Tensor], draws: Draws) -> torch.Tensor:
        """A posterior sample per example (its noise from `draws`), whitened."""
        mean, std = stored["mean"].float(), stored["std"].float()
        noise = draws.randn(*mean.shape[1:]).to(mean.device)
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
    """An AutoencoderKL from a local folder or a hub id: the local hub cache first, so an offline machine with
    the files cached never waits on the network; then a download (unless HF_HUB_OFFLINE=1)."""
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        raise PipelineError("encode.encoder: sd-vae needs diffusers: pip install -e '.[latent]'") from None
    try:
        try:
            vae = AutoencoderKL.from_pretrained(name, local_files_only=True)
        except (OSError, ValueError):
            if Path(name).is_dir():
                raise
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


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.safetensors"


def encode_shards(data: PreparedData) -> list[range]:
    """The encode shards: positions among the training images, `prepare.shard_size` per shard."""
    count, size = data.count(TRAIN), data.shard_size
    return [range(start, min(start + size, count)) for start in range(0, count, size)]


def write_encoded(out_dir: str | Path, data: PreparedData, encoder, batch_size: int, runtime: Runtime,
                  progress: Callable[[int], None] = lambda n: None) -> dict:
    """Encode the training images into `<out_dir>/shard-<k>.safetensors` + `encoder.json`; this process
    encodes its share of the shards. The statistics cover every shard, summed in shard order, so the output
    does not depend on the number of processes. Every process returns the config."""
    shards = encode_shards(data)
    if not shards:
        raise PipelineError("the prepared data holds no training images: rerun `dvc repro prepare`")
    with runtime.atomic_folder(out_dir) as tmp:
        mine = {k: _encode_shard(tmp / shard_name(k), data, shards[k], encoder, batch_size, runtime.device, progress)
                for k in runtime.share(len(shards))}
        summaries = {k: summary for part in runtime.gather(mine) for k, summary in part.items()}
        summaries = [summaries[k] for k in range(len(shards))]
        moments = torch.from_numpy(np.sum([s["moments"] for s in summaries], axis=0))
        config = {**encoder.finish(moments, summaries[0]["shape"]), "num_classes": data.num_classes,
                  "num_images": data.count(TRAIN), "shards": [s["count"] for s in summaries]}
        if runtime.main:
            write_json(tmp / "encoder.json", config)
    return config


def _encode_shard(path: Path, data: PreparedData, positions: range, encoder, batch_size: int, device: torch.device,
                  progress: Callable[[int], None]) -> dict:
    """Encode the training images at `positions` into `path`; returns its count, stored (C, H, W) and the
    encoder's moments summed over its batches. The shard is held in memory until written (SD-VAE latents
    of 50,000 images at 512 px: 3.3 GB)."""
    parts: dict[str, list[torch.Tensor]] = {"labels": []}
    moments = None
    for images, labels in data.batches(TRAIN, batch_size, positions):
        stored = {key: value.cpu() for key, value in encoder.encode(images, device).items()}
        batch_moments = encoder.moments(stored)
        moments = batch_moments if moments is None else moments + batch_moments
        for key, value in {**stored, "labels": torch.from_numpy(labels)}.items():
            parts.setdefault(key, []).append(value)
        progress(len(images))
    tensors = {key: torch.cat(values).contiguous() for key, values in parts.items()}
    save_file(tensors, str(path))
    return {"count": len(positions), "shape": list(next(iter(stored.values())).shape[1:]), "moments": moments.numpy()}


def load_encoder(path, device: torch.device | None = None):
    """The encoder an encode output folder was written with (its config only: no data is read)."""
    path = Path(path)
    config = read_json(require(path / "encoder.json", "encode"))
    if "shards" not in config or sum(config["shards"]) != config["num_images"]:
        raise PipelineError(f"{path}/encoder.json does not list the shards of {config.get('num_images')} images "
                            "(an older, unsharded format?): rerun `dvc repro encode`")
    return make_encoder(config, device)


def map_encoded(path, device: torch.device | None = None):
    """(encoder, shards, labels): each shard's tensors memory-mapped from its file, not read (processes that
    map the same files share the pages), and the labels of all shards."""
    encoder = load_encoder(path, device)
    shards = [_map_shard(Path(path) / shard_name(k), count) for k, count in enumerate(encoder.config["shards"])]
    keys = set(shards[0])
    for k, shard in enumerate(shards):
        if set(shard) != keys:
            raise PipelineError(f"{Path(path) / shard_name(k)} holds {sorted(shard)}, shard 0 holds {sorted(keys)}: "
                                "rerun `dvc repro encode`")
    return encoder, [{k: v for k, v in s.items() if k != "labels"} for s in shards], torch.cat([s["labels"] for s in shards])


def load_encoded(path, device: torch.device | None = None):
    """(encoder, stored tensors, labels) from an encode output folder, the shards concatenated in order."""
    encoder, shards, labels = map_encoded(path, device)
    return encoder, {key: torch.cat([shard[key] for shard in shards]) for key in shards[0]}, labels


SAFETENSORS_DTYPES = {"U8": torch.uint8, "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32,
                      "I64": torch.int64}


def _map_shard(path: Path, count: int) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors as views of a private (copy-on-write) memory map of it."""
    require(path, "encode")
    try:
        with open(path, "rb") as f:
            header_size = int.from_bytes(f.read(8), "little")
            if header_size > path.stat().st_size - 8:
                raise ValueError("the header is longer than the file")
            header = json.loads(f.read(header_size))
            buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        tensors = {}
        for key, entry in header.items():
            if key == "__metadata__":
                continue
            dtype, (begin, end) = SAFETENSORS_DTYPES[entry["dtype"]], entry["data_offsets"]
            flat = torch.frombuffer(buffer, dtype=dtype, count=(end - begin) // dtype.itemsize,
                                    offset=8 + header_size + begin)
            tensors[key] = flat.view(entry["shape"])
    except (OSError, ValueError, KeyError, RuntimeError, UnicodeDecodeError) as exc:
        raise PipelineError(f"{path} is unreadable ({type(exc).__name__}: {exc}): rerun `dvc repro encode`") from None
    if "labels" not in tensors or any(len(t) != count for t in tensors.values()):
        raise PipelineError(f"{path}: {({k: tuple(t.shape) for k, t in tensors.items()})} does not hold the "
                            f"{count} images (and labels) encoder.json lists: rerun `dvc repro encode`")
    return tensors


def split_in_model_space(encoder, data: PreparedData, which: int, positions: np.ndarray, batch_size: int,
                         device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Prepared images of split `which` at `positions`, encoded as the training data is (one posterior sample
    for sd-vae), and their labels."""
    xs, labels = [], []
    for images, batch_labels in data.batches(which, batch_size, positions):
        xs.append(encoder.to_training(encoder.encode(images, device), Draws(len(images), device)))
        labels.append(torch.as_tensor(batch_labels, device=device))
    return torch.cat(xs), torch.cat(labels)
