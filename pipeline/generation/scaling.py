"""Inference-time scaling with the ratio net as verifier: no extra training, no external reward.

For each output, draw N candidates x_j = G(z_j, c) and score log w_j = -d(x_j, s_eval, c), an estimate of
log p/q. Self-normalised importance resampling picks one with probabilities softmax(log w / tau): tau = 1
corrects q toward p (exactly, as N grows, when d is exact); tau -> 0 is best-of-N. The pick uses the
Gumbel-max trick, argmax_j(log w_j / tau + g_j), with g drawn from each output's own seed, so the result
does not depend on the batch size; candidate j of output i uses noise seed `seed + i + j * num_outputs`, so
candidate 0 is the unscaled generator's sample i, and the candidates for N are those for 2N's first half.

Every call also returns a control: a uniformly random pick among the same candidates (the verifier
ignored). It is an unscaled sample of its own, so FD(picked) against FD(control) isolates what the verifier
did from the evaluation noise of FD itself.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from pipeline import randomness
from pipeline.generation.sampling import balanced_labels, seeded_noise


def gumbel_noise(seed: int, outputs: np.ndarray, num_candidates: int) -> torch.Tensor:
    """Standard Gumbel draws, one row per output, from a stream keyed by (seed, output index)."""
    rows = [randomness.rng("scaling_picks", seed, int(i)).gumbel(size=num_candidates) for i in outputs]
    return torch.as_tensor(np.stack(rows), dtype=torch.float32)


def resampling_probabilities(log_w: torch.Tensor, tau: float) -> torch.Tensor:
    """softmax(log w / tau) over each row's candidates; tau = 0 puts all mass on the best one."""
    if tau == 0:
        return torch.nn.functional.one_hot(log_w.argmax(1), log_w.shape[1]).to(log_w.dtype)
    return torch.softmax(log_w / tau, dim=1)


def pick(log_w: torch.Tensor, tau: float, gumbel: torch.Tensor) -> torch.Tensor:
    """Indices drawn from resampling_probabilities(log_w, tau), one per row (Gumbel-max)."""
    return log_w.argmax(1) if tau == 0 else (log_w / tau + gumbel.to(log_w.device)).argmax(1)


def effective_sample_size(probs: torch.Tensor) -> torch.Tensor:
    """1 / sum p^2 per row: N for uniform weights, 1 when one candidate takes all the mass."""
    return 1 / probs.pow(2).sum(1)


@torch.no_grad()
def scaled_generate(generator: Callable, log_weight: Callable | None, num: int, num_candidates: int, tau: float,
                    batch_size: int, seed: int, shape: tuple[int, ...], num_classes: int, device: torch.device
                    ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, float]:
    """`num` outputs, each picked from `num_candidates` generator samples of its class by `log_weight(x, c)`.
    Returns the picks and the uniform-pick control (model space, on CPU), labels and the mean effective
    sample size of the weights."""
    out, control, ess = [], [], []
    for start in range(0, num, batch_size):
        idx = np.arange(start, min(start + batch_size, num))
        labels = balanced_labels(idx, num_classes, device)
        candidates = [generator(seeded_noise(seed + idx + j * num, shape, device), labels)
                      for j in range(num_candidates)]
        stacked = torch.stack([x.cpu() for x in candidates], dim=1)
        rows = torch.arange(len(idx))
        gumbel = gumbel_noise(seed, idx, num_candidates)
        control.append(stacked[rows, gumbel.argmax(1)])  # log w = 0 for all: a uniform pick
        if num_candidates == 1:
            out.append(stacked[:, 0])
            ess.append(torch.ones(len(idx)))
            continue
        log_w = torch.stack([log_weight(x, labels) for x in candidates], dim=1).float().cpu()
        out.append(stacked[rows, pick(log_w, tau, gumbel)])
        ess.append(effective_sample_size(resampling_probabilities(log_w, tau)))
    labels = np.arange(num) % num_classes if num_classes else np.zeros(num, np.int64)
    return torch.cat(out), torch.cat(control), labels.astype(np.int64), float(torch.cat(ess).mean())
