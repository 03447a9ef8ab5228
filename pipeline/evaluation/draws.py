"""Which images make up each evaluated set, so that real and generated sets are drawn alike.

A generated row is `num_sets` disjoint sets of `set_size` images, the floor `floor_sets` of them. A generated
row's set k holds samples k * set_size ... (k + 1) * set_size - 1; sample i has class i mod num_classes, so
with set_size a multiple of the class count every set is exactly class-balanced. A real row (the floor, and
the battery's sets built from it) draws each set with the same label counts from a pool of real images:
balanced for class-conditional models, in the training split's class proportions for unconditional ones; the
draws do not share an image.
"""

from __future__ import annotations

import numpy as np

from pipeline import randomness
from pipeline.errors import PipelineError


def label_counts(set_size: int, train_labels: np.ndarray, num_classes: int, balanced: bool) -> np.ndarray:
    """Images of each class in one set: set_size / num_classes each when balanced, else proportional to the
    training split's class frequencies (largest remainders)."""
    if balanced:
        if set_size % num_classes:
            raise PipelineError(f"evaluation.set_size = {set_size} is not a multiple of the {num_classes} classes: "
                                "generated sets would not be class-balanced; use a multiple of the class count")
        return np.full(num_classes, set_size // num_classes, np.int64)
    share = np.bincount(train_labels, minlength=num_classes) / len(train_labels) * set_size
    counts = np.floor(share).astype(np.int64)
    counts[np.argsort(counts - share, kind="stable")[: set_size - counts.sum()]] += 1
    return counts


def disjoint_draws(labels: np.ndarray, counts: np.ndarray, num_sets: int, seed: int, pool: str,
                   class_names: list[str]) -> list[np.ndarray]:
    """`num_sets` disjoint draws of positions into `labels` (a pool of real images), each with counts[c] images of
    class c: set k takes the k-th block of each class's seeded permutation. Positions come sorted."""
    rng = randomness.rng("evaluation_draws", seed)
    blocks = []
    for c, count in enumerate(counts):
        members = np.flatnonzero(labels == c)
        if len(members) < num_sets * count:
            raise PipelineError(
                f"{num_sets} disjoint sets of {count} '{class_names[c]}' images need {num_sets * count} in the "
                f"{pool}, which holds {len(members)}: raise prepare.holdout, or lower evaluation.set_size or "
                "evaluation.floor_sets")
        blocks.append(rng.permutation(members)[: num_sets * count].reshape(num_sets, count))
    return [np.sort(np.concatenate([block[k] for block in blocks])) for k in range(num_sets)]


def generated_set(k: int, set_size: int) -> np.ndarray:
    """Sample indices of generated set k."""
    return np.arange(k * set_size, (k + 1) * set_size)
