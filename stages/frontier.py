"""frontier: quality against network evaluations per output -- the teacher's Heun sampler beside the one-step
generator picking among N candidates with the verifier.

Reads the points the teacher_steps stage (data/teacher_steps) and the scale stage (data/scaled) scored on matched
sets, and writes metrics/frontier.json (every point: cost, the metric suite as mean ± sd over sets, and its
per-set ratio to the teacher at its most evaluations) and one plotted line per sampler
(metrics/frontier_teacher.csv, metrics/frontier_one_step.csv). pipeline/evaluation/frontier.py says how points
are matched and costed.
"""

from rich.table import Table

from pipeline.artifacts import read_json, write_csv, write_json
from pipeline.config import Params
from pipeline.evaluation.frontier import CURVE, curve_rows, frontier, read_points, reference_name
from pipeline.evaluation.report import cell
from pipeline.runtime import Runtime
from pipeline.stage import console, run_stage

METRICS, CURVES = "metrics/frontier.json", "metrics/frontier_{}.csv"


def main(params: Params, runtime: Runtime) -> None:
    space = read_json("data/reference/reference.json")["primary"]
    teacher = read_points("data/teacher_steps", "nfe*.json", "teacher_steps")
    one_step = read_points("data/scaled", "n*.json", "scale")
    rows = frontier(teacher, one_step, space)
    reference = reference_name(teacher)
    for sampler in ("teacher", "one_step"):
        write_csv(CURVES.format(sampler), curve_rows(rows, sampler, space, reference))
    write_json(METRICS, {"space": space, "reference": reference, **rows})
    console.print(frontier_table(rows, space, reference))


def frontier_table(rows: dict[str, dict], space: str, reference: str) -> Table:
    table = Table(title=f"quality against network evaluations per output: mean ± sd over sets ({space} features); "
                        f"FD paired with {reference}")
    for column in ("point", "NFE", "s / output", *CURVE, "FD / reference"):
        table.add_column(column, justify="left" if column == "point" else "right")
    for name, row in rows.items():
        values, vs = row[space], row[f"vs_{reference}"]
        table.add_row(name, str(row["nfe"]), f"{row['seconds_per_output']:.2g}",
                      *(cell(values, m) for m in CURVE), cell(vs, "fd_ratio", ".3f"))
    return table


if __name__ == "__main__":
    run_stage(main)
