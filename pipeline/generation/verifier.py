"""The verifier of inference-time scaling: the ratio net fitted to the generator that is sampled, and calibrated.

Stage 2 trains the ratio net against the online generator, which moves every step, while every sample is drawn
from its EMA: the trained net lags, estimates log q/p for another q, and barely tells EMA samples from real images
(its resampling weights come out nearly flat). Here, starting from its trained weights:

1. it is fitted further by the ratio loss of stage 2 (pipeline/training/ratio_losses.py), at the one noise level it
   scores at (`verifier.sigma`), between training-split images and fresh samples of the frozen EMA generator;
2. early-stopped on the logistic loss of a held-out validation part (pipeline/training/early_stopping.py): it
   memorises the ~1,300 training images within a few hundred updates, which a loss on images it never trained on
   sees and a training loss does not; the trained net itself (0 updates) is a candidate;
3. calibrated: d' = scale * d + bias, fitted by logistic regression on a held-out calibration part with the class
   prior of that part taken out (pipeline/generation/calibration.py), so that exp(-d') estimates p/q.

Which real images, and why:

- The training split is what the ratio net trained on and memorises: used for the updates only, never to choose,
  calibrate or judge.
- The held-out split (prepare.holdout) is cut, class by class with a seeded permutation, into a validation part
  (verifier.validation_images), a calibration part (verifier.calibration_images) and a test part
  (verifier.test_images), on which alone metrics/verifier.json reports the verifier (AUC, calibration, and the
  memorisation check: training against held-out images). Each part is paired with as many generator samples of
  the same labels, from a seeded stream of its own (not the seeds of any scored set), all noised once at
  `verifier.sigma`.
- The evaluation uses the whole held-out split too (the default floor is 5 disjoint draws of 100 of its 500
  images; the copy threshold, a quantile of their distances to the training images; the classifier's accuracy),
  but only as real data scored on its own: no generated or picked image is compared with a held-out image.
  Every metric of `scale` compares its sets with the training split (Frechet statistics, KID's and PRDC's real
  features, the nearest training image). A verifier fitted on held-out images therefore cannot pull its picks
  toward the images they are scored against; one chosen on the training split could, which is why that split is
  not used to choose. The floor and the verifier share images, and neither enters the other's numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline import randomness
from pipeline.artifacts import load_module, read_json, require, save_weights, write_json
from pipeline.config import VerifierParams
from pipeline.datasets.training_data import TrainingData
from pipeline.errors import PipelineError
from pipeline.generation.calibration import Calibration, classifier_report, fit_calibration, memorisation_auc
from pipeline.networks.ratio_net import RatioNet, build_ratio_net
from pipeline.runtime import Runtime
from pipeline.training.early_stopping import fit_early_stopped
from pipeline.training.ratio_losses import logistic_loss, ratio_loss
from pipeline.training.task import TrainingTask, adam

PARTS = ("validation", "calibration", "test")


@dataclass
class Verifier:
    """log w = -d'(x, sigma, c): the calibrated estimate of log p/q at noise level sigma."""

    ratio: RatioNet
    sigma: float
    calibration: Calibration

    @torch.no_grad()
    def log_weight(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return -self.calibration(self.ratio(x, torch.full((len(x),), self.sigma, device=x.device), labels))


@dataclass
class Pairs:
    """Real samples and as many generated ones with the same labels, noised once at the verifier's level."""

    real: torch.Tensor
    generated: torch.Tensor
    labels: torch.Tensor | None


def held_out_parts(labels: np.ndarray, sizes: list[int], seed: int) -> list[np.ndarray]:
    """Positions among the held-out images (with these labels) of disjoint parts of `sizes` images, each as
    class-balanced as the counts allow: every class in a seeded random order, the classes interleaved."""
    if sum(sizes) > len(labels):
        raise PipelineError(f"verifier parts of {' + '.join(map(str, sizes))} images need more than the "
                            f"{len(labels)} held-out images: lower verifier.validation_images, calibration_images "
                            "or test_images, or raise prepare.holdout")
    rng = randomness.rng("verifier_parts", seed)
    rank = np.empty(len(labels))
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        rank[rng.permutation(members)] = (np.arange(len(members)) + rng.random()) / len(members)
    order = np.argsort(rank, kind="stable")
    bounds = np.cumsum([0, *sizes])
    return [np.sort(order[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


@torch.no_grad()
def noisy_pairs(real: torch.Tensor, labels: torch.Tensor | None, generator, sigma: float, batch_size: int,
                runtime: Runtime) -> Pairs:
    """Pairs for `real` (model space): generator samples from torch's stream, then every sample noised at sigma."""
    generated = []
    for start in range(0, len(real), batch_size):
        rows = slice(start, start + batch_size)
        z = torch.randn(len(real[rows]), *real.shape[1:], device=real.device)
        with runtime.autocast():  # as scale runs the generator
            generated.append(generator(z, None if labels is None else labels[rows]).float())
    generated = torch.cat(generated)
    return Pairs(real + sigma * torch.randn_like(real), generated + sigma * torch.randn_like(generated), labels)


@torch.no_grad()
def logits(ratio: RatioNet, x: torch.Tensor, labels: torch.Tensor | None, sigma: float, batch_size: int,
           runtime: Runtime) -> torch.Tensor:
    out = []
    for start in range(0, len(x), batch_size):
        rows = slice(start, start + batch_size)
        with runtime.autocast():
            out.append(ratio(x[rows], torch.full((len(x[rows]),), sigma, device=x.device),
                             None if labels is None else labels[rows]).float())
    return torch.cat(out)


def pair_logits(ratio: RatioNet, pairs: Pairs, sigma: float, batch_size: int, runtime: Runtime
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """d on the generated and on the real samples of `pairs`."""
    return tuple(logits(ratio, x, pairs.labels, sigma, batch_size, runtime) for x in (pairs.generated, pairs.real))


def fit_verifier(ratio: RatioNet, generator, data: TrainingData, parts: dict[str, Pairs], training_real: torch.Tensor,
                 training_labels: torch.Tensor | None, p: VerifierParams, conditional: bool, runtime: Runtime,
                 seed: int) -> tuple[Verifier, dict]:
    """Fit, early-stop and calibrate `ratio` (the trained ratio net, modified in place) against the frozen
    `generator`; the updates draw from torch's stream seeded with `seed`. `parts` holds the validation,
    calibration and test pairs; `training_real` are training-split images (model space, noised at p.sigma) for
    the memorisation check. Returns the verifier and its report: the validation curve and, on the test part, the
    trained net, the fitted one, and the fitted one calibrated."""
    sigma, device, batch = p.sigma, runtime.device, p.batch_size

    def test_report(calibration: Calibration) -> dict:
        d_generated, d_real = (calibration(d).cpu().numpy() for d in pair_logits(ratio, parts["test"], sigma, batch,
                                                                                    runtime))
        d_training = calibration(logits(ratio, training_real, training_labels, sigma, batch, runtime)).cpu().numpy()
        return {**classifier_report(d_generated, d_real), "memorisation_auc": memorisation_auc(d_training, d_real)}

    ratio.eval().requires_grad_(False)
    report = {"test": {"trained": test_report(Calibration())}}
    # the shared guarded, accumulated update (p carries the loop's batch_size and batch_per_process); no EMA
    task = TrainingTask({"ratio": ratio}, {}, {"ratio": adam(ratio.parameters(), p.lr, p.betas, device)}, p, runtime)

    def loss(draws):
        x_real, labels = data.batch(draws)
        labels = labels if conditional else None
        with torch.no_grad():
            x_fake = generator(draws.randn(*data.sample_shape), labels)
        value, _ = ratio_loss(task.run["ratio"], x_fake, x_real, labels, torch.full((draws.n,), sigma, device=device),
                              draws)
        return value, {}

    def update() -> None:
        ratio.train().requires_grad_(True)
        task.update("ratio", loss)
        ratio.eval().requires_grad_(False)

    def validate() -> dict:
        d_generated, d_real = pair_logits(ratio, parts["validation"], sigma, batch, runtime)
        return {"loss": logistic_loss(d_generated, d_real).item(),
                "auc": classifier_report(d_generated.cpu().numpy(), d_real.cpu().numpy())["auc"]}

    torch.manual_seed(seed)
    fit = fit_early_stopped(ratio, update, validate, p.max_steps, p.eval_every, p.patience)
    calibration = fit_calibration(*(d.cpu().numpy() for d in pair_logits(ratio, parts["calibration"], sigma, batch,
                                                                          runtime)))
    report["test"].update(fitted=test_report(Calibration()), fitted_calibrated=test_report(calibration))
    report.update(best_step=fit["best_step"], steps=fit["steps"], curve=fit["curve"], calibration=calibration.as_dict())
    return Verifier(ratio, sigma, calibration), report


def save_verifier(folder: str | Path, verifier: Verifier | None, ratio_config: dict | None, info: dict) -> None:
    """`folder`/verifier.json (sigma, calibration and `info`) and the fitted ratio net beside it; no verifier: the
    json says so (method vsd)."""
    folder = Path(folder)
    if verifier is not None:
        save_weights(folder / "ratio", verifier.ratio.state_dict(), ratio_config)
        info = {"sigma": verifier.sigma, "calibration": verifier.calibration.as_dict(), **info}
    write_json(folder / "verifier.json", {"verifier": verifier is not None, **info})


def load_verifier(path: str | Path, device: torch.device) -> Verifier:
    path = Path(path)
    info = read_json(require(path / "verifier.json", "verifier"))
    if not info["verifier"]:
        raise PipelineError(f"{path} holds no verifier ({info.get('reason', 'none was fitted')}): rerun "
                            "`dvc repro verifier` with method diffratio")
    ratio, _ = load_module(path / "ratio", build_ratio_net, device, "verifier")
    return Verifier(ratio, info["sigma"], Calibration(**info["calibration"]))
