"""Whether the critic sees the tail the generator misses: within each fifth of the real manifold, from its densest to
its sparsest (metrics.density_bins, the fifths of recall_by_density), in the primary feature space,

- occupancy: the share of a row's samples whose nearest reference image lies in that fifth (the real floor's
  held-out images give what an unbiased sampler puts there), for every sampled row of the run;
- the ratio net at the end of stage 2, at the diagnostic noise levels: its mean logit on the fifth's reference
  (training) images, and the AUC between generated samples (the raw generator it was trained against, the same
  labels) and those images. The logit estimates log q_s / p_s: where it is low on a fifth's images, the critic
  knows the generator under-fills that fifth; an AUC near 0.5 there says it cannot tell.

    python -m pipeline.experiments.critic_by_density    # after `dvc repro`: -> metrics/critic_by_density.json
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from sklearn.metrics import pairwise_distances

from pipeline.artifacts import write_json
from pipeline.config import load_params
from pipeline.datasets.encoders import load_encoder, split_in_model_space
from pipeline.datasets.prepared import TRAIN, load_prepared
from pipeline.evaluation.metrics import TAIL, density_bins
from pipeline.evaluation.reference import load_reference, reference_positions
from pipeline.experiments.recall_by_density import fifths_table, per_row
from pipeline.networks.generator import load_generator
from pipeline.networks.ratio_net import load_ratio_net
from pipeline.randomness import seed_torch
from pipeline.runtime import pick_device
from pipeline.training.diffratio import auc


def occupancy(real: np.ndarray, features: np.ndarray, share: np.ndarray, bins: int) -> list[float]:
    """The share of `features` whose nearest real feature lies in each bin of `share`."""
    nearest = share[pairwise_distances(features, real).argmin(axis=1)]
    return [float((nearest == b).mean()) for b in range(bins)]


def critic_by_bin(ratio, real: torch.Tensor, fake: torch.Tensor, labels: torch.Tensor | None, share: np.ndarray,
                  bins: int, levels: np.ndarray, batch_size: int) -> list[dict]:
    """Per noise level: the ratio net's mean logit on each bin's real samples, and the AUC between the generated
    samples (all) and each bin's real samples; one noise draw per sample and level."""

    def logits(x: torch.Tensor, sigma: float) -> torch.Tensor:
        out = []
        for start in range(0, len(x), batch_size):
            rows = slice(start, start + batch_size)
            s = torch.full((len(x[rows]),), sigma, device=x.device)
            out.append(ratio(x[rows] + sigma * torch.randn_like(x[rows]), s, None if labels is None else labels[rows]))
        return torch.cat(out).float()

    bin_of = torch.as_tensor(share, device=real.device)
    rows = []
    for sigma in levels:
        d_real, d_fake = logits(real, float(sigma)), logits(fake, float(sigma))
        rows.append({"sigma": float(sigma), "d_fake": d_fake.mean().item(),
                     "d_real": [d_real[bin_of == b].mean().item() for b in range(bins)],
                     "auc": [auc(d_fake, d_real[bin_of == b]).item() for b in range(bins)]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="metrics/critic_by_density.json")
    args = parser.parse_args()
    params = load_params()
    e, t = params.evaluation, params.train
    device = pick_device(params.device)
    reference = load_reference("data/reference", params, device)
    space = next(s for s in reference.spaces if s.extractor.name == reference.info["primary"])
    bins = round(1 / TAIL)
    share = density_bins(space.ref.real, e.nearest_k, bins)

    def row_occupancy(sets) -> list[float]:
        features = np.concatenate([space.extractor.features(images, e.batch_size) for images in sets])
        return occupancy(space.ref.real, features, share, bins)

    prepared = load_prepared("data/prepared")
    rows = per_row(row_occupancy, prepared, e.set_size, e.num_sets)
    encoder = load_encoder("data/encoded", device)
    real, labels = split_in_model_space(encoder, prepared, TRAIN, reference_positions(params, prepared.count(TRAIN)),
                                        e.batch_size, device)
    ratio, config = load_ratio_net("data/train/ratio", device)
    generator, _ = load_generator("data/train/generator_online", device)  # the generator the ratio net last saw
    labels = labels if config["score"]["num_classes"] > 0 else None
    seed_torch("critic_by_density", t.seed)
    fake = torch.cat([generator(torch.randn_like(real[part]), None if labels is None else labels[part])
                      for part in (slice(s, s + e.batch_size) for s in range(0, len(real), e.batch_size))])
    levels = np.geomspace(t.auxiliary_noise.sigma_min, t.auxiliary_noise.sigma_max, t.diagnostic_levels)
    critic = critic_by_bin(ratio.eval(), real, fake, labels, share, bins, levels, e.batch_size)
    write_json(args.out, {"space": space.extractor.name, "bins": bins, "order": "densest to sparsest",
                          "occupancy": rows, "critic": critic})

    console = Console()
    console.print(fifths_table(f"share of samples nearest each fifth of the real manifold ({space.extractor.name} "
                               "space)", rows, bins))
    table = Table(title="the ratio net on each fifth's training images: mean logit (AUC against generated samples)")
    table.add_column("sigma", justify="right")
    table.add_column("generated: mean logit", justify="right")
    for b in range(bins):
        table.add_column(f"fifth {b + 1}", justify="right")
    for row in critic:
        table.add_row(f"{row['sigma']:.3g}", f"{row['d_fake']:.3f}",
                      *(f"{d:.3f} ({a:.2f})" for d, a in zip(row["d_real"], row["auc"])))
    console.print(table)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
