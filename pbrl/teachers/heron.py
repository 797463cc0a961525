"""HERON (Bukharin et al., "Deep RL from Hierarchical Weak Preference Feedback"): preferences
from a ranking of reward factors instead of a weighted reward.

The user ranks the environment's reward factors, most important first ("don't fall" >
"go forward" > "save energy"), with no weights. Two segments are compared level by level:
at level ``k``, with ``z_k`` the segment's total of factor ``k``,

* the second is preferred if ``s_k (z_k(2) - z_k(1)) > δ_k``, the first if ``< -δ_k``
  (``s_k`` = +1 when higher is better, -1 when lower is better);
* otherwise the pair goes to level ``k + 1``; when no level decides, no label (skip).

The margin is ``δ_k = σ_k · std(z_k)``: the spread of the factor's totals over the segments
being compared in this batch (the paper), or over every segment the teacher has seen
(``margin: running``). Segment totals are sums over the segment's valid steps (the paper
compares the factors' accumulated values; ``aggregate: mean`` divides by the valid length).

The labels follow pbrl's convention (0 first preferred, 1 second, NaN skip); a reward model
trained on them with Bradley–Terry drives the policy, as in the paper. (The official robotics
code feeds the model into PPO's value target instead; pbrl follows the paper.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pbrl.data import Queries, Segments
from pbrl.teachers.scripted import TeacherConfigError

MARGINS = ("batch", "running")
AGGREGATES = ("sum", "mean")


def heron_compare(
    z1: np.ndarray, z2: np.ndarray, margins: np.ndarray, higher_is_better: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Labels and deciding level of pairs with factor totals ``z1``, ``z2`` (``[N, K]``, levels
    in rank order). Returns ``labels [N]`` (0, 1 or NaN) and ``level [N]`` (-1: undecided)."""
    n, k = z1.shape
    labels = np.full(n, np.nan)
    level = np.full(n, -1)
    sign = np.where(np.asarray(higher_is_better, bool), 1.0, -1.0)
    for j in range(k):
        open_ = level < 0
        diff = sign[j] * (z2[:, j] - z1[:, j])
        second = open_ & (diff > margins[j])
        first = open_ & (diff < -margins[j])
        labels[second], labels[first] = 1.0, 0.0
        level[second | first] = j
    return labels, level


@dataclass
class HeronTeacher:
    """Answers by a ranking of reward factors; ``ranking`` names them most important first
    (with or without the ``reward_`` prefix of ``Segments.factor_names``)."""

    ranking: Sequence[str]
    sigma: float | Sequence[float] = 1.0  # σ_k per level (one number: every level)
    higher_is_better: bool | Sequence[bool] = True  # per level (factors are reward terms)
    margin: str = "batch"  # batch | running: std of the totals this batch, or so far
    aggregate: str = "sum"  # sum | mean of a factor over a segment's valid steps
    env_id: str | None = None  # to check the ranking's names against the env's factors
    env_kwargs: dict[str, Any] | None = None
    rng: np.random.Generator = field(default_factory=np.random.default_rng)

    def __post_init__(self) -> None:
        self.ranking = [str(r) for r in self.ranking]
        k = len(self.ranking)
        if k == 0:
            raise TeacherConfigError(
                "teacher.ranking is empty: list the reward factors, most important first"
            )
        if len(set(self.ranking)) != k:
            raise TeacherConfigError(f"teacher.ranking={self.ranking} names a factor twice")
        self.sigmas = self._per_level("sigma", self.sigma, float)
        if not np.all(np.isfinite(self.sigmas)) or np.any(self.sigmas < 0):
            raise TeacherConfigError(f"teacher.sigma={list(self.sigmas)}: use σ >= 0 per level")
        self.directions = self._per_level("higher_is_better", self.higher_is_better, bool)
        if self.margin not in MARGINS:
            raise TeacherConfigError(f"teacher.margin={self.margin!r}: use one of {MARGINS}")
        if self.aggregate not in AGGREGATES:
            raise TeacherConfigError(f"teacher.aggregate={self.aggregate!r}: use {AGGREGATES}")
        if self.env_id:
            from pbrl.sim.probe import probe_env

            self.check_factors(probe_env(self.env_id, dict(self.env_kwargs or {})).factor_names)
        # running moments of each factor's segment totals (margin: running)
        self._count = 0
        self._mean = np.zeros(k)
        self._m2 = np.zeros(k)
        self.last_levels: np.ndarray = np.zeros(0, int)  # deciding level of the last batch

    def _per_level(self, name: str, value: Any, kind: type) -> np.ndarray:
        k = len(self.ranking)
        values = [value] * k if np.isscalar(value) else list(value)
        if len(values) != k:
            raise TeacherConfigError(
                f"teacher.{name} has {len(values)} values for {k} ranked factors "
                f"({', '.join(self.ranking)}): give one per level, or one for all"
            )
        return np.array([kind(v) for v in values])

    def check_factors(self, available: Sequence[str]) -> list[int]:
        """Column of each ranked factor in ``available``; a one-line error for unknown names."""
        names = list(available)
        short = [n.removeprefix("reward_") for n in names]
        columns = []
        for r in self.ranking:
            bare = r.removeprefix("reward_")
            if bare not in short:
                raise TeacherConfigError(
                    f"teacher.ranking names {r!r}, which this environment does not report: "
                    f"its factors are {', '.join(short) or 'none'}"
                )
            columns.append(short.index(bare))
        return columns

    def totals(self, segments: Segments) -> np.ndarray:
        """Each ranked factor's total per segment, ``[N, K]``."""
        if segments.reward_factors is None:
            raise TeacherConfigError(
                "HeronTeacher needs segments with reward factors: use an environment that "
                "reports them (gymnasium MuJoCo v5 envs, pbrl/MountainCarContinuous-v0, "
                "pbrl/Pendulum-v1)"
            )
        cols = self.check_factors(segments.factor_names)
        mask = segments.mask[..., None].astype(float)
        z = (segments.reward_factors[..., cols] * mask).sum(1)
        if self.aggregate == "mean":
            z = z / np.maximum(mask.sum(1), 1.0)
        return z

    def margins(self, z: np.ndarray) -> np.ndarray:
        if self.margin == "batch":
            return self.sigmas * z.std(0)
        for row in z:  # Welford over every segment seen
            self._count += 1
            delta = row - self._mean
            self._mean += delta / self._count
            self._m2 += delta * (row - self._mean)
        std = np.sqrt(self._m2 / max(self._count, 1))
        return self.sigmas * std

    def __call__(self, queries: Queries) -> np.ndarray:
        z1, z2 = self.totals(queries.first), self.totals(queries.second)
        margins = self.margins(np.concatenate([z1, z2]))
        labels, self.last_levels = heron_compare(z1, z2, margins, self.directions)
        return labels

    def stats(self) -> dict[str, float]:
        return {f"heron_{k}": v for k, v in self.level_fractions().items()}

    def level_fractions(self) -> dict[str, float]:
        """Fraction of the last batch decided at each level, and undecided (skipped)."""
        n = max(len(self.last_levels), 1)
        out = {
            f"level{j}_{name.removeprefix('reward_')}": float(np.sum(self.last_levels == j)) / n
            for j, name in enumerate(self.ranking)
        }
        out["undecided"] = float(np.sum(self.last_levels < 0)) / n
        return out
