"""The reference every set is scored against, built once by the `reference` stage, and the real floor.

    data/reference/
      reference.json          feature spaces, protocol, classifier accuracy, the floor (every set's metrics, and
                              the Frechet distance of its sets pooled)
      floor_positions.npy     [floor_sets, set_size] held-out positions of the floor's draws
      classifier.*            the classifier of class consistency (labelled data only)
      <space>/stats.npz       mu, sigma of the training split's features (or given ones, Inception only)
      <space>/real.npy        reference features: a seeded subset of the training split (KID, PRDC, copies)
      <space>/extractor.*     the offline space's network (safetensors + JSON config)

Spaces: the offline one always, Inception beside it when used (pipeline/evaluation/extractors.py); the last
is the primary one, shown first in tables. The floor is `floor_sets` disjoint draws of held-out images with the
label counts of the generated sets (pipeline/evaluation/draws.py), scored exactly as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline import randomness
from pipeline.artifacts import (
    atomic_path,
    load_arrays,
    load_module,
    read_json,
    require,
    save_arrays,
    save_weights,
    write_json,
)
from pipeline.config import EvaluationParams, Params, ReferenceParams
from pipeline.datasets.prepared import HOLDOUT, TRAIN, PreparedData
from pipeline.errors import PipelineError
from pipeline.evaluation.draws import disjoint_draws, label_counts
from pipeline.evaluation.extractors import INCEPTION, INCEPTION_FEATURES, Extractor, inception_extractor, use_inception
from pipeline.evaluation.frechet import FeatureStats, frechet_distance, given_statistics
from pipeline.evaluation.inception import find_weights, sha256
from pipeline.evaluation.metrics import (
    SpaceReference,
    against_floor,
    class_consistency,
    nearest_distances,
    score_set,
    summarise,
)
from pipeline.evaluation.offline_nets import (
    Classifier,
    OfflineFeatures,
    predict,
    train_autoencoder,
    train_classifier,
)
from pipeline.runtime import Runtime


@dataclass
class Space:
    extractor: Extractor
    ref: SpaceReference


@dataclass
class Reference:
    spaces: list[Space]
    classifier: Classifier | None  # None: unlabelled data
    info: dict  # reference.json
    batch_size: int
    kid_subsets: int
    nearest_k: int

    @property
    def conditional(self) -> bool:
        """Whether sets are class-conditional (class consistency is then scored)."""
        return self.info["conditional"]

    def score(self, images: np.ndarray, requested: np.ndarray, seed: int,
              pooled: dict[str, FeatureStats] | None = None) -> dict:
        """Every metric of one set of uint8 NHWC images in every space: {space: {metric: value}, and
        class_consistency for conditional sets}. `seed` fixes KID's reference subsets. The features are also
        added to pooled[space] when given (the statistics of a whole row)."""
        out: dict = {}
        for space in self.spaces:
            features = space.extractor.features(images, self.batch_size)
            out[space.extractor.name] = score_set(features, space.ref, self.kid_subsets, self.nearest_k, seed)
            if pooled is not None:
                pooled.setdefault(space.extractor.name, FeatureStats()).add(features)
        if self.conditional:
            out["class_consistency"] = class_consistency(
                predict(self.classifier, images, self.batch_size, self.spaces[0].extractor.device), requested)
        return out

    def score_sets(self, sets: list[tuple[np.ndarray, np.ndarray]], seed: int,
                   pooled: dict[str, FeatureStats] | None = None) -> list[dict]:
        """Set k is scored with KID seed `seed + k`: matched sets of different rows share reference subsets."""
        return [self.score(images, requested, seed + k, pooled) for k, (images, requested) in enumerate(sets)]

    def pooled_distances(self, pooled: dict[str, FeatureStats]) -> dict[str, float]:
        """The Frechet distance of all of a row's sets together, per space."""
        return {space.extractor.name: frechet_distance(pooled[space.extractor.name].mu_sigma(),
                                                       (space.ref.mu, space.ref.sigma)) for space in self.spaces}

    def floor(self) -> list[dict]:
        return self.info["floor"]


def summarise_row(per_set: list[dict], floor: list[dict] | None = None, compare=against_floor) -> dict:
    """A row's metrics over its sets: {space: {metric: mean, metric_sd, and, against the floor's sets when
    given, what `compare` adds}, class_consistency, class_consistency_sd, ...}."""
    out: dict = {}
    floor_summary = summarise_row(floor) if floor else None
    for key, value in per_set[0].items():
        if isinstance(value, dict):
            out[key] = summarise([values[key] for values in per_set])
            if floor_summary:
                out[key].update(compare(out[key], floor_summary[key]))
        else:
            out.update(summarise([{key: values[key]} for values in per_set]))
    if floor_summary and "class_consistency" in out:
        out.update(compare(out, floor_summary))
    return out


def build_reference(out_dir: str | Path, params: Params, data: PreparedData, runtime: Runtime,
                    progress: Callable[[str], None] = lambda text: None) -> dict:
    """Train the offline nets, compute every space's reference and the floor, and write out_dir; returns the info.
    Bad settings and a floor the held-out split cannot hold are refused before any training."""
    p, e = params.reference, params.evaluation
    inception = use_inception(p)
    if p.stats_path and not inception:
        raise PipelineError(f"reference.stats_path = {p.stats_path!r} holds Inception statistics, but Inception is "
                            "not used: put its weights in place (reference.inception_weights, inception_path) or set "
                            "stats_path: null")
    given = given_statistics(p.stats_path, INCEPTION_FEATURES) if p.stats_path else None
    if given is not None:
        check_stats_mode(p)
    labelled = data.num_classes > 1
    if p.features != "autoencoder" and not labelled:
        raise PipelineError(f"reference.features = {p.features} needs class labels, and the prepared data has one "
                            "class: use reference.features: autoencoder")
    conditional = params.pretrain.class_conditional and labelled
    train_labels = data.labels[data.split == TRAIN]
    counts = label_counts(e.set_size, train_labels, data.num_classes, balanced=conditional)
    draws = disjoint_draws(data.labels[data.split == HOLDOUT], counts, e.floor_sets, params.seed, "held-out split",
                           data.manifest["class_names"])

    classifier, accuracy, offline, offline_config = train_offline(params, data, runtime.device, progress)
    extractors = [Extractor(p.features, offline, runtime.device)]
    weights = find_weights(p.inception_weights, p.inception_path) if inception else None
    if inception:
        extractors.append(inception_extractor(p.inception_weights, weights, runtime.device, p.inception_mode))
    reference_rows = reference_positions(params, len(train_labels))
    stats_rows = None if p.stats_images is None else reference_positions(params, len(train_labels), p.stats_images)
    held_rows = np.sort(randomness.rng("reference_features", params.seed, 1).permutation(
        data.count(HOLDOUT))[: p.max_features])
    spaces, space_info = [], {}
    for extractor in extractors:
        progress(f"{extractor.name} features of the training split")
        stats = (given if given is not None and extractor.name == INCEPTION
                 else split_statistics(extractor, data, e, stats_rows))
        spaces.append(space_reference(extractor, stats, data, reference_rows, held_rows, e))
        source = (f"training split ({len(train_labels)} images)" if stats_rows is None
                  else f"a seeded subset of the training split ({len(stats_rows)} of {len(train_labels)} images)")
        space_info[extractor.name] = {
            "distance": extractor.distance, "copy_threshold": spaces[-1].ref.copy_threshold,
            "num_real": len(reference_rows), "stats_source": p.stats_path if stats is given else source}
        if extractor.name == INCEPTION:  # which network: the mode, and the weights file by its checksum
            space_info[INCEPTION].update(mode=extractor.mode, weights=p.inception_weights, sha256=sha256(weights))

    info = {"spaces": space_info, "primary": extractors[-1].name, "conditional": conditional,
            "class_names": data.manifest["class_names"], "classifier_holdout_accuracy": accuracy,
            "set_size": e.set_size, "floor_sets": e.floor_sets, "label_counts": counts.tolist(),
            "num_train": len(train_labels), "num_holdout": data.count(HOLDOUT),
            "inception_path": str(weights) if inception else None}
    reference = Reference(spaces, classifier, info, e.batch_size, e.kid_subsets, e.nearest_k)
    progress(f"scoring the real floor ({e.floor_sets} sets of {e.set_size} held-out images)")
    pooled: dict[str, FeatureStats] = {}
    info["floor"] = reference.score_sets([next(data.batches(HOLDOUT, e.set_size, rows)) for rows in draws],
                                         params.seed, pooled)
    info["floor_fd_pooled"] = reference.pooled_distances(pooled)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        np.save(tmp / "floor_positions.npy", np.stack(draws))
        if classifier is not None:
            save_weights(tmp / "classifier", classifier.state_dict(),
                         {"channels": offline_config["channels"], "num_classes": data.num_classes,
                          "feature_dim": p.classifier_dim})
        for space in spaces:
            folder = tmp / space.extractor.name
            folder.mkdir()
            save_arrays(folder / "stats.npz", mu=space.ref.mu, sigma=space.ref.sigma)
            np.save(folder / "real.npy", space.ref.real)
            if space.extractor.name != INCEPTION:
                save_weights(folder / "extractor", offline.state_dict(), offline_config)
        write_json(tmp / "reference.json", info)
    return info


def train_offline(params: Params, data: PreparedData, device: torch.device, progress: Callable[[str], None]
                  ) -> tuple[Classifier | None, float | None, OfflineFeatures, dict]:
    """The classifier (labelled data only) and its held-out accuracy, and the offline space's extractor with its
    config, trained on the training split (or reference.max_images of it) and standardised on it."""
    p = params.reference
    images, labels = offline_training_images(data, p.max_images, params.seed)
    classifier, accuracy = None, None
    if data.num_classes > 1:
        progress(f"training the classifier on {len(images)} images")
        classifier = train_classifier(images, labels, data.num_classes, p.classifier_dim, p.epochs, p.batch_size, p.lr,
                                      device, params.seed)
        held = [(predict(classifier, batch, p.batch_size, device), batch_labels)
                for batch, batch_labels in data.batches(HOLDOUT, p.batch_size)]
        accuracy = class_consistency(*(np.concatenate(part) for part in zip(*held)))
    config = {"space": p.features, "channels": data.manifest["channels"], "resolution": data.manifest["resolution"],
              "num_classes": data.num_classes, "classifier_dim": p.classifier_dim, "autoencoder_dim": p.autoencoder_dim}
    offline = OfflineFeatures(**config).to(device)
    if "classifier" in offline.parts:
        offline.parts["classifier"].load_state_dict(classifier.state_dict())
    if "autoencoder" in offline.parts:
        progress(f"training the autoencoder on {len(images)} images")
        trained = train_autoencoder(images, p.autoencoder_dim, p.epochs, p.batch_size, p.lr, device, params.seed)
        offline.parts["autoencoder"].load_state_dict(trained.state_dict())
    offline.standardise(images, p.batch_size)
    return classifier, accuracy, offline.eval().requires_grad_(False), config


def reference_positions(params: Params, num_train: int, count: int | None = None) -> np.ndarray:
    """The training-split positions, sorted, whose features are a space's reference (`count` None:
    reference.max_features of them); the statistics' subset is a prefix of the same seeded order."""
    order = randomness.rng("reference_features", params.seed).permutation(num_train)
    return np.sort(order[: params.reference.max_features if count is None else count])


def space_reference(extractor: Extractor, stats: tuple[np.ndarray, np.ndarray], data: PreparedData,
                    reference_rows: np.ndarray, held_rows: np.ndarray, e: EvaluationParams) -> Space:
    """A space's reference: the statistics, the features of the reference rows of the training split, and the
    copy threshold (the copy_quantile of the held-out images' distances to their nearest reference image, over
    the held-out rows `held_rows`)."""
    real = np.concatenate([extractor.features(batch, e.batch_size)
                           for batch, _ in data.batches(TRAIN, e.batch_size, reference_rows)])
    held = np.concatenate([extractor.features(batch, e.batch_size)
                           for batch, _ in data.batches(HOLDOUT, e.batch_size, held_rows)])
    threshold = float(np.quantile(nearest_distances(held, real), e.copy_quantile))
    return Space(extractor, SpaceReference(stats[0], stats[1], real, threshold))


def offline_training_images(data: PreparedData, max_images: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The training images the offline nets learn from, in memory: all, or a seeded subset of max_images."""
    count = data.count(TRAIN)
    if max_images is None or max_images >= count:
        return data.part(TRAIN)
    rows = np.sort(randomness.rng("offline_subset", seed).permutation(count)[:max_images])
    return next(data.batches(TRAIN, max_images, rows))


def split_statistics(extractor: Extractor, data: PreparedData, e: EvaluationParams, rows: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of the features of the training split (or its `rows`), streamed one batch at a time."""
    batches = (images for images, _ in data.batches(TRAIN, e.batch_size, rows))
    return extractor.feature_stats(batches, e.batch_size).mu_sigma()


def load_reference(path: str | Path, params: Params, device: torch.device) -> Reference:
    path = Path(path)
    info = read_json(require(path / "reference.json", "reference"))
    e = params.evaluation
    if (info["set_size"], info["floor_sets"]) != (e.set_size, e.floor_sets):
        raise PipelineError(f"{path} holds a floor of {info['floor_sets']} sets of {info['set_size']}, but evaluation "
                            f"asks for {e.floor_sets} of {e.set_size}: rerun `dvc repro reference`")
    classifier = None
    if (path / "classifier.json").exists():
        classifier, _ = load_module(path / "classifier", lambda config: Classifier(**config), device, "reference")
    spaces = []
    for name, space in info["spaces"].items():
        folder = path / name
        stats = load_arrays(folder / "stats.npz", "reference")
        real = np.load(require(folder / "real.npy", "reference"), allow_pickle=False)
        if name == INCEPTION:
            kind = space.get("weights", "cleanfid")  # references from before the choice of file: clean-fid's
            weights = find_weights(kind, info["inception_path"])
            if weights is None:
                raise PipelineError(f"the reference was computed with Inception from {info['inception_path']}, "
                                    "which is gone: restore it or rerun `dvc repro reference`")
            if space.get("sha256") not in (None, sha256(weights)):
                raise PipelineError(f"{weights} is not the Inception weights file the reference was computed with "
                                    f"(sha256 {space['sha256']}): restore it or rerun `dvc repro reference`")
            if space["mode"] != params.reference.inception_mode:
                raise PipelineError(f"the reference's Inception statistics are in clean-fid's {space['mode']} mode but "
                                    f"reference.inception_mode is {params.reference.inception_mode}: FIDs of two "
                                    "modes are not comparable; rerun `dvc repro reference`")
            extractor = inception_extractor(kind, weights, device, space["mode"])
        else:
            net, _ = load_module(folder / "extractor", lambda config: OfflineFeatures(**config), device, "reference")
            extractor = Extractor(name, net, device)
        spaces.append(Space(extractor, SpaceReference(stats["mu"], stats["sigma"], real, space["copy_threshold"])))
    return Reference(spaces, classifier, info, e.batch_size, e.kid_subsets, e.nearest_k)


def check_stats_mode(p: ReferenceParams) -> None:
    """Given statistics must come from the mode the features are computed in: the file's own `mode` entry, or
    reference.stats_mode when it has none (published .npz files such as EDM's and ADM's do not say)."""
    with np.load(p.stats_path, allow_pickle=False) as data:
        recorded = str(data["mode"]) if "mode" in data.files else None
    mode = recorded or p.stats_mode
    if mode is None:
        raise PipelineError(f"reference.stats_path = {p.stats_path!r} does not record the clean-fid mode it was "
                            "computed in: set reference.stats_mode (EDM's and ADM's statistics: legacy_tensorflow)")
    if mode != p.inception_mode:
        raise PipelineError(f"reference.stats_path = {p.stats_path!r} was computed in clean-fid's {mode} mode but "
                            f"reference.inception_mode is {p.inception_mode}: FIDs of two modes are not comparable; "
                            f"set inception_mode: {mode} or give statistics of {p.inception_mode}")


def floor_sets(path: str | Path, data: PreparedData, set_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The floor's held-out images and labels, set by set (the draws the reference stage scored)."""
    positions = np.load(require(Path(path) / "floor_positions.npy", "reference"), allow_pickle=False)
    return [next(data.batches(HOLDOUT, set_size, rows)) for rows in positions]
