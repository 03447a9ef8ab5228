"""The encoded training set, drawn in random batches: what every training task reads.

A set that fits (on the CPU, or in a quarter of the GPU's memory) is copied to the device. A larger one
(e.g. ImageNet-512 latents, 84 GB) stays in its memory-mapped shard files, which every process on a machine
shares through the page cache; each batch is gathered there and copied to the device.
"""

from __future__ import annotations

import torch

from pipeline.randomness import Draws

DEVICE_SHARE = 0.25  # the largest fraction of a GPU's memory the training set may take there


def fits_on_device(size_bytes: int, device: torch.device) -> bool:
    return device.type != "cuda" or size_bytes <= DEVICE_SHARE * torch.cuda.get_device_properties(device).total_memory


class TrainingData:
    """Batches in model space, on the device, from shards of stored tensors (see pipeline.datasets.encoders)."""

    def __init__(self, encoder, shards: list[dict[str, torch.Tensor]], labels: torch.Tensor, device: torch.device,
                 on_device: bool | None = None):
        self.encoder, self.device = encoder, device
        size = sum(v.numel() * v.element_size() for shard in shards for v in shard.values())
        self.on_device = fits_on_device(size, device) if on_device is None else on_device
        if self.on_device:
            self.stored = {key: torch.cat([shard[key] for shard in shards]).to(device) for key in shards[0]}
        else:
            self.shards = shards
            self.starts = torch.tensor([0] + [len(next(iter(s.values()))) for s in shards]).cumsum(0)
        self.labels = labels.to(device)
        self.shape = tuple(next(iter(shards[0].values())).shape[1:])

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """(C, H, W) of one training example in model space."""
        return self.shape

    def batch(self, draws: Draws) -> tuple[torch.Tensor, torch.Tensor]:
        """Training examples drawn with replacement, one per row of `draws`, and their labels."""
        idx = draws.randint(len(self))
        rows = {k: v[idx] for k, v in self.stored.items()} if self.on_device else self._gather(idx.cpu())
        return self.encoder.to_training(rows, draws), self.labels[idx]

    def _gather(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """Rows `idx` from the mapped shards, copied to the device."""
        shard = torch.searchsorted(self.starts, idx, right=True) - 1
        out = {key: torch.empty((len(idx), *value.shape[1:]), dtype=value.dtype)
               for key, value in self.shards[0].items()}
        for k in shard.unique().tolist():
            mask = shard == k
            for key, value in self.shards[k].items():
                out[key][mask] = value[idx[mask] - self.starts[k]]
        if self.device.type == "cuda":
            out = {key: value.pin_memory() for key, value in out.items()}
        return {key: value.to(self.device, non_blocking=True) for key, value in out.items()}
