"""The ratio net's input augmentation: exact shifts and flips, one draw per row shared by every pass of a step,
gradients through the gather, off means untouched, and a DiffRatio step that sees it."""

import pytest
import torch
from pydantic import ValidationError
from torch.nn import functional as F

from pipeline.config import AugmentParams
from pipeline.randomness import Draws
from pipeline.training.augment import augment
from tests.helpers import make_task


def params(p=0.9, translate=0.25, xflip=False):
    return AugmentParams(p=p, translate=translate, xflip=xflip)


def reference(x, dy, dx, flip, margin):
    """One row by hand: flip, then read the reflect-padded image at the shifted window."""
    image = x.flip(-1) if flip else x
    padded = F.pad(image[None], (margin,) * 4, mode="reflect")[0]
    return padded[:, margin + dy: margin + dy + x.shape[1], margin + dx: margin + dx + x.shape[2]]


def test_every_row_is_its_own_shift_and_flip_of_the_input():
    torch.manual_seed(0)
    x = torch.randn(64, 3, 8, 8)
    out = augment(x, params(p=0.45, xflip=True), Draws(64, torch.device("cpu")))
    seen = set()
    for row in range(64):
        matches = [(dy, dx, flip) for dy in range(-2, 3) for dx in range(-2, 3) for flip in (False, True)
                   if torch.equal(out[row], reference(x[row], dy, dx, flip, 2))]
        assert matches, f"row {row} is no shift or flip of its input"
        seen.update(matches)
    assert (0, 0, False) in seen and any(flip for *_, flip in seen) and any(dy or dx for dy, dx, _ in seen)


def test_off_returns_the_input_and_draws_nothing():
    x, draws = torch.randn(4, 1, 8, 8), Draws(4, torch.device("cpu"))
    assert augment(x, params(p=0.0), draws) is x and draws._calls == 0


def test_passes_of_one_step_see_the_same_draws_as_the_whole_batch():
    x = torch.randn(8, 1, 8, 8)
    torch.manual_seed(3)
    whole = augment(x, params(xflip=False), Draws(8, torch.device("cpu")))
    torch.manual_seed(3)
    draws = Draws(8, torch.device("cpu"))
    halves = [augment(x[rows], params(xflip=False), draws.select(rows)) for rows in (slice(0, 4), slice(4, 8))]
    assert torch.equal(torch.cat(halves), whole)


def test_the_gradient_flows_back_to_the_pixels_it_read():
    x = torch.randn(16, 1, 8, 8, requires_grad=True)
    out = augment(x, params(), Draws(16, torch.device("cpu")))
    (grad,) = torch.autograd.grad(out.sum(), x)
    # each output pixel reads one input pixel: the counts add up to the image size, row by row
    assert torch.equal(grad.sum(dim=(1, 2, 3)), torch.full((16,), 64.0)) and grad.min() >= 0


def test_a_flip_at_half_the_time_is_refused():
    with pytest.raises(ValidationError, match="below 0.5 with xflip"):
        params(p=0.5, xflip=True)
    params(p=0.5, xflip=False)  # a translation alone may go higher


def test_diffratio_steps_see_the_augmentation_and_vsd_ignores_it():
    for method, net in (("diffratio", "ratio"), ("vsd", "fake_score")):
        steps = {}
        for p in (0.0, 0.5):
            task, _, _ = make_task(method, ratio_augment=params(p=p))
            torch.manual_seed(2)
            task.step()
            steps[p] = task.networks[net].state_dict()
        same = all(torch.equal(value, steps[0.5][key]) for key, value in steps[0.0].items())
        assert same == (method == "vsd"), method
