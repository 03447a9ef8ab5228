"""What every stage entrypoint shares: validate params first, start the runtime, report errors plainly, show progress."""

from __future__ import annotations

import sys
from collections.abc import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from pipeline.config import Params, load_params
from pipeline.errors import PipelineError
from pipeline.runtime import Runtime, start, stop

console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)  # logs: tables unwrapped


def progress_bar(show: bool = True) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), TextColumn("{task.fields[status]}"), disable=not show)


def check_split(params: Params, world: int) -> None:
    """The training batches split over all `world` processes. params.yaml is checked against compute.processes,
    one node's share: across nodes there are more."""
    for name, loop in (("pretrain", params.pretrain), ("train", params.train)):
        per, rest = divmod(loop.batch_size, world)
        if rest:
            raise PipelineError(f"{name}.batch_size = {loop.batch_size} does not split over the {world} processes "
                                f"of all nodes: make it a multiple of {world}")
        if loop.batch_per_process is not None and per % loop.batch_per_process:
            raise PipelineError(f"{name}.batch_per_process = {loop.batch_per_process} does not divide the {per} "
                                f"rows each of the {world} processes of all nodes gets: use a divisor of {per}, "
                                f"or null")


def run_stage(body: Callable[[Params, Runtime], None], distributed: bool = False,
              params_path: str = "params.yaml") -> None:
    """Validate the whole params file, then run the stage; bad input exits 2 with the reason, nothing written.

    A `distributed` stage runs in every process torchrun started (compute.processes of them on each node)."""
    try:
        params = load_params(params_path)
        runtime = start(params.device, params.compute, distributed)
        try:
            check_split(params, runtime.world)
            body(params, runtime)
        finally:
            stop()
    except PipelineError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)
