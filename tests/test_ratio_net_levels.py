"""The ratio net's x-gradient against the exact log-ratio gradient, level by level, on targets whose noisy densities
are known in closed form at every s: two Gaussians, and a mixture of narrow Gaussians near a low-dimensional set
(a few points in 16 dimensions). The net is the pipeline's RatioNet (a small project encoder) trained with the
pipeline's ratio loss on 4x4 'images'; the gradient is compared on noisy samples of both distributions.

Per level: the mean cosine between the two gradients (direction) and the median ratio of their norms (magnitude).
Where the optimal logit is about zero (large s on the mixture) its direction cannot be learnt from samples, and
only the magnitude is held: there the first design's gradient does not fall with the optimal one's (it stays many
times too steep), which w(s) = s^2 then turns into the largest, steadiest and wrongest part of the generator's
update; c_logit(s) = sd / s gives it the optimal gradient's fall.
"""

import math

import pytest
import torch
from torch.nn import functional as F

from pipeline.config import NetworkParams
from pipeline.networks.models import denoiser_config
from pipeline.networks.ratio_net import build_ratio_net, ratio_config
from pipeline.randomness import Draws
from pipeline.training.ratio_losses import ratio_loss

pytestmark = pytest.mark.slow
D, SIDE = 16, 4
NET = NetworkParams(channels=16, channel_mult=[1], num_blocks=1, attn_resolutions=[], dropout=0.0)
NEW, OLD = ("spatial", "inverse_sigma"), ("pooled", "none")


class Gaussians:
    """p = N(0, a^2 I), q = N(mu, b^2 I): d*(x, s) = log q_s - log p_s is quadratic."""

    a, b, mu = 0.5, 0.4, 0.3

    def sample(self, which: str, n: int, s: torch.Tensor) -> torch.Tensor:
        mean, std = (self.mu, self.b) if which == "q" else (0.0, self.a)
        return mean + torch.randn(n, D) * torch.sqrt(std**2 + s[:, None] ** 2)

    def grad(self, x: torch.Tensor, s: float) -> torch.Tensor:
        return -(x - self.mu) / (self.b**2 + s**2) + x / (self.a**2 + s**2)


class NarrowMixture:
    """p: 4 Gaussians of std 0.02 at points of [-0.8, 0.8]^16; q: the same with each point moved by 0.05."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.width, self.p = 0.02, torch.rand(4, D, generator=g) * 1.6 - 0.8
        shift = torch.randn(4, D, generator=g)
        self.q = self.p + 0.05 * shift / shift.norm(dim=1, keepdim=True)

    def sample(self, which: str, n: int, s: torch.Tensor) -> torch.Tensor:
        means = self.q if which == "q" else self.p
        return means[torch.randint(0, len(means), (n,))] + torch.randn(n, D) * torch.sqrt(self.width**2 + s[:, None]**2)

    def log_density(self, x: torch.Tensor, means: torch.Tensor, s: float) -> torch.Tensor:
        var = self.width**2 + s**2
        return torch.logsumexp(-((x[:, None] - means[None]) ** 2).sum(-1) / (2 * var), dim=1)

    def grad(self, x: torch.Tensor, s: float) -> torch.Tensor:
        x = x.detach().requires_grad_(True)
        d = self.log_density(x, self.q, s) - self.log_density(x, self.p, s)
        return torch.autograd.grad(d.sum(), x)[0]


def fit(target, design: tuple[str, str], s_range: tuple[float, float], steps: int, seed: int = 0):
    """The ratio net trained by the pipeline's ratio loss on clean samples (the loss noises them), noise levels
    log-uniform over s_range."""
    torch.manual_seed(seed)
    net = build_ratio_net(ratio_config(denoiser_config(NET, SIDE, 1, 0, 0.5), *design))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.0, 0.999))
    lo, hi = map(math.log, s_range)
    for _ in range(steps):
        s = torch.exp(lo + torch.rand(256) * (hi - lo))
        images = [target.sample(w, 256, torch.zeros_like(s)).view(-1, 1, SIDE, SIDE) for w in ("q", "p")]
        loss, _ = ratio_loss(net, *images, None, s, Draws(256, torch.device("cpu")))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net


def compare(net, target, s: float, n: int = 512) -> tuple[float, float]:
    """(mean cosine, median norm ratio) of grad_x d against the exact gradient on noisy q and p samples."""
    torch.manual_seed(1)
    sigma = torch.full((n // 2,), s)
    x = torch.cat([target.sample("q", n // 2, sigma), target.sample("p", n // 2, sigma)]).requires_grad_(True)
    (grad,) = torch.autograd.grad(net(x.view(-1, 1, SIDE, SIDE), torch.full((n,), s)).sum(), x)
    exact = target.grad(x.detach(), s)
    return F.cosine_similarity(grad, exact, dim=1).mean().item(), (grad.norm(dim=1) / exact.norm(dim=1)).median().item()


def test_two_gaussians_level_by_level():
    net = fit(Gaussians(), NEW, (0.05, 5.0), steps=1000)  # cosines 0.94-0.98 at 1000 steps (seeds 0 and 1)
    for s in (0.05, 0.1, 0.3, 1.0, 2.0, 5.0):
        cosine, ratio = compare(net, Gaussians(), s)
        assert cosine > 0.9 and 0.5 < ratio < 2, f"s={s}: cosine {cosine:.2f}, norm ratio {ratio:.2f}"


@pytest.fixture(scope="module")
def mixture_nets():
    """Both designs at the same budget: 2000 steps (at 1400 the new design's cosine at s = 0.1 is still 0.80)."""
    target = NarrowMixture()
    return target, {design: fit(target, design, (0.005, 5.0), steps=2000) for design in (NEW, OLD)}


def test_narrow_mixture_level_by_level(mixture_nets):
    """Direction and magnitude where the optimal logit is learnable (|d*| from about 3 down to 0.4); magnitude,
    within a factor of 2, where it is about zero."""
    target, nets = mixture_nets
    for s in (0.005, 0.01, 0.03, 0.1):
        cosine, ratio = compare(nets[NEW], target, s)
        assert cosine > 0.85 and 0.5 < ratio < 2, f"s={s}: cosine {cosine:.2f}, norm ratio {ratio:.2f}"
    for s in (2.0, 5.0):
        _, ratio = compare(nets[NEW], target, s)
        assert 0.5 < ratio < 2, f"s={s}: norm ratio {ratio:.2f}"


def test_the_first_design_stays_steep_where_the_optimal_gradient_falls(mixture_nets):
    """The check the first design fails: at s = 5 its gradient is several times the optimal one's."""
    target, nets = mixture_nets
    _, ratio = compare(nets[OLD], target, 5.0)
    assert ratio > 3, f"the first design's norm ratio at s = 5: {ratio:.2f}"
