"""How long a preset's `dvc repro` takes on this machine, predicted from rates measured here, before running it:

    python -m pipeline.experiments.preset_cost fashion        # -> metrics/cost_fashion.json and a table

Each rate is measured on the preset's own networks with fresh weights (speed does not depend on them), at a
small batch (`--batch`), as the benchmark measures them (pipeline/experiments/benchmark.py): the pretraining
step, the DiffRatio step, the teacher's Heun sampler and the one-step generator per image, and Inception's
feature extraction per image as the metric stages run it (clean-fid's resize included, grey made RGB). The
work each stage does is counted from the preset's params, so the prediction is per image times images:

- pretrain: pretrain.duration_images; train: train.duration_images (every auxiliary update included in the step);
  verifier: at most verifier.max_steps ratio-net updates, counted as whole DiffRatio steps (an upper bound);
- sample: the teacher's row of evaluation.num_sets x evaluation.set_size at sample.nfe and three one-step rows;
  scale: every N's candidates through the one-step generator;
- Inception, in the reference stage (the training split's statistics over reference.stats_images, the
  reference rows and as many held-out rows for the copy threshold, the floor's sets), the fid stage (four rows)
  and the scale stage (each N's picks, and for N > 1 the uniform picks too).

Not counted: prepare, encode, the offline feature nets and their features, writing files, and each stage's start-up
(10-15 s on a 2-core machine). Per-image rates at a small batch are an upper bound of those at the stages' larger
batches on a CPU, where the arithmetic dominates; on a GPU measure at the preset's batch (`--batch`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from pipeline.artifacts import write_json
from pipeline.config import Params, load_params
from pipeline.errors import PipelineError
from pipeline.evaluation.extractors import inception_extractor
from pipeline.evaluation.inception import find_weights, missing
from pipeline.experiments.benchmark import (cpu_model, network_config, sampling, setting, teacher_and_data, timed,
                                           training_step)
from pipeline.runtime import pick_device
from pipeline.training.pretraining import ScorePretraining

ONE_STEP_ROWS = 3  # the sample stage's generator_init, generator and generator_online rows
SCORED_ROWS = 4  # the fid stage's rows: the teacher and the three one-step rows
console = Console()


def inception_images(params: Params, num_train: int, num_holdout: int) -> dict[str, int]:
    """Images each stage passes through Inception (see the module docstring)."""
    r, e, s = params.reference, params.evaluation, params.scale
    stats = num_train if r.stats_images is None else min(r.stats_images, num_train)
    reference = (stats + min(r.max_features, num_train) + min(r.max_features, num_holdout)
                 + e.floor_sets * e.set_size)
    per_n = [1 if n == 1 else 2 for n in s.num_candidates]
    return {"reference": reference, "fid": SCORED_ROWS * e.num_sets * e.set_size,
            "scale": sum(per_n) * s.num_sets * e.set_size}


def pretrain_seconds_per_image(name: str, batch: int, device: torch.device, repeats: int) -> float:
    params, runtime, config, batch = setting(name, batch, device)
    pretrain = params.pretrain.model_copy(update={"batch_size": batch, "batch_per_process": None})
    params = params.model_copy(update={"pretrain": pretrain})
    teacher, _, data = teacher_and_data(params, config, runtime)
    task = ScorePretraining(teacher.train().requires_grad_(True), data, params.pretrain, runtime)
    return timed(task.step, repeats, device) / batch


def inception_seconds_per_image(params: Params, resolution: int, channels: int, device: torch.device,
                                images: int) -> float:
    r = params.reference
    path = find_weights(r.inception_weights, r.inception_path)
    if path is None:
        raise PipelineError(missing(r.inception_weights, r.inception_path))
    extractor = inception_extractor(r.inception_weights, path, device, r.inception_mode)
    batch = np.random.default_rng(0).integers(0, 256, (images, resolution, resolution, channels), dtype=np.uint8)
    extractor.features(batch[: max(1, images // 4)], images)  # warm-up
    started = time.perf_counter()
    extractor.features(batch, images)
    return (time.perf_counter() - started) / images


def predict(params: Params, rates: dict, num_train: int, num_holdout: int) -> dict:
    """Seconds per stage: the preset's work times the measured rates."""
    e, t, s = params.evaluation, params.train, params.scale
    per_row = e.num_sets * e.set_size
    inception = inception_images(params, num_train, num_holdout)
    step = rates["train_seconds_per_image"] * t.batch_size
    seconds = {
        "pretrain": params.pretrain.duration_images * rates["pretrain_seconds_per_image"],
        "train": t.duration_images * rates["train_seconds_per_image"],
        "verifier": params.verifier.max_steps * step,
        "sample": per_row * (rates["teacher_seconds_per_image"] + ONE_STEP_ROWS * rates["generator_seconds_per_image"]),
        "scale_generation": s.num_sets * e.set_size * sum(s.num_candidates) * rates["generator_seconds_per_image"],
        **{f"inception_{stage}": count * rates["inception_seconds_per_image"] for stage, count in inception.items()},
    }
    return {"inception_images": inception, "seconds": seconds, "total_seconds": sum(seconds.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("preset", help="a file presets/<preset>.yaml")
    parser.add_argument("--batch", type=int, default=16, help="batch at which each rate is measured")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls of each step")
    parser.add_argument("--inception-images", type=int, default=64, help="images Inception's rate is timed on")
    parser.add_argument("--train-images", type=int, default=60000, help="the training split's size")
    parser.add_argument("--holdout-images", type=int, default=10000, help="the held-out split's size")
    parser.add_argument("--out", help="the JSON file written (default: metrics/cost_<preset>.json)")
    args = parser.parse_args()
    try:
        if not Path(f"presets/{args.preset}.yaml").is_file():
            raise PipelineError(f"presets/{args.preset}.yaml does not exist: name a file of presets/")
        params = load_params(f"presets/{args.preset}.yaml")
        device = pick_device(params.device)
        samples = sampling(args.preset, args.batch, device, args.repeats, params.sample.nfe)
        config = network_config(params, args.preset)  # the network the preset trains: its image shape
        rates = {
            "pretrain_seconds_per_image": pretrain_seconds_per_image(args.preset, args.batch, device, args.repeats),
            "train_seconds_per_image": training_step(args.preset, args.batch, "diffratio", device, args.repeats,
                                                     False)["seconds_per_step"] / args.batch,
            "teacher_seconds_per_image": 1 / samples["teacher_images_per_second"],
            "generator_seconds_per_image": 1 / samples["generator_images_per_second"],
            "inception_seconds_per_image": inception_seconds_per_image(
                params, config["resolution"], config["channels"], device, args.inception_images),
        }
    except PipelineError as exc:
        raise SystemExit(f"error: {exc}") from None
    result = {"preset": args.preset, "device": str(device) if device.type == "cuda" else f"CPU ({cpu_model()})",
              "threads": torch.get_num_threads(), "batch": args.batch, "rates": rates,
              **predict(params, rates, args.train_images, args.holdout_images)}
    write_json(args.out or f"metrics/cost_{args.preset}.json", result)
    table = Table(title=f"presets/{args.preset}.yaml on {result['device']}, {result['threads']} threads: predicted")
    table.add_column("stage")
    table.add_column("minutes", justify="right")
    for stage, seconds in result["seconds"].items():
        table.add_row(stage, f"{seconds / 60:.1f}")
    table.add_row("all counted", f"{result['total_seconds'] / 60:.1f}")
    console.print(table)


if __name__ == "__main__":
    main()
