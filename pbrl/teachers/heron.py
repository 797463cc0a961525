"""HERON (Bukharin et al., "Deep RL from Hierarchical Weak Preference Feedback"): preferences
from a ranking of reward factors instead of a weighted reward.

The user ranks the environment's reward factors, most important first ("don't fall" >
"go forward" > "save energy"), with no weights. Two segments are compared level by level:
at level ``k``, with ``z_k`` the segment's total of factor ``k``,

* the second is preferred if ``s_k (z_k(2) - z_k(1)) > δ_k``, the first if ``< -δ_k``
  (``s_k`` = +1 when higher is better, -1 when lower is better);
* otherwise the pair goes to level ``k + 1``; when no level decides, no label (skip).

The margin is ``δ_k = σ_k · std(z_k)``: the spread of the factor's totals over the segments
being compared in this batch (the paper), over every segment the teacher has seen
(``margin: running``), or over every transition of the replay buffer the pairs are drawn from
(``margin: buffer``, the official code's: transition pairs only, where the sampler hands the
teacher the buffer's spread through :meth:`HeronTeacher.set_spread`). Segment totals are sums over the segment's valid steps (the paper
compares the factors' accumulated values; ``aggregate: mean`` divides by the valid length).

The ranking comes from the config (``teacher.ranking=[survive,forward,ctrl]``) or, with
``teacher.ranking=store``, from the label store ``teacher.ranking_from``: the latest ranking a
person gave for run ``teacher.run`` on the labeling page's "Rank what matters" view
(``/rank?run=NAME``) or with ``python -m pbrl.label ranking``; directions come with it.

The labels follow pbrl's convention (0 first preferred, 1 second, NaN skip); a reward model
trained on them with Bradley–Terry drives the policy, as in the paper. (The official robotics
code feeds the model into PPO's value target instead; pbrl follows the paper.)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from pbrl.data import Queries, Segments
from pbrl.envs.spec import EnvSpec
from pbrl.store import LabelStore, Ranking, StoreError, factor_name
from pbrl.teachers.base import Scripted
from pbrl.teachers.scripted import TeacherConfigError

log = logging.getLogger("pbrl")

MARGINS = ("batch", "running", "buffer")
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
class HeronTeacher(Scripted):
    """Answers by a ranking of reward factors; ``ranking`` names them most important first
    (with or without the ``reward_`` prefix of ``Segments.factor_names``)."""

    ranking: Sequence[str] | str  # factor names, most important first, or "store"
    sigma: float | Sequence[float] = 1.0  # σ_k per level (one number: every level)
    higher_is_better: bool | Sequence[bool] = True  # per level (factors are reward terms)
    margin: str = "batch"  # batch | running | buffer: std this batch, so far, over the buffer
    aggregate: str = "sum"  # sum | mean of a factor over a segment's valid steps
    env: EnvSpec | None = None  # the run's (use_env): the ranking is checked against its factors
    ranking_from: str | None = None  # label store holding the ranking (ranking: store)
    run: str | None = None  # the run whose stored ranking to use (ranking: store)
    rng: np.random.Generator = field(default_factory=np.random.default_rng)

    def __post_init__(self) -> None:
        self.ranking_id: int | None = None  # the store's ranking row (ranking: store)
        if isinstance(self.ranking, str) and self.ranking != "store":
            raise TeacherConfigError(
                f"teacher.ranking={self.ranking!r}: list the reward factors, most important "
                "first (teacher.ranking=[a,b,c]), or use teacher.ranking=store"
            )
        if self.margin not in MARGINS:
            raise TeacherConfigError(f"teacher.margin={self.margin!r}: use one of {MARGINS}")
        if self.aggregate not in AGGREGATES:
            raise TeacherConfigError(f"teacher.aggregate={self.aggregate!r}: use {AGGREGATES}")
        if not isinstance(self.ranking, str):
            self._settle()
        if self.env is not None:
            self.use_env(self.env)

    def use_env(self, env: EnvSpec) -> None:
        """The run's env: the ranking (``store``: the one stored for ``run``) is checked
        against the reward factors it reports."""
        self.env = env
        available = env.factor_names
        if env.obs_dim == 0:  # a spec made by hand, not probed
            from pbrl.sim.probe import probe_env

            available = probe_env(env.id, dict(env.kwargs)).factor_names
        if isinstance(self.ranking, str):
            stored = self._stored_ranking(available)
            self.ranking, self.higher_is_better = (
                list(stored.factors),
                list(stored.higher_is_better),
            )
            self.ranking_id = stored.ranking_id
            self._settle()
        self.check_factors(available)

    def _settle(self) -> None:
        """Check the ranking and its per-level settings; start the running moments."""
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
        # running moments of each factor's segment totals (margin: running)
        self._count = 0
        self._mean = np.zeros(k)
        self._m2 = np.zeros(k)
        self.buffer_std: np.ndarray | None = None  # margin: buffer (set_spread)
        self.last_levels: np.ndarray = np.zeros(0, int)  # deciding level of the last batch
        self.level_counts = np.zeros(k + 1, np.int64)  # all batches: per level, then undecided

    def _stored_ranking(self, available: tuple[str, ...]) -> Ranking:
        """The latest ranking of run ``self.run`` in store ``self.ranking_from``. Without one,
        the run is registered there (so the page can show its factors) and the error says
        where to give it."""
        if not self.ranking_from or not self.run:
            raise TeacherConfigError(
                "teacher.ranking=store needs teacher.ranking_from (the label store) and "
                "teacher.run (the run name the ranking was given for)"
            )
        assert self.env is not None
        env_id = self.env.id
        path, run = Path(self.ranking_from).expanduser(), str(self.run)
        try:
            if path.is_file():
                store = LabelStore(path, readonly=True)
                try:
                    stored = store.ranking(run)
                    info = store.run(run) if stored is not None else None
                finally:
                    store.close()
                if stored is not None and info is not None:
                    if info.env_id != env_id:
                        raise TeacherConfigError(
                            f"teacher.ranking=store: run {run!r} in {path} ranks the factors "
                            f"of {info.env_id}, not {env_id}: set teacher.run to this "
                            "run's own name"
                        )
                    log.info(
                        "HERON ranking #%d of run %s (by %s, from %s): %s",
                        stored.ranking_id,
                        run,
                        stored.annotator,
                        path,
                        " > ".join(
                            f"{f}{'' if up else ' (lower is better)'}"
                            for f, up in zip(stored.factors, stored.higher_is_better, strict=True)
                        ),
                    )
                    return stored
            store = LabelStore(path)
            try:
                store.register_run(run, env_id, available, dict(self.env.kwargs))
            finally:
                store.close()
        except StoreError as exc:
            raise TeacherConfigError(f"teacher.ranking_from: {exc}") from None
        factors = [factor_name(f) for f in available]
        raise TeacherConfigError(
            f"teacher.ranking=store: nobody has ranked the factors of run {run!r} "
            f"({', '.join(factors)}) in {path} yet: rank them on the labeling page "
            f"(python -m pbrl.label serve --store {path}, then open "
            f"http://127.0.0.1:8000/rank?run={quote(run, safe='')}) or with "
            f"python -m pbrl.label ranking --db {path} --run {run} --set {','.join(factors)}"
        )

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

    def set_factor_spread(self, factor_names: Sequence[str], std: np.ndarray) -> None:
        """The std of every factor over the whole buffer the next pairs come from
        (``factor_names`` in the env's order, ``std [K_env]``): ``margin: buffer``."""
        self.buffer_std = np.asarray(std, float)[self.check_factors(factor_names)]

    def margins(self, z: np.ndarray) -> np.ndarray:
        if self.margin == "batch":
            return self.sigmas * z.std(0)
        if self.margin == "buffer":
            if self.buffer_std is None:
                raise TeacherConfigError(
                    "teacher.margin=buffer takes the std over the replay buffer the pairs are "
                    "drawn from: set feedback.pairs=transitions, or use margin=batch or running"
                )
            return self.sigmas * self.buffer_std
        for row in z:  # Welford over every segment seen
            self._count += 1
            delta = row - self._mean
            self._mean += delta / self._count
            self._m2 += delta * (row - self._mean)
        std = np.sqrt(self._m2 / max(self._count, 1))
        return self.sigmas * std

    def __call__(self, queries: Queries) -> np.ndarray:
        if isinstance(self.ranking, str):
            raise TeacherConfigError(
                "teacher.ranking=store: the ranking is read for the run's env, which this "
                "teacher was not given (HeronTeacher(env=EnvSpec(...)); a run gives its own)"
            )
        z1, z2 = self.totals(queries.first), self.totals(queries.second)
        margins = self.margins(np.concatenate([z1, z2]))
        labels, self.last_levels = heron_compare(z1, z2, margins, self.directions)
        k = len(self.ranking)  # undecided (-1) counts in the last slot
        levels = np.where(self.last_levels < 0, k, self.last_levels)
        self.level_counts += np.bincount(levels, minlength=k + 1)
        return labels

    def stats(self) -> dict[str, float]:
        """Level fractions (their names give the ranking's order), each factor's direction
        (+1 higher is better, -1 lower) and, for a stored ranking, its id in the store."""
        out = {f"heron_{k}": v for k, v in self.level_fractions().items()}
        for name, up in zip(self.ranking, self.directions, strict=True):
            out[f"heron_direction_{name.removeprefix('reward_')}"] = 1.0 if up else -1.0
        if self.ranking_id is not None:
            out["heron_ranking_id"] = float(self.ranking_id)
        return out

    def describe(self) -> dict[str, Any]:
        """The ranking in force (a stored one included) and the fraction of all pairs so far
        decided at each level (``summary.json``'s teacher entry)."""
        total = max(int(self.level_counts.sum()), 1)
        names = [name.removeprefix("reward_") for name in self.ranking]
        return {
            "ranking": names,
            "higher_is_better": [bool(d) for d in self.directions],
            "ranking_id": self.ranking_id,
            "decided_by_level": {
                name: float(c) / total
                for name, c in zip(names, self.level_counts[:-1], strict=True)
            },
            "undecided": float(self.level_counts[-1]) / total,
        }

    def level_fractions(self) -> dict[str, float]:
        """Fraction of the last batch decided at each level, and undecided (skipped)."""
        n = max(len(self.last_levels), 1)
        out = {
            f"level{j}_{name.removeprefix('reward_')}": float(np.sum(self.last_levels == j)) / n
            for j, name in enumerate(self.ranking)
        }
        out["undecided"] = float(np.sum(self.last_levels < 0)) / n
        return out
