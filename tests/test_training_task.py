"""A step's global batch: shared draws, gradient accumulation, and the non-finite guard."""

import pytest
import torch
from torch import nn

from pipeline.config import LoopParams, NetworkParams, load_params
from pipeline.datasets.encoders import IdentityEncoder
from pipeline.datasets.training_data import TrainingData
from pipeline.networks.models import build_denoiser, denoiser_config
from pipeline.networks.ratio_net import build_ratio_net, ratio_config
from pipeline.randomness import Draws
from pipeline.runtime import Runtime
from pipeline.training.loop import run_training
from pipeline.training.pretraining import ScorePretraining
from pipeline.training.task import TrainingTask, adam
from tests.helpers import CPU, ROOT

LOOP = LoopParams(batch_size=8, batch_per_process=None, duration_images=24, lr_rampup_images=0, lr_rampdown_images=0,
                  ema_halflife_images=0, log_every_images=8, checkpoint_every_images=1000)


def test_draws_hand_out_rows_of_one_global_draw():
    torch.manual_seed(0)
    expected = [torch.randn(8, 3), torch.randint(0, 5, (8,)), torch.rand(8)]
    torch.manual_seed(0)
    draws, parts = Draws(8, torch.device("cpu")), []
    for rows in (slice(0, 2), slice(2, 5), slice(5, 8)):  # uneven passes, each making the same calls
        draws.select(rows)
        parts.append([draws.randn(3), draws.randint(5), draws.rand()])
    for k, tensor in enumerate(expected):
        assert torch.equal(torch.cat([part[k] for part in parts]), tensor)


def pretraining(batch_per_process: int | None) -> ScorePretraining:
    p = load_params(ROOT / "params.yaml").pretrain.model_copy(update={"batch_size": 8,
                                                                       "batch_per_process": batch_per_process})
    net = NetworkParams(channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[], dropout=0.0)
    torch.manual_seed(0)
    denoiser = build_denoiser(denoiser_config(net, 8, 1, 10, 0.5))
    data = TrainingData(IdentityEncoder(), [{"x": torch.rand(64, 1, 8, 8) * 2 - 1}], torch.arange(64) % 10,
                        torch.device("cpu"))
    return ScorePretraining(denoiser, data, p, CPU)


def test_accumulated_passes_take_the_same_step_as_one_pass():
    one, four = pretraining(None), pretraining(2)
    start = {k: v.clone() for k, v in one.networks["score"].state_dict().items()}
    assert len(one.passes) == 1 and len(four.passes) == 4
    for task in (one, four):
        torch.manual_seed(1)
        for _ in range(3):
            logs = task.step()
    assert float(logs["loss"]) > 0
    moved = max((v - start[k]).abs().max() for k, v in one.networks["score"].state_dict().items())
    assert moved > 1e-3  # Adam moves weights by ~lr per step: the tolerance below is far smaller
    for name, value in one.networks["score"].state_dict().items():
        torch.testing.assert_close(four.networks["score"].state_dict()[name], value, rtol=0, atol=2e-5)


class FailingTask(TrainingTask):
    """A linear fit whose loss turns non-finite at the steps in `bad_steps`."""

    def __init__(self, bad_steps: set[int]):
        net = nn.Linear(1, 1)
        super().__init__({"net": net}, {}, {"net": torch.optim.SGD(net.parameters(), lr=0.1)}, LOOP, CPU)
        self.bad_steps, self.count = bad_steps, 0

    def step(self, images=0):
        self.count += 1

        def loss(draws):
            x = draws.randn(1)
            value = (self.run["net"](x) - 2 * x).pow(2).mean()
            return value * (float("nan") if self.count in self.bad_steps else 1.0), {"loss": value}
        logs, _ = self.update("net", loss)
        return logs


@pytest.mark.parametrize("bad_steps", [{2}, {1, 2, 3}])
def test_non_finite_steps_are_skipped_and_counted(tmp_path, bad_steps):
    task = FailingTask(bad_steps)
    before = {k: v.clone() for k, v in task.networks["net"].state_dict().items()}
    weights = []
    original = task.update

    def recorded(name, loss):
        out = original(name, loss)
        weights.append(task.networks["net"].weight.detach().clone())
        return out
    task.update = recorded
    state = run_training(task, LOOP, tmp_path / "ckpt", "run", CPU, "t", lambda s: None, seed=0)
    assert state.skipped == len(bad_steps) and state.curves[-1]["skipped_steps"] == len(bad_steps)
    previous = before["weight"]
    for step, weight in enumerate(weights, start=1):
        assert torch.isfinite(weight).all()
        assert torch.equal(weight, previous) == (step in bad_steps)  # a skipped step leaves the weights as they were
        previous = weight


def test_bf16_autocast_keeps_outputs_logits_and_losses_in_fp32():
    bf16 = Runtime(torch.device("cpu"), CPU.compute.model_copy(update={"precision": "bf16"}))
    task = pretraining(None)
    task.runtime = bf16
    config = denoiser_config(NetworkParams(channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[],
                                           dropout=0.0), 8, 1, 10, 0.5)
    ratio = build_ratio_net(ratio_config(config))
    x, sigma, labels = torch.randn(4, 1, 8, 8), torch.rand(4) + 0.1, torch.arange(4)
    with bf16.autocast():
        assert ratio(x, sigma, labels).dtype == torch.float32
        assert task.networks["score"](x, sigma, labels).dtype == torch.float32
        assert task.networks["score"].backbone.conv_out(torch.randn(1, 16, 8, 8)).dtype == torch.bfloat16
    logs = task.step()  # the whole update under autocast
    assert logs["loss"].dtype == torch.float32 and torch.isfinite(logs["loss"])


def test_weight_decay_is_decoupled_and_zero_is_adam_exactly():
    torch.manual_seed(0)
    start = torch.randn(5)
    weights = [start.clone().requires_grad_(True) for _ in range(3)]
    zero_decay = adam([weights[0]], 1e-2, (0.0, 0.999), torch.device("cpu"))
    plain = torch.optim.Adam([weights[1]], lr=1e-2, betas=(0.0, 0.999), foreach=True)
    decayed = adam([weights[2]], 1e-2, (0.0, 0.999), torch.device("cpu"), weight_decay=0.5)
    for _ in range(3):
        gradient = torch.randn(5)
        weights[0].grad, weights[1].grad = gradient.clone(), gradient.clone()
        weights[2].grad = torch.zeros(5)  # no gradient: only the decay moves this one
        for opt in (zero_decay, plain, decayed):
            opt.step()
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], start)
    torch.testing.assert_close(weights[2].detach(), start * (1 - 1e-2 * 0.5) ** 3)
