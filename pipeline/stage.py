"""What every stage entrypoint shares: validate params first, pick the device, report errors plainly."""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
from rich.console import Console

from pipeline.config import Params, load_params
from pipeline.errors import PipelineError

console = Console(stderr=True)


def pick_device(setting: str) -> torch.device:
    if setting == "cuda" and not torch.cuda.is_available():
        raise PipelineError("device: cuda was asked for but no CUDA device is visible: set device: auto or cpu")
    if setting == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def run_stage(body: Callable[[Params], None], params_path: str = "params.yaml") -> None:
    """Validate the whole params file, then run the stage; bad input exits 2 with the reason, nothing written."""
    try:
        params = load_params(params_path)
        body(params)
    except PipelineError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)
