"""fid: the metric suite on every sample row, beside the real floor drawn like them.

Each row is evaluation.num_sets disjoint sets of evaluation.set_size samples (sample i: seed + i, class
i mod num_classes); every metric is reported as its mean and sd over sets, against the floor (ratio of means,
difference in floor sds), with the row's pooled FD over all its sets. Under torchrun each process scores its
share of the sets. Writes metrics/fid.json (a `dvc metrics diff` row per metric) and metrics/fid_sets.csv
(every set's values).
"""

from pathlib import Path

import numpy as np

from pipeline.artifacts import load_arrays, read_json, require, write_csv, write_json
from pipeline.config import Params
from pipeline.errors import PipelineError
from pipeline.evaluation.draws import generated_set
from pipeline.evaluation.extractors import INCEPTION
from pipeline.evaluation.frechet import FeatureStats
from pipeline.evaluation.metrics import paired
from pipeline.evaluation.reference import Reference, load_reference, summarise_row
from pipeline.evaluation.report import metrics_table, set_rows
from pipeline.runtime import Runtime
from pipeline.stage import console, run_stage

ROWS = ("teacher", "generator_init", "generator", "generator_online")  # data/samples/<row>/, in report order
SAMPLES, METRICS, SETS = Path("data/samples"), "metrics/fid.json", "metrics/fid_sets.csv"


class SampleRow:
    """A sample row's images by sample index, read from its batch files."""

    def __init__(self, row: str):
        self.meta = read_json(require(SAMPLES / f"{row}.json", "sample"))
        self.files = [require(SAMPLES / row / f"batch-{k:05d}.npz", "sample") for k in range(self.meta["batches"])]
        self.batch = self.meta["batch_size"]

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        parts = [load_arrays(self.files[b]) for b in range(indices[0] // self.batch, indices[-1] // self.batch + 1)]
        images, labels = (np.concatenate([part[key] for part in parts]) for key in ("images", "labels"))
        offset = indices[0] // self.batch * self.batch
        return images[indices - offset], labels[indices - offset]


def score_row(reference: Reference, row: SampleRow, params: Params, runtime: Runtime) -> tuple[list[dict], dict]:
    """Every set's metrics, in set order, and the row's pooled Frechet distance per space."""
    e = params.evaluation
    pooled = {space.extractor.name: FeatureStats() for space in reference.spaces}  # a process may score no set
    mine = {k: reference.score(*row.read(generated_set(k, e.set_size)), params.seed + k, pooled)
            for k in runtime.share(e.num_sets)}
    per_set = {k: v for part in runtime.gather(mine) for k, v in part.items()}
    for stats in pooled.values():
        stats.merge(runtime)
    return [per_set[k] for k in range(e.num_sets)], reference.pooled_distances(pooled)


def inception_protocol(space: dict | None) -> dict:
    """Which Inception scored the FIDs: clean-fid's mode, the weights file (reference.inception_weights) and its
    sha256 (pipeline/evaluation/inception.py). Nothing without Inception."""
    if space is None:
        return {}
    return {"inception_mode": space["mode"], "inception_weights": space.get("weights", "cleanfid"),
            "inception_sha256": space.get("sha256")}


def main(params: Params, runtime: Runtime) -> None:
    reference = load_reference("data/reference", params, runtime.device)
    rows = {row: SampleRow(row) for row in ROWS}  # check every input before computing anything
    e, info = params.evaluation, reference.info
    for name, row in rows.items():
        if row.meta["num_samples"] != e.num_sets * e.set_size:
            raise PipelineError(f"data/samples/{name} holds {row.meta['num_samples']} samples, not evaluation."
                                f"num_sets x set_size = {e.num_sets * e.set_size}: rerun `dvc repro sample`")
    floor = reference.floor()
    per_set = {"real_floor": floor}
    summary = {"real_floor": {"num_samples": e.floor_sets * e.set_size, "nfe": 0, **summarise_row(floor)}}
    for space, value in info["floor_fd_pooled"].items():
        summary["real_floor"][space]["fd_pooled"] = value
    for name, row in rows.items():
        per_set[name], fd_pooled = score_row(reference, row, params, runtime)
        summary[name] = {"num_samples": row.meta["num_samples"], "nfe": row.meta["nfe"],
                         "seconds_per_image": row.meta["seconds_per_image"], **summarise_row(per_set[name], floor)}
        for space, value in fd_pooled.items():
            summary[name][space]["fd_pooled"] = value
    if not runtime.main:
        return
    primary = info["primary"]
    protocol = {
        "sets": f"{e.num_sets} disjoint sets of {e.set_size} per row; metrics are mean and sd over sets",
        "seeds": f"generated sample i draws its noise from seed {params.seed} + i; set k holds samples "
                 f"{e.set_size}k .. {e.set_size}(k+1) - 1",
        "labels": (f"class-balanced: sample i has class i mod {len(info['class_names'])}" if info["conditional"]
                   else "unconditional; the floor's draws follow the training split's class frequencies"),
        "floor": f"{e.floor_sets} disjoint draws of {e.set_size} held-out images with the same label counts",
        "reference": {space: value["stats_source"] for space, value in info["spaces"].items()},
        **inception_protocol(info["spaces"].get(INCEPTION)),
        "processes": runtime.world}
    write_json(METRICS, {"spaces": {space: value["distance"] for space, value in info["spaces"].items()},
                         "primary": primary, **summary,
                         # matched sets: the same noise seeds and labels (generator and teacher)
                         "generator_vs_teacher": paired([s[primary] for s in per_set["generator"]],
                                                        [s[primary] for s in per_set["teacher"]]),
                         "protocol": protocol})
    write_csv(SETS, set_rows(per_set))
    console.print(metrics_table(f"{info['spaces'][primary]['distance']} and the suite, mean ± sd over {e.num_sets} "
                                f"sets of {e.set_size} ({primary} features)", summary, primary))


if __name__ == "__main__":
    run_stage(main, distributed=True)
