"""FID/FD plumbing: the Frechet distance, the extractor choice, the trained stand-in extractor, streamed
feature statistics and given reference statistics, and the reference stage."""

import json

import numpy as np
import pytest
import torch

from pipeline.config import ComputeParams, ReferenceParams, parse_params
from pipeline.datasets.prepared import HOLDOUT, TRAIN, load_prepared, write_prepared
from pipeline.errors import PipelineError
from pipeline.evaluation import fid
from pipeline.evaluation.feature_net import FeatureNet, train_feature_net
from pipeline.runtime import Runtime
from stages import reference as reference_stage
from tests.test_data_sources import prepare_params

CPU = torch.device("cpu")
RUNTIME = Runtime(CPU, ComputeParams(processes=1, precision="fp32", tf32=False, channels_last=False, compile=False))


def moments(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance computed in memory, the reference for the streamed statistics."""
    return features.mean(axis=0), np.cov(features, rowvar=False)


def test_frechet_distance_of_gaussians_is_analytic():
    m1, m2 = np.array([0.0, 1.0]), np.array([1.0, -1.0])
    s1, s2 = np.diag([1.0, 4.0]), np.diag([9.0, 1.0])
    # |m1 - m2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) for commuting covariances
    expected = 1 + 4 + (1 + 9 - 2 * 3) + (4 + 1 - 2 * 2)
    assert fid.frechet_distance((m1, s1), (m2, s2)) == pytest.approx(expected, rel=1e-6)
    assert fid.frechet_distance((m1, s1), (m1, s1)) == pytest.approx(0, abs=1e-6)


def reference_params(**changes):
    base = dict(extractor="auto", inception_path=None, stats_path=None, feature_dim=16, epochs=1, batch_size=64,
                lr=1e-3)
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
    ref = extractor.feature_stats((images for images, _ in data.batches(TRAIN, 300)), 256).mu_sigma()
    in_memory = moments(extractor.features(x, 256))
    np.testing.assert_allclose(ref[0], in_memory[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ref[1], in_memory[1], rtol=1e-4, atol=1e-6)
    real = fid.frechet_distance(moments(extractor.features(hx, 256)), ref)
    noise = np.random.default_rng(0).integers(0, 256, hx.shape, dtype=np.uint8)
    fake = fid.frechet_distance(moments(extractor.features(noise, 256)), ref)
    assert real * 10 < fake


def test_feature_stats_match_numpy_on_uneven_batches():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(1000, 7)) @ rng.normal(size=(7, 7)) + 1e4  # a mean far above the spread
    stats = fid.FeatureStats()
    for chunk in np.split(features, [1, 1, 30, 31, 400, 999]):  # the first batch is one row, one is empty
        stats.add(chunk)
    assert stats.merge(RUNTIME) is stats and stats.count == 1000
    mu, sigma = stats.mu_sigma()
    np.testing.assert_allclose(mu, features.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(features, rowvar=False), rtol=1e-10)
    with pytest.raises(PipelineError, match="at least 2 feature vectors"):
        fid.FeatureStats().mu_sigma()


def write_stats(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def test_given_statistics_are_checked(tmp_path):
    mu, sigma = np.arange(4.0), np.eye(4)
    path = write_stats(tmp_path / "ref.npz", mu=mu, sigma=sigma, arr_0=np.zeros((2, 8, 8, 3), np.uint8))  # ADM's
    loaded = fid.given_statistics(path, 4)
    np.testing.assert_array_equal(loaded[0], mu)
    np.testing.assert_array_equal(loaded[1], sigma)
    with pytest.raises(PipelineError, match=r"mu \(4,\) and sigma \(4, 4\) do not fit the extractor's 2048 features"):
        fid.given_statistics(path, 2048)
    with pytest.raises(PipelineError, match="lacks sigma .it holds mu.: give an .npz with mu and sigma"):
        fid.given_statistics(write_stats(tmp_path / "mu_only.npz", mu=mu), 4)
    with pytest.raises(PipelineError, match="no such file"):
        fid.given_statistics(str(tmp_path / "absent.npz"), 4)
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(PipelineError, match="not a readable .npz"):
        fid.given_statistics(str(tmp_path / "junk.npz"), 4)


@pytest.fixture
def prepared_workdir(workdir, params_dict):
    """A working directory holding the default prepared data (digits)."""
    params_dict["reference"].update(extractor="trained", epochs=1, feature_dim=16)
    write_prepared("data/prepared", parse_params(params_dict).prepare, seed=0)
    return params_dict


def test_reference_stage_streams_the_training_split(prepared_workdir):
    params = parse_params(prepared_workdir)
    reference_stage.main(params, RUNTIME)
    extractor, (mu, sigma), info = fid.load_reference("data/reference", CPU)
    data = load_prepared("data/prepared")
    assert info["stats_source"] == f"training split ({data.count(TRAIN)} images)"
    assert info["num_reference"] == data.count(TRAIN) and info["num_holdout"] == data.count(HOLDOUT)
    expected = moments(extractor.features(data.part(TRAIN)[0], 64))
    np.testing.assert_allclose(mu, expected[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sigma, expected[1], rtol=1e-4, atol=1e-6)
    held = moments(extractor.features(data.part(HOLDOUT)[0], 64))
    assert info["floor"] == pytest.approx(fid.frechet_distance(held, (mu, sigma)), rel=1e-4)


def test_reference_stage_with_given_statistics(prepared_workdir, tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    mu, sigma = rng.normal(size=16), np.eye(16) * 2
    prepared_workdir["reference"]["stats_path"] = write_stats(tmp_path / "given.npz", mu=mu, sigma=sigma)
    params = parse_params(prepared_workdir)
    with pytest.raises(PipelineError, match="holds Inception statistics, but the extractor is the trained one"):
        reference_stage.main(params, RUNTIME)
    assert not (tmp_path / "data/reference").exists()
    # Stand in for Inception: an untrained 16-feature net instead of the 2048 pool3 features.
    torch.manual_seed(0)
    stand_in = fid.Extractor("trained", FeatureNet(1, 10, 16).features, CPU)
    monkeypatch.setattr(reference_stage, "resolve_extractor", lambda p: "inception")
    monkeypatch.setattr(reference_stage, "find_inception", lambda path: tmp_path / fid.INCEPTION_FILE)
    monkeypatch.setattr(reference_stage, "inception_extractor", lambda weights, device: stand_in)
    with pytest.raises(PipelineError, match="do not fit the extractor's 2048 features"):
        reference_stage.main(params, RUNTIME)
    monkeypatch.setattr(reference_stage, "INCEPTION_FEATURES", 16)
    reference_stage.main(params, RUNTIME)
    info = json.loads((tmp_path / "data/reference/reference.json").read_text())
    stats = np.load(tmp_path / "data/reference/stats.npz")
    np.testing.assert_array_equal(stats["mu"], mu)
    np.testing.assert_array_equal(stats["sigma"], sigma)
    assert info["stats_source"] == str(tmp_path / "given.npz") and info["num_reference"] is None
    held = stand_in.feature_stats((images for images, _ in load_prepared("data/prepared").batches(HOLDOUT, 64)), 64)
    assert info["floor"] == pytest.approx(fid.frechet_distance(held.mu_sigma(), (mu, sigma)), rel=1e-6)
