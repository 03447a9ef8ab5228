"""Both stage-2 tasks in the shared loop: the ratio net's shape and size, the baseline's frozen teacher and
bit-exact resume."""

import copy
import gc
import weakref

import pytest
import torch

from pipeline.artifacts import save_weights
from pipeline.datasets.encoders import IdentityEncoder
from pipeline.datasets.training_data import TrainingData
from pipeline.networks.models import build_denoiser, denoiser_config
from pipeline.networks.ratio_net import (
    build_ratio_net,
    init_from_score,
    load_ratio_net,
    ratio_config,
)
from pipeline.networks.unet import count_parameters
from pipeline.randomness import Draws
from pipeline.training.loop import run_training
from pipeline.training.methods import build_task
from tests.helpers import CPU, PARAMS, Interrupted, make_task, score_net


def test_ratio_net_is_the_score_encoder_with_a_zero_head():
    score, config = score_net()
    ratio = init_from_score(build_ratio_net(ratio_config(config)), score)
    x, sigma, labels = torch.randn(4, 1, 8, 8), torch.rand(4) + 0.1, torch.arange(4)
    assert torch.equal(ratio(x, sigma, labels), torch.zeros(4))  # d = 0 until trained
    for name, value in score.backbone.encoder.state_dict().items():
        assert torch.equal(ratio.encoder.state_dict()[name], value)


def test_ratio_net_artifact_round_trip(tmp_path):
    score, config = score_net()
    ratio = init_from_score(build_ratio_net(ratio_config(config)), score)
    torch.nn.init.normal_(ratio.head.out.weight)
    save_weights(tmp_path / "ratio", ratio.state_dict(), ratio_config(config))
    loaded, loaded_config = load_ratio_net(tmp_path / "ratio", torch.device("cpu"))
    assert loaded_config == ratio_config(config)
    x, sigma, labels = torch.randn(3, 1, 8, 8), torch.rand(3) + 0.1, torch.arange(3)
    assert torch.equal(loaded(x, sigma, labels), ratio(x, sigma, labels))


def test_default_ratio_net_is_lightweight():
    config = denoiser_config(PARAMS.pretrain.network, 8, 1, 10, 0.5)
    ratio = build_ratio_net(ratio_config(config))
    assert count_parameters(ratio) <= 0.6 * count_parameters(build_denoiser(config))


BOOTSTRAP = {"ratio_bootstrap": PARAMS.train.ratio_bootstrap.model_copy(update={"lower": 0.5, "label_weight": 0.2}),
             "ratio_r1_subsample": 4}


@pytest.mark.parametrize("method, changes", [("diffratio", {}), ("diffratio", BOOTSTRAP), ("vsd", {})])
def test_interrupted_training_resumes_bit_exactly(tmp_path, method, changes):
    reference, train, _ = make_task(method, **changes)
    run_training(reference, train, tmp_path / "a", "run", CPU, "t", lambda s: None, seed=0)
    interrupted, _, _ = make_task(method, fail_at_step=5, **changes)
    with pytest.raises(Interrupted):
        run_training(interrupted, train, tmp_path / "b", "run", CPU, "t", lambda s: None, seed=0)
    resumed, _, calls = make_task(method, **changes)
    run_training(resumed, train, tmp_path / "b", "run", CPU, "t", lambda s: None, seed=0)
    assert len(calls) == 3  # resumed after the checkpoint at step 3
    for kind, name in (("networks", "generator"), ("networks", resumed.auxiliary), ("ema", "generator")):
        expected = getattr(reference, kind)[name].state_dict()
        for key, value in getattr(resumed, kind)[name].state_dict().items():
            assert torch.equal(value, expected[key]), f"{kind}/{name}/{key}"
    columns = {"diffratio": {"auc", "d_real", "d_fake", "h_p05", "h_p95"}, "vsd": {"fake_score_loss"}}[method]
    real, labels = torch.rand(4, 1, 8, 8) * 2 - 1, torch.arange(4)
    rows = resumed.diagnose(real, labels, images=0)
    assert set(rows[0]) >= {"sigma", "update_norm", "update_share", "gradient_agreement", *columns}
    assert rows[-1]["sigma"] == 0 and -1 <= rows[-1]["gradient_agreement"] <= 1  # at the training distribution
    assert sum(r["update_share"] for r in rows[:-1]) == pytest.approx(1)


def test_vsd_ignores_the_ratio_nets_r1_penalty():
    steps = {}
    for r1 in (0.0, 1.0):
        task, _, _ = make_task("vsd", ratio_r1=r1)
        torch.manual_seed(2)
        task.step()
        steps[r1] = task.networks["fake_score"].state_dict()
    assert all(torch.equal(value, steps[1.0][key]) for key, value in steps[0.0].items())


def test_vsd_trains_the_fake_score_net_and_never_the_teacher():
    task, train, _ = make_task("vsd")
    teacher = copy.deepcopy(task.teacher.state_dict())
    assert all(torch.equal(v, teacher[k]) for k, v in task.networks["fake_score"].state_dict().items())
    logs = task.step()
    assert {"fake_score_loss", "update_norm", "grad_norm"} <= set(logs) and float(logs["grad_norm"]) > 0
    assert all(torch.equal(v, teacher[k]) for k, v in task.teacher.state_dict().items())
    assert not all(torch.equal(v, teacher[k]) for k, v in task.networks["fake_score"].state_dict().items())


def test_the_generator_waits_for_the_warm_up():
    """During train.auxiliary_warmup_images only the auxiliary net learns; the generator moves after it."""
    task, train, _ = make_task("diffratio", auxiliary_warmup_images=16)
    start = copy.deepcopy(task.networks["generator"].state_dict())
    ratio_start = copy.deepcopy(task.networks["ratio"].state_dict())
    for images in (0, 8):
        logs = task.step(images)
        assert "grad_norm" not in logs
    assert all(torch.equal(v, start[k]) for k, v in task.networks["generator"].state_dict().items())
    assert not all(torch.equal(v, ratio_start[k]) for k, v in task.networks["ratio"].state_dict().items())
    assert "grad_norm" in task.step(16)
    assert not all(torch.equal(v, start[k]) for k, v in task.networks["generator"].state_dict().items())


def test_diffratio_task_keeps_no_reference_to_the_teacher():
    """Stage 2 frees the teacher once the task is built (stages/train.py): DiffRatio's task must not hold it, or
    its weights stay in memory for the whole run (docs/memory.md); VSD's task evaluates it, so it keeps it."""
    data = TrainingData(IdentityEncoder(), [{"x": torch.rand(8, 1, 8, 8) * 2 - 1}], torch.arange(8) % 10, CPU.device)
    for method, kept in (("diffratio", False), ("vsd", True)):
        teacher, config = score_net()
        params = PARAMS.model_copy(update={"method": method})
        task, _ = build_task(params, teacher.requires_grad_(False), config, data, CPU)
        alive = weakref.ref(teacher)
        del teacher
        gc.collect()
        assert (alive() is not None) == kept, method
        del task



@pytest.mark.parametrize("method", ["diffratio", "vsd"])
def test_the_auxiliary_net_learns_from_the_generator_it_is_told(method):
    """train.auxiliary_against: the auxiliary net's generated samples come from the raw generator (online), from its
    EMA (ema), or from the EMA on the global batch's even rows and the raw generator on the odd ones (mixed), drawn
    from the same latents; once the two generators differ, so do their samples."""
    task, _, _ = make_task(method, auxiliary_against="ema")
    with torch.no_grad():
        for q in task.networks["generator"].parameters():
            q.add_(0.1)  # the raw weights move; the EMA stays at the initial generator
    labels = torch.arange(6) % 10

    def samples(against=None, generator=None):
        torch.manual_seed(3)
        draws = Draws(6, CPU.device)
        if generator is not None:
            return task.generate(labels, draws, generator)
        task.p = task.p.model_copy(update={"auxiliary_against": against})
        return task.auxiliary_samples(labels, draws)

    with torch.no_grad():
        ema, online = samples(generator=task.ema["generator"]), samples(generator=task.networks["generator"])
    assert not torch.allclose(ema, online)
    assert torch.equal(samples("ema"), ema) and torch.equal(samples("online"), online)
    mixed = samples("mixed")
    assert torch.allclose(mixed[0::2], ema[0::2]) and torch.allclose(mixed[1::2], online[1::2])
