"""reference: the feature extractor for FID/FD, the reference statistics and the real-data floor.

With Inception weights on disk the extractor is clean-fid's Inception (FID); otherwise a classifier is
trained on the prepared labels and the metric is `fd_trained`. The reference statistics are those of the
training split, streamed in batches, or given (reference.stats_path, Inception only). The floor is the
distance between the held-out real images and the reference: what an independent draw from the data scores
at that sample count (generated sets use balanced labels, real draws do not, so a good model can land below
it).
"""

from pipeline.config import Params
from pipeline.datasets.prepared import HOLDOUT, TRAIN, PreparedData, load_prepared
from pipeline.errors import PipelineError
from pipeline.evaluation.feature_net import train_feature_net
from pipeline.evaluation.fid import (
    INCEPTION_FEATURES,
    Extractor,
    find_inception,
    frechet_distance,
    given_statistics,
    inception_extractor,
    resolve_extractor,
    save_reference,
)
from pipeline.runtime import Runtime
from pipeline.stage import console, run_stage
from pipeline.training.loop import progress_bar

OUT = "data/reference"


def main(params: Params, runtime: Runtime) -> None:
    p = params.reference
    kind = resolve_extractor(p)
    if p.stats_path and kind == "trained":
        raise PipelineError(f"reference.stats_path = {p.stats_path!r} holds Inception statistics, but the extractor "
                            "is the trained one: put clean-fid's inception-2015-12-05.pt in place (reference."
                            "inception_path), or set stats_path: null")
    given = given_statistics(p.stats_path, INCEPTION_FEATURES) if p.stats_path else None
    data = load_prepared("data/prepared")
    net, net_config, info = None, None, {"inception_path": None}
    if kind == "trained":
        extractor, net, net_config, info["extractor_holdout_accuracy"] = trained_extractor(params, data, runtime)
    else:
        weights = find_inception(p.inception_path)
        extractor, info["inception_path"] = inception_extractor(weights, runtime.device), str(weights)
    ref = given if given is not None else split_statistics(extractor, data, TRAIN, p.batch_size)
    floor = frechet_distance(split_statistics(extractor, data, HOLDOUT, p.batch_size), ref)
    source = p.stats_path or f"training split ({data.count(TRAIN)} images)"
    info.update(floor=floor, stats_source=source, num_reference=None if given else data.count(TRAIN),
                num_holdout=data.count(HOLDOUT))
    save_reference(OUT, extractor, net, net_config, ref, info)
    console.print(f"reference: {extractor.metric} real-data floor {floor:.4g} "
                  f"({data.count(HOLDOUT)} held-out images vs the statistics of the {source})")


def trained_extractor(params: Params, data: PreparedData, runtime: Runtime):
    """The classifier trained on the (small) prepared data in memory: (extractor, net, its config, accuracy)."""
    p = params.reference
    (images, labels), (held_images, held_labels) = data.part(TRAIN), data.part(HOLDOUT)
    console.print(f"training the feature extractor on {len(images)} labelled images")
    net_config = {"channels": data.manifest["channels"], "num_classes": data.num_classes, "feature_dim": p.feature_dim}
    net, accuracy = train_feature_net(images, labels, held_images, held_labels, data.num_classes, p.feature_dim,
                                      p.epochs, p.batch_size, p.lr, runtime.device, params.seed)
    return Extractor("trained", net.features, runtime.device), net, net_config, accuracy


def split_statistics(extractor: Extractor, data: PreparedData, which: int, batch_size: int):
    """(mu, sigma) of the features of split `which`, streamed one batch at a time."""
    with progress_bar() as bar:
        task = bar.add_task(f"{extractor.metric} features", total=data.count(which), status="")
        batches = (images for images, _ in data.batches(which, batch_size))
        return extractor.feature_stats(batches, batch_size, lambda n: bar.advance(task, n)).mu_sigma()


if __name__ == "__main__":
    run_stage(main)
