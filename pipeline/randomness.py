"""Every random number of the pipeline comes from here: the named seed streams, the draws of one global batch,
and each process's own stream.

Streams. A stage never seeds a generator with a bare number: it asks for a named stream of a seed
(`rng(name, seed, *sub)` for numpy, `seed_torch(name, seed, *sub)` or `seed_of` for torch's generators), and
`STREAMS` gives each name its own key, so no two purposes share a stream. A `sub` key splits a stream per item
(per record, per set, per output) so that any subset draws the same numbers. The one exception is the
per-sample generation noise: sample i of a row seeded `seed` draws from torch.Generator(seed + i), the
convention of NVlabs' generation scripts, so that a sample's noise depends on its seed only.

Draws. Within a training step every random tensor is drawn for the whole global batch from the generator all
processes share, and each pass of each process takes its rows (`Draws`), so a step sees the same samples,
noise and labels for any split of the batch. What the networks draw themselves (dropout masks) comes, with
several processes, from each process's own stream (`ProcessStream`), so that processes do not mask their rows
alike.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import torch

# name -> key of numpy's SeedSequence([seed, *key, *sub]). Keys 2-8 are those the committed figures were made
# with (they name the same draws); a new stream takes the next free number.
STREAMS: dict[str, tuple[int, ...]] = {
    "data_split": (),  # prepare: the seeded subset and the held-out split (SeedSequence([seed]))
    "evaluation_draws": (2,),  # the real floor's and the battery's label-matched sets of held-out images
    "reference_features": (3,),  # the training images whose features are the real set of KID, PRDC, copies
    "offline_subset": (4,),  # the training images the offline feature nets learn from (reference.max_images)
    "verifier_parts": (5,),  # the held-out split cut into validation, calibration and test images
    "verifier_training_rows": (6,),  # the training-split images the verifier reports memorisation on
    "verifier_samples": (7,),  # torch: the verifier stage's generated samples, posterior samples and noise
    "verifier_training": (8,),  # torch: the verifier's updates (train.seed)
    "battery_class_order": (9,),  # the battery's order of dropped classes
    "battery_sets": (10,),  # per floor set: the battery's pixel noise and thinned images
    "scaling_picks": (11,),  # per output: the Gumbel draws of the importance resampling
    "photo_crops": (12,),  # per photograph and crop side: the crop grid's offset
    "synthetic_labels": (13,),
    "synthetic_images": (14,),  # per record
    "pretrain_init": (15,),  # torch: the score net's initial weights
    "pretrain_training": (16,),  # torch: pretraining's batches, noise levels and noise
    "stage2_init": (17,),  # torch: the fresh parts of stage 2 (a random generator; train.seed)
    "stage2_training": (18,),  # torch: stage 2's batches, latents, noise levels and noise (train.seed)
    "offline_init": (19,),  # torch, per offline net (0 classifier, 1 autoencoder): its initial weights
    "offline_batches": (20,),  # torch, per offline net: the order of its minibatches
    "kid_subsets": (21,),  # numpy's global generator, per scored set: KID's reference subsets
    "gradient_bias": (22,),  # torch: the analytic gradient-bias experiment, per seed
    "stage2_diagnostics": (23,),  # torch, per time (images seen): the draws of stage 2's diagnostics
    "stage2_diagnostic_images": (24,),  # the held-out images stage 2's diagnostics score
    "toy2d": (25,),  # torch: the 2-D toy (experiments/toy2d.py), per seed
    "benchmark_features": (26,),  # the Gaussian features `benchmark --scoring` scores
    "critic_by_density": (27,),  # torch: the latents and noise of experiments/critic_by_density.py
}


def _key(stream: str, seed: int, sub: tuple[int, ...]) -> list[int]:
    if stream not in STREAMS:
        raise KeyError(f"no seed stream named {stream!r}: register it in pipeline.randomness.STREAMS")
    return [int(seed), *STREAMS[stream], *map(int, sub)]


def rng(stream: str, seed: int, *sub: int) -> np.random.Generator:
    """numpy's generator of `stream` for `seed` (and the item `sub`)."""
    return np.random.default_rng(_key(stream, seed, sub))


def seed_of(stream: str, seed: int, *sub: int) -> int:
    """An integer seed (below 2^32, which numpy's legacy seeding also takes) for torch's generators from `stream`
    for `seed` (and the item `sub`)."""
    return int(rng(stream, seed, *sub).integers(2**32))


def seed_torch(stream: str, seed: int, *sub: int) -> None:
    """Seed torch's global generators (CPU and every CUDA device) from `stream`."""
    torch.manual_seed(seed_of(stream, seed, *sub))


class Draws:
    """The random tensors of one global batch of `size`, handed out by rows.

    The k-th call of a pass returns the selected rows of the k-th tensor, drawn on first use; later passes
    make the same calls in the same order (they run the same code) and get their rows of the same tensors.
    With one pass over the whole batch this is exactly drawing from torch's RNG in program order.
    """

    def __init__(self, size: int, device: torch.device,
                 shared: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext):
        self.size, self.device, self.shared = size, device, shared  # `shared`: where the draws are made
        self._tensors: list[torch.Tensor] = []
        self.select(slice(0, size))

    def select(self, rows: slice) -> Draws:
        self.rows, self._calls = rows, 0
        return self

    @property
    def n(self) -> int:
        """The number of rows handed out."""
        return len(range(*self.rows.indices(self.size)))

    def _take(self, draw: Callable[[int], torch.Tensor]) -> torch.Tensor:
        if self._calls == len(self._tensors):
            with self.shared():
                self._tensors.append(draw(self.size))
        tensor = self._tensors[self._calls]
        self._calls += 1
        return tensor[self.rows]

    def randn(self, *shape: int) -> torch.Tensor:
        """N(0, 1) of shape [rows, *shape]."""
        return self._take(lambda n: torch.randn(n, *shape, device=self.device))

    def rand(self) -> torch.Tensor:
        """U(0, 1) per row."""
        return self._take(lambda n: torch.rand(n, device=self.device))

    def stratified(self) -> torch.Tensor:
        """U(0, 1) per row, stratified over the global batch: one draw in each of its `size` equal strata of [0, 1),
        the strata in random order."""
        return self._take(lambda n: (torch.randperm(n, device=self.device) + torch.rand(n, device=self.device)) / n)

    def randint(self, high: int) -> torch.Tensor:
        """Integers in [0, high) per row, drawn from the CPU generator and moved to the device."""
        return self._take(lambda n: torch.randint(0, high, (n,))).to(self.device, non_blocking=True)


class ProcessStream:
    """A stream of torch's global RNG that belongs to this process, beside the one all processes share.

    Inside `own()` the global RNG is this process's stream, seeded from the shared stream's state (without
    advancing it, so a resumed run draws the same) and the rank; `shared()` switches back to the shared
    stream for a block, and the shared stream continues where that block left it.
    """

    def __init__(self, device: torch.device, rank: int):
        self.cuda, self.rank = device if device.type == "cuda" else None, rank

    def _state(self) -> tuple:
        return torch.get_rng_state(), torch.cuda.get_rng_state(self.cuda) if self.cuda else None

    def _load(self, state: tuple) -> None:
        torch.set_rng_state(state[0])
        if self.cuda:
            torch.cuda.set_rng_state(state[1], self.cuda)

    @contextlib.contextmanager
    def own(self):
        self._shared = self._state()
        seed = int(torch.randint(2**62, (1,))) + self.rank
        torch.default_generator.manual_seed(seed)
        if self.cuda:
            with torch.cuda.device(self.cuda):
                torch.cuda.manual_seed(seed)
        try:
            yield
        finally:
            self._load(self._shared)

    @contextlib.contextmanager
    def shared(self):
        own = self._state()
        self._load(self._shared)
        try:
            yield
        finally:
            self._shared = self._state()
            self._load(own)
