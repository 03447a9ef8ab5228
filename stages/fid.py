"""fid: FID (clean-fid Inception) or FD (trained extractor) of every sample row, next to the real-data floor."""

from rich.table import Table

from pipeline.artifacts import load_arrays, read_json, require, write_json
from pipeline.config import Params
from pipeline.fid import frechet_distance, load_reference, statistics
from pipeline.stage import console, pick_device, run_stage

ROWS = ("teacher", "generator_init", "generator", "generator_online")  # data/samples/<row>.npz, in report order
METRICS = "metrics/fid.json"


def main(params: Params) -> None:
    device = pick_device(params.device)
    extractor, ref, info = load_reference("data/reference", device)
    for row in ROWS:  # check every input before computing anything
        require(f"data/samples/{row}.npz", "sample")
    metric = extractor.metric
    rows = {"real_floor": {metric: info["floor"], "num_samples": info["num_holdout"], "nfe": 0}}
    for row in ROWS:
        meta = read_json(f"data/samples/{row}.json")
        images = load_arrays(f"data/samples/{row}.npz", "sample")["images"]
        value = frechet_distance(statistics(extractor.features(images, params.fid.batch_size)), ref)
        rows[row] = {metric: value, "num_samples": meta["num_samples"], "nfe": meta["nfe"],
                     "seconds_per_image": meta["seconds_per_image"]}
    ratios = {f"{row}_over_floor": rows[row][metric] / info["floor"] for row in ROWS}
    write_json(METRICS, {"metric": metric, "extractor": extractor.name, "num_reference": info["num_reference"],
                         **rows, **ratios})
    table = Table(title=f"{metric} against {info['num_reference']} training images "
                        f"({'Inception' if extractor.name == 'inception' else 'trained extractor: FD, not FID'})")
    for column in ("row", metric, "x floor", "samples", "NFE", "s / image"):
        table.add_column(column, justify="left" if column == "row" else "right")
    for row, values in rows.items():
        table.add_row(row, f"{values[metric]:.4g}", f"{values[metric] / info['floor']:.2f}", str(values["num_samples"]),
                      str(values["nfe"]), f"{values.get('seconds_per_image', 0):.4f}" if "seconds_per_image" in values else "")
    console.print(table)


if __name__ == "__main__":
    run_stage(main)
