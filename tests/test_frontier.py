"""The inference-time frontier: points are compared set by set with the teacher at its most evaluations, only when
their sets are matched; costs count every network evaluation; the teacher's sets are drawn like every generated
row's."""

import numpy as np
import pytest
import torch

from pipeline.config import parse_params
from pipeline.errors import PipelineError
from pipeline.evaluation.draws import generated_set
from pipeline.evaluation.frontier import curve_rows, frontier, one_step_cost, point
from pipeline.generation.sampling import edm_heun, heun_sets, seeded_noise
from pipeline.noise_levels import heun_sigmas

LAYOUT = {"num_sets": 3, "set_size": 4, "seed": 0}


def scored(fds: list[float]) -> list[dict]:
    """Sets whose metrics in space `s` are known: fd as given, the rest fixed."""
    return [{"s": {"fd": fd, "kid": fd / 10, "precision": 0.9, "recall": 0.8, "coverage": 0.5}} for fd in fds]


def test_points_are_paired_set_by_set_with_the_teacher_at_its_most_evaluations():
    teacher = [point("teacher", nfe, 0.1 * nfe, scored(fds), LAYOUT)
               for nfe, fds in ((35, [1.0, 2.0, 4.0]), (3, [3.0, 4.0, 8.0]))]
    one_step = [point("one_step", 2 * n if n > 1 else 1, 0.01 * n, scored(fds), LAYOUT, **one_step_cost(n))
                for n, fds in ((4, [0.5, 1.0, 3.0]), (1, [2.0, 2.0, 2.0]))]
    rows = frontier(teacher, one_step, "s")
    assert list(rows) == ["teacher_nfe3", "teacher_nfe35", "one_step_n1", "one_step_n4"]
    ref = rows["teacher_nfe35"]["vs_teacher_nfe35"]
    assert ref["fd_ratio"] == 1.0 and ref["fd_ratio_sd"] == 0.0
    # per-set ratios (not the ratio of means): [0.5, 0.5, 0.75] for N = 4, [2, 1, 0.5] for N = 1
    assert rows["one_step_n4"]["vs_teacher_nfe35"]["fd_ratio"] == pytest.approx(np.mean([0.5, 0.5, 0.75]))
    assert rows["one_step_n1"]["vs_teacher_nfe35"]["fd_ratio"] == pytest.approx(np.mean([2.0, 1.0, 0.5]))
    assert rows["one_step_n1"]["s"]["fd"] == 2.0 and rows["one_step_n1"]["s"]["fd_sd"] == 0.0
    assert "sets" not in rows["teacher_nfe3"] and rows["teacher_nfe3"]["seconds_per_output"] == pytest.approx(0.3)
    lines = curve_rows(rows, "one_step", "s", "teacher_nfe35")
    assert [(line["num_candidates"], line["nfe"]) for line in lines] == [(1, 1), (4, 8)]
    assert lines[1]["fd"] == pytest.approx(1.5)
    assert lines[1]["fd_vs_teacher"] == pytest.approx(np.mean([0.5, 0.5, 0.75]))
    assert [line["nfe"] for line in curve_rows(rows, "teacher", "s", "teacher_nfe35")] == [3, 35]


def test_points_on_unmatched_sets_are_refused():
    teacher = [point("teacher", 35, 0.1, scored([1.0, 2.0, 4.0]), LAYOUT)]
    other = [point("one_step", 1, 0.1, scored([1.0, 2.0]), {**LAYOUT, "num_sets": 2}, **one_step_cost(1))]
    with pytest.raises(PipelineError, match="not scored on matched sets.*dvc repro teacher_steps scale"):
        frontier(teacher, other, "s")


def test_a_pick_among_n_costs_n_generator_and_n_ratio_evaluations():
    assert one_step_cost(1) == {"num_candidates": 1, "generator_evals": 1, "ratio_evals": 0}
    assert one_step_cost(8) == {"num_candidates": 8, "generator_evals": 8, "ratio_evals": 8}


def test_the_teachers_sets_hold_the_generated_rows_seeds_and_labels():
    def denoiser(x, sigma, labels):  # a toy denoiser that depends on the label
        return x / (1 + sigma**2) + labels.view(-1, 1, 1, 1).float()

    sigmas, shape, device = heun_sigmas(5, 0.002, 80, 7), (1, 2, 2), torch.device("cpu")
    sets, seconds = heun_sets(denoiser, sigmas, 2, 6, 11, shape, 3, lambda x: x.numpy(), device)
    assert len(sets) == 2 and seconds >= 0
    for k, (images, labels) in enumerate(sets):
        idx = generated_set(k, 6)
        expected = edm_heun(denoiser, seeded_noise(11 + idx, shape, device), torch.as_tensor(idx % 3), sigmas)
        assert np.array_equal(images, expected.numpy()) and labels.tolist() == (idx % 3).tolist()


def test_teacher_evaluations_must_be_increasing_and_odd(params_dict):
    for bad in ([5, 3], [3, 4]):
        params_dict["frontier"]["teacher_nfe"] = bad
        with pytest.raises(PipelineError, match="teacher_nfe must be increasing odd numbers"):
            parse_params(params_dict)
