"""Where the golden teacher files live: made with NVlabs' official EDM and EDM2 code, kept outside the repository.

They are read from `../shared/oracles/teachers/` beside the repository (or $TEACHER_GOLDENS); tests that need
them are skipped, with the reason, when the folder is absent.
"""

import os
from pathlib import Path

import pytest

EDM_GOLDENS = ["edm-cifar10-32x32-uncond-vp", "edm-cifar10-32x32-cond-vp", "edm-cifar10-32x32-uncond-ve",
               "edm-imagenet-64x64-cond-adm"]
EDM2_GOLDENS = ["edm2-img512-s", "edm2-img512-xs-uncond"]
GOLDENS = EDM_GOLDENS + EDM2_GOLDENS


def golden_dir() -> Path:
    folder = Path(os.environ.get("TEACHER_GOLDENS") or Path(__file__).resolve().parents[2] / "shared" / "oracles"
                  / "teachers")
    if not (folder / "full_size_manifest.json").exists():
        pytest.skip(f"golden teacher files not found in {folder} (set TEACHER_GOLDENS to their folder)")
    return folder
