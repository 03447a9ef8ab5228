"""Encoders: identity round trip, the SD-VAE path with a tiny AutoencoderKL built from a config, and the
sharded encoded format."""

import json

import numpy as np
import pytest
import torch

from pipeline.config import ComputeParams
from pipeline.datasets.encoders import (
    EDM2_RAW_MEAN,
    EDM2_RAW_STD,
    IdentityEncoder,
    load_encoded,
    load_vae,
    make_encoder,
    map_encoded,
    shard_name,
    write_encoded,
)
from pipeline.datasets.training_data import TrainingData
from pipeline.errors import PipelineError
from pipeline.randomness import Draws
from pipeline.runtime import Runtime
from tests.helpers import HELD, prepared, random_images

CPU = torch.device("cpu")
COMPUTE = ComputeParams(processes=1, precision="fp32", tf32=False, channels_last=False, compile=False, threads="auto")
RUNTIME = Runtime(CPU, COMPUTE)






def test_identity_round_trip_is_exact():
    images = random_images(channels=1)
    enc = IdentityEncoder()
    stored = enc.encode(images, CPU)
    x = enc.to_training(stored, Draws(len(images), torch.device("cpu")))
    assert x.shape == (12, 1, 16, 16) and x.min() >= -1 and x.max() <= 1
    np.testing.assert_array_equal(enc.decode(x), images)
    # stored as uint8 (a quarter of fp32), mapped to [-1, 1] with the float32 operations of an fp32 store
    assert stored["pixels"].dtype == torch.uint8
    assert torch.equal(x, torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1)


def test_vae_encode_store_whiten_decode(tiny_vae_dir, tmp_path):
    images = random_images(n=40)
    labels = np.arange(40) % 4
    encoder = make_encoder({"encoder": "sd-vae", "vae": str(tiny_vae_dir)}, CPU)
    config = write_encoded(tmp_path / "enc", prepared(images, labels, 16), encoder, 16, RUNTIME)
    assert config["channels"] == 4 and config["resolution"] == 8  # two encoder blocks: one halving
    assert config["shards"] == [16, 16, 8] and config["num_images"] == 40 and config["num_classes"] == 4

    loaded, stored, loaded_labels = load_encoded(tmp_path / "enc", CPU)
    assert stored["mean"].dtype == torch.float16 and stored["std"].dtype == torch.float16
    assert stored["mean"].shape == (40, 4, 8, 8)
    np.testing.assert_array_equal(loaded_labels.numpy(), labels)

    # Whitening: training latents have per-channel mean ~0 and std ~0.5 (measured on this very set).
    x = loaded.to_training(stored, Draws(40, torch.device("cpu")))
    assert x.mean(dim=(0, 2, 3)).abs().max() < 0.05
    torch.testing.assert_close(x.std(dim=(0, 2, 3)), torch.full((4,), 0.5), atol=0.05, rtol=0)

    # Un-whitening then decoding equals decoding the raw posterior sample with the VAE itself.
    torch.manual_seed(1)
    z_raw = stored["mean"].float() + stored["std"].float() * torch.randn(stored["mean"].shape)
    torch.manual_seed(1)
    x = loaded.to_training(stored, Draws(40, torch.device("cpu")))
    decoded = loaded.decode(x[:3])
    with torch.no_grad():
        direct = (loaded.vae.decode(z_raw[:3]).sample.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    assert decoded.shape == (3, 16, 16, 3) and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - direct.numpy().astype(int)).max() <= 1


def test_vae_input_is_in_unit_range(tiny_vae_dir):
    """EDM2's convention: the VAE sees pixels / 255 (not [-1, 1])."""
    encoder = make_encoder({"encoder": "sd-vae", "vae": str(tiny_vae_dir)}, CPU)
    images = random_images(n=2)
    stored = encoder.encode(images, CPU)
    with torch.no_grad():
        expected = encoder.vae.encode(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255).latent_dist.mean
    torch.testing.assert_close(stored["mean"].float(), expected, atol=2e-3, rtol=2e-3)


def test_missing_vae_folder_is_a_clear_error(tmp_path, monkeypatch):
    pytest.importorskip("diffusers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    encoder = make_encoder({"encoder": "sd-vae", "vae": str(tmp_path / "no-such-vae")}, CPU)
    with pytest.raises(PipelineError, match="cannot load an AutoencoderKL"):
        encoder.encode(random_images(n=1), CPU)


def test_missing_encoded_artifact(tmp_path):
    with pytest.raises(PipelineError, match="dvc repro encode"):
        load_encoded(tmp_path)


def encode_directly(encoder, images: np.ndarray) -> dict[str, torch.Tensor]:
    """One batch of every image: what the sharded, batched encode must reproduce."""
    return encoder.encode(images, CPU)




def test_sharded_identity_encode_equals_a_direct_encode(tmp_path):
    images, labels = random_images(n=40, channels=1), np.arange(40) % 10
    data = prepared(images, labels, 12, HELD)
    config = write_encoded(tmp_path / "enc", data, IdentityEncoder(), 5, RUNTIME)
    assert config == {"encoder": "identity", "channels": 1, "resolution": 16, "num_classes": 10, "num_images": 35,
                      "shards": [12, 12, 11]}
    assert json.loads((tmp_path / "enc" / "encoder.json").read_text()) == config
    assert sorted(f.name for f in (tmp_path / "enc").iterdir()) == [
        "encoder.json", shard_name(0), shard_name(1), shard_name(2)]
    encoder, stored, loaded_labels = load_encoded(tmp_path / "enc", CPU)
    train = np.setdiff1d(np.arange(40), HELD)
    direct = encode_directly(IdentityEncoder(), images[train])["pixels"]
    assert stored["pixels"].dtype == torch.uint8 and torch.equal(stored["pixels"], direct)
    np.testing.assert_array_equal(loaded_labels.numpy(), labels[train])
    assert encoder.config == config and not list(tmp_path.glob(".enc.tmp-*"))


def test_sharded_vae_encode_equals_a_direct_encode(tiny_vae_dir, tmp_path):
    images, labels = random_images(n=40), np.arange(40) % 4
    train = np.setdiff1d(np.arange(40), HELD)
    encoder = make_encoder({"encoder": "sd-vae", "vae": str(tiny_vae_dir)}, CPU)
    config = write_encoded(tmp_path / "enc", prepared(images, labels, 12, HELD), encoder, 5, RUNTIME)
    _, stored, _ = load_encoded(tmp_path / "enc", CPU)
    direct = encode_directly(encoder, images[train])
    for key in ("mean", "std"):
        torch.testing.assert_close(stored[key], direct[key], atol=2e-3, rtol=2e-3)
    # The whitening statistics, as one pass over everything would measure them (fp16 values, in float64)
    mean, std = stored["mean"].double(), stored["std"].double()
    var = mean.var(dim=(0, 2, 3)) + std.square().mean(dim=(0, 2, 3))
    np.testing.assert_allclose(config["shift"], mean.mean(dim=(0, 2, 3)).numpy(), rtol=1e-10)
    np.testing.assert_allclose(config["scale"], var.sqrt().numpy(), rtol=1e-10)
    assert config["shards"] == [12, 12, 11] and config["vae"] == str(tiny_vae_dir)


def test_edm2_whitening_uses_the_fixed_constants(tiny_vae_dir, tmp_path):
    """An EDM2 teacher was trained on latents whitened with EDM2's constants, not the data's statistics."""
    images, labels = random_images(n=20), np.arange(20) % 4
    encoder = make_encoder({"encoder": "sd-vae", "vae": str(tiny_vae_dir), "whitening": "edm2"}, CPU)
    config = write_encoded(tmp_path / "enc", prepared(images, labels, 20), encoder, 5, RUNTIME)
    assert config["shift"] == EDM2_RAW_MEAN and config["scale"] == EDM2_RAW_STD
    assert config["measured_shift"] != EDM2_RAW_MEAN
    _, stored, _ = load_encoded(tmp_path / "enc", CPU)
    mean = stored["mean"][:2].float()
    zero_noise = type("ZeroDraws", (), {"randn": lambda self, *shape: torch.zeros(2, *shape)})()
    raw_mean, raw_std = torch.tensor(EDM2_RAW_MEAN).view(1, -1, 1, 1), torch.tensor(EDM2_RAW_STD).view(1, -1, 1, 1)
    latents = encoder.to_training({"mean": stored["mean"][:2], "std": stored["std"][:2]}, zero_noise)
    torch.testing.assert_close(latents, (mean - raw_mean) * (0.5 / raw_std))


def test_damaged_encoded_shards_are_clear_errors(tmp_path):
    images, labels = random_images(n=20, channels=1), np.arange(20) % 10
    write_encoded(tmp_path / "enc", prepared(images, labels, 8), IdentityEncoder(), 8, RUNTIME)
    config_path = tmp_path / "enc" / "encoder.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "shards": [8, 4, 8]}))
    with pytest.raises(PipelineError, match=r"shard-00001\.safetensors: .* does not hold the 4 images"):
        load_encoded(tmp_path / "enc")
    config_path.write_text(json.dumps({key: value for key, value in config.items() if key != "shards"}))
    with pytest.raises(PipelineError, match=r"does not list the shards .*unsharded.*rerun `dvc repro encode`"):
        load_encoded(tmp_path / "enc")
    config_path.write_text(json.dumps(config))
    (tmp_path / "enc" / shard_name(1)).write_bytes(b"truncated")
    with pytest.raises(PipelineError, match=r"shard-00001\.safetensors is unreadable .*rerun `dvc repro encode`"):
        load_encoded(tmp_path / "enc")
    (tmp_path / "enc" / shard_name(1)).unlink()
    with pytest.raises(PipelineError, match=r"missing artifact .*shard-00001\.safetensors.*dvc repro encode"):
        load_encoded(tmp_path / "enc")


def test_training_batches_from_mapped_shards_equal_those_from_memory(tmp_path):
    images, labels = random_images(n=40, channels=1), np.arange(40) % 4
    write_encoded(tmp_path / "enc", prepared(images, labels, 16), IdentityEncoder(), 16, RUNTIME)
    encoder, shards, mapped_labels = map_encoded(tmp_path / "enc", CPU)
    assert [len(shard["pixels"]) for shard in shards] == [16, 16, 8]
    batches = []
    for on_device in (True, False):  # copied into one tensor / gathered from the three mapped files
        data = TrainingData(encoder, shards, mapped_labels, CPU, on_device=on_device)
        torch.manual_seed(0)
        batches.append(data.batch(Draws(64, CPU)))
    assert torch.equal(batches[0][0], batches[1][0]) and torch.equal(batches[0][1], batches[1][1])
    torch.manual_seed(0)
    idx = torch.randint(0, 40, (64,)).numpy()  # the rows the draws picked
    np.testing.assert_array_equal(encoder.decode(batches[1][0]), images[idx])
    np.testing.assert_array_equal(batches[1][1].numpy(), labels[idx])


def test_vae_loader_tries_the_local_cache_before_the_network(tiny_vae_dir, monkeypatch):
    """An offline machine with the files cached must not wait on network time-outs."""
    import diffusers

    calls, real = [], diffusers.AutoencoderKL.from_pretrained

    def from_pretrained(name, **kwargs):
        calls.append(kwargs.get("local_files_only", False))
        if name == "cached/vae" and kwargs.get("local_files_only"):
            return real(str(tiny_vae_dir))
        raise OSError("not cached" if kwargs.get("local_files_only") else "no network")
    monkeypatch.setattr(diffusers.AutoencoderKL, "from_pretrained", from_pretrained)
    load_vae("cached/vae", CPU)
    assert calls == [True]  # found in the cache: the network is never tried
    calls.clear()
    with pytest.raises(PipelineError, match="cannot load an AutoencoderKL"):
        load_vae("uncached/vae", CPU)
    assert calls == [True, False]  # the cache, then the hub
