"""sample: the teacher's multi-step EDM Heun samples (NFE from params), decoded to images, plus a grid PNG."""

import time

import numpy as np

from pipeline.artifacts import atomic_path, save_arrays, write_json
from pipeline.config import Params
from pipeline.encoders import load_encoded
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
    net, config = load_denoiser("data/pretrain/score", device, "pretrain")
    sigmas = heun_sigmas(p.nfe, p.sigma_min, p.sigma_max, p.rho)
    shape = (config["channels"], config["resolution"], config["resolution"])
    with progress_bar() as bar:
        task = bar.add_task(f"teacher {p.nfe} NFE", total=p.num_samples, status="")
        started = time.perf_counter()
        latents, labels = generate(lambda z, c: edm_heun(net, z, c, sigmas), p.num_samples, p.batch_size, params.seed,
                                   shape, config["num_classes"], device, lambda n: bar.advance(task, n))
        seconds = time.perf_counter() - started
    images = np.concatenate([encoder.decode(latents[s : s + p.batch_size].to(device))
                             for s in range(0, len(latents), p.batch_size)])
    with atomic_path(OUT) as tmp:
        tmp.mkdir()
        save_arrays(tmp / "teacher.npz", images=images, labels=labels)
        write_json(tmp / "teacher.json", {"sampler": "edm-heun", "nfe": p.nfe, "num_samples": p.num_samples,
                                          "seconds_per_image": seconds / p.num_samples, "device": device.type})
    save_grid(f"{GRIDS}/teacher.png", images, p.grid_rows)
    console.print(f"teacher: {p.num_samples} samples at {p.nfe} NFE in {seconds:.1f}s -> {OUT}, {GRIDS}/teacher.png")


if __name__ == "__main__":
    run_stage(main)
