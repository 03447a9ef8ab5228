"""The rebuilt EDM networks (SongUNet, DhariwalUNet, VP/VE/EDM preconditioning) against the official code's
golden outputs, the published full-size architectures, the encoder-only build and the closed-form coefficients."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from pipeline.networks.published.edm import PRECONDITIONERS, EDMPrecond, SongUNet, VEPrecond, VPPrecond
from pipeline.networks.published.edm_layers import UNetBlock
from pipeline.networks.published.pickles import read_pickle, state_dict
from pipeline.networks.unet import count_parameters
from tests.teacher_goldens import EDM_GOLDENS, golden_dir

ENCODER_PREFIXES = ("model.map_", "model.enc.")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # the machine is shared: one thread is far faster than oversubscribed ones for these small nets
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


_CACHE: dict[str, tuple] = {}


def golden(name: str):
    """(class name, kwargs, official weights, io tensors, json info) of one golden teacher."""
    if name not in _CACHE:
        folder = golden_dir()
        ema = read_pickle(folder / f"{name}.pkl")["ema"]
        info = json.loads((folder / f"{name}.json").read_text())
        _CACHE[name] = (ema.class_name, ema.kwargs, state_dict(ema), load_file(folder / f"{name}.io.safetensors"),
                        info)
    return _CACHE[name]


def loaded(name: str, decoder: bool = True):
    class_name, kwargs, weights, _, _ = golden(name)
    net = PRECONDITIONERS[class_name](**kwargs, decoder=decoder)
    own = net.state_dict()
    net.load_state_dict({k: v for k, v in weights.items() if k in own}, strict=True)
    return net.eval()


def labels_of(io: dict) -> torch.Tensor | None:
    return io["class_labels"].argmax(1) if "class_labels" in io else None


def manifest() -> dict:
    return json.loads((golden_dir() / "full_size_manifest.json").read_text())


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("name", EDM_GOLDENS)
def test_golden_outputs(name):
    class_name, kwargs, weights, io, info = golden(name)
    assert info["class"].endswith("." + class_name)
    net = PRECONDITIONERS[class_name](**kwargs)
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == {k: tuple(v.shape) for k, v in weights.items()}
    net.load_state_dict(weights, strict=True)
    net.eval()
    assert count_parameters(net) == info["parameters"]
    with torch.no_grad():
        out = net(io["x"], io["sigma"], labels_of(io))
    assert out.dtype == torch.float32 and out.shape == io["D"].shape
    assert rel(out, io["D"]) <= 1e-5
    # per sample, against the network's share c_out F alone (c_skip x dominates D at low noise for VP/VE)
    c_skip = net.coefficients(io["sigma"])[0]
    share = (io["D"] - c_skip * io["x"]).flatten(1).norm(dim=1)
    err = (out - io["D"]).flatten(1).norm(dim=1) / share
    assert (err[io["sigma"] >= 0.05] <= 1e-5).all(), err


def test_label_and_sigma_forms():
    net = loaded("edm-cifar10-32x32-cond-vp")
    io = golden("edm-cifar10-32x32-cond-vp")[3]
    x, labels = io["x"][:2], labels_of(io)[:2]
    with torch.no_grad():
        ref = net(x, torch.full((2,), 2.5), labels)
        torch.testing.assert_close(net(x, 2.5, labels), ref, rtol=0, atol=0)
        torch.testing.assert_close(net(x, torch.full((2, 1, 1, 1), 2.5), labels), ref, rtol=0, atol=0)
        torch.testing.assert_close(net(x, torch.tensor(2.5), io["class_labels"][:2]), ref, rtol=0, atol=0)
        assert not torch.allclose(net(x, 2.5, (labels + 1) % 10), ref)  # the labels matter
        assert torch.isfinite(net(x, 2.5)).all()  # no labels: the zero one-hot, as the official code


@pytest.mark.parametrize("name", EDM_GOLDENS)
def test_full_size_architecture(name):
    entry = manifest()[name]
    class_name = entry["class"].rsplit(".", 1)[1]
    with torch.device("meta"):
        net = PRECONDITIONERS[class_name](**entry["kwargs"])
        encoder = PRECONDITIONERS[class_name](**entry["kwargs"], decoder=False)
    assert count_parameters(net) == entry["parameters"]
    assert {k: list(v.shape) for k, v in net.state_dict().items()} == entry["shapes"]
    # the encoder-only build: exactly the embedding and `enc` entries, under the same names and shapes
    expected = {k: v for k, v in entry["shapes"].items() if k.startswith(ENCODER_PREFIXES)}
    assert {k: list(v.shape) for k, v in encoder.state_dict().items()} == expected
    kwargs = entry["kwargs"]
    assert encoder.encoder_channels == net.encoder_channels == kwargs["model_channels"] * kwargs["channel_mult"][-1]


@pytest.mark.parametrize("name", EDM_GOLDENS)
def test_encoder_only(name):
    full, encoder = loaded(name), loaded(name, decoder=False)
    names, full_names = set(encoder.state_dict()), set(full.state_dict())
    assert names < full_names and not any(n.startswith("model.dec.") or ".out_" in n for n in names)
    assert not hasattr(encoder.model, "dec") and not hasattr(encoder.model, "out_conv")
    _, kwargs, _, io, _ = golden(name)
    x, sigma, labels = io["x"][:2], io["sigma"][2:4], labels_of(io)
    labels = None if labels is None else labels[:2]
    captured = []
    last = list(full.model.enc.values())[-1]
    hook = last.register_forward_hook(lambda module, inputs, output: captured.append(output))
    with torch.no_grad():
        full(x, sigma, labels)
        hook.remove()
        features = encoder.encoder_features(x, sigma, labels)
        torch.testing.assert_close(full.encoder_features(x, sigma, labels), features, rtol=0, atol=0)
    res = kwargs["img_resolution"] >> (len(kwargs["channel_mult"]) - 1)
    assert features.shape == (2, encoder.encoder_channels, res, res)
    torch.testing.assert_close(features, captured[0], rtol=1e-6, atol=1e-6)
    with pytest.raises(RuntimeError, match="decoder=False"):
        encoder(x, sigma, labels)


def test_adm_attention_heads():
    # ADM gives a block out_channels // 64 heads: none (no norm2/qkv/proj) at the reduced width's 32 and 48
    # channels, one at 64; at full width (192..768 channels) every attention resolution has them
    net = loaded("edm-imagenet-64x64-cond-adm")
    blocks = {name: m for name, m in net.model.named_modules() if isinstance(m, UNetBlock)}
    for name, block in blocks.items():
        res = int(name.split(".")[1].split("x")[0])
        attention = res in (32, 16, 8) and not name.endswith(("_down", "_up", "_in1"))
        assert block.num_heads == (block.out_channels // 64 if attention else 0), name
        assert block.num_heads == (1 if attention and res == 8 else 0), name
        assert hasattr(block, "qkv") == bool(block.num_heads)
    assert not any(".qkv." in n for n in golden("edm-imagenet-64x64-cond-adm")[2] if "32x32" in n or "16x16" in n)
    shapes = manifest()["edm-imagenet-64x64-cond-adm"]["shapes"]
    assert shapes["model.enc.32x32_block0.qkv.weight"] == [384 * 3, 384, 1, 1]


@pytest.mark.parametrize("name", EDM_GOLDENS)
def test_group_norm_settings(name):
    # an epsilon of 1e-6 instead of 1e-5 moves D by less than the golden tolerance: pin it here
    net = loaded(name)
    norms = [m for m in net.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert {m.eps for m in norms} == ({1e-5} if "adm" in name else {1e-6})
    assert all(m.num_groups == min(32, m.num_channels // 4) for m in norms)


SIGMAS = torch.tensor([0.002, 0.05, 0.5, 1.0, 10.0, 80.0])


def tiny(cls, **kwargs):
    with torch.device("meta"):  # the coefficients do not touch the weights
        return cls(img_resolution=8, img_channels=3, model_type="SongUNet", model_channels=16, channel_mult=[1],
                   num_blocks=1, **kwargs)


@pytest.mark.parametrize("cls", [VPPrecond, VEPrecond, EDMPrecond])
def test_coefficients(cls):
    net = tiny(cls)
    assert net.sigma_data == 0.5
    c_skip, c_out, c_in, c_noise = net.coefficients(SIGMAS)
    assert c_skip.shape == c_out.shape == c_in.shape == (6, 1, 1, 1) and c_noise.shape == (6,)
    for i, s in enumerate(SIGMAS.double().tolist()):
        if cls is VPPrecond:  # t(sigma) inverts sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)
            # 1 + sigma^2 rounded to float32, as the official code has it (~1% off c_noise at sigma = 0.002)
            one_plus = float(torch.tensor(s, dtype=torch.float32) ** 2 + 1)
            t = (math.sqrt(0.1**2 + 2 * 19.9 * math.log(one_plus)) - 0.1) / 19.9
            want = (1.0, -s, 1 / math.sqrt(s * s + 1), 999 * t)
        elif cls is VEPrecond:
            want = (1.0, s, 1.0, math.log(s / 2))
        else:
            want = (0.25 / (s * s + 0.25), s * 0.5 / math.sqrt(s * s + 0.25), 1 / math.sqrt(s * s + 0.25),
                    math.log(s) / 4)
        got = (float(c_skip[i]), float(c_out[i]), float(c_in[i]), float(c_noise[i]))
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6), (s, got, want)
    if cls is VPPrecond:
        # sigma(1e-5) = 0.0010005 exactly; evaluated in float32, as the official code does, 2**-10
        assert net.sigma_min == 2**-10
        assert net.sigma_max == pytest.approx(math.sqrt(math.expm1(0.5 * 19.9 + 0.1)), rel=1e-5)
    edm = tiny(EDMPrecond, sigma_data=1.0)
    assert float(edm.coefficients(torch.tensor([1.0]))[0]) == pytest.approx(0.5)


def test_song_skip_encoder_and_decoder():
    torch.manual_seed(0)
    net = SongUNet(img_resolution=16, in_channels=3, out_channels=3, label_dim=4, augment_dim=2, model_channels=16,
                   channel_mult=[1, 2, 2], num_blocks=1, attn_resolutions=[8], embedding_type="fourier",
                   channel_mult_noise=2, encoder_type="skip", decoder_type="skip", resample_filter=[1, 3, 3, 1]).eval()
    names = set(net.state_dict())
    assert {"enc.8x8_aux_skip.weight", "enc.8x8_aux_down.resample_filter", "dec.8x8_aux_up.resample_filter",
            "dec.4x4_aux_conv.weight", "dec.16x16_aux_conv.weight", "map_noise.freqs"} <= names
    assert "enc.8x8_aux_down.weight" not in names  # resampling only
    x, noise = torch.randn(2, 3, 16, 16), torch.tensor([-0.5, 0.7])
    onehot, augment = torch.eye(4)[:2], torch.randn(2, 2)
    captured = []
    hook = net.enc["4x4_block0"].register_forward_hook(lambda module, inputs, output: captured.append(output))
    with torch.no_grad():
        out = net(x, noise, onehot, augment)
        hook.remove()
        features = net.encoder_features(x, noise, onehot, augment)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert features.shape == (2, net.encoder_channels, 4, 4) == (2, 32, 4, 4)  # the main path, not the image path
    torch.testing.assert_close(features, captured[0], rtol=1e-6, atol=1e-6)
