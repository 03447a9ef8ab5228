"""Frechet distances through clean-fid, from images in memory or streamed in batches (no PNGs written).

Two feature extractors:
    inception  clean-fid's torchscript Inception-V3 in clean mode (PIL bicubic resize to 299): the
               standard FID. Its weights file `inception-2015-12-05.pt` is looked up at
               reference.inception_path, else in clean-fid's own cache folder; nothing is downloaded.
    trained    a small classifier trained on the prepared data (pipeline.evaluation.feature_net): the offline
               stand-in, reported as `fd_trained`, never as FID.

Statistics of many images are accumulated batch by batch (`FeatureStats`), across processes if need be;
given reference statistics (reference.stats_path: an .npz with mu and sigma, as clean-fid and ADM publish)
can replace those of the training split.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from cleanfid import fid as cleanfid
from cleanfid.resize import build_resizer

from pipeline.artifacts import (
    atomic_path,
    load_arrays,
    load_module,
    read_json,
    require,
    save_arrays,
    save_weights,
    write_json,
)
from pipeline.config import ReferenceParams
from pipeline.errors import PipelineError
from pipeline.evaluation.feature_net import FeatureNet, to_input
from pipeline.runtime import Runtime

INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_FEATURES = 2048  # pool3 width: the shape of published reference statistics
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

    def feature_stats(self, batches: Iterable[np.ndarray], batch_size: int,
                      progress: Callable[[int], None] = lambda n: None) -> FeatureStats:
        """Statistics of the features of a stream of uint8 NHWC image batches (any sizes), `batch_size` images
        through the extractor at a time; only one batch is held in memory."""
        stats = FeatureStats()
        for images in batches:
            stats.add(self.features(images, batch_size))
            progress(len(images))
        return stats


def inception_extractor(weights: Path, device: torch.device) -> Extractor:
    from cleanfid.inception_torchscript import InceptionV3W

    model = InceptionV3W(str(weights.parent), download=False, resize_inside=False).to(device).eval()
    return Extractor("inception", model, device)


class FeatureStats:
    """Mean and covariance of feature vectors added batch by batch, in float64. The sums are taken about a
    shift (the first batch's mean) so that the covariance does not cancel against the squared mean."""

    def __init__(self) -> None:
        self.count = 0
        self._shift: np.ndarray | None = None
        self._sum: np.ndarray | None = None  # of (x - shift)
        self._outer: np.ndarray | None = None  # of (x - shift)(x - shift)^T

    def add(self, features: np.ndarray) -> None:
        """Features [n, d] of n more items."""
        features = np.asarray(features, np.float64)
        if not len(features):
            return
        if self._shift is None:
            self._reset(features.mean(axis=0))
        centered = features - self._shift
        self._sum += centered.sum(axis=0)
        self._outer += centered.T @ centered
        self.count += len(features)

    def merge(self, runtime: Runtime) -> FeatureStats:
        """Combine every process's statistics (each then holds the total); a process may have added nothing."""
        shifts = [shift for count, shift in runtime.gather((self.count, self._shift)) if count]
        if not shifts:
            return self
        self._recenter(shifts[0])  # one shift for all, so that the sums add up
        d = len(self._shift)
        flat = np.concatenate([[self.count], self._sum, self._outer.ravel()])
        total = runtime.sum(torch.from_numpy(flat).to(runtime.device)).cpu().numpy()
        self.count, self._sum, self._outer = int(total[0]), total[1 : 1 + d], total[1 + d :].reshape(d, d)
        return self

    def mu_sigma(self) -> tuple[np.ndarray, np.ndarray]:
        """The mean and the unbiased covariance (as np.cov(rowvar=False))."""
        if self.count < 2:
            raise PipelineError(f"a covariance needs at least 2 feature vectors, got {self.count}")
        mean = self._sum / self.count
        sigma = (self._outer - np.outer(self._sum, mean)) / (self.count - 1)
        return self._shift + mean, sigma

    def _reset(self, shift: np.ndarray) -> None:
        d = len(shift)
        self._shift, self._sum, self._outer = shift, np.zeros(d), np.zeros((d, d))

    def _recenter(self, shift: np.ndarray) -> None:
        """Express the sums about `shift`: with c = x - s and delta = s - shift, x - shift = c + delta."""
        if self._shift is None:
            self._reset(shift)
            return
        delta = self._shift - shift
        self._outer += np.outer(delta, self._sum) + np.outer(self._sum, delta) + self.count * np.outer(delta, delta)
        self._sum += self.count * delta
        self._shift = shift


def given_statistics(path: str, width: int) -> tuple[np.ndarray, np.ndarray]:
    """mu and sigma from reference.stats_path (clean-fid's and ADM's .npz layout), checked against the
    extractor's feature width."""
    if not Path(path).is_file():
        raise PipelineError(f"reference.stats_path = {path!r}: no such file; point it at an .npz holding mu and "
                            "sigma, or set it to null to use the training split")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [key for key in ("mu", "sigma") if key not in data.files]
            if missing:
                raise PipelineError(f"reference.stats_path = {path!r} lacks {' and '.join(missing)} (it holds "
                                    f"{', '.join(data.files) or 'nothing'}): give an .npz with mu and sigma")
            mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
    except (OSError, ValueError) as exc:
        raise PipelineError(f"reference.stats_path = {path!r} is not a readable .npz ({exc})") from None
    if mu.shape != (width,) or sigma.shape != (width, width):
        raise PipelineError(f"reference.stats_path = {path!r}: mu {mu.shape} and sigma {sigma.shape} do not fit the "
                            f"extractor's {width} features (expected ({width},) and ({width}, {width})): give "
                            "statistics of Inception pool3 features")
    return mu, sigma


def frechet_distance(stats_a: tuple[np.ndarray, np.ndarray], stats_b: tuple[np.ndarray, np.ndarray]) -> float:
    return float(cleanfid.frechet_distance(stats_a[0], stats_a[1], stats_b[0], stats_b[1]))


# The reference artifact (data/reference/): extractor weights (trained only), the reference statistics (of
# the training split, or given), and reference.json (extractor, metric name, the real-data floor, counts,
# stats_source: where the statistics came from).

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
