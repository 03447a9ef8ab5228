"""Speed and memory measured side by side in one run, on the configured params and the pretrained teacher:

    python -m pipeline.benchmark        # -> metrics/bench.json and a table of ratios

- sampling: the one-step generator against the teacher's Heun sampler (sample.nfe evaluations), the same
  network at the same batch (sample.batch_size): images per second;
- training: one DiffRatio step against one baseline (`vsd`) step on the same generator and batch
  (train.batch_size): median step time and peak memory. Each method runs in a fresh process of its own,
  so one's allocations cannot inflate the other's peak (see pipeline/measure.py for what is measured).

Run `dvc repro pretrain` first. Figures depend on the machine: the table names the device.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

import torch
from rich.console import Console
from rich.table import Table

from pipeline.artifacts import write_json
from pipeline.config import Params, load_params
from pipeline.encoders import load_encoded
from pipeline.errors import PipelineError
from pipeline.generator import OneStepGenerator
from pipeline.measure import PeakMemory, StepTimer
from pipeline.methods import build_task
from pipeline.models import load_denoiser
from pipeline.sampling import edm_heun, heun_sigmas
from pipeline.stage import pick_device
from pipeline.training_data import TrainingData

METRICS = "metrics/bench.json"
console = Console()


def timed(fn, repeats: int, device: torch.device) -> float:
    """Median seconds of fn() over `repeats` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        with StepTimer(device) as timer:
            fn()
        times.append(timer.seconds)
    return statistics.median(times)


def sampling(params: Params, device: torch.device, repeats: int) -> dict:
    p = params.sample
    teacher, config = load_denoiser("data/pretrain/score", device, "pretrain")
    generator = OneStepGenerator(teacher, params.train.t_init)
    shape = (p.batch_size, config["channels"], config["resolution"], config["resolution"])
    z = torch.randn(shape, device=device)
    labels = torch.arange(p.batch_size, device=device) % config["num_classes"] if config["num_classes"] else None
    sigmas = heun_sigmas(p.nfe, p.sigma_min, p.sigma_max, p.rho)
    with torch.no_grad():
        one_step = timed(lambda: generator(z, labels), repeats, device)
        multi_step = timed(lambda: edm_heun(teacher, z, labels, sigmas), max(1, repeats // 4), device)
    return {"batch_size": p.batch_size, "teacher_nfe": p.nfe,
            "generator_images_per_second": p.batch_size / one_step,
            "teacher_images_per_second": p.batch_size / multi_step,
            "generator_over_teacher_throughput": multi_step / one_step}


def training_step(params: Params, method: str, device: torch.device, steps: int) -> dict:
    """One method's step time and peak memory (run in a process of its own)."""
    p = params.train
    encoder, stored, labels = load_encoded("data/encoded", device)
    data = TrainingData(encoder, stored, labels, device)
    teacher, config = load_denoiser("data/pretrain/score", device, "pretrain")
    memory = PeakMemory(device)
    task, _ = build_task(params.model_copy(update={"method": method}), teacher, config, data, device)
    seconds = timed(lambda: task.step(p.batch_size), steps, device)
    return {"seconds_per_step": seconds, "peak_memory_mib": memory.peak_mib(), "memory_kind": memory.kind}


def training(params: Params, steps: int) -> dict:
    results = {}
    for method in ("diffratio", "vsd"):
        out = subprocess.run([sys.executable, "-m", "pipeline.benchmark", "--step", method, "--steps", str(steps)],
                             capture_output=True, text=True, check=False)
        if out.returncode:
            raise PipelineError(f"benchmarking the {method} step failed:\n{out.stderr.strip()}")
        results[method] = json.loads(out.stdout.strip().splitlines()[-1])
    results["batch_size"] = params.train.batch_size
    results["diffratio_over_vsd_step_time"] = (results["diffratio"]["seconds_per_step"]
                                               / results["vsd"]["seconds_per_step"])
    results["diffratio_over_vsd_peak_memory"] = (results["diffratio"]["peak_memory_mib"]
                                                 / results["vsd"]["peak_memory_mib"])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per method")
    parser.add_argument("--repeats", type=int, default=20, help="timed one-step sampling batches")
    parser.add_argument("--step", choices=["diffratio", "vsd"], help=argparse.SUPPRESS)  # the per-method child
    args = parser.parse_args()
    try:
        params = load_params()
        device = pick_device(params.device)
        if args.step:
            print(json.dumps(training_step(params, args.step, device, args.steps)))
            return
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        result = {"device": name, "threads": torch.get_num_threads(),
                  "sampling": sampling(params, device, args.repeats), "training": training(params, args.steps)}
    except PipelineError as exc:
        raise SystemExit(f"error: {exc}") from None
    write_json(METRICS, result)
    s, t = result["sampling"], result["training"]
    table = Table(title=f"measured side by side on {name} ({result['threads']} threads)")
    for column in ("what", "value", "ratio"):
        table.add_column(column, justify="left" if column == "what" else "right")
    table.add_row(f"one-step generator, batch {s['batch_size']}", f"{s['generator_images_per_second']:.0f} img/s",
                  f"{s['generator_over_teacher_throughput']:.1f}x the teacher")
    table.add_row(f"teacher Heun, {s['teacher_nfe']} NFE", f"{s['teacher_images_per_second']:.0f} img/s", "")
    for method in ("diffratio", "vsd"):
        table.add_row(f"{method} training step, batch {t['batch_size']}",
                      f"{t[method]['seconds_per_step'] * 1e3:.0f} ms, {t[method]['peak_memory_mib']:.0f} MiB", "")
    table.add_row("diffratio / vsd", "", f"{t['diffratio_over_vsd_step_time']:.2f}x time, "
                                         f"{t['diffratio_over_vsd_peak_memory']:.2f}x memory")
    console.print(table)


if __name__ == "__main__":
    main()
