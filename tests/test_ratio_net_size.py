"""The ratio net's size (train.ratio_net.encoder_blocks): a cut encoder computes exactly what the teacher's encoder
computes up to the cut, for the project U-Net and both published families, and starts from the teacher's weights."""

import pytest
import torch

from pipeline.config import NetworkParams
from pipeline.networks.models import build_denoiser, denoiser_config
from pipeline.networks.published.convert import published_config
from pipeline.networks.ratio_net import RatioNet, build_ratio_net, init_from_score, ratio_config

PROJECT = denoiser_config(NetworkParams(channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4],
                                        dropout=0.0), 8, 1, 10, 0.5)
NCSNPP = published_config("VEPrecond", {  # residual encoder: auxiliary paths between the main blocks
    "img_resolution": 8, "img_channels": 3, "label_dim": 0, "model_type": "SongUNet", "embedding_type": "fourier",
    "encoder_type": "residual", "channel_mult_noise": 2, "resample_filter": [1, 3, 3, 1], "channel_mult": [1, 2],
    "model_channels": 8, "num_blocks": 1, "attn_resolutions": [4], "dropout": 0.0}, "")
EDM2 = published_config("Precond", {"img_resolution": 8, "img_channels": 3, "label_dim": 5, "model_channels": 8,
                                    "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": [4],
                                    "channels_per_head": 8}, "")
CONFIGS = {"unet": PROJECT, "ncsnpp": NCSNPP, "edm2": EDM2}


def main_blocks(encoder) -> list[torch.nn.Module]:
    """The full encoder's blocks in the order it runs them (auxiliary paths left out)."""
    if hasattr(encoder, "down"):
        return [*encoder.down, *encoder.mid]
    backbone = encoder.model if hasattr(encoder, "model") else encoder.unet
    roles = getattr(backbone, "_enc_roles", {})
    return [m for name, m in backbone.enc.items() if not roles.get(name, "").startswith("aux")]


def inputs(config: dict):
    torch.manual_seed(1)
    x = torch.randn(3, config["channels"], config["resolution"], config["resolution"])
    labels = torch.tensor([0, 1, 2]) if config["num_classes"] else None
    return x, torch.tensor([0.05, 0.5, 3.0]), labels


@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_cut_encoder_gives_the_full_encoders_features_at_the_cut(name):
    config = CONFIGS[name]
    torch.manual_seed(0)
    teacher = build_denoiser(config).eval()
    full = init_from_score(RatioNet(config, "spatial", "inverse_sigma"), teacher).eval()
    blocks = main_blocks(full.encoder)
    x, sigma, labels = inputs(config)
    for count in range(1, len(blocks) + 1):
        cut = init_from_score(RatioNet(config, "spatial", "inverse_sigma", count), teacher).eval()
        # what the full encoder hands to the block after the cut (its input, auxiliary paths applied), or its output
        seen = []
        hook = blocks[count].register_forward_pre_hook(lambda module, args: seen.append(args[0])) \
            if count < len(blocks) else None
        with torch.no_grad():
            whole = full.encoder.encoder_features(x, sigma, labels)
            features = cut.encoder.encoder_features(x, sigma, labels)
        if hook is not None:
            hook.remove()
        torch.testing.assert_close(features, seen[0] if seen else whole, rtol=0, atol=0)
        assert cut.encoder.encoder_channels == features.shape[1]
        assert sum(p.numel() for p in cut.parameters()) < sum(p.numel() for p in full.parameters()) or \
            count == len(blocks)
        with torch.no_grad():
            assert cut(x, sigma, labels).shape == (3,)


def test_the_size_travels_with_the_saved_config_and_a_bad_count_is_named():
    net = build_ratio_net(ratio_config(PROJECT, encoder_blocks=2))
    assert len(net.encoder.down) == 2 and len(net.encoder.mid) == 0
    assert len(build_ratio_net({k: v for k, v in ratio_config(PROJECT).items() if k != "encoder_blocks"}).encoder.mid) == 2
    with pytest.raises(ValueError, match="encoder_blocks is 6, but the teacher's encoder has 5 blocks"):
        RatioNet(PROJECT, "spatial", "inverse_sigma", 6)
