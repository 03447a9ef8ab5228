"""The gradient-bias experiment's analytic target is exact, and the experiment reports every method and budget."""

import torch

from pipeline.config import load_params
from pipeline.experiments import gradient_bias
from pipeline.training.divergences import DIVERGENCES
from pipeline.training.ratio_losses import generator_loss
from pipeline.training.vsd import score_difference_loss
from tests.helpers import ROOT

PARAMS = load_params(ROOT / "params.yaml").gradient_bias


def test_mixture_denoiser_is_tweedie_and_exact_scores_agree_with_the_exact_ratio():
    """Two independent routes to the true dikl gradient (exact d* through DiffRatio's surrogate, exact scores
    through the baseline's) must agree: this is what makes the experiment's ground truth trustworthy."""
    torch.manual_seed(0)
    data = gradient_bias.GaussianMixture(torch.randn(3, 4), 0.3)
    generator = gradient_bias.DiagonalGaussianGenerator(torch.randn(4), torch.full((4,), 0.8))
    z, eps = torch.randn(2000, 4, 1, 1), torch.randn(2000, 4, 1, 1)
    sigma = torch.exp(torch.randn(2000) - 1)

    def exact_logit(x, s, labels=None):
        return generator.log_prob(x, s) - data.log_prob(x, s)

    loss, _ = generator_loss(exact_logit, generator(z), sigma, None, DIVERGENCES["dikl"], "s2", 50.0, noise=eps)
    via_ratio = gradient_bias.surrogate_gradient(loss, generator)
    loss, _ = score_difference_loss(gradient_bias.generator_denoiser(generator), data.denoiser, generator(z), sigma,
                                    None, "s2", noise=eps)
    via_scores = gradient_bias.surrogate_gradient(loss, generator)
    torch.testing.assert_close(via_scores, via_ratio, rtol=1e-4, atol=1e-5)
    # a single Gaussian component: the mixture's denoiser is the Gaussian posterior mean
    single = gradient_bias.GaussianMixture(torch.zeros(1, 4), 0.5)
    x, s = torch.randn(5, 4, 1, 1), torch.full((5,), 0.7)
    torch.testing.assert_close(single.denoiser(x, s), 0.25 / (0.25 + 0.49) * x)


def test_experiment_reports_every_method_at_every_budget():
    p = PARAMS.model_copy(update={"budgets": [2, 5], "eval_samples": 200, "width": 16, "batch_size": 16})
    rows = gradient_bias.run(p, seed=0)
    methods = {f"diffratio_{d}" for d in p.divergences} | {"vsd", "vsd_exact_teacher"}
    assert {(r["method"], r["budget"]) for r in rows} == {(m, b) for m in methods for b in (2, 5)}
    assert all(-1 <= r["cosine"] <= 1 and r["relative_error"] >= 0 for r in rows)
    assert all(len(r["relative_error_by_noise_tercile"]) == 3 for r in rows)
