"""scale: inference-time scaling with the ratio net as verifier -> the metric suite against N, with cost.

For every N in scale.num_candidates, scale.num_sets x evaluation.set_size outputs are each picked from N
candidates of their class by the verifier (pipeline/generation/scaling.py): with scale.verifier: fitted, the
verifier stage's ratio net, fitted to the sampled generator and calibrated (pipeline/generation/verifier.py);
with `trained`, the ratio net as stage 2 left it, uncalibrated, at the same noise level (verifier.sigma). Each
disjoint set of outputs is scored twice: the verifier's picks, and a uniform pick among the very same candidates (the
control); `pick_over_uniform` is their per-set ratio, mean ± sd over sets, which separates what the verifier
did from the evaluation noise. N = 1 is the unscaled generator (its first sets are the `generator` row of the
fid stage). Method vsd trains no ratio net, so it reports N = 1 only. Beside each N's images, data/scaled/n<N>.json
holds its picks' per-set metrics and cost: the one-step points of the frontier stage.
"""

import time

import numpy as np

from pipeline.artifacts import atomic_path, save_arrays, write_csv, write_json
from pipeline.config import Params
from pipeline.datasets.encoders import decode_batched, load_encoder
from pipeline.evaluation.frontier import layout, one_step_cost, point
from pipeline.evaluation.metrics import paired
from pipeline.evaluation.reference import load_reference, summarise_row
from pipeline.evaluation.report import metrics_table
from pipeline.generation.calibration import Calibration
from pipeline.generation.images import save_grid
from pipeline.generation.scaling import scaled_generate
from pipeline.generation.verifier import Verifier, load_verifier
from pipeline.networks.generator import load_generator
from pipeline.networks.ratio_net import has_ratio_net, load_ratio_net
from pipeline.runtime import Runtime
from pipeline.stage import console, run_stage

OUT, METRICS, CURVE, GRID = "data/scaled", "metrics/scale.json", "metrics/scale.csv", "metrics/grids/scaled.png"
CURVE_METRICS = ("fd", "kid", "precision", "recall", "coverage")


def main(params: Params, runtime: Runtime) -> None:
    p, e = params.scale, params.evaluation
    num = p.num_sets * e.set_size
    device = runtime.device
    encoder = load_encoder("data/encoded", device)
    reference = load_reference("data/reference", params, device)
    primary = reference.info["primary"]
    generator, config = load_generator("data/train/generator", device)
    config = config["denoiser"]
    counts, log_weight, verifier, described = [1], None, None, None
    if has_ratio_net("data/train/ratio"):
        if p.verifier == "fitted":
            verifier = load_verifier("data/verifier", device)
        else:
            verifier = Verifier(load_ratio_net("data/train/ratio", device)[0], params.verifier.sigma, Calibration())
        counts, log_weight = p.num_candidates, verifier.log_weight  # log w: the estimate of log p / q
        described = f"{p.verifier} ratio net at sigma {verifier.sigma}"
    else:
        console.print(f"[yellow]stage 2 trained no ratio net (method {params.method}): scale reports N = 1 only")
    shape = (config["channels"], config["resolution"], config["resolution"])

    def score(images: np.ndarray, labels: np.ndarray) -> list[dict]:
        """Set k of the outputs, scored as the fid stage scores generated set k (same KID seed)."""
        sets = [(images[k * e.set_size : (k + 1) * e.set_size], labels[k * e.set_size : (k + 1) * e.set_size])
                for k in range(p.num_sets)]
        return reference.score_sets(sets, params.seed)

    sets_layout = layout(p.num_sets, e.set_size, params.seed)  # as teacher_steps scores
    rows, summaries, first = [], {}, None
    with atomic_path(OUT) as tmp:
        tmp.mkdir()
        for n in counts:
            started = time.perf_counter()
            with runtime.autocast():  # as the sample stage runs the generator: N = 1 is its `generator` row
                latents, control, labels, ess = scaled_generate(generator, log_weight, num, n, p.tau, p.batch_size,
                                                                params.seed, shape, config["num_classes"], device)
            seconds = time.perf_counter() - started
            images = decode_batched(encoder, latents, p.batch_size, device)
            save_arrays(tmp / f"n{n}.npz", images=images, labels=labels)
            picked = score(images, labels)
            evals = one_step_cost(n)
            write_json(tmp / f"n{n}.json", point("one_step", evals["generator_evals"] + evals["ratio_evals"],
                                                 seconds / num, picked, sets_layout, **evals))
            # at N = 1 the control is the very same sample set
            uniform = picked if n == 1 else score(decode_batched(encoder, control, p.batch_size, device), labels)
            first = first or picked
            pick_primary = [s[primary] for s in picked]
            summaries[f"N = {n}"] = summarise_row(picked)
            summaries[f"N = {n}, uniform pick"] = summarise_row(uniform)
            row = {"num_candidates": n, "generator_evals_per_output": n, "ratio_evals_per_output": evals["ratio_evals"],
                   "seconds_per_output": seconds / num, "mean_ess": ess,
                   "picked": summaries[f"N = {n}"], "uniform_pick": summaries[f"N = {n}, uniform pick"],
                   "pick_over_uniform": paired(pick_primary, [s[primary] for s in uniform]),
                   "pick_over_n1": paired(pick_primary, [s[primary] for s in first])}
            rows.append(row)
            ratio_fd = row["pick_over_uniform"]
            console.print(f"N = {n}: {primary} FD {row['picked'][primary]['fd']:.4g}, pick / uniform pick "
                          f"{ratio_fd['fd_ratio']:.3f} ± {ratio_fd['fd_ratio_sd'] or 0:.3f} ({seconds:.2f}s, "
                          f"ESS {ess:.2f})")
    save_grid(GRID, images, params.sample.grid_rows)
    write_csv(CURVE, [curve_row(row, primary) for row in rows])
    write_json(METRICS, {"method": params.method, "verifier": described, "tau": p.tau,
                         "sigma": verifier and verifier.sigma,
                         "calibration": verifier and verifier.calibration.as_dict(),
                         "space": primary, "num_sets": p.num_sets, "set_size": e.set_size,
                         **{f"n{row['num_candidates']}": row for row in rows}})
    console.print(metrics_table(f"inference-time scaling, tau = {p.tau} ({described or 'no verifier'}): mean ± sd over "
                                f"{p.num_sets} sets of {e.set_size} ({primary} features)", summaries, primary))


def curve_row(row: dict, space: str) -> dict:
    """The plotted line of one N: the picks' and the control's metrics and their paired ratios."""
    picked, uniform, ratio = row["picked"][space], row["uniform_pick"][space], row["pick_over_uniform"]
    out = {"num_candidates": row["num_candidates"]}
    for name in CURVE_METRICS:
        out[name], out[f"{name}_uniform_pick"] = picked[name], uniform[name]
    out.update({key: value for key, value in ratio.items() if not key.endswith("_sd")})
    return {**out, "seconds_per_output": row["seconds_per_output"], "mean_ess": row["mean_ess"]}


if __name__ == "__main__":
    run_stage(main)
