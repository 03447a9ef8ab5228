"""scale: inference-time scaling with the ratio net as verifier -> FD against N, cost and wall time.

For every N in scale.num_candidates, scale.num_outputs images are each picked from N candidates of their
class by the trained ratio net (pipeline/generation/scaling.py). N = 1 is the unscaled generator (its first
sample.num_samples images are the `generator` row of the sample stage). Method vsd trains no ratio net, so
it reports N = 1 only.
"""

import time

import torch
from rich.table import Table

from pipeline.artifacts import atomic_path, save_arrays, write_csv, write_json
from pipeline.config import Params
from pipeline.datasets.encoders import decode_batched, load_encoder
from pipeline.evaluation.fid import frechet_distance, load_reference
from pipeline.generation.images import save_grid
from pipeline.generation.scaling import scaled_generate
from pipeline.networks.generator import load_generator
from pipeline.networks.ratio_net import load_ratio_net
from pipeline.runtime import Runtime
from pipeline.stage import console, run_stage

OUT, METRICS, CURVE, GRID = "data/scaled", "metrics/scale.json", "metrics/scale.csv", "metrics/grids/scaled.png"


def main(params: Params, runtime: Runtime) -> None:
    p, num = params.scale, params.scale.num_outputs
    device = runtime.device
    encoder = load_encoder("data/encoded", device)
    extractor, ref, _ = load_reference("data/reference", device)
    generator, config = load_generator("data/train/generator", device)
    config = config["denoiser"]
    counts, log_weight, verifier = [1], None, None
    if params.method == "diffratio":
        ratio, _ = load_ratio_net("data/train/ratio", device)
        counts, verifier = p.num_candidates, f"ratio net at sigma {p.sigma_eval}"

        def log_weight(x, c):  # log w = -d: the ratio net's estimate of log p / q
            return -ratio(x, torch.full((len(x),), p.sigma_eval, device=device), c)
    else:
        console.print(f"[yellow]method {params.method} trains no ratio net: scale reports N = 1 only")
    shape = (config["channels"], config["resolution"], config["resolution"])
    metric, rows = extractor.metric, []

    def distance(images):
        # as the fid stage computes them, so N = 1 reproduces the generator row
        return frechet_distance(extractor.feature_stats([images], params.fid.batch_size).mu_sigma(), ref)

    with atomic_path(OUT) as tmp:
        tmp.mkdir()
        for n in counts:
            started = time.perf_counter()
            latents, control, labels, ess = scaled_generate(generator, log_weight, num, n, p.tau, p.batch_size,
                                                            params.seed, shape, config["num_classes"], device)
            seconds = time.perf_counter() - started
            images = decode_batched(encoder, latents, p.batch_size, device)
            save_arrays(tmp / f"n{n}.npz", images=images, labels=labels)
            value = distance(images)
            # at N = 1 the control is the very same sample set
            uniform = value if n == 1 else distance(decode_batched(encoder, control, p.batch_size, device))
            rows.append({"num_candidates": n, "fd": value, "fd_uniform_pick": uniform,
                         "generator_evals_per_output": n, "ratio_evals_per_output": n if n > 1 else 0,
                         "seconds_per_output": seconds / num, "mean_ess": ess})
            console.print(f"N = {n}: {metric} {value:.4g}, uniform pick {uniform:.4g} ({seconds:.2f}s, ESS {ess:.2f})")
    for row in rows:
        row["fd_over_n1"] = row["fd"] / rows[0]["fd"]
    save_grid(GRID, images, params.sample.grid_rows)
    write_csv(CURVE, rows)
    write_json(METRICS, {"method": params.method, "verifier": verifier, "tau": p.tau, "sigma_eval": p.sigma_eval,
                         "metric": metric,  # what "fd" is: fd_trained, or fid with Inception
                         "num_outputs": num, **{f"n{row['num_candidates']}": row for row in rows}})
    table = Table(title=f"inference-time scaling, tau = {p.tau} ({verifier or 'no verifier'})")
    for column in ("N", metric, "x N=1", "uniform pick", "gen + ratio evals", "s / output", "mean ESS"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(str(row["num_candidates"]), f"{row['fd']:.4g}", f"{row['fd_over_n1']:.3f}",
                      f"{row['fd_uniform_pick']:.4g}",
                      f"{row['generator_evals_per_output']} + {row['ratio_evals_per_output']}",
                      f"{row['seconds_per_output']:.5f}", f"{row['mean_ess']:.2f}")
    console.print(table)


if __name__ == "__main__":
    run_stage(main)
