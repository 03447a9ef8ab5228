"""A memory ledger of one training step of each method, computed on the CPU with shape-only tensors:

    python -m pipeline.experiments.memory_ledger                      # -> metrics/memory.json, metrics/memory.md
    python -m pipeline.experiments.memory_ledger --configs imagenet512-edm2-xxl --batches 1 32 --out metrics/xxl

Configurations: the default params, every preset, and every published architecture (EDM's DDPM++ and NCSN++ at
CIFAR-10 32px, ADM at ImageNet 64px, EDM2 XS..XXL on ImageNet-512 latents) under its preset's training settings,
each at several per-GPU batches (rows per forward pass). The networks are built by the project's own builders
(`build_task`: the generator, the ratio net from the score net's config, the fake score net) on the meta device,
then given fake tensors (FakeTensorMode: shapes, dtypes and devices, no data) on a pretend GPU, and each step runs
the training task's own loss (`auxiliary_loss`, `generator_step_loss`) under the configuration's autocast. Counted:

- state: the weights of every network the method holds (generator, its EMA copy, the auxiliary net, VSD's frozen
  teacher), Adam's two fp32 moments and step count per parameter that gets a gradient, and, during a step, the
  gradients of the net it updates (fp32);
- per step, the tensors kept for backward (saved_tensors_hooks; one count per storage, by dtype), and every
  storage the step's operations make, from allocation until it is freed: the peak during the loss and what is
  still live when it returns (the saved tensors, the step's random draws, the outputs).

Each configuration is counted twice for DiffRatio: with its params' ratio net, and with a lighter one that keeps the
first `--light-fraction` of the teacher's encoder blocks (train.ratio_net.encoder_blocks, rounded; 0.6 is the
digits' 3 of 5, whose quality docs/memory.md measures over seeds).

Model of the peak: a step peaks at state + max(peak during the loss, live at its end + the updated net's
gradients); the second term is the start of backward, counted as if every gradient were allocated before any
saved tensor is freed. A method's peak is its larger step's. Not modelled: the caching allocator's rounding and
fragmentation, cuDNN and cuBLAS workspaces, the tensors a backward kernel makes for itself, the CUDA context,
and the training set when it is kept on the GPU (the same for both methods).

Fake CUDA tensors run a forward pass but not a backward one (the autograd engine asks the device), so a loss that
differentiates inside itself (the R1 penalty, the `normalized` weighting) runs on fake CPU tensors instead, as a
CPU run executes it (fp32 only). On the pretend GPU, autocast is CUDA's own policy (switched on without its check
for a device) and attention is the kernel PyTorch picks on one (see `CudaAttention`).
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.autograd.graph import saved_tensors_hooks
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from pipeline.artifacts import write_json
from pipeline.config import Params, load_params
from pipeline.datasets.encoders import IdentityEncoder
from pipeline.datasets.training_data import TrainingData
from pipeline.errors import PipelineError
from pipeline.experiments.benchmark import PUBLISHED_TEACHERS, cpu_model
from pipeline.networks.models import build_denoiser, denoiser_config
from pipeline.networks.published import mp_layers
from pipeline.networks.published.convert import published_config
from pipeline.networks.ratio_net import RatioNet, encoder_block_count
from pipeline.networks.unet import count_parameters
from pipeline.noise_levels import SIGMA_DATA
from pipeline.randomness import Draws
from pipeline.runtime import Runtime
from pipeline.training.methods import build_task
from pipeline.training.one_step import OneStepTraining

OUT = "metrics/memory"  # .json and .md
LIGHT_FRACTION = 0.6  # of the encoder's blocks the lighter ratio net keeps: the digits' 3 of 5
BATCHES = (1, 8, 32, 64, 128)
GiB = 2**30


def _edm2(channels: int, dropout: float) -> tuple[str, dict]:
    return "Precond", {"img_resolution": 64, "img_channels": 4, "label_dim": 1000, "dropout": dropout,
                       "model_channels": channels}


NCSNPP = ("VEPrecond", {  # EDM's edm-cifar10-32x32-uncond-ve.pkl
    "img_resolution": 32, "img_channels": 3, "label_dim": 0, "augment_dim": 9, "dropout": 0.13,
    "model_type": "SongUNet", "embedding_type": "fourier", "encoder_type": "residual", "decoder_type": "standard",
    "channel_mult_noise": 2, "resample_filter": [1, 3, 3, 1], "channel_mult": [2, 2, 2], "model_channels": 128})
# name: (params file whose training settings it runs under, the published teacher's class and kwargs, or None:
# that file's own pretrain network). The EDM2 sizes are NVlabs' edm2-img512-{xs,...,xxl} constructor kwargs.
CONFIGURATIONS: dict[str, tuple[str, tuple[str, dict] | None]] = {
    "default": ("params.yaml", None),
    "photos": ("presets/photos.yaml", None),
    "cifar10-ddpmpp": ("presets/cifar10.yaml", PUBLISHED_TEACHERS["edm-cifar10-32x32-uncond-vp.pkl"]),
    "cifar10-ncsnpp": ("presets/cifar10.yaml", NCSNPP),
    "imagenet64-adm": ("presets/imagenet64.yaml", PUBLISHED_TEACHERS["edm-imagenet-64x64-cond-adm.pkl"]),
    **{f"imagenet512-edm2-{size}": ("presets/imagenet512.yaml", _edm2(channels, dropout)) for size, channels, dropout
       in (("xs", 128, 0.0), ("s", 192, 0.0), ("m", 256, 0.1), ("l", 320, 0.1), ("xl", 384, 0.1),
           ("xxl", 448, 0.1))},
}
SPACE = {"params.yaml": (8, 1, 10), "presets/photos.yaml": (16, 3, 2)}  # resolution, channels, classes of the data


# --- shape-only execution -----------------------------------------------------------------------------------------

_FAKE: FakeTensorMode | None = None


def fake_mode() -> FakeTensorMode:
    """One FakeTensorMode for the process: a fake tensor works only under the mode that made it, and the
    networks' fake weights outlive a step."""
    global _FAKE
    if _FAKE is None:
        _FAKE = FakeTensorMode()
    return _FAKE


def to_fake(module: nn.Module, device: torch.device) -> nn.Module:
    """Replace every parameter and buffer of `module` (built on the meta device) by a fake tensor of the same
    shape, strides and dtype on `device`. (A module of fake tensors cannot be moved with .to().)"""
    with fake_mode():
        for sub in module.modules():
            for name, p in list(sub.named_parameters(recurse=False)):
                fake = torch.empty_strided(p.shape, p.stride(), dtype=p.dtype, device=device)
                setattr(sub, name, nn.Parameter(fake, requires_grad=p.requires_grad))
            for name, b in list(sub.named_buffers(recurse=False)):
                if b is not None:
                    setattr(sub, name, torch.empty_strided(b.shape, b.stride(), dtype=b.dtype, device=device))
    return module


class Allocations(TorchDispatchMode):
    """Every storage an operation makes while the mode is on, from allocation until it is freed: the bytes live
    now, and after each operation (the timeline, whose maximum is the peak). A storage an operation returns that
    one of its inputs already had (a view, an in-place result) is not new."""

    def __init__(self):
        super().__init__()
        self.sizes: dict[int, int] = {}  # live storages (by address) -> bytes
        self.now = 0
        self.timeline: list[int] = []

    def _free(self, key: int) -> None:
        self.now -= self.sizes.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage()._cdata for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = storage._cdata
            if key not in self.sizes and key not in inputs:
                self.sizes[key] = storage.nbytes()
                self.now += storage.nbytes()
                weakref.finalize(storage, self._free, key)
        self.timeline.append(self.now)
        return out


class CudaAttention(TorchFunctionMode):
    """F.scaled_dot_product_attention as PyTorch runs it on a GPU. A fake CUDA tensor cannot ask the device which
    kernels it has, so PyTorch would fall back to the unfused product (an L x L matrix per head); on a GPU its
    priority order (torch._C._get_sdp_priority_order()) picks flash attention for bf16/fp16 and memory-efficient
    attention for fp32, for the unmasked 4-D calls with a contiguous head dim that the networks make there."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention or kwargs or len(args) != 3:
            return func(*args, **kwargs)
        q, k, v = args
        if not (q.is_cuda and all(t.dim() == 4 and t.stride(-1) == 1 for t in args)):
            return func(*args, **kwargs)
        if torch.is_autocast_enabled("cuda"):  # attention is one of autocast's lower-precision operations
            q, k, v = (t.to(torch.get_autocast_dtype("cuda")) for t in (q, k, v))
        if q.dtype in (torch.float16, torch.bfloat16):
            return torch.ops.aten._scaled_dot_product_flash_attention(q, k, v)[0]
        grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
        return torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, grad)[0]


@contextlib.contextmanager
def cuda_autocast(enabled: bool) -> Iterator[None]:
    """What torch.autocast("cuda", torch.bfloat16) does on entry and exit (Runtime.autocast), without its check
    that a GPU is visible: fake CUDA tensors need none. Casts of weights are cached until the exit, as there."""
    if not enabled:
        yield
        return
    before = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"), torch.is_autocast_cache_enabled()
    torch.set_autocast_enabled("cuda", True)
    torch.set_autocast_dtype("cuda", torch.bfloat16)
    torch.autocast_increment_nesting()
    torch.set_autocast_cache_enabled(True)
    try:
        yield
    finally:
        if torch.autocast_decrement_nesting() == 0:
            torch.clear_autocast_cache()
        torch.set_autocast_enabled("cuda", before[0])
        torch.set_autocast_dtype("cuda", before[1])
        torch.set_autocast_cache_enabled(before[2])


@contextlib.contextmanager
def no_cached_tensors() -> Iterator[None]:
    """EDM2's resampling filter is cached per device and dtype: one made under the fake mode must never reach real
    code (nor a real one fake code), so the cache starts and ends empty."""
    mp_layers._filter.cache_clear()
    try:
        yield
    finally:
        mp_layers._filter.cache_clear()


def gradient_leaves(loss: torch.Tensor) -> list[torch.Tensor]:
    """The leaf tensors a backward pass from `loss` would give gradients (its graph's AccumulateGrad nodes)."""
    seen, stack, leaves = set(), [loss.grad_fn], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if hasattr(node, "variable"):
            leaves.append(node.variable)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return leaves


def trace(loss_fn: Callable[[Draws], torch.Tensor], batch: int, device: torch.device, bf16: bool) -> dict:
    """Run `loss_fn` on fresh draws of `batch` rows (under the fake mode) and count what it allocates and keeps
    for backward: the saved bytes by dtype, the live bytes of its own allocations after each operation and when
    it returns (the draws included: TrainingTask.update holds them until after backward), and the leaves it
    reaches."""
    saved: dict[int, tuple[torch.dtype, weakref.ref]] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        saved.setdefault(storage._cdata, (t.dtype, weakref.ref(storage)))
        return t

    allocations = Allocations()
    with (no_cached_tensors(), fake_mode(), allocations, CudaAttention(), saved_tensors_hooks(pack, lambda t: t),
          warnings.catch_warnings()):
        warnings.filterwarnings("ignore", "CUDA is not available")  # the ratio net's fp32 head: autocast(enabled=False)
        draws = Draws(batch, device)
        with cuda_autocast(bf16):
            loss = loss_fn(draws)
        by_dtype: dict[str, int] = {}
        for key, (dtype, storage) in saved.items():
            if key in allocations.sizes and storage() is not None:  # made by this step, still live (not a weight)
                name = str(dtype).removeprefix("torch.")
                by_dtype[name] = by_dtype.get(name, 0) + allocations.sizes[key]
        result = {"saved": by_dtype, "timeline": np.array(allocations.timeline, dtype=np.int64),
                  "live_after_loss": allocations.now, "leaves": gradient_leaves(loss)}
        del loss, draws
    return result


def step_counts(loss_fn: Callable[[Draws], torch.Tensor], device: torch.device, bf16: bool, batches: list[int],
                unit: int = 1) -> tuple[dict[int, dict], list[torch.Tensor]]:
    """A step's counts at every batch of `batches` and the leaves it reaches. Every storage a step makes has one
    size or one proportional to the batch, and its operations do not depend on it, so each count after each
    operation is affine in the batch: traced at batches `unit` and 2 `unit`, the counts at any multiple of `unit`
    follow, the peak as the largest of the extrapolated timeline. `unit` is k when the step takes one row in k
    (R1 on a subsample: ceil(batch / k) rows, affine over multiples of k only); a batch that is no multiple of it
    is traced directly. Checked against a direct trace at the largest batch; a mismatch is an error."""
    two = trace(loss_fn, 2 * unit, device, bf16)  # first: a module's first call may make what it caches
    one = trace(loss_fn, unit, device, bf16)
    if len(two["timeline"]) != len(one["timeline"]):
        two = trace(loss_fn, 2 * unit, device, bf16)
    if len(two["timeline"]) != len(one["timeline"]):
        raise PipelineError(f"the counts are not affine in the batch: the step makes {len(one['timeline'])} "
                            f"operations at batch {unit} and {len(two['timeline'])} at batch {2 * unit}")

    def at(n: int) -> dict:
        def line(a, b):
            return a + (n // unit - 1) * (b - a)
        saved = {k: int(line(one["saved"].get(k, 0), two["saved"].get(k, 0))) for k in one["saved"] | two["saved"]}
        return {"saved": saved, "saved_total": sum(saved.values()),
                "loss_peak": int(line(one["timeline"], two["timeline"]).max()),
                "live_after_loss": int(line(one["live_after_loss"], two["live_after_loss"]))}

    def traced(n: int) -> dict:
        direct = trace(loss_fn, n, device, bf16)
        return {"saved": direct["saved"], "saved_total": sum(direct["saved"].values()),
                "loss_peak": int(direct["timeline"].max()), "live_after_loss": direct["live_after_loss"]}
    counts = {n: at(n) if n % unit == 0 else traced(n) for n in batches}
    largest = max(batches)
    if largest > 2 * unit and largest % unit == 0 and (direct := traced(largest)) != counts[largest]:
        raise PipelineError(f"the counts are not affine in the batch: extrapolated {counts[largest]}, traced "
                            f"{direct} at batch {largest}")
    return counts, one["leaves"]


# --- the ledger ---------------------------------------------------------------------------------------------------

def settings(path: str, batch: int) -> Params:
    """The params of `path` for one process at a per-GPU batch of `batch` rows in one pass."""
    params = load_params(path)
    compute = params.compute.model_copy(update={"processes": 1})
    train = params.train.model_copy(update={"batch_size": batch, "batch_per_process": None})
    return params.model_copy(update={"compute": compute, "train": train})


def score_config(path: str, params: Params, architecture: tuple[str, dict] | None) -> dict:
    if architecture is not None:
        class_name, kwargs = architecture
        return published_config(class_name, kwargs, "")
    resolution, channels, classes = SPACE[path]
    return denoiser_config(params.pretrain.network, resolution, channels,
                           classes if params.pretrain.class_conditional else 0, SIGMA_DATA)


def device_for(params: Params) -> torch.device:
    """The pretend GPU, unless DiffRatio's loss differentiates inside itself (R1, the `normalized` weighting):
    then the CPU, in fp32."""
    inner = params.train.ratio_r1 > 0 or params.train.weighting == "normalized"
    if inner and params.compute.precision != "fp32":
        raise PipelineError("R1 and the normalized weighting differentiate inside the loss, which shape-only CUDA "
                            "tensors cannot run; the ledger runs them on CPU tensors, in fp32 only: set "
                            "compute.precision: fp32 for this configuration")
    return torch.device("cpu" if inner else "cuda")


def build(params: Params, config: dict, method: str, device: torch.device
          ) -> tuple[OneStepTraining, nn.Module]:
    """The task of `method` as `build_task` makes it (on the meta device), then on fake tensors; and the teacher."""
    meta = torch.device("meta")
    runtime = Runtime(meta, params.compute)
    with torch.device(meta):
        teacher = build_denoiser(config).eval().requires_grad_(False)
        shape = (config["channels"], config["resolution"], config["resolution"])
        data = TrainingData(IdentityEncoder(), [{"x": torch.empty(2, *shape)}], torch.zeros(2, dtype=torch.long),
                            meta, on_device=True)
        task, _ = build_task(params.model_copy(update={"method": method}), teacher, config, data, runtime)
    for net in (*task.networks.values(), *task.ema.values(), *([task.teacher] if method == "vsd" else [])):
        to_fake(net, device)
    with fake_mode():
        data.stored = {"x": torch.empty(2, *shape, device=device)}
        data.labels = torch.zeros(2, dtype=torch.long, device=device)
    data.device = device
    return task, teacher


def tensor_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def step_losses(task: OneStepTraining) -> dict[str, Callable[[Draws], torch.Tensor]]:
    """Each step's loss as OneStepTraining.step and TrainingTask.update run it (one pass): the auxiliary net's,
    then the generator's with the auxiliary net frozen."""
    aux = task.networks[task.auxiliary]

    def auxiliary(draws: Draws) -> torch.Tensor:
        aux.requires_grad_(True)
        return task.auxiliary_loss(draws)[0]

    def generator(draws: Draws) -> torch.Tensor:
        aux.requires_grad_(False)
        return task.generator_step_loss(draws)[0]
    return {task.auxiliary: auxiliary, "generator": generator}


def batch_unit(task: OneStepTraining) -> int:
    """The batch over which a step's counts are affine: R1 on one real row in k takes ceil(batch / k) rows."""
    p = task.p
    return p.ratio_r1_subsample if task.auxiliary == "ratio" and p.ratio_r1 > 0 else 1


def method_ledger(task: OneStepTraining, batches: list[int], device: torch.device, bf16: bool) -> dict[int, dict]:
    """One method's state, steps and peak (see the module's model of the peak) at each batch."""
    counts, updated = {}, {}
    for name, loss_fn in step_losses(task).items():
        counts[name], leaves = step_counts(loss_fn, device, bf16, batches, batch_unit(task))
        own = {id(p) for p in task.networks[name].parameters()}
        updated[name] = [t for t in leaves if id(t) in own]
    weights = {name: tensor_bytes(net) for name, net in task.networks.items()}
    weights["generator_ema"] = tensor_bytes(task.ema["generator"])
    if hasattr(task, "teacher"):
        weights["teacher"] = tensor_bytes(task.teacher)
    gradients = {name: sum(t.numel() * t.element_size() for t in leaves) for name, leaves in updated.items()}
    # AdamW keeps two moments in the parameter's dtype (fp32) and a 4-byte step count for each parameter that
    # has received a gradient (fused on CUDA: the count is a device tensor too)
    adam = {name: 2 * gradients[name] + 4 * len(leaves) for name, leaves in updated.items()}
    state = sum(weights.values()) + sum(adam.values())
    out = {}
    for batch in batches:
        steps = {name: {**counts[name][batch], "gradients": gradients[name]} for name in counts}
        for step in steps.values():
            backward = step["live_after_loss"] + step["gradients"]
            step["peak"] = state + max(step["loss_peak"], backward)
            step["peak_at"] = "loss" if step["loss_peak"] >= backward else "backward"
        peak_step = max(steps, key=lambda name: steps[name]["peak"])
        out[batch] = {"weights": weights, "adam": adam, "state": state, "steps": steps,
                      "peak": steps[peak_step]["peak"], "peak_step": peak_step}
    return out


def lighter(params: Params, config: dict, fraction: float) -> tuple[Params, int, int]:
    """`params` with a ratio net that keeps round(fraction x n) of the teacher encoder's n blocks (at least one)."""
    with torch.device("meta"):
        blocks = encoder_block_count(RatioNet(config, "spatial", "none").encoder)
    kept = max(1, round(fraction * blocks))
    ratio_net = params.train.ratio_net.model_copy(update={"encoder_blocks": kept})
    return params.model_copy(update={"train": params.train.model_copy(update={"ratio_net": ratio_net})}), kept, blocks


def configuration_ledger(name: str, batches: list[int], light_fraction: float = LIGHT_FRACTION) -> dict:
    """Both methods' ledgers of one configuration at each batch (DiffRatio's also with the lighter ratio net), and
    DiffRatio's peak over VSD's."""
    path, architecture = CONFIGURATIONS[name]
    params = settings(path, max(batches))
    config = score_config(path, params, architecture)
    device, bf16 = device_for(params), params.compute.precision == "bf16"
    light_params, kept, blocks = lighter(params, config, light_fraction)
    tasks = {method: build(params, config, method, device) for method in ("diffratio", "vsd")}
    tasks["diffratio_light"] = build(light_params, config, "diffratio", device)
    teacher = tasks["vsd"][1]
    ledgers = {method: method_ledger(task, batches, device, bf16) for method, (task, _) in tasks.items()}
    r1 = params.train.ratio_r1
    if r1 > 0:  # the ratio step again without the penalty: what R1's double backward adds
        task = tasks["diffratio"][0]
        task.p = task.p.model_copy(update={"ratio_r1": 0.0})
        plain, _ = step_counts(step_losses(task)["ratio"], device, bf16, batches)
        task.p = task.p.model_copy(update={"ratio_r1": r1})
        for batch in batches:
            step = ledgers["diffratio"][batch]["steps"]["ratio"]
            step["r1_saved"] = step["saved_total"] - plain[batch]["saved_total"]
            step["r1_loss_peak"] = step["loss_peak"] - plain[batch]["loss_peak"]
    own = architecture is None or architecture == PUBLISHED_TEACHERS.get(params.teacher.checkpoint or "")
    out = {"params": path, "preset_network": own, "architecture": architecture[0] if architecture else "project U-Net",
           "kwargs": architecture[1] if architecture else params.pretrain.network.model_dump(),
           "teacher_parameters": sum(p.numel() for p in teacher.parameters()),
           "precision": params.compute.precision, "channels_last": params.compute.channels_last,
           "device_model": device.type, "ratio_r1": r1,
           "ratio_parameters": count_parameters(tasks["diffratio"][0].networks["ratio"]),
           "light_ratio": {"encoder_blocks": kept, "of_blocks": blocks,
                           "parameters": count_parameters(tasks["diffratio_light"][0].networks["ratio"])},
           "batches": {}}
    for batch in batches:
        vsd, row = ledgers["vsd"][batch], {}
        for method in ("diffratio", "diffratio_light"):
            ledger = row[method] = ledgers[method][batch]
            # the train stage keeps the teacher it loaded referenced for the whole run, DiffRatio's too (never
            # evaluated)
            ledger["idle_teacher"] = tensor_bytes(teacher)
            ledger["peak_with_idle_teacher"] = ledger["peak"] + ledger["idle_teacher"]
            row[f"{method}_over_vsd"] = ledger["peak"] / vsd["peak"]
            row[f"{method}_over_vsd_with_idle_teacher"] = ledger["peak_with_idle_teacher"] / vsd["peak"]
        out["batches"][str(batch)] = {"vsd": vsd, **row}
    return out


# --- report -------------------------------------------------------------------------------------------------------

def _gib(n: int) -> str:
    return f"{n / GiB:.2f}"


def _step(ledger: dict, name: str) -> str:
    return f"{_gib(ledger['steps'][name]['saved_total'])} / {_gib(ledger['steps'][name]['peak'])}"


def markdown(result: dict) -> str:
    configs = result["configurations"]
    batches = sorted({int(b) for c in configs.values() for b in c["batches"]})
    lines = [(f"Memory ledger ({result['machine']}, {result['seconds']:.0f} s): each method's modelled peak per GPU, "
              "DiffRatio / VSD. `python -m pipeline.experiments.memory_ledger`; see docs/memory.md."), "",
             "| configuration | training settings | precision | " + " | ".join(f"batch {b}" for b in batches) + " |",
             "|---|---|---|" + "---:|" * len(batches)]
    for name, c in configs.items():
        cells = [f"{c['batches'][str(b)]['diffratio_over_vsd']:.2f}" if str(b) in c["batches"] else "" for b in batches]
        settings_of = c["params"] + ("" if c["preset_network"] else ", another network")
        lines.append(f"| {name} | {settings_of} | {c['precision']} | " + " | ".join(cells) + " |")
    lines += ["", ("The same with the lighter ratio net (the teacher's encoder cut after its first k of n blocks, "
                   "train.ratio_net.encoder_blocks: k); its parameters and the default ratio net's as a share of the "
                   "teacher's; a peak at most 0.6x VSD's in bold."), "",
              "| configuration | k of n | ratio net / teacher, light (default) | " +
              " | ".join(f"batch {b}" for b in batches) + " |", "|---|---|---|" + "---:|" * len(batches)]
    for name, c in configs.items():
        light = c["light_ratio"]
        cells = []
        for b in batches:
            ratio = c["batches"].get(str(b), {}).get("diffratio_light_over_vsd")
            cells.append("" if ratio is None else f"**{ratio:.2f}**" if ratio <= 0.6 else f"{ratio:.2f}")
        lines.append(f"| {name} | {light['encoder_blocks']} of {light['of_blocks']} | "
                     f"{light['parameters'] / c['teacher_parameters']:.2f} "
                     f"({c['ratio_parameters'] / c['teacher_parameters']:.2f}) | " + " | ".join(cells) + " |")
    lines += ["", ("Components in GiB: state (weights + Adam), then per step the saved activations and the step's "
                   "peak; the method's peak; DiffRatio's with the idle teacher the train stage holds."), "",
              ("| configuration | batch | DiffRatio state | ratio step saved / peak | generator step saved / peak "
               "| DiffRatio peak | VSD state | fake-score step saved / peak | generator step saved / peak | VSD peak "
               "| DiffRatio / VSD | with idle teacher |"), "|---|---:|" + "---:|" * 10]
    for name, c in configs.items():
        for batch, row in c["batches"].items():
            d, v = row["diffratio"], row["vsd"]
            lines.append(f"| {name} | {batch} | {_gib(d['state'])} | {_step(d, 'ratio')} | {_step(d, 'generator')} | "
                         f"{_gib(d['peak'])} | {_gib(v['state'])} | {_step(v, 'fake_score')} | "
                         f"{_step(v, 'generator')} | {_gib(v['peak'])} | {row['diffratio_over_vsd']:.2f} | "
                         f"{row['diffratio_over_vsd_with_idle_teacher']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="*", default=list(CONFIGURATIONS), choices=list(CONFIGURATIONS))
    parser.add_argument("--batches", nargs="*", type=int, default=list(BATCHES), help="per-GPU batches")
    parser.add_argument("--out", default=OUT, help="writes OUT.json and OUT.md")
    parser.add_argument("--light-fraction", type=float, default=LIGHT_FRACTION,
                        help="the share of the teacher encoder's blocks the lighter ratio net keeps")
    args = parser.parse_args()
    if not 0 < args.light_fraction <= 1:
        raise SystemExit(f"error: --light-fraction is {args.light_fraction}: give a share of the blocks in (0, 1]")
    started = time.perf_counter()
    result = {"machine": f"CPU ({cpu_model()}), {torch.get_num_threads()} threads, torch {torch.__version__}, "
                         f"Python {platform.python_version()}", "configurations": {}}
    try:
        for name in args.configs:
            began = time.perf_counter()
            result["configurations"][name] = configuration_ledger(name, sorted(args.batches), args.light_fraction)
            print(f"{name}: {time.perf_counter() - began:.0f} s", flush=True)
    except PipelineError as exc:
        raise SystemExit(f"error: {exc}") from None
    result["seconds"] = time.perf_counter() - started
    write_json(f"{args.out}.json", result)
    Path(f"{args.out}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
