"""Speed and memory measured side by side in one run (every timing a median after 5 warm-up calls):

    python -m pipeline.experiments.benchmark                       # -> metrics/bench.json and a table of ratios
    python -m pipeline.experiments.benchmark --presets cifar10 imagenet512 --batch 8

For the default params (the pretrained teacher of `dvc repro pretrain`) and for each preset named (its
networks with fresh weights: speed does not depend on the weights):

- sampling: the one-step generator against the teacher's Heun sampler (--teacher-nfe evaluations, 35 by
  default), the same network at the same batch: images per second;
- training: one DiffRatio step against one baseline (`vsd`) step on the same generator and batch: median
  step time and peak memory. Each method runs in a fresh process of its own, so one's allocations cannot
  inflate the other's peak (see pipeline/training/measure.py for what is measured);
- achieved FLOP/s of the one-step forward pass and of the DiffRatio step (FLOPs counted by PyTorch's
  FlopCounterMode), and on a known GPU the fraction of its dense bf16 peak;
- encode: SD-VAE encoder throughput at 512x512 (diffusers' AutoencoderKL built from the sd-vae-ft-mse
  architecture, fresh weights).

Presets run at compute.precision on CUDA and in fp32 on the CPU. `--batch` is the batch of every preset
measurement (default: the preset's per-process training batch on CUDA, 4 on the CPU). Figures depend on
the machine: the table names the device and bench.json records it.
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
from torch.utils.flop_counter import FlopCounterMode

from pipeline.artifacts import write_json
from pipeline.config import Params, load_params
from pipeline.datasets.encoders import IdentityEncoder, map_encoded
from pipeline.datasets.training_data import TrainingData
from pipeline.errors import PipelineError
from pipeline.generation.sampling import edm_heun, heun_sigmas
from pipeline.networks.generator import OneStepGenerator
from pipeline.networks.models import build_denoiser, denoiser_config, load_denoiser
from pipeline.runtime import Runtime, pick_device, start
from pipeline.training.measure import PeakMemory, StepTimer
from pipeline.training.methods import build_task

METRICS = "metrics/bench.json"
PRESET_SPACE = {"cifar10": (32, 3, 0), "imagenet64": (64, 3, 1000), "imagenet512": (64, 4, 1000)}  # res, ch, classes
# dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets, by device-name substring, first match
BF16_PEAK = (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12))
VAE_ARCHITECTURE = {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
                    "block_out_channels": [128, 256, 512, 512], "sample_size": 512,
                    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4}
console = Console()


WARMUP = 5  # untimed calls first: allocator growth, cuDNN autotuning and lazy initialisation settle


def timed(fn, repeats: int, device: torch.device) -> float:
    """Median seconds of fn() over `repeats` calls, after WARMUP untimed ones."""
    for _ in range(WARMUP):
        fn()
    times = []
    for _ in range(repeats):
        with StepTimer(device) as timer:
            fn()
        times.append(timer.seconds)
    return statistics.median(times)


def flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK if key in name), None)


def throughput(work_flops: int, seconds: float, device: torch.device) -> dict:
    achieved = work_flops / seconds
    peak = peak_flops(device)
    return {"flops": work_flops, "tflops_per_second": achieved / 1e12,
            "fraction_of_bf16_peak": achieved / peak if peak else None}


def setting(name: str, batch: int | None, device: torch.device) -> tuple[Params, Runtime, dict, int]:
    """Params, runtime, score-net config and batch of one benchmark setting: `default` or a preset."""
    if name == "default":
        params = load_params()
        return params, start(device.type, params.compute, distributed=False), None, params.sample.batch_size
    params = load_params(f"presets/{name}.yaml")
    compute = params.compute.model_copy(update={"processes": 1})
    if device.type != "cuda":
        compute = compute.model_copy(update={"precision": "fp32", "channels_last": False, "compile": False})
    batch = batch or (params.train.batch_per_process if device.type == "cuda" else 4)
    resolution, channels, classes = PRESET_SPACE[name]
    config = denoiser_config(params.pretrain.network, resolution, channels,
                             classes if params.pretrain.class_conditional else 0, params.pretrain.sigma_data)
    train = params.train.model_copy(update={"batch_size": batch, "batch_per_process": None})
    params = params.model_copy(update={"compute": compute, "train": train})
    return params, start(device.type, compute, distributed=False), config, batch  # start: TF32 flags as in a stage


def teacher_and_data(params: Params, config: dict | None, runtime: Runtime) -> tuple[torch.nn.Module, dict, TrainingData]:
    device = runtime.device
    if config is None:
        teacher, config = load_denoiser("data/pretrain/score", device, "pretrain")
        encoder, shards, labels = map_encoded("data/encoded", device)
        return teacher, config, TrainingData(encoder, shards, labels, device)
    torch.manual_seed(0)
    teacher = build_denoiser(config).to(device).eval().requires_grad_(False)
    shape = (256, config["channels"], config["resolution"], config["resolution"])
    labels = torch.arange(256) % max(config["num_classes"], 1)
    return teacher, config, TrainingData(IdentityEncoder(), [{"x": torch.randn(shape) * 0.5}], labels, device)


def sampling(name: str, batch: int | None, device: torch.device, repeats: int, nfe: int) -> dict:
    params, runtime, config, batch = setting(name, batch, device)
    teacher, config, _ = teacher_and_data(params, config, runtime)
    if runtime.compute.channels_last:
        teacher.to(memory_format=torch.channels_last)
    generator = OneStepGenerator(teacher, params.train.t_init)
    z = torch.randn(batch, config["channels"], config["resolution"], config["resolution"], device=device)
    labels = torch.arange(batch, device=device) % config["num_classes"] if config["num_classes"] else None
    sigmas = heun_sigmas(nfe, params.sample.sigma_min, params.sample.sigma_max, params.sample.rho)
    with torch.no_grad(), runtime.autocast():
        one_step = timed(lambda: generator(z, labels), repeats, device)
        multi_step = timed(lambda: edm_heun(teacher, z, labels, sigmas), max(1, repeats // 8), device)
        forward_flops = flops(lambda: generator(z, labels))
    return {"batch_size": batch, "precision": runtime.compute.precision, "teacher_nfe": nfe,
            "generator_images_per_second": batch / one_step, "teacher_images_per_second": batch / multi_step,
            "generator_over_teacher_throughput": multi_step / one_step,
            "generator_forward": throughput(forward_flops, one_step, device)}


def training_step(name: str, batch: int | None, method: str, device: torch.device, steps: int) -> dict:
    """One method's step time and peak memory (run in a process of its own)."""
    params, runtime, config, batch = setting(name, batch, device)
    memory = PeakMemory(device)
    teacher, config, data = teacher_and_data(params, config, runtime)
    if runtime.compute.channels_last:  # the frozen teacher (VSD's) in the layout the trained nets get
        teacher.to(memory_format=torch.channels_last)
    task, _ = build_task(params.model_copy(update={"method": method}), teacher, config, data, runtime)
    seconds = timed(task.step, steps, device)
    result = {"batch_size": params.train.batch_size, "seconds_per_step": seconds, "peak_memory_mib": memory.peak_mib(),
              "memory_kind": memory.kind}
    result["step"] = throughput(flops(task.step), seconds, device)
    return result


def training(name: str, batch: int | None, steps: int) -> dict:
    results = {}
    for method in ("diffratio", "vsd"):
        command = [sys.executable, "-m", "pipeline.experiments.benchmark", "--step", method, "--setting", name, "--steps", str(steps)]
        out = subprocess.run(command + (["--batch", str(batch)] if batch else []), capture_output=True, text=True,
                             check=False)
        if out.returncode:
            raise PipelineError(f"benchmarking the {method} step ({name}) failed:\n{out.stderr.strip()}")
        results[method] = json.loads(out.stdout.strip().splitlines()[-1])
    results["diffratio_over_vsd_step_time"] = (results["diffratio"]["seconds_per_step"]
                                               / results["vsd"]["seconds_per_step"])
    results["diffratio_over_vsd_peak_memory"] = (results["diffratio"]["peak_memory_mib"]
                                                 / results["vsd"]["peak_memory_mib"])
    return results


def encoding(device: torch.device, batch: int, repeats: int) -> dict:
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        raise PipelineError("--encode-batch needs diffusers: pip install -e '.[latent]'") from None

    torch.manual_seed(0)
    vae = AutoencoderKL(**VAE_ARCHITECTURE).to(device).eval().requires_grad_(False)
    images = torch.rand(batch, 3, 512, 512, device=device) * 2 - 1
    with torch.no_grad():
        seconds = timed(lambda: vae.encode(images).latent_dist.mean, repeats, device)
    return {"resolution": 512, "batch_size": batch, "images_per_second": batch / seconds}


def report(result: dict) -> None:
    table = Table(title=f"measured side by side on {result['device']} ({result['threads']} threads)")
    for column in ("setting", "what", "value", "ratio"):
        table.add_column(column, justify="left" if column in ("setting", "what") else "right")
    for name, entry in result["settings"].items():
        s, t = entry["sampling"], entry["training"]
        share = s["generator_forward"]["fraction_of_bf16_peak"]
        table.add_row(name, f"one-step generator, batch {s['batch_size']} ({s['precision']})",
                      f"{s['generator_images_per_second']:.1f} img/s",
                      f"{s['generator_over_teacher_throughput']:.1f}x the teacher")
        table.add_row("", f"teacher Heun, {s['teacher_nfe']} NFE", f"{s['teacher_images_per_second']:.2f} img/s", "")
        table.add_row("", "one-step forward", f"{s['generator_forward']['tflops_per_second']:.3f} TFLOP/s",
                      f"{share:.0%} of bf16 peak" if share is not None else "")
        for method in ("diffratio", "vsd"):
            step = t[method]
            table.add_row("", f"{method} training step, batch {step['batch_size']}",
                          f"{step['seconds_per_step'] * 1e3:.0f} ms, {step['peak_memory_mib']:.0f} MiB",
                          f"{step['step']['tflops_per_second']:.3f} TFLOP/s")
        table.add_row("", "diffratio / vsd", "", f"{t['diffratio_over_vsd_step_time']:.2f}x time, "
                                                 f"{t['diffratio_over_vsd_peak_memory']:.2f}x memory")
    if "encode" in result:
        e = result["encode"]
        table.add_row("sd-vae", f"encode {e['resolution']}px, batch {e['batch_size']}", f"{e['images_per_second']:.2f} img/s", "")
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="*", default=[], choices=sorted(PRESET_SPACE), help="presets to measure too")
    parser.add_argument("--batch", type=int, help="batch of the preset measurements")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per method")
    parser.add_argument("--repeats", type=int, default=20, help="timed one-step sampling batches")
    parser.add_argument("--teacher-nfe", type=int, default=35, help="network evaluations of the teacher's Heun sampler")
    parser.add_argument("--encode-batch", type=int, default=0, help="SD-VAE encode batch (0: skip)")
    parser.add_argument("--step", choices=["diffratio", "vsd"], help=argparse.SUPPRESS)  # the per-method child
    parser.add_argument("--setting", default="default", help=argparse.SUPPRESS)
    args = parser.parse_args()
    try:
        device = pick_device(load_params().device)
        if args.step:
            print(json.dumps(training_step(args.setting, args.batch, args.step, device, args.steps)))
            return
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        result = {"device": name, "threads": torch.get_num_threads(), "settings": {}}
        for setting_name in ["default", *args.presets]:
            steps = args.steps if setting_name == "default" else max(2, args.steps // 5)
            repeats = args.repeats if setting_name == "default" else max(2, args.repeats // 5)
            batch = None if setting_name == "default" else args.batch
            result["settings"][setting_name] = {"sampling": sampling(setting_name, batch, device, repeats, args.teacher_nfe),
                                                "training": training(setting_name, batch, steps)}
        if args.encode_batch:
            result["encode"] = encoding(device, args.encode_batch, max(2, args.repeats // 10))
    except PipelineError as exc:
        raise SystemExit(f"error: {exc}") from None
    write_json(METRICS, result)
    report(result)


if __name__ == "__main__":
    main()
