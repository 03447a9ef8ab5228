"""Early stopping: update a network, validate it every few updates, and keep the best weights seen.

The weights before any update are the first candidate, so a fit that never improves the validation loss
returns the network as it came.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from torch import nn


def fit_early_stopped(net: nn.Module, update: Callable[[], None], validate: Callable[[], dict], max_steps: int,
                      every: int, patience: int, key: str = "loss") -> dict:
    """Call `update()` up to `max_steps` times; after every `every` updates (and the last) `validate()` returns a
    row of values, and training stops after `patience` rows in a row without a lower `key`. `net` ends holding
    the weights of the lowest one. Returns the best step, the steps taken and the validation rows (with `step`)."""
    curve = [{"step": 0, **validate()}]
    best, best_state, waited, step = curve[0], copy.deepcopy(net.state_dict()), 0, 0
    while step < max_steps and waited < patience:
        step += 1
        update()
        if step % every and step < max_steps:
            continue
        curve.append({"step": step, **validate()})
        if curve[-1][key] < best[key]:
            best, best_state, waited = curve[-1], copy.deepcopy(net.state_dict()), 0
        else:
            waited += 1
    net.load_state_dict(best_state)
    return {"best_step": best["step"], "steps": step, "curve": curve}
