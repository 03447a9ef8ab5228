"""Dropout masks under several processes: each process draws its own, from its own stream, while the draws
all processes share stay shared; one process draws from the shared stream."""


import torch
from torch import nn

from pipeline.config import NetworkParams
from pipeline.datasets.encoders import IdentityEncoder
from pipeline.datasets.training_data import TrainingData
from pipeline.networks.models import build_denoiser, denoiser_config
from pipeline.runtime import Runtime
from pipeline.training import task as task_module
from pipeline.training.pretraining import ScorePretraining
from tests.helpers import CPU, PARAMS


def dropout_task(rank: int, world: int, dropout: float) -> ScorePretraining:
    p = PARAMS.pretrain.model_copy(update={"batch_size": 8, "batch_per_process": 2})
    net = NetworkParams(channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[], dropout=dropout)
    torch.manual_seed(0)
    denoiser = build_denoiser(denoiser_config(net, 8, 1, 10, 0.5))
    data = TrainingData(IdentityEncoder(), [{"x": torch.rand(64, 1, 8, 8) * 2 - 1}], torch.arange(64) % 10,
                        torch.device("cpu"))
    return ScorePretraining(denoiser, data, p, Runtime(torch.device("cpu"), CPU.compute, rank, world))


def step_as(rank: int, world: int, dropout: float, monkeypatch) -> dict:
    """One step of process `rank` of `world` (simulated: no process group, no DDP): its dropout masks, the
    shared draws of the step and the RNG state after it."""
    monkeypatch.setattr(Runtime, "prepare", lambda self, net: net)
    task, masks, draws = dropout_task(rank, world, dropout), [], []
    for module in task.networks["score"].modules():
        if isinstance(module, nn.Dropout):
            module.register_forward_hook(lambda m, args, out: masks.append((out == 0) & (args[0] != 0)))
    init = task_module.Draws.__init__

    def recorded(self, *args, **kwargs):
        init(self, *args, **kwargs)
        draws.append(self)
    monkeypatch.setattr(task_module.Draws, "__init__", recorded)
    torch.manual_seed(1)
    task.step()
    return {"masks": masks, "draws": [t for d in draws for t in d._tensors], "rng": torch.get_rng_state()}


def test_dropout_masks_differ_between_processes_and_the_shared_draws_do_not(monkeypatch):
    rank0, rank1, again = (step_as(rank, 2, 0.5, monkeypatch) for rank in (0, 1, 1))
    assert len(rank0["masks"]) == len(rank1["masks"]) > 0  # 2 passes x the dropout layers
    assert all(m.any() for m in rank0["masks"])
    assert not any(torch.equal(a, b) for a, b in zip(rank0["masks"], rank1["masks"]))
    assert all(torch.equal(a, b) for a, b in zip(rank1["masks"], again["masks"]))  # reproducible
    no_dropout = step_as(0, 2, 0.0, monkeypatch)
    for run in (rank1, no_dropout):  # every process draws the shared numbers alike, dropout or not
        assert len(run["draws"]) == len(rank0["draws"]) > 0
        assert all(torch.equal(a, b) for a, b in zip(rank0["draws"], run["draws"]))
        assert torch.equal(run["rng"], rank0["rng"])


def test_one_process_draws_dropout_from_the_shared_stream(monkeypatch):
    """As before: with one process nothing separates the streams, so single-process runs are unchanged."""
    single = step_as(0, 1, 0.5, monkeypatch)
    assert single["masks"] and not torch.equal(single["rng"], step_as(0, 1, 0.0, monkeypatch)["rng"])
