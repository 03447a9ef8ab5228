"""The prepared-data format: what prepare writes and every later stage reads.

    images.npy     uint8 [N, H, W, C], written as a memory map while streaming (never all in memory)
    labels.npy     int64 [N]
    split.npy      uint8 [N]: 0 train, 1 held out (the real-data floor of FID/FD)
    manifest.json  source, provenance, class names, counts, skipped images, the params used
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import data_sources
from pipeline.artifacts import atomic_path, read_json, require, write_json
from pipeline.config import PrepareParams
from pipeline.errors import PipelineError

TRAIN, HOLDOUT = 0, 1


def open_source(p: PrepareParams, seed: int) -> data_sources.Listing:
    if p.source == "digits":
        return data_sources.digits(p.resolution)
    if p.source == "cifar10":
        return data_sources.cifar10(p.path, p.resolution)
    if p.source == "imagefolder":
        return data_sources.imagefolder(p.path, p.resolution)
    return data_sources.synthetic(p.max_images, p.resolution, seed)


def select(listing: data_sources.Listing, p: PrepareParams, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices to read (a seeded subset if max_images) and the held-out flag of each."""
    rng = np.random.default_rng(seed)
    count = len(listing.labels)
    indices = np.arange(count)
    if p.max_images is not None and p.max_images < count:
        indices = np.sort(rng.choice(count, p.max_images, replace=False))
    official = listing.splits[indices] == 1
    if official.sum() >= p.holdout:  # take the held-out images from the official test split
        held = np.flatnonzero(official)[np.sort(rng.choice(int(official.sum()), p.holdout, replace=False))]
        keep = ~official
        keep[held] = True
    else:
        held = np.sort(rng.choice(len(indices), min(p.holdout, len(indices)), replace=False))
        keep = np.ones(len(indices), bool)
    if int(keep.sum()) - len(held) < p.holdout:
        raise PipelineError(f"prepare.holdout = {p.holdout} leaves too few training images out of "
                            f"{len(indices)}: lower prepare.holdout or raise prepare.max_images")
    split = np.zeros(len(indices), np.uint8)
    split[held] = HOLDOUT
    return indices[keep], split[keep]


def write_prepared(out_dir: str | Path, p: PrepareParams, seed: int,
                   progress: Callable[[int], None] = lambda n: None) -> dict:
    listing = open_source(p, seed)
    indices, split = select(listing, p, seed)
    shape = (len(indices), p.resolution, p.resolution, listing.channels)
    skipped: list[str] = []
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        images = np.lib.format.open_memmap(tmp / "images.npy", "w+", np.uint8, shape)
        good = np.zeros(len(indices), bool)
        for row, index in enumerate(indices):
            image = listing.read(int(index))
            if image is None or image.shape != shape[1:]:
                if p.on_bad_image == "fail":
                    raise PipelineError(f"unreadable or mis-shaped image: {listing.origin(int(index))}; remove it or "
                                        "set prepare.on_bad_image: skip")
                skipped.append(listing.origin(int(index)))
            else:
                images[row], good[row] = image, True
            progress(1)
        images.flush()
        del images
        if skipped:
            kept = np.flatnonzero(good)
            _compact(tmp / "images.npy", kept)
            indices, split = indices[kept], split[kept]
        labels = listing.labels[indices].astype(np.int64)
        np.save(tmp / "labels.npy", labels)
        np.save(tmp / "split.npy", split)
        manifest = {
            **listing.provenance,
            "resolution": p.resolution, "channels": listing.channels, "class_names": listing.class_names,
            "num_images": len(indices), "num_train": int((split == TRAIN).sum()),
            "num_holdout": int((split == HOLDOUT).sum()),
            "holdout_from": "official test split" if listing.splits.any() else "seeded random subset",
            "label_counts": np.bincount(labels, minlength=len(listing.class_names)).tolist(),
            "skipped": skipped, "seed": seed, "params": p.model_dump(),
        }
        write_json(tmp / "manifest.json", manifest)
    return manifest


def _compact(path: Path, kept: np.ndarray, chunk: int = 4096) -> None:
    """Rewrite the memory-mapped array at `path` with only the rows `kept` (the rare skip path)."""
    source = np.load(path, mmap_mode="r")
    target_path = path.with_name("compact.npy")
    target = np.lib.format.open_memmap(target_path, "w+", np.uint8, (len(kept), *source.shape[1:]))
    for start in range(0, len(kept), chunk):
        target[start : start + chunk] = source[kept[start : start + chunk]]
    target.flush()
    del source, target
    target_path.replace(path)


@dataclass
class PreparedData:
    images: np.ndarray  # uint8 NHWC, memory-mapped
    labels: np.ndarray
    split: np.ndarray
    manifest: dict

    def part(self, which: int) -> tuple[np.ndarray, np.ndarray]:
        mask = self.split == which
        return self.images[mask], self.labels[mask]

    @property
    def num_classes(self) -> int:
        return len(self.manifest["class_names"])


def load_prepared(path: str | Path) -> PreparedData:
    path = Path(path)
    manifest = read_json(require(path / "manifest.json", "prepare"))
    try:
        images = np.load(require(path / "images.npy", "prepare"), mmap_mode="r", allow_pickle=False)
        labels = np.load(require(path / "labels.npy", "prepare"), allow_pickle=False)
        split = np.load(require(path / "split.npy", "prepare"), allow_pickle=False)
    except ValueError as exc:
        raise PipelineError(f"{path}: corrupt prepared data ({exc}): rerun `dvc repro prepare`") from None
    n = manifest["num_images"]
    expected = (n, manifest["resolution"], manifest["resolution"], manifest["channels"])
    if images.shape != expected or images.dtype != np.uint8 or labels.shape != (n,) or split.shape != (n,):
        raise PipelineError(f"{path}: images {images.shape} {images.dtype}, labels {labels.shape}, split "
                            f"{split.shape} do not match the manifest {expected}: rerun `dvc repro prepare`")
    return PreparedData(images, labels, split, manifest)
