"""Frechet distances through clean-fid, from arrays in memory (no PNGs written).

Two feature extractors:
    inception  clean-fid's torchscript Inception-V3 in clean mode (PIL bicubic resize to 299): the
               standard FID. Its weights file `inception-2015-12-05.pt` is looked up at
               reference.inception_path, else in clean-fid's own cache folder; nothing is downloaded.
    trained    a small classifier trained on the prepared data (pipeline.feature_net): the offline
               stand-in, reported as `fd_trained`, never as FID.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from cleanfid import fid as cleanfid
from cleanfid.resize import build_resizer

from pipeline.artifacts import atomic_path, load_arrays, load_module, read_json, require, save_arrays, save_weights, write_json
from pipeline.config import ReferenceParams
from pipeline.errors import PipelineError
from pipeline.feature_net import FeatureNet, to_input

INCEPTION_FILE = "inception-2015-12-05.pt"
METRIC_NAMES = {"inception": "fid", "trained": "fd_trained"}


def find_inception(path: str | None) -> Path | None:
    candidate = Path(path) if path else Path(tempfile.gettempdir()) / INCEPTION_FILE  # clean-fid's cache
    return candidate if candidate.is_file() else None


def resolve_extractor(p: ReferenceParams) -> str:
    """`auto` becomes inception when its weights are on disk, else trained; a missing asked-for file is an error."""
    if p.inception_path and Path(p.inception_path).name != INCEPTION_FILE:
        raise PipelineError(f"reference.inception_path = {p.inception_path!r}: clean-fid loads a file named "
                            f"{INCEPTION_FILE}; rename it or point at that file")
    found = find_inception(p.inception_path)
    if p.extractor == "inception" and found is None:
        where = p.inception_path or str(Path(tempfile.gettempdir()) / INCEPTION_FILE)
        raise PipelineError(f"reference.extractor = inception but {where} does not exist: download clean-fid's "
                            f"{INCEPTION_FILE} there (or set reference.inception_path), or use extractor: trained")
    if p.extractor == "auto":
        return "inception" if found else "trained"
    return p.extractor


@dataclass
class Extractor:
    name: str  # inception | trained
    model: Callable[[torch.Tensor], torch.Tensor]  # float NCHW 0..255 -> features
    device: torch.device

    @property
    def metric(self) -> str:
        return METRIC_NAMES[self.name]

    def _prepare(self, images: np.ndarray) -> torch.Tensor:
        if self.name == "trained":
            return to_input(images, torch.device("cpu"))
        if images.shape[-1] == 1:
            images = np.repeat(images, 3, axis=-1)
        resize = build_resizer("clean")  # clean-fid's PIL bicubic resize to 299x299, float output
        return torch.from_numpy(np.stack([resize(img) for img in images])).permute(0, 3, 1, 2)

    def features(self, images: np.ndarray, batch_size: int) -> np.ndarray:
        """Features of uint8 NHWC images, in batches."""
        return np.concatenate([cleanfid.get_batch_features(self._prepare(images[s : s + batch_size]), self.model,
                                                           self.device) for s in range(0, len(images), batch_size)])


def inception_extractor(weights: Path, device: torch.device) -> Extractor:
    from cleanfid.inception_torchscript import InceptionV3W

    model = InceptionV3W(str(weights.parent), download=False, resize_inside=False).to(device).eval()
    return Extractor("inception", model, device)


def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(stats_a: tuple[np.ndarray, np.ndarray], stats_b: tuple[np.ndarray, np.ndarray]) -> float:
    return float(cleanfid.frechet_distance(stats_a[0], stats_a[1], stats_b[0], stats_b[1]))


# The reference artifact (data/reference/): extractor weights (trained only), statistics of the training
# split, and reference.json (extractor, metric name, the real-data floor, counts).

def save_reference(out_dir: str | Path, extractor: Extractor, net: torch.nn.Module | None, net_config: dict | None,
                   ref_stats: tuple[np.ndarray, np.ndarray], info: dict) -> None:
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        if net is not None:
            save_weights(tmp / "extractor", net.state_dict(), net_config)
        save_arrays(tmp / "stats.npz", mu=ref_stats[0], sigma=ref_stats[1])
        write_json(tmp / "reference.json", {"extractor": extractor.name, "metric": extractor.metric, **info})


def load_reference(path: str | Path, device: torch.device) -> tuple[Extractor, tuple[np.ndarray, np.ndarray], dict]:
    path = Path(path)
    info = read_json(require(path / "reference.json", "reference"))
    stats = load_arrays(path / "stats.npz", "reference")
    if info["extractor"] == "trained":
        net, _ = load_module(path / "extractor", lambda config: FeatureNet(**config), device, "reference")
        extractor = Extractor("trained", net.features, device)
    else:
        weights = find_inception(info["inception_path"])
        if weights is None:
            raise PipelineError(f"the reference was computed with Inception from {info['inception_path']}, which "
                                "is gone: restore it or rerun `dvc repro reference`")
        extractor = inception_extractor(weights, device)
    return extractor, (stats["mu"], stats["sigma"]), info
