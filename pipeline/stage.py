"""What every stage entrypoint shares: validate params first, start the runtime, report errors plainly."""

from __future__ import annotations

import sys
from collections.abc import Callable

from rich.console import Console

from pipeline.config import Params, load_params
from pipeline.errors import PipelineError
from pipeline.runtime import Runtime, start, stop

console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)  # logs: tables unwrapped


def run_stage(body: Callable[[Params, Runtime], None], distributed: bool = False,
              params_path: str = "params.yaml") -> None:
    """Validate the whole params file, then run the stage; bad input exits 2 with the reason, nothing written.

    A `distributed` stage runs in every process torchrun started (compute.processes of them)."""
    try:
        params = load_params(params_path)
        runtime = start(params.device, params.compute, distributed)
        try:
            body(params, runtime)
        finally:
            stop()
    except PipelineError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)
