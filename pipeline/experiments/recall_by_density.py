"""Where a row's recall is lost: prdc's recall counted within each fifth of the real manifold, from its densest to
its sparsest fifth (metrics.recall_by_density), for every sampled row of the run and the real floor, in the
primary feature space; the mean over each row's evaluation sets.

    python -m pipeline.experiments.recall_by_density    # after `dvc repro`: -> metrics/recall_by_density.json

A generator that seeks modes keeps the floor's recall where the real images are dense and loses it in the sparse
fifth (recall_tail, the last column, is in the metric suite of every row).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from pipeline.artifacts import write_json
from pipeline.config import load_params
from pipeline.datasets.prepared import PreparedData, load_prepared
from pipeline.evaluation.draws import generated_set
from pipeline.evaluation.metrics import TAIL, recall_by_density
from pipeline.evaluation.reference import floor_sets, load_reference
from pipeline.runtime import pick_device
from stages.fid import ROWS, SampleRow


def per_row(score: Callable[[Iterable[np.ndarray]], list[float]], prepared: PreparedData, set_size: int,
            num_sets: int) -> dict:
    """{row: score(its sets of uint8 images)} for the real floor (from `prepared`) and every sampled row of the run."""
    rows = {"real_floor": score(images for images, _ in floor_sets("data/reference", prepared, set_size))}
    for name in ROWS:
        sampled = SampleRow(name)
        rows[name] = score(sampled.read(generated_set(k, set_size))[0] for k in range(num_sets))
    return rows


def fifths_table(title: str, rows: dict[str, list[float]], bins: int) -> Table:
    """A row per sampled row, a column per share of the real manifold, densest first."""
    table = Table(title=title)
    table.add_column("row")
    for b in range(bins):
        table.add_column(f"fifth {b + 1}" + (" (densest)" if b == 0 else " (sparsest)" if b == bins - 1 else ""),
                         justify="right")
    for name, values in rows.items():
        table.add_row(name, *(f"{v:.3f}" for v in values))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="metrics/recall_by_density.json")
    args = parser.parse_args()
    params = load_params()
    e = params.evaluation
    reference = load_reference("data/reference", params, pick_device(params.device))
    space = next(s for s in reference.spaces if s.extractor.name == reference.info["primary"])
    bins = round(1 / TAIL)

    def row_recall(sets) -> list[float]:
        return np.mean([recall_by_density(space.ref.real, space.extractor.features(images, e.batch_size),
                                          e.nearest_k, bins) for images in sets], axis=0).tolist()

    rows = per_row(row_recall, load_prepared("data/prepared"), e.set_size, e.num_sets)
    write_json(args.out, {"space": space.extractor.name, "bins": bins, "order": "densest to sparsest",
                          "recall": rows})
    Console().print(fifths_table(f"recall within each fifth of the real manifold ({space.extractor.name} space)",
                                 rows, bins))


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
