"""The encoded training set on the device, drawn in random batches: what every training task reads."""

from __future__ import annotations

import torch

from pipeline.training_task import Draws


class TrainingData:
    """The encoded training set on the device; draws random batches in model space."""

    def __init__(self, encoder, stored: dict[str, torch.Tensor], labels: torch.Tensor, device: torch.device):
        self.encoder = encoder
        self.stored = {k: v.to(device) for k, v in stored.items()}
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
        return self.encoder.to_training({k: v[idx] for k, v in self.stored.items()}), self.labels[idx]
