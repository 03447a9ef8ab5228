"""The prepared-data format: what prepare writes and every later stage reads.

    images-00000.npy, images-00001.npy, ...
                   uint8 [n, H, W, C] with n <= prepare.shard_size: the images in order, written as memory
                   maps while streaming and read back one batch at a time (never all in memory)
    labels.npy     int64 [N], one per image in file order (shard 0 first)
    split.npy      uint8 [N]: 0 train, 1 held out (the real-data floor of FID/FD)
    manifest.json  source, provenance, class names, counts, shard sizes, skipped images, the params used
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import randomness
from pipeline.artifacts import atomic_path, read_json, require, write_json
from pipeline.config import PrepareParams
from pipeline.datasets import sources as data_sources
from pipeline.errors import PipelineError

TRAIN, HOLDOUT = 0, 1
SPLIT_NAMES = {TRAIN: "training", HOLDOUT: "held-out"}
IN_MEMORY_LIMIT = 8 * 2**30  # bytes `PreparedData.part` may load at once


def shard_file(k: int) -> str:
    return f"images-{k:05d}.npy"


def open_source(p: PrepareParams, seed: int) -> data_sources.Listing:
    if p.source == "digits":
        return data_sources.digits(p.resolution)
    if p.source == "cifar10":
        return data_sources.cifar10(p.path, p.resolution)
    if p.source == "imagefolder":
        return data_sources.imagefolder(p.path, p.resolution)
    if p.source == "idx":
        return data_sources.idx(p.path, p.resolution)
    if p.source == "photos":
        return data_sources.photos(p.resolution, seed)
    return data_sources.synthetic(p.max_images, p.resolution, seed)


def select(listing: data_sources.Listing, p: PrepareParams, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices to read (a seeded subset if max_images) and the held-out flag of each. The held-out images are
    class-balanced (as equal a count per class as the classes allow), so that label-matched real draws of the
    evaluation protocol can be taken from them."""
    rng = randomness.rng("data_split", seed)
    count = len(listing.labels)
    indices = np.arange(count)
    if p.max_images is not None and p.max_images < count:
        indices = np.sort(rng.choice(count, p.max_images, replace=False))
    labels = listing.labels[indices]
    official = listing.splits[indices] == 1
    if official.sum() >= p.holdout:  # take the held-out images from the official test split
        held = balanced_subset(np.flatnonzero(official), labels, p.holdout, rng)
        keep = ~official
        keep[held] = True
    else:
        held = balanced_subset(np.arange(len(indices)), labels, min(p.holdout, len(indices)), rng)
        keep = np.ones(len(indices), bool)
    if int(keep.sum()) - len(held) < p.holdout:
        raise PipelineError(f"prepare.holdout = {p.holdout} leaves too few training images out of "
                            f"{len(indices)}: lower prepare.holdout or raise prepare.max_images")
    split = np.zeros(len(indices), np.uint8)
    split[held] = HOLDOUT
    return indices[keep], split[keep]


def balanced_subset(positions: np.ndarray, labels: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` of `positions` (sorted), spread over their classes as evenly as the class sizes allow: every class
    gets the same share, a class too small for it gives all it has and the others share the rest; a remainder
    smaller than the number of classes goes to randomly chosen classes."""
    classes, sizes = np.unique(labels[positions], return_counts=True)
    quota = np.zeros(len(classes), np.int64)
    remaining = count
    while remaining > 0:
        open_ = np.flatnonzero(quota < sizes)
        share = remaining // len(open_)
        if share == 0:
            quota[rng.choice(open_, remaining, replace=False)] += 1
            break
        add = np.minimum(share, sizes[open_] - quota[open_])
        quota[open_] += add
        remaining -= int(add.sum())
    chosen = [rng.choice(positions[labels[positions] == c], q, replace=False) for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(chosen))


def write_prepared(out_dir: str | Path, p: PrepareParams, seed: int,
                   progress: Callable[[int], None] = lambda n: None) -> dict:
    listing = open_source(p, seed)
    indices, split = select(listing, p, seed)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        good, sizes, skipped = _write_shards(tmp, listing, indices, p, progress)
        indices, split = indices[good], split[good]
        labels = listing.labels[indices].astype(np.int64)
        np.save(tmp / "labels.npy", labels)
        np.save(tmp / "split.npy", split)
        manifest = {
            **listing.provenance,
            "resolution": p.resolution, "channels": listing.channels, "class_names": listing.class_names,
            "num_images": len(indices), "num_train": int((split == TRAIN).sum()),
            "num_holdout": int((split == HOLDOUT).sum()),
            "holdout_from": "official test split" if listing.splits.any() else "seeded class-balanced subset",
            "label_counts": np.bincount(labels, minlength=len(listing.class_names)).tolist(),
            "shard_size": p.shard_size, "shards": sizes,
            "skipped": skipped, "seed": seed, "params": p.model_dump(),
        }
        write_json(tmp / "manifest.json", manifest)
    return manifest


def _write_shards(folder: Path, listing: data_sources.Listing, indices: np.ndarray, p: PrepareParams,
                  progress: Callable[[int], None]) -> tuple[np.ndarray, list[int], list[str]]:
    """Stream the records in order into shards of at most shard_size images; a bad image is skipped (or
    fails). Returns which records were kept, the shard sizes and the skipped records' origins."""
    shape = (p.resolution, p.resolution, listing.channels)
    good = np.zeros(len(indices), bool)
    sizes: list[int] = []
    skipped: list[str] = []
    shard = None
    for row, index in enumerate(indices):
        image = listing.read(int(index))
        progress(1)
        if image is None or image.shape != shape:
            if p.on_bad_image == "fail":
                raise PipelineError(f"unreadable or mis-shaped image: {listing.origin(int(index))}; remove it or "
                                    "set prepare.on_bad_image: skip")
            skipped.append(listing.origin(int(index)))
            continue
        if shard is None or sizes[-1] == len(shard):
            if shard is not None:
                shard.flush()
            # The rows still to read bound this shard's size; only the last shard can end up short (skips).
            capacity = min(p.shard_size, len(indices) - row)
            shard = np.lib.format.open_memmap(folder / shard_file(len(sizes)), "w+", np.uint8, (capacity, *shape))
            sizes.append(0)
        shard[sizes[-1]] = image
        sizes[-1] += 1
        good[row] = True
    if shard is not None:
        shard.flush()
        short = sizes[-1] < len(shard)
        del shard
        if short:
            _compact(folder / shard_file(len(sizes) - 1), sizes[-1])
    return good, sizes, skipped


def _compact(path: Path, rows: int, chunk: int = 4096) -> None:
    """Rewrite the memory-mapped array at `path` with only its first `rows` rows (the skip path)."""
    source = np.load(path, mmap_mode="r")
    target_path = path.with_name(f"compact-{path.name}")
    target = np.lib.format.open_memmap(target_path, "w+", np.uint8, (rows, *source.shape[1:]))
    for start in range(0, rows, chunk):
        target[start : start + chunk] = source[start : min(start + chunk, rows)]
    target.flush()
    del source, target
    target_path.replace(path)


@dataclass
class PreparedData:
    shards: list[np.ndarray]  # uint8 NHWC, memory-mapped, in file order
    labels: np.ndarray  # int64, every image in file order
    split: np.ndarray  # TRAIN or HOLDOUT per image
    manifest: dict

    @property
    def num_classes(self) -> int:
        return len(self.manifest["class_names"])

    @property
    def shard_size(self) -> int:
        return self.manifest["shard_size"]

    def count(self, which: int) -> int:
        """How many images split `which` (TRAIN or HOLDOUT) holds."""
        return int((self.split == which).sum())

    def batches(self, which: int, batch_size: int,
                indices: Iterable[int] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(uint8 NHWC images, int64 labels) of split `which`, `batch_size` at a time in file order, reading
        only those rows. `indices`: ascending positions among the split's images, to read only those."""
        rows = self._rows(which, indices)
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            yield self._read(chunk), self.labels[chunk]

    def part(self, which: int) -> tuple[np.ndarray, np.ndarray]:
        """Every image and label of split `which` in memory: for small data only (the offline feature nets)."""
        rows = self._rows(which)
        size = len(rows) * self.manifest["resolution"] ** 2 * self.manifest["channels"]
        if size > IN_MEMORY_LIMIT:
            raise PipelineError(f"the {SPLIT_NAMES[which]} split is {size / 2**30:.3g} GiB, more than the "
                                f"{IN_MEMORY_LIMIT / 2**30:.3g} GiB loaded in memory at once: the offline feature "
                                "nets learn from images in memory; set reference.max_images to a subset")
        return self._read(rows), self.labels[rows]

    def _rows(self, which: int, indices: Iterable[int] | None = None) -> np.ndarray:
        rows = np.flatnonzero(self.split == which)
        return rows if indices is None else rows[np.asarray(indices, np.int64)]

    def _read(self, rows: np.ndarray) -> np.ndarray:
        """The images at file rows `rows` (ascending), read shard by shard."""
        if len(rows) == 0:
            side = self.manifest["resolution"]
            return np.zeros((0, side, side, self.manifest["channels"]), np.uint8)
        starts = np.cumsum([0, *(len(s) for s in self.shards)])
        shard_of = np.searchsorted(starts, rows, side="right") - 1
        return np.concatenate([self.shards[k][rows[shard_of == k] - starts[k]] for k in np.unique(shard_of)])


def load_prepared(path: str | Path) -> PreparedData:
    """The prepared data, its shards memory-mapped and checked against the manifest."""
    path = Path(path)
    manifest = read_json(require(path / "manifest.json", "prepare"))
    if "shards" not in manifest:
        raise PipelineError(f"{path} holds prepared data in an older (unsharded) format: rerun `dvc repro prepare`")
    sizes = manifest["shards"]
    try:
        shards = [np.load(require(path / shard_file(k), "prepare"), mmap_mode="r", allow_pickle=False)
                  for k in range(len(sizes))]
        labels = np.load(require(path / "labels.npy", "prepare"), allow_pickle=False)
        split = np.load(require(path / "split.npy", "prepare"), allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise PipelineError(f"{path}: corrupt prepared data ({exc}): rerun `dvc repro prepare`") from None
    row = (manifest["resolution"], manifest["resolution"], manifest["channels"])
    for k, (shard, size) in enumerate(zip(shards, sizes)):
        if shard.shape != (size, *row) or shard.dtype != np.uint8:
            raise PipelineError(f"{path / shard_file(k)}: {shard.dtype} {shard.shape} does not match the manifest "
                                f"(uint8 {(size, *row)}): rerun `dvc repro prepare`")
    n = manifest["num_images"]
    if sum(sizes) != n or labels.shape != (n,) or split.shape != (n,):
        raise PipelineError(f"{path}: {sum(sizes)} images in {len(sizes)} shards, labels {labels.shape}, split "
                            f"{split.shape} do not match the manifest's {n} images: rerun `dvc repro prepare`")
    return PreparedData(shards, labels, split, manifest)
