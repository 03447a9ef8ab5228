"""Speed and memory measured side by side in one run (every timing a median after 5 warm-up calls):

    python -m pipeline.experiments.benchmark                       # -> metrics/bench.json and a table of ratios
    python -m pipeline.experiments.benchmark --presets cifar10 imagenet512 --batch 8

On a GPU (the figures of metrics/bench_gpu.json and the README; the second command adds to the first's file;
`--no-default`: the default params' setting needs `dvc repro pretrain` there first):

    python -m pipeline.experiments.benchmark --no-default --presets cifar10 imagenet512 --repeats 10 --profile \
        --out metrics/bench_gpu.json
    python -m pipeline.experiments.benchmark --no-default --encode-batch 8 --repeats 8 --out metrics/bench_gpu.json \
        --append
    python -m pipeline.experiments.benchmark --no-default --presets cifar10 imagenet512 \
        --variants fp32 bf16 bf16-cl bf16-cl-compile --out metrics/bench_gpu_variants.json

For the default params (the pretrained teacher of `dvc repro pretrain`) and for each preset named (the network
it would train: its published teacher's architecture where teacher.source is checkpoint, else its pretrain
network; fresh weights: speed does not depend on the weights):

- sampling: the one-step generator against the teacher's Heun sampler (--teacher-nfe evaluations, 35 by
  default), the same network at the same batch: images per second;
- training: one DiffRatio step against one baseline (`vsd`) step on the same generator and batch: median
  step time and peak memory. Each method runs in a fresh process of its own, so one's allocations cannot
  inflate the other's peak (see pipeline/training/measure.py for what is measured);
- achieved FLOP/s of the one-step forward pass and of the DiffRatio step (FLOPs counted by PyTorch's
  FlopCounterMode), and on a known GPU the fraction of its dense bf16 peak;
- with --variants, each preset once per compute setting (VARIANTS: fp32, bf16 with TF32, channels_last,
  torch.compile) instead of once with its own;
- with --profile (CUDA), 3 DiffRatio training steps with their EMA updates under torch.profiler and
  torch.cuda.set_sync_debug_mode("warn"): every host synchronisation they make (where in the code), the
  attention kernels that ran and the 10 kernels that took the most time;
- encode: SD-VAE encoder and decoder throughput at 512x512 in fp32, as the encode stage runs it (diffusers'
  AutoencoderKL built from the sd-vae-ft-mse architecture, fresh weights).

Stage-2 variants of the default params (the claims' variants, pipeline/experiments/claims.py), each step in a process
of its own, one after another; their time against the default's and stage 2's predicted training time (steps x
step time, diagnostics and start-up not counted):

    python -m pipeline.experiments.benchmark --stage2 diffratio r1_subsample4 light_critic_r1_subsample4 --out metrics/bench_stage2.json

Scoring a set (pipeline/evaluation/metrics.py's score_set: FD, KID, prdc, the tail's recall, nearest neighbours) with
scikit-learn's distances under joblib's default backend (prdc as it ships asks for 8 jobs) and under the sequential
one the stages use, side by side on the same features (the default's shapes: 1,297 reference features of 82
dimensions, sets of 100); it fails unless both give the same metrics:

    python -m pipeline.experiments.benchmark --scoring --out metrics/bench_scoring.json

Presets run at compute.precision on CUDA and in fp32 on the CPU. `--batch` is the batch of every preset
measurement (default: the preset's per-process training batch on CUDA, 4 on the CPU). Figures depend on
the machine: the table names the device and the JSON records it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch.utils.flop_counter import FlopCounterMode

from pipeline import randomness
from pipeline.artifacts import read_json, write_json
from pipeline.config import Params, load_params, with_settings
from pipeline.datasets.encoders import IdentityEncoder, map_encoded
from pipeline.datasets.training_data import TrainingData
from pipeline.errors import PipelineError
from pipeline.experiments import claims
from pipeline.generation.sampling import edm_heun
from pipeline.networks.generator import OneStepGenerator
from pipeline.networks.models import build_denoiser, denoiser_config, load_denoiser
from pipeline.networks.published.convert import published_config
from pipeline.noise_levels import SIGMA_DATA, heun_sigmas
from pipeline.runtime import Runtime, pick_device, start
from pipeline.training.loop import update_ema
from pipeline.training.measure import PeakMemory, StepTimer, synchronize
from pipeline.training.methods import build_task

METRICS = "metrics/bench.json"
PRESET_SPACE = {"cifar10": (32, 3, 0), "imagenet64": (64, 3, 1000), "imagenet512": (64, 4, 1000),  # res, ch, classes
                "fashion": (28, 1, 10), "fashion_gpu": (28, 1, 10), "photos": (16, 3, 2)}
# dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets, by device-name substring, first match
BF16_PEAK = (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12))
VAE_ARCHITECTURE = {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
                    "block_out_channels": [128, 256, 512, 512], "sample_size": 512,
                    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4}
# the official constructor kwargs of the presets' published teachers (NVlabs' EDM and EDM2 releases)
PUBLISHED_TEACHERS = {
    "edm-cifar10-32x32-uncond-vp.pkl": ("VPPrecond", {
        "img_resolution": 32, "img_channels": 3, "label_dim": 0, "augment_dim": 9, "dropout": 0.13,
        "model_type": "SongUNet", "embedding_type": "positional", "encoder_type": "standard",
        "decoder_type": "standard", "channel_mult_noise": 1, "resample_filter": [1, 1], "channel_mult": [2, 2, 2],
        "model_channels": 128}),
    "edm-imagenet-64x64-cond-adm.pkl": ("EDMPrecond", {
        "img_resolution": 64, "img_channels": 3, "label_dim": 1000, "dropout": 0.1, "model_type": "DhariwalUNet",
        "channel_mult": [1, 2, 3, 4], "model_channels": 192}),
    "edm2-img512-s-2147483-0.130.pkl": ("Precond", {
        "img_resolution": 64, "img_channels": 4, "label_dim": 1000, "dropout": 0.0, "model_channels": 192}),
}
# compute settings a preset is compared under (--variants)
VARIANTS = {"fp32": {"precision": "fp32", "tf32": False, "channels_last": False, "compile": False},
            "bf16": {"precision": "bf16", "tf32": True, "channels_last": False, "compile": False},
            "bf16-cl": {"precision": "bf16", "tf32": True, "channels_last": True, "compile": False},
            "bf16-cl-compile": {"precision": "bf16", "tf32": True, "channels_last": True, "compile": True}}
ATTENTION_KERNELS = ("flash", "fmha", "attention", "sdpa", "softmax")  # substrings of attention kernels' names
console = Console()


STARTED = time.perf_counter()


def progress(message: str) -> None:
    """A line on stderr with the seconds since start: where a long run is."""
    print(f"[{time.perf_counter() - STARTED:7.1f} s] {message}", file=sys.stderr, flush=True)


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


class _Totals:
    """Stands in for FlopCounterMode's per-module tracker, whose backward hooks make autograd.grad fail on a leaf
    input (R1's double backward; pytorch issue 131753): every count goes to the one total the benchmark reads."""
    parents = ("Global",)

    def __enter__(self):
        return self

    def __exit__(self, *args):
        return False


def flops(fn) -> int:
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _Totals()
    with counter:
        fn()
    return counter.get_total_flops()


def cpu_model() -> str:
    """The processor's name (Linux), so that --append never mixes two kinds of CPU in one file."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown")


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


def network_config(params: Params, preset: str) -> dict:
    """The denoiser a preset trains: its published teacher's architecture, or its pretrain network."""
    t = params.teacher
    if t.source == "checkpoint" and t.checkpoint in PUBLISHED_TEACHERS:
        class_name, kwargs = PUBLISHED_TEACHERS[t.checkpoint]
        return published_config(class_name, kwargs, t.checkpoint)
    resolution, channels, classes = PRESET_SPACE[preset]
    return denoiser_config(params.pretrain.network, resolution, channels,
                           classes if params.pretrain.class_conditional else 0, SIGMA_DATA)


def setting(name: str, batch: int | None, device: torch.device) -> tuple[Params, Runtime, dict, int]:
    """Params, runtime, score-net config and batch of one benchmark setting: `default`, a preset, or
    `preset:variant` (the preset under VARIANTS[variant])."""
    if name == "default":
        params = load_params()
        return params, start(device.type, params.compute, distributed=False), None, params.sample.batch_size
    preset, _, variant = name.partition(":")
    params = load_params(f"presets/{preset}.yaml")
    compute = params.compute.model_copy(update={"processes": 1, **VARIANTS.get(variant, {})})
    if device.type != "cuda":
        compute = compute.model_copy(update={"precision": "fp32", "channels_last": False, "compile": False})
    per_process = params.train.batch_per_process or params.train.batch_size // params.compute.processes
    batch = batch or (per_process if device.type == "cuda" else 4)
    train = params.train.model_copy(update={"batch_size": batch, "batch_per_process": None})
    params = params.model_copy(update={"compute": compute, "train": train})
    # start: TF32 flags and cuDNN autotuning as in a stage
    return params, start(device.type, compute, distributed=False), network_config(params, preset), batch


def teacher_and_data(params: Params, config: dict | None,
                     runtime: Runtime) -> tuple[torch.nn.Module, dict, TrainingData]:
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
    progress(f"{name}: sampling, batch {batch}")
    with torch.no_grad(), runtime.autocast():
        one_step = timed(lambda: generator(z, labels), repeats, device)
        multi_step = timed(lambda: edm_heun(teacher, z, labels, sigmas), max(1, repeats // 8), device)
        forward_flops = flops(lambda: generator(z, labels))
    progress(f"{name}: sampling done")
    return {"batch_size": batch, "precision": runtime.compute.precision, "teacher_nfe": nfe,
            "generator_images_per_second": batch / one_step, "teacher_images_per_second": batch / multi_step,
            "generator_over_teacher_throughput": multi_step / one_step,
            "generator_forward": throughput(forward_flops, one_step, device)}


def training_step(name: str, batch: int | None, method: str, device: torch.device, steps: int,
                  profiled: bool, overrides: dict | None = None) -> dict:
    """One method's step time and peak memory (run in a process of its own), with `overrides` (flat params) set."""
    params, runtime, config, batch = setting(name, batch, device)
    if overrides:
        params = with_settings(params, overrides)
        method = params.method
    memory = PeakMemory(device)
    teacher, config, data = teacher_and_data(params, config, runtime)
    if runtime.compute.channels_last:  # the frozen teacher (VSD's) in the layout the trained nets get
        teacher.to(memory_format=torch.channels_last)
    task, _ = build_task(params.model_copy(update={"method": method}), teacher, config, data, runtime)
    progress(f"{name}: {method} step built, batch {batch}")
    seconds = timed(task.step, steps, device)
    progress(f"{name}: {method} step timed ({seconds * 1e3:.1f} ms)")
    result = {"batch_size": params.train.batch_size, "compute": runtime.compute.model_dump(exclude={"processes"}),
              "seconds_per_step": seconds, "peak_memory_mib": memory.peak_mib(), "memory_kind": memory.kind,
              "timed_steps": steps, "warmup_steps": WARMUP}
    # FlopCounterMode does not see inside compiled graphs: the same step's eager count stands in for it (main)
    result["step"] = throughput(flops(task.step), seconds, device) if not runtime.compute.compile else None
    if profiled and device.type == "cuda" and method == "diffratio":
        def iteration():  # what the training loop does per step between its log points
            task.step()
            for key, ema in task.ema.items():
                update_ema(ema, task.networks[key], params.train.batch_size, params.train.ema_halflife_images)
        result["profile"] = profile(iteration, device)
        progress(f"{name}: {method} profiled")
    return result


def profile(fn, device: torch.device, calls: int = 3) -> dict:
    """Host synchronisations, attention kernels and the costliest kernels of `calls` calls of fn."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    synchronize(device)
    with warnings.catch_warnings(record=True) as caught, \
            torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(calls):
                fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [f"{Path(w.filename).name}:{w.lineno}: {str(w.message).splitlines()[0]}" for w in caught
             if "called a synchronizing" in str(w.message)]  # not the mode's own notice that it is a prototype
    kernels = {e.key: e.device_time_total for e in prof.key_averages() if e.device_time_total > 0}
    total = sum(kernels.values())
    return {"calls": calls, "host_syncs": len(syncs), "host_sync_sites": sorted(set(syncs)),
            "attention_kernels": sorted(k for k in kernels if any(a in k.lower() for a in ATTENTION_KERNELS)),
            "top_kernels": [{"name": k[:120], "share": t / total}
                            for k, t in sorted(kernels.items(), key=lambda kv: -kv[1])[:10]]}


def training(name: str, batch: int | None, steps: int, profiled: bool) -> dict:
    results = {}
    for method in ("diffratio", "vsd"):
        command = [sys.executable, "-m", "pipeline.experiments.benchmark", "--step", method, "--setting", name,
                   "--steps", str(steps), *(["--batch", str(batch)] if batch else []),
                   *(["--profile"] if profiled else [])]
        out = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)  # progress: on stderr
        if out.returncode:
            raise PipelineError(f"benchmarking the {method} step ({name}) failed (its output is above)")
        results[method] = json.loads(out.stdout.strip().splitlines()[-1])
    results["diffratio_over_vsd_step_time"] = (results["diffratio"]["seconds_per_step"]
                                               / results["vsd"]["seconds_per_step"])
    results["diffratio_over_vsd_peak_memory"] = (results["diffratio"]["peak_memory_mib"]
                                                 / results["vsd"]["peak_memory_mib"])
    return results


def stage2_variants(variants: list[str], steps: int, out: str, device_name: str) -> dict:
    """Each claims variant's stage-2 step on the default params, in a process of its own, against the first's."""
    workspace = claims.workspace_params()
    result = {"device": device_name, "threads": torch.get_num_threads(), "variants": {}}
    for variant in variants:
        overrides = {k: v for k, v in claims.settings(variant, 0, workspace).items() if k != "train.seed"}
        command = [sys.executable, "-m", "pipeline.experiments.benchmark", "--step", "diffratio", "--steps",
                   str(steps), "--overrides", json.dumps(overrides)]
        out_ = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
        if out_.returncode:
            raise PipelineError(f"benchmarking the stage-2 step of {variant} failed (its output is above)")
        step = json.loads(out_.stdout.strip().splitlines()[-1])
        train = with_settings(load_params(), overrides).train
        count = -(-train.duration_images // train.batch_size)
        first = next(iter(result["variants"].values()), None)
        result["variants"][variant] = {
            "settings": overrides, "seconds_per_step": step["seconds_per_step"], "steps": count,
            "predicted_training_seconds": step["seconds_per_step"] * count,
            "step_time_over_first": step["seconds_per_step"] / (first or step)["seconds_per_step"],
            "peak_memory_mib": step["peak_memory_mib"]}
        write_json(out, result)
    table = Table(title=f"stage 2 measured one after another on {device_name} ({result['threads']} threads)")
    for column in ("variant", "step", "x first", "steps", "training (predicted)"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for variant, v in result["variants"].items():
        table.add_row(variant, f"{v['seconds_per_step']:.3f} s", f"{v['step_time_over_first']:.2f}x", str(v["steps"]),
                      f"{v['predicted_training_seconds']:.0f} s")
    console.print(table)
    return result


def fill_compiled_flops(settings: dict, device: torch.device) -> None:
    """A compiled step does the same arithmetic as its eager twin (same preset, method and batch): use its count."""
    for name, entry in settings.items():
        for method, step in entry["training"].items():
            if not isinstance(step, dict) or step.get("step") is not None:
                continue
            twin = next((e["training"][method]["step"] for other, e in settings.items()
                         if other.partition(":")[0] == name.partition(":")[0] and e["training"][method].get("step")
                         and e["training"][method]["batch_size"] == step["batch_size"]), None)
            if twin:
                step["step"] = throughput(twin["flops"], step["seconds_per_step"], device)


def encoding(device: torch.device, batch: int, repeats: int) -> dict:
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        raise PipelineError("--encode-batch needs diffusers: pip install -e '.[latent]'") from None

    torch.manual_seed(0)
    vae = AutoencoderKL(**VAE_ARCHITECTURE).to(device).eval().requires_grad_(False)
    images = torch.rand(batch, 3, 512, 512, device=device) * 2 - 1
    with torch.no_grad():
        latents = vae.encode(images).latent_dist.mean
        encode = timed(lambda: vae.encode(images).latent_dist.mean, repeats, device)
        decode = timed(lambda: vae.decode(latents).sample, repeats, device)
    return {"resolution": 512, "batch_size": batch, "precision": "fp32",
            "tf32": torch.backends.cuda.matmul.allow_tf32 if device.type == "cuda" else False,
            "images_per_second": batch / encode, "decode_images_per_second": batch / decode}


def scoring(repeats: int, out: str, device_name: str) -> dict:
    """score_set's time per set under joblib's default backend and the sequential one, alternating, on Gaussian
    features of the default run's shapes; the metrics must agree exactly."""
    # here, not at the top: clean-fid, prdc and scikit-learn add seconds to every per-method child process
    from pipeline.evaluation.frechet import moments
    from pipeline.evaluation.metrics import SpaceReference, score_set

    rng = randomness.rng("benchmark_features", 0)
    real, sets = rng.normal(size=(1297, 82)), [rng.normal(0.1, 1.0, size=(100, 82)) for _ in range(repeats)]
    ref = SpaceReference(*moments(real), real, copy_threshold=1.0)
    seconds, scores = {"default": [], "sequential": []}, {"default": [], "sequential": []}
    for features in sets:
        for name, backend in (("default", None), ("sequential", "sequential")):
            start = time.perf_counter()
            scores[name].append(score_set(features, ref, 100, 5, seed=0, jobs_backend=backend))
            seconds[name].append(time.perf_counter() - start)
    if scores["default"] != scores["sequential"]:
        raise PipelineError("the two joblib backends gave different metrics")
    median = {name: statistics.median(values[1:]) for name, values in seconds.items()}  # the first call warms up
    result = {"device": device_name, "sets": repeats, "seconds_per_set": median,
              "sequential_over_default": median["sequential"] / median["default"]}
    write_json(out, result)
    console.print(f"score_set on {device_name}: {median['default'] * 1e3:.0f} ms a set under joblib's default backend, "
                  f"{median['sequential'] * 1e3:.0f} ms sequential ({result['sequential_over_default']:.2f}x), "
                  f"the same metrics, over {repeats} sets -> {out}")
    return result


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
            step, achieved = t[method], t[method]["step"]
            peak = achieved and achieved["fraction_of_bf16_peak"]
            table.add_row("", f"{method} training step, batch {step['batch_size']}",
                          f"{step['seconds_per_step'] * 1e3:.1f} ms, {step['peak_memory_mib']:.0f} MiB",
                          (f"{achieved['tflops_per_second']:.3f} TFLOP/s" if achieved else "")
                          + (f" ({peak:.0%} of bf16 peak)" if peak else ""))
            if "profile" in step:
                prof = step["profile"]
                table.add_row("", f"  {prof['calls']} profiled steps", f"{prof['host_syncs']} host syncs",
                              ", ".join(prof["attention_kernels"])[:60] or "no attention kernel")
        table.add_row("", "diffratio / vsd", "", f"{t['diffratio_over_vsd_step_time']:.2f}x time, "
                                                 f"{t['diffratio_over_vsd_peak_memory']:.2f}x memory")
    if "encode" in result:
        e = result["encode"]
        table.add_row("sd-vae", f"{e['resolution']}px, batch {e['batch_size']} ({e['precision']})",
                      f"encode {e['images_per_second']:.2f} img/s", f"decode {e['decode_images_per_second']:.2f} img/s")
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="*", default=[], choices=sorted(PRESET_SPACE), help="presets to measure too")
    parser.add_argument("--variants", nargs="*", default=[], choices=sorted(VARIANTS),
                        help="measure each preset under these compute settings instead of its own")
    parser.add_argument("--no-default", action="store_true", help="skip the default params' setting")
    parser.add_argument("--batch", type=int, help="batch of the preset measurements")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per method")
    parser.add_argument("--repeats", type=int, default=20, help="timed one-step sampling batches")
    parser.add_argument("--teacher-nfe", type=int, default=35, help="network evaluations of the teacher's Heun sampler")
    parser.add_argument("--encode-batch", type=int, default=0, help="SD-VAE encode/decode batch (0: skip)")
    parser.add_argument("--profile", action="store_true", help="CUDA: profile 3 DiffRatio steps of every setting")
    parser.add_argument("--out", default=METRICS, help="the JSON file written")
    parser.add_argument("--append", action="store_true", help="add to --out's settings (same device) instead")
    parser.add_argument("--stage2", nargs="+", choices=list(claims.EVERY), metavar="VARIANT",
                        help="only stage-2 steps of these claims variants of the default params (the first is the "
                        "reference)")
    parser.add_argument("--scoring", action="store_true", help="only score_set under two joblib backends")
    parser.add_argument("--step", choices=["diffratio", "vsd"], help=argparse.SUPPRESS)  # the per-method child
    parser.add_argument("--setting", default="default", help=argparse.SUPPRESS)
    parser.add_argument("--overrides", type=json.loads, help=argparse.SUPPRESS)  # the child's flat params
    args = parser.parse_args()
    try:
        device = pick_device(load_params().device)
        if args.step:
            print(json.dumps(training_step(args.setting, args.batch, args.step, device, args.steps, args.profile,
                                           args.overrides)))
            return
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({cpu_model()})"
        if args.stage2:
            stage2_variants(args.stage2, args.steps, args.out, name)
            return
        if args.scoring:
            scoring(args.repeats, args.out, name)
            return
        result = {"device": name, "threads": torch.get_num_threads(), "settings": {}}
        if args.append and Path(args.out).exists():
            result = read_json(args.out)
            if result["device"] != name:
                raise PipelineError(f"--append: {args.out} was measured on {result['device']}, this is {name}: "
                                    "measure on the same device, or write another --out")
        names = [] if args.no_default else ["default"]
        names += [f"{p}:{v}" for p in args.presets for v in args.variants] if args.variants else args.presets
        for setting_name in names:
            batch = None if setting_name == "default" else args.batch
            result["settings"][setting_name] = {
                "sampling": sampling(setting_name, batch, device, args.repeats, args.teacher_nfe),
                "training": training(setting_name, batch, args.steps, args.profile)}
            fill_compiled_flops(result["settings"], device)
            write_json(args.out, result)  # each setting as it is measured
        if args.encode_batch:
            progress("sd-vae encode and decode")
            result["encode"] = encoding(device, args.encode_batch, max(2, args.repeats // 4))
            write_json(args.out, result)
    except PipelineError as exc:
        raise SystemExit(f"error: {exc}") from None
    report(result)


if __name__ == "__main__":
    main()
