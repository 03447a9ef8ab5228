"""The stage-2 methods by name: build the training task for `method` from the pretrained teacher."""

from __future__ import annotations

import copy

from pipeline.config import Params
from pipeline.datasets.training_data import TrainingData
from pipeline.networks.generator import OneStepGenerator
from pipeline.networks.models import build_denoiser
from pipeline.networks.preconditioning import Denoiser
from pipeline.networks.ratio_net import build_ratio_net, init_from_score, ratio_config
from pipeline.randomness import seed_torch
from pipeline.runtime import Runtime
from pipeline.training.diffratio import DiffRatioTraining
from pipeline.training.divergences import DIVERGENCES
from pipeline.training.one_step import OneStepTraining
from pipeline.training.vsd import VSDTraining


def build_task(params: Params, teacher: Denoiser, score_config: dict, data: TrainingData,
               runtime: Runtime) -> tuple[OneStepTraining, dict]:
    """The task for params.method and the config its auxiliary net is saved with. Seeds torch with
    train.seed first, so the fresh parts (a random generator, the ratio net's head) are reproducible."""
    p = params.train
    conditional = score_config["num_classes"] > 0
    seed_torch("stage2_init", p.seed)
    start = copy.deepcopy(teacher) if p.init == "teacher" else build_denoiser(score_config).to(runtime.device)
    generator = OneStepGenerator(start, p.t_init).requires_grad_(True)
    if params.method == "diffratio":
        config = ratio_config(score_config, p.ratio_net.head, p.ratio_net.logit_scale, p.ratio_net.encoder_blocks)
        ratio = init_from_score(build_ratio_net(config), teacher).to(runtime.device)
        return (DiffRatioTraining(generator, ratio, data, p, DIVERGENCES[params.divergence], conditional, runtime),
                config)
    fake = copy.deepcopy(teacher).requires_grad_(True)  # the fake score net starts as the teacher
    return VSDTraining(generator, fake, teacher, data, p, conditional, runtime), score_config
