"""Calibrating a density-ratio classifier's logit, and scoring it as a classifier.

The ratio net's logit d estimates log q/p (generated over real), so sigmoid(d) should be P(generated | x) when
both classes are equally likely. A scalar fit d' = scale * d + bias, by logistic regression of the class on d
over a calibration split, makes it so. A split of n_g generated and n_r real samples has prior log-odds
log(n_g / n_r), which the regression's logit absorbs: at its optimum scale * d + bias = log q/p + log(n_g / n_r).
The calibrated estimate is therefore d' = scale * d + bias - log(n_g / n_r), and exp(-d') estimates p/q for
any proportions of the split. Only `scale` changes a resampling pick (softmax ignores a shared shift); `bias`
makes the weights themselves honest: E_q[exp(-d')] = E_q[p/q] = 1.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from pipeline.errors import PipelineError

ECE_BINS = 10  # equal-width bins of the predicted probability


@dataclass(frozen=True)
class Calibration:
    scale: float = 1.0
    bias: float = 0.0

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        return self.scale * logits + self.bias

    def as_dict(self) -> dict:
        return asdict(self)


def fit_calibration(d_generated: np.ndarray, d_real: np.ndarray) -> Calibration:
    """scale and bias of d' = scale * d + bias, calibrated on these logits (any class proportions)."""
    logits = np.concatenate([d_generated, d_real]).astype(np.float64)[:, None]
    generated = np.concatenate([np.ones(len(d_generated)), np.zeros(len(d_real))])
    if not np.isfinite(logits).all() or len(d_generated) < 2 or len(d_real) < 2:
        raise PipelineError(f"cannot calibrate on {len(d_generated)} generated and {len(d_real)} real logits (need "
                            "finite values, at least 2 of each): raise verifier.calibration_images")
    fit = LogisticRegression(C=np.inf, tol=1e-10, max_iter=10_000).fit(logits, generated)
    prior = math.log(len(d_generated) / len(d_real))
    return Calibration(float(fit.coef_[0, 0]), float(fit.intercept_[0]) - prior)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * x))  # no overflow for large |x|


def expected_calibration_error(probability: np.ndarray, label: np.ndarray, bins: int = ECE_BINS) -> float:
    """sum over equal-width bins of the predicted probability of (share of samples) x |mean label - mean prediction|."""
    which = np.minimum((probability * bins).astype(np.int64), bins - 1)
    total = 0.0
    for k in np.unique(which):
        inside = which == k
        total += inside.mean() * abs(label[inside].mean() - probability[inside].mean())
    return float(total)


def classifier_report(d_generated: np.ndarray, d_real: np.ndarray) -> dict:
    """How well logits d (estimates of log q/p) separate generated from real samples, and how honest they are:
    AUC; with the split's prior added back, the expected calibration error, Brier score and log loss of
    sigmoid(d) as P(generated); and the mean weights exp(-d) over generated and exp(d) over real samples, which
    estimate E_q[p/q] = 1 and E_p[q/p] = 1 when d is exact."""
    d = np.concatenate([d_generated, d_real]).astype(np.float64)
    label = np.concatenate([np.ones(len(d_generated)), np.zeros(len(d_real))])
    logit = d + math.log(len(d_generated) / len(d_real))
    probability = sigmoid(logit)
    log_loss = np.logaddexp(0, -logit) * label + np.logaddexp(0, logit) * (1 - label)
    return {"auc": float(roc_auc_score(label, d)),
            "ece": expected_calibration_error(probability, label),
            "brier": float(np.mean((probability - label) ** 2)),
            "log_loss": float(log_loss.mean()),
            "mean_weight_generated": float(np.exp(-np.asarray(d_generated, np.float64)).mean()),
            "mean_inverse_weight_real": float(np.exp(np.asarray(d_real, np.float64)).mean())}


def memorisation_auc(d_training: np.ndarray, d_held_out: np.ndarray) -> float:
    """P(a training image gets a lower d, i.e. looks more real, than a held-out image): 0.5 when the net has not
    memorised its training images, towards 1 as it has."""
    label = np.concatenate([np.zeros(len(d_training)), np.ones(len(d_held_out))])
    return float(roc_auc_score(label, np.concatenate([d_training, d_held_out])))
