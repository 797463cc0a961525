"""Query selection (B-Pref ``feed_type``): which candidate pairs to ask the teacher about.

``large_batch`` oversampling: draw ``large_batch x n`` uniform candidate pairs, score them
with the reward ensemble, keep the ``n`` best.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pbrl.data import Queries
from pbrl.rewards.base import RewardModel

METHODS = ("uniform", "disagreement", "entropy")


def disagreement_scores(probs: np.ndarray) -> np.ndarray:
    """Std over ensemble members of P(second ≻ first); ``probs`` is ``[E, N]``."""
    return probs.std(axis=0)


def entropy_scores(probs: np.ndarray) -> np.ndarray:
    """Mean over members of each member's binary preference entropy (as B-Pref)."""
    p = np.clip(probs, 1e-12, 1 - 1e-12)
    return (-(p * np.log(p) + (1 - p) * np.log(1 - p))).mean(axis=0)


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
        probs = model.preference_probs(candidates.first, candidates.second)
        score = (
            disagreement_scores(probs) if self.method == "disagreement" else entropy_scores(probs)
        )
        # Random tie-breaking: a fresh model gives many equal scores.
        order = np.lexsort((rng.random(len(score)), -score))
        return candidates[order[:n]]
