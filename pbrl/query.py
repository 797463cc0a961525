"""Query selection (B-Pref ``feed_type``): which candidate pairs to ask the teacher about.

``large_batch`` oversampling: draw ``large_batch x n`` uniform candidate pairs, score them
with the reward ensemble, keep the ``n`` best.

``vpl_info`` (a latent reward, VPL): the information a pair's label carries about the user's
latent, ``H(E_z p) - E_z H(p)`` (BALD) with ``p = P(second ≻ first | z)`` over latents: the
annotators' latents in :class:`QuerySelector`, samples of one user's posterior
q(z | their labels) in :func:`select_for_user`. Pairs on which plausible users agree score 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pbrl.data import PreferenceDataset, Queries
from pbrl.errors import ConfigError
from pbrl.rewards.base import LatentReward, RewardModel
from pbrl.rewards.dispatch import has_latent

METHODS = ("uniform", "disagreement", "entropy", "vpl_info")


def disagreement_scores(probs: np.ndarray) -> np.ndarray:
    """Std over ensemble members of P(second ≻ first); ``probs`` is ``[E, N]``."""
    return probs.std(axis=0)


def entropy_scores(probs: np.ndarray) -> np.ndarray:
    """Mean over members of each member's binary preference entropy (as B-Pref)."""
    p = np.clip(probs, 1e-12, 1 - 1e-12)
    return (-(p * np.log(p) + (1 - p) * np.log(1 - p))).mean(axis=0)


def _entropy(p: np.ndarray) -> np.ndarray:
    # float64: in float32 1 - 1e-12 is 1.0, and a saturated pair's entropy was 0 * log 0 = nan
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1 - 1e-12)
    return -(p * np.log(p) + (1 - p) * np.log(1 - p))


def information_gain(probs: np.ndarray) -> np.ndarray:
    """Mutual information of a pair's label and the latent, ``[N]``, from ``probs [K, N]``
    (P(second ≻ first) under K latents drawn from the belief over z)."""
    return _entropy(probs.mean(0)) - _entropy(probs).mean(0)


def latent_samples(
    model: LatentReward, pairs: PreferenceDataset | None, k: int, rng: np.random.Generator
) -> np.ndarray:
    """``k`` latents ``[k, Z]`` from q(z | pairs), or from the prior N(0, I) without pairs."""
    eps = rng.normal(size=(k, model.latent_dim)).astype(np.float32)
    if pairs is None or len(pairs.trainable) == 0:
        return eps
    mean, log_var = model.posterior(pairs)
    return (mean + np.exp(0.5 * log_var) * eps).astype(np.float32)


def select_for_user(
    model: LatentReward,
    candidates: Queries,
    pairs: PreferenceDataset | None,
    n: int,
    rng: np.random.Generator,
    samples: int = 32,
) -> np.ndarray:
    """Indices of the ``n`` candidates whose label tells most about the latent of the user who
    labeled ``pairs`` (``vpl_info`` for one user: latents from their posterior)."""
    z = latent_samples(model, pairs, samples, rng)
    score = information_gain(model.preference_probs_under(candidates.first, candidates.second, z))
    return np.lexsort((rng.random(len(score)), -score))[:n]


@dataclass
class QuerySelector:
    method: str = "disagreement"
    large_batch: int = 10  # candidates drawn per query kept (1 = no oversampling)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"query.method={self.method!r} is unknown: choose one of {METHODS}")
        if self.large_batch < 1:
            raise ValueError(f"query.large_batch={self.large_batch} must be >= 1")

    def __call__(
        self,
        sample: Callable[[int], Queries],
        n: int,
        model: RewardModel | None,
        rng: np.random.Generator,
    ) -> Queries:
        """Pick ``n`` queries from candidates drawn by ``sample(k)``."""
        if self.method == "uniform" or model is None:
            return sample(n)
        candidates = sample(n * self.large_batch)
        if self.method == "vpl_info" and not has_latent(model):
            raise ConfigError(
                f"query=vpl_info ranks pairs by what they tell about a user's latent: it needs "
                f"reward=vpl, not {type(model).__name__}"
            )
        probs = model.preference_probs(candidates.first, candidates.second)  # [members, N]
        if self.method == "vpl_info":
            score = information_gain(probs)  # the members are the annotators' latents
        elif self.method == "disagreement":
            score = disagreement_scores(probs)
        else:
            score = entropy_scores(probs)
        # Random tie-breaking: a fresh model gives many equal scores.
        order = np.lexsort((rng.random(len(score)), -score))
        return candidates[order[:n]]
