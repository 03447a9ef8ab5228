"""The inference-time frontier: quality against network evaluations per output, for samplers scored on matched sets.

A point is one sampler at one cost, as its stage wrote it (`point`): the teacher's Heun sampler at some number of
network evaluations (stage teacher_steps), or the one-step generator picking among N candidates with the verifier
(stage scale). Set k of every point holds the same labels and is scored with the same KID reference subsets, so
points are compared set by set (`paired`) with the reference point: the teacher at its most evaluations. A point's
cost is its network evaluations per output -- the teacher's NFE; N generator and, for N > 1, N ratio-net
evaluations for the one-step generator, a bound from above, as the ratio net is the score net's encoder half --
and its measured seconds per output.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.artifacts import read_json, require
from pipeline.errors import PipelineError
from pipeline.evaluation.metrics import paired
from pipeline.evaluation.reference import summarise_row

CURVE = ("fd", "kid", "precision", "recall", "coverage")  # the plotted metrics, each with its sd over sets
LAYOUT = ("num_sets", "set_size", "seed")  # what must agree for two points' sets to be matched


def layout(num_sets: int, set_size: int, seed: int) -> dict:
    """The LAYOUT of a stage's sets, written with every point it scores."""
    return dict(zip(LAYOUT, (num_sets, set_size, seed)))


def reference_name(teacher: list[dict]) -> str:
    """The point every other is paired with: the teacher at its most evaluations."""
    return f"teacher_nfe{max(p['nfe'] for p in teacher)}"


def point(sampler: str, nfe: int, seconds_per_output: float, sets: list[dict], sets_layout: dict, **cost) -> dict:
    """One point as a stage writes it: its cost, its layout and every set's metrics."""
    return {"sampler": sampler, "nfe": nfe, "seconds_per_output": seconds_per_output, **cost, **sets_layout,
            "sets": sets}


def one_step_cost(num_candidates: int) -> dict:
    """Network evaluations per output of a pick among N candidates: N generator evaluations, and N ratio-net
    evaluations unless N = 1 (the unscaled generator scores nothing)."""
    n = num_candidates
    return {"num_candidates": n, "generator_evals": n, "ratio_evals": n if n > 1 else 0}


def read_points(folder: str | Path, pattern: str, produced_by: str) -> list[dict]:
    files = sorted(Path(require(folder, produced_by)).glob(pattern))
    if not files:
        raise PipelineError(f"{folder} holds no {pattern}: rerun `dvc repro {produced_by}`")
    return [read_json(f) for f in files]


def frontier(teacher: list[dict], one_step: list[dict], space: str) -> dict[str, dict]:
    """Every point summarised (mean and sd over sets) and paired with the teacher at its most evaluations:
    {name: row}, teacher points by NFE, then one-step points by N."""
    layouts = {tuple(p[key] for key in LAYOUT) for p in (*teacher, *one_step)}
    if len(layouts) != 1:
        raise PipelineError(f"the points are not scored on matched sets ({', '.join(LAYOUT)} differ: "
                            f"{sorted(layouts)}): rerun `dvc repro teacher_steps scale`")
    best = max(teacher, key=lambda p: p["nfe"])
    versus = f"vs_{reference_name(teacher)}"
    rows = {}
    for p in sorted(teacher, key=lambda p: p["nfe"]) + sorted(one_step, key=lambda p: p["num_candidates"]):
        name = f"teacher_nfe{p['nfe']}" if p["sampler"] == "teacher" else f"one_step_n{p['num_candidates']}"
        rows[name] = {key: value for key, value in p.items() if key != "sets"}
        rows[name].update(summarise_row(p["sets"]))
        rows[name][versus] = paired([s[space] for s in p["sets"]], [s[space] for s in best["sets"]])
    return rows


def curve_rows(rows: dict[str, dict], sampler: str, space: str, reference: str) -> list[dict]:
    """The plotted lines of one sampler: cost, each metric with its sd, the paired FD ratio to the reference."""
    out = []
    for row in rows.values():
        if row["sampler"] != sampler:
            continue
        line = {"nfe": row["nfe"], **({"num_candidates": row["num_candidates"]} if "num_candidates" in row else {}),
                "seconds_per_output": row["seconds_per_output"]}
        for name in CURVE:
            line[name], line[f"{name}_sd"] = row[space][name], row[space][f"{name}_sd"]
        vs = row[f"vs_{reference}"]
        out.append({**line, "fd_vs_teacher": vs["fd_ratio"], "fd_vs_teacher_sd": vs["fd_ratio_sd"]})
    return out
