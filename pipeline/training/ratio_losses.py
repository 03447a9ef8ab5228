"""DiffRatio's two losses.

Ratio net (balanced logistic regression, generator output detached), one noise level per real/fake pair:
    L_phi = E_s E[ softplus(-d(G(z) + s eps, s)) + softplus(d(x0 + s eps', s)) ]
whose optimum is d* = log q_s - log p_s, so grad_x d* = grad log q_s - grad log p_s.

Generator surrogate (phi frozen, weight stop-gradiented; one backward pass through d into G):
    L_G = E[ w(s) * stopgrad(h(exp(-d(x_s, s)))) * d(x_s, s) ],   x_s = G(z) + s eps
whose gradient is E[w h(r) grad_x d . dx_s/dtheta], the gradient of E_s w(s) D_f(p_s || q_s).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from pipeline.randomness import Draws
from pipeline.training.divergences import Divergence
from pipeline.training.weighting import noise_weight


def ratio_loss(ratio, x_fake: torch.Tensor, x_real: torch.Tensor, labels: torch.Tensor | None,
               sigma: torch.Tensor, draws: Draws, r1: float = 0.0, scale: torch.Tensor | None = None,
               balanced_mean: float | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean loss and per-sample logits (d_fake, d_real) for diagnostics; the noise comes from `draws`. `scale` is
    the ratio net's c_logit(s) per sample (pipeline/networks/ratio_net.py; default 1). With `balanced_mean`, the
    balanced level weighting: each pair's loss is weighted by 1 / c_logit(s) divided by balanced_mean, the weight's
    expectation over the noise levels the net is trained on (noise_levels.expectation), so that every level moves
    the head's output alike and the loss keeps its scale. A constant, not the batch's own mean weight: dividing by
    that would make the gradient depend on how the batch is split among processes and accumulation passes.

    With r1 > 0 the loss adds an R1 penalty on the noisy real samples (as GANs' discriminators have it), on the
    head's output d / c_logit(s):
        r1 / 2 * E[ |grad_x d(x0 + s eps', s) / c_logit(s)|^2 ]
    It flattens d around the real samples, which a net that memorises its training images makes steep. It is not
    weighted by s^2: memorising happens at the smallest noise levels, where s^2 would switch it off."""
    s = sigma.view(-1, *([1] * (x_fake.dim() - 1)))
    scale = torch.ones_like(sigma) if scale is None else scale
    d_fake = ratio(x_fake.detach() + s * draws.randn(*x_fake.shape[1:]), sigma, labels)
    x_real_s = (x_real + s * draws.randn(*x_real.shape[1:])).requires_grad_(r1 > 0)
    d_real = ratio(x_real_s, sigma, labels)
    weight = torch.ones_like(scale) if balanced_mean is None else 1 / (scale * balanced_mean)
    loss = (pair_losses(d_fake, d_real) * weight).mean()
    out = {"d_fake": d_fake.detach(), "d_real": d_real.detach()}
    if r1 > 0:
        (grad,) = torch.autograd.grad(d_real.sum(), x_real_s, create_graph=True)
        out["r1"] = (grad.flatten(1) / scale[:, None]).square().sum(dim=1).mean()
        loss = loss + 0.5 * r1 * out["r1"]
        out["r1"] = out["r1"].detach()
    return loss, out


def pair_losses(d_fake: torch.Tensor, d_real: torch.Tensor) -> torch.Tensor:
    """The balanced logistic loss of each pair of logits on a generated and a real sample."""
    return F.softplus(-d_fake) + F.softplus(d_real)


def logistic_loss(d_fake: torch.Tensor, d_real: torch.Tensor) -> torch.Tensor:
    """The balanced logistic loss of logits on paired generated and real samples (one of each per row)."""
    return pair_losses(d_fake, d_real).mean()


def generator_loss(ratio, x_gen: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None,
                   divergence: Divergence, weighting: str, logit_clamp: float,
                   noise: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The surrogate L_G (the mean of the per-sample `terms`); `ratio` must be frozen. Also returns, per
    sample, the logit d, the weights w and h, and the noisy input x_s (whose .grad after backward is the
    x-space update). `noise` defaults to fresh N(0, I)."""
    s = sigma.view(-1, *([1] * (x_gen.dim() - 1)))
    x_s = x_gen + s * (torch.randn_like(x_gen) if noise is None else noise)
    x_s.retain_grad()
    d = ratio(x_s, sigma, labels)
    h = divergence.h_of_logit(d.detach(), logit_clamp)
    update = None
    if weighting == "normalized":  # the per-sample x-space update h grad_x d sets the scale
        (grad,) = torch.autograd.grad(d.sum(), x_s, retain_graph=True)
        update = h.view(-1, *([1] * (grad.dim() - 1))) * grad
    w = noise_weight(sigma, weighting, update).detach()
    terms = w * h * d
    return terms.mean(), {"terms": terms, "d": d, "h": h, "w": w, "x_s": x_s}
