"""What several test files build: the shared runtime and params, tiny stage-2 tasks, parameter files for the
distributed stages, and small prepared data sets. Test files import from here, never from each other."""

import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import load_file

from pipeline.config import ComputeParams, PrepareParams, load_params
from pipeline.datasets.encoders import IdentityEncoder
from pipeline.datasets.prepared import HOLDOUT, TRAIN, PreparedData
from pipeline.datasets.training_data import TrainingData
from pipeline.networks.generator import OneStepGenerator
from pipeline.networks.models import build_denoiser, denoiser_config
from pipeline.networks.ratio_net import build_ratio_net, init_from_score, ratio_config
from pipeline.runtime import Runtime
from pipeline.training.diffratio import DiffRatioTraining
from pipeline.training.divergences import DIVERGENCES
from pipeline.training.vsd import VSDTraining

ROOT = Path(__file__).resolve().parents[1]
# one CPU process, fp32: what a stage gets from `python -m stages.<name>` on this machine
CPU = Runtime(torch.device("cpu"), ComputeParams(processes=1, precision="fp32", tf32=False, channels_last=False,
                                                compile=False, threads="auto"))
COMPUTE = CPU.compute


# --- stage 2 ------------------------------------------------------------------------------------------------

PARAMS = load_params(ROOT / "params.yaml")
TINY_NET = PARAMS.pretrain.network.model_copy(update={"channels": 8})


def score_net(num_classes=10):
    torch.manual_seed(0)
    config = denoiser_config(TINY_NET, 8, 1, num_classes, 0.5)
    return build_denoiser(config), config


class Interrupted(Exception):
    pass


def make_task(method, fail_at_step=None, runtime=CPU, **train_changes):
    score, config = score_net()
    train = PARAMS.train.model_copy(update={"batch_size": 8, "duration_images": 8 * 6, "log_every_images": 16,
                                            "checkpoint_every_images": 24, "diagnostic_samples": 4,
                                            "diagnostic_levels": 2, "auxiliary_warmup_images": 0, **train_changes})
    generator = OneStepGenerator(copy.deepcopy(score), train.t_init).requires_grad_(True)
    torch.manual_seed(1)
    data = TrainingData(IdentityEncoder(), [{"x": torch.rand(32, 1, 8, 8) * 2 - 1}], torch.arange(32) % 10,
                        torch.device("cpu"))
    if method == "diffratio":
        ratio = init_from_score(build_ratio_net(ratio_config(config, train.ratio_net.head, train.ratio_net.logit_scale)),
                                score)
        task = DiffRatioTraining(generator, ratio, data, train, DIVERGENCES["dijs"], conditional=True, runtime=runtime)
    else:
        task = VSDTraining(generator, copy.deepcopy(score).requires_grad_(True), score, data, train, conditional=True,
                           runtime=runtime)
    step, calls = task.step, []

    def counted(images=0):
        calls.append(train.batch_size)
        if len(calls) == fail_at_step:
            raise Interrupted
        return step(images)
    task.step = counted
    return task, train, calls


def one_step_task(method: str, batch_size: int, batch_per_process: int | None):
    task, _, _ = make_task(method, batch_size=batch_size, batch_per_process=batch_per_process, diagnostic_samples=10,
                           diagnostic_levels=3)
    auxiliary = task.networks[task.auxiliary]
    if method == "diffratio":
        weights = (auxiliary.head.out.weight, auxiliary.head.projection.weight)
    else:
        weights = (auxiliary.backbone.conv_out.weight,)
    with torch.no_grad():  # a trained-looking auxiliary net: nonzero logits and updates
        for k, weight in enumerate(weights):
            weight.copy_(0.1 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(k)))
    return task


# --- the distributed stages ----------------------------------------------------------------------------------

DISTRIBUTED_TINY = {"prepare": {"holdout": 200},
        "reference": {"epochs": 1},
        "evaluation": {"set_size": 20, "num_sets": 2, "floor_sets": 2, "kid_subsets": 5},
        "pretrain": {"batch_size": 32, "duration_images": 96, "log_every_images": 32, "checkpoint_every_images": 1000},
        "train": {"batch_size": 16, "duration_images": 48, "log_every_images": 16, "checkpoint_every_images": 1000,
                  "diagnostic_levels": 2, "diagnostic_samples": 8, "auxiliary_warmup_images": 16,
                  "ratio_r1": 0.1, "auxiliary_weight_decay": 0.5},  # R1's double backward and the decay under DDP too
        "sample": {"batch_size": 10, "nfe": 3},
        "verifier": {"validation_images": 60, "calibration_images": 60, "test_images": 60}}


def write_params(workdir, processes: int, batch_per_process: dict[str, int | None]) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in DISTRIBUTED_TINY.items():
        params[section].update(values)
    params["device"], params["compute"]["processes"] = "cpu", processes
    params["compute"]["threads"] = 1  # one thread per process, whatever their number: the same sums in the same order
    for section, value in batch_per_process.items():
        params[section]["batch_per_process"] = value
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))


def stage(workdir, name: str, processes: int) -> None:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
                if processes > 1 else [sys.executable])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([*launcher, "-m", f"stages.{name}"], cwd=workdir, env=env, capture_output=True, text=True)
    assert out.returncode == 0, f"{name} with {processes} process(es) failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"


def tensors(folder) -> dict[str, torch.Tensor]:
    return {f"{path.relative_to(folder)}/{key}": value for path in sorted(folder.rglob("*.safetensors"))
            for key, value in load_file(str(path)).items()}


# --- data ------------------------------------------------------------------------------------------------------

def prepare_params(**changes) -> PrepareParams:
    base = dict(source="digits", path=None, resolution=8, holdout=100, max_images=None, on_bad_image="fail",
                shard_size=50000)
    return PrepareParams(**{**base, **changes})


def random_images(n=12, res=16, channels=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, res, res, channels), dtype=np.uint8)


def prepared(images, labels, shard_size, held=()) -> PreparedData:
    """Prepared data in memory: `images` in shards of `shard_size`, the rows `held` held out."""
    split = np.full(len(images), TRAIN, np.uint8)
    split[list(held)] = HOLDOUT
    manifest = {"class_names": [str(c) for c in range(int(labels.max()) + 1)], "shard_size": shard_size,
                "resolution": images.shape[1], "channels": images.shape[3]}
    shards = [images[s : s + shard_size] for s in range(0, len(images), shard_size)]
    return PreparedData(shards, np.asarray(labels, np.int64), split, manifest)


HELD = (0, 7, 8, 20, 39)  # held-out rows: the encode shards (of training images) differ from the prepared ones
