"""The memory ledger's counts against figures measured another way on real CPU tensors."""

import pytest
import torch
from torch.nn import functional as F

from pipeline.config import NetworkParams
from pipeline.datasets.encoders import IdentityEncoder
from pipeline.datasets.training_data import TrainingData
from pipeline.errors import PipelineError
from pipeline.experiments import memory_ledger as ledger
from pipeline.networks.models import build_denoiser, denoiser_config
from pipeline.networks.published.convert import published_config
from pipeline.networks.ratio_net import build_ratio_net, ratio_config
from pipeline.networks.unet import count_parameters
from pipeline.training.methods import build_task
from pipeline.training.ratio_losses import ratio_loss
from pipeline.training.task import Draws
from tests.helpers import CPU, ROOT

CPU_DEVICE = torch.device("cpu")
PROJECT = denoiser_config(NetworkParams(channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4],
                                        dropout=0.0), 8, 1, 10, 0.5)
EDM2 = published_config("Precond", {"img_resolution": 8, "img_channels": 3, "label_dim": 5, "model_channels": 8,
                                    "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": [4],
                                    "channels_per_head": 8}, "")


def graph_saved_bytes(loss: torch.Tensor, exclude: set[int]) -> int:
    """The bytes of every storage the autograd graph of `loss` keeps in its nodes' saved attributes, each storage
    once, leaving out the storages in `exclude` (the weights) and Python numbers (`x / 2` saves 2 as a 0-d double
    tensor on the host, never on a GPU)."""
    storages, seen, stack = {}, set(), [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for name in dir(node):
            if name.startswith("_saved_"):
                value = getattr(node, name)
                for t in value if isinstance(value, (tuple, list)) else [value]:
                    number = isinstance(t, torch.Tensor) and t.dim() == 0 and t.dtype == torch.float64
                    if isinstance(t, torch.Tensor) and not number and t.untyped_storage().data_ptr() not in exclude:
                        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        stack.extend(next_node for next_node, _ in node.next_functions)
    return sum(storages.values())


def ratio_step(ratio, config: dict, r1: float):
    """The ratio net's loss, every input drawn inside it (so that the ledger counts what it makes)."""
    shape = (config["channels"], config["resolution"], config["resolution"])

    def loss(draws: Draws) -> torch.Tensor:
        sigma = draws.rand() + 0.1
        return ratio_loss(ratio, draws.randn(*shape), draws.randn(*shape), draws.randint(config["num_classes"]),
                          sigma, draws, r1)[0]
    return loss


@pytest.mark.parametrize("config, r1", [(PROJECT, 0.0), (PROJECT, 0.1), (EDM2, 0.0)], ids=["unet", "unet-r1", "edm2"])
def test_saved_bytes_match_the_graph_of_a_real_step(config, r1):
    torch.manual_seed(0)
    real = build_ratio_net(ratio_config(config))
    loss = ratio_step(real, config, r1)(Draws(4, CPU_DEVICE))
    measured = graph_saved_bytes(loss, {t.untyped_storage().data_ptr() for t in real.parameters()})
    with torch.device("meta"):
        shapes = build_ratio_net(ratio_config(config))
    counted = ledger.trace(ratio_step(ledger.to_fake(shapes, CPU_DEVICE), config, r1), 4, CPU_DEVICE, False)
    assert measured > 0
    assert sum(counted["saved"].values()) == measured
    assert counted["live_after_loss"] >= measured and counted["timeline"].max() >= counted["live_after_loss"]
    ratio_step(real, config, r1)(Draws(4, CPU_DEVICE))  # real code again: no fake tensor left in its caches


def test_counts_are_affine_in_the_batch_and_the_check_can_fail():
    with torch.device("meta"):
        shapes = build_ratio_net(ratio_config(PROJECT))
    step = ratio_step(ledger.to_fake(shapes, CPU_DEVICE), PROJECT, 0.0)
    counts, _ = ledger.step_counts(step, CPU_DEVICE, False, [1, 3, 5])  # checked against a trace at 5
    assert 0 < counts[1]["saved_total"] < counts[3]["saved_total"] < counts[5]["saved_total"]

    def batch_dependent(draws: Draws) -> torch.Tensor:  # one operation per row: not affine in the batch
        x = draws.randn(3).requires_grad_(True)
        for _ in range(draws.n):
            x = x.sin()
        return x.sum()
    with pytest.raises(PipelineError, match="not affine"):
        ledger.step_counts(batch_dependent, CPU_DEVICE, False, [1, 3])


@pytest.mark.parametrize("method", ["diffratio", "vsd"])
def test_state_matches_parameter_counts_and_a_real_adam_step(method):
    params = ledger.settings(ROOT / "params.yaml", 2)
    params = params.model_copy(update={"train": params.train.model_copy(update={"ratio_r1": 0.0,
                                                                                "auxiliary_warmup_images": 0})})
    fake, _ = ledger.build(params, EDM2, method, CPU_DEVICE)
    counted = ledger.method_ledger(fake, [2], CPU_DEVICE, False)[2]

    torch.manual_seed(0)
    teacher = build_denoiser(EDM2)
    data = TrainingData(IdentityEncoder(), [{"x": torch.randn(16, 3, 8, 8)}], torch.arange(16) % 5, CPU_DEVICE)
    task, _ = build_task(params.model_copy(update={"method": method}), teacher, EDM2, data, CPU)
    for name, net in task.networks.items():
        buffers = sum(b.numel() * b.element_size() for b in net.buffers())
        assert counted["weights"][name] == 4 * count_parameters(net) + buffers
    task.step()  # one real step of each net: Adam's state exists from here on
    for name, optimizer in task.optimizers.items():
        state = sum(t.numel() * t.element_size() for entry in optimizer.state.values() for t in entry.values())
        assert counted["adam"][name] == state
        # EDM2's log-variance head is never evaluated: no gradient, no Adam state
        assert state < 8 * count_parameters(task.networks[name]) + 4 * len(list(task.networks[name].parameters()))
    aux = task.networks[task.auxiliary]
    aux.requires_grad_(False)
    task.generator_step_loss(Draws(4, CPU_DEVICE))[0].backward()
    grads = sum(p.grad.numel() * p.grad.element_size() for p in task.networks["generator"].parameters()
                if p.grad is not None)
    assert counted["steps"]["generator"]["gradients"] == grads


def test_cuda_attention_and_autocast_as_on_a_gpu():
    with ledger.fake_mode(), torch.device("cuda"):
        q = torch.empty(2, 2, 16, 8, requires_grad=True)
        with ledger.CudaAttention():
            assert "Efficient" in F.scaled_dot_product_attention(q, q, q).grad_fn.name()  # fp32
            with ledger.cuda_autocast(True):
                assert "Flash" in F.scaled_dot_product_attention(q, q, q).grad_fn.name()  # bf16
        x, conv = torch.empty(2, 8, 4, 4), torch.nn.Conv2d(8, 8, 3, padding=1)
        with ledger.cuda_autocast(True):
            y = conv(x)
            assert y.dtype == torch.bfloat16 and F.group_norm(y, 2).dtype == torch.float32  # CUDA's policy
        assert conv(x).dtype == torch.float32


@pytest.mark.slow
def test_default_configuration_gives_a_positive_ratio_with_r1_counted():
    # R1 on one real row in four: affine over multiples of 4 (traced at 4 and 8, checked at 12), 1 and 2 traced
    result = ledger.configuration_ledger("default", [1, 2, 12])
    for batch in ("1", "2", "12"):
        row = result["batches"][batch]
        assert 0 < row["diffratio_over_vsd"] < row["diffratio_over_vsd_with_idle_teacher"]
        for method in ("diffratio", "vsd"):
            assert row[method]["peak"] > row[method]["state"] > 0
        assert row["diffratio"]["steps"]["ratio"]["r1_saved"] > 0  # R1's double backward keeps more
        # the default ratio net is the lighter one (3 of the digits' 5 encoder blocks): one network, one count
        light, default = row["diffratio_light"], row["diffratio"]
        assert (light["state"], light["peak"]) == (default["state"], default["peak"])
        for step in ("ratio", "generator"):
            assert light["steps"][step]["saved"] == default["steps"][step]["saved"]
    assert result["light_ratio"]["encoder_blocks"] == 3 and result["light_ratio"]["of_blocks"] == 5
    assert result["light_ratio"]["parameters"] == result["ratio_parameters"] < 0.25 * result["teacher_parameters"]
    assert result["batches"]["2"]["vsd"]["peak"] > result["batches"]["1"]["vsd"]["peak"]
    assert (result["batches"]["2"]["diffratio"]["steps"]["ratio"]["r1_saved"]
            == result["batches"]["1"]["diffratio"]["steps"]["ratio"]["r1_saved"])  # one R1 row at batch 1 and 2
    # with the whole encoder (the photographs' preset), the lighter ratio net holds less and peaks no higher
    whole = ledger.configuration_ledger("photos", [1])["batches"]["1"]
    assert whole["diffratio_light"]["state"] < whole["diffratio"]["state"]
    assert whole["diffratio_light"]["peak"] <= whole["diffratio"]["peak"]
    assert "default" in ledger.markdown({"machine": "test", "seconds": 0.0, "configurations": {"default": result}})
