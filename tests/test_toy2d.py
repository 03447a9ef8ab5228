"""The 2-D toy's ground truth is exact, its error measures read 0 at the truth and 1 at nothing, and its estimators
learn: the ratio net's x-gradient at its exact optimum is the score difference."""

import math

import torch

from pipeline.experiments import toy2d
from pipeline.experiments.gradient_bias import GaussianMixture


def test_support_is_a_jittered_5_by_8_grid_on_the_square():
    torch.manual_seed(0)
    points = toy2d.support(jitter=0.0)
    assert points.shape == (40, 2) and points.min() == -4 and points.max() == 4
    assert len(points[:, 0].unique()) == 8 and len(points[:, 1].unique()) == 5
    moved = toy2d.support(jitter=0.2) - points
    assert 0 < moved.abs().max() <= 0.2


def test_exact_update_of_two_point_masses_is_their_offset():
    """One point each: D_q(x; s) = y and D_p(x; s) = x0 at every x and s, so s^2 delta* = y - x0."""
    x0, y = torch.tensor([[1.0, -2.0]]), torch.tensor([[1.5, -1.0]])
    x, s = 3 * torch.randn(7, 2, 1, 1), torch.exp(torch.randn(7))
    update = toy2d.exact_x0_update(GaussianMixture(y, 0.0), GaussianMixture(x0, 0.0), x, s)
    torch.testing.assert_close(update.flatten(1), (y - x0).expand(7, 2))


def test_the_ratio_net_route_gives_the_score_difference_at_the_exact_logit():
    torch.manual_seed(0)
    p, q = GaussianMixture(torch.randn(4, 2), 0.0), GaussianMixture(torch.randn(4, 2), 0.0)
    x, s = torch.randn(50, 2, 1, 1), 0.1 + torch.rand(50)

    def exact_logit(x, sigma, labels=None):
        return q.log_prob(x, sigma) - p.log_prob(x, sigma)

    torch.testing.assert_close(toy2d.ratio_x0_update(exact_logit, x, s), toy2d.exact_x0_update(q, p, x, s),
                               rtol=1e-4, atol=1e-5)


def test_errors_are_zero_at_the_truth_and_one_at_no_estimate():
    torch.manual_seed(0)
    truth, point = torch.randn(300, 2, 1, 1), torch.randint(0, 5, (300,))
    bins = [torch.arange(300) % 3 == b for b in range(3)]
    exact = toy2d.errors(truth, truth, point, 5, bins)
    assert exact["update_relative_error"] == 0 and exact["gradient_relative_error"] == 0
    assert math.isclose(exact["gradient_cosine"], 1, rel_tol=1e-6)
    none = toy2d.errors(torch.zeros_like(truth), truth, point, 5, bins)
    assert none["update_relative_error"] == none["gradient_relative_error"] == 1
    assert none["update_relative_error_by_noise_tercile"] == [1, 1, 1]


def test_a_short_run_reports_every_estimator_and_they_learn():
    run = toy2d.run(seed=0, budgets=[0, 300], batch_size=256, width=32, depth=2, lr=3e-3, eval_samples=2000)
    untrained, trained = run["budgets"]["0"], run["budgets"]["300"]
    other = toy2d.run(seed=1, budgets=[0, 300], batch_size=16, width=32, depth=2, lr=1e-3, eval_samples=500)
    summary = toy2d.summarise([run, other])
    assert list(summary) == ["0", "300"]
    for method in toy2d.METHODS:
        assert set(trained[method]) >= {"update_relative_error", "gradient_relative_error", "gradient_cosine"}
        assert summary["300"][method]["gradient_relative_error"]["n"] == 2
        # the ratio heads start at zero, the denoisers near the data's mean: 300 steps must bring each closer
        assert trained[method]["gradient_relative_error"] < untrained[method]["gradient_relative_error"]
    assert untrained["ratio"]["update_relative_error"] == 1  # a zero head: no estimate at all
    assert {"ratio_minus_dsm", "ratio_inv_var_minus_dsm"} <= set(summary["300"])
    config = {"batch_size": 256, "width": 32, "depth": 2, "lr": 3e-3, "eval_samples": 2000, "sigma_min": 0.05,
              "sigma_max": 2.0}
    assert "| 300 | dsm |" in toy2d.markdown(config, [run], toy2d.summarise([run]))
