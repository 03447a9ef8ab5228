"""What a GPU run relies on, checked on the CPU: the numerics settings in the checkpoint fingerprint (the
process count not), the scale stage's generator under the sample stage's autocast, GPUs shared over gloo only
when processes outnumber them, the sync-free guarded optimiser step and its global gradient norm, compiled
networks, and EDM2's resampling filter made once per device."""

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import stages.pretrain
import stages.scale
import stages.train
from pipeline.generation.sampling import generate_batch
from pipeline.networks.generator import OneStepGenerator, generator_config
from pipeline.networks.published import mp_layers
from pipeline.networks.ratio_net import build_ratio_net, init_from_score, ratio_config
from pipeline.runtime import Runtime, cuda_placement
from pipeline.training.loop import LoopState, load_checkpoint, save_checkpoint
from pipeline.training.task import gradient_norm, guarded_step
from tests.helpers import CPU, PARAMS, make_task, one_step_task, score_net


def test_numerics_are_in_the_checkpoint_fingerprint_and_processes_are_not(tmp_path):
    bf16 = PARAMS.model_copy(update={"compute": PARAMS.compute.model_copy(update={"precision": "bf16"})})
    two = PARAMS.model_copy(update={"compute": PARAMS.compute.model_copy(update={"processes": 2})})
    _, config = score_net()
    data = {"resolution": 8}
    ids = {name: (stages.train.run_fingerprint(params, {"divergence": "dijs"}, config, data),
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


def test_edm2_resampling_filter_is_made_once_per_device_and_dtype():
    """A filter built from a Python list in every forward pass is a host-to-device copy that makes the host wait."""
    x = torch.randn(2, 4, 8, 8)
    first, second = mp_layers._resample_kernel([1, 1], x), mp_layers._resample_kernel((1.0, 1.0), x)
    assert first.data_ptr() == second.data_ptr()
    torch.testing.assert_close(mp_layers.resample(x, "down"), F.avg_pool2d(x, 2))
