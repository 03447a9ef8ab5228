"""battery: sets of known quality scored by every metric, so that each metric is trusted only where it earns it.

The floor's held-out draws are blurred, noised, thinned to fewer distinct images per class, stripped of classes,
or swapped for training images; the teacher samples at decreasing network evaluations. Every set is scored
like the floor (pipeline/evaluation/battery.py says how each is made and which way each metric must move).
Writes metrics/battery.json (every set's metrics, each against the floor, and the verdicts) and a table.
"""

from rich.table import Table

from pipeline.artifacts import write_json
from pipeline.config import Params
from pipeline.datasets.encoders import load_encoder
from pipeline.datasets.prepared import load_prepared
from pipeline.evaluation.battery import real_sets, run_battery, teacher_sets
from pipeline.evaluation.reference import load_reference
from pipeline.networks.models import load_denoiser
from pipeline.runtime import Runtime
from pipeline.stage import console, run_stage

REFERENCE, METRICS = "data/reference", "metrics/battery.json"


def main(params: Params, runtime: Runtime) -> None:
    device = runtime.device
    data = load_prepared("data/prepared")
    reference = load_reference(REFERENCE, params, device)
    encoder = load_encoder("data/encoded", device)
    teacher, config = load_denoiser("data/pretrain/score", device, "pretrain")
    sets = real_sets(params, data, REFERENCE, reference.info)
    sets.update(teacher_sets(params, teacher, config, encoder.decode, runtime,
                             lambda text: console.print(f"battery: {text}")))
    result = run_battery(reference, sets, params, data.num_classes)
    primary = reference.info["primary"]
    write_json(METRICS, {"primary": primary, "floor_sets": params.evaluation.floor_sets,
                         "set_size": params.evaluation.set_size, **result})
    console.print(battery_table(result, primary))


def battery_table(result: dict, space: str) -> Table:
    """Each set's metrics as mean (difference from the floor in floor sds); the metrics that tell it apart."""
    names = ("fd", "kid", "precision", "recall", "density", "coverage", "nn_distance", "copy_fraction")
    verdict, floor = result["checks"][space], result["real_floor"]
    table = Table(title=f"sanity battery ({space} features): mean (difference from the floor in floor sds)")
    for column in ("set", *names, "class cons.", "told apart by"):
        table.add_column(column, justify="left" if column in ("set", "told apart by") else "right")

    def cell(row: dict, name: str) -> str:
        if name not in row:
            return "-"
        z = row.get(f"{name}_floor_sds")
        return f"{row[name]:.3g}" + ("" if z is None else f" ({z:+.1f})")
    table.add_row("real floor", *(cell(floor[space], n) for n in names), cell(floor, "class_consistency"), "")
    for name, separated in verdict["separated_by"].items():
        row = result[name]
        table.add_row(name, *(cell(row[space], n) for n in names), cell(row, "class_consistency"),
                      ", ".join(separated) or "[red]none")
    return table


if __name__ == "__main__":
    run_stage(main)
