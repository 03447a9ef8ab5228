"""Published EDM and EDM2 teachers as the project's networks: build them from a config, convert a pickle.

A converted teacher is saved like a pretrained one (safetensors + JSON config, `kind: published`), so every
later stage builds it with `build_denoiser`. The config records the official class and constructor kwargs;
the weights keep the official parameter names, so the mapping from the pickle is the identity and a
missing or unexpected tensor is an error, never a silent skip.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pipeline.errors import PipelineError
from pipeline.networks.published import edm, edm2
from pipeline.networks.published.pickles import read_pickle, state_dict
from pipeline.noise_levels import SIGMA_DATA

PUBLISHED = "published"
# the official preconditioner classes, by the name their pickles carry
CLASSES: dict[str, type[nn.Module]] = {"VPPrecond": edm.VPPrecond, "VEPrecond": edm.VEPrecond,
                                       "EDMPrecond": edm.EDMPrecond, "Precond": edm2.Precond}
EDM2_CLASSES = {"Precond"}


def published_config(class_name: str, kwargs: dict, checkpoint: str) -> dict:
    return {"kind": PUBLISHED, "family": "edm2" if class_name in EDM2_CLASSES else "edm", "class_name": class_name,
            "kwargs": kwargs, "checkpoint": checkpoint, "resolution": kwargs["img_resolution"],
            "channels": kwargs["img_channels"], "num_classes": kwargs.get("label_dim", 0), "sigma_data": SIGMA_DATA}


def build_published(config: dict, decoder: bool = True) -> nn.Module:
    """The official architecture of `config` (`decoder=False`: its encoder half, for the ratio net)."""
    return CLASSES[config["class_name"]](**config["kwargs"], decoder=decoder)


def convert_checkpoint(path: str | Path) -> tuple[nn.Module, dict]:
    """Read a published snapshot safely and load its EMA network into the project's rebuild of it (float32)."""
    ema = read_pickle(path)["ema"]
    if ema.class_name not in CLASSES:
        raise PipelineError(f"{path}: network class {ema.class_name!r} is not one of the published teachers this "
                            f"pipeline rebuilds ({', '.join(sorted(CLASSES))})")
    config = published_config(ema.class_name, ema.kwargs, Path(path).name)
    net = build_published(config)
    weights = {name: tensor.float() for name, tensor in state_dict(ema).items()}
    expected = net.state_dict()
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    wrong = sorted(n for n in set(expected) & set(weights) if expected[n].shape != weights[n].shape)
    if missing or unexpected or wrong:
        raise PipelineError(f"{path}: its {ema.class_name} does not match the rebuilt architecture (missing "
                            f"{missing[:5]}, unexpected {unexpected[:5]}, other shapes {wrong[:5]}): is it an "
                            "official EDM/EDM2 snapshot, unmodified?")
    net.load_state_dict(weights)
    return net.eval(), config


def check_data_matches(config: dict, data: dict, class_conditional: bool) -> None:
    """Refuse, before any work, encoded data the published teacher was not trained on."""
    name = config["checkpoint"]
    want = (config["channels"], config["resolution"])
    if (data["channels"], data["resolution"]) != want:
        raise PipelineError(f"teacher {name} works on {want[0]}x{want[1]}^2 inputs but data/encoded holds "
                            f"{data['channels']}x{data['resolution']}^2: set prepare.resolution and encode.encoder "
                            "to the teacher's (the presets do)")
    if config["family"] == "edm2" and (data.get("encoder") != "sd-vae" or data.get("whitening") != "edm2"):
        raise PipelineError(f"teacher {name} is an EDM2 latent model: set encode.encoder: sd-vae and "
                            "encode.whitening: edm2 (its fixed latent statistics)")
    if config["family"] == "edm" and data.get("encoder") != "identity":
        raise PipelineError(f"teacher {name} is an EDM pixel model: set encode.encoder: identity")
    if bool(config["num_classes"]) != class_conditional or (
            config["num_classes"] and config["num_classes"] != data["num_classes"]):
        raise PipelineError(f"teacher {name} has {config['num_classes']} classes (0: unconditional) but the data has "
                            f"{data['num_classes']} and pretrain.class_conditional is {class_conditional}: match them")


def describe(net: nn.Module, config: dict) -> dict:
    return {"source": "checkpoint", "checkpoint": config["checkpoint"], "class": config["class_name"],
            "family": config["family"], "parameters": sum(p.numel() for p in net.parameters()),
            "kwargs": config["kwargs"]}


def finite_check(net: nn.Module, config: dict) -> None:
    """One forward pass on noise: a converted teacher that gives non-finite outputs is refused."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, config["channels"], config["resolution"], config["resolution"], generator=generator)
    labels = torch.zeros(2, dtype=torch.long) if config["num_classes"] else None
    with torch.no_grad():
        out = net(x, torch.tensor([0.5, 5.0]), labels)
    if not torch.isfinite(out).all():
        raise PipelineError(f"teacher {config['checkpoint']}: the converted network gives non-finite outputs")
