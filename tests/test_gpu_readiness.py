"""What the paper-scale runs need, checked on the CPU: diagnostics in bounded chunks, attention inputs the fused
kernels take, per-process dropout masks, the numerics in the checkpoint fingerprint, the scale stage's
generator under the sample stage's autocast, GPU sharing, and the sync-free guarded optimiser step."""

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import stages.pretrain
import stages.scale
import stages.train
from pipeline.config import NetworkParams
from pipeline.datasets.encoders import IdentityEncoder
from pipeline.datasets.training_data import TrainingData
from pipeline.generation.sampling import generate_batch
from pipeline.networks import unet as unet_module
from pipeline.networks.generator import OneStepGenerator, generator_config
from pipeline.networks.models import build_denoiser, denoiser_config
from pipeline.networks.published import edm_layers, mp_layers
from pipeline.networks.published.edm_layers import UNetBlock
from pipeline.networks.ratio_net import build_ratio_net, init_from_score, ratio_config
from pipeline.networks.unet import Attention
from pipeline.runtime import Runtime, cuda_placement
from pipeline.training import task as task_module
from pipeline.training.loop import LoopState, load_checkpoint, save_checkpoint
from pipeline.training.pretraining import ScorePretraining
from pipeline.training.task import gradient_norm, guarded_step
from tests.conftest import CPU
from tests.test_diffratio_training import PARAMS, make_task, score_net


def one_step_task(method: str, batch_size: int, batch_per_process: int | None):
    task, _, _ = make_task(method, batch_size=batch_size, batch_per_process=batch_per_process, diagnostic_samples=10,
                           diagnostic_levels=3)
    auxiliary = task.networks[task.auxiliary]
    if method == "diffratio":
        weights = (auxiliary.head.weight, auxiliary.projection.weight)
    else:
        weights = (auxiliary.backbone.conv_out.weight,)
    with torch.no_grad():  # a trained-looking auxiliary net: nonzero logits and updates
        for k, weight in enumerate(weights):
            weight.copy_(0.1 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(k)))
    return task


@pytest.mark.parametrize("method", ["diffratio", "vsd"])
def test_diagnostics_in_chunks_equal_one_batch_and_bound_the_batch(method):
    results, batches, states = [], [], []
    for batch_size, per_pass in ((16, None), (8, 3)):  # 10 samples: one chunk; chunks of 3, 3, 3 and 1
        task = one_step_task(method, batch_size, per_pass)
        largest = [0]
        nets = [*task.networks.values(), *([task.teacher] if method == "vsd" else [])]
        for net in nets:
            net.register_forward_pre_hook(lambda m, args: largest.__setitem__(0, max(largest[0], len(args[0]))))
        torch.manual_seed(2)
        results.append(task.diagnose())
        batches.append(largest[0])
        states.append(torch.get_rng_state())
        assert all(net.training for net in task.networks.values())  # the training mode is restored
    assert batches == [10, 3]
    assert torch.equal(*states)  # the same random numbers were drawn
    whole, chunked = results
    assert [row.keys() for row in whole] == [row.keys() for row in chunked]
    for a, b in zip(whole, chunked):
        assert a["update_norm"] > 0
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-9), key


def old_attention(module: Attention, x: torch.Tensor) -> torch.Tensor:
    """The layout before: q, k and v transposed views of NCHW, the head dim strided by h*w."""
    b, c, hgt, wid = x.shape
    q, k, v = module.qkv(module.norm(x)).reshape(b, 3, module.heads, c // module.heads, hgt * wid).unbind(1)
    h = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
    return (x + module.proj(h.transpose(-1, -2).reshape(b, c, hgt, wid))) / math.sqrt(2)


def record_attention_inputs(monkeypatch) -> list[torch.Tensor]:
    """The tensors every later F.scaled_dot_product_attention call receives, in order."""
    seen, sdpa = [], F.scaled_dot_product_attention

    def recording(*tensors, **kwargs):
        seen.extend(tensors)
        return sdpa(*tensors, **kwargs)
    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    return seen


@pytest.mark.parametrize("channels_last", [False, True])
def test_attention_hands_fused_kernels_a_contiguous_head_dim(monkeypatch, channels_last):
    """On CUDA (stood in for here) SDPA gets a contiguous head dim; the CPU path is the old one, bit for bit."""
    torch.manual_seed(0)
    module = Attention(128)  # two heads of 64
    nn.init.normal_(module.proj.weight, std=0.1)
    x = torch.randn(3, 128, 8, 8)
    expected = old_attention(module, x)
    assert torch.equal(module(x), expected)  # CPU: the old path, bit for bit
    if channels_last:
        module, x = module.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    monkeypatch.setattr(unet_module, "fused_layout", lambda x: True)
    seen = record_attention_inputs(monkeypatch)
    out = module(x)
    assert len(seen) == 3 and all(t.shape == (3, 2, 64, 64) and t.stride(-1) == 1 for t in seen)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


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


def test_numerics_are_in_the_checkpoint_fingerprint_and_processes_are_not(tmp_path):
    bf16 = PARAMS.model_copy(update={"compute": PARAMS.compute.model_copy(update={"precision": "bf16"})})
    two = PARAMS.model_copy(update={"compute": PARAMS.compute.model_copy(update={"processes": 2})})
    _, config = score_net()
    data = {"resolution": 8}
    ids = {name: (stages.train.run_fingerprint(params, "dijs", config, data),
                  stages.pretrain.run_fingerprint(params, data)) for name, params in
           (("fp32", PARAMS), ("bf16", bf16), ("two", two))}
    assert ids["fp32"] == ids["two"]
    assert all(a != b for a, b in zip(ids["fp32"], ids["bf16"]))
    task = one_step_task("diffratio", 8, None)
    save_checkpoint(tmp_path / "ckpt", task, LoopState(images=8, steps=1), ids["fp32"][0])
    assert load_checkpoint(tmp_path / "ckpt", task, ids["two"][0], CPU).images == 8
    assert load_checkpoint(tmp_path / "ckpt", task, ids["bf16"][0], CPU) is None  # discarded, not resumed
    assert not (tmp_path / "ckpt").exists()


class Stop(Exception):
    pass


def test_scale_n1_is_the_sample_stage_generator_under_bf16(workdir, monkeypatch):
    bf16 = Runtime(torch.device("cpu"), CPU.compute.model_copy(update={"precision": "bf16"}))
    params = PARAMS.model_copy(update={
        "compute": bf16.compute, "scale": PARAMS.scale.model_copy(update={"num_sets": 1, "verifier": "trained"}),
        "evaluation": PARAMS.evaluation.model_copy(update={"set_size": 12})})
    score, config = score_net()
    with torch.no_grad():
        score.backbone.conv_out.weight.normal_(std=0.3)  # a generator that is more than its skip connection
    generator = OneStepGenerator(score, params.train.t_init).eval()
    ratio = init_from_score(build_ratio_net(ratio_config(config)), score)
    info = generator_config(config, params.train.t_init)
    monkeypatch.setattr(stages.scale, "load_encoder", lambda *a: None)
    monkeypatch.setattr(stages.scale, "load_reference", lambda *a: type("Reference", (), {"info": {"primary": "x"}}))
    monkeypatch.setattr(stages.scale, "load_generator", lambda *a: (generator, info))
    monkeypatch.setattr(stages.scale, "load_ratio_net", lambda *a: (ratio, None))
    picks, scaled_generate = [], stages.scale.scaled_generate

    def first_n(*args):
        picks.append(scaled_generate(*args)[0])
        raise Stop  # N = 1 is all this test needs
    monkeypatch.setattr(stages.scale, "scaled_generate", first_n)
    with pytest.raises(Stop):
        stages.scale.main(params, bf16)
    # the sample stage's `generator` row: its batches, under the runtime's autocast
    num, size = 12, params.sample.batch_size
    with bf16.autocast():
        rows = [generate_batch(generator, np.arange(start, min(num, start + size)), params.seed, (1, 8, 8), 10,
                               bf16.device)[0] for start in range(0, num, size)]
    expected = torch.cat(rows)
    with torch.no_grad():
        fp32 = generate_batch(generator, np.arange(num), params.seed, (1, 8, 8), 10, bf16.device)[0]
    assert not torch.equal(expected, fp32)  # bf16 changes the samples: the comparison below can fail
    assert torch.equal(picks[0], expected)


def test_processes_share_gpus_over_gloo_only_when_they_outnumber_them():
    assert cuda_placement(1, 2, 2) == (torch.device("cuda", 1), "nccl")
    assert cuda_placement(1, 2, 1) == (torch.device("cuda", 0), "gloo")
    assert cuda_placement(3, 4, 2) == (torch.device("cuda", 1), "gloo")


def test_gradient_norm_is_the_global_l2_norm():
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    net(torch.randn(5, 3)).pow(2).sum().backward()
    expected = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in net.parameters()))
    assert gradient_norm(net).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("fused", [False, True])
def test_guarded_step_skips_a_non_finite_update_entirely(fused):
    """The fused kernel (CUDA's) skips on a device flag; the others branch. Either way a skipped step leaves the
    weights, the moments and the step counts as they were, and a finite one is an ordinary Adam step."""
    torch.manual_seed(0)
    net = nn.Linear(4, 3)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.1, fused=fused or None, foreach=None if fused else True)
    reference = torch.optim.Adam([p.detach().clone().requires_grad_() for p in net.parameters()], lr=0.1)
    for finite in (True, False, True):
        grads = [torch.randn_like(p) for p in net.parameters()]
        if not finite:
            grads[0][0, 0] = float("nan")
        for p, q, g in zip(net.parameters(), reference.param_groups[0]["params"], grads):
            p.grad, q.grad = g.clone(), g.clone()
        before = [p.detach().clone() for p in net.parameters()]
        guarded_step(optimizer, torch.isfinite(torch.stack([g.sum() for g in grads]).sum()))
        if finite:
            reference.step()
            for p, q in zip(net.parameters(), reference.param_groups[0]["params"]):
                torch.testing.assert_close(p.detach(), q.detach())
        else:
            assert all(torch.equal(p.detach(), b) for p, b in zip(net.parameters(), before))
    assert all(float(state["step"]) == 2 for state in optimizer.state.values())


@pytest.mark.parametrize("method", ["diffratio", "vsd"])
def test_a_step_runs_with_compiled_networks(monkeypatch, method):
    """compute.compile wraps the trained networks in torch.compile (its eager backend here, for speed); a step must
    use the wrapper as a module (it has no truth value: `wrapper or default` raises)."""
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: compile_(module, backend="eager"))
    runtime = Runtime(torch.device("cpu"), CPU.compute.model_copy(update={"compile": True}))
    task, _, _ = make_task(method, runtime=runtime)
    assert all(isinstance(run, torch._dynamo.eval_frame.OptimizedModule) for run in task.run.values())
    logs = task.step()
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in logs.values())


def test_edm_attention_hands_fused_kernels_four_dims_and_a_contiguous_head_dim(monkeypatch):
    """PyTorch's fused SDPA kernels take only (batch, heads, tokens, head dim) inputs; the published EDM block
    gives them that on CUDA (stood in for here) and the same output as the CPU path."""
    torch.manual_seed(0)
    block = UNetBlock(64, 64, 32, attention=True, num_heads=2)
    for p in block.parameters():
        nn.init.normal_(p, std=0.1)
    x, emb = torch.randn(3, 64, 8, 8), torch.randn(3, 32)
    expected = block(x, emb)
    monkeypatch.setattr(edm_layers, "fused_layout", lambda x: True)
    seen = record_attention_inputs(monkeypatch)
    out = block(x, emb)
    assert len(seen) == 3 and all(t.shape == (3, 2, 64, 32) and t.stride(-1) == 1 for t in seen)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def test_edm2_resampling_filter_is_made_once_per_device_and_dtype():
    """A filter built from a Python list in every forward pass is a host-to-device copy that makes the host wait."""
    x = torch.randn(2, 4, 8, 8)
    first, second = mp_layers._resample_kernel([1, 1], x), mp_layers._resample_kernel((1.0, 1.0), x)
    assert first.data_ptr() == second.data_ptr()
    torch.testing.assert_close(mp_layers.resample(x, "down"), F.avg_pool2d(x, 2))
