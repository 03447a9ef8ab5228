"""EDM2's magnitude-preserving U-Net (pipeline.networks.published.edm2) against golden files of the official code.

The goldens (outside the repository, see tests/teacher_goldens.py) hold reduced-width EDM2 pickles in the
published format with every weight random and non-zero, the official D(x; sigma) on fixed inputs, and the
parameter names and shapes of every published full-size configuration.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from pipeline.networks.published.edm2 import Precond
from pipeline.networks.published.mp_layers import MPConv, mp_cat, mp_silu, mp_sum, normalize, renormalize_weights
from pipeline.networks.published.pickles import read_pickle, state_dict
from pipeline.networks.unet import count_parameters
from tests.teacher_goldens import EDM2_GOLDENS, golden_dir

TOLERANCE = 1e-5  # relative L2 error against the official output (its own run-to-run spread is ~1e-7)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


_cache: dict[str, tuple[dict, dict[str, torch.Tensor]]] = {}


def golden(name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(constructor kwargs, float32 weights) of a golden pickle, read with the safe reader."""
    if name not in _cache:
        ema = read_pickle(golden_dir() / f"{name}.pkl")["ema"]
        assert ema.class_name == "Precond"
        _cache[name] = ema.kwargs, {k: v.float() for k, v in state_dict(ema).items()}
    return _cache[name]


def loaded(name: str, **extra) -> Precond:
    kwargs, weights = golden(name)
    net = Precond(**kwargs, **extra)
    net.load_state_dict(weights, strict=True)
    return net.eval()


def labels_of(io: dict[str, torch.Tensor]) -> torch.Tensor | None:
    return io["class_labels"].argmax(1) if "class_labels" in io else None


@pytest.mark.parametrize("name", EDM2_GOLDENS)
def test_matches_official_output(name):
    io = load_file(golden_dir() / f"{name}.io.safetensors")
    net = loaded(name)
    with torch.no_grad():
        d = net(io["x"], io["sigma"], labels_of(io))
    assert d.dtype == torch.float32 and d.shape == io["D"].shape
    err = rel_err(d, io["D"])
    assert err <= TOLERANCE, f"{name}: relative error {err:.3g}"


def test_full_size_configurations_match_the_manifest():
    manifest = json.loads((golden_dir() / "full_size_manifest.json").read_text())
    entries = {name: entry for name, entry in manifest.items() if name.startswith("edm2-")}
    assert {"edm2-img512-s", "edm2-img512-xs-uncond", "edm2-img512-xxl"} <= set(entries)
    assert entries["edm2-img512-s"]["parameters"] == 280_212_837
    assert entries["edm2-img512-xs-uncond"]["parameters"] == 124_201_253
    for name, entry in entries.items():
        assert entry["class"].endswith(".Precond")
        with torch.device("meta"):
            net = Precond(**entry["kwargs"])
            encoder = Precond(**entry["kwargs"], decoder=False)
        assert count_parameters(net) == entry["parameters"], name
        shapes = {k: list(v.shape) for k, v in net.state_dict().items()}
        assert shapes == entry["shapes"], name
        enc_names = set(encoder.state_dict())
        assert enc_names < set(shapes)
        assert not any(k.startswith(("unet.dec.", "unet.out_")) for k in enc_names), name


def test_labels_sigma_and_coefficients_conventions():
    net = tiny().eval()
    x, sigma, labels = torch.randn(2, 3, 16, 16), torch.tensor([2.5, 10.0]), torch.tensor([1, 4])
    with torch.no_grad():
        by_index = net(x, sigma, labels)
        assert torch.equal(by_index, net(x, sigma, torch.nn.functional.one_hot(labels, 5).float()))  # one-hot too
        assert rel_err(net(x, sigma, torch.tensor([2, 0])), by_index) > 1e-3  # the label matters
        assert torch.equal(net(x, 0.5, labels), net(x, torch.full((2,), 0.5), labels))  # a float sigma
        assert torch.isfinite(net(x, sigma)).all()  # no label: a zero label embedding, as official

    s = torch.tensor([0.002, 0.5, 80.0])
    c_skip, c_out, c_in, c_noise = net.coefficients(s)
    assert c_skip.shape == c_out.shape == c_in.shape == (3, 1, 1, 1) and c_noise.shape == (3,)
    sd = net.sigma_data
    assert sd == 0.5
    for i, v in enumerate(s.tolist()):
        assert math.isclose(float(c_skip[i]), sd**2 / (v**2 + sd**2), rel_tol=1e-6)
        assert math.isclose(float(c_out[i]), v * sd / math.sqrt(v**2 + sd**2), rel_tol=1e-6)
        assert math.isclose(float(c_in[i]), 1 / math.sqrt(v**2 + sd**2), rel_tol=1e-6)
        assert math.isclose(float(c_noise[i]), math.log(v) / 4, rel_tol=1e-6)
    assert net.logvar(s).shape == (3, 1, 1, 1)


def test_encoder_only_network_and_encoder_features():
    io = load_file(golden_dir() / "edm2-img512-s.io.safetensors")
    x, sigma, labels = io["x"][:2], io["sigma"][2:4], labels_of(io)[:2]
    full = loaded("edm2-img512-s")
    _, weights = golden("edm2-img512-s")

    captured = []
    last = list(full.unet.enc.values())[-1]
    handle = last.register_forward_hook(lambda module, inputs, output: captured.append(output))
    with torch.no_grad():
        full(x, sigma, labels)
        feats = full.encoder_features(x, sigma, labels)
    handle.remove()
    assert feats.shape == (2, full.encoder_channels, 8, 8) and full.encoder_channels == 32 * 4
    assert torch.equal(feats, captured[0])

    kwargs, _ = golden("edm2-img512-s")
    encoder = Precond(**kwargs, decoder=False)
    names = set(encoder.state_dict())
    assert names < set(weights)
    assert not any(".dec." in k or k.startswith("unet.out_") for k in names)
    assert {k for k in weights if k not in names} == {k for k in weights if k.startswith(("unet.dec.", "unet.out_"))}
    encoder.load_state_dict({k: v for k, v in weights.items() if k in names}, strict=True)
    encoder.eval()
    assert encoder.encoder_channels == full.encoder_channels
    with torch.no_grad():
        assert torch.equal(encoder.encoder_features(x, sigma, labels), feats)
    with pytest.raises(RuntimeError):
        encoder(x, sigma, labels)


def tiny(dropout: float = 0.0) -> Precond:
    torch.manual_seed(0)
    net = Precond(img_resolution=16, img_channels=3, label_dim=5, model_channels=8, channel_mult=[1, 2],
                  num_blocks=1, attn_resolutions=[8], channels_per_head=8, dropout=dropout)
    with torch.no_grad():
        for p in net.parameters():  # non-unit weights and non-zero gains, so every layer acts
            p.copy_(torch.randn_like(p) * 3)
    return net


def test_training_mode_forces_weight_normalization():
    net = tiny()
    layers = {name: m for name, m in net.named_modules() if isinstance(m, MPConv) and not name.startswith("logvar")}
    before = {name: m.weight.detach().clone() for name, m in layers.items()}
    x, sigma, labels = torch.randn(2, 3, 16, 16), torch.tensor([0.3, 4.0]), torch.tensor([1, 4])

    with torch.no_grad():
        net.eval()(x, sigma, labels)
    assert all(torch.equal(m.weight, before[name]) for name, m in layers.items())  # eval leaves weights alone

    renormalize_weights(net)  # what the training loop does after every update (and before the first)
    net.train()
    out = net(x, sigma, labels)
    (out.square().mean() + net(x, sigma, labels).mean()).backward()  # two forwards in one graph: no in-place clash
    for name, m in layers.items():
        assert m.weight.grad is not None and m.weight.grad.abs().sum() > 0, name
        old, new = before[name].flatten(1), m.weight.detach().flatten(1)
        fan_in = old.shape[1]
        # Each output channel keeps its direction and is rescaled to unit RMS (norm sqrt(fan_in)), the 1e-4
        # of the normalisation aside: rms_new = rms_old / (rms_old + 1e-4).
        assert torch.allclose(torch.nn.functional.cosine_similarity(old, new, dim=1), torch.ones(len(old)))
        rms_old, rms_new = old.norm(dim=1) / math.sqrt(fan_in), new.norm(dim=1) / math.sqrt(fan_in)
        assert torch.allclose(rms_new, rms_old / (rms_old + 1e-4), rtol=1e-5, atol=0), name
        assert not torch.allclose(old, new)
    assert net.unet.out_gain.grad is not None
    # The training forward used the renormalised weights: it equals an eval forward with them.
    with torch.no_grad():
        assert rel_err(out.detach(), net.eval()(x, sigma, labels)) < 1e-6


def test_dropout_only_in_training():
    net = tiny(dropout=0.5)
    x, sigma, labels = torch.randn(2, 3, 16, 16), torch.tensor([0.3, 4.0]), torch.tensor([1, 4])
    net.train()
    renormalize_weights(net)
    with torch.no_grad():
        a, b = net(x, sigma, labels), net(x, sigma, labels)
        assert rel_err(a, b) > 1e-3
        net.eval()
        assert torch.equal(net(x, sigma, labels), net(x, sigma, labels))


def test_mp_primitives_preserve_magnitude():
    torch.manual_seed(1)
    a, b = torch.randn(64, 256), torch.randn(64, 256)
    rms = lambda t: float(t.detach().square().mean().sqrt())  # noqa: E731
    assert abs(rms(mp_silu(a)) - 1) < 0.02
    assert abs(rms(mp_sum(a, b, t=0.3)) - 1) < 0.02
    assert abs(rms(mp_cat(a, b[:, :32], t=0.7)) - 1) < 0.02
    assert torch.allclose(normalize(a * 5).square().mean(1), torch.ones(64), atol=1e-3)
    layer = MPConv(256, 128, kernel=())
    assert abs(rms(layer(a)) - 1) < 0.05 and layer(a).shape == (64, 128)
