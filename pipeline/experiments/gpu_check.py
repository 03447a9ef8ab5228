"""The CUDA path checked end to end on one GPU, on synthetic data (no dataset or weights needed):

    python -m pipeline.experiments.gpu_check                      # -> metrics/gpu_check.json
    python -m pipeline.experiments.gpu_check --only stages ranks  # some parts, in this order

- stages: every stage of dvc.yaml, by the command DVC runs, in a scratch folder (.runs/gpu/<preset>/) with the
  preset's compute settings and networks at tiny budgets and one process, on synthetic gratings of the preset's
  size: cifar10 (32 px pixels; the teacher pretrained by the pretrain stage);
- compile: cifar10's train stage again with compute.compile;
- latent: the imagenet512 preset's stages (512 px images through a full-size SD-VAE with fresh weights,
  measured whitening; the teacher the published EDM2-S architecture with fresh weights, written where the
  teacher stage writes a converted snapshot, since no snapshot can be read here).
- ranks: pretrain, then train, in fp32 without TF32 and without dropout, once in one process (two accumulation
  passes) and once in two processes sharing the GPU over gloo (one pass each): the relative difference of
  the trained weights.
- resume: pretrain's launcher killed with SIGKILL after the first checkpoint; no worker may outlive it, and the
  rerun resumes and ends at the uninterrupted run's weights (relative difference).

Each part records what it ran and measured; the command fails when a check fails.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from pipeline.artifacts import read_json, write_json

ROOT = Path(__file__).resolve().parents[2]
RUNS = Path(".runs/gpu")
METRICS = "metrics/gpu_check.json"
TOLERANCE = 1e-5  # relative difference of trained weights allowed between process counts and across a resume
EDM2_S = ("Precond", {"img_resolution": 64, "img_channels": 4, "label_dim": 1000, "dropout": 0.0,
                      "model_channels": 192})  # the imagenet512 preset's published teacher's architecture
# tiny budgets over the presets' sections (the networks, batches and compute stay the preset's)
TINY = {"prepare": {"source": "synthetic", "path": None, "max_images": 600, "holdout": 300, "shard_size": 200},
        "reference": {"inception": "off", "epochs": 1, "max_images": 200, "max_features": 1000, "batch_size": 50},
        "evaluation": {"set_size": 50, "num_sets": 2, "floor_sets": 2, "kid_subsets": 10},
        "battery": {"teacher_nfe": [35, 9, 3]},
        "verifier": {"max_steps": 20, "validation_images": 100, "calibration_images": 100, "test_images": 100},
        "scale": {"num_sets": 2, "num_candidates": [1, 2, 4]},
        "gradient_bias": {"budgets": [10, 30], "seeds": [0], "eval_samples": 1000}}


def preset_params(preset: str, pretrain_steps: int, train_steps: int) -> dict:
    params = yaml.safe_load((ROOT / "presets" / f"{preset}.yaml").read_text())
    params["compute"]["processes"] = 1
    for section, values in TINY.items():
        params[section].update(values)
    for section, steps in (("pretrain", pretrain_steps), ("train", train_steps)):
        batch = params[section]["batch_size"]
        params[section].update({"duration_images": batch * steps, "log_every_images": batch,
                                "checkpoint_every_images": batch * 1000, "lr_rampup_images": 0,
                                "lr_rampdown_images": 0})
    params["sample"]["batch_size"] = min(params["sample"]["batch_size"], 100)
    return params


def stage_commands() -> list[tuple[str, str]]:
    """(name, command) of every stage of dvc.yaml, in its order (each stage's inputs come from earlier ones)."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return [(name, spec["cmd"]) for name, spec in stages.items()]


def environment() -> dict[str, str]:
    """This environment with the repository first on the stages' import path."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}


def command_line(command: str, processes: int) -> list[str]:
    """A dvc.yaml command as DVC would run it, with this interpreter."""
    argv = shlex.split(command.replace("${compute.processes}", str(processes)))
    return [sys.executable, *argv[1:]] if argv[0] == "python" else argv


def run_command(command: str, workdir: Path, processes: int) -> subprocess.CompletedProcess:
    return subprocess.run(command_line(command, processes), cwd=workdir, env=environment(), capture_output=True,
                          text=True)


def run_stages(workdir: Path, params: dict, names: list[str] | None = None) -> dict:
    """Run the named stages (default: all) in workdir with `params`; wall seconds per stage. Fails on the first
    stage that fails, with its output."""
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    seconds = {}
    for name, command in stage_commands():
        if names is not None and name not in names:
            continue
        started = time.perf_counter()
        out = run_command(command, workdir, params["compute"]["processes"])
        if out.returncode:
            raise SystemExit(f"error: stage {name} failed in {workdir}:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}")
        seconds[name] = round(time.perf_counter() - started, 2)
        print(f"  {workdir.name}: {name} {seconds[name]:.1f} s", flush=True)
    return seconds


def curve_summary(path: Path) -> dict:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    last = rows[-1]
    return {"steps": int(float(last["step"])), "skipped_steps": int(float(last["skipped_steps"])),
            "step_seconds_last_interval": float(last["step_seconds"]),
            "finite": all(v not in ("nan", "inf", "-inf") for row in rows for v in row.values())}


def write_published_teacher(workdir: Path, class_name: str, kwargs: dict, checkpoint: str) -> None:
    """data/teacher as the teacher stage leaves it for a converted snapshot: the architecture, fresh weights."""
    from pipeline.artifacts import atomic_path
    from pipeline.networks.models import build_denoiser, save_denoiser
    from pipeline.networks.published.convert import describe, published_config

    torch.manual_seed(0)
    config = published_config(class_name, kwargs, checkpoint)
    net = build_denoiser(config).eval()
    with atomic_path(workdir / "data/teacher") as tmp:
        tmp.mkdir(parents=True)
        save_denoiser(tmp / "score", net, config)
        write_json(tmp / "teacher.json", describe(net, config))


def write_fresh_vae(folder: Path) -> None:
    from diffusers import AutoencoderKL

    from pipeline.experiments.benchmark import VAE_ARCHITECTURE
    torch.manual_seed(0)
    AutoencoderKL(**VAE_ARCHITECTURE).save_pretrained(folder)


def cifar_params(pretrain_steps: int = 10, train_steps: int = 10) -> dict:
    """The cifar10 preset at tiny budgets, its teacher pretrained by the pretrain stage."""
    params = preset_params("cifar10", pretrain_steps, train_steps)
    params["teacher"] = {"source": "pretrain", "checkpoint": None}
    return params


def check_stages() -> dict:
    cifar = RUNS / "cifar10"
    params = cifar_params()
    cifar.mkdir(parents=True, exist_ok=True)
    seconds = run_stages(cifar, params)
    return finite({"preset": "cifar10", "compute": params["compute"], "stage_seconds": seconds,
                   "pretrain": curve_summary(cifar / "metrics/pretrain_curves.csv"),
                   "train": curve_summary(cifar / "metrics/train_curves.csv")})


def check_compile() -> dict:
    cifar = RUNS / "cifar10"
    if not (cifar / "data/pretrain").exists():
        raise SystemExit(f"error: {cifar}/data/pretrain is missing: run the stages part first")
    params = cifar_params()
    params["compute"]["compile"] = True
    seconds = run_stages(cifar, params, ["train"])
    return finite({"preset": "cifar10", "compute": params["compute"], "stage_seconds": seconds,
                   "train": curve_summary(cifar / "metrics/train_curves.csv")})


def check_latent() -> dict:
    imagenet = RUNS / "imagenet512"
    imagenet.mkdir(parents=True, exist_ok=True)
    params = preset_params("imagenet512", pretrain_steps=1, train_steps=4)
    params["prepare"]["shard_size"] = 100
    params["encode"].update({"vae": str((imagenet / "sd-vae").resolve()), "whitening": "measured"})
    write_fresh_vae(imagenet / "sd-vae")
    names = [name for name, _ in stage_commands()]
    seconds = run_stages(imagenet, params, names[:names.index("teacher")])
    write_published_teacher(imagenet, *EDM2_S, params["teacher"]["checkpoint"])
    seconds.update(run_stages(imagenet, params, names[names.index("teacher") + 1:]))
    return finite({"preset": "imagenet512", "compute": params["compute"], "stage_seconds": seconds,
                   "teacher": "EDM2-S architecture, fresh weights (written by the check)",
                   "train": curve_summary(imagenet / "metrics/train_curves.csv")})


def finite(result: dict) -> dict:
    for part in ("pretrain", "train"):
        if part in result and not result[part]["finite"]:
            raise SystemExit(f"error: {result['preset']} {part}: a logged value is not finite")
    return result


def exact_params(steps: int) -> dict:
    """cifar10's networks in fp32 (TF32 off, NCHW, eager), no dropout, batches of 64 and 32 in passes of half."""
    params = cifar_params(pretrain_steps=steps, train_steps=steps // 2)
    params["compute"].update({"precision": "fp32", "tf32": False, "channels_last": False, "compile": False})
    params["pretrain"]["network"]["dropout"] = 0.0
    for section, batch in (("pretrain", 64), ("train", 32)):
        params[section].update({"batch_size": batch, "batch_per_process": batch // 2, "duration_images":
                                batch * params[section]["duration_images"] // params[section]["batch_size"],
                                "log_every_images": batch})
    params["train"].update({"diagnostic_samples": 64, "diagnostic_levels": 2})
    return params


def scratch_with_data(name: str) -> Path:
    """A fresh scratch folder with the cifar10 run's prepared and encoded data (run `stages` first)."""
    source, workdir = RUNS / "cifar10", RUNS / name
    if not (source / "data/encoded").exists():
        raise SystemExit(f"error: {source}/data/encoded is missing: run the stages part first")
    shutil.rmtree(workdir, ignore_errors=True)
    for folder in ("data/prepared", "data/encoded", "data/teacher"):
        shutil.copytree(source / folder, workdir / folder)
    return workdir


def weights(workdir: Path, *names: str) -> dict[str, torch.Tensor]:
    return {f"{name}/{k}": v.double() for name in names
            for k, v in load_file(str(workdir / "data" / f"{name}.safetensors")).items()}


def relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    if a.keys() != b.keys():
        raise SystemExit("error: the two runs saved different tensors")
    diff = sum((a[k] - b[k]).pow(2).sum() for k in a)
    return float((diff / sum(v.pow(2).sum() for v in a.values())).sqrt())


def check_ranks() -> dict:
    params = exact_params(steps=8)
    runs = {}
    for processes in (1, 2):
        workdir = scratch_with_data(f"ranks{processes}")
        params["compute"]["processes"] = processes
        run_stages(workdir, params, ["pretrain", "train"])
        runs[processes] = workdir
    pretrain = relative_difference(weights(runs[1], "pretrain/score"), weights(runs[2], "pretrain/score"))
    train = relative_difference(weights(runs[1], "train/generator", "train/ratio"),
                                weights(runs[2], "train/generator", "train/ratio"))
    result = {"backend": "gloo (2 processes on 1 GPU)", "pretrain_relative_difference": pretrain,
              "train_relative_difference": train, "tolerance": TOLERANCE}
    if max(pretrain, train) > TOLERANCE:
        raise SystemExit(f"error: 1 and 2 processes differ by {max(pretrain, train):.2e} > {TOLERANCE}: {result}")
    return result


def worker_pids(workdir: Path) -> list[int]:
    """Processes running a stage with `workdir` as their working directory."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                here = Path(os.readlink(proc / "cwd")) == workdir.resolve()
                if here and b"stages." in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


def check_resume() -> dict:
    params = exact_params(steps=40)
    params["compute"]["processes"] = 1
    params["pretrain"]["checkpoint_every_images"] = params["pretrain"]["batch_size"] * 4
    straight = scratch_with_data("straight")
    run_stages(straight, params, ["pretrain"])
    killed = scratch_with_data("killed")
    (killed / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    launcher = subprocess.Popen(command_line(dict(stage_commands())["pretrain"], 1), cwd=killed, start_new_session=True,
                                env=environment(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    state = killed / "data/checkpoints/pretrain/state.json"
    deadline = time.time() + 300
    while not state.exists() and launcher.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    if not state.exists():
        raise SystemExit("error: the pretrain run wrote no checkpoint to kill it after")
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    time.sleep(3)
    orphans = worker_pids(killed)
    for pid in orphans:
        os.kill(pid, signal.SIGKILL)
    images_at_kill = int(yaml.safe_load(state.read_text())["images"])
    out = run_command(dict(stage_commands())["pretrain"], killed, 1)
    if out.returncode:
        raise SystemExit(f"error: the resumed pretrain failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    difference = relative_difference(weights(straight, "pretrain/score"), weights(killed, "pretrain/score"))
    result = {"killed_after_images": images_at_kill, "of_images": params["pretrain"]["duration_images"],
              "workers_left_running": len(orphans), "resumed": "resuming pretrain" in out.stdout + out.stderr,
              "relative_difference_to_uninterrupted": difference, "tolerance": TOLERANCE}
    if orphans or not result["resumed"] or difference > TOLERANCE:
        raise SystemExit(f"error: kill and resume failed its checks: {result}")
    return result


PARTS = {"stages": check_stages, "compile": check_compile, "latent": check_latent, "ranks": check_ranks,
         "resume": check_resume}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=sorted(PARTS), help="run these parts (default: all)")
    parser.add_argument("--out", default=METRICS)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device is visible: this check is for a GPU machine")
    result = {"device": torch.cuda.get_device_name(), "torch": str(torch.__version__)}
    if Path(args.out).exists() and read_json(args.out).get("device") == result["device"]:
        result = {**read_json(args.out), **result}  # parts run before on this device stay
    for name in args.only or list(PARTS):
        started = time.perf_counter()
        print(f"{name} ...", flush=True)
        result[name] = PARTS[name]()
        result[name]["seconds"] = round(time.perf_counter() - started, 1)
        write_json(args.out, result)  # what has passed so far
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
