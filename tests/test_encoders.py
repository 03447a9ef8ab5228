"""Encoders: identity round trip, and the SD-VAE path with a tiny AutoencoderKL built from a config."""

import numpy as np
import pytest
import torch

from pipeline.encoders import IdentityEncoder, load_encoded, make_encoder, write_encoded
from pipeline.errors import PipelineError

CPU = torch.device("cpu")


def random_images(n=12, res=16, channels=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, res, res, channels), dtype=np.uint8)


def test_identity_round_trip_is_exact():
    images = random_images(channels=1)
    enc = IdentityEncoder()
    stored = enc.encode(images, CPU)
    x = enc.to_training(stored)
    assert x.shape == (12, 1, 16, 16) and x.min() >= -1 and x.max() <= 1
    np.testing.assert_array_equal(enc.decode(x), images)


@pytest.fixture(scope="module")
def tiny_vae_dir(tmp_path_factory):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                                  down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                                  up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
                                  block_out_channels=(8, 16), norm_num_groups=4, sample_size=16)
    path = tmp_path_factory.mktemp("vae") / "tiny-vae"
    vae.save_pretrained(path)  # the same folder layout as a downloaded stabilityai/sd-vae-ft-mse
    return path


def test_vae_encode_store_whiten_decode(tiny_vae_dir, tmp_path):
    images = random_images(n=40)
    labels = np.arange(40) % 4
    encoder = make_encoder({"encoder": "sd-vae", "vae": str(tiny_vae_dir)}, CPU)
    config = write_encoded(tmp_path / "enc", images, labels, 4, encoder, batch_size=16, device=CPU)
    assert config["channels"] == 4 and config["resolution"] == 8  # two encoder blocks: one halving

    loaded, stored, loaded_labels = load_encoded(tmp_path / "enc", CPU)
    assert stored["mean"].dtype == torch.float16 and stored["std"].dtype == torch.float16
    assert stored["mean"].shape == (40, 4, 8, 8)
    np.testing.assert_array_equal(loaded_labels.numpy(), labels)

    # Whitening: training latents have per-channel mean ~0 and std ~0.5 (measured on this very set).
    x = loaded.to_training(stored, torch.Generator().manual_seed(0))
    assert x.mean(dim=(0, 2, 3)).abs().max() < 0.05
    torch.testing.assert_close(x.std(dim=(0, 2, 3)), torch.full((4,), 0.5), atol=0.05, rtol=0)

    # Un-whitening then decoding equals decoding the raw posterior sample with the VAE itself.
    generator = torch.Generator().manual_seed(1)
    z_raw = stored["mean"].float() + stored["std"].float() * torch.randn(stored["mean"].shape, generator=generator)
    x = loaded.to_training(stored, torch.Generator().manual_seed(1))
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
