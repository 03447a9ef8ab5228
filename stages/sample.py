"""sample: every generator the pipeline compares, decoded to images, with a grid PNG each.

    teacher         the score net through EDM Heun (sample.nfe evaluations)
    generator_init  the one-step generator at initialisation: the score net's denoiser once at t_init
    generator       the trained one-step generator (EMA weights)
    generator_online  the same generator's raw weights at the end of training (a diagnostic: the auxiliary
                    net was trained against these, not against the EMA)

All rows use the same per-sample seeds and labels, so row i of every set starts from the same noise.
"""

import time

from pipeline.artifacts import atomic_path, save_arrays, write_json
from pipeline.config import Params
from pipeline.encoders import decode_batched, load_encoded
from pipeline.generator import OneStepGenerator, load_generator
from pipeline.images import save_grid
from pipeline.models import load_denoiser
from pipeline.sampling import edm_heun, generate, heun_sigmas
from pipeline.stage import console, pick_device, run_stage
from pipeline.training_loop import progress_bar

OUT, GRIDS = "data/samples", "metrics/grids"


def main(params: Params) -> None:
    p = params.sample
    device = pick_device(params.device)
    encoder, _, _ = load_encoded("data/encoded", device)
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
    with atomic_path(OUT) as tmp:
        tmp.mkdir()
        for name, (draw, nfe) in rows.items():
            with progress_bar() as bar:
                task = bar.add_task(f"{name} ({nfe} NFE)", total=p.num_samples, status="")
                started = time.perf_counter()
                latents, labels = generate(draw, p.num_samples, p.batch_size, params.seed, shape,
                                           config["num_classes"], device, lambda n: bar.advance(task, n))
                seconds = time.perf_counter() - started
            images = decode_batched(encoder, latents, p.batch_size, device)
            save_arrays(tmp / f"{name}.npz", images=images, labels=labels)
            write_json(tmp / f"{name}.json", {"nfe": nfe, "num_samples": p.num_samples,
                                              "seconds_per_image": seconds / p.num_samples, "device": device.type})
            save_grid(f"{GRIDS}/{name}.png", images, p.grid_rows)
            console.print(f"{name}: {p.num_samples} samples at {nfe} NFE in {seconds:.2f}s")


if __name__ == "__main__":
    run_stage(main)
