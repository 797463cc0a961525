"""A scripted teacher that ranks triplets of segments (RAPL's feedback), with B-Pref's noise.

Queries whose ids name a triplet's pairs (``<triplet>:ab``, ``:ac``, ``:bc``;
:mod:`pbrl.data.triplets`) are answered as one ranking of the three segments, so the three
labels are always consistent. Other queries are answered pair by pair, exactly as
:class:`~pbrl.teachers.scripted.ScriptedTeacher`. The noise options keep their B-Pref
meaning, carried over from pairs to a ranking:

* ``beta`` (rationality): the ranking is drawn from the Plackett–Luce model with weights
  ``exp(beta * R_i)`` (the Bradley–Terry model of the pair teacher, extended to three
  items: which segment comes first is a softmax of ``beta * R``); ``inf`` ranks by return.
* ``gamma`` (myopia): returns weight later steps more (``R = sum_t gamma**(T-1-t) r_t``).
* ``eps_mistake``: with this probability two neighbours of the ranking swap places.
* ``eps_equal``: two segments whose undiscounted returns differ by less than
  ``eps_equal * margin`` are labeled equal (0.5).
* ``eps_skip``: the whole triplet is skipped (NaN) when all three undiscounted returns are
  below ``eps_skip * margin``.
* ``equal_gap`` (not B-Pref's; RAPL's equal triplets): two segments whose undiscounted returns
  differ by less than ``equal_gap`` times the range of returns in the batch are labeled
  equal. Unlike ``eps_equal`` it does not scale with the mean return, which is near 0 on
  tasks whose reward changes sign. ``sample_triplets(..., equal_fraction, equal_gap)``
  draws the triplets such a teacher ranks as all equal.

``margin`` is the mean undiscounted return of the segments in the batch, as for pairs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from pbrl.data import Queries
from pbrl.data.triplets import PAIRS, group_triplets
from pbrl.teachers.base import Scripted
from pbrl.teachers.scripted import ScriptedTeacher


@dataclass
class TripletTeacher(Scripted):
    beta: float = math.inf
    gamma: float = 1.0
    eps_mistake: float = 0.0
    eps_skip: float = 0.0
    eps_equal: float = 0.0
    equal_gap: float = 0.0
    rng: np.random.Generator = field(default_factory=np.random.default_rng)

    def __post_init__(self) -> None:
        # The pair teacher checks (and normalizes) the same settings and answers lone pairs.
        self.pairs = ScriptedTeacher(
            self.beta, self.gamma, self.eps_mistake, self.eps_skip, self.eps_equal, self.rng
        )
        self.beta = self.pairs.beta
        if not 0.0 <= self.equal_gap < 1.0:
            raise ValueError(f"equal_gap={self.equal_gap}: use 0 <= it < 1")
        self._ranked = 0
        self._equal = 0

    def stats(self) -> dict[str, float]:
        """``preferences/triplets``: triplets ranked in the last call; ``equal_triplets``:
        those ranked all equal."""
        return {"triplets": float(self._ranked), "equal_triplets": float(self._equal)}

    def __call__(self, queries: Queries) -> np.ndarray:
        n = len(queries)
        labels = np.full(n, np.nan)
        self._equal = 0
        if n == 0:
            return labels
        r1, r2 = queries.first.returns(), queries.second.returns()
        d1, d2 = queries.first.returns(self.gamma), queries.second.returns(self.gamma)
        margin = float(np.mean(np.concatenate([r1, r2])))
        both = np.concatenate([r1, r2])
        tie_below = self.equal_gap * float(both.max() - both.min())
        groups = {t: rows for t, rows in group_triplets(queries.query_id).items() if len(rows) == 3}
        for rows in groups.values():
            # returns of the members a, b, c (a, b from pair ab; c from pair ac)
            ret = np.array([r1[rows["ab"]], r2[rows["ab"]], r2[rows["ac"]]])
            disc = np.array([d1[rows["ab"]], d2[rows["ab"]], d2[rows["ac"]]])
            ranked = self._rank(ret, disc, margin, tie_below)
            for name, value in ranked.items():
                labels[rows[name]] = value
            self._equal += all(v == 0.5 for v in ranked.values())
        self._ranked = len(groups)
        lone = np.setdiff1d(np.arange(n), [r for g in groups.values() for r in g.values()])
        if lone.size:
            labels[lone] = self.pairs(queries[lone])
        return labels

    def _rank(
        self, ret: np.ndarray, disc: np.ndarray, margin: float, tie_below: float = 0.0
    ) -> dict[str, float]:
        """Labels of pairs ab, ac, bc from one (noisy) ranking of three segments."""
        if self.eps_skip > 0 and ret.max() < self.eps_skip * margin:
            return {name: math.nan for name, _, _ in PAIRS}
        if math.isinf(self.beta):
            utility = disc
        else:  # Plackett-Luce: sort by beta * R + Gumbel noise
            utility = self.beta * disc + self.rng.gumbel(size=3)
        order = list(np.argsort(-utility, kind="stable"))
        if self.eps_mistake > 0 and self.rng.random() < self.eps_mistake:
            k = int(self.rng.integers(2))
            order[k], order[k + 1] = order[k + 1], order[k]
        position = {m: p for p, m in enumerate(order)}
        out = {}
        for name, i, j in PAIRS:
            tie = (
                (math.isinf(self.beta) and disc[i] == disc[j])
                or (self.eps_equal > 0 and abs(ret[i] - ret[j]) < self.eps_equal * abs(margin))
                or abs(ret[i] - ret[j]) < tie_below
            )
            out[name] = 0.5 if tie else (0.0 if position[i] < position[j] else 1.0)
        return out
