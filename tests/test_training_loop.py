"""The shared training loop: EMA in images, checkpoints, automatic resume, atomic outputs."""

import copy

import pytest
import torch
from torch import nn

from pipeline.artifacts import atomic_path
from pipeline.config import LoopParams
from pipeline.training.loop import lr_factor, run_training, update_ema
from tests.helpers import CPU

LOOP = LoopParams(batch_size=8, batch_per_process=None, duration_images=8 * 40, lr_rampup_images=80, lr_rampdown_images=0, ema_halflife_images=40,
                  log_every_images=8 * 5, checkpoint_every_images=8 * 10)


class Interrupted(Exception):
    pass


class RegressionTask:
    """Fit y = 2x - 1 from fresh random batches (drawn from the global RNG, which resume must restore)."""

    def __init__(self, fail_at_step: int | None = None):
        torch.manual_seed(123)
        net = nn.Linear(1, 1)
        self.networks = {"net": net}
        self.ema = {"net": copy.deepcopy(net).requires_grad_(False)}
        self.optimizers = {"net": torch.optim.Adam(net.parameters(), lr=0.05)}
        self.steps, self.fail_at_step = 0, fail_at_step

    def step(self, images=0):
        self.steps += 1
        if self.steps == self.fail_at_step:
            raise Interrupted
        x = torch.randn(LOOP.batch_size, 1)
        loss = (self.networks["net"](x) - (2 * x - 1)).pow(2).mean()
        self.optimizers["net"].zero_grad()
        loss.backward()
        self.optimizers["net"].step()
        return {"loss": loss.detach()}


def train(task, checkpoint_dir, run_id="run-a"):
    finished = {}
    state = run_training(task, LOOP, checkpoint_dir, run_id, CPU, "test",
                         lambda s: finished.update(state=s), seed=0)
    return state, finished


def test_interrupted_run_resumes_to_the_same_result(tmp_path):
    ref_task = RegressionTask()
    reference, _ = train(ref_task, tmp_path / "ckpt-ref")

    with pytest.raises(Interrupted):
        train(RegressionTask(fail_at_step=25), tmp_path / "ckpt")  # killed after the checkpoint at step 20
    assert (tmp_path / "ckpt" / "state.safetensors").exists()

    resumed_task = RegressionTask()
    state, finished = train(resumed_task, tmp_path / "ckpt")
    assert resumed_task.steps == 20  # only the steps after the checkpoint at 160 images were run again
    assert state.images == reference.images == LOOP.duration_images
    assert [row["images"] for row in state.curves] == [row["images"] for row in reference.curves]
    assert finished["state"] is state and not (tmp_path / "ckpt").exists()  # removed once outputs are written
    for kind in ("networks", "ema"):  # bit-identical to the uninterrupted run: weights, Adam state, RNG restored
        for name, value in getattr(ref_task, kind)["net"].state_dict().items():
            torch.testing.assert_close(getattr(resumed_task, kind)["net"].state_dict()[name], value, rtol=0, atol=0)


def test_checkpoint_of_other_params_is_discarded(tmp_path):
    with pytest.raises(Interrupted):
        train(RegressionTask(fail_at_step=25), tmp_path / "ckpt", run_id="run-a")
    task = RegressionTask()
    train(task, tmp_path / "ckpt", run_id="run-b")
    assert task.steps == LOOP.duration_images // LOOP.batch_size  # started over


def test_ema_halflife_is_in_images():
    net, ema = nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False)
    nn.init.ones_(net.weight)
    nn.init.zeros_(ema.weight)
    for _ in range(4):  # 4 steps of 25 images = one half-life of 100 images
        update_ema(ema, net, batch_size=25, halflife_images=100)
    assert abs(ema.weight.item() - 0.5) < 1e-6


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "half-written").write_text("x")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_the_device_is_synchronised_at_log_points_only(tmp_path, monkeypatch):
    """No host-device sync per step: logged values stay on the device and the step time is taken per interval."""
    from pipeline.training import loop as loop_module

    syncs, steps = [], []
    task = RegressionTask()
    step = task.step
    monkeypatch.setattr(task, "step", lambda images: steps.append(1) or step(images))
    monkeypatch.setattr(loop_module, "synchronize", lambda device: syncs.append(len(steps)))
    state, _ = train(task, tmp_path / "ckpt")
    assert syncs == [0, *range(5, 41, 5)]  # once before the first step, then at every log point (every 5 steps)
    assert len(state.curves) == 8 and all(row["step_seconds"] > 0 for row in state.curves)


def test_the_learning_rate_ramps_up_and_down_linearly():
    loop = LOOP.model_copy(update={"duration_images": 100, "lr_rampup_images": 20, "lr_rampdown_images": 40})
    assert [lr_factor(i, loop) for i in (0, 10, 20, 60, 80, 100)] == [0.0, 0.5, 1.0, 1.0, 0.5, 0.0]
    assert lr_factor(50, LOOP.model_copy(update={"lr_rampup_images": 0})) == 1.0  # neither ramp: the configured rate
