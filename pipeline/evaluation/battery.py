"""The sanity battery: sets of known quality, each scored by every metric like the real floor it is compared with.

A metric earns trust here before it is trusted on models. Every degraded set is built from the floor's own
draws (set k from floor set k: the same images, the same label counts), so the comparison is paired:

    blur            Gaussian blur of sigma pixels
    noise           Gaussian pixel noise of sigma grey levels (rounded, clipped to 0..255)
    diversity       only a fraction of the distinct images of each class, each repeated to fill the set
    one_per_class   one image per class, repeated: a generator collapsed to a point per class
    dropped         the images of the first j classes (a fixed seeded order) replaced by held-out images of the
                    other classes, the requested labels unchanged: a generator that cannot draw j classes
    copies          draws from the training split with the same label counts: a generator that memorised
And the teacher through Heun at decreasing network evaluations, with the generated rows' seeds and labels.

Each ladder runs from the floor (or the best teacher) to its most severe set; EXPECTED says which way each
metric must move along it. A metric with no entry for a ladder has no direction that theory commits to
(e.g. precision when diversity drops, recall under noise, which spreads the samples).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from pipeline import randomness
from pipeline.config import BatteryParams, Params
from pipeline.datasets.prepared import HOLDOUT, TRAIN, PreparedData
from pipeline.errors import PipelineError
from pipeline.evaluation.draws import disjoint_draws
from pipeline.evaluation.metrics import floor_sds
from pipeline.evaluation.reference import Reference, floor_sets, summarise_row
from pipeline.generation.sampling import heun_sets
from pipeline.noise_levels import heun_sigmas
from pipeline.runtime import Runtime

RISES, FALLS = 1, -1
FIDELITY = {"fd": RISES, "kid": RISES, "precision": FALLS, "density": FALLS, "coverage": FALLS, "nn_distance": RISES}
EXPECTED = {  # ladder: {metric: the direction it must move as the sets get worse}
    "blur": {**FIDELITY, "class_consistency": FALLS},
    "noise": FIDELITY,
    "diversity": {"fd": RISES, "kid": RISES, "recall": FALLS, "coverage": FALLS},
    "dropped_classes": {"fd": RISES, "kid": RISES, "recall": FALLS, "coverage": FALLS, "class_consistency": FALLS},
    "teacher_nfe": {**FIDELITY, "class_consistency": FALLS},
    "copies": {"nn_distance": FALLS, "copy_fraction": RISES},  # against the floor (a single set, not a ladder)
}
SEPARATION = 3.0  # a set is told apart from the floor by a metric that moves more than this many floor sds


def blur(images: np.ndarray, sigma: float) -> np.ndarray:
    out = gaussian_filter(images.astype(np.float64), sigma=(0, sigma, sigma, 0))
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def add_noise(images: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return np.clip(np.round(images + rng.normal(0, sigma, images.shape)), 0, 255).astype(np.uint8)


def fewer_distinct(images: np.ndarray, labels: np.ndarray, fraction: float | None) -> np.ndarray:
    """Each class keeps round(fraction x its count) distinct images (at least one; None: exactly one), repeated
    in turn to fill its places."""
    out = images.copy()
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        keep = 1 if fraction is None else max(1, round(len(rows) * fraction))
        out[rows] = images[rows[np.arange(len(rows)) % keep]]
    return out


def drop_classes(images: np.ndarray, labels: np.ndarray, dropped: np.ndarray, pool_labels: np.ndarray,
                 exclude: np.ndarray, read: Callable[[np.ndarray], np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """The images of the `dropped` classes replaced by random pool images of the other classes, none of those at
    the `exclude` positions (the set's own); `read(positions)` returns the pool images at ascending positions."""
    out = images.copy()
    rows = np.flatnonzero(np.isin(labels, dropped))
    candidates = np.setdiff1d(np.flatnonzero(~np.isin(pool_labels, dropped)), exclude)
    chosen = np.sort(rng.choice(candidates, len(rows), replace=False))
    out[rows] = read(chosen)  # which row gets which replacement does not matter: they are random
    return out


def degraded_sets(floor: list[tuple[np.ndarray, np.ndarray]], floor_positions: np.ndarray, pool_labels: np.ndarray,
                  read_pool: Callable[[np.ndarray], np.ndarray], copies: list[tuple[np.ndarray, np.ndarray]],
                  p: BatteryParams, num_classes: int, seed: int) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """{set name: [(images, requested labels) per floor set]} for every degradation of the floor's sets. The pool
    (the held-out split: its labels and a reader of its images) supplies the images of dropped classes."""
    if num_classes > 1 and p.dropped_classes[-1] >= num_classes:
        raise PipelineError(f"battery.dropped_classes = {p.dropped_classes} must stay below the {num_classes} classes")
    order = randomness.rng("battery_class_order", seed).permutation(num_classes)  # dropped first: drop 3 includes drop 1
    sets: dict[str, list] = {}
    for k, (images, labels) in enumerate(floor):
        rng = randomness.rng("battery_sets", seed, k)

        def add(name: str, degraded: np.ndarray) -> None:
            sets.setdefault(name, []).append((degraded, labels))
        for sigma in p.blur:
            add(f"blur {sigma:g}", blur(images, sigma))
        for sigma in p.noise:
            add(f"noise {sigma:g}", add_noise(images, sigma, rng))
        for fraction in p.diversity:
            add(f"diversity {fraction:g}", fewer_distinct(images, labels, fraction))
        add("one per class", fewer_distinct(images, labels, None))
        if num_classes > 1:
            for j in p.dropped_classes:
                add(f"dropped {j}", drop_classes(images, labels, order[:j], pool_labels, floor_positions[k],
                                                 read_pool, rng))
    sets["training copies"] = copies
    return sets


Sets = dict[str, list[tuple[np.ndarray, np.ndarray]]]  # set name: [(images, requested labels)] per draw


def real_sets(params: Params, data: PreparedData, reference_dir: str | Path, info: dict) -> Sets:
    """The degraded versions of the floor's draws (in `reference_dir`) and the training copies."""
    e = params.evaluation
    floor = floor_sets(reference_dir, data, e.set_size)
    positions = np.load(Path(reference_dir) / "floor_positions.npy", allow_pickle=False)
    copy_draws = disjoint_draws(data.labels[data.split == TRAIN], np.array(info["label_counts"]), e.floor_sets,
                                params.seed, "training split", info["class_names"])
    copies = [next(data.batches(TRAIN, e.set_size, rows)) for rows in copy_draws]
    return degraded_sets(floor, positions, data.labels[data.split == HOLDOUT],
                         lambda rows: next(data.batches(HOLDOUT, len(rows), rows))[0], copies, params.battery,
                         data.num_classes, params.seed)


def teacher_sets(params: Params, teacher, config: dict, decode: Callable, runtime: Runtime,
                 progress: Callable[[str], None] = lambda text: None) -> Sets:
    """The teacher through Heun at battery.teacher_nfe evaluations, set k with the generated rows' seeds and
    labels of set k, drawn as the sample stage draws them."""
    e, s = params.evaluation, params.sample
    shape = (config["channels"], config["resolution"], config["resolution"])
    out = {}
    for nfe in params.battery.teacher_nfe:
        out[teacher_row(nfe)], _ = heun_sets(teacher, heun_sigmas(nfe, s.sigma_min, s.sigma_max, s.rho), e.floor_sets,
                                             e.set_size, params.seed, shape, config["num_classes"], decode,
                                             runtime.device, runtime.autocast)
        progress(f"teacher at {nfe} NFE sampled")
    return out


def run_battery(reference: Reference, sets: Sets, params: Params, num_classes: int) -> dict:
    """Score every set like the floor and judge each metric: {real_floor, every set's summary (each against the
    floor), ladders, expected directions, checks per feature space}."""
    floor = reference.floor()
    floor_summary = summarise_row(floor)
    summaries = {name: summarise_row(reference.score_sets(rows, params.seed), floor, floor_sds)
                 for name, rows in sets.items()}
    ladder_sets = {name: rungs for name, rungs in ladders(params.battery, num_classes).items()
                   if all(rung == "real floor" or rung in sets for rung in rungs)}  # the ladders whose sets were made
    return {"real_floor": floor_summary, **summaries, "ladders": ladder_sets,
            "expected": {ladder: {m: "rises" if d > 0 else "falls" for m, d in metrics.items()}
                         for ladder, metrics in EXPECTED.items()},
            "checks": {space: check(summaries, floor_summary, ladder_sets, space)
                       for space in reference.info["spaces"]}}


def ladders(p: BatteryParams, num_classes: int) -> dict[str, list[str]]:
    """Each ladder's sets, from the best to the most severe."""
    out = {"blur": ["real floor", *(f"blur {s:g}" for s in p.blur)],
           "noise": ["real floor", *(f"noise {s:g}" for s in p.noise)],
           "diversity": ["real floor", *(f"diversity {f:g}" for f in p.diversity), "one per class"],
           "teacher_nfe": [teacher_row(n) for n in p.teacher_nfe]}
    if num_classes > 1:
        out["dropped_classes"] = ["real floor", *(f"dropped {j}" for j in p.dropped_classes)]
    return out


def teacher_row(nfe: int) -> str:
    return f"teacher {nfe} NFE"


def check(summaries: dict[str, dict], floor: dict, ladder_sets: dict[str, list[str]], space: str) -> dict:
    """The battery's verdicts in one feature space, from summarised sets ({name: summarise_row(...)}):
    monotone: for each ladder and expected metric, whether it moves the expected way along it (`moves`);
    separated_by: for each set, the metrics moving the expected way by more than SEPARATION floor sds;
    collapse: whether one image per class ranks below the floor and the best teacher (when scored) on recall and
    coverage."""
    def value(name: str, metric: str) -> float:
        row = summaries[name] if name != "real floor" else floor
        return row[metric] if metric == "class_consistency" else row[space][metric]

    def spread(metric: str) -> float | None:
        return floor.get(f"{metric}_sd") if metric == "class_consistency" else floor[space].get(f"{metric}_sd")

    def moves(names: list[str], metric: str, direction: int) -> bool:
        """No step from one rung to the next goes the wrong way by more than the floor's sd (a smaller one is
        within the evaluation noise; a metric pinned at its bound, like precision at 0, may stay), and the
        ladder as a whole moves the right way by more than it."""
        noise = spread(metric) or 0.0
        steps = [direction * (value(b, metric) - value(a, metric)) for a, b in zip(names, names[1:])]
        return min(steps) >= -noise and sum(steps) > noise

    monotone = {ladder: {metric: moves(names, metric, direction) for metric, direction in EXPECTED[ladder].items()
                         if _has(summaries, names[-1], metric, space)}
                for ladder, names in ladder_sets.items()}
    expected_of = {name: EXPECTED[ladder] for ladder, names in ladder_sets.items() for name in names}
    expected_of["training copies"] = EXPECTED["copies"]
    separated = {}
    for name in summaries:
        moves = []
        for metric, direction in expected_of.get(name, {}).items():
            sd = spread(metric)
            if not (_has(summaries, name, metric, space) and sd):
                continue
            if direction * (value(name, metric) - value("real floor", metric)) > SEPARATION * sd:
                moves.append(metric)
        separated[name] = moves
    above = ["real floor", *ladder_sets.get("teacher_nfe", [])[:1]]  # the floor and the best teacher
    collapse = all(value("one per class", m) < min(value(name, m) for name in above) for m in ("recall", "coverage"))
    return {"monotone": monotone, "separated_by": separated, "collapse_below_teacher_and_floor": collapse,
            "all_monotone": all(all(m.values()) for m in monotone.values()),
            "all_separated": all(separated.values())}


def _has(summaries: dict, name: str, metric: str, space: str) -> bool:
    row = summaries[name]
    return metric in row if metric == "class_consistency" else metric in row[space]
