"""How biased is each method's generator gradient, as its auxiliary networks train longer?

An analytic target where the truth is exact: data p is an isotropic mixture of Gaussians in `dim`
dimensions and the generator G(z) = mu + b * z (diagonal) makes q Gaussian, so the smoothed densities
p_s and q_s, the log ratio d* = log q_s - log p_s and both scores are closed form. At a fixed theta, on
one large shared draw of (z, s, eps) (common random numbers, so Monte Carlo noise cancels between rows):

    truth               the surrogate gradient with the exact d* (for dikl: exact score difference)
    diffratio_<div>     the same surrogate with a ratio net trained K steps by the ratio loss
    vsd                 the baseline surrogate with a teacher (DSM on p) and a fake score net (DSM on q),
                        each trained K steps
    vsd_exact_teacher   the baseline with the exact teacher score: only the fake score net is learnt

Error against the truth: cosine similarity and relative norm |g - g*| / |g*| over the whole draw, and
|g_b - g*_b| / |g*| for the share g_b of each tercile b of its noise levels (where along s the error comes
from). Samples are
(n, dim, 1, 1) tensors so the pipeline's own losses and EDM preconditioning apply unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.config import GradientBiasParams
from pipeline.networks.preconditioning import Denoiser, denoising_loss, edm_coefficients
from pipeline.networks.ratio_net import logit_scale
from pipeline.noise_levels import sample_noise_levels
from pipeline.randomness import Draws, seed_torch
from pipeline.training.divergences import DIVERGENCES
from pipeline.training.ratio_losses import generator_loss, ratio_loss
from pipeline.training.vsd import score_difference_loss


class GaussianMixture:
    """p: equal-weight components N(mean_k, std^2 I); p_s adds s^2 to every variance."""

    def __init__(self, means: torch.Tensor, std: float):
        self.means, self.std = means, std

    def sample(self, n: int) -> torch.Tensor:
        k = torch.randint(0, len(self.means), (n,))
        return (self.means[k] + self.std * torch.randn(n, self.means.shape[1])).view(n, -1, 1, 1)

    def log_prob(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        var = (self.std**2 + sigma**2).view(-1, 1)
        sq = (x[:, None, :] - self.means[None]).pow(2).sum(-1)  # (n, K)
        log_k = -0.5 * sq / var - 0.5 * x.shape[1] * torch.log(2 * math.pi * var)
        return torch.logsumexp(log_k, dim=1) - math.log(len(self.means))

    def denoiser(self, x: torch.Tensor, sigma: torch.Tensor, labels=None) -> torch.Tensor:
        """The exact D(x; s) = x + s^2 grad log p_s(x) (Tweedie)."""
        sigma = torch.as_tensor(sigma, dtype=x.dtype).expand(x.shape[0])
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.log_prob(x_in, sigma).sum(), x_in)
        return x + sigma.view(-1, 1, 1, 1) ** 2 * grad


class DiagonalGaussianGenerator(nn.Module):
    def __init__(self, mu: torch.Tensor, b: torch.Tensor):
        super().__init__()
        self.mu, self.log_b = nn.Parameter(mu.clone()), nn.Parameter(b.log())

    def forward(self, z: torch.Tensor, labels=None) -> torch.Tensor:
        return (self.mu + self.log_b.exp() * z.flatten(1)).view_as(z)

    def log_prob(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """log q_s(x) at the current theta, treated as a constant (the ratio net is frozen in L_G)."""
        var = self.log_b.detach().exp() ** 2 + sigma.view(-1, 1) ** 2
        return (-0.5 * (x.flatten(1) - self.mu.detach()) ** 2 / var - 0.5 * torch.log(2 * math.pi * var)).sum(1)


def mlp(inputs: int, outputs: int, width: int, depth: int = 3) -> nn.Sequential:
    """`depth` hidden layers of `width` SiLU units."""
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(inputs if i == 0 else width, width), nn.SiLU()]
    return nn.Sequential(*layers, nn.Linear(width, outputs))


def noise_features(c_noise: torch.Tensor) -> torch.Tensor:
    """c_noise = ln(s) / 4 and a few Fourier features of it."""
    freqs = torch.arange(1, 5, dtype=c_noise.dtype) * math.pi
    return torch.cat([c_noise[:, None], torch.sin(c_noise[:, None] * freqs), torch.cos(c_noise[:, None] * freqs)], 1)


class MLPBackbone(nn.Module):
    """F(c_in x; c_noise) for EDM's Denoiser wrapper."""

    def __init__(self, dim: int, width: int, depth: int = 3):
        super().__init__()
        self.net = mlp(dim + 9, dim, width, depth)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, labels=None) -> torch.Tensor:
        return self.net(torch.cat([x.flatten(1), noise_features(c_noise)], 1)).view_as(x)


class MLPRatio(nn.Module):
    """d(x, s): the logit of an MLP on EDM-scaled input, head initialised at zero like the pipeline's, times the
    pipeline's logit scale c_logit(s) (networks/ratio_net.py; `none`: 1)."""

    def __init__(self, dim: int, width: int, sigma_data: float, depth: int = 3, scale: str = "none"):
        super().__init__()
        self.net, self.sigma_data, self.scale = mlp(dim + 9, 1, width, depth), sigma_data, scale
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, labels=None) -> torch.Tensor:
        _, _, c_in, c_noise = edm_coefficients(sigma.view(-1, 1), self.sigma_data)
        head = self.net(torch.cat([c_in * x.flatten(1), noise_features(c_noise.flatten())], 1)).squeeze(1)
        return logit_scale(sigma, self.sigma_data, self.scale) * head


def surrogate_gradient(loss: torch.Tensor, generator: nn.Module, retain_graph: bool = False) -> torch.Tensor:
    grads = torch.autograd.grad(loss, list(generator.parameters()), retain_graph=retain_graph)
    return torch.cat([g.flatten() for g in grads])


def compare(estimate: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    return {"cosine": F.cosine_similarity(estimate, truth, dim=0).item(),
            "relative_error": ((estimate - truth).norm() / truth.norm()).item()}


def run(p: GradientBiasParams, seed: int) -> list[dict]:
    """One seed: every method's gradient error at every budget in p.budgets (networks trained once, to the
    largest budget, and evaluated on the way)."""
    seed_torch("gradient_bias", seed)
    data = GaussianMixture(torch.randn(p.components, p.dim) * p.mean_scale, p.component_std)
    generator = DiagonalGaussianGenerator(torch.randn(p.dim) * p.mean_scale, torch.full((p.dim,), p.generator_std))
    sigma_data = math.sqrt(p.mean_scale**2 + p.component_std**2)

    def denoiser() -> Denoiser:
        return Denoiser(MLPBackbone(p.dim, p.width), sigma_data)

    nets = {"ratio": MLPRatio(p.dim, p.width, sigma_data), "teacher": denoiser(), "fake": denoiser()}
    opts = {name: torch.optim.Adam(net.parameters(), lr=p.lr) for name, net in nets.items()}

    n = p.eval_samples  # the shared evaluation draw
    z, eps = torch.randn(n, p.dim, 1, 1), torch.randn(n, p.dim, 1, 1)
    sigma = sample_noise_levels(Draws(n, torch.device("cpu")), p.noise)

    def exact_logit(x, s, labels=None):
        return generator.log_prob(x, s) - data.log_prob(x, s)

    edges = torch.quantile(sigma, torch.tensor([1 / 3, 2 / 3]))
    bins = [sigma < edges[0], (sigma >= edges[0]) & (sigma < edges[1]), sigma >= edges[1]]

    def gradients(terms: torch.Tensor) -> list[torch.Tensor]:
        """The surrogate gradient over the whole draw, then over each noise-level tercile's share of it."""
        return [surrogate_gradient(terms[mask].sum() / n, generator, retain_graph=True)
                for mask in [torch.ones_like(bins[0]), *bins]]

    def diffratio(name: str, ratio) -> list[torch.Tensor]:
        _, out = generator_loss(ratio, generator(z), sigma, None, DIVERGENCES[name], "s2", 50.0, noise=eps)
        return gradients(out["terms"])

    def vsd(fake, teacher) -> list[torch.Tensor]:
        _, out = score_difference_loss(fake, teacher, generator(z), sigma, None, "s2", noise=eps)
        return gradients(out["terms"])

    truth = {name: diffratio(name, exact_logit) for name in p.divergences}
    truth["vsd"] = vsd(generator_denoiser(generator), data.denoiser)  # exact scores (equals the exact-d* dikl row)
    rows, steps = [], 0
    for budget in p.budgets:
        while steps < budget:
            draws = Draws(p.batch_size, torch.device("cpu"))
            s = sample_noise_levels(draws, p.noise)
            with torch.no_grad():
                fake = generator(torch.randn(p.batch_size, p.dim, 1, 1))
            real = data.sample(p.batch_size)
            losses = {"ratio": ratio_loss(nets["ratio"], fake, real, None, s, draws)[0],
                      "teacher": denoising_loss(nets["teacher"], real, None, s, draws.randn(p.dim, 1, 1),
                                                sigma_data).mean(),
                      "fake": denoising_loss(nets["fake"], fake, None, s, draws.randn(p.dim, 1, 1), sigma_data).mean()}
            for name, loss in losses.items():
                opts[name].zero_grad(set_to_none=True)
                loss.backward()
                opts[name].step()
            steps += 1
        for net in nets.values():
            net.requires_grad_(False)
        estimates = {f"diffratio_{name}": (diffratio(name, nets["ratio"]), truth[name]) for name in p.divergences}
        estimates["vsd"] = (vsd(nets["fake"], nets["teacher"]), truth["vsd"])
        estimates["vsd_exact_teacher"] = (vsd(nets["fake"], data.denoiser), truth["vsd"])
        for method, (estimate, target) in estimates.items():
            # each tercile's error, relative to the whole true gradient (a tercile's own truth can be ~0)
            by_noise = [((e - t).norm() / target[0].norm()).item() for e, t in zip(estimate[1:], target[1:])]
            rows.append({"seed": seed, "budget": budget, "method": method, **compare(estimate[0], target[0]),
                         "relative_error_by_noise_tercile": by_noise, "tercile_edges": edges.tolist()})
        for net in nets.values():
            net.requires_grad_(True)
    return rows


def generator_denoiser(generator: DiagonalGaussianGenerator):
    """The exact denoiser of q_s (Gaussian): D(x; s) = mu + b^2 / (b^2 + s^2) (x - mu)."""
    def denoise(x: torch.Tensor, sigma: torch.Tensor, labels=None) -> torch.Tensor:
        b2 = generator.log_b.detach().exp().view(1, -1, 1, 1) ** 2
        mu = generator.mu.detach().view(1, -1, 1, 1)
        return mu + b2 / (b2 + sigma.view(-1, 1, 1, 1) ** 2) * (x - mu)
    return denoise
