"""The density-ratio network d_phi(x, s, c): a scalar logit estimating log q_s(x) / p_s(x) (generator over data).

It is the teacher architecture's encoder half (embedding, down path; the project's U-Net adds its middle block),
fed as the teacher is fed (c_in(s) x and c_noise(s)), with a head that reads the encoder's last feature map.
Built from the teacher's config, it starts from the teacher's encoder weights with the head's output at zero
(d = 0: the ratio is 1 everywhere until it has learnt something).

Two choices, both in its config (train.ratio_net), shape what it can represent:

- The head. `spatial`: a small trained head applied at every location of the feature map (a 1x1
  convolution, SiLU, a 1x1 convolution to one logit, as SiDA's discriminator reads per-location logits), the
  logits averaged over locations, so that a local feature can carry the evidence without being averaged away
  first. `pooled` (params.yaml's): the first design, one linear map of the globally averaged features.
  Class-conditional nets add a projection term <embed(c), h> (per location for `spatial`).
- The logit's scale across noise levels. The optimal logit's x-gradient is the score difference
  (D_q(x; s) - D_p(x; s)) / s^2, which grows like 1/s^2 as s falls when data lie near a low-dimensional set (and,
  at large s, falls like 1/s^2). The encoder sees c_in x with c_in ~ 1/sd at small s and ~1/s at large s, and
  features that denoise at level s react to x on the noise's own scale, s; a net whose logit is the head's
  output directly therefore has an x-gradient of at most ~1/s at small s and ~1/s at large s (`none`, the first
  design: c_logit = 1). `inverse_variance` multiplies the head's output by c_logit(s) = sd^2 / s^2: the head then
  learns E = s^2 d / sd^2, whose x-gradient (D_q - D_p) / sd^2 is an x0-space displacement, O(1) at every level,
  so w = s^2 gives the generator the x0-space update VSD and DMD take. `inverse_sigma` (sd / s) lies between.
  A larger c_logit makes each update of the head move the logit further at small s; the ratio loss can weight
  each sample by 1 / c_logit(s) (train.ratio_level_weighting: balanced) so that every level moves the head alike
  (any positive weighting of the levels leaves the optimum, d = log q_s / p_s at every s, where it is).

For an EDM2 teacher the head is magnitude-preserving like the rest of EDM2 (unit-norm maps, a learnt output gain
that starts at zero).

Its size is a third choice (train.ratio_net.encoder_blocks): `all` keeps the teacher's whole encoder half; a count
k keeps its first k blocks in the order it runs them (the project U-Net's down path then its middle block; a
published network's `enc` entries, the auxiliary paths of a level counted with the block that opens it) and
drops the rest. The kept blocks keep the teacher's names, so they still start from its weights; the head reads
the last kept block's features. Dropping the low-resolution end drops most of the parameters (a block's weights
grow with its width squared) and little of the activations (they grow with resolution squared).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.artifacts import load_module
from pipeline.config import NetworkParams
from pipeline.networks.preconditioning import Denoiser, edm_coefficients, per_sample
from pipeline.networks.published.convert import PUBLISHED, build_published
from pipeline.networks.published.edm2 import MPConv, mp_silu
from pipeline.networks.unet import UNetEncoder

HEADS = ("spatial", "pooled")
LOGIT_SCALES = ("inverse_variance", "inverse_sigma", "none")


class ProjectEncoder(UNetEncoder):
    """The project U-Net's encoder half behind the published networks' `encoder_features` interface."""

    def __init__(self, config: dict):
        super().__init__(NetworkParams(**config["network"]), config["resolution"], config["channels"],
                         config["num_classes"])
        self.sigma_data, self.encoder_channels = config["sigma_data"], self.out_channels

    def encoder_features(self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        _, _, c_in, c_noise = edm_coefficients(sigma.view(-1, 1, 1, 1), self.sigma_data)
        return self(c_in * x, c_noise.flatten(), labels)[0]


def linear_map(cin: int, cout: int, spatial: bool, magnitude_preserving: bool) -> nn.Module:
    """A map of vectors [N, C] or, `spatial`, a 1x1 convolution of feature maps [N, C, H, W]: plain, or EDM2's
    unit-norm MPConv."""
    if magnitude_preserving:
        return MPConv(cin, cout, kernel=(1, 1) if spatial else ())
    return nn.Conv2d(cin, cout, 1) if spatial else nn.Linear(cin, cout)


class RatioHead(nn.Module):
    """Features [N, C, H, W] -> one logit per sample, before the noise-level scale."""

    def __init__(self, width: int, num_classes: int, kind: str, magnitude_preserving: bool):
        super().__init__()
        self.kind, self.mp = kind, magnitude_preserving
        self.act = mp_silu if magnitude_preserving else F.silu
        spatial = kind == "spatial"
        self.hidden = linear_map(width, width, True, magnitude_preserving) if spatial else None
        self.out = linear_map(width, 1, spatial, magnitude_preserving)
        self.gain = nn.Parameter(torch.zeros([])) if magnitude_preserving else None  # MP: the output starts at zero
        self.projection = nn.Embedding(num_classes, width) if num_classes else None
        zeroed = [] if magnitude_preserving else [self.out.weight, self.out.bias]
        for p in zeroed + ([self.projection.weight] if self.projection is not None else []):
            nn.init.zeros_(p)

    def forward(self, h: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        h = self.act(h)
        if self.kind == "pooled":
            h = h.mean(dim=(2, 3))
        else:
            h = self.act(self.hidden(h))
        with torch.autocast(h.device.type, enabled=False):  # the logit in fp32, also under bf16 autocast
            h = h.float()
            logit = self.out(h).squeeze(1)
            if self.gain is not None:
                logit = logit * self.gain
            if self.projection is not None:
                embed = self.projection(labels)
                logit = logit + (embed[:, :, None, None] * h).sum(1) if h.dim() == 4 else logit + (embed * h).sum(1)
            return logit.mean(dim=(1, 2)) if logit.dim() == 3 else logit


def logit_scale(sigma: torch.Tensor, sigma_data: float, kind: str) -> torch.Tensor:
    """c_logit(s) (see the module docstring): sd^2 / s^2, sd / s or 1."""
    if kind == "inverse_variance":
        return (sigma_data / sigma) ** 2
    return sigma_data / sigma if kind == "inverse_sigma" else torch.ones_like(sigma)


def _out_channels(block: nn.Module) -> int:
    return block.out_channels if hasattr(block, "out_channels") else block.conv0.out_channels  # published | project


def _published_blocks(encoder: nn.Module) -> tuple[nn.ModuleDict, list[str], list[str]]:
    """A published encoder's `enc` entries, all of their names and the main path's (EDM's auxiliary paths, aux_*,
    left out; EDM2's entries are all main path)."""
    backbone = encoder.model if hasattr(encoder, "model") else encoder.unet  # EDM's preconditioner | EDM2's
    roles = getattr(backbone, "_enc_roles", {})
    names = list(backbone.enc)
    return backbone.enc, names, [name for name in names if not roles.get(name, "").startswith("aux")]


def encoder_block_count(encoder: nn.Module) -> int:
    """How many blocks `encoder` runs: the largest count train.ratio_net.encoder_blocks can keep."""
    if isinstance(encoder, ProjectEncoder):
        return len(encoder.down) + len(encoder.mid)
    return len(_published_blocks(encoder)[2])


def keep_encoder_blocks(encoder: nn.Module, count: int) -> None:
    """Cut `encoder` (a ProjectEncoder or a published network built with decoder=False) after its first `count`
    blocks, in place, and set its `encoder_channels` to the last kept block's."""
    available = encoder_block_count(encoder)
    if not 1 <= count <= available:
        raise ValueError(f"train.ratio_net.encoder_blocks is {count}, but the teacher's encoder has {available} "
                         f"blocks: set it to a count from 1 to {available}, or to all")
    if isinstance(encoder, ProjectEncoder):
        blocks, down = [*encoder.down, *encoder.mid], len(encoder.down)
        encoder.down, encoder.mid = nn.ModuleList(blocks[:min(count, down)]), nn.ModuleList(blocks[down:count])
        encoder.encoder_channels = _out_channels(blocks[count - 1])
        return
    enc, names, main = _published_blocks(encoder)
    last = main[count - 1]
    end = names.index(last) + 1
    while end < len(names) and names[end] not in main:  # the auxiliary paths that finish the last kept level
        end += 1
    for name in names[end:]:
        del enc[name]
    encoder.encoder_channels = _out_channels(enc[last])


class RatioNet(nn.Module):
    def __init__(self, score_config: dict, head: str, scale: str, encoder_blocks: int | str = "all"):
        super().__init__()
        if head not in HEADS or scale not in LOGIT_SCALES:
            raise ValueError(f"ratio net head {head!r} / logit scale {scale!r}: expected one of {HEADS} / {LOGIT_SCALES}")
        published = score_config["kind"] == PUBLISHED
        self.encoder = build_published(score_config, decoder=False) if published else ProjectEncoder(score_config)
        if encoder_blocks != "all":
            keep_encoder_blocks(self.encoder, encoder_blocks)
        magnitude_preserving = published and score_config["family"] == "edm2"
        self.head = RatioHead(self.encoder.encoder_channels, score_config["num_classes"], head, magnitude_preserving)
        self.scale, self.sigma_data = scale, score_config["sigma_data"]

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        sigma = per_sample(sigma, x)
        logit = self.head(self.encoder.encoder_features(x, sigma, labels), labels)
        return logit * logit_scale(sigma, self.sigma_data, self.scale)


def ratio_config(score_config: dict, head: str = "spatial", scale: str = "inverse_sigma",
                 encoder_blocks: int | str = "all") -> dict:
    return {"kind": "ratio-net", "score": score_config, "head": head, "logit_scale": scale,
            "encoder_blocks": encoder_blocks}


def build_ratio_net(config: dict) -> RatioNet:
    # ratio nets saved before the size was a choice kept the whole encoder
    return RatioNet(config["score"], config["head"], config["logit_scale"], config.get("encoder_blocks", "all"))


def init_from_score(ratio: RatioNet, score: nn.Module) -> RatioNet:
    """Copy the teacher's encoder weights (same architecture, so every name and shape matches); the head's output
    stays at zero."""
    source = score.backbone.encoder.state_dict() if isinstance(score, Denoiser) else score.state_dict()
    ratio.encoder.load_state_dict({name: source[name] for name in ratio.encoder.state_dict()})
    return ratio


def has_ratio_net(path: str | Path) -> bool:
    """Whether stage 2 left a ratio net at `path` (DiffRatio does; the vsd baseline leaves a fake score net)."""
    return Path(path).with_suffix(".safetensors").exists()


def load_ratio_net(path: str | Path, device: torch.device) -> tuple[RatioNet, dict]:
    return load_module(path, build_ratio_net, device, "train")
