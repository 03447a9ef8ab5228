"""EDM maths (method.md): preconditioning formulas, the optimal denoiser of Gaussian data, the sampler."""

import math

import torch
from torch import nn

from pipeline.config import NoiseParams
from pipeline.generation.sampling import edm_heun
from pipeline.networks.preconditioning import Denoiser, edm_coefficients, edm_loss, loss_weight, score
from pipeline.noise_levels import heun_sigmas
from pipeline.randomness import Draws

SD = 0.5


def test_coefficients_match_the_formulas():
    for s in (0.002, 0.3, 1.0, 80.0):
        c_skip, c_out, c_in, c_noise = (float(c) for c in edm_coefficients(torch.tensor(s), SD))
        assert math.isclose(c_skip, SD**2 / (s**2 + SD**2), rel_tol=1e-6)
        assert math.isclose(c_out, s * SD / math.sqrt(s**2 + SD**2), rel_tol=1e-6)
        assert math.isclose(c_in, 1 / math.sqrt(s**2 + SD**2), rel_tol=1e-6)
        assert math.isclose(c_noise, math.log(s) / 4, rel_tol=1e-6, abs_tol=1e-9)
        assert math.isclose(float(loss_weight(torch.tensor(s), SD)), (s**2 + SD**2) / (s * SD) ** 2, rel_tol=1e-6)


def gaussian_posterior_mean(x, s, mu, a):
    """E[x0 | x0 + s eps = x] for x0 ~ N(mu, a^2 I)."""
    return (a**2 * x + s**2 * mu) / (a**2 + s**2)


class AnalyticBackbone(nn.Module):
    """F such that the preconditioned D equals the Gaussian posterior mean: F = (D* - c_skip x) / c_out."""

    def __init__(self, mu, a):
        super().__init__()
        self.mu, self.a = mu, a

    def forward(self, x_in, c_noise, labels=None):
        s = (4 * c_noise).exp().view(-1, 1, 1, 1)
        x = x_in * (s**2 + SD**2).sqrt()
        c_skip, c_out, _, _ = edm_coefficients(s, SD)
        return (gaussian_posterior_mean(x, s, self.mu, self.a) - c_skip * x) / c_out


def test_preconditioned_denoiser_and_score_are_analytic_for_gaussian_data():
    mu, a = 0.3, 0.7
    denoiser = Denoiser(AnalyticBackbone(mu, a), SD)
    x = torch.randn(16, 2, 4, 4) * 3
    for s in (0.01, 0.5, 10.0):
        torch.testing.assert_close(denoiser(x, s), gaussian_posterior_mean(x, s, mu, a), atol=1e-4, rtol=1e-4)
        # grad log p_s for p_s = N(mu, (a^2 + s^2) I)
        torch.testing.assert_close(score(denoiser, x, s), -(x - mu) / (a**2 + s**2), atol=1e-3, rtol=1e-3)


EDM_NOISE = NoiseParams(distribution="lognormal", p_mean=-1.2, p_std=1.2, sigma_min=0.002, sigma_max=80, rho=7,
                        stratified=False)


def test_edm_loss_is_minimised_by_the_posterior_mean():
    torch.manual_seed(0)
    mu, a = 0.3, 0.7
    x0 = mu + a * torch.randn(4096, 1, 2, 2)
    exact = Denoiser(AnalyticBackbone(mu, a), SD)

    class Shifted(nn.Module):
        def __init__(self, delta):
            super().__init__()
            self.delta = delta

        def forward(self, x, sigma, labels=None):
            return exact(x, sigma) + self.delta

    shifted = Shifted(0.05)
    draws = Draws(len(x0), torch.device("cpu"))  # the same noise for both: a paired comparison
    assert (edm_loss(exact, x0, None, EDM_NOISE, draws.select(slice(None)), SD).mean()
            < edm_loss(shifted, x0, None, EDM_NOISE, draws.select(slice(None)), SD).mean())


def test_a_trained_denoiser_learns_the_posterior_mean():
    """EDM's loss with its preconditioning drives a small learned backbone to the analytic optimum."""
    torch.manual_seed(0)
    mu, a = 0.4, 0.5

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(2, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 1))

        def forward(self, x, c_noise, labels=None):
            return self.net(torch.cat([x.flatten(1), c_noise[:, None]], 1)).view_as(x)

    denoiser = Denoiser(MLP(), SD)
    opt = torch.optim.Adam(denoiser.parameters(), lr=3e-3)
    for _ in range(1500):
        x0 = mu + a * torch.randn(512, 1, 1, 1)
        loss = edm_loss(denoiser, x0, None, EDM_NOISE, Draws(512, torch.device("cpu")), SD).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    x = torch.linspace(-1, 1.5, 11).view(-1, 1, 1, 1)
    for s in (0.2, 0.5, 1.0):
        with torch.no_grad():
            err = (denoiser(x, s) - gaussian_posterior_mean(x, s, mu, a)).abs().max()
        assert err < 0.05, f"sigma={s}: max error {err:.3f}"


def test_heun_schedule_and_nfe():
    sigmas = heun_sigmas(35, 0.002, 80, 7)
    assert len(sigmas) == 19 and float(sigmas[-1]) == 0
    assert math.isclose(float(sigmas[0]), 80) and math.isclose(float(sigmas[-2]), 0.002, rel_tol=1e-9)
    i, n = 5, 18
    expected = (80 ** (1 / 7) + i / (n - 1) * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert math.isclose(float(sigmas[i]), expected, rel_tol=1e-12)
    calls = []
    edm_heun(lambda x, s, c: calls.append(s) or x * 0, torch.randn(2, 1, 2, 2), None, sigmas)
    assert len(calls) == 35


def test_heun_converges_to_the_exact_flow_of_gaussian_data():
    """For N(mu, a^2) data the probability-flow ODE maps noise z to mu + a z sqrt-scaled: check the integrator
    against that map at the default 35 NFE and its second-order convergence as NFE grows."""
    mu, a, smax = 0.3, 0.6, 80.0
    denoiser = Denoiser(AnalyticBackbone(mu, a), SD)
    z = torch.randn(2000, 1, 1, 1, generator=torch.Generator().manual_seed(0))
    exact = mu + a * smax / math.sqrt(a**2 + smax**2) * z
    errors = {}
    for nfe in (35, 141):
        x = edm_heun(denoiser, z, None, heun_sigmas(nfe, 0.002, smax, 7))
        errors[nfe] = ((x - exact).abs() / (a * z.abs().clamp(min=1))).max().item()  # relative, for |z| > 1
    assert errors[35] < 0.08
    assert errors[141] < errors[35] / 5  # 4x the steps: second order in the interior, Euler on the last step
