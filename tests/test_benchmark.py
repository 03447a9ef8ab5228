"""The benchmark's FLOP count works on every training step it times, R1's double backward included."""

import torch

from pipeline.config import load_params
from pipeline.experiments.benchmark import flops
from pipeline.networks.models import denoiser_config
from pipeline.networks.ratio_net import build_ratio_net, ratio_config
from pipeline.randomness import Draws
from pipeline.training.ratio_losses import ratio_loss
from tests.helpers import ROOT


def test_flops_counts_a_ratio_step_with_the_r1_double_backward():
    network = load_params(ROOT / "params.yaml").pretrain.network.model_copy(update={"channels": 8})
    torch.manual_seed(0)
    ratio = build_ratio_net(ratio_config(denoiser_config(network, 8, 1, 10, 0.5)))
    x_fake, x_real = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
    labels, sigma = torch.arange(4), torch.rand(4) + 0.1

    def step(r1):
        draws = Draws(4, torch.device("cpu"))
        return lambda: ratio_loss(ratio, x_fake, x_real, labels, sigma, draws, r1)[0].backward()

    plain, penalised = flops(step(0.0)), flops(step(0.1))
    assert 0 < plain < penalised  # the gradient of a gradient costs more than the plain step
