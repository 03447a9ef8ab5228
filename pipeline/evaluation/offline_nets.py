"""The offline feature spaces: small networks trained here on the training split, for data where clean-fid's
Inception weights are absent (and beside Inception where they are present).

    Classifier       a CNN trained on the labels. Its logits give class consistency (the fraction of samples
                     assigned to the class they were asked for); its penultimate layer is the `classifier`
                     feature space: it sees which class an image shows, hardly how.
    AutoEncoder      a CNN trained to reconstruct the images through a `dim`-wide bottleneck. The `autoencoder`
                     feature space is the bottleneck plus two log reconstruction errors, of the image and of its
                     Laplacian: the code sees what an image looks like within its class, the errors how far it
                     lies from the learned data manifold, overall and in its finest detail (noise, blur and
                     artefacts raise them).
    OfflineFeatures  the extractor of one space (`classifier`, `autoencoder`, or `hybrid`: both concatenated),
                     standardised per feature with the training split's mean and spread, so that Euclidean
                     distances (PRDC, nearest neighbours) and KID's polynomial kernel weigh the features alike.

Inputs follow clean-fid's convention: float NCHW in 0..255. Which space is the default was decided by the
sanity battery (pipeline/evaluation/battery.py; the README's table), not by label accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from pipeline.randomness import seed_of, seed_torch

FEATURE_SPACES = ("autoencoder", "classifier", "hybrid")
MIN_SIDE = 2  # the autoencoder halves the image down to this side


def to_input(images_u8: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 NHWC numpy -> float NCHW in 0..255 (clean-fid's convention for extractor input)."""
    return torch.from_numpy(np.ascontiguousarray(images_u8)).to(device).permute(0, 3, 1, 2).float()


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / 127.5 - 1


class Classifier(nn.Module):
    """Any resolution (global average pooling); `features` is the penultimate layer."""

    def __init__(self, channels: int, num_classes: int, feature_dim: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.GroupNorm(8, 32), nn.SiLU(),
            nn.Conv2d(32, 64, 3, padding=1, stride=2), nn.GroupNorm(8, 64), nn.SiLU(),
            nn.Conv2d(64, 128, 3, padding=1, stride=2), nn.GroupNorm(8, 128), nn.SiLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, feature_dim))
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(_unit(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.silu(self.features(x)))


class AutoEncoder(nn.Module):
    """Stride-2 convolutions halve the image down to MIN_SIDE pixels, a linear layer maps to the `dim`-wide
    code; the decoder mirrors it with nearest upsampling, so any resolution works."""

    def __init__(self, channels: int, resolution: int, dim: int):
        super().__init__()
        sides = [resolution]
        while sides[-1] > MIN_SIDE:
            sides.append(math.ceil(sides[-1] / 2))
        widths = [min(32 * 2**i, 128) for i in range(len(sides))]
        down: list[nn.Module] = [nn.Conv2d(channels, widths[0], 3, padding=1), nn.SiLU()]
        for i in range(1, len(sides)):
            down += [nn.Conv2d(widths[i - 1], widths[i], 3, padding=1, stride=2), nn.SiLU()]
        flat = widths[-1] * sides[-1] ** 2
        self.encoder = nn.Sequential(*down, nn.Flatten(), nn.Linear(flat, dim))
        up: list[nn.Module] = [nn.Linear(dim, flat), nn.SiLU(), nn.Unflatten(1, (widths[-1], sides[-1], sides[-1]))]
        for i in range(len(sides) - 1, 0, -1):
            up += [nn.Upsample(size=sides[i - 1]), nn.Conv2d(widths[i], widths[i - 1], 3, padding=1), nn.SiLU()]
        self.decoder = nn.Sequential(*up, nn.Conv2d(widths[0], channels, 3, padding=1))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction in [-1, 1] units of an input in 0..255."""
        return self.decoder(self.encoder(_unit(x)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[code, log mean squared reconstruction error, the same of the Laplacian (fine detail)]."""
        u = _unit(x)
        code = self.encoder(u)
        residual = self.decoder(code) - u
        error = residual.pow(2).flatten(1).mean(1, keepdim=True)
        fine = laplacian(residual).pow(2).flatten(1).mean(1, keepdim=True)
        return torch.cat([code, error.clamp_min(1e-12).log(), fine.clamp_min(1e-12).log()], dim=1)


def laplacian(x: torch.Tensor) -> torch.Tensor:
    """The 5-point Laplacian of each channel (replicated edges): the image's finest detail."""
    kernel = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]], device=x.device, dtype=x.dtype)
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    return F.conv2d(padded, kernel.expand(x.shape[1], 1, 3, 3).contiguous(), groups=x.shape[1])


class OfflineFeatures(nn.Module):
    """The extractor of one offline space: its parts' features concatenated, then standardised."""

    def __init__(self, space: str, channels: int, resolution: int, num_classes: int, classifier_dim: int,
                 autoencoder_dim: int):
        super().__init__()
        self.parts = nn.ModuleDict()
        if space in ("classifier", "hybrid"):
            self.parts["classifier"] = Classifier(channels, num_classes, classifier_dim)
        if space in ("autoencoder", "hybrid"):
            self.parts["autoencoder"] = AutoEncoder(channels, resolution, autoencoder_dim)
        width = classifier_dim * ("classifier" in self.parts) + (autoencoder_dim + 2) * ("autoencoder" in self.parts)
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("scale", torch.ones(width))

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([part.features(x) for part in self.parts.values()], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.raw(x) - self.mean) / self.scale

    @torch.no_grad()
    def standardise(self, images: np.ndarray, batch_size: int) -> None:
        """Set the mean and spread from the training images; a feature that barely varies there is divided by a
        small fraction of the average spread instead of its own (so it cannot blow up elsewhere)."""
        device = self.mean.device
        raw = torch.cat([self.raw(to_input(images[s : s + batch_size], device))
                         for s in range(0, len(images), batch_size)]).double()
        std = raw.std(0)
        self.mean.copy_(raw.mean(0))
        self.scale.copy_(std + 1e-3 * std.mean())


def fit(net: nn.Module, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], images: np.ndarray,
        labels: np.ndarray, epochs: int, batch_size: int, lr: float, device: torch.device, seed: int) -> nn.Module:
    """Adam on minibatches of (images, labels) in a seeded order; returns the net frozen, in eval mode."""
    order_rng = torch.Generator().manual_seed(seed)  # a seed of the offline_batches stream
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    y_all = torch.as_tensor(labels, dtype=torch.long)
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=order_rng).numpy()
        for start in range(0, len(order), batch_size):
            idx = np.sort(order[start : start + batch_size])
            value = loss(to_input(images[idx], device), y_all[idx].to(device))
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
    return net.eval().requires_grad_(False)


def train_classifier(images, labels, num_classes: int, feature_dim: int, epochs: int, batch_size: int, lr: float,
                     device: torch.device, seed: int) -> Classifier:
    seed_torch("offline_init", seed, 0)
    net = Classifier(images.shape[-1], num_classes, feature_dim).to(device)
    return fit(net, lambda x, y: F.cross_entropy(net(x), y), images, labels, epochs, batch_size, lr, device,
               seed_of("offline_batches", seed, 0))


def train_autoencoder(images, dim: int, epochs: int, batch_size: int, lr: float, device: torch.device,
                      seed: int) -> AutoEncoder:
    seed_torch("offline_init", seed, 1)
    net = AutoEncoder(images.shape[-1], images.shape[1], dim).to(device)
    return fit(net, lambda x, _: F.mse_loss(net.reconstruct(x), _unit(x)), images, np.zeros(len(images)), epochs,
               batch_size, lr, device, seed_of("offline_batches", seed, 1))


@torch.no_grad()
def predict(classifier: Classifier, images: np.ndarray, batch_size: int, device: torch.device) -> np.ndarray:
    """The classifier's class for each uint8 NHWC image."""
    return torch.cat([classifier(to_input(images[s : s + batch_size], device)).argmax(1).cpu()
                      for s in range(0, len(images), batch_size)]).numpy()
