"""pretrain: EDM score network on the encoded data -> data/pretrain/score (EMA weights) + training curves.

With teacher.source: checkpoint nothing is trained: the published teacher converted by the teacher stage is
checked against the encoded data and becomes data/pretrain/score, the one place later stages read it from.
Interrupted runs resume from data/checkpoints/pretrain on the next `dvc repro`.
"""

import shutil
import time

from pipeline.artifacts import atomic_path, read_json, require, write_csv, write_json
from pipeline.config import Params
from pipeline.datasets.encoders import map_encoded
from pipeline.datasets.training_data import TrainingData
from pipeline.networks.models import build_denoiser, denoiser_config, save_denoiser
from pipeline.networks.published.convert import check_data_matches
from pipeline.networks.unet import count_parameters
from pipeline.noise_levels import SIGMA_DATA
from pipeline.randomness import seed_of, seed_torch
from pipeline.runtime import Runtime
from pipeline.stage import console, run_stage
from pipeline.training.loop import fingerprint, run_training
from pipeline.training.pretraining import ScorePretraining

OUT, CHECKPOINT = "data/pretrain", "data/checkpoints/pretrain"
CURVES, METRICS = "metrics/pretrain_curves.csv", "metrics/pretrain.json"


def use_published(params: Params, data_config: dict, runtime: Runtime) -> None:
    teacher = read_json(require("data/teacher/teacher.json", "teacher"))
    score = require("data/teacher/score.json", "teacher")
    check_data_matches(read_json(score), data_config, params.pretrain.class_conditional)
    if runtime.main:
        with atomic_path(OUT) as tmp:
            tmp.mkdir()
            for suffix in (".json", ".safetensors"):
                shutil.copyfile(score.with_suffix(suffix), (tmp / "score").with_suffix(suffix))
        write_csv(CURVES, [{"images": 0, "loss": ""}])  # nothing trained here: an empty curve
        write_json(METRICS, {**teacher, "images": 0, "steps": 0})
        console.print(f"score net: the published {teacher['class']} from {teacher['checkpoint']} "
                      f"({teacher['parameters']:,} parameters) -> {OUT}/score")


def run_fingerprint(params: Params, data_config: dict) -> str:
    return fingerprint(params.seed, params.pretrain.model_dump(), data_config, compute=params.compute)


def main(params: Params, runtime: Runtime) -> None:
    p = params.pretrain
    device = runtime.device
    encoder, shards, labels = map_encoded("data/encoded", device)
    data_config = encoder.config
    if params.teacher.source == "checkpoint":
        return use_published(params, data_config, runtime)
    config = denoiser_config(p.network, data_config["resolution"], data_config["channels"],
                             data_config["num_classes"] if p.class_conditional else 0, SIGMA_DATA)
    seed_torch("pretrain_init", params.seed)
    net = build_denoiser(config).to(device)
    task = ScorePretraining(net, TrainingData(encoder, shards, labels, device), p, runtime)
    run_id = run_fingerprint(params, data_config)
    started = time.perf_counter()

    def finish(state) -> None:
        with atomic_path(OUT) as tmp:
            tmp.mkdir()
            save_denoiser(tmp / "score", task.ema["score"], config)
        write_csv(CURVES, state.curves)
        write_json(METRICS, {"parameters": count_parameters(net), "images": state.images, "steps": state.steps,
                             "skipped_steps": state.skipped, "final_loss": state.curves[-1]["loss"],
                             "processes": runtime.world, "seconds_this_run": time.perf_counter() - started})

    state = run_training(task, p, CHECKPOINT, run_id, runtime, "pretrain", finish,
                         seed_of("pretrain_training", params.seed))
    if runtime.main:
        console.print(f"score net: {count_parameters(net):,} parameters, {state.images:,} images -> {OUT}/score")


if __name__ == "__main__":
    run_stage(main, distributed=True)
