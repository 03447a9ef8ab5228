"""DiffRatio's two losses.

Ratio net (balanced logistic regression, generator output detached), one noise level per real/fake pair:
    L_phi = E_s E[ softplus(-d(G(z) + s eps, s)) + softplus(d(x0 + s eps', s)) ]
whose optimum is d* = log q_s - log p_s, so grad_x d* = grad log q_s - grad log p_s.

Bootstrapped targets (optional). The label y (1: generated) is one target of a regression of sigmoid(d(x_s, s)) onto
D_s(x_s) = q_s / (q_s + p_s), the probability that x_s was generated; logistic regression with soft targets t,
    t softplus(-d) + (1 - t) softplus(d),
has its optimum at sigmoid(d) = E[t | x_s] for any t with that conditional mean. Along one noising path of either
class, x_l = x0 + l eps1 at a lower level l < s and x_s = x_l + sqrt(s^2 - l^2) eps2, the mixture's own diffusion
gives
    D_s(x_s) = E[ D_l(x_l) | x_s ]
(q_s and the mixture (p_s + q_s) / 2 both smooth their level-l selves with the same kernel), so t = D_l(x_l), the
net's own probability one level down, has the right conditional mean too, with variance Var(D_l(x_l) | x_s) in
place of the label's D_s (1 - D_s): near 1/4 where the classes overlap, which is at large s, where the log ratio
is small and the label's noise drowns it. The net learns at large s what it knows at lower ones instead of fitting
coin flips (a temporal-difference target, across noise levels). t = a y + (1 - a) D_l(x_l) mixes in the label.

Generator surrogate (phi frozen, weight stop-gradiented; one backward pass through d into G):
    L_G = E[ w(s) * stopgrad(h(exp(-d(x_s, s)))) * d(x_s, s) ],   x_s = G(z) + s eps
whose gradient is E[w h(r) grad_x d . dx_s/dtheta], the gradient of E_s w(s) D_f(p_s || q_s).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from pipeline.randomness import Draws
from pipeline.training.divergences import Divergence
from pipeline.training.weighting import noise_weight


@dataclass(frozen=True)
class Bootstrap:
    """Soft targets from one level down (module docstring): the net's probability at l = lower * s, mixed with the
    label by label_weight; pairs whose l falls below sigma_min (outside the net's range) keep their labels.
    `target` is the net that gives them (the ratio net itself, without DDP's wrapper), evaluated without gradients."""

    target: Callable[..., torch.Tensor]
    lower: float
    label_weight: float
    sigma_min: float


def ratio_loss(ratio, x_fake: torch.Tensor, x_real: torch.Tensor, labels: torch.Tensor | None,
               sigma: torch.Tensor, draws: Draws, r1: float = 0.0, scale: torch.Tensor | None = None,
               balanced_mean: float | None = None, bootstrap: Bootstrap | None = None, r1_subsample: int = 1
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean loss and per-sample logits (d_fake, d_real) for diagnostics; the noise comes from `draws`. `scale` is
    the ratio net's c_logit(s) per sample (pipeline/networks/ratio_net.py; default 1). With `balanced_mean`, the
    balanced level weighting: each pair's loss is weighted by 1 / c_logit(s) divided by balanced_mean, the weight's
    expectation over the noise levels the net is trained on (noise_levels.expectation), so that every level moves
    the head's output alike and the loss keeps its scale. A constant, not the batch's own mean weight: dividing by
    that would make the gradient depend on how the batch is split among processes and accumulation passes. With
    `bootstrap`, the targets of the module docstring's bootstrapped loss instead of the labels.

    With r1 > 0 the loss adds an R1 penalty on the noisy real samples (as GANs' discriminators have it), on the
    head's output d / c_logit(s):
        r1 / 2 * E[ |grad_x d(x0 + s eps', s) / c_logit(s)|^2 ]
    It flattens d around the real samples, which a net that memorises its training images makes steep. It is not
    weighted by s^2: memorising happens at the smallest noise levels, where s^2 would switch it off. With
    r1_subsample k > 1 it is estimated on the real samples whose row of the global batch is a multiple of k, through
    a forward pass of their own: the same penalty in expectation, its double backward on 1/k of the rows (the
    estimate scaled so that passes and processes add up to the mean over those rows, however the batch is split)."""
    s = sigma.view(-1, *([1] * (x_fake.dim() - 1)))
    scale = torch.ones_like(sigma) if scale is None else scale
    if bootstrap is None:
        x_fake_s = x_fake.detach() + s * draws.randn(*x_fake.shape[1:])
        x_real_s = x_real + s * draws.randn(*x_real.shape[1:])
    else:
        (x_fake_s, t_fake), (x_real_s, t_real) = (
            _bootstrapped(x.detach(), label, labels, sigma, draws, bootstrap) for x, label in ((x_fake, 1.0), (x_real, 0.0)))
    d_fake = ratio(x_fake_s, sigma, labels)
    x_real_s = x_real_s.requires_grad_(r1 > 0 and r1_subsample == 1)
    d_real = ratio(x_real_s, sigma, labels)
    weight = torch.ones_like(scale) if balanced_mean is None else 1 / (scale * balanced_mean)
    pairs = (pair_losses(d_fake, d_real) if bootstrap is None
             else soft_logistic(d_fake, t_fake) + soft_logistic(d_real, t_real))
    loss = (pairs * weight).mean()
    out = {"d_fake": d_fake.detach(), "d_real": d_real.detach()}
    if r1 > 0:
        out["r1"] = (_r1(d_real, x_real_s, scale) if r1_subsample == 1
                     else _r1_subsampled(ratio, x_real_s, sigma, labels, scale, draws, r1_subsample))
        loss = loss + 0.5 * r1 * out["r1"]
        out["r1"] = out["r1"].detach()
    return loss, out


def _r1(d: torch.Tensor, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The mean over rows of |grad_x d / c_logit(s)|^2, with the graph for its own backward."""
    (grad,) = torch.autograd.grad(d.sum(), x, create_graph=True)
    return (grad.flatten(1) / scale[:, None]).square().sum(dim=1).mean()


def _r1_subsampled(ratio, x_real_s: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None,
                   scale: torch.Tensor, draws: Draws, k: int) -> torch.Tensor:
    # the rows from the batch's layout, not from a tensor's values: shape-only tracing (the memory ledger) follows it
    global_rows = range(*draws.rows.indices(draws.size))
    picked = [i for i, row in enumerate(global_rows) if row % k == 0]
    if not picked:
        return sigma.new_zeros(())
    rows = torch.tensor(picked, device=sigma.device)
    x = x_real_s.detach()[rows].requires_grad_(True)
    d = ratio(x, sigma[rows], None if labels is None else labels[rows])
    return _r1(d, x, scale[rows]) * len(picked) * k / len(global_rows)


def _bootstrapped(x0: torch.Tensor, label: float, labels: torch.Tensor | None, sigma: torch.Tensor, draws: Draws,
                  b: Bootstrap) -> tuple[torch.Tensor, torch.Tensor]:
    """x_s through x_l on one noising path of clean samples x0, and each one's target."""
    lower = b.lower * sigma
    inside = lower >= b.sigma_min
    lower = torch.where(inside, lower, torch.zeros_like(lower))
    shape = (-1, *([1] * (x0.dim() - 1)))
    x_l = x0 + lower.view(shape) * draws.randn(*x0.shape[1:])
    x_s = x_l + (sigma.square() - lower.square()).clamp_min(0).sqrt().view(shape) * draws.randn(*x0.shape[1:])
    with torch.no_grad():
        below = torch.sigmoid(b.target(x_l, lower.clamp_min(b.sigma_min), labels).float())
    target = torch.where(inside, b.label_weight * label + (1 - b.label_weight) * below, torch.full_like(below, label))
    return x_s, target


def soft_logistic(d: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The logistic loss of logit d against the target probability t (1: generated), per sample."""
    return t * F.softplus(-d) + (1 - t) * F.softplus(d)


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
