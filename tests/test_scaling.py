"""Inference-time scaling: importance resampling with the exact log ratio turns samples of q into samples
of p, picks are independent of the batch size, and candidate 0 is the unscaled generator's sample."""

import math

import numpy as np
import pytest
import torch

from pipeline.generation.sampling import seeded_noise
from pipeline.generation.scaling import (
    effective_sample_size,
    gumbel_noise,
    pick,
    resampling_probabilities,
    scaled_generate,
)

MU_P, STD_P = 1.0, 0.6  # p = N(1, 0.6^2); candidates come from q = N(0, 1)


def log_ratio(x):
    """log p(x) - log q(x), exact."""
    return -0.5 * ((x - MU_P) / STD_P) ** 2 - math.log(STD_P) + 0.5 * x**2


def resample(num_candidates, tau, n=20000):
    x = torch.randn(n, num_candidates, generator=torch.Generator().manual_seed(num_candidates))
    chosen = pick(log_ratio(x), tau, gumbel_noise(0, np.arange(n), num_candidates))
    return x[torch.arange(n), chosen]


def test_importance_resampling_with_the_exact_ratio_turns_q_into_p():
    errors = []
    for num_candidates in (1, 4, 16, 64):
        y = resample(num_candidates, tau=1.0)
        errors.append(abs(y.mean().item() - MU_P) + abs(y.std().item() - STD_P))
    assert errors[0] > 1.0  # N = 1 is q itself
    assert errors == sorted(errors, reverse=True), errors
    assert errors[-1] < 0.05, errors


def test_zero_temperature_is_best_of_n():
    log_w = torch.randn(50, 8)
    gumbel = gumbel_noise(0, np.arange(50), 8)
    assert torch.equal(pick(log_w, 0.0, gumbel), log_w.argmax(1))
    assert torch.equal(resampling_probabilities(log_w, 0.0).argmax(1), log_w.argmax(1))
    assert resampling_probabilities(log_w, 0.0).sum(1).eq(1).all()


def test_effective_sample_size_spans_one_to_n():
    assert effective_sample_size(resampling_probabilities(torch.zeros(3, 8), 1.0)).tolist() == pytest.approx([8.0] * 3)
    assert effective_sample_size(resampling_probabilities(torch.tensor([[0.0, 100.0]]), 1.0)).item() == pytest.approx(1)


def test_scaled_generation_is_batch_size_independent_and_n1_is_the_plain_sample():
    def generator(z, labels):
        return 2 * z + labels.view(-1, 1, 1, 1)

    def log_weight(x, labels):
        return -x.flatten(1).pow(2).sum(1)

    shape, device = (1, 2, 2), torch.device("cpu")
    runs = [scaled_generate(generator, log_weight, 10, 4, 1.0, batch, 7, shape, 3, device) for batch in (3, 10)]
    for a, b in zip(runs[0][:3], runs[1][:3]):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert runs[0][2].tolist() == [i % 3 for i in range(10)]
    plain, control, labels, ess = scaled_generate(generator, None, 10, 1, 1.0, 4, 7, shape, 3, device)
    expected = 2 * seeded_noise(7 + np.arange(10), shape, device) + torch.as_tensor(labels).view(-1, 1, 1, 1)
    assert torch.equal(plain, expected) and torch.equal(control, expected) and ess == 1.0
    # every pick (and every control pick) is one of its output's own candidates, of its own class
    for i in range(10):
        candidates = [generator(seeded_noise(np.array([7 + i + j * 10]), shape, device), torch.tensor([i % 3]))
                      for j in range(4)]
        assert any(torch.equal(runs[0][0][i], c[0]) for c in candidates)
        assert any(torch.equal(runs[0][1][i], c[0]) for c in candidates)
