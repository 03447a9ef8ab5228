"""The paper-scale presets: complete, valid params files whose networks have the sizes they claim."""

import pytest
import torch
import yaml

from pipeline.config import load_params
from pipeline.networks.unet import UNet, count_parameters
from tests.helpers import ROOT

# preset: (model-space resolution, channels, millions of score-net parameters: the class it claims)
PRESETS = {"cifar10": (32, 3, (50, 65)),  # DDPM++: 56M
           "imagenet64": (64, 3, (280, 310)),  # ADM: 296M
           "imagenet512": (64, 4, (250, 300))}  # EDM2-S in SD-VAE latent space: 280M


def keys(tree: dict, prefix: str = "") -> set[str]:
    return {k for name, value in tree.items()
            for k in ([f"{prefix}{name}"] + (sorted(keys(value, f"{prefix}{name}.")) if isinstance(value, dict) else []))}


@pytest.mark.parametrize("name", PRESETS)
def test_preset_is_a_complete_valid_params_file(name):
    path = ROOT / "presets" / f"{name}.yaml"
    params = load_params(path)
    assert keys(yaml.safe_load(path.read_text())) == keys(yaml.safe_load((ROOT / "params.yaml").read_text()))
    resolution, channels, (low, high) = PRESETS[name]
    with torch.device("meta"):  # shapes only: no memory, no time
        net = UNet(params.pretrain.network, resolution, channels, 1000 if params.pretrain.class_conditional else 0)
    assert low <= count_parameters(net) / 1e6 <= high
    assert params.evaluation.num_sets * params.evaluation.set_size == 50000 and params.reference.inception == "on"
    assert params.compute.precision == "bf16" and params.compute.processes > 1
