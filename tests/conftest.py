import shutil
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


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
