"""The tail diagnostic (pipeline/experiments/critic_by_density.py): occupancy of the real manifold's fifths, and the
critic's logits and AUC per fifth."""

import numpy as np
import pytest
import torch

from pipeline.evaluation import metrics
from pipeline.experiments.critic_by_density import critic_by_bin, occupancy


def dense_and_sparse(rng, n_dense: int, n_sparse: int) -> np.ndarray:
    return np.concatenate([rng.normal(0, 0.3, size=(n_dense, 2)), rng.normal(6, 2.0, size=(n_sparse, 2))])


def test_density_bins_put_a_sparse_cluster_in_the_last_fifth():
    real = dense_and_sparse(np.random.default_rng(0), 400, 100)
    share = metrics.density_bins(real, 5, 5)
    assert np.bincount(share).tolist() == [100] * 5
    assert (share[400:] == 4).mean() > 0.9  # the sparse cluster is the sparsest fifth


def test_occupancy_tells_a_sampler_that_misses_the_tail_from_one_that_does_not():
    rng = np.random.default_rng(1)
    real = dense_and_sparse(rng, 400, 100)
    share = metrics.density_bins(real, 5, 5)
    fair = occupancy(real, dense_and_sparse(rng, 400, 100), share, 5)
    dense_only = occupancy(real, rng.normal(0, 0.3, size=(500, 2)), share, 5)
    assert sum(fair) == pytest.approx(1) and sum(dense_only) == pytest.approx(1)
    assert fair[-1] > 0.12 and dense_only[-1] < 0.02


def test_critic_by_bin_reads_each_fifths_logits_and_auc():
    """A 'ratio net' whose logit is the first coordinate: real samples are binned by their second coordinate, and
    each bin sits at its own first coordinate; at sigma 0 every figure is known exactly."""
    torch.manual_seed(0)
    bins = 4
    share = np.repeat(np.arange(bins), 50)
    real = torch.stack([torch.as_tensor(share, dtype=torch.float32) - 10.0, torch.zeros(200)], dim=1)
    fake = torch.zeros(200, 2)
    ratio = lambda x, s, labels: x[:, 0]  # noqa: E731
    (row,) = critic_by_bin(ratio, real, fake, None, share, bins, np.array([0.0]), batch_size=7)
    assert row["d_real"] == [-10.0, -9.0, -8.0, -7.0] and row["d_fake"] == 0.0
    assert row["auc"] == [1.0] * bins  # every generated logit above every real one
    (noisy,) = critic_by_bin(ratio, real, fake, None, share, bins, np.array([100.0]), batch_size=7)
    assert all(0.35 < a < 0.65 for a in noisy["auc"])  # swamped by noise: near chance
