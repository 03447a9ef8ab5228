import shutil
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.config import ComputeParams
from pipeline.runtime import Runtime

ROOT = Path(__file__).resolve().parents[1]
# one CPU process, fp32: what a stage gets from `python -m stages.<name>` on this machine
CPU = Runtime(torch.device("cpu"), ComputeParams(processes=1, precision="fp32", tf32=False, channels_last=False,
                                                compile=False))


@pytest.fixture
def params_dict() -> dict:
    """The repository's params.yaml as a plain dict, to mutate in a test."""
    return yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """A temporary working directory (stages read params.yaml and write data/ relative to it)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def copy_params(dest: Path) -> None:
    shutil.copy(ROOT / "params.yaml", dest / "params.yaml")
