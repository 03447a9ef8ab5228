"""Sharded data across processes: encode and feature statistics give the same result for any number of
processes (simulated here by threads that exchange through a shared group), and the stages run end to end."""

import threading
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import yaml

from pipeline.datasets.encoders import IdentityEncoder, load_encoded, make_encoder, shard_name, write_encoded
from pipeline.datasets.prepared import TRAIN, load_prepared
from pipeline.evaluation.frechet import FeatureStats
from pipeline.runtime import Runtime
from pipeline.stage import run_stage
from stages import encode as encode_stage
from stages import prepare as prepare_stage
from tests.helpers import COMPUTE, HELD, prepared, random_images

CPU = torch.device("cpu")


class Group:
    """What torch.distributed's collectives do, between threads: every rank posts, all read."""

    def __init__(self, world: int):
        self.slots: list = [None] * world
        self.door = threading.Barrier(world, timeout=60)

    def exchange(self, rank: int, obj: object) -> list:
        self.slots[rank] = obj
        self.door.wait()
        out = list(self.slots)
        self.door.wait()  # nobody posts again before everyone has read
        return out


@dataclass(frozen=True)
class ThreadRuntime(Runtime):
    group: Group | None = None

    def gather(self, obj: object) -> list:
        return self.group.exchange(self.rank, obj)

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        parts = self.group.exchange(self.rank, tensor.clone())
        tensor.copy_(torch.stack(parts).sum(0))
        return tensor

    def barrier(self) -> None:
        self.group.exchange(self.rank, None)


def run_ranks(world: int, body) -> list:
    """body(runtime) on `world` threads, one per rank; their results in rank order (a failure aborts all)."""
    group, results, errors = Group(world), [None] * world, []

    def run(rank: int) -> None:
        try:
            results[rank] = body(ThreadRuntime(CPU, COMPUTE, rank, world, group))
        except Exception as exc:  # noqa: BLE001 (re-raised below, after every rank stopped)
            errors.append(exc)
            group.door.abort()

    threads = [threading.Thread(target=run, args=(rank,)) for rank in range(world)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def encoded_files(folder) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(folder.iterdir())}


@pytest.mark.parametrize("encoder", ["identity", "sd-vae"])
def test_encode_is_the_same_for_any_number_of_processes(encoder, tiny_vae_dir, tmp_path):  # noqa: F811
    images, labels = random_images(n=40), np.arange(40) % 4
    data = prepared(images, labels, 12, HELD)  # 35 training images: encode shards of 12, 12, 11
    settings = {"encoder": encoder, "vae": str(tiny_vae_dir)}
    outputs = {}
    for world in (1, 2, 4):  # 4: one process gets no shard
        out = tmp_path / f"enc{world}"
        configs = run_ranks(world, lambda rt, out=out: write_encoded(out, data, make_encoder(settings, CPU), 5, rt))
        assert all(config == configs[0] for config in configs)
        outputs[world] = encoded_files(out)
    assert list(outputs[1]) == ["encoder.json", shard_name(0), shard_name(1), shard_name(2)]
    assert outputs[2] == outputs[1] and outputs[4] == outputs[1]  # byte for byte
    assert sorted(f.name for f in tmp_path.iterdir()) == ["enc1", "enc2", "enc4"]  # no temporary folder left


def test_a_failing_process_leaves_no_encoded_output(tmp_path):
    data = prepared(random_images(n=30, channels=1), np.arange(30) % 10, 10)

    class Failing(IdentityEncoder):
        def encode(self, images, device):
            raise RuntimeError("out of memory")

    def body(rt):
        return write_encoded(tmp_path / "enc", data, Failing() if rt.rank == 1 else IdentityEncoder(), 5, rt)

    with pytest.raises(RuntimeError, match="out of memory"):
        run_ranks(2, body)
    assert not (tmp_path / "enc").exists()  # at most a hidden temporary folder, which the next run removes
    run_ranks(2, lambda rt: write_encoded(tmp_path / "enc", data, IdentityEncoder(), 5, rt))
    assert [p.name for p in tmp_path.iterdir()] == ["enc"]


def test_feature_stats_merge_over_processes():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(500, 5)) @ rng.normal(size=(5, 5)) + 100
    shares = [features[:3], features[3:400], features[:0], features[400:]]  # rank 2 saw nothing

    def body(rt):
        stats = FeatureStats()
        for start in range(0, len(shares[rt.rank]), 7):
            stats.add(shares[rt.rank][start : start + 7])
        return stats.merge(rt)

    for stats in run_ranks(4, body):
        mu, sigma = stats.mu_sigma()
        assert stats.count == 500
        np.testing.assert_allclose(mu, features.mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(sigma, np.cov(features, rowvar=False), rtol=1e-10)


def test_prepare_and_encode_stages(workdir, params_dict):
    params_dict["prepare"]["shard_size"] = 500  # digits: 1,297 training + 500 held-out images
    (workdir / "params.yaml").write_text(yaml.safe_dump(params_dict))
    run_stage(prepare_stage.main)
    run_stage(encode_stage.main, distributed=True)
    data = load_prepared("data/prepared")
    assert data.manifest["shards"] == [500, 500, 500, 297]
    encoder, stored, labels = load_encoded("data/encoded")
    assert encoder.config["shards"] == [500, 500, 297] and encoder.config["num_images"] == data.count(TRAIN)
    images, expected_labels = data.part(TRAIN)
    torch.testing.assert_close(stored["pixels"], IdentityEncoder().encode(images, CPU)["pixels"], rtol=0, atol=0)
    np.testing.assert_array_equal(labels.numpy(), expected_labels)
