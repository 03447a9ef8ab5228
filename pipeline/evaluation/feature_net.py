"""The offline stand-in for Inception: a small CNN classifier trained on the prepared data's labels.

Its penultimate layer is the feature space of the Frechet distance reported as `fd_trained` (never called
FID: the numbers are comparable only with each other, on the same data and the same extractor).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class FeatureNet(nn.Module):
    """uint8-range NCHW float input (0..255), any resolution; `features` is the penultimate layer."""

    def __init__(self, channels: int, num_classes: int, feature_dim: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.GroupNorm(8, 32), nn.SiLU(),
            nn.Conv2d(32, 64, 3, padding=1, stride=2), nn.GroupNorm(8, 64), nn.SiLU(),
            nn.Conv2d(64, 128, 3, padding=1, stride=2), nn.GroupNorm(8, 128), nn.SiLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, feature_dim))
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x / 127.5 - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.silu(self.features(x)))


def to_input(images_u8, device: torch.device) -> torch.Tensor:
    """uint8 NHWC numpy -> float NCHW in 0..255 (clean-fid's convention for extractor input)."""
    return torch.from_numpy(images_u8.copy()).to(device).permute(0, 3, 1, 2).float()


def train_feature_net(images, labels, held_images, held_labels, num_classes: int, feature_dim: int, epochs: int,
                      batch_size: int, lr: float, device: torch.device, seed: int) -> tuple[FeatureNet, float]:
    """Train on (images, labels); returns the net and its accuracy on the held-out images."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = FeatureNet(images.shape[-1], num_classes, feature_dim).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    y_all = torch.as_tensor(labels, dtype=torch.long)
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=gen).numpy()
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            x = to_input(images[idx], device)
            loss = F.cross_entropy(net(x), y_all[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    net.eval().requires_grad_(False)
    with torch.no_grad():
        pred = torch.cat([net(to_input(held_images[s : s + batch_size], device)).argmax(1).cpu()
                          for s in range(0, len(held_images), batch_size)])
    accuracy = (pred == torch.as_tensor(held_labels)).float().mean().item()
    return net, accuracy
