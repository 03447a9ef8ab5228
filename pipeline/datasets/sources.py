"""Data sources for the prepare stage: each yields uint8 HWC images with integer labels.

    digits       scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 labels): works offline
    cifar10      the standard `cifar-10-python.tar.gz` archive from a local path
    imagefolder  a class-per-subfolder tree (ImageNet layout), center-cropped and resized as ADM/EDM do
    idx          the MNIST family's IDX files (MNIST, Fashion-MNIST, KMNIST, EMNIST; pipeline/datasets/idx.py),
                 grey 28x28 with the published train/test split; by default Fashion-MNIST from the Debian
                 package dataset-fashion-mnist
    photos       crops of scikit-learn's two bundled photographs (a temple, a flower), the class being the photo:
                 real images that are not the digits, offline
    synthetic    procedurally drawn class-labelled gratings of any size, for tests and benchmarks

A source lists its records up front (labels, official split) and reads one image at a time, so prepare
can pick a subset and stream it to disk without holding the data set in memory. Where a source has an
official test split, the held-out images are taken from it.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline import randomness
from pipeline.datasets import idx as idx_files
from pipeline.errors import PipelineError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".JPEG", ".JPG", ".PNG")


@dataclass
class Listing:
    """What a source holds before any pixel is read: enough to allocate the output and split it."""

    channels: int
    class_names: list[str]
    labels: np.ndarray  # int64 per record
    splits: np.ndarray  # uint8 per record: 0 train, 1 official test split
    read: Callable[[int], np.ndarray | None]  # HWC uint8 image at the output resolution; None if unreadable
    origin: Callable[[int], str]  # where record i comes from, for error messages
    provenance: dict = field(default_factory=dict)


def center_crop_resize(image: Image.Image, resolution: int) -> np.ndarray:
    """ADM/EDM preprocessing: box-downsample while the short side is >= 2x, bicubic to size, center crop."""
    while min(image.size) >= 2 * resolution:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.BOX)
    scale = resolution / min(image.size)
    image = image.resize(tuple(round(s * scale) for s in image.size), resample=Image.BICUBIC)
    arr = np.asarray(image)
    top, left = (arr.shape[0] - resolution) // 2, (arr.shape[1] - resolution) // 2
    return arr[top : top + resolution, left : left + resolution]


def _resize_array(arr: np.ndarray, resolution: int) -> np.ndarray:
    if arr.shape[0] == resolution and arr.shape[1] == resolution:
        return arr
    mode = "L" if arr.shape[2] == 1 else "RGB"
    out = center_crop_resize(Image.fromarray(arr.squeeze(2) if mode == "L" else arr, mode), resolution)
    return out.reshape(resolution, resolution, arr.shape[2])


def digits(resolution: int) -> Listing:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]  # values are 0..16
    labels = bunch.target.astype(np.int64)
    return Listing(1, [str(d) for d in range(10)], labels, np.zeros(len(labels), np.uint8),
                   lambda i: _resize_array(images[i], resolution), lambda i: f"digits[{i}]",
                   {"source": "sklearn.datasets.load_digits"})


class _ArrayUnpickler(pickle.Unpickler):
    """The CIFAR archive is pickled: allow only the plain containers and numpy arrays it holds."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}  # encode: bytes in protocol 2

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data archive")
        return super().find_class(module, name)


def _cifar_batch(tar: tarfile.TarFile, member: str, archive: Path) -> dict:
    try:
        blob = tar.extractfile(member).read()
        batch = _ArrayUnpickler(io.BytesIO(blob), encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return {"data": data, "labels": np.asarray(batch[b"labels"], dtype=np.int64)}
    except (KeyError, ValueError, TypeError, AttributeError, pickle.UnpicklingError, EOFError) as exc:
        raise PipelineError(f"{archive}: member {member} is not a CIFAR-10 batch ({exc})") from None


def cifar10(path: str, resolution: int) -> Listing:
    archive = Path(path)
    if not archive.is_file():
        raise PipelineError(f"prepare.path = {path!r}: no such file; point it at cifar-10-python.tar.gz")
    try:
        tar = tarfile.open(archive, "r:gz")
        names = set(tar.getnames())
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise PipelineError(f"{archive} is not a readable .tar.gz ({exc}); expected cifar-10-python.tar.gz") from None
    train = [f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)]
    test, meta = "cifar-10-batches-py/test_batch", "cifar-10-batches-py/batches.meta"
    missing = [m for m in [*train, test, meta] if m not in names]
    if missing:
        raise PipelineError(f"{archive} lacks {', '.join(missing)}: not the CIFAR-10 python archive")
    with tar:
        batches = [_cifar_batch(tar, m, archive) for m in [*train, test]]
        raw_meta = _ArrayUnpickler(io.BytesIO(tar.extractfile(meta).read()), encoding="bytes").load()
    class_names = [n.decode() for n in raw_meta[b"label_names"]]
    splits = np.concatenate([np.full(len(b["labels"]), int(i == 5), np.uint8) for i, b in enumerate(batches)])
    images = np.concatenate([b["data"] for b in batches])
    labels = np.concatenate([b["labels"] for b in batches])
    return Listing(3, class_names, labels, splits, lambda i: _resize_array(images[i], resolution),
                   lambda i: f"{archive}[{i}]", {"source": str(archive)})


IDX_DEFAULT = "/usr/share/datasets/fashion-mnist"  # the Debian package dataset-fashion-mnist
# Fashion-MNIST's classes, in label order. The files do not name their data set: it is recognised by the sha256 of
# its 60,000 train labels (the bytes after the header); any other set's classes are named by their label values.
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot"]
FASHION_MNIST_TRAIN_LABELS_SHA256 = "657fbd221bfc9f4198cc14b5619cc33ec57c58dd0e47af4d99d6650759e869a7"


def idx(path: str | None, resolution: int) -> Listing:
    """An IDX set: the train split, then the t10k split as the official test split. EMNIST's files (named
    `emnist-*`) hold their images transposed; they are turned upright."""
    if path is None and not Path(IDX_DEFAULT).is_dir():
        raise PipelineError(f"prepare.path = null reads Fashion-MNIST from {IDX_DEFAULT}, which does not exist: "
                            "install it (apt-get install dataset-fashion-mnist) or set prepare.path to a folder of "
                            "IDX files")
    files = idx_files.find_set(path or IDX_DEFAULT)
    parts = [idx_files.read_split(files[split]["images"], files[split]["labels"]) for split in ("train", "test")]
    if not len(parts[0][1]):
        raise PipelineError(f"{files['train']['images']} holds no images: point prepare.path at a complete IDX set")
    labels = np.concatenate([part[1] for part in parts]).astype(np.int64)
    splits = np.repeat(np.array([0, 1], np.uint8), [len(part[1]) for part in parts])
    transpose = files["train"]["images"].name.startswith("emnist-")
    fingerprint = hashlib.sha256(np.ascontiguousarray(parts[0][1]).tobytes()).hexdigest()
    fashion = fingerprint == FASHION_MNIST_TRAIN_LABELS_SHA256
    names = FASHION_MNIST_CLASSES if fashion else [str(k) for k in range(int(labels.max()) + 1)]
    offset = len(parts[0][1])

    def locate(i: int) -> tuple[np.ndarray, int, Path]:
        split = int(i >= offset)
        return parts[split][0], i - offset * split, files[("train", "test")[split]]["images"]

    def read(i: int) -> np.ndarray:
        images, row, _ = locate(i)
        image = images[row].T if transpose else images[row]
        return _resize_array(np.ascontiguousarray(image)[..., None], resolution)

    def origin(i: int) -> str:
        _, row, file = locate(i)
        return f"{file}[{row}]"
    provenance = {"source": str(files["train"]["images"].parent), "dataset": "Fashion-MNIST" if fashion else None,
                  "files": {f"{split}_{kind}": f.name for split, kinds in files.items() for kind, f in kinds.items()},
                  "transposed": transpose}
    return Listing(1, names, labels, splits, read, origin, provenance)


def imagefolder(path: str, resolution: int) -> Listing:
    root = Path(path)
    if not root.is_dir():
        raise PipelineError(f"prepare.path = {path!r}: no such folder; point it at a class-per-subfolder tree")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    files = [(f, label) for label, c in enumerate(classes)
             for f in sorted((root / c).rglob("*")) if f.suffix in IMAGE_EXTENSIONS and f.is_file()]
    if not files:
        raise PipelineError(f"{root}: no images found; expected {root}/<class>/<image>.{{jpg,png,...}}")

    def read(i: int) -> np.ndarray | None:
        try:
            with Image.open(files[i][0]) as img:
                return center_crop_resize(img.convert("RGB"), resolution)
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
            return None
    labels = np.array([label for _, label in files], np.int64)
    return Listing(3, classes, labels, np.zeros(len(files), np.uint8), read, lambda i: str(files[i][0]),
                   {"source": str(root)})


PHOTO_CROP_SIDES = (24, 32, 48, 64, 96)  # crop sides in photo pixels, each scale tiled without overlap


def photos(resolution: int, seed: int) -> Listing:
    """Square crops of sklearn's china.jpg and flower.jpg (427x640 each), resized to `resolution`: for every
    side in PHOTO_CROP_SIDES, the photo tiled by non-overlapping crops from a seeded offset (890 crops a photo).
    Crops of one scale never overlap; crops of different scales do, as zoomed views of the same scene."""
    from sklearn.datasets import load_sample_images

    bunch = load_sample_images()
    names = [Path(f).stem for f in bunch.filenames]
    records = []  # (photo, top, left, side)
    for photo, image in enumerate(bunch.images):
        height, width = image.shape[:2]
        for side in PHOTO_CROP_SIDES:
            rng = randomness.rng("photo_crops", seed, photo, side)
            top0, left0 = rng.integers(0, height % side + 1), rng.integers(0, width % side + 1)
            records += [(photo, top, left, side) for top in range(top0, height - side + 1, side)
                        for left in range(left0, width - side + 1, side)]

    def read(i: int) -> np.ndarray:
        photo, top, left, side = records[i]
        crop = Image.fromarray(bunch.images[photo][top : top + side, left : left + side])
        return center_crop_resize(crop, resolution)
    labels = np.array([r[0] for r in records], np.int64)
    return Listing(3, names, labels, np.zeros(len(records), np.uint8), read,
                   lambda i: f"{names[records[i][0]]}.jpg crop at {records[i][1:]}",
                   {"source": "sklearn.datasets.load_sample_images crops", "crop_sides": list(PHOTO_CROP_SIDES)})


def synthetic(count: int, resolution: int, seed: int) -> Listing:
    """Ten classes of coloured sinusoidal gratings; the class sets the orientation."""
    labels = randomness.rng("synthetic_labels", seed).integers(0, 10, count)
    yy, xx = np.mgrid[0:resolution, 0:resolution] / resolution

    def read(i: int) -> np.ndarray:
        rng = randomness.rng("synthetic_images", seed, i)  # per-record stream: any subset reads the same pixels
        angle = np.pi * labels[i] / 10
        phase, freq = rng.uniform(0, 2 * np.pi), rng.uniform(2, 4)
        wave = np.sin(2 * np.pi * freq * (np.cos(angle) * xx + np.sin(angle) * yy) + phase)
        img = 127.5 + 127.5 * wave[..., None] * rng.uniform(0.2, 1.0, 3)
        return img.round().clip(0, 255).astype(np.uint8)
    return Listing(3, [f"angle{k}" for k in range(10)], labels, np.zeros(count, np.uint8), read,
                   lambda i: f"synthetic[{i}]", {"source": "synthetic gratings"})
