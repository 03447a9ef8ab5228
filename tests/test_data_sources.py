"""prepare's data sources and the prepared-data format, on data the tests make."""

import io
import pickle
import tarfile

import numpy as np
import pytest
from PIL import Image

from pipeline.config import PrepareParams
from pipeline.errors import PipelineError
from pipeline.prepared_data import HOLDOUT, TRAIN, load_prepared, write_prepared


def prepare_params(**changes) -> PrepareParams:
    base = dict(source="digits", path=None, resolution=8, holdout=100, max_images=None, on_bad_image="fail")
    return PrepareParams(**{**base, **changes})


def test_digits(tmp_path):
    manifest = write_prepared(tmp_path / "out", prepare_params(), seed=0)
    data = load_prepared(tmp_path / "out")
    assert data.images.shape == (1797, 8, 8, 1) and data.images.dtype == np.uint8
    assert data.images.max() == 255 and data.num_classes == 10
    assert manifest["num_holdout"] == 100 and (data.split == HOLDOUT).sum() == 100
    assert set(np.unique(data.labels)) == set(range(10))


def test_digits_resized_and_subset_are_deterministic(tmp_path):
    p = prepare_params(resolution=16, max_images=300, holdout=50)
    write_prepared(tmp_path / "a", p, seed=1)
    write_prepared(tmp_path / "b", p, seed=1)
    a, b = load_prepared(tmp_path / "a"), load_prepared(tmp_path / "b")
    assert a.images.shape == (300, 16, 16, 1)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.split, b.split)


def _pickled(obj) -> bytes:
    return pickle.dumps(obj, protocol=2)


def make_cifar_archive(path, per_batch=6, extra_member=None, drop=None):
    """A tiny archive in the exact format of cifar-10-python.tar.gz."""
    rng = np.random.default_rng(0)
    members = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        members[name] = _pickled({b"batch_label": name.encode(), b"labels": rng.integers(0, 10, per_batch).tolist(),
                                  b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                                  b"filenames": [b"x.png"] * per_batch})
    members["batches.meta"] = _pickled({b"label_names": [f"class{i}".encode() for i in range(10)],
                                        b"num_cases_per_batch": per_batch, b"num_vis": 3072})
    if extra_member:
        members.update(extra_member)
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in members.items():
            if name == drop:
                continue
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))


def test_cifar10_archive(tmp_path):
    make_cifar_archive(tmp_path / "cifar.tar.gz")
    manifest = write_prepared(tmp_path / "out", prepare_params(source="cifar10", path=str(tmp_path / "cifar.tar.gz"),
                                                               resolution=32, holdout=4), seed=0)
    data = load_prepared(tmp_path / "out")
    assert data.images.shape == (30 + 4, 32, 32, 3)  # 5 x 6 training images + 4 of the 6 test images
    assert manifest["holdout_from"] == "official test split" and manifest["class_names"][3] == "class3"


def test_cifar10_pixels_are_in_hwc_order(tmp_path):
    make_cifar_archive(tmp_path / "cifar.tar.gz", per_batch=2)
    write_prepared(tmp_path / "out", prepare_params(source="cifar10", path=str(tmp_path / "cifar.tar.gz"),
                                                    resolution=32, holdout=2), seed=0)
    data = load_prepared(tmp_path / "out")
    with tarfile.open(tmp_path / "cifar.tar.gz") as tar:
        raw = pickle.loads(tar.extractfile("cifar-10-batches-py/data_batch_1").read(), encoding="bytes")[b"data"][0]
    np.testing.assert_array_equal(data.images[0, 0, 0], raw[[0, 1024, 2048]])  # R, G, B planes of pixel (0, 0)


def test_wrong_archive_is_rejected(tmp_path):
    make_cifar_archive(tmp_path / "partial.tar.gz", drop="test_batch")
    with pytest.raises(PipelineError, match="lacks cifar-10-batches-py/test_batch"):
        write_prepared(tmp_path / "out", prepare_params(source="cifar10", path=str(tmp_path / "partial.tar.gz")), 0)
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(PipelineError, match="not a readable .tar.gz"):
        write_prepared(tmp_path / "out", prepare_params(source="cifar10", path=str(tmp_path / "junk.tar.gz")), 0)
    assert not (tmp_path / "out").exists()


def test_archive_with_code_in_its_pickles_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("executed",))
    make_cifar_archive(tmp_path / "evil.tar.gz", extra_member={"data_batch_1": pickle.dumps(Evil())})
    with pytest.raises(PipelineError, match="refusing to load builtins.print"):
        write_prepared(tmp_path / "out", prepare_params(source="cifar10", path=str(tmp_path / "evil.tar.gz")), 0)


def make_image_tree(root, corrupt=False):
    rng = np.random.default_rng(0)
    for c, size in (("cat", (40, 30)), ("dog", (24, 64))):
        (root / c).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    if corrupt:
        (root / "dog" / "broken.JPEG").write_bytes(b"\xff\xd8 truncated")


def test_imagefolder_center_crops_and_labels(tmp_path):
    make_image_tree(tmp_path / "tree")
    manifest = write_prepared(tmp_path / "out", prepare_params(source="imagefolder", path=str(tmp_path / "tree"),
                                                               resolution=16, holdout=2), seed=0)
    data = load_prepared(tmp_path / "out")
    assert data.images.shape == (10, 16, 16, 3) and manifest["class_names"] == ["cat", "dog"]
    assert sorted(np.bincount(data.labels).tolist()) == [5, 5]
    assert manifest["num_train"] == 8 and manifest["num_holdout"] == 2


def test_imagefolder_corrupt_image_fails_by_path(tmp_path):
    make_image_tree(tmp_path / "tree", corrupt=True)
    with pytest.raises(PipelineError, match=r"broken\.JPEG.*on_bad_image: skip"):
        write_prepared(tmp_path / "out", prepare_params(source="imagefolder", path=str(tmp_path / "tree"),
                                                        resolution=16, holdout=2), seed=0)
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == [tmp_path / "tree"]


def test_imagefolder_corrupt_image_skipped_and_recorded(tmp_path):
    make_image_tree(tmp_path / "tree", corrupt=True)
    manifest = write_prepared(tmp_path / "out", prepare_params(source="imagefolder", path=str(tmp_path / "tree"),
                                                               resolution=16, holdout=2, on_bad_image="skip"), seed=0)
    data = load_prepared(tmp_path / "out")
    assert len(data.images) == 10 and manifest["skipped"][0].endswith("broken.JPEG")
    assert (data.images.reshape(10, -1).max(1) > 0).all()  # no empty row left where the bad image was


def test_synthetic_source(tmp_path):
    write_prepared(tmp_path / "out", prepare_params(source="synthetic", resolution=32, max_images=20, holdout=4), 0)
    data = load_prepared(tmp_path / "out")
    assert data.images.shape == (20, 32, 32, 3) and data.part(TRAIN)[0].shape[0] == 16


def test_missing_and_mis_shaped_prepared_data(tmp_path):
    with pytest.raises(PipelineError, match="missing artifact .*manifest.json.*dvc repro prepare"):
        load_prepared(tmp_path / "nothing")
    write_prepared(tmp_path / "out", prepare_params(), seed=0)
    np.save(tmp_path / "out" / "images.npy", np.zeros((5, 8, 8, 1), np.uint8))
    with pytest.raises(PipelineError, match="do not match the manifest"):
        load_prepared(tmp_path / "out")
    (tmp_path / "out" / "labels.npy").write_bytes(b"garbage")
    with pytest.raises(PipelineError, match="corrupt prepared data"):
        load_prepared(tmp_path / "out")


def test_holdout_too_large(tmp_path):
    with pytest.raises(PipelineError, match="lower prepare.holdout"):
        write_prepared(tmp_path / "out", prepare_params(holdout=1000), seed=0)
    assert not (tmp_path / "out").exists()
