"""The IDX files of the MNIST family (MNIST, Fashion-MNIST, KMNIST, EMNIST): finding them and reading them.

A set is four files, gzipped or not, in one folder:

    [<prefix>-]train-images-idx3-ubyte[.gz]   [<prefix>-]train-labels-idx1-ubyte[.gz]
    [<prefix>-]t10k-images-idx3-ubyte[.gz]    [<prefix>-]t10k-labels-idx1-ubyte[.gz]

`t10k` may also be spelled `test` (EMNIST). The prefix is empty for MNIST, Fashion-MNIST and KMNIST; EMNIST
names its sets e.g. `emnist-balanced-`. A folder path reads the set of plain names, else the folder's only
set; where it holds several prefixed sets (EMNIST's download), the path names one: `<folder>/emnist-balanced`.
Where both `X` and `X.gz` exist, the uncompressed `X` is read.

An IDX file is a big-endian header (magic 0x00000803 for uint8 images [n, rows, cols], 0x00000801 for uint8
labels [n], then the sizes as uint32) followed by exactly the data the header promises.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError

IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801
SPLIT_SPELLINGS = {"train": ("train",), "test": ("t10k", "test")}
KINDS = {"images": "images-idx3-ubyte", "labels": "labels-idx1-ubyte"}


def find_set(path: str | Path) -> dict[str, dict[str, Path]]:
    """{split: {kind: file}} of the IDX set at `path` (a folder, or a folder and a set's prefix); every file
    missing or ambiguous is an error naming it and where it was looked for."""
    path = Path(path)
    if path.is_dir():
        folder, prefixes = path, _prefixes(path)
        prefixes = [""] if "" in prefixes else prefixes
    elif path.parent.is_dir() and path.name:
        folder, prefixes = path.parent, [f"{path.name}-"]
    else:
        raise PipelineError(f"prepare.path = {str(path)!r}: no such folder; point it at the folder holding "
                            "train-images-idx3-ubyte[.gz] and the three other IDX files")
    if not prefixes:
        raise PipelineError(f"{folder} holds no train-{KINDS['images']}[.gz] (nor <prefix>-train-{KINDS['images']}"
                            "[.gz]): point prepare.path at the folder of the four IDX files")
    if len(prefixes) > 1:
        sets = ", ".join(str(folder / p.rstrip("-")) for p in prefixes)
        raise PipelineError(f"{folder} holds several IDX sets: set prepare.path to one of {sets}")
    return {split: {kind: _find(folder, prefixes[0], spellings, suffix) for kind, suffix in KINDS.items()}
            for split, spellings in SPLIT_SPELLINGS.items()}


def _prefixes(folder: Path) -> list[str]:
    """The prefixes of the train-images files in `folder` ('' for the plain names)."""
    stem = f"train-{KINDS['images']}"
    found = {f.name.removesuffix(".gz")[: -len(stem)] for f in folder.iterdir()
             if f.name.removesuffix(".gz").endswith(stem)}
    return sorted(p for p in found if p == "" or p.endswith("-"))


def _find(folder: Path, prefix: str, spellings: tuple[str, ...], suffix: str) -> Path:
    names = [f"{prefix}{split}-{suffix}" for split in spellings]
    for name in names:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    wanted = " or ".join(f"{name}[.gz]" for name in names)
    raise PipelineError(f"{folder} lacks {wanted}: an IDX set needs the train and t10k images and labels; "
                        "put the missing file there")


def read_idx(path: Path, magic: int) -> np.ndarray:
    """The uint8 array of an IDX file, checked against its header: shape (n,) for labels, (n, rows, cols) for
    images. A plain file is memory-mapped (read lazily); a gzipped one is decompressed into memory."""
    dims = magic & 0xFF
    header = 4 + 4 * dims
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                blob = f.read()
        else:
            with open(path, "rb") as f:
                blob = f.read(header)
            size = path.stat().st_size
    except (OSError, EOFError, zlib.error) as exc:
        raise PipelineError(f"{path}: not a readable {'gzip' if path.suffix == '.gz' else 'IDX'} file ({exc}); "
                            "download it again") from None
    if len(blob) < header:
        raise PipelineError(f"{path}: truncated: {len(blob)} bytes, shorter than an IDX header; download it again")
    found = int.from_bytes(blob[:4], "big")
    if found != magic:
        kinds = {IMAGES_MAGIC: "images", LABELS_MAGIC: "labels"}
        raise PipelineError(f"{path}: magic number 0x{found:08x} ({kinds.get(found, 'not an IDX uint8 array')}) "
                            f"where IDX {kinds[magic]} (0x{magic:08x}) were expected: not an {kinds[magic]} file")
    shape = tuple(int.from_bytes(blob[4 + 4 * k : 8 + 4 * k], "big") for k in range(dims))
    expected = header + int(np.prod(shape))
    actual = len(blob) if path.suffix == ".gz" else size
    if actual != expected:
        raise PipelineError(f"{path}: {'truncated' if actual < expected else 'longer than its header says'}: the "
                            f"header promises {' x '.join(map(str, shape))} bytes of data ({expected} bytes in all) "
                            f"but the file holds {actual}; download it again")
    if path.suffix == ".gz":
        return np.frombuffer(blob, np.uint8, offset=header).reshape(shape)
    return np.memmap(path, np.uint8, "r", offset=header, shape=shape)


def read_split(images_file: Path, labels_file: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images [n, rows, cols], labels [n]) of one split; their counts must agree."""
    images, labels = read_idx(images_file, IMAGES_MAGIC), read_idx(labels_file, LABELS_MAGIC)
    if len(images) != len(labels):
        raise PipelineError(f"{images_file} holds {len(images)} images but {labels_file} holds {len(labels)} "
                            "labels: the two files are not of one set")
    return images, labels
