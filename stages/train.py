"""train: a one-step generator (initialised from the score net, or randomly with train.init: random) and its
auxiliary network -> data/train/{generator (EMA), generator_online, ratio | fake_score}, curves and
per-noise-level diagnostics.

    method diffratio  a density-ratio net (the score net's encoder with a logit head); no teacher evaluated
    method vsd        the teacher-supervised baseline: frozen teacher + online fake score net

Interrupted runs resume from data/checkpoints/train on the next `dvc repro`.
"""

import statistics
import time

import numpy as np

from pipeline.artifacts import atomic_path, save_weights, write_csv, write_json
from pipeline.config import Params
from pipeline.datasets.encoders import map_encoded, split_in_model_space
from pipeline.datasets.prepared import HOLDOUT, load_prepared
from pipeline.datasets.training_data import TrainingData
from pipeline.networks.generator import generator_config, save_generator
from pipeline.networks.models import load_denoiser
from pipeline.networks.unet import count_parameters
from pipeline.randomness import rng, seed_of
from pipeline.runtime import Runtime
from pipeline.stage import console, run_stage
from pipeline.training.loop import fingerprint, run_training
from pipeline.training.measure import PeakMemory
from pipeline.training.methods import build_task

OUT, CHECKPOINT = "data/train", "data/checkpoints/train"
CURVES, METRICS = "metrics/train_curves.csv", "metrics/train.json"
LEVELS, OVER_TRAINING = "metrics/train_noise_levels.csv", "metrics/train_noise_levels_over_training.csv"
BANDS = {"small": (0, 0.1), "mid": (0.1, 1.0), "large": (1.0, float("inf"))}  # noise levels followed over training


def over_training(rows: list[dict]) -> list[dict]:
    """One row per diagnosis time (what DVC plots draw against images): per band of noise levels the mean AUC and
    gradient agreement of its levels and its summed share of the update; and the agreement at the generator's
    training distribution (the row of sigma 0)."""
    table = []
    for images in sorted({row["images"] for row in rows}):
        at = [row for row in rows if row["images"] == images]
        entry = {"images": images, "gradient_agreement_training": next(r for r in at if r["sigma"] == 0)[
            "gradient_agreement"]}
        for band, (lo, hi) in BANDS.items():
            levels = [r for r in at if lo <= r["sigma"] < hi and r["sigma"] > 0]
            if not levels:
                continue
            entry[f"update_share_{band}"] = sum(r["update_share"] for r in levels)
            entry[f"gradient_agreement_{band}"] = sum(r["gradient_agreement"] for r in levels) / len(levels)
            if "auc" in levels[0]:
                entry[f"auc_{band}"] = sum(r["auc"] for r in levels) / len(levels)
        table.append(entry)
    return table


def run_fingerprint(params: Params, trained_with: dict, score_config: dict, data_config: dict) -> str:
    return fingerprint(params.method, trained_with["divergence"], params.train.model_dump(), score_config,
                       data_config, compute=params.compute)


def main(params: Params, runtime: Runtime) -> None:
    p = params.train
    device = runtime.device
    encoder, shards, labels = map_encoded("data/encoded", device)
    data = TrainingData(encoder, shards, labels, device)
    teacher, score_config = load_denoiser("data/pretrain/score", device, "pretrain")
    task, auxiliary_config = build_task(params, teacher, score_config, data, runtime)
    del teacher  # DiffRatio evaluates no teacher in stage 2 (vsd's task keeps its own reference)
    prepared = load_prepared("data/prepared")
    held_out = rng("stage2_diagnostic_images", p.seed).permutation(prepared.count(HOLDOUT))[: p.diagnostic_samples]
    real, real_labels = split_in_model_space(encoder, prepared, HOLDOUT, np.sort(held_out), p.batch_size, device)

    def diagnose(images: int) -> list[dict]:
        return task.diagnose(real, real_labels, images)
    generator, auxiliary = task.networks["generator"], task.networks[task.auxiliary]
    trained_with = task.trained_with()
    divergence = trained_with["divergence"]
    counts = {"generator_parameters": count_parameters(generator),
              "auxiliary_parameters": count_parameters(auxiliary)}
    run_id = run_fingerprint(params, trained_with, score_config, encoder.config)
    memory = PeakMemory(device)
    started = time.perf_counter()

    def finish(state) -> None:
        peak_mib = memory.peak_mib()  # of training, before the diagnostics below allocate anything
        levels = state.diagnostics + [{"images": state.images, **row} for row in diagnose(state.images)]
        with atomic_path(OUT) as tmp:
            tmp.mkdir()
            config = generator_config(score_config, p.t_init)
            save_generator(tmp / "generator", task.ema["generator"], config)
            # the raw (non-EMA) weights: the generator the auxiliary net was trained against
            save_generator(tmp / "generator_online", task.networks["generator"], config)
            save_weights(tmp / task.auxiliary, auxiliary.state_dict(), auxiliary_config)
        write_csv(CURVES, state.curves)
        final = [row for row in levels if row["images"] == state.images]
        write_csv(LEVELS, [row for row in final if row["sigma"] > 0])
        write_csv(OVER_TRAINING, over_training(levels))
        last = state.curves[-1]
        write_json(METRICS, {
            "method": params.method, **trained_with,
            "init": p.init, "seed": p.seed,
            "auxiliary": task.auxiliary, **counts,
            "auxiliary_over_generator_parameters": counts["auxiliary_parameters"] / counts["generator_parameters"],
            "images": state.images, "steps": state.steps, "skipped_steps": state.skipped,
            **{k: last[k] for k in ("ratio_loss", "auc", "fake_score_loss") if k in last},
            "seconds_per_step": statistics.median(row["step_seconds"] for row in state.curves),
            "peak_memory_mib": peak_mib, "memory_kind": memory.kind, "device": device.type,
            "processes": runtime.world, "precision": params.compute.precision,
            "gradient_agreement_training": next(r for r in final if r["sigma"] == 0)["gradient_agreement"],
            "seconds_this_run": time.perf_counter() - started})

    state = run_training(task, p, CHECKPOINT, run_id, runtime, f"train {params.method} ({divergence})", finish,
                         seed_of("stage2_training", p.seed), (p.diagnostic_every_images, diagnose))
    if runtime.main:
        console.print(f"{params.method} ({divergence}): generator {counts['generator_parameters']:,} and "
                      f"{task.auxiliary} {counts['auxiliary_parameters']:,} parameters, {state.images:,} images -> {OUT}")


if __name__ == "__main__":
    run_stage(main, distributed=True)
