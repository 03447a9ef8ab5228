"""Stage 2 from published teachers: every golden teacher converts, trains a one-step generator with DiffRatio
and with the VSD baseline, and round-trips as an artifact; for EDM's CIFAR-10 teachers and EDM2-XS the stages
themselves (teacher, pretrain, train, sample, fid) run on data shaped like theirs."""

import copy
import json

import pytest
import torch
import yaml

from pipeline.artifacts import save_weights
from pipeline.config import load_params, parse_params
from pipeline.datasets.encoders import IdentityEncoder
from pipeline.datasets.training_data import TrainingData
from pipeline.errors import PipelineError
from pipeline.networks.generator import generator_config, load_generator, save_generator
from pipeline.networks.models import load_denoiser, save_denoiser
from pipeline.networks.published.convert import check_data_matches, convert_checkpoint
from pipeline.networks.ratio_net import load_ratio_net
from pipeline.training.methods import build_task
from stages import encode, fid, prepare, pretrain, reference, sample, teacher, train, verifier
from tests.helpers import CPU, ROOT
from tests.teacher_goldens import EDM2_GOLDENS, GOLDENS, golden_dir

PARAMS = load_params(ROOT / "params.yaml")


def tiny_stage2(params, method):
    steps = {"batch_size": 2, "duration_images": 4, "log_every_images": 2, "checkpoint_every_images": 4,
             "diagnostic_samples": 2, "diagnostic_levels": 2, "auxiliary_warmup_images": 0}
    return params.model_copy(update={"method": method, "train": params.train.model_copy(update=steps)})


@pytest.mark.slow
@pytest.mark.parametrize("name", GOLDENS)
def test_stage2_from_a_converted_golden_teacher(name, tmp_path):
    net, config = convert_checkpoint(golden_dir() / f"{name}.pkl")
    save_denoiser(tmp_path / "score", net, config)
    teacher_net, loaded_config = load_denoiser(tmp_path / "score", CPU.device, "teacher")
    assert loaded_config == config
    c, r, k = config["channels"], config["resolution"], config["num_classes"]
    torch.manual_seed(0)
    x, sigma = torch.randn(2, c, r, r), torch.tensor([0.3, 3.0])
    labels = torch.tensor([1, 2]) if k else None
    torch.testing.assert_close(teacher_net(x, sigma, labels), net(x, sigma, labels), rtol=0, atol=0)
    data = TrainingData(IdentityEncoder(), [{"x": torch.randn(4, c, r, r) * 0.5}], torch.arange(4) % max(k, 1),
                        CPU.device)
    for method in ("diffratio", "vsd"):
        task, auxiliary_config = build_task(tiny_stage2(PARAMS, method), teacher_net, config, data, CPU)
        generator = task.networks["generator"]
        before = copy.deepcopy(generator.state_dict())
        logs = [task.step(), task.step()]
        assert all(torch.isfinite(torch.as_tensor(float(log["grad_norm"]))) for log in logs)
        assert any(not torch.equal(v, before[n]) for n, v in generator.state_dict().items()), "the generator moved"
        save_generator(tmp_path / "generator", generator, generator_config(config, PARAMS.train.t_init))
        loaded, _ = load_generator(tmp_path / "generator", CPU.device)
        z = torch.randn(2, c, r, r)
        generator.eval()
        with torch.no_grad():
            torch.testing.assert_close(loaded(z, labels), generator(z, labels), rtol=0, atol=0)
            assert torch.isfinite(loaded(z, labels)).all()
        if method == "diffratio":
            ratio = task.networks["ratio"]
            # the ratio net: the teacher's encoder half plus a head, saved and rebuilt from its config
            save_weights(tmp_path / "ratio", ratio.state_dict(), auxiliary_config)
            loaded_ratio, _ = load_ratio_net(tmp_path / "ratio", CPU.device)
            ratio.eval()
            with torch.no_grad():
                torch.testing.assert_close(loaded_ratio(x, sigma, labels), ratio(x, sigma, labels), rtol=0, atol=0)
            assert not any(name.startswith(("model.dec", "unet.dec")) for name in ratio.state_dict())


def test_teacher_and_data_must_match():
    _, config = convert_checkpoint(golden_dir() / "edm-cifar10-32x32-cond-vp.pkl")
    data = {"encoder": "identity", "channels": 3, "resolution": 32, "num_classes": 10}
    check_data_matches(config, data, class_conditional=True)
    with pytest.raises(PipelineError, match="works on 3x32"):
        check_data_matches(config, {**data, "resolution": 8}, class_conditional=True)
    with pytest.raises(PipelineError, match="has 10 classes"):
        check_data_matches(config, data, class_conditional=False)
    _, edm2_config = convert_checkpoint(golden_dir() / f"{EDM2_GOLDENS[0]}.pkl")
    latents = {"encoder": "sd-vae", "whitening": "measured", "channels": 4, "resolution": 64, "num_classes": 1000}
    with pytest.raises(PipelineError, match="whitening: edm2"):
        check_data_matches(edm2_config, latents, class_conditional=True)
    check_data_matches(edm2_config, {**latents, "whitening": "edm2"}, class_conditional=True)


# the goldens whose data the stages can make here: CIFAR-10-shaped pixels, and 4x64x64 latents of 128 px images
# through a tiny SD-VAE (EDM2-XS, unconditional); the 1000-class ADM and EDM2-S run at the task level above
STAGE_GOLDENS = ["edm-cifar10-32x32-cond-vp", "edm-cifar10-32x32-uncond-ve", "edm2-img512-xs-uncond"]


@pytest.mark.slow
@pytest.mark.parametrize("name", STAGE_GOLDENS)
def test_stages_run_from_a_published_teacher(name, workdir, tiny_vae_dir):
    (workdir / "teachers").mkdir()
    (workdir / "teachers" / f"{name}.pkl").symlink_to(golden_dir() / f"{name}.pkl")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    conditional, latent = "-cond-" in name, name.startswith("edm2")
    changes = {
        "prepare": {"source": "synthetic", "resolution": 128 if latent else 32, "max_images": 240, "holdout": 80},
        "encode": {"encoder": "sd-vae", "vae": str(tiny_vae_dir), "whitening": "edm2"} if latent else {},
        "teacher": {"source": "checkpoint", "checkpoint": f"{name}.pkl"},
        "pretrain": {"class_conditional": conditional},
        # the offline nets learn from, and score against, 40 training images: at 128 px they dominate the run
        "reference": {"epochs": 2, "features": "hybrid" if conditional else "autoencoder", "max_images": 40,
                      "max_features": 40},
        "evaluation": {"set_size": 10, "num_sets": 2, "floor_sets": 2, "kid_subsets": 5, "batch_size": 100},
        "train": {"batch_size": 4, "duration_images": 8, "log_every_images": 4, "checkpoint_every_images": 8,
                  "diagnostic_samples": 4, "diagnostic_levels": 2, "auxiliary_warmup_images": 0},
        "sample": {"nfe": 3, "batch_size": 20},
        "verifier": {"max_steps": 4, "batch_size": 4, "eval_every": 2, "validation_images": 10,
                     "calibration_images": 10, "test_images": 10},
    }
    for section, values in changes.items():
        raw[section].update(values)
    (workdir / "params.yaml").write_text(yaml.safe_dump(raw))
    params = parse_params(raw)
    for stage in (prepare, encode, reference, teacher, pretrain, train, sample, fid, verifier):
        stage.main(params, CPU)
    info = json.loads((workdir / "data/teacher/teacher.json").read_text())
    assert info["checkpoint"] == f"{name}.pkl" and info["class"] in ("VPPrecond", "VEPrecond", "Precond")
    assert json.loads((workdir / "metrics/pretrain.json").read_text())["steps"] == 0  # nothing pretrained
    rows = json.loads((workdir / "metrics/fid.json").read_text())
    for row in ("teacher", "generator", "generator_init"):
        assert rows[row]["nfe"] >= 1 and rows[row][rows["primary"]]["fd"] >= 0
    assert 0 <= json.loads((workdir / "metrics/verifier.json").read_text())["test"]["fitted"]["auc"] <= 1
    # data the teacher was not trained on is refused before anything is trained
    raw["prepare"]["resolution"] //= 2
    with pytest.raises(PipelineError, match="works on"):
        for stage in (prepare, encode, pretrain):
            stage.main(parse_params(raw), CPU)


@pytest.mark.parametrize("name", GOLDENS)
def test_cuda_attention_layout_gives_the_same_outputs(name, monkeypatch):
    """On CUDA the attention takes a fused kernel's layout; stood in for on the CPU, it matches the CPU path."""
    from safetensors.torch import load_file

    from pipeline.networks.published import edm2, edm_layers

    net, config = convert_checkpoint(golden_dir() / f"{name}.pkl")
    io = load_file(str(golden_dir() / f"{name}.io.safetensors"))
    labels = io["class_labels"].argmax(1) if "class_labels" in io else None
    with torch.no_grad():
        cpu = net(io["x"], io["sigma"], labels)
        for module in (edm_layers, edm2):
            monkeypatch.setattr(module, "fused_layout", lambda x: True)
        fused = net(io["x"], io["sigma"], labels)
    assert ((fused - cpu).norm() / cpu.norm()).item() <= 1e-5
