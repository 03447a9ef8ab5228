"""fid: FID (clean-fid Inception) or FD (trained extractor) of every sample row, next to the real-data floor.

Each process extracts features from its share of a row's sample batches; the feature statistics (count,
sum, sum of outer products) are summed over processes, so the score does not depend on their number.
metrics/fid.json records the protocol with the scores: sample count, seeds, labels, reference.
"""

from pathlib import Path

from rich.table import Table

from pipeline.artifacts import load_arrays, read_json, require, write_json
from pipeline.config import Params
from pipeline.evaluation.fid import frechet_distance, load_reference
from pipeline.runtime import Runtime
from pipeline.stage import console, run_stage

ROWS = ("teacher", "generator_init", "generator", "generator_online")  # data/samples/<row>/, in report order
SAMPLES, METRICS = Path("data/samples"), "metrics/fid.json"


def row_batches(row: str) -> list[Path]:
    meta = read_json(require(SAMPLES / f"{row}.json", "sample"))
    files = [SAMPLES / row / f"batch-{k:05d}.npz" for k in range(meta["batches"])]
    for path in files:
        require(path, "sample")
    return files


def main(params: Params, runtime: Runtime) -> None:
    extractor, ref, info = load_reference("data/reference", runtime.device)
    batches = {row: row_batches(row) for row in ROWS}  # check every input before computing anything
    metric = extractor.metric
    rows = {"real_floor": {metric: info["floor"], "num_samples": info["num_holdout"], "nfe": 0}}
    for row, files in batches.items():
        mine = (load_arrays(files[k])["images"] for k in runtime.share(len(files)))
        stats = extractor.feature_stats(mine, params.fid.batch_size).merge(runtime)
        meta = read_json(SAMPLES / f"{row}.json")
        rows[row] = {metric: frechet_distance(stats.mu_sigma(), ref), "num_samples": stats.count, "nfe": meta["nfe"],
                     "seconds_per_image": meta["seconds_per_image"]}
    if not runtime.main:
        return
    num_classes = read_json("data/encoded/encoder.json")["num_classes"]
    num = params.sample.num_samples
    protocol = {"seeds": f"sample i draws its noise from seed {params.seed} + i, i < {num}",
                "labels": f"balanced: sample i has class i mod {num_classes}" if num_classes else "unconditional",
                "reference": info.get("stats_source", f"training split ({info['num_reference']} images)"),
                "extractor": extractor.name, "processes": runtime.world}
    ratios = {f"{row}_over_floor": rows[row][metric] / info["floor"] for row in ROWS}
    write_json(METRICS, {"metric": metric, "extractor": extractor.name, "num_reference": info["num_reference"],
                         **rows, **ratios, "protocol": protocol})
    table = Table(title=f"{metric} against {protocol['reference']} "
                        f"({'Inception' if extractor.name == 'inception' else 'trained extractor: FD, not FID'})")
    for column in ("row", metric, "x floor", "samples", "NFE", "s / image"):
        table.add_column(column, justify="left" if column == "row" else "right")
    for row, values in rows.items():
        table.add_row(row, f"{values[metric]:.4g}", f"{values[metric] / info['floor']:.2f}", str(values["num_samples"]),
                      str(values["nfe"]), f"{values.get('seconds_per_image', 0):.4f}" if "seconds_per_image" in values else "")
    console.print(table)


if __name__ == "__main__":
    run_stage(main, distributed=True)
