"""FID/FD plumbing: the Frechet distance, the extractor choice, and the trained stand-in extractor."""

import numpy as np
import pytest
import torch

from pipeline import fid
from pipeline.config import ReferenceParams
from pipeline.errors import PipelineError
from pipeline.feature_net import train_feature_net
from pipeline.prepared_data import HOLDOUT, TRAIN, load_prepared, write_prepared
from tests.test_data_sources import prepare_params


def test_frechet_distance_of_gaussians_is_analytic():
    m1, m2 = np.array([0.0, 1.0]), np.array([1.0, -1.0])
    s1, s2 = np.diag([1.0, 4.0]), np.diag([9.0, 1.0])
    # |m1 - m2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) for commuting covariances
    expected = 1 + 4 + (1 + 9 - 2 * 3) + (4 + 1 - 2 * 2)
    assert fid.frechet_distance((m1, s1), (m2, s2)) == pytest.approx(expected, rel=1e-6)
    assert fid.frechet_distance((m1, s1), (m1, s1)) == pytest.approx(0, abs=1e-6)


def reference_params(**changes):
    base = dict(extractor="auto", inception_path=None, feature_dim=16, epochs=1, batch_size=64, lr=1e-3)
    return ReferenceParams(**{**base, **changes})


def test_extractor_choice(tmp_path, monkeypatch):
    monkeypatch.setattr(fid.tempfile, "gettempdir", lambda: str(tmp_path))  # clean-fid's cache folder
    assert fid.resolve_extractor(reference_params()) == "trained"
    with pytest.raises(PipelineError, match="inception-2015-12-05.pt.*does not exist"):
        fid.resolve_extractor(reference_params(extractor="inception"))
    with pytest.raises(PipelineError, match="clean-fid loads a file named inception-2015-12-05.pt"):
        fid.resolve_extractor(reference_params(inception_path=str(tmp_path / "weights.pt")))
    (tmp_path / fid.INCEPTION_FILE).write_bytes(b"")
    assert fid.resolve_extractor(reference_params()) == "inception"
    assert fid.resolve_extractor(reference_params(extractor="trained")) == "trained"


def test_trained_extractor_separates_real_from_noise(tmp_path):
    write_prepared(tmp_path / "data", prepare_params(holdout=300), seed=0)
    data = load_prepared(tmp_path / "data")
    (x, y), (hx, hy) = data.part(TRAIN), data.part(HOLDOUT)
    net, accuracy = train_feature_net(x, y, hx, hy, 10, 16, epochs=5, batch_size=128, lr=2e-3,
                                      device=torch.device("cpu"), seed=0)
    assert accuracy > 0.85
    extractor = fid.Extractor("trained", net.features, torch.device("cpu"))
    assert extractor.metric == "fd_trained"
    ref = fid.statistics(extractor.features(x, 256))
    real = fid.frechet_distance(fid.statistics(extractor.features(hx, 256)), ref)
    noise = np.random.default_rng(0).integers(0, 256, hx.shape, dtype=np.uint8)
    fake = fid.frechet_distance(fid.statistics(extractor.features(noise, 256)), ref)
    assert real * 10 < fake
