"""Two CPU processes (torchrun, gloo) against one: the distributed stages give the same results.

encode, pretrain, train, sample and fid run on the digits data with tiny budgets, once in one process and
once in two (with gradient accumulation in the training stages): encoded tensors, samples and every set's
scores are identical, trained weights and pooled scores equal up to float rounding.
"""

import json
import shutil

import numpy as np
import pytest
import torch

from tests.helpers import stage, tensors, write_params

pytestmark = pytest.mark.slow



def arrays(folder) -> dict[str, np.ndarray]:
    out = {}
    for path in sorted(folder.rglob("*.npz")):
        with np.load(path) as data:
            out.update({f"{path.relative_to(folder)}/{key}": data[key] for key in data.files})
    return out


def run_both(workdir, name: str, output: str, batch_per_process: dict[str, int | None] = {}) -> tuple:
    """The stage's output with one process, then with two (the single-process output is restored after)."""
    write_params(workdir, 1, {})
    stage(workdir, name, 1)
    single = workdir / f"{output}-1"
    shutil.copytree(workdir / output, single)
    write_params(workdir, 2, batch_per_process)
    stage(workdir, name, 2)
    double = workdir / f"{output}-2"
    shutil.move(workdir / output, double)
    shutil.copytree(single, workdir / output)  # later stages read the single-process result
    return single, double


def test_two_processes_match_one(tmp_path):
    write_params(tmp_path, 1, {})
    stage(tmp_path, "prepare", 1)
    stage(tmp_path, "reference", 1)

    one, two = run_both(tmp_path, "encode", "data/encoded")
    a, b = tensors(one), tensors(two)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((one / "encoder.json").read_text()) == json.loads((two / "encoder.json").read_text())

    # pretrain: 32 rows per step; two processes take 16 each, in two passes of 8
    one, two = run_both(tmp_path, "pretrain", "data/pretrain", {"pretrain": 8})
    a, b = tensors(one), tensors(two)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=2e-5)

    # train: 16 rows per step; two processes take 8 each, in two passes of 4
    one, two = run_both(tmp_path, "train", "data/train", {"train": 4})
    a, b = tensors(one), tensors(two)
    assert a.keys() == b.keys()
    teacher = tensors(tmp_path / "data/pretrain")
    moved = max((a[k] - teacher["score.safetensors/" + k.split("/", 1)[1]]).abs().max()
                for k in a if k.startswith("generator_online.safetensors/"))
    assert moved > 1e-4  # the generator trained (raw weights); the tolerance below is far smaller
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=2e-5)

    one, two = run_both(tmp_path, "sample", "data/samples")  # 4 batches of 10: two per process
    a, b = arrays(one), arrays(two)
    assert a.keys() == b.keys() and len(a) == 4 * 4 * 2
    assert all(np.array_equal(a[k], b[k]) for k in a)

    write_params(tmp_path, 1, {})
    stage(tmp_path, "fid", 1)
    single = json.loads((tmp_path / "metrics/fid.json").read_text())
    single_sets = (tmp_path / "metrics/fid_sets.csv").read_text()
    write_params(tmp_path, 2, {})
    stage(tmp_path, "fid", 2)  # one set per process
    double = json.loads((tmp_path / "metrics/fid.json").read_text())
    assert (tmp_path / "metrics/fid_sets.csv").read_text() == single_sets  # every set scored alike
    space = single["primary"]
    for row in ("teacher", "generator_init", "generator", "generator_online"):
        assert double[row]["num_samples"] == single[row]["num_samples"] == 40
        assert double[row][space]["fd"] == single[row][space]["fd"]
        # the pooled statistics are summed over processes in another order; sqrtm of a rank-deficient
        # covariance (40 samples) amplifies it to ~1e-8
        assert double[row][space]["fd_pooled"] == pytest.approx(single[row][space]["fd_pooled"], rel=1e-6)
    assert double["protocol"]["processes"] == 2 and "seed 0 + i" in single["protocol"]["seeds"]
