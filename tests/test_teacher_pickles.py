"""The safe reader of published network pickles: it rebuilds data and refuses to run anything."""

import io
import json
import os
import pickle

import numpy as np
import pytest
import torch

from pipeline.errors import PipelineError
from pipeline.networks.published.pickles import PersistentObject, _Unpickler, read_pickle, state_dict
from tests.teacher_goldens import GOLDENS, golden_dir


class _RunsACommand:
    """Unpickling this the ordinary way calls os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_that_would_run_a_command_is_refused(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"ema": _RunsACommand(marker)}))
    pickle.loads(path.read_bytes())  # the ordinary way runs it: the test's premise holds
    assert marker.exists()
    marker.unlink()
    with pytest.raises(PipelineError, match=r"posix\.system|os\.system"):
        read_pickle(path)
    assert not marker.exists()


def test_missing_file_and_wrong_contents_are_named(tmp_path):
    with pytest.raises(PipelineError, match="not found"):
        read_pickle(tmp_path / "absent.pkl")
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(PipelineError, match="no 'ema' network"):
        read_pickle(path)


@pytest.mark.parametrize("name", GOLDENS)
def test_golden_pickles_read_as_data(name):
    folder = golden_dir()
    snapshot = read_pickle(folder / f"{name}.pkl")
    info = json.loads((folder / f"{name}.json").read_text())
    ema = snapshot["ema"]
    assert isinstance(ema, PersistentObject)
    assert info["class"].endswith("." + ema.class_name)
    assert ema.kwargs == info["kwargs"]
    weights = state_dict(ema)
    assert all(isinstance(t, torch.Tensor) for t in weights.values())
    dtypes = {t.dtype for k, t in weights.items() if not k.endswith(("freqs", "phases", "resample_filter"))}
    assert dtypes == {getattr(torch, info["weights_dtype"])}
    # the companion objects of a snapshot are data too, never live objects of the file's classes
    for key, value in snapshot.items():
        if key != "ema" and hasattr(value, "class_name"):
            assert isinstance(value, PersistentObject)


def test_numpy_1_pickles_read_too():
    """Published EDM pickles predate numpy 2: their arrays name numpy.core.multiarray."""
    data = pickle.dumps({"ema": None, "array": np.arange(3.0)}, protocol=3)  # globals as plain text lines
    old = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in old and b"numpy._core" not in old
    restored = _Unpickler(io.BytesIO(old)).load()
    assert np.array_equal(restored["array"], np.arange(3.0))
