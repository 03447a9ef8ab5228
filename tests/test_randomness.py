"""The seed streams: every draw of the pipeline comes from a named stream of pipeline.randomness, one purpose each."""

import ast
from pathlib import Path

import numpy as np
import pytest

from pipeline import randomness
from pipeline.randomness import STREAMS, rng, seed_of

ROOT = Path(__file__).resolve().parents[1]
CODE = sorted([*(ROOT / "pipeline").rglob("*.py"), *(ROOT / "stages").glob("*.py")])
REGISTRY_CALLS = {"rng", "seed_of", "seed_torch"}
# Seeding outside the registry, each with its reason. A new entry needs one too.
DIRECT_SEEDING = {
    ("pipeline/training/loop.py", "manual_seed"): "seeds the loop with the seed its stage took from a stream",
    ("pipeline/generation/verifier.py", "manual_seed"): "seeds the verifier's updates with the stage's stream seed",
    ("pipeline/generation/sampling.py", "manual_seed"): "the per-sample generation noise: sample i of seed s draws "
                                                        "from torch.Generator(s + i) (NVlabs' convention)",
    ("pipeline/evaluation/offline_nets.py", "manual_seed"): "the minibatch order, from an offline_batches seed",
    ("pipeline/evaluation/metrics.py", "seed"): "numpy's global generator, which clean-fid's KID draws from, "
                                               "seeded from kid_subsets",
    ("pipeline/networks/published/convert.py", "manual_seed"): "a fixed probe input for the conversion check",
    ("pipeline/experiments/benchmark.py", "manual_seed"): "timings: the weights' values do not matter",
    ("pipeline/experiments/gpu_check.py", "manual_seed"): "timings and numerics checks: fixed inputs",
    ("pipeline/experiments/preset_cost.py", "default_rng"): "timings: Inception's input images do not matter",
}


def calls(path: Path) -> list[ast.Call]:
    return [node for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Call)]


def name_of(call: ast.Call) -> str | None:
    return call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", None)


def test_every_stream_has_its_own_key():
    keys = list(STREAMS.values())
    assert len(set(keys)) == len(keys)
    assert len({np.random.default_rng([0, *k]).integers(2**62) for k in keys}) == len(keys)


def test_no_stream_serves_two_purposes():
    """Every call site asks for a stream (and literal item keys) no other call site asks for, and every
    registered stream is used."""
    sites: dict[tuple, list[str]] = {}
    for path in CODE:
        for call in calls(path):
            if name_of(call) in REGISTRY_CALLS and call.args and isinstance(call.args[0], ast.Constant):
                literal_subs = tuple(a.value for a in call.args[2:] if isinstance(a, ast.Constant))
                key = (call.args[0].value, literal_subs)
                sites.setdefault(key, []).append(f"{path.relative_to(ROOT)}:{call.lineno}")
    shared = {key: where for key, where in sites.items() if len(where) > 1}
    assert not shared, f"streams asked for in more than one place: {shared}"
    assert {name for name, _ in sites} == set(STREAMS), "registered streams that nothing uses, or unregistered ones"


def test_nothing_seeds_a_generator_outside_the_registry():
    found = set()
    for path in CODE:
        if path.name == "randomness.py":
            continue
        for call in calls(path):
            name = name_of(call)
            if name in ("default_rng", "manual_seed", "seed", "RandomState", "manual_seed_all"):
                found.add((str(path.relative_to(ROOT)), name))
    assert found <= set(DIRECT_SEEDING), f"seeding outside pipeline.randomness: {sorted(found - set(DIRECT_SEEDING))}"


def test_items_of_a_stream_differ_and_repeat():
    assert rng("scaling_picks", 0, 1).random() != rng("scaling_picks", 0, 2).random()
    assert rng("scaling_picks", 0, 1).random() == rng("scaling_picks", 0, 1).random()
    assert seed_of("kid_subsets", 3) < 2**32
    with pytest.raises(KeyError, match="register it"):
        randomness.rng("no_such_stream", 0)
