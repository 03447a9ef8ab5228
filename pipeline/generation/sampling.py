"""Generation: the EDM Heun sampler (the multi-step teacher) and seeded, batch-size-independent drawing.

Sample i uses its own generator seeded with `seed + i` for its noise, and label `i mod num_classes`
(a balanced label protocol), so the images do not depend on the batch size or the number of processes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import torch

from pipeline.evaluation.draws import generated_set
from pipeline.training.measure import StepTimer


@torch.no_grad()
def edm_heun(denoiser: Callable, noise: torch.Tensor, labels: torch.Tensor | None, sigmas: torch.Tensor) -> torch.Tensor:
    """Deterministic Heun (2nd order) integration of the probability-flow ODE from sigmas[0] to 0."""
    x = noise.double() * sigmas[0]
    for s_cur, s_next in zip(sigmas[:-1], sigmas[1:]):
        d_cur = (x - denoiser(x.float(), float(s_cur), labels).double()) / s_cur
        x_next = x + (s_next - s_cur) * d_cur
        if s_next > 0:  # second-order correction, skipped on the last step to sigma = 0
            d_next = (x_next - denoiser(x_next.float(), float(s_next), labels).double()) / s_next
            x_next = x + (s_next - s_cur) * (d_cur + d_next) / 2
        x = x_next
    return x.float()


def seeded_noise(seeds: np.ndarray, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]).to(device)


def balanced_labels(indices: np.ndarray, num_classes: int, device: torch.device) -> torch.Tensor | None:
    return torch.as_tensor(indices % num_classes, dtype=torch.long, device=device) if num_classes else None


def generate_batch(draw: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor], indices: np.ndarray, seed: int,
                   shape: tuple[int, ...], num_classes: int, device: torch.device) -> tuple[torch.Tensor, np.ndarray]:
    """draw(unit noise, labels) for the samples `indices`: model-space samples and their labels."""
    labels = balanced_labels(indices, num_classes, device)
    out = draw(seeded_noise(seed + indices, shape, device), labels)
    return out, (indices % num_classes if num_classes else np.zeros(len(indices))).astype(np.int64)


def batch_indices(num: int, batch_size: int, batch: int) -> np.ndarray:
    """The sample indices of batch number `batch` of `num` samples."""
    return np.arange(batch * batch_size, min(num, (batch + 1) * batch_size))


def heun_sets(denoiser: Callable, sigmas: torch.Tensor, num_sets: int, set_size: int, seed: int,
              shape: tuple[int, ...], num_classes: int, decode: Callable[[torch.Tensor], np.ndarray],
              device: torch.device, autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
              ) -> tuple[list[tuple[np.ndarray, np.ndarray]], float]:
    """The denoiser through Heun at `sigmas`, one batch per set: set k holds generated set k's samples (their
    seeds and labels), decoded to images. Also returns the seconds spent generating (decoding left out)."""
    sets, seconds = [], 0.0
    for k in range(num_sets):
        with StepTimer(device) as timer, autocast():
            latents, labels = generate_batch(lambda z, c: edm_heun(denoiser, z, c, sigmas), generated_set(k, set_size),
                                             seed, shape, num_classes, device)
        seconds += timer.seconds
        sets.append((decode(latents), labels))
    return sets, seconds
