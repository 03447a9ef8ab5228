"""prepare's data sources and the prepared-data format, on data the tests make."""

import gzip
import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.datasets import sources as data_sources
from pipeline.datasets.prepared import HOLDOUT, TRAIN, load_prepared, write_prepared
from pipeline.errors import PipelineError
from tests.helpers import prepare_params


def all_images(data) -> np.ndarray:
    """Every prepared image in file order (the tests' data is small)."""
    return np.concatenate(data.shards)


def test_digits(tmp_path):
    manifest = write_prepared(tmp_path / "out", prepare_params(), seed=0)
    data = load_prepared(tmp_path / "out")
    images = all_images(data)
    assert images.shape == (1797, 8, 8, 1) and images.dtype == np.uint8
    assert images.max() == 255 and data.num_classes == 10 and manifest["shards"] == [1797]
    assert manifest["num_holdout"] == 100 and (data.split == HOLDOUT).sum() == 100
    assert set(np.unique(data.labels)) == set(range(10))


def test_digits_resized_and_subset_are_deterministic(tmp_path):
    p = prepare_params(resolution=16, max_images=300, holdout=50)
    write_prepared(tmp_path / "a", p, seed=1)
    write_prepared(tmp_path / "b", p, seed=1)
    a, b = load_prepared(tmp_path / "a"), load_prepared(tmp_path / "b")
    assert all_images(a).shape == (300, 16, 16, 1)
    np.testing.assert_array_equal(all_images(a), all_images(b))
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
    assert all_images(data).shape == (30 + 4, 32, 32, 3)  # 5 x 6 training images + 4 of the 6 test images
    assert manifest["holdout_from"] == "official test split" and manifest["class_names"][3] == "class3"


def test_cifar10_pixels_are_in_hwc_order(tmp_path):
    make_cifar_archive(tmp_path / "cifar.tar.gz", per_batch=2)
    write_prepared(tmp_path / "out", prepare_params(source="cifar10", path=str(tmp_path / "cifar.tar.gz"),
                                                    resolution=32, holdout=2), seed=0)
    data = load_prepared(tmp_path / "out")
    with tarfile.open(tmp_path / "cifar.tar.gz") as tar:
        raw = pickle.loads(tar.extractfile("cifar-10-batches-py/data_batch_1").read(), encoding="bytes")[b"data"][0]
    np.testing.assert_array_equal(data.shards[0][0, 0, 0], raw[[0, 1024, 2048]])  # R, G, B planes of pixel (0, 0)


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
    assert all_images(data).shape == (10, 16, 16, 3) and manifest["class_names"] == ["cat", "dog"]
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
    images = all_images(data)
    assert len(images) == 10 and manifest["skipped"][0].endswith("broken.JPEG")
    assert (images.reshape(10, -1).max(1) > 0).all()  # no empty row left where the bad image was


def test_synthetic_source(tmp_path):
    write_prepared(tmp_path / "out", prepare_params(source="synthetic", resolution=32, max_images=20, holdout=4), 0)
    data = load_prepared(tmp_path / "out")
    assert all_images(data).shape == (20, 32, 32, 3) and data.part(TRAIN)[0].shape[0] == 16
    assert data.count(TRAIN) == 16 and data.count(HOLDOUT) == 4


def test_missing_and_mis_shaped_prepared_data(tmp_path):
    with pytest.raises(PipelineError, match="missing artifact .*manifest.json.*dvc repro prepare"):
        load_prepared(tmp_path / "nothing")
    write_prepared(tmp_path / "out", prepare_params(shard_size=700), seed=0)  # 700 + 700 + 397 images
    out = tmp_path / "out"
    np.save(out / "images-00001.npy", np.zeros((5, 8, 8, 1), np.uint8))
    with pytest.raises(PipelineError, match=r"images-00001\.npy: uint8 \(5, 8, 8, 1\) does not match the manifest "
                                            r"\(uint8 \(700, 8, 8, 1\)\): rerun `dvc repro prepare`"):
        load_prepared(out)
    (out / "labels.npy").write_bytes(b"garbage")
    with pytest.raises(PipelineError, match="corrupt prepared data.*rerun `dvc repro prepare`"):
        load_prepared(out)
    (out / "images-00002.npy").unlink()
    with pytest.raises(PipelineError, match=r"missing artifact .*images-00002\.npy: run `dvc repro prepare`"):
        load_prepared(out)


def test_older_unsharded_prepared_data_is_refused(tmp_path):
    write_prepared(tmp_path / "out", prepare_params(), seed=0)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    del manifest["shards"]
    (tmp_path / "out" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PipelineError, match="older .unsharded. format: rerun `dvc repro prepare`"):
        load_prepared(tmp_path / "out")


def test_holdout_too_large(tmp_path):
    with pytest.raises(PipelineError, match="lower prepare.holdout"):
        write_prepared(tmp_path / "out", prepare_params(holdout=1000), seed=0)
    assert not (tmp_path / "out").exists()


def read_split(data, which, batch_size, indices=None):
    parts = list(data.batches(which, batch_size, indices))
    return np.concatenate([images for images, _ in parts]), np.concatenate([labels for _, labels in parts])


def test_shards_hold_the_same_data_as_one_file(tmp_path):
    one = write_prepared(tmp_path / "one", prepare_params(holdout=200), seed=0)
    three = write_prepared(tmp_path / "three", prepare_params(holdout=200, shard_size=700), seed=0)
    assert one["shards"] == [1797] and three["shards"] == [700, 700, 397]
    a, b = load_prepared(tmp_path / "one"), load_prepared(tmp_path / "three")
    assert sorted(p.name for p in (tmp_path / "three").iterdir()) == [
        "images-00000.npy", "images-00001.npy", "images-00002.npy", "labels.npy", "manifest.json", "split.npy"]
    np.testing.assert_array_equal(all_images(a), all_images(b))
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.split, b.split)
    for which in (TRAIN, HOLDOUT):  # batches that straddle shard boundaries read the split's rows in order
        mask = a.split == which
        images, labels = read_split(b, which, 256)
        np.testing.assert_array_equal(images, all_images(a)[mask])
        np.testing.assert_array_equal(labels, a.labels[mask])
        assert b.count(which) == mask.sum()
        np.testing.assert_array_equal(b.part(which)[0], images)


def test_batches_of_chosen_rows(tmp_path):
    write_prepared(tmp_path / "out", prepare_params(holdout=200, shard_size=500), seed=0)
    data = load_prepared(tmp_path / "out")
    sizes = [len(images) for images, _ in data.batches(TRAIN, 128, range(450, 1050))]
    assert sizes == [128] * 4 + [88]  # full batches across the shard boundaries at 500 and 1000 rows
    images, labels = read_split(data, TRAIN, 128, range(450, 1050))
    everything, all_labels = data.part(TRAIN)
    np.testing.assert_array_equal(images, everything[450:1050])
    np.testing.assert_array_equal(labels, all_labels[450:1050])


def test_skipping_with_shards_compacts_the_last_shard(tmp_path):
    make_image_tree(tmp_path / "tree", corrupt=True)  # 11 files, the last one broken
    (tmp_path / "tree" / "cat" / "2b.JPEG").write_bytes(b"not an image")  # and the 4th
    p = prepare_params(source="imagefolder", path=str(tmp_path / "tree"), resolution=16, holdout=2, on_bad_image="skip")
    one = write_prepared(tmp_path / "one", p, seed=0)
    sharded = write_prepared(tmp_path / "sharded", p.model_copy(update={"shard_size": 4}), seed=0)
    assert one["shards"] == [10] and sharded["shards"] == [4, 4, 2]
    assert sharded["skipped"] == one["skipped"] and len(one["skipped"]) == 2
    a, b = load_prepared(tmp_path / "one"), load_prepared(tmp_path / "sharded")
    np.testing.assert_array_equal(all_images(a), all_images(b))
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.split, b.split)
    assert sorted(f.name for f in (tmp_path / "sharded").iterdir() if f.name.startswith("images")) == [
        "images-00000.npy", "images-00001.npy", "images-00002.npy"]


def test_part_refuses_what_would_not_fit_in_memory(tmp_path, monkeypatch):
    write_prepared(tmp_path / "out", prepare_params(), seed=0)
    monkeypatch.setattr("pipeline.datasets.prepared.IN_MEMORY_LIMIT", 1000 * 64)
    data = load_prepared(tmp_path / "out")
    assert len(data.part(HOLDOUT)[0]) == 100
    with pytest.raises(PipelineError, match="training split is .* GiB, more than .* in memory.*reference.max_images"):
        data.part(TRAIN)


def write_idx(path, array: np.ndarray, magic: int | None = None, cut: int = 0) -> None:
    """An IDX file of a uint8 array (gzipped if the name ends in .gz); `cut` drops that many trailing bytes."""
    magic = magic if magic is not None else 0x800 + array.ndim
    blob = magic.to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in array.shape) + array.tobytes()
    blob = blob[: len(blob) - cut]
    path.write_bytes(gzip.compress(blob) if path.name.endswith(".gz") else blob)


def make_idx_set(folder, train=24, test=8, gz=True, prefix="", test_name="t10k", side=28):
    """A small IDX set of `train` and `test` images with labels 0..3 in turn; returns the images."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    end = ".gz" if gz else ""
    out = {}
    for split, name, count in (("train", "train", train), ("test", test_name, test)):
        images = rng.integers(0, 256, (count, side, side), dtype=np.uint8)
        write_idx(folder / f"{prefix}{name}-images-idx3-ubyte{end}", images)
        write_idx(folder / f"{prefix}{name}-labels-idx1-ubyte{end}", (np.arange(count) % 4).astype(np.uint8))
        out[split] = images
    return out


@pytest.mark.parametrize("gz", [True, False])
def test_idx_keeps_the_published_split(tmp_path, gz):
    images = make_idx_set(tmp_path / "set", gz=gz)
    manifest = write_prepared(tmp_path / "out", prepare_params(source="idx", path=str(tmp_path / "set"), resolution=28,
                                                               holdout=4), seed=0)
    data = load_prepared(tmp_path / "out")
    assert all_images(data).shape == (24 + 4, 28, 28, 1) and manifest["holdout_from"] == "official test split"
    assert manifest["class_names"] == ["0", "1", "2", "3"] and manifest["dataset"] is None
    np.testing.assert_array_equal(data.part(TRAIN)[0][..., 0], images["train"])  # pixels as stored, train in order
    held, labels = data.part(HOLDOUT)
    assert all(any(np.array_equal(h[..., 0], t) for t in images["test"]) for h in held)  # from the test file
    assert sorted(labels.tolist()) == [0, 1, 2, 3]


def test_idx_resizes_and_reads_emnist_names(tmp_path):
    images = make_idx_set(tmp_path / "emnist", prefix="emnist-balanced-", test_name="test")
    make_idx_set(tmp_path / "emnist", prefix="emnist-letters-", test_name="test")
    with pytest.raises(PipelineError, match=r"several IDX sets: set prepare.path to one of .*emnist-balanced, "
                                            r".*emnist-letters"):
        write_prepared(tmp_path / "out", prepare_params(source="idx", path=str(tmp_path / "emnist"), holdout=4), 0)
    p = prepare_params(source="idx", path=str(tmp_path / "emnist" / "emnist-balanced"), resolution=28, holdout=4)
    manifest = write_prepared(tmp_path / "out", p, seed=0)
    assert manifest["transposed"] and manifest["files"]["test_images"] == "emnist-balanced-test-images-idx3-ubyte.gz"
    np.testing.assert_array_equal(load_prepared(tmp_path / "out").part(TRAIN)[0][0, ..., 0], images["train"][0].T)
    write_prepared(tmp_path / "small", p.model_copy(update={"resolution": 16}), seed=0)
    assert all_images(load_prepared(tmp_path / "small")).shape == (28, 16, 16, 1)


def test_bad_idx_files_are_named(tmp_path, monkeypatch):
    def prepare(folder):
        write_prepared(tmp_path / "out", prepare_params(source="idx", path=folder and str(folder), resolution=28,
                                                        holdout=4), 0)
    monkeypatch.setattr(data_sources, "IDX_DEFAULT", str(tmp_path / "fashion-mnist"))
    with pytest.raises(PipelineError, match="reads Fashion-MNIST from .*fashion-mnist, which does not exist: install "
                                            r"it \(apt-get install dataset-fashion-mnist\)"):
        prepare(None)
    make_idx_set(tmp_path / "a")
    (tmp_path / "a" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(PipelineError, match=r"a lacks t10k-labels-idx1-ubyte\[.gz\] or test-labels-idx1-ubyte\[.gz\]"):
        prepare(tmp_path / "a")
    with pytest.raises(PipelineError, match=r"holds no train-images-idx3-ubyte\[.gz\]"):
        prepare(tmp_path)
    with pytest.raises(PipelineError, match="no such folder"):
        prepare(tmp_path / "nowhere" / "set")
    labels = (np.arange(8) % 4).astype(np.uint8)
    for gz in (True, False):
        folder, end = tmp_path / f"b{gz}", ".gz" if gz else ""
        make_idx_set(folder, gz=gz)
        write_idx(folder / f"t10k-images-idx3-ubyte{end}", np.zeros((8, 28, 28), np.uint8), cut=100)
        with pytest.raises(PipelineError, match=rf"t10k-images-idx3-ubyte{end}: truncated: the header promises "
                                                r"8 x 28 x 28 bytes"):
            prepare(folder)
        write_idx(folder / f"t10k-images-idx3-ubyte{end}", labels)  # a labels file in the images' place
        with pytest.raises(PipelineError, match=r"t10k-images-idx3-ubyte.*: magic number 0x00000801 \(labels\) where "
                                                r"IDX images \(0x00000803\) were expected"):
            prepare(folder)
        write_idx(folder / f"t10k-images-idx3-ubyte{end}", np.zeros((7, 28, 28), np.uint8))
        with pytest.raises(PipelineError, match=r"t10k-images-idx3-ubyte.* holds 7 images but .*t10k-labels-idx1-ubyte"
                                                r".* holds 8 labels"):
            prepare(folder)
    (tmp_path / "bTrue" / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01")[:-6])
    with pytest.raises(PipelineError, match=r"train-labels-idx1-ubyte.gz: not a readable gzip file"):
        prepare(tmp_path / "bTrue")
    assert not (tmp_path / "out").exists()


FASHION_MNIST = Path(data_sources.IDX_DEFAULT)


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="Fashion-MNIST not installed (apt-get install "
                                                       "dataset-fashion-mnist)")
def test_fashion_mnist_from_the_debian_package(tmp_path):
    listing = data_sources.idx(None, 28)
    assert listing.channels == 1 and listing.class_names[0] == "T-shirt/top" and listing.class_names[9] == "Ankle boot"
    train, test = listing.labels[listing.splits == 0], listing.labels[listing.splits == 1]
    assert len(train) == 60000 and len(test) == 10000
    assert np.bincount(train).tolist() == [6000] * 10 and np.bincount(test).tolist() == [1000] * 10
    assert listing.read(0).shape == (28, 28, 1) and listing.read(69999).dtype == np.uint8
    manifest = write_prepared(tmp_path / "out", prepare_params(source="idx", resolution=32, max_images=2000,
                                                               holdout=100), seed=0)
    assert manifest["dataset"] == "Fashion-MNIST" and manifest["holdout_from"] == "official test split"
    assert manifest["num_holdout"] == 100 and all_images(load_prepared(tmp_path / "out")).shape[1:] == (32, 32, 1)
