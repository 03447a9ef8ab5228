"""The preset cost model's counting of work: images through Inception per stage, and seconds as work x rate."""

import pytest

from pipeline.config import load_params
from pipeline.experiments.preset_cost import inception_images, predict


def fashion_params(**evaluation):
    params = load_params("presets/fashion.yaml")
    reference = params.reference.model_copy(update={"stats_images": 3000, "max_features": 500})
    scale = params.scale.model_copy(update={"num_sets": 5, "num_candidates": [1, 4, 8]})
    return params.model_copy(update={"reference": reference, "scale": scale,
                                     "evaluation": params.evaluation.model_copy(update=evaluation)})


def test_inception_images_count_every_stage():
    params = fashion_params(set_size=100, num_sets=2, floor_sets=2)
    counts = inception_images(params, num_train=60000, num_holdout=400)
    # statistics over 3,000, 500 reference rows, held-out rows capped by the split (400), two floor sets of 100
    assert counts["reference"] == 3000 + 500 + 400 + 200
    assert counts["fid"] == 4 * 2 * 100
    # N = 1 scored once (its uniform pick is itself); N = 4 and N = 8 picked and uniform: 5 scorings of 5 sets
    assert counts["scale"] == 5 * 5 * 100


def test_all_training_images_when_stats_images_is_null():
    params = fashion_params(set_size=100, num_sets=2, floor_sets=1)
    params = params.model_copy(update={"reference": params.reference.model_copy(update={"stats_images": None})})
    assert inception_images(params, num_train=1234, num_holdout=10000)["reference"] == 1234 + 500 + 500 + 100


def test_prediction_is_work_times_rate():
    params = fashion_params(set_size=100, num_sets=2, floor_sets=2)
    rates = {"pretrain_seconds_per_image": 1e-3, "train_seconds_per_image": 2e-3, "teacher_seconds_per_image": 0.1,
             "generator_seconds_per_image": 0.01, "inception_seconds_per_image": 0.25}
    out = predict(params, rates, num_train=60000, num_holdout=10000)
    s = out["seconds"]
    assert s["pretrain"] == pytest.approx(params.pretrain.duration_images * 1e-3)
    assert s["train"] == pytest.approx(params.train.duration_images * 2e-3)
    assert s["verifier"] == pytest.approx(params.verifier.max_steps * params.train.batch_size * 2e-3)
    assert s["sample"] == pytest.approx(200 * (0.1 + 3 * 0.01))
    assert s["scale_generation"] == pytest.approx(5 * 100 * 13 * 0.01)
    assert s["inception_fid"] == pytest.approx(800 * 0.25)
    assert out["total_seconds"] == pytest.approx(sum(s.values()))
