"""Stage-2 mathematics on Gaussians (method.md): DiffRatio's surrogate gradient is the f-divergence gradient
for every registered divergence, the vsd baseline's surrogate with exact scores is the reverse-KL gradient,
and a trained ratio net recovers the gradient of the true log ratio."""

import math

import numpy as np
import pytest
import torch

from pipeline.config import NetworkParams, NoiseParams
from pipeline.networks.models import denoiser_config
from pipeline.networks.ratio_net import RatioNet
from pipeline.noise_levels import expectation, quantile
from pipeline.randomness import Draws
from pipeline.training.divergences import DIVERGENCES
from pipeline.training.ratio_losses import generator_loss, ratio_loss
from pipeline.training.vsd import score_difference_loss

MU_P, A = 0.4, 0.6  # data p = N(MU_P, A^2)


@pytest.fixture(autouse=True)
def float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def log_normal(x, mean, var):
    return -0.5 * math.log(2 * math.pi) - 0.5 * torch.log(var) - (x - mean) ** 2 / (2 * var)


def exact_logit(mu, b, s):
    """d*(x) = log q_s(x) - log p_s(x) for G(z) = mu + b z, frozen at the current theta."""
    mu, v_q, v_p = mu.detach(), b.detach() ** 2 + s**2, torch.tensor(A**2 + s**2)
    return lambda x, sigma, labels: (log_normal(x, mu, v_q) - log_normal(x, MU_P, v_p)).flatten()


def hermite(n):
    """Nodes and weights of E[g(t)], t ~ N(0, 1)."""
    t, w = np.polynomial.hermite_e.hermegauss(n)
    return torch.tensor(t), torch.tensor(w / math.sqrt(2 * math.pi))


def f_divergence(divergence, mu, b, s, n=200):
    """D_f(p_s || q_s) = E_{x ~ q_s}[f(p_s(x) / q_s(x))] by Gauss-Hermite quadrature, differentiable in theta."""
    t, w = hermite(n)
    v_q = b**2 + s**2
    x = mu + v_q.sqrt() * t
    r = torch.exp(log_normal(x, MU_P, torch.tensor(A**2 + s**2)) - log_normal(x, mu, v_q))
    return (w * divergence.f(r)).sum()


def surrogate(divergence, mu, b, s, weighting, n=80):
    """E_{z, eps}[L_G terms] by a product Gauss-Hermite rule, through the pipeline's generator_loss."""
    t, w = hermite(n)
    z, eps = (g.reshape(-1, 1, 1, 1) for g in torch.meshgrid(t, t, indexing="ij"))
    weights = torch.outer(w, w).flatten()
    x_gen = mu + b * z
    sigma = torch.full((x_gen.shape[0],), s)
    _, out = generator_loss(exact_logit(mu, b, s), x_gen, sigma, None, divergence, weighting, logit_clamp=50,
                            noise=eps)
    return (weights * out["terms"]).sum()


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
@pytest.mark.parametrize("mu0,b0", [(-0.3, 0.9), (0.9, 0.45)])
def test_surrogate_gradient_equals_the_f_divergence_gradient(name, mu0, b0):
    divergence = DIVERGENCES[name]
    for s in (0.2, 1.0):
        theta = [torch.tensor(mu0, requires_grad=True), torch.tensor(b0, requires_grad=True)]
        exact = torch.autograd.grad(s**2 * f_divergence(divergence, *theta, s), theta)
        estimate = torch.autograd.grad(surrogate(divergence, *theta, s, "s2"), theta)
        for e, g in zip(estimate, exact):
            assert float(e) == pytest.approx(float(g), rel=1e-6, abs=1e-9), f"{name} at s={s}"


def gaussian_denoiser(mean, var):
    """The exact D(x; s) for N(mean, var) data: the posterior mean mean + var / (var + s^2) (x - mean)."""
    return lambda x, sigma, labels: mean + var / (var + sigma.view(-1, 1, 1, 1) ** 2) * (x - mean)


@pytest.mark.parametrize("weighting,w_of_s", [("s2", lambda s: s**2), ("uniform", lambda s: 1.0)])
@pytest.mark.parametrize("mu0,b0", [(-0.3, 0.9), (0.9, 0.45)])
def test_baseline_surrogate_with_exact_scores_is_the_reverse_kl_gradient(weighting, w_of_s, mu0, b0):
    t, w = hermite(80)
    z, eps = (g.reshape(-1, 1, 1, 1) for g in torch.meshgrid(t, t, indexing="ij"))
    weights = torch.outer(w, w).flatten()
    for s in (0.2, 1.0):
        theta = [torch.tensor(mu0, requires_grad=True), torch.tensor(b0, requires_grad=True)]
        fake = gaussian_denoiser(theta[0].detach(), theta[1].detach() ** 2)  # q, frozen at theta
        teacher = gaussian_denoiser(torch.tensor(MU_P), torch.tensor(A**2))
        sigma = torch.full((z.shape[0],), s)
        _, out = score_difference_loss(fake, teacher, theta[0] + theta[1] * z, sigma, None, weighting, noise=eps)
        estimate = torch.autograd.grad((weights * out["terms"]).sum(), theta)
        exact = torch.autograd.grad(w_of_s(s) * f_divergence(DIVERGENCES["dikl"], *theta, s), theta)
        for e, g in zip(estimate, exact):
            assert float(e) == pytest.approx(float(g), rel=1e-6, abs=1e-9), f"s={s}"


def test_kl_quadrature_matches_the_closed_form():
    """Guards the reference itself: the quadrature agrees with the Gaussian KL formulas."""
    mu, b, s = torch.tensor(0.1), torch.tensor(0.8), 0.5
    v_q, v_p = b**2 + s**2, A**2 + s**2
    kl_qp = 0.5 * (torch.log(v_p / v_q) + (v_q + (mu - MU_P) ** 2) / v_p - 1)
    kl_pq = 0.5 * (torch.log(v_q / v_p) + (v_p + (mu - MU_P) ** 2) / v_q - 1)
    assert float(f_divergence(DIVERGENCES["dikl"], mu, b, s)) == pytest.approx(float(kl_qp), rel=1e-9)
    assert float(f_divergence(DIVERGENCES["difkl"], mu, b, s)) == pytest.approx(float(kl_pq), rel=1e-9)


def test_h_is_r_squared_times_f_second_derivative():
    r = torch.linspace(0.05, 20, 50, requires_grad=True)
    for divergence in DIVERGENCES.values():
        (df,) = torch.autograd.grad(divergence.f(r).sum(), r, create_graph=True)
        (d2f,) = torch.autograd.grad(df.sum(), r)
        h = divergence.h_of_logit(-torch.log(r.detach()), 50.0)
        torch.testing.assert_close(h, r.detach() ** 2 * d2f, rtol=1e-9, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("head, scale", [("spatial", "inverse_sigma"), ("pooled", "none")])
def test_ratio_net_trained_on_two_gaussians_recovers_the_log_ratio_gradient(head, scale):
    """The pipeline's ratio net, trained with the pipeline's ratio loss on 2x2 'images' whose pixels are
    i.i.d. Gaussians, recovers grad_x d* (which is what drives the generator) inside its noise range."""
    torch.set_default_dtype(torch.float32)
    torch.manual_seed(0)
    mu_q, b = -0.2, 0.9
    network = NetworkParams(channels=16, channel_mult=[1], num_blocks=1, attn_resolutions=[], dropout=0.0)
    net = RatioNet(denoiser_config(network, resolution=2, channels=1, num_classes=0, sigma_data=0.5), head, scale)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(400):
        sigma = torch.exp(torch.empty(256).uniform_(math.log(0.05), math.log(2.0)))
        fake = mu_q + b * torch.randn(256, 1, 2, 2)
        real = MU_P + A * torch.randn(256, 1, 2, 2)
        loss, _ = ratio_loss(net, fake, real, None, sigma, Draws(256, torch.device("cpu")))
        opt.zero_grad()
        loss.backward()
        opt.step()
    for s in (0.1, 0.3, 1.0):
        x = (mu_q + math.sqrt(b**2 + s**2) * torch.randn(512, 1, 2, 2)).requires_grad_(True)
        (grad,) = torch.autograd.grad(net(x, torch.full((512,), s)).sum(), x)
        true = -(x - mu_q) / (b**2 + s**2) + (x - MU_P) / (A**2 + s**2)
        cosine = torch.nn.functional.cosine_similarity(grad.flatten(1), true.detach().flatten(1)).mean()
        assert cosine > 0.95, f"s={s}: cosine {cosine:.3f}"


def test_r1_penalty_is_half_gamma_times_the_squared_input_gradient_and_trains_the_net():
    """On a 'ratio net' d(x) = a * sum(x) * s the gradient is a * s in every pixel, so the penalty is
    r1/2 * a^2 * mean(s^2) * D exactly, and it pulls a towards 0 through the double backward."""
    a = torch.tensor(0.7, requires_grad=True)

    def net(x, sigma, labels):
        return a * x.flatten(1).sum(dim=1) * sigma

    fake, real = torch.randn(64, 1, 2, 2), torch.randn(64, 1, 2, 2)
    sigma = torch.exp(torch.randn(64))
    torch.manual_seed(1)  # the same noise eps, eps' in both
    plain, _ = ratio_loss(net, fake, real, None, sigma, Draws(64, torch.device("cpu")))
    torch.manual_seed(1)
    penalised, out = ratio_loss(net, fake, real, None, sigma, Draws(64, torch.device("cpu")), r1=3.0)
    expected = sigma.square().mean() * 0.7**2 * 4
    torch.testing.assert_close(out["r1"], expected)
    torch.testing.assert_close(penalised - plain, 0.5 * 3.0 * expected)
    (grad_plain,) = torch.autograd.grad(plain, a)
    (grad_penalised,) = torch.autograd.grad(penalised, a)
    torch.testing.assert_close(grad_penalised - grad_plain, 3.0 * sigma.square().mean() * 0.7 * 4)


def test_subsampled_r1_is_the_mean_over_every_kth_row_however_the_batch_is_split():
    """train.ratio_r1_subsample k: the penalty on the rows 0, k, 2k, ... of the global batch, through a forward pass
    of their own; passes (or processes) of any size add up, weighted by their rows, to the mean over those rows.
    On d(x) = a * sum(x) * s that mean is a^2 * D * mean(s^2) over the penalised rows exactly."""
    a = torch.tensor(0.7, requires_grad=True)

    def net(x, sigma, labels):
        return a * x.flatten(1).sum(dim=1) * sigma

    n, k = 12, 4
    fake, real, sigma = torch.randn(n, 1, 2, 2), torch.randn(n, 1, 2, 2), torch.exp(torch.randn(n))
    draws = Draws(n, torch.device("cpu"))
    expected = 0.7**2 * 4 * sigma[::k].square().mean()

    def r1(rows):
        return ratio_loss(net, fake[rows], real[rows], None, sigma[rows], draws.select(rows), r1=1.0,
                          r1_subsample=k)[1]["r1"] * (rows.stop - rows.start) / n
    torch.testing.assert_close(r1(slice(0, n)), expected)
    torch.testing.assert_close(r1(slice(0, 5)) + r1(slice(5, 9)) + r1(slice(9, 12)), expected)
    whole, _ = ratio_loss(net, fake, real, None, sigma, draws.select(slice(0, n)), r1=1.0, r1_subsample=k)
    (grad,) = torch.autograd.grad(whole, a)  # the penalty trains the net through its double backward
    (plain,) = torch.autograd.grad(ratio_loss(net, fake, real, None, sigma, draws.select(slice(0, n)))[0], a)
    torch.testing.assert_close(grad - plain, 0.7 * 4 * sigma[::k].square().mean())


def test_balanced_ratio_loss_does_not_depend_on_how_the_batch_is_split():
    """The balanced level weighting divides by a constant of the params, not by the batch's own weight sum: the mean
    of two halves' losses (two processes, or two accumulation passes) is the whole batch's loss."""

    class LevelLogit(torch.nn.Module):  # d depends on the level only, so the input noise does not matter
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor(0.3))

        def forward(self, x, sigma, labels):
            return self.w * sigma.log()

    p = NoiseParams(distribution="lognormal", p_mean=-2.5, p_std=1.0, sigma_min=0.002, sigma_max=5, rho=7,
                    stratified=False)
    mean = expectation(lambda s: s / 0.5, p)  # 1 / c_logit(s) for inverse_sigma with sigma_data 0.5
    torch.manual_seed(0)
    draws = Draws(8, torch.device("cpu"))
    sigma = quantile(torch.rand(8), p)
    x = torch.randn(8, 1, 2, 2)
    net = LevelLogit()

    def loss(rows):
        return ratio_loss(net, x[rows], x[rows], None, sigma[rows], draws.select(rows), scale=0.5 / sigma[rows],
                          balanced_mean=mean)[0]

    whole = loss(slice(0, 8))
    halves = (loss(slice(0, 4)) + loss(slice(4, 8))) / 2
    torch.testing.assert_close(halves, whole)


def test_expectation_of_a_noise_distribution():
    p = NoiseParams(distribution="lognormal", p_mean=-1.0, p_std=0.5, sigma_min=1e-6, sigma_max=1e6, rho=7,
                    stratified=False)
    assert expectation(lambda s: s, p) == pytest.approx(math.exp(-1.0 + 0.5**2 / 2), rel=1e-3)  # untruncated mean
    p = p.model_copy(update={"distribution": "loguniform", "sigma_min": 0.1, "sigma_max": 10.0})
    assert expectation(lambda s: s.log(), p) == pytest.approx(0.0, abs=1e-6)
