"""The run's headline: the few figures `dvc exp show` and `dvc metrics diff` should answer with.

Per row of the default evaluation (the one-step generator, at initialisation and trained; the teacher; the real
floor) its Frechet distance in the primary space, recall and coverage, and the distance's ratio to the floor and
to the teacher (ratios of means); the verifier's paired gain (FD of the pick over a uniform pick among the same
candidates, mean and sd over candidate sets, at the largest N up to 8); stage 2's step time and peak memory. The
detailed reports stay in their own files (fid.json, scale.json, train.json), readable with
`dvc metrics show <file>`.
"""

from __future__ import annotations

VERIFIER_N = 8  # the verifier's gain is reported at this many candidates (or the most the run scored below it)


def _row(fid: dict, name: str, floor: dict, teacher: dict | None, distance: str, primary: str) -> dict:
    row = fid[name][primary]
    out = {distance: row["fd"], f"{distance}_x_floor": row["fd"] / floor["fd"]}
    if teacher is not None:
        out[f"{distance}_x_teacher"] = row["fd"] / teacher["fd"]
    return {**out, "recall": row["recall"], "recall_tail": row["recall_tail"], "coverage": row["coverage"]}


def headline(fid: dict, scale: dict, train: dict) -> dict:
    """{row: figures} from the fid, scale and train stages' metrics files."""
    primary = fid["primary"]
    distance = fid["spaces"][primary]  # fd_<space> offline, fid with Inception
    distance = "fid" if distance == "fid" else "fd"
    floor, teacher = fid["real_floor"][primary], fid["teacher"][primary]
    out = {"generator": {**_row(fid, "generator", floor, teacher, distance, primary),
                         "kid": fid["generator"][primary]["kid"],
                         "precision": fid["generator"][primary]["precision"]},
           "generator_init": _row(fid, "generator_init", floor, teacher, distance, primary),
           "teacher": _row(fid, "teacher", floor, None, distance, primary),
           "real_floor": {distance: floor["fd"], "recall": floor["recall"], "recall_tail": floor["recall_tail"],
                          "coverage": floor["coverage"]}}
    scored = [int(key[1:]) for key in scale if key.startswith("n") and key[1:].isdigit()]
    n = max((k for k in scored if k <= VERIFIER_N), default=1)
    if n > 1:
        gain = scale[f"n{n}"]["pick_over_uniform"]
        out["verifier"] = {"candidates": n, f"{distance}_pick_x_uniform": gain["fd_ratio"],
                           f"{distance}_pick_x_uniform_sd": gain["fd_ratio_sd"]}
    out["train"] = {"seconds_per_step": train["seconds_per_step"], "peak_memory_mib": train["peak_memory_mib"]}
    return out
