"""The sanity battery: its degradations do what they say, and, in a fast version on the digits (the real-data
ladders; the teacher ladder needs a trained teacher and runs in `dvc repro`), every metric moves the way it
must and every degraded set is told apart from the floor."""

import numpy as np
import pytest

from pipeline.config import parse_params
from pipeline.datasets.prepared import load_prepared, write_prepared
from pipeline.evaluation import battery
from pipeline.evaluation.reference import load_reference
from stages import reference as reference_stage
from tests.helpers import CPU


def test_degradations():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 8, 8, 1)).astype(np.uint8)
    labels = np.repeat([0, 1], 10)
    smooth = battery.blur(images, 1.0).astype(float)
    assert np.abs(np.diff(smooth, axis=1)).mean() < 0.5 * np.abs(np.diff(images.astype(float), axis=1)).mean()
    noisy = battery.add_noise(images, 20, rng)
    assert noisy.dtype == np.uint8 and 10 < np.abs(noisy.astype(float) - images).mean() < 20
    half = battery.fewer_distinct(images, labels, 0.5)
    assert [len(np.unique(half[labels == c], axis=0)) for c in (0, 1)] == [5, 5]
    one = battery.fewer_distinct(images, labels, None)
    assert [len(np.unique(one[labels == c], axis=0)) for c in (0, 1)] == [1, 1]
    pool = rng.integers(0, 256, (40, 8, 8, 1)).astype(np.uint8)
    pool_labels = np.repeat([0, 1, 2, 3], 10)
    dropped = battery.drop_classes(images, labels, np.array([1]), pool_labels, np.arange(10),
                                   lambda rows: pool[rows], rng)
    replaced = dropped[labels == 1]
    assert np.array_equal(dropped[labels == 0], images[labels == 0])
    assert all(any(np.array_equal(image, pool[i]) for i in range(20, 40)) for image in replaced)  # classes 2, 3 only


@pytest.fixture(scope="module")
def scored(tmp_path_factory, request):
    """The battery's real-data sets scored with the default offline space on the digits."""
    folder = tmp_path_factory.mktemp("battery")
    params_dict = __import__("yaml").safe_load((request.config.rootpath / "params.yaml").read_text())
    params_dict["evaluation"].update(kid_subsets=20)
    params = parse_params(params_dict)
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.chdir(folder)
    write_prepared("data/prepared", params.prepare, params.seed)
    reference_stage.main(params, CPU)
    data = load_prepared("data/prepared")
    reference = load_reference("data/reference", params, CPU.device)
    sets = battery.real_sets(params, data, "data/reference", reference.info)
    result = battery.run_battery(reference, sets, params, data.num_classes)
    monkeypatch.undo()
    return result, reference.info["primary"]


@pytest.mark.slow
def test_every_metric_moves_the_expected_way(scored):
    result, space = scored
    checks = result["checks"][space]
    assert set(result["ladders"]) == {"blur", "noise", "diversity", "dropped_classes"}  # no teacher rows here
    failed = [f"{ladder}: {metric}" for ladder, metrics in checks["monotone"].items()
              for metric, ok in metrics.items() if not ok]
    assert not failed


@pytest.mark.slow
def test_every_degraded_set_is_told_apart_from_the_floor(scored):
    result, space = scored
    checks = result["checks"][space]
    assert all(checks["separated_by"].values()), checks["separated_by"]
    assert "copy_fraction" in checks["separated_by"]["training copies"]
    assert {"recall", "coverage"} <= set(checks["separated_by"]["one per class"])
    assert checks["collapse_below_teacher_and_floor"]
