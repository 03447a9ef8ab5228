"""Diffusive f-divergences, keyed by name: D(theta) = E_s w(s) D_f(p_s || q_s), D_f(p||q) = E_q f(p/q).

With d = log q_s/p_s (the ratio net's logit) and r = p_s/q_s = exp(-d), the generator gradient is
E[w h(r) grad_x d . dx_s/dtheta] with h(r) = r^2 f''(r). Each entry gives f (for the closed-form tests)
and h written as a function of the logit d (for training, where it must be numerically safe).
Adding a divergence is one entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Divergence:
    name: str
    description: str
    f: Callable[[torch.Tensor], torch.Tensor]  # f(r), convex with f(1) = 0
    h_of_logit: Callable[[torch.Tensor, float], torch.Tensor]  # h(exp(-d)); the float is the logit clamp


DIVERGENCES: dict[str, Divergence] = {
    "dikl": Divergence(
        "dikl", "reverse KL, KL(q || p): mode-seeking",
        f=lambda r: -torch.log(r),
        h_of_logit=lambda d, clamp: torch.ones_like(d)),
    "dijs": Divergence(
        "dijs", "Jensen-Shannon",
        f=lambda r: 0.5 * (r * torch.log(r) - (1 + r) * torch.log((1 + r) / 2)),
        h_of_logit=lambda d, clamp: torch.sigmoid(-d) / 2),
    "difkl": Divergence(
        "difkl", "forward KL, KL(p || q): mass-covering",
        f=lambda r: r * torch.log(r),
        h_of_logit=lambda d, clamp: torch.exp(-d.clamp(-clamp, clamp))),
}
