"""params.yaml validation: every bad value stops with the dotted key, the value and what was expected."""

import subprocess
import sys

import pytest
import yaml

from pipeline.config import ParamsError, load_params, parse_params, with_settings
from tests.helpers import ROOT


def test_the_repository_params_are_valid():
    params = load_params(ROOT / "params.yaml")
    assert params.divergence in ("dikl", "dijs", "difkl")


def error_of(raw) -> str:
    with pytest.raises(ParamsError) as info:
        parse_params(raw)
    return str(info.value)


def test_unknown_key(params_dict):
    params_dict["pretrain"]["learning_rate"] = 0.1
    assert "pretrain.learning_rate: unknown key" in error_of(params_dict)


def test_wrong_type(params_dict):
    params_dict["pretrain"]["batch_size"] = "big"
    message = error_of(params_dict)
    assert "pretrain.batch_size = 'big'" in message and "integer" in message


def test_out_of_range(params_dict):
    params_dict["pretrain"]["lr"] = -1
    message = error_of(params_dict)
    assert "pretrain.lr = -1" in message and "greater than 0" in message


def test_missing_key(params_dict):
    del params_dict["sample"]["nfe"]
    assert "sample.nfe: missing" in error_of(params_dict)


def test_bad_divergence_lists_the_allowed_values(params_dict):
    params_dict["divergence"] = "kl"
    message = error_of(params_dict)
    assert "divergence = 'kl'" in message and all(d in message for d in ("dikl", "dijs", "difkl"))


def test_cross_field_rules(params_dict):
    params_dict["sample"]["nfe"] = 36
    assert "nfe must be odd" in error_of(params_dict)
    params_dict["sample"]["nfe"] = 35
    params_dict["prepare"]["source"] = "cifar10"
    assert "set prepare.path" in error_of(params_dict)


@pytest.mark.parametrize("key,value,message", [
    ("num_candidates", [], "at least 1 item"),
    ("num_candidates", [2, 4, 8], "start at 1"),
    ("num_candidates", [1, 4, 2], "strictly increasing"),
    ("num_candidates", [1, 1, 2], "strictly increasing"),
    ("num_candidates", [1, "many"], "scale.num_candidates.1"),
    ("tau", -0.5, "scale.tau = -0.5"),
    ("verifier", "raw", "scale.verifier = 'raw'"),
    ("batch_size", 0, "scale.batch_size = 0"),
])
def test_bad_scaling_params_are_rejected(params_dict, key, value, message):
    params_dict["scale"][key] = value
    assert message in error_of(params_dict)


def test_every_error_is_reported_at_once(params_dict):
    params_dict["seed"] = -3
    params_dict["evaluation"]["batch_size"] = 0
    message = error_of(params_dict)
    assert "seed = -3" in message and "evaluation.batch_size = 0" in message


def test_invalid_yaml(tmp_path):
    (tmp_path / "params.yaml").write_text("seed: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(tmp_path / "params.yaml")


def test_a_stage_with_bad_params_exits_nonzero_and_writes_nothing(tmp_path, params_dict):
    params_dict["prepare"]["resolution"] = 2
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_dict))
    result = subprocess.run([sys.executable, "-m", "stages.prepare"], cwd=tmp_path, capture_output=True, text=True,
                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert "prepare.resolution = 2" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_settings_by_dotted_key_as_dvc_sets_them():
    params = load_params(ROOT / "params.yaml")
    changed = with_settings(params, {"train.ratio_bootstrap.lower": 0.5, "divergence": "dikl"})
    assert changed.train.ratio_bootstrap.lower == 0.5 and changed.divergence == "dikl"
    assert changed.model_copy(update={"train": params.train, "divergence": params.divergence}) == params
    with pytest.raises(ParamsError, match="train.no_such_key is not a parameter"):
        with_settings(params, {"train.no_such_key": 1})
    with pytest.raises(ParamsError, match="lower"):
        with_settings(params, {"train.ratio_bootstrap.lower": 1.5})  # validated again: below 1
