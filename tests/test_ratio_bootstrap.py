"""The bootstrapped ratio loss (pipeline/training/ratio_losses.py): its targets, one noise level down on the same
noising path, have the label's conditional mean given x_s, so the optimum does not move; at large s they vary far
less than the label does. Checked with the exact log ratio of two Gaussians, where every level is closed form."""

import math

import torch

from pipeline.randomness import Draws
from pipeline.training.ratio_losses import Bootstrap, ratio_loss

MU, A, B = 0.6, 0.5, 0.35  # p = N(0, A^2), q = N(MU, B^2), one pixel


def exact_logit(x: torch.Tensor, sigma: torch.Tensor, labels=None) -> torch.Tensor:
    """d*(x, s) = log q_s(x) - log p_s(x)."""
    x, s2 = x.flatten(1).sum(1), sigma.square()
    vq, vp = B**2 + s2, A**2 + s2
    return -0.5 * ((x - MU).square() / vq + vq.log()) + 0.5 * (x.square() / vp + vp.log())


def per_sample_gradients(sigma: float, bootstrap: Bootstrap | None, n: int = 200_000, seed: int = 0):
    """The gradient of the loss with respect to a shift theta_i * phi(x_s) of each pair's logits at theta = 0,
    d = d* + theta_i phi with phi(x) = 1 + x: per pair, so that its mean and spread can be read."""
    torch.manual_seed(seed)
    fake, real = MU + B * torch.randn(n, 1, 1, 1), A * torch.randn(n, 1, 1, 1)
    theta = torch.zeros(2, n, requires_grad=True)
    rows = iter(range(2))

    def ratio(x, s, labels):  # each call is one class's batch: fake first, then real
        return exact_logit(x, s) + theta[next(rows)] * (1 + x.flatten(1).sum(1))

    loss, _ = ratio_loss(ratio, fake, real, None, torch.full((n,), sigma), Draws(n, torch.device("cpu")),
                         bootstrap=bootstrap)
    (grad,) = torch.autograd.grad(loss, theta)
    return (grad[0] + grad[1]) * n  # one pair's contribution


def exact_target(lower: float, label_weight: float = 0.0) -> Bootstrap:
    return Bootstrap(target=exact_logit, lower=lower, label_weight=label_weight, sigma_min=1e-3)


def test_bootstrapped_targets_leave_the_exact_log_ratio_optimal():
    """At d = d*, the expected gradient is zero with the labels and with targets from one level down (its mean within
    4 standard errors of 0); a target from another noising path than x_s's has the wrong conditional mean and moves
    d away from d* (the check can fail)."""
    for sigma in (0.1, 1.0, 3.0):
        for bootstrap in (None, exact_target(0.5), exact_target(0.25, label_weight=0.3)):
            g = per_sample_gradients(sigma, bootstrap)
            assert abs(g.mean()) < 4 * g.std() / math.sqrt(len(g)), (sigma, bootstrap, g.mean(), g.std())

    def elsewhere(x, s, labels):  # the lower level's probability at an unrelated point of the same marginal
        return exact_logit(x[torch.randperm(len(x))], s)
    g = per_sample_gradients(1.0, Bootstrap(target=elsewhere, lower=0.5, label_weight=0.0, sigma_min=1e-3))
    assert abs(g.mean()) > 10 * g.std() / math.sqrt(len(g))


def test_bootstrapped_targets_vary_far_less_than_labels_where_the_classes_overlap():
    """The mechanism: where the classes overlap the label is a near coin flip given x_s, while the probability one
    level down, on x_s's own path, is close to D_s(x_s): the per-pair gradient's variance falls by an order of
    magnitude, more the more they overlap (these two Gaussians overlap at every level, more as s grows; on images
    the classes overlap at the large levels)."""
    for s, factor in ((1.0, 4), (3.0, 20)):
        labels, lower = per_sample_gradients(s, None).var(), per_sample_gradients(s, exact_target(0.5)).var()
        assert labels > factor * lower, (s, labels.item(), lower.item())
