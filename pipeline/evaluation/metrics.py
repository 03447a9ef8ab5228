"""The metric suite: what one set of images is scored with, in one feature space, and how sets are summarised.

Per set (features of its images against the reference of the space):
    fd             Frechet distance to the reference statistics (clean-fid's; FID in Inception space)
    kid            kernel inception distance, clean-fid's unbiased estimator: the mean over `kid_subsets`
                   random reference subsets of the set's size; kid_subset_sd is its spread over those subsets
    precision, recall, density, coverage
                   Naeem et al. 2020 with k = nearest_k, from the authors' `prdc` package; the real manifold
                   is the reference features (a seeded subset of the training split)
    recall_tail    recall over the sparsest fifth of the real manifold only (the real images whose k-th nearest
                   real neighbour is farthest, by prdc's own radii): where a generator that seeks modes loses its
                   recall first, while it still covers the dense regions as the real floor does
    nn_distance    mean distance of an image to its nearest reference (training) image
    copy_fraction  the fraction of images nearer a training image than all but `copy_quantile` of the
                   held-out real images are: near-copies of the training set
And, for class-conditional sets, class_consistency: the fraction the classifier assigns to the requested class.

A row (the real floor, a generated model, a picked set) is several disjoint sets; `summarise` reports each
metric's mean and its sd over sets, `against_floor` and `floor_sds` compare it with the floor's, `paired`
gives the per-set ratio of two rows scored on matched sets.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import joblib
import numpy as np
from cleanfid.fid import kernel_distance
from prdc import compute_prdc
from prdc.prdc import compute_nearest_neighbour_distances
from sklearn.metrics import pairwise_distances

from pipeline import randomness
from pipeline.evaluation.frechet import frechet_distance, moments

# name: the direction in which it is better (None: neither; e.g. nn_distance is low for copies, high for junk)
METRICS = {"fd": "lower", "kid": "lower", "precision": "higher", "recall": "higher", "recall_tail": "higher",
           "density": "higher", "coverage": "higher", "nn_distance": None, "copy_fraction": "lower"}
TAIL = 0.2  # recall_tail: the sparsest fifth of the real manifold
SET_METRICS = (*METRICS, "kid_subset_sd")  # what `score_set` returns


@dataclass(frozen=True)
class SpaceReference:
    """What a set is scored against in one feature space."""

    mu: np.ndarray  # reference statistics (training split, or given)
    sigma: np.ndarray
    real: np.ndarray  # reference features [m, d]: a seeded subset of the training split
    copy_threshold: float  # nearest-neighbour distance below which an image counts as a near-copy


def nearest_distances(features: np.ndarray, real: np.ndarray) -> np.ndarray:
    return pairwise_distances(features, real).min(axis=1)


def kid_per_subset(real: np.ndarray, features: np.ndarray, subsets: int, seed: int) -> np.ndarray:
    """clean-fid's kernel distance, one value per random subset. clean-fid draws its subsets from numpy's global
    RNG: it is seeded here (and restored after), so a set's KID is reproducible and sets scored with the same
    seed share their reference subsets. The mean equals clean-fid's kernel_distance(..., num_subsets=subsets)."""
    state = np.random.get_state()
    np.random.seed(randomness.seed_of("kid_subsets", seed))
    try:
        return np.array([kernel_distance(real, features, num_subsets=1) for _ in range(subsets)])
    finally:
        np.random.set_state(state)


def recall_by_density(real: np.ndarray, features: np.ndarray, nearest_k: int, bins: int) -> list[float]:
    """prdc's recall counted within each of `bins` equal shares of the real features, from the densest to the
    sparsest (by their k-NN radius among themselves, prdc's own real radii): a real image is recalled when it lies
    inside some generated image's k-NN ball."""
    fake_radii = compute_nearest_neighbour_distances(features, nearest_k)
    recalled = (pairwise_distances(real, features) < fake_radii[None, :]).any(axis=1)
    share = density_bins(real, nearest_k, bins)
    return [float(recalled[share == b].mean()) for b in range(bins)]


def density_bins(real: np.ndarray, nearest_k: int, bins: int) -> np.ndarray:
    """Each real feature's share of the manifold, 0 (densest) to bins - 1 (sparsest), by the rank of its k-NN radius
    among the real features themselves (prdc's real radii); equal shares."""
    radii = compute_nearest_neighbour_distances(real, nearest_k)
    return np.argsort(np.argsort(radii, kind="stable"), kind="stable") * bins // len(real)  # rank -> bin


def score_set(features: np.ndarray, ref: SpaceReference, kid_subsets: int, nearest_k: int, seed: int,
              jobs_backend: str | None = "sequential") -> dict:
    """Every metric of one set of features [n, d] (n > nearest_k). prdc asks scikit-learn for 8 jobs per distance
    matrix; on sets of hundreds that is mostly joblib's overhead, so they run under `jobs_backend` (None: joblib's
    default, prdc as it ships). The distances, and so the metrics, are the same (`benchmark --scoring` checks)."""
    jobs = joblib.parallel_config(backend=jobs_backend) if jobs_backend else contextlib.nullcontext()
    with jobs:
        kid = kid_per_subset(ref.real, features, kid_subsets, seed)
        with contextlib.redirect_stdout(io.StringIO()):  # prdc prints the set sizes
            prdc = compute_prdc(ref.real, features, nearest_k)
        nearest = nearest_distances(features, ref.real)
        tail = recall_by_density(ref.real, features, nearest_k, round(1 / TAIL))[-1]
    return {"fd": frechet_distance(moments(features), (ref.mu, ref.sigma)),
            "kid": float(kid.mean()), "kid_subset_sd": float(kid.std(ddof=1)) if len(kid) > 1 else 0.0,
            **{name: float(value) for name, value in prdc.items()},
            "recall_tail": tail,
            "nn_distance": float(nearest.mean()), "copy_fraction": float((nearest < ref.copy_threshold).mean())}


def class_consistency(predicted: np.ndarray, requested: np.ndarray) -> float:
    return float((np.asarray(predicted) == np.asarray(requested)).mean())


def mean_sd(values) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    values = np.asarray(values, np.float64)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else None


def summarise(per_set: list[dict]) -> dict:
    """{metric: mean, metric_sd: sd over sets} for every metric of the sets (KID's spread over its reference
    subsets, itself a spread, is averaged only)."""
    out = {}
    for name in per_set[0]:
        values = [values[name] for values in per_set]
        if name == "kid_subset_sd":
            out[name] = float(np.mean(values))
        else:
            out[name], out[f"{name}_sd"] = mean_sd(values)
    return out


def against_floor(row: dict, floor: dict) -> dict:
    """Each metric's mean as a ratio to the real floor's (KID, whose floor can be zero or negative for the
    class-balanced sets, as a difference)."""
    out = {}
    for name in (*METRICS, "class_consistency"):
        if name in row and name in floor:
            if name == "kid":
                out["kid_minus_floor"] = row[name] - floor[name]
            else:
                out[f"{name}_over_floor"] = row[name] / floor[name] if floor[name] > 0 else None
    return out


def floor_sds(row: dict, floor: dict) -> dict:
    """Each metric's difference from the real floor in units of the floor's sd over sets (None if it is 0)."""
    return {f"{name}_floor_sds": (row[name] - floor[name]) / floor[f"{name}_sd"] if floor.get(f"{name}_sd") else None
            for name in (*METRICS, "class_consistency") if name in row and name in floor}


def paired(per_set_a: list[dict], per_set_b: list[dict], names=("fd", "kid", "precision", "recall", "coverage")
           ) -> dict:
    """Per-set ratios a / b of two rows scored on matched sets (the same candidates, seeds or draws):
    {metric: mean ratio, metric_sd: its sd over sets}; KID, which can be zero or negative, as a difference."""
    out = {}
    for name in names:
        a = np.array([values[name] for values in per_set_a])
        b = np.array([values[name] for values in per_set_b])
        key, diff = (f"{name}_minus", a - b) if name == "kid" else (f"{name}_ratio", a / b)
        out[key], out[f"{key}_sd"] = mean_sd(diff)
    return out
