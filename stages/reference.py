"""reference: the feature extractor for FID/FD, the training split's statistics and the real-data floor.

With Inception weights on disk the extractor is clean-fid's Inception (FID); otherwise a classifier is
trained on the prepared labels and the metric is `fd_trained`. The floor is the distance between the
held-out real images and the reference: what an independent draw from the data scores at that sample
count (generated sets use balanced labels, real draws do not, so a good model can land below it).
"""

from pipeline.config import Params
from pipeline.feature_net import train_feature_net
from pipeline.fid import Extractor, find_inception, frechet_distance, inception_extractor, resolve_extractor, save_reference, statistics
from pipeline.prepared_data import HOLDOUT, TRAIN, load_prepared
from pipeline.stage import console, pick_device, run_stage

OUT = "data/reference"


def main(params: Params) -> None:
    p = params.reference
    kind = resolve_extractor(p)
    device = pick_device(params.device)
    data = load_prepared("data/prepared")
    train_images, train_labels = data.part(TRAIN)
    held_images, held_labels = data.part(HOLDOUT)
    net, net_config, info = None, None, {"inception_path": None}
    if kind == "trained":
        console.print(f"training the feature extractor on {len(train_images)} labelled images")
        net_config = {"channels": data.manifest["channels"], "num_classes": data.num_classes, "feature_dim": p.feature_dim}
        net, accuracy = train_feature_net(train_images, train_labels, held_images, held_labels, data.num_classes,
                                          p.feature_dim, p.epochs, p.batch_size, p.lr, device, params.seed)
        extractor = Extractor("trained", net.features, device)
        info["extractor_holdout_accuracy"] = accuracy
    else:
        weights = find_inception(p.inception_path)
        extractor, info["inception_path"] = inception_extractor(weights, device), str(weights)
    ref = statistics(extractor.features(train_images, p.batch_size))
    floor = frechet_distance(statistics(extractor.features(held_images, p.batch_size)), ref)
    info.update(floor=floor, num_reference=len(train_images), num_holdout=len(held_images))
    save_reference(OUT, extractor, net, net_config, ref, info)
    console.print(f"reference: {extractor.metric} real-data floor {floor:.4g} "
                  f"({len(held_images)} held-out vs {len(train_images)} training images)")


if __name__ == "__main__":
    run_stage(main)
