"""The one training loop: score pretraining, DiffRatio and the baseline all run through `run_training`.

A task owns its networks, optimisers and EMA copies and knows how to take one optimisation step; the loop
owns everything else: duration and logging in images (not steps), the learning-rate ramp-up, EMA with a
half-life in images, periodic checkpoints and automatic resume, the progress bar and the training curves.

Checkpoints hold tensors only (safetensors) and a JSON sidecar with the counters, the curves so far and a
fingerprint of the params; a checkpoint whose fingerprint differs is discarded instead of resumed.

Under torchrun every process runs the loop in lockstep (the same RNG state, the same steps); the main
process alone writes checkpoints and shows progress, and logged values are averaged over processes. It holds
a lock beside the checkpoint folder for the whole run, so that two runs never share the folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

import torch
from rich import print
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline.artifacts import atomic_path, read_json, write_json
from pipeline.config import ComputeParams, LoopParams
from pipeline.errors import PipelineError
from pipeline.runtime import Runtime
from pipeline.stage import progress_bar
from pipeline.training.measure import synchronize


class Task(Protocol):  # e.g. pipeline.training_task.TrainingTask
    networks: dict[str, nn.Module]  # trained modules
    optimizers: dict[str, torch.optim.Optimizer]
    ema: dict[str, nn.Module]  # EMA copy of networks[name], same architecture

    def step(self, images: int) -> dict[str, torch.Tensor | float]:
        """One optimisation step on a fresh global batch, `images` images into training; returns scalars to log
        (a step may leave some out, e.g. during a warm-up). `skipped`, if present, is the number of updates the
        non-finite guard skipped."""


@dataclass
class LoopState:
    images: int = 0
    steps: int = 0
    skipped: int = 0  # updates skipped because their gradient was not finite
    curves: list[dict] = field(default_factory=list)
    diagnostics: list[dict] = field(default_factory=list)  # rows of the periodic diagnostics, with their images


def fingerprint(*parts: object, compute: ComputeParams) -> str:
    """A short hash of everything that defines a run (params, input artifacts, and the numerics settings of
    `compute`: precision, TF32, layout, compile; not the process or thread counts, which change at most the
    float rounding): resume only on equality."""
    blob = json.dumps([*parts, compute.model_dump(exclude={"processes", "threads"})], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@torch.no_grad()
def update_ema(ema: nn.Module, net: nn.Module, batch_size: int, halflife_images: float) -> None:
    beta = 0.5 ** (batch_size / halflife_images) if halflife_images > 0 else 0.0
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in net.parameters()], 1 - beta)  # one launch
    for b_ema, b_net in zip(ema.buffers(), net.buffers()):
        b_ema.copy_(b_net)


def _optimizer_tensors(name: str, opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    state = opt.state_dict()
    tensors = {f"optimizer/{name}/{pid}/{key}": torch.as_tensor(value)
               for pid, entries in state["state"].items() for key, value in entries.items()}
    return tensors, state["param_groups"]


def _load_optimizer(name: str, opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list) -> None:
    state: dict[int, dict] = {}
    prefix = f"optimizer/{name}/"
    for key, value in tensors.items():
        if key.startswith(prefix):
            pid, entry = key[len(prefix):].split("/", 1)
            # Adam's step counts live on the CPU (torch moves them to the device itself where fused or capturable
            # needs them): a device-resident count would cost one host sync per parameter per step
            state.setdefault(int(pid), {})[entry] = value.cpu() if entry == "step" else value
    opt.load_state_dict({"state": state, "param_groups": groups})


def save_checkpoint(directory: Path, task: Task, state: LoopState, run_id: str) -> None:
    tensors: dict[str, torch.Tensor] = {}
    groups = {}
    for name, net in task.networks.items():
        tensors.update({f"net/{name}/{k}": v for k, v in net.state_dict().items()})
    for name, net in task.ema.items():
        tensors.update({f"ema/{name}/{k}": v for k, v in net.state_dict().items()})
    for name, opt in task.optimizers.items():
        opt_tensors, groups[name] = _optimizer_tensors(name, opt)
        tensors.update(opt_tensors)
    tensors["rng/cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng/cuda"] = torch.cuda.get_rng_state()
    with atomic_path(directory) as tmp:
        tmp.mkdir()
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / "state.safetensors"))
        write_json(tmp / "state.json", {"run_id": run_id, "images": state.images, "steps": state.steps,
                                         "skipped": state.skipped, "optimizer_groups": groups, "curves": state.curves,
                                         "diagnostics": state.diagnostics})


def load_checkpoint(directory: Path, task: Task, run_id: str, runtime: Runtime) -> LoopState | None:
    """The saved state if `directory` holds a checkpoint of this very run; a stale one is removed."""
    meta_path, tensor_path = directory / "state.json", directory / "state.safetensors"
    if not (meta_path.exists() and tensor_path.exists()):
        return None
    meta = read_json(meta_path)
    if meta.get("run_id") != run_id:
        runtime.barrier()  # every process has read it
        if runtime.main:
            print(f"[yellow]discarding checkpoint {directory}: it belongs to other params or inputs")
            shutil.rmtree(directory)
        return None
    tensors = load_file(str(tensor_path), device=str(runtime.device))

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    for name, net in task.networks.items():
        net.load_state_dict(part(f"net/{name}/"))
    for name, net in task.ema.items():
        net.load_state_dict(part(f"ema/{name}/"))
    for name, opt in task.optimizers.items():
        _load_optimizer(name, opt, tensors, meta["optimizer_groups"][name])
    torch.set_rng_state(tensors["rng/cpu"].cpu())
    if "rng/cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng/cuda"].cpu())
    return LoopState(meta["images"], meta["steps"], meta["skipped"], meta["curves"], meta["diagnostics"])


def lr_factor(images: int, loop: LoopParams) -> float:
    """The multiple of the configured learning rates at `images` images into training: a linear ramp from 0 over the
    first lr_rampup_images, and a linear fall to 0 over the last lr_rampdown_images."""
    up = min(1.0, images / loop.lr_rampup_images) if loop.lr_rampup_images > 0 else 1.0
    down = (min(1.0, (loop.duration_images - images) / loop.lr_rampdown_images) if loop.lr_rampdown_images > 0
            else 1.0)
    return min(up, down)


def _set_lr(task: Task, images: int, loop: LoopParams) -> None:
    factor = lr_factor(images, loop)
    for opt in task.optimizers.values():
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * factor


def _mean_over_processes(sums: dict[str, float], runtime: Runtime) -> dict[str, float]:
    if runtime.world == 1:
        return sums
    values = runtime.sum(torch.tensor(list(sums.values()), dtype=torch.float64, device=runtime.device))
    return dict(zip(sums, (values / runtime.world).tolist()))


def _lock(checkpoint_dir: Path) -> tuple[IO[str] | None, str | None]:
    """An exclusive lock on `<checkpoint_dir>.lock` (beside the folder, which checkpoints replace), holding this
    process's id; or why not. The kernel releases it when the process ends, however it ends."""
    path = checkpoint_dir.with_name(f"{checkpoint_dir.name}.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        return None, (f"{checkpoint_dir} is in use by process {holder} (another run of this stage, or a worker "
                      f"left running by a killed run): wait for it to end or end it (`kill {holder}`), then rerun")
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle, None


@contextlib.contextmanager
def checkpoint_lock(checkpoint_dir: Path, runtime: Runtime) -> Iterator[None]:
    """Hold the checkpoint folder for the run (the main process holds the lock); refuse, in every process, when
    another process holds it."""
    handle, error = _lock(checkpoint_dir) if runtime.main else (None, None)
    error = runtime.gather(error)[0]
    if error:
        raise PipelineError(error)
    try:
        yield
    finally:
        if handle is not None:
            handle.close()


Diagnose = tuple[int, Callable[[int], list[dict]]]  # (every so many images, rows at a number of images)


def run_training(task: Task, loop: LoopParams, checkpoint_dir: str | Path, run_id: str, runtime: Runtime,
                 description: str, on_finish: Callable[[LoopState], None], seed: int,
                 diagnose: Diagnose | None = None) -> LoopState:
    """Train until `loop.duration_images`, resuming from `checkpoint_dir` when it holds this run's state.
    `seed` seeds torch's generator (a stream seed of pipeline.randomness).

    `diagnose` = (every, rows): the main process calls rows(images) every `every` images (not at the end, which is
    on_finish's business) and keeps them, with their images, in state.diagnostics; their time is not step time.
    `on_finish` writes the stage's outputs (main process only); the checkpoint is removed after it returns.
    A run is refused while another process holds the checkpoint folder.
    """
    checkpoint_dir = Path(checkpoint_dir)
    with checkpoint_lock(checkpoint_dir, runtime):
        return _train(task, loop, checkpoint_dir, run_id, runtime, description, on_finish, seed, diagnose)


def _train(task: Task, loop: LoopParams, checkpoint_dir: Path, run_id: str, runtime: Runtime, description: str,
           on_finish: Callable[[LoopState], None], seed: int, diagnose: Diagnose | None) -> LoopState:
    device = runtime.device
    for opt in task.optimizers.values():  # remember the configured rates before any ramp-up
        for group in opt.param_groups:
            group.setdefault("base_lr", group["lr"])
    torch.manual_seed(seed)
    state = load_checkpoint(checkpoint_dir, task, run_id, runtime) or LoopState()
    if state.images and runtime.main:
        print(f"resuming {description} from its checkpoint at {state.images:,} images")
    next_log = state.images + loop.log_every_images
    next_checkpoint = state.images + loop.checkpoint_every_images
    next_diagnosis = (state.images // diagnose[0] + 1) * diagnose[0] if diagnose else None
    # Logged values stay on the device between log points (float64 sums: the same as summing Python floats), and
    # the step time is the interval's wall time over its steps, so the device is synchronised at log points only.
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}  # steps that logged each key
    skipped = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    synchronize(device)
    interval_started, paused = time.perf_counter(), 0.0
    with progress_bar(runtime.main) as bar:
        bar_task = bar.add_task(description, total=loop.duration_images, completed=state.images, status="")
        while state.images < loop.duration_images:
            _set_lr(task, state.images, loop)
            logs = task.step(state.images)
            skipped += torch.as_tensor(logs.pop("skipped", 0), dtype=torch.float64, device=device)
            state.images += loop.batch_size
            state.steps += 1
            for name, net in task.networks.items():
                if name in task.ema:
                    update_ema(task.ema[name], net, loop.batch_size, loop.ema_halflife_images)
            for key, value in logs.items():
                value = torch.as_tensor(value, device=device).detach().double()
                sums[key] = sums[key] + value if key in sums else value
                counts[key] = counts.get(key, 0) + 1
            count += 1
            if state.images >= next_log or state.images >= loop.duration_images:
                synchronize(device)
                step_seconds = (time.perf_counter() - interval_started - paused) / count
                state.skipped += int(skipped)
                skipped.zero_()
                means = {k: v.item() / counts[k] for k, v in sums.items()}
                means = _mean_over_processes({**means, "step_seconds": step_seconds}, runtime)
                row = {"images": state.images, "step": state.steps, **means, "skipped_steps": state.skipped}
                state.curves.append(row)
                sums, counts, count = {}, {}, 0
                next_log += loop.log_every_images
                status = " ".join(f"{k}={v:.4g}" for k, v in row.items() if k not in ("images", "step"))
                bar.update(bar_task, status=status)
                interval_started, paused = time.perf_counter(), 0.0
            if next_diagnosis is not None and next_diagnosis <= state.images < loop.duration_images:
                started = time.perf_counter()
                if runtime.main:
                    state.diagnostics += [{"images": state.images, **row} for row in diagnose[1](state.images)]
                next_diagnosis += diagnose[0]
                paused += time.perf_counter() - started
            if state.images >= next_checkpoint and state.images < loop.duration_images:
                saving = time.perf_counter()
                state.skipped += int(skipped)
                skipped.zero_()
                if runtime.main:
                    save_checkpoint(checkpoint_dir, task, state, run_id)
                next_checkpoint += loop.checkpoint_every_images
                paused += time.perf_counter() - saving  # not part of any step's time
            bar.update(bar_task, completed=min(state.images, loop.duration_images))
    if runtime.main:
        on_finish(state)
        if checkpoint_dir.exists():
            shutil.rmtree(checkpoint_dir)
    return state
