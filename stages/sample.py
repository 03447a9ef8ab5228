"""sample: every generator the pipeline compares, decoded to images, with a grid PNG each.

    teacher         the score net through EDM Heun (sample.nfe evaluations)
    generator_init  the one-step generator at initialisation: the score net's denoiser once at t_init
    generator       the trained one-step generator (EMA weights)
    generator_online  the same generator's raw weights at the end of training (a diagnostic: the auxiliary
                    net was trained against these, not against the EMA)

Each row draws evaluation.num_sets x evaluation.set_size samples. All rows use the same per-sample seeds and
labels, so sample i of every row starts from the same noise; the images do not depend on the batch size or
the number of processes. Layout: data/samples/<row>/batch-NNNNN.npz
(uint8 NHWC `images` and `labels` of sample.batch_size samples each, written by whichever process drew
them) and data/samples/<row>.json.
"""

import math

import numpy as np

from pipeline.artifacts import load_arrays, save_arrays, write_json
from pipeline.config import Params
from pipeline.datasets.encoders import load_encoder
from pipeline.generation.images import save_grid
from pipeline.generation.sampling import batch_indices, edm_heun, generate_batch
from pipeline.networks.generator import OneStepGenerator, load_generator
from pipeline.networks.models import load_denoiser
from pipeline.noise_levels import heun_sigmas
from pipeline.runtime import Runtime
from pipeline.stage import console, progress_bar, run_stage
from pipeline.training.measure import StepTimer

OUT, GRIDS = "data/samples", "metrics/grids"


def main(params: Params, runtime: Runtime) -> None:
    p = params.sample
    num_samples = params.evaluation.num_sets * params.evaluation.set_size
    device = runtime.device
    encoder = load_encoder("data/encoded", device)
    teacher, config = load_denoiser("data/pretrain/score", device, "pretrain")
    generator, generator_config = load_generator("data/train/generator", device)
    online, _ = load_generator("data/train/generator_online", device)
    sigmas = heun_sigmas(p.nfe, p.sigma_min, p.sigma_max, p.rho)
    rows = {  # name: (draw(unit noise, labels) -> model-space sample, network evaluations per sample)
        "teacher": (lambda z, c: edm_heun(teacher, z, c, sigmas), p.nfe),
        "generator_init": (OneStepGenerator(teacher, generator_config["t_init"]), 1),
        "generator": (generator, 1),
        "generator_online": (online, 1),
    }
    shape = (config["channels"], config["resolution"], config["resolution"])
    num_batches = math.ceil(num_samples / p.batch_size)
    with runtime.atomic_folder(OUT) as tmp:
        for name, (draw, nfe) in rows.items():
            (tmp / name).mkdir(exist_ok=True)
            seconds = 0.0  # of generation only, not decoding or writing
            with progress_bar(runtime.main) as bar:
                task = bar.add_task(f"{name} ({nfe} NFE)", total=num_samples, status="")
                for batch in runtime.share(num_batches):  # per-sample seeds: any split gives the same images
                    indices = batch_indices(num_samples, p.batch_size, batch)
                    with StepTimer(device) as timer, runtime.autocast():
                        latents, labels = generate_batch(draw, indices, params.seed, shape, config["num_classes"],
                                                         device)
                    seconds += timer.seconds
                    save_arrays(tmp / name / f"batch-{batch:05d}.npz", images=encoder.decode(latents), labels=labels)
                    bar.advance(task, len(indices) * runtime.world)
            seconds = max(runtime.gather(seconds))  # processes generate in parallel: the slowest sets the pace
            if runtime.main:
                write_json(tmp / f"{name}.json", {"nfe": nfe, "num_samples": num_samples, "batches": num_batches,
                                                  "batch_size": p.batch_size,
                                                  "seconds_per_image": seconds / num_samples,
                                                  "processes": runtime.world, "device": device.type})
                save_grid(f"{GRIDS}/{name}.png", first_images(tmp / name, p.grid_rows**2), p.grid_rows)
                console.print(f"{name}: {num_samples} samples at {nfe} NFE in {seconds:.2f}s")


def first_images(folder, count: int) -> np.ndarray:
    images, batch = [], 0
    while sum(map(len, images)) < count and (folder / f"batch-{batch:05d}.npz").exists():
        images.append(load_arrays(folder / f"batch-{batch:05d}.npz")["images"])
        batch += 1
    return np.concatenate(images)[:count]


if __name__ == "__main__":
    run_stage(main, distributed=True)
