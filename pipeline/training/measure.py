"""Wall time and peak memory of training, measured the same way for every method.

CUDA: the allocator's peak (torch.cuda.max_memory_allocated) since `reset`. CPU: the growth of the
process's peak resident set over its resident set at `reset` (ru_maxrss); it includes the allocator's
slack, so compare CPU figures only with CPU figures.
"""

from __future__ import annotations

import resource
import time

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _resident_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


class PeakMemory:
    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    @property
    def kind(self) -> str:
        return "cuda_allocated" if self.device.type == "cuda" else "cpu_rss_growth"

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.start = _resident_mib()

    def peak_mib(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - self.start


class StepTimer:
    """Seconds of one step, with the device queue drained at both ends."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self) -> StepTimer:
        synchronize(self.device)
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        synchronize(self.device)
        self.seconds = time.perf_counter() - self.started
