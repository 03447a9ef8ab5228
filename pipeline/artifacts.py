"""Artifacts on disk: atomic writes, weights as safetensors with a JSON config beside them.

Nothing here unpickles: a weights file holds tensors only, its config is plain JSON. Every write goes to a
temporary sibling first and is renamed into place, so a killed stage never leaves a half-written file or
folder that looks whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from pipeline.errors import PipelineError


def remove(path: Path) -> None:
    """Delete a file, link or folder tree."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of `target`; on success it replaces `target`, on error it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if target.exists() and target.is_dir():
            remove(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            remove(tmp)


def write_json(path: str | Path, obj: object) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> dict:
    return json.loads(require(path).read_text())


def require(path: str | Path, produced_by: str | None = None) -> Path:
    """Fail with a clear message when an input artifact is missing."""
    path = Path(path)
    if not path.exists():
        how = f"run `dvc repro {produced_by}`" if produced_by else "run `dvc repro`"
        raise PipelineError(f"missing artifact {path}: {how} to produce it")
    return path


def save_weights(path: str | Path, tensors: dict[str, torch.Tensor], config: dict) -> None:
    """Write `<path>.safetensors` and `<path>.json` (the config needed to rebuild the network)."""
    path = Path(path)
    with atomic_path(path.with_suffix(".safetensors")) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    write_json(path.with_suffix(".json"), config)


def load_weights(path: str | Path, produced_by: str | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    path = Path(path)
    config = read_json(require(path.with_suffix(".json"), produced_by))
    try:
        tensors = load_file(str(require(path.with_suffix(".safetensors"), produced_by)))
    except Exception as exc:  # safetensors raises its own error types for truncated/corrupt files
        raise PipelineError(f"{path}.safetensors is unreadable ({exc}): delete it and rerun `dvc repro`") from None
    return tensors, config


def load_module(path: str | Path, build: Callable[[dict], torch.nn.Module], device: torch.device,
                produced_by: str) -> tuple[torch.nn.Module, dict]:
    """Rebuild a network from its JSON config with `build` and load its weights, frozen, for inference."""
    tensors, config = load_weights(path, produced_by)
    net = build(config)
    try:
        net.load_state_dict(tensors)
    except RuntimeError as exc:
        raise PipelineError(f"{path}: weights do not match their config ({exc}): rerun `dvc repro {produced_by}`") from None
    return net.to(device).eval().requires_grad_(False), config


def save_arrays(path: str | Path, **arrays: np.ndarray) -> None:
    """An uncompressed .npz of plain arrays (loaded with allow_pickle=False)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def load_arrays(path: str | Path, produced_by: str | None = None) -> dict[str, np.ndarray]:
    path = require(path, produced_by)
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except Exception as exc:
        raise PipelineError(f"{path} is unreadable ({exc}): delete it and rerun `dvc repro`") from None


def write_csv(path: str | Path, rows: list[dict]) -> None:
    """A table for `dvc plots`: the header is the union of the rows' keys, in first-seen order."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    lines = [",".join(columns)] + [",".join(_cell(row.get(c, "")) for c in columns) for row in rows]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def _cell(value: object) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)
