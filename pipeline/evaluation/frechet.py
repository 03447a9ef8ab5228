"""Feature statistics and the Frechet distance between them (clean-fid's computation).

Statistics of many images are accumulated batch by batch (`FeatureStats`), across processes if need be;
given reference statistics (reference.stats_path: an .npz with mu and sigma, as clean-fid and ADM publish)
can replace those of the training split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from cleanfid import fid as cleanfid

from pipeline.errors import PipelineError
from pipeline.runtime import Runtime


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


def moments(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of features [n, d] held in memory."""
    features = np.asarray(features, np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(stats_a: tuple[np.ndarray, np.ndarray], stats_b: tuple[np.ndarray, np.ndarray]) -> float:
    return float(cleanfid.frechet_distance(stats_a[0], stats_a[1], stats_b[0], stats_b[1]))
