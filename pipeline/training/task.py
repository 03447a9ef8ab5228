"""One optimisation step on a global batch, whatever the number of processes and passes.

A step's batch (the loop's batch_size) is split into contiguous rows: each process takes its rows and
runs them in passes of `batch_per_process`, accumulating gradients; DDP averages them over processes.
Every random number of the step is drawn for the whole global batch (pipeline.randomness.Draws), so the step
sees the same samples, noise and labels, and its gradient is the same batch mean (up to float rounding), for
any split.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

from pipeline.config import LoopParams
from pipeline.networks.published.mp_layers import renormalize_weights
from pipeline.randomness import Draws, ProcessStream
from pipeline.runtime import Runtime


def gradient_norm(module: nn.Module) -> torch.Tensor:
    """The global L2 norm of the gradients, in a few multi-tensor kernels (no per-parameter loop)."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


def adam(params, lr: float, betas: tuple[float, float], device: torch.device, weight_decay: float = 0.0
         ) -> torch.optim.Adam:
    """Adam with CUDA's fused kernel; elsewhere the foreach one (on the CPU the same numbers as the plain loop).
    `weight_decay` is decoupled (AdamW: each step shrinks the weights by lr * weight_decay); at 0 it is Adam."""
    cuda = device.type == "cuda"
    return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, fused=cuda or None,
                             foreach=None if cuda else True)


def guarded_step(optimizer: torch.optim.Optimizer, finite: torch.Tensor) -> None:
    """optimizer.step() where `finite` (a 0-d bool tensor) is true; otherwise nothing changes, step counts included.
    The fused kernel takes the flag on the device (the mechanism of torch's GradScaler), so a CUDA step never
    waits for the host; the other implementations branch on it."""
    if optimizer.defaults.get("fused"):
        optimizer.found_inf = (~finite).float()
        optimizer.step()
        del optimizer.found_inf
    elif finite:
        optimizer.step()


class TrainingTask:
    """Networks, their EMA copies and optimisers, and the accumulated, guarded update of one of them.

    `networks[name]` holds the weights (what EMA, checkpoints and outputs read); `run[name]` is how this
    process runs it for a trained forward pass (DDP, channels_last, compile: see Runtime.prepare).
    """

    def __init__(self, networks: dict[str, nn.Module], ema: dict[str, nn.Module],
                 optimizers: dict[str, torch.optim.Optimizer], loop: LoopParams, runtime: Runtime):
        self.networks, self.ema, self.optimizers, self.runtime = networks, ema, optimizers, runtime
        self.run = {name: runtime.prepare(net) for name, net in networks.items()}
        for net in networks.values():
            renormalize_weights(net)
        self.batch_size = loop.batch_size
        mine = runtime.rows(loop.batch_size)
        per_pass = loop.batch_per_process or mine.stop - mine.start
        self.passes = [slice(start, start + per_pass) for start in range(mine.start, mine.stop, per_pass)]
        # one process: the networks draw from the shared stream, in program order, as always
        self.stream = ProcessStream(runtime.device, runtime.rank) if runtime.world > 1 else None

    def update(self, name: str, loss: Callable[[Draws], tuple[torch.Tensor, dict[str, torch.Tensor]]]
               ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """One update of networks[name]: `loss(draws)` returns the mean loss over the rows `draws` hands
        out, and scalars to log. Returns the logs (averaged over passes) and the gradient norm. A step whose
        gradient is not finite is skipped and counted under `skipped` in the logs."""
        stream = self.stream
        draws = Draws(self.batch_size, self.runtime.device, stream.shared if stream else contextlib.nullcontext)
        optimizer = self.optimizers[name]
        optimizer.zero_grad(set_to_none=True)
        logs: dict[str, torch.Tensor] = {}
        with stream.own() if stream else contextlib.nullcontext():
            for k, rows in enumerate(self.passes):
                draws.select(rows)
                with self._sync(name, last=k == len(self.passes) - 1), self.runtime.autocast():
                    value, pass_logs = loss(draws)
                # per-pass means, weighted so the accumulated, process-averaged gradient is the batch mean
                (value * (draws.n * self.runtime.world / self.batch_size)).backward()
                for key, v in pass_logs.items():
                    logs[key] = logs.get(key, 0) + v.detach().float() / len(self.passes)
        norm = gradient_norm(self.networks[name])
        finite = torch.isfinite(norm)
        guarded_step(optimizer, finite)
        # EDM2's forced weight normalisation (other nets: no-op); after a skipped step it leaves the weights as they
        # were up to rounding (they were normalised after the last update)
        renormalize_weights(self.networks[name])
        optimizer.zero_grad(set_to_none=True)
        logs["skipped"] = (~finite).float()
        return logs, norm

    def _sync(self, name: str, last: bool) -> contextlib.AbstractContextManager:
        """DDP averages gradients on the last pass only."""
        ddp = getattr(self.run[name], "_orig_mod", self.run[name])  # under torch.compile
        if last or not isinstance(ddp, nn.parallel.DistributedDataParallel):
            return contextlib.nullcontext()
        return ddp.no_sync()
