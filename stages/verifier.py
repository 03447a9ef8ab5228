"""verifier: the trained ratio net fitted to the sampled (EMA) generator, early-stopped and calibrated on held-out
images -> data/verifier (scale's verifier: the fitted net, its noise level and calibration), metrics/verifier.json
(its AUC, calibration and memorisation check on a held-out test part) and metrics/verifier_curve.csv (the
validation curve). Which images do what, and why, is in pipeline/generation/verifier.py.

Method vsd trains no ratio net: the stage then writes a verifier.json and a metrics file that say so, and scale
reports N = 1 only.
"""

import time

import numpy as np
import torch

from pipeline.artifacts import atomic_path, write_csv, write_json
from pipeline.config import Params
from pipeline.datasets.encoders import map_encoded, split_in_model_space
from pipeline.datasets.prepared import HOLDOUT, TRAIN, load_prepared
from pipeline.datasets.training_data import TrainingData
from pipeline.generation.verifier import PARTS, fit_verifier, held_out_parts, noisy_pairs, save_verifier
from pipeline.networks.generator import load_generator
from pipeline.networks.ratio_net import has_ratio_net, load_ratio_net
from pipeline.randomness import rng, seed_of, seed_torch
from pipeline.runtime import Runtime
from pipeline.stage import console, run_stage

OUT, METRICS, CURVE = "data/verifier", "metrics/verifier.json", "metrics/verifier_curve.csv"
RATIO = "data/train/ratio"  # stage 2's ratio net, where its method trains one


def main(params: Params, runtime: Runtime) -> None:
    p = params.verifier
    if not has_ratio_net(RATIO):
        reason = f"stage 2 trained no ratio net (method {params.method})"
        console.print(f"[yellow]{reason}: no verifier")
        with atomic_path(OUT) as tmp:
            tmp.mkdir()
            save_verifier(tmp, None, None, {"reason": reason})
        write_csv(CURVE, [])
        write_json(METRICS, {"method": params.method, "verifier": None, "reason": reason})
        return
    started = time.perf_counter()
    device = runtime.device
    encoder, shards, labels = map_encoded("data/encoded", device)
    data = TrainingData(encoder, shards, labels, device)
    prepared = load_prepared("data/prepared")
    generator, _ = load_generator("data/train/generator", device)
    ratio, ratio_config = load_ratio_net(RATIO, device)
    conditional = ratio_config["score"]["num_classes"] > 0

    def conditioning(labels: torch.Tensor) -> torch.Tensor | None:
        return labels if conditional else None

    sizes = [p.validation_images, p.calibration_images, p.test_images]
    positions = held_out_parts(prepared.labels[prepared.split == HOLDOUT], sizes, params.seed)
    training_positions = np.sort(rng("verifier_training_rows", params.seed).permutation(prepared.count(TRAIN))
                                 [: p.test_images])
    seed_torch("verifier_samples", params.seed)  # the posterior samples (sd-vae), generated samples and noise
    parts = {}
    for name, rows in zip(PARTS, positions):
        real, real_labels = split_in_model_space(encoder, prepared, HOLDOUT, rows, p.batch_size, device)
        parts[name] = noisy_pairs(real, conditioning(real_labels), generator, p.sigma, p.batch_size, runtime)
    training_real, training_labels = split_in_model_space(encoder, prepared, TRAIN, training_positions, p.batch_size,
                                                          device)
    training_real = training_real + p.sigma * torch.randn_like(training_real)

    verifier, report = fit_verifier(ratio, generator, data, parts, training_real, conditioning(training_labels), p,
                                    conditional, runtime, seed_of("verifier_training", params.train.seed))
    with atomic_path(OUT) as tmp:
        tmp.mkdir()
        save_verifier(tmp, verifier, ratio_config, {"best_step": report["best_step"]})
    write_csv(CURVE, report.pop("curve"))
    test = report["test"]
    write_json(METRICS, {"method": params.method, "verifier": "ratio net fitted to the EMA generator, calibrated",
                         "sigma": p.sigma, **report, "max_steps": p.max_steps,
                         "images": {"validation": p.validation_images, "calibration": p.calibration_images,
                                    "test": p.test_images, "training_for_memorisation": p.test_images,
                                    "generated_per_real": 1},
                         "seconds": time.perf_counter() - started})
    console.print(f"verifier at sigma {p.sigma}: best of {report['steps']} updates at {report['best_step']}; "
                  f"calibration d' = {verifier.calibration.scale:.3f} d {verifier.calibration.bias:+.3f}; test AUC "
                  f"{test['trained']['auc']:.3f} (trained) -> {test['fitted']['auc']:.3f}, ECE "
                  f"{test['fitted']['ece']:.3f} -> {test['fitted_calibrated']['ece']:.3f} calibrated, memorisation AUC "
                  f"{test['trained']['memorisation_auc']:.3f} -> {test['fitted']['memorisation_auc']:.3f} -> {OUT}")


if __name__ == "__main__":
    run_stage(main)
