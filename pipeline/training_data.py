"""The encoded training set, drawn in random batches: what every training task reads.

It is kept on the GPU when it takes at most a quarter of the GPU's memory, otherwise in pinned host memory
(e.g. ImageNet-512 latents), with each batch gathered there and copied over. Either way every process holds
the whole set: its host memory must hold processes x the encoded size.
"""

from __future__ import annotations

import torch

from pipeline.training_task import Draws


DEVICE_SHARE = 0.25  # the largest fraction of a GPU's memory the training set may take there


class TrainingData:
    """The encoded training set; draws random batches in model space, on the device."""

    def __init__(self, encoder, stored: dict[str, torch.Tensor], labels: torch.Tensor, device: torch.device):
        self.encoder = encoder
        size = sum(v.numel() * v.element_size() for v in stored.values())
        on_device = device.type != "cuda" or size <= DEVICE_SHARE * torch.cuda.get_device_properties(device).total_memory
        self.home = device if on_device else torch.device("cpu")
        self.stored = {k: v.to(device) if on_device else v.pin_memory() for k, v in stored.items()}
        self.labels = labels.to(device)
        self.device = device

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """(C, H, W) of one training example in model space."""
        return tuple(next(iter(self.stored.values())).shape[1:])

    def batch(self, draws: Draws) -> tuple[torch.Tensor, torch.Tensor]:
        """Training examples drawn with replacement, one per row of `draws`, and their labels."""
        idx = draws.randint(len(self))
        rows = {k: v[idx.to(self.home)].to(self.device, non_blocking=True) for k, v in self.stored.items()}
        return self.encoder.to_training(rows, draws), self.labels[idx]
