"""train: DiffRatio. A one-step generator (initialised from the score net) and a density-ratio net (the
score net's encoder with a logit head) -> data/train/{generator,ratio}, curves and per-noise-level diagnostics.

No teacher is evaluated during training: the score net only initialises both networks.
Interrupted runs resume from data/checkpoints/train on the next `dvc repro`.
"""

import time

import torch

from pipeline.artifacts import atomic_path, write_csv, write_json
from pipeline.config import Params
from pipeline.diffratio import DiffRatioTraining
from pipeline.divergences import DIVERGENCES
from pipeline.encoders import load_encoded
from pipeline.generator import OneStepGenerator, generator_config, save_generator
from pipeline.models import load_denoiser
from pipeline.networks import count_parameters
from pipeline.ratio_net import build_ratio_net, init_from_score, ratio_config, save_ratio_net
from pipeline.stage import console, pick_device, run_stage
from pipeline.training_data import TrainingData
from pipeline.training_loop import fingerprint, run_training

OUT, CHECKPOINT = "data/train", "data/checkpoints/train"
CURVES, LEVELS, METRICS = "metrics/train_curves.csv", "metrics/train_noise_levels.csv", "metrics/train.json"


def main(params: Params) -> None:
    p = params.train
    device = pick_device(params.device)
    encoder, stored, labels = load_encoded("data/encoded", device)
    score, score_config = load_denoiser("data/pretrain/score", device, "pretrain")
    torch.manual_seed(params.seed)
    generator = OneStepGenerator(score, p.t_init).requires_grad_(True)  # theta starts as the score net
    ratio = init_from_score(build_ratio_net(ratio_config(score_config)), score).to(device)
    counts = {"score_parameters": count_parameters(score), "ratio_parameters": count_parameters(ratio)}
    task = DiffRatioTraining(generator, ratio, TrainingData(encoder, stored, labels, device), p,
                             DIVERGENCES[params.divergence], conditional=score_config["num_classes"] > 0)
    run_id = fingerprint(params.seed, params.divergence, p.model_dump(), score_config, encoder.config)
    started = time.perf_counter()

    def finish(state) -> None:
        levels = task.diagnose()
        with atomic_path(OUT) as tmp:
            tmp.mkdir()
            save_generator(tmp / "generator", task.ema["generator"], generator_config(score_config, p.t_init))
            save_ratio_net(tmp / "ratio", task.networks["ratio"], ratio_config(score_config))
        write_csv(CURVES, state.curves)
        write_csv(LEVELS, levels)
        last = state.curves[-1]
        write_json(METRICS, {"divergence": params.divergence, **counts,
                             "ratio_over_score_parameters": counts["ratio_parameters"] / counts["score_parameters"],
                             "images": state.images, "steps": state.steps,
                             **{k: last[k] for k in ("ratio_loss", "acc_real", "acc_fake")},
                             "seconds_this_run": time.perf_counter() - started})

    state = run_training(task, p, CHECKPOINT, run_id, device, f"train {params.divergence}", finish, params.seed)
    console.print(f"DiffRatio ({params.divergence}): generator {counts['score_parameters']:,} and ratio net "
                  f"{counts['ratio_parameters']:,} parameters, {state.images:,} images -> {OUT}")


if __name__ == "__main__":
    run_stage(main)
