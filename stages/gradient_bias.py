"""gradient_bias: each method's generator-gradient error against the exact gradient on a mixture of Gaussians,
as its auxiliary networks' training budget grows -> metrics/gradient_bias.{json,csv} and a table.

Needs no data and no other stage: the target is analytic (pipeline/experiments/gradient_bias.py).
"""

import statistics
from collections import defaultdict

from rich.table import Table

from pipeline.artifacts import write_csv, write_json
from pipeline.config import Params
from pipeline.experiments import gradient_bias
from pipeline.runtime import Runtime
from pipeline.stage import console, run_stage

METRICS, CURVE = "metrics/gradient_bias.json", "metrics/gradient_bias.csv"


def main(params: Params, runtime: Runtime) -> None:  # analytic, on the CPU: the runtime is unused
    p = params.gradient_bias
    rows = [row for seed in p.seeds for row in gradient_bias.run(p, seed)]
    groups: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for row in rows:
        groups[row["method"], row["budget"]].append(row)
    summary: dict[str, dict] = defaultdict(dict)
    curve = {budget: {"budget": budget} for budget in p.budgets}
    for (method, budget), runs in groups.items():
        stats = {}
        for key in ("cosine", "relative_error"):
            values = [r[key] for r in runs]
            stats[f"{key}_mean"] = statistics.fmean(values)
            stats[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
            curve[budget][f"{method}_{key}"] = stats[f"{key}_mean"]
        terciles = list(zip(*(r["relative_error_by_noise_tercile"] for r in runs)))
        stats["relative_error_by_noise_tercile_mean"] = [statistics.fmean(t) for t in terciles]
        summary[method][f"steps_{budget}"] = stats
    edges = [statistics.fmean(e) for e in zip(*(r["tercile_edges"] for r in rows))]
    write_json(METRICS, {"seeds": p.seeds, "noise_tercile_edges": edges, **summary, "runs": rows})
    write_csv(CURVE, list(curve.values()))
    table = Table(title=f"generator-gradient error vs the exact gradient (mean ± std over {len(p.seeds)} seeds)")
    table.add_column("method")
    for budget in p.budgets:
        table.add_column(f"{budget} steps: cos / rel. err", justify="right")
    for method, by_budget in summary.items():
        table.add_row(method, *(f"{s['cosine_mean']:.3f} / {s['relative_error_mean']:.3f}±{s['relative_error_std']:.3f}"
                                for s in by_budget.values()))
    console.print(table)
    last = f"steps_{p.budgets[-1]}"
    table = Table(title=f"error of each noise-level tercile's share, / |true gradient|, at {p.budgets[-1]} steps")
    table.add_column("method")
    for lo, hi in zip([p.noise.sigma_min, *edges], [*edges, p.noise.sigma_max]):
        table.add_column(f"s in [{lo:.3g}, {hi:.3g})", justify="right")
    for method, by_budget in summary.items():
        table.add_row(method, *(f"{e:.3f}" for e in by_budget[last]["relative_error_by_noise_tercile_mean"]))
    console.print(table)


if __name__ == "__main__":
    run_stage(main)
