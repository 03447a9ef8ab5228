"""The verifier: its calibration recovers a known scale and bias whatever the class proportions, early stopping
keeps the best validation weights, the held-out parts are disjoint and balanced, and the stage runs end to end
on tiny data (and says so, writing no verifier, for method vsd)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.artifacts import save_weights
from pipeline.config import NetworkParams, load_params, parse_params
from pipeline.datasets.encoders import IdentityEncoder, write_encoded
from pipeline.datasets.prepared import load_prepared, write_prepared
from pipeline.errors import PipelineError
from pipeline.generation.calibration import Calibration, classifier_report, fit_calibration, memorisation_auc
from pipeline.generation.verifier import held_out_parts, load_verifier
from pipeline.networks.generator import OneStepGenerator, generator_config, save_generator
from pipeline.networks.models import build_denoiser, denoiser_config
from pipeline.networks.ratio_net import build_ratio_net, ratio_config
from pipeline.training.early_stopping import fit_early_stopped
from stages import verifier as verifier_stage
from tests.helpers import CPU, ROOT

SCALE, BIAS, MU = 2.5, -0.7, 1.0  # raw logits d with SCALE * d + BIAS = log q/p for p = N(0, 1), q = N(MU, 1)


def raw_logits(n_generated: int, n_real: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x_generated, x_real = rng.normal(MU, 1, n_generated), rng.normal(0, 1, n_real)
    log_q_over_p = lambda x: MU * x - MU**2 / 2  # noqa: E731
    return (log_q_over_p(x_generated) - BIAS) / SCALE, (log_q_over_p(x_real) - BIAS) / SCALE


@pytest.mark.parametrize("n_generated,n_real", [(20000, 20000), (8000, 24000)])
def test_calibration_recovers_a_known_scale_and_bias_for_any_class_proportions(n_generated, n_real):
    calibration = fit_calibration(*raw_logits(n_generated, n_real))
    assert calibration.scale == pytest.approx(SCALE, abs=0.1)
    assert calibration.bias == pytest.approx(BIAS, abs=0.05)  # the split's prior log(1/3) is taken out


def test_calibrated_logits_give_honest_weights():
    d_generated, d_real = raw_logits(20000, 20000, seed=1)
    raw, calibrated = classifier_report(d_generated, d_real), classifier_report(
        *(Calibration(SCALE, BIAS)(d) for d in (d_generated, d_real)))
    assert raw["auc"] == pytest.approx(calibrated["auc"])  # a monotone map: the ranking is unchanged
    assert calibrated["ece"] < 0.02 < raw["ece"] and calibrated["brier"] < raw["brier"]
    assert calibrated["log_loss"] < raw["log_loss"]
    assert calibrated["mean_weight_generated"] == pytest.approx(1, abs=0.05)  # E_q[p/q] = 1
    assert calibrated["mean_inverse_weight_real"] == pytest.approx(1, abs=0.05)  # E_p[q/p] = 1
    assert abs(raw["mean_weight_generated"] - 1) > 0.3


def test_memorisation_auc():
    rng = np.random.default_rng(0)
    assert memorisation_auc(rng.normal(0, 1, 2000), rng.normal(0, 1, 2000)) == pytest.approx(0.5, abs=0.03)
    assert memorisation_auc(rng.normal(-1, 1, 2000), rng.normal(0, 1, 2000)) > 0.7  # training images look more real


class Scalar(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))


def run_fit(losses, max_steps=100, every=1, patience=2):
    """An update adds 1 to w; the validation loss is losses(w)."""
    net = Scalar()

    def update():
        with torch.no_grad():
            net.w += 1

    fit = fit_early_stopped(net, update, lambda: {"loss": losses(float(net.w.detach()))}, max_steps, every, patience)
    return net, fit


def test_early_stopping_stops_early_and_returns_the_best_weights():
    net, fit = run_fit(lambda w: (w - 3) ** 2)
    assert float(net.w.detach()) == 3 and fit["best_step"] == 3
    assert fit["steps"] == 5  # two validations without a new best, far before max_steps
    assert [row["step"] for row in fit["curve"]] == [0, 1, 2, 3, 4, 5]
    net, fit = run_fit(lambda w: (w - 5) ** 2, every=2, patience=3)
    assert float(net.w.detach()) == 4 and fit["best_step"] == 4 and fit["steps"] == 10
    assert [row["step"] for row in fit["curve"]] == [0, 2, 4, 6, 8, 10]


def test_early_stopping_keeps_the_starting_weights_when_nothing_improves():
    net, fit = run_fit(lambda w: w)
    assert float(net.w.detach()) == 0 and fit["best_step"] == 0 and fit["steps"] == 2
    net, fit = run_fit(lambda w: -w, max_steps=7, every=3)  # the last update is validated too
    assert float(net.w.detach()) == 7 and [row["step"] for row in fit["curve"]] == [0, 3, 6, 7]


def test_held_out_parts_are_disjoint_and_class_balanced():
    labels = np.repeat(np.arange(10), 50)
    parts = held_out_parts(labels, [200, 150, 150], seed=0)
    assert [len(part) for part in parts] == [200, 150, 150]
    assert len(np.unique(np.concatenate(parts))) == 500
    assert all(np.bincount(labels[part], minlength=10).tolist() == [len(part) // 10] * 10 for part in parts)
    assert not np.array_equal(parts[0], held_out_parts(labels, [200, 150, 150], seed=1)[0])
    with pytest.raises(PipelineError, match="need more than the 500 held-out images"):
        held_out_parts(labels, [300, 150, 100], seed=0)


@pytest.mark.parametrize("key,value,message", [
    ("sigma", 0.0001, "verifier.sigma = 0.0001 is outside the noise levels the ratio net is trained on"),
    ("sigma", 50, "train.auxiliary_noise"),
    ("test_images", 300, "exceed prepare.holdout = 500"),
    ("batch_per_process", 100, "does not divide batch_size = 128"),
    ("patience", 0, "verifier.patience = 0"),
])
def test_bad_verifier_params_are_rejected(params_dict, key, value, message):
    params_dict["verifier"][key] = value
    with pytest.raises(PipelineError, match=message):
        parse_params(params_dict)


TINY = {"prepare": {"source": "synthetic", "max_images": 240, "holdout": 60},
        "verifier": {"max_steps": 40, "batch_size": 32, "eval_every": 5, "patience": 2, "validation_images": 20,
                     "calibration_images": 20, "test_images": 20}}


@pytest.fixture
def tiny_stage_inputs(workdir):
    """Prepared and encoded synthetic gratings, an untrained generator and a ratio net with its zero head."""
    raw = load_params(ROOT / "params.yaml").model_dump(mode="json")
    for section, values in TINY.items():
        raw[section].update(values)
    params = parse_params(raw)
    write_prepared("data/prepared", params.prepare, params.seed)
    data = load_prepared("data/prepared")
    write_encoded("data/encoded", data, IdentityEncoder(), 64, CPU)
    net = NetworkParams(channels=16, channel_mult=[1], num_blocks=1, attn_resolutions=[], dropout=0.0)
    score = denoiser_config(net, data.manifest["resolution"], data.manifest["channels"], data.num_classes, 0.5)
    torch.manual_seed(0)
    save_generator("data/train/generator", OneStepGenerator(build_denoiser(score), 2.5), generator_config(score, 2.5))
    save_weights("data/train/ratio", build_ratio_net(ratio_config(score)).state_dict(), ratio_config(score))
    return params


def test_the_stage_fits_calibrates_and_reports_on_held_out_images(tiny_stage_inputs):
    params = tiny_stage_inputs
    verifier_stage.main(params, CPU)
    metrics = json.loads(open("metrics/verifier.json").read())
    test = metrics["test"]
    assert test["trained"]["auc"] == 0.5  # the zero head: d = 0 everywhere
    assert test["fitted"]["auc"] > 0.9  # an untrained generator's samples are easy to tell from gratings
    assert 0 < metrics["best_step"] <= metrics["steps"] <= params.verifier.max_steps
    assert metrics["images"]["test"] == 20 and set(metrics["calibration"]) == {"scale", "bias"}
    assert test["fitted_calibrated"]["log_loss"] <= test["fitted"]["log_loss"] + 0.1
    curve = open("metrics/verifier_curve.csv").read().splitlines()
    assert curve[0] == "step,loss,auc" and curve[1].startswith("0,") and len(curve) >= 3
    verifier = load_verifier("data/verifier", CPU.device)
    assert verifier.sigma == params.verifier.sigma and verifier.calibration.scale == metrics["calibration"]["scale"]
    x = torch.randn(4, 3, 8, 8)
    d = verifier.ratio(x, torch.full((4,), verifier.sigma), torch.zeros(4, dtype=torch.long))
    expected = -(metrics["calibration"]["scale"] * d + metrics["calibration"]["bias"])
    torch.testing.assert_close(verifier.log_weight(x, torch.zeros(4, dtype=torch.long)), expected)


def test_the_stage_writes_no_verifier_for_vsd(tiny_stage_inputs):
    params = tiny_stage_inputs.model_copy(update={"method": "vsd"})
    for path in Path("data/train").glob("ratio.*"):  # the baseline's stage 2 leaves a fake score net instead
        path.unlink()
    verifier_stage.main(params, CPU)
    assert json.loads(open("metrics/verifier.json").read())["verifier"] is None
    with pytest.raises(PipelineError, match="holds no verifier \\(stage 2 trained no ratio net \\(method vsd\\)\\)"):
        load_verifier("data/verifier", CPU.device)
