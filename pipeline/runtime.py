"""Where and how a stage runs: the device, its share of the processes under torchrun, and the numerics.

`dvc repro` starts the distributed stages (encode, pretrain, train, sample, fid) through `pipeline.launch`,
which runs torchrun with compute.processes processes on one node or on each of several; every process builds a
`Runtime` from torchrun's environment. One process per GPU (NCCL), or several CPU processes (gloo). With one
process nothing is initialised and every collective below is a no-op, so the single-process path is plain
PyTorch.

Work is split by index, never by chance: a process takes a fixed share of the rows of a batch, of the
samples or of the images, so that what is computed does not depend on the number of processes.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from pipeline.artifacts import atomic_path, remove
from pipeline.config import ComputeParams
from pipeline.errors import PipelineError


def pick_device(setting: str) -> torch.device:
    if setting == "cuda" and not torch.cuda.is_available():
        raise PipelineError("device: cuda was asked for but no CUDA device is visible: set device: auto or cpu")
    if setting == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    compute: ComputeParams
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """The process that writes the outputs (rank 0)."""
        return self.rank == 0

    def share(self, count: int) -> range:
        """This process's items of `count` (round-robin), e.g. sample batches or image shards."""
        return range(self.rank, count, self.world)

    def rows(self, size: int) -> slice:
        """This process's contiguous rows of a batch of `size` (divisible by the number of processes)."""
        per = size // self.world
        return slice(self.rank * per, (self.rank + 1) * per)

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum over processes (in place; a tensor on this process's device)."""
        if self.world > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def gather(self, obj: object) -> list:
        """Every process's `obj`, in rank order, on every process."""
        if self.world == 1:
            return [obj]
        out: list = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    @contextlib.contextmanager
    def atomic_folder(self, target: str | Path) -> Iterator[Path]:
        """A temporary folder that every process writes into; once all are done the main process renames it
        to `target`. One process: artifacts.atomic_path. A run killed midway leaves only a hidden
        `.<name>.tmp-*` sibling, which the next run removes."""
        target = Path(target)
        if self.world == 1:
            with atomic_path(target) as tmp:
                tmp.mkdir()
                yield tmp
            return
        tmp = target.with_name(f".{target.name}.tmp-{self.gather(uuid.uuid4().hex[:8])[0]}")
        if self.main:
            for stale in target.parent.glob(f".{target.name}.tmp-*"):
                remove(stale)
            tmp.mkdir(parents=True)
        self.barrier()
        yield tmp
        self.barrier()
        if self.main:
            if target.exists():
                remove(target)
            os.replace(tmp, target)

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast when compute.precision is bf16 (matmuls and convolutions; norms, logits and losses
        stay fp32), otherwise nothing."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.compute.precision == "bf16")

    def prepare(self, net: nn.Module) -> nn.Module:
        """A trained network as the process runs it: channels_last, DDP across processes, torch.compile,
        as compute asks. Weights stay shared with `net`, which is what EMA, checkpoints and outputs read."""
        if self.compute.channels_last:
            net.to(memory_format=torch.channels_last)
        run: nn.Module = net
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # published teachers carry parameters their forward never uses (EDM2's log-variance head, EDM's
            # augment-label map when nothing is augmented): DDP must not wait for their gradients
            unused = any(type(m).__module__.startswith("pipeline.networks.published") for m in net.modules())
            run = nn.parallel.DistributedDataParallel(net, device_ids=ids, find_unused_parameters=unused)
        if self.compute.compile:
            run = torch.compile(run)
        return run


def die_with_parent() -> None:
    """Have Linux send this process SIGTERM when its parent ends, however it ends (SIGKILL included)."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # 1: PR_SET_PDEATHSIG


def _die_with_agent() -> None:
    """A worker ends with torchrun's agent (the launcher): torchrun starts each worker in a session of its own,
    so a killed `dvc repro` would otherwise leave it training. pipeline.launch names the agent, which catches
    an agent that died before this ran."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    die_with_parent()
    agent = os.environ.get("DIFFRATIO_AGENT_PID")
    if agent and int(agent) != os.getppid():  # the agent ended before the line above
        os.kill(os.getpid(), signal.SIGTERM)


def _check_world(compute: ComputeParams) -> None:
    """torchrun started compute.processes processes (the value DVC tracks) on every node."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    nodes = int(os.environ.get("GROUP_WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    if nodes == 1 and world != compute.processes:
        how = ("run it through `dvc repro`, whose commands start them (python -m pipeline.launch)" if world == 1
               else f"set compute.processes: {world}, or launch {compute.processes} processes")
        raise PipelineError(f"compute.processes = {compute.processes} but {world} process(es) were started: {how}")
    if nodes > 1 and (local != compute.processes or world != compute.processes * nodes):
        raise PipelineError(f"compute.processes = {compute.processes} per node, but this node started {local} of "
                            f"{world} processes on {nodes} nodes: start every node with `python -m pipeline.launch "
                            f"--nproc-per-node {compute.processes}`, or set compute.processes")


def queue_jobs() -> int:
    """How many experiments a DVC queue runs at once, when this process is one of them (DVC sets DVC_EXP_NAME
    in a queued experiment's environment): the queue's worker processes, `dvc exp queue-worker` each, counted
    in /proc. 1 otherwise, or where /proc cannot tell."""
    if "DVC_EXP_NAME" not in os.environ:
        return 1
    workers = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:  # the process ended, or is not ours to read
            continue
        if b"queue-worker" in argv[:-1]:
            workers.add(argv[argv.index(b"queue-worker") + 1])  # the worker's node name
    return max(1, len(workers))


def thread_count(setting: int | str, local_processes: int) -> int:
    """CPU threads for one process: the setting, or for `auto` the cores this process may run on shared out
    among the processes that run at once on this machine (torchrun's local processes times a DVC queue's jobs):
    two torch processes that each use every core slow each other far more than their share."""
    if setting != "auto":
        return int(setting)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // (local_processes * queue_jobs()))


def set_threads(count: int) -> None:
    """torch's intra-op threads and the BLAS/OpenMP pools numpy, scipy and scikit-learn use."""
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(count)
    threadpool_limits(count)


def cuda_placement(local_rank: int, local_world: int, gpus: int) -> tuple[torch.device, str]:
    """A process's GPU and the process group's backend: one process per GPU over NCCL; more processes than GPUs
    share them round-robin over gloo (NCCL refuses two ranks on one GPU), e.g. two ranks against one on a
    single GPU to check that results do not depend on the number of processes."""
    return torch.device("cuda", local_rank % gpus), "nccl" if local_world <= gpus else "gloo"


def start(device_setting: str, compute: ComputeParams, distributed: bool) -> Runtime:
    """The Runtime of this process. A distributed stage ends with its launcher, checks that torchrun started
    compute.processes processes per node and joins the process group of all of them."""
    if distributed:
        _die_with_agent()
        _check_world(compute)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    set_threads(thread_count(compute.threads, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    device = pick_device(device_setting)
    rank = int(os.environ.get("RANK", "0")) if distributed else 0
    backend = "gloo"
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = compute.tf32
        torch.backends.cudnn.allow_tf32 = compute.tf32
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest convolution algorithms
        if distributed and world > 1:
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
            device, backend = cuda_placement(int(os.environ["LOCAL_RANK"]), local_world, torch.cuda.device_count())
            torch.cuda.set_device(device)
    if distributed and world > 1:
        dist.init_process_group(backend, device_id=device if backend == "nccl" else None)
        return Runtime(device, compute, rank, world)
    return Runtime(device, compute)


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
