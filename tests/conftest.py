import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.runtime import set_threads
from tests.helpers import ROOT


def pytest_configure(config):
    """Under `pytest -n` (pytest-xdist), each worker gets its own share of the cores, pinned: torch and the
    stages it starts (whose `threads: auto` reads the pinned set) then use those cores only, as two torch
    processes that each use every core slow each other far more than their share."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")  # gw0, gw1, ...
    if worker is None or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    workers = int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    mine = set(cores[int(worker.removeprefix("gw")) % len(cores)::max(1, workers)] or cores)
    os.sched_setaffinity(0, mine)
    set_threads(len(mine))


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


@pytest.fixture(scope="session")
def tiny_vae_dir(tmp_path_factory) -> Path:
    """A tiny SD-VAE-shaped AutoencoderKL (3 -> 4 channels, 2x down) saved as a folder, like a downloaded one."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                                  down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                                  up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
                                  block_out_channels=(8, 16), norm_num_groups=4, sample_size=16)
    path = tmp_path_factory.mktemp("vae") / "tiny-vae"
    vae.save_pretrained(path)  # the same folder layout as a downloaded stabilityai/sd-vae-ft-mse
    return path
