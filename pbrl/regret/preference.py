"""Preference models over segment pairs: Bradley–Terry on a per-segment utility.

The partial-return model uses ``u(σ) = Σ r``; the regret model uses ``u(σ) = -regret(σ)``.
Both give ``P(σ1 ≻ σ2) = sigmoid(scale · (u(σ1) - u(σ2)))``. Labels follow pbrl's
convention: 0 first preferred, 1 second, 0.5 equal.
"""

from __future__ import annotations

import math

import numpy as np

from pbrl.data.preferences import sigmoid
from pbrl.regret.mdp import SegmentStats

MODELS = ("regret", "partial_return")


def check_model(model: str) -> str:
    if model not in MODELS:
        raise ValueError(f"unknown preference model {model!r}: use one of {', '.join(MODELS)}")
    return model


def utility(stats: SegmentStats, model: str, form: str = "value") -> np.ndarray:
    """Per-segment utility: partial return, or minus regret (``form`` "value" for
    ``V(s_0) - [Σr + V(s_T)]``, "advantage" for ``-Σ A*``)."""
    if check_model(model) == "partial_return":
        return stats.partial_return
    return -(stats.regret if form == "value" else stats.regret_advantage)


def prob_second(u1: np.ndarray, u2: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """``P(σ2 ≻ σ1)``; an infinite scale gives the noiseless 0 / 0.5 / 1."""
    diff = np.asarray(u2, dtype=np.float64) - np.asarray(u1, dtype=np.float64)
    if math.isinf(scale):
        return np.where(diff > 0, 1.0, np.where(diff < 0, 0.0, 0.5))
    return sigmoid(scale * diff)


def compare(
    u1: np.ndarray,
    u2: np.ndarray,
    scale: float = math.inf,
    rng: np.random.Generator | None = None,
    tie_tol: float = 1e-9,
) -> np.ndarray:
    """Labels for pairs with utilities ``u1``, ``u2`` (higher is better).

    ``scale = inf``: deterministic, the higher utility wins and differences within
    ``tie_tol`` are ties (0.5). Finite ``scale``: sampled from ``prob_second`` with ``rng``.
    """
    u1, u2 = np.asarray(u1, dtype=np.float64), np.asarray(u2, dtype=np.float64)
    if math.isinf(scale):
        diff = u2 - u1
        return np.where(diff > tie_tol, 1.0, np.where(diff < -tie_tol, 0.0, 0.5))
    if rng is None:
        raise ValueError("sampled labels (finite scale) need an explicit np.random.Generator")
    return (rng.random(u1.shape) < prob_second(u1, u2, scale)).astype(np.float64)


def log_likelihood(logit_first: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-pair log-likelihood of labels given ``logit(P(σ1 ≻ σ2))``; ties are 0.5 targets."""
    logit = np.asarray(logit_first, dtype=np.float64)
    target_first = 1.0 - np.asarray(labels, dtype=np.float64)
    # log sigmoid(x) = -softplus(-x), written stably
    return -(
        target_first * np.logaddexp(0.0, -logit) + (1 - target_first) * np.logaddexp(0.0, logit)
    )


def accuracy(logit_first: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of non-tied labels predicted right (a prediction of exactly 0.5 scores half)."""
    logit, labels = np.asarray(logit_first), np.asarray(labels)
    keep = labels != 0.5
    if not keep.any():
        return math.nan
    pred_second = np.where(logit[keep] < 0, 1.0, np.where(logit[keep] > 0, 0.0, 0.5))
    return float(np.mean(1.0 - np.abs(pred_second - labels[keep])))


def fit_scale(x: np.ndarray, labels: np.ndarray, max_scale: float = 1e3) -> float:
    """Maximum-likelihood ``scale >= 0`` for ``logit_first = scale · x``.

    The log-likelihood is concave in the scale, so its derivative is bisected; data that
    the utilities separate perfectly have no finite optimum and get ``max_scale``.
    """
    x = np.asarray(x, dtype=np.float64)
    target_first = 1.0 - np.asarray(labels, dtype=np.float64)

    def slope(s: float) -> float:
        return float(np.sum(x * (target_first - sigmoid(s * x))))

    if slope(0.0) <= 0.0:
        return 0.0  # utilities anti-correlated with (or blind to) the labels
    if slope(max_scale) >= 0.0:
        return max_scale
    lo, hi = 0.0, max_scale
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if slope(mid) > 0 else (lo, mid)
    return 0.5 * (lo + hi)
