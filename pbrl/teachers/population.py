"""A population of scripted annotators who want different things (VPL's users, no humans).

``teacher=population`` is a list of members, each with its own ``id`` and its own preference:

* ``weights: {factor: w, ...}``: a B-Pref scripted teacher (``beta``, ``eps_mistake``, ...) on
  the segment return of ``sum_k w_k * factor_k`` (factor names with or without the
  ``reward_`` prefix of ``Segments.factor_names``), e.g. "goal_a: 1" for a user who wants
  goal a of ``pbrl/TwoGoal-v0``;
* ``ranking: [factor, ...]``: a HERON-style ranking of the factors, most important first
  (:class:`pbrl.teachers.heron.HeronTeacher`);
* neither: the env's own reward (a B-Pref teacher on ``true_reward``).

Each query is answered by one member: a round's queries are dealt out in turns from a random
first member, so every member answers the same number (within one). The answers carry the
member's id as ``annotator`` (:meth:`label`; the asynchronous interface the online loop
speaks returns them the same way), so ids survive the label store, exports and datasets.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from pbrl.data import PreferenceDataset, Queries, Segments
from pbrl.envs.spec import EnvSpec
from pbrl.teachers.base import Teacher
from pbrl.teachers.heron import HeronTeacher
from pbrl.teachers.scripted import ScriptedTeacher, TeacherConfigError

SCRIPTED_KEYS = ("beta", "gamma", "eps_mistake", "eps_skip", "eps_equal")


class WeightedFactors:
    """A B-Pref scripted teacher on a weighted sum of reward factors."""

    def __init__(self, weights: Mapping[str, float], teacher: ScriptedTeacher) -> None:
        if not weights:
            raise TeacherConfigError("a population member's weights are empty: name a factor")
        self.weights = {str(k).removeprefix("reward_"): float(v) for k, v in weights.items()}
        self.teacher = teacher

    def reward(self, segments: Segments) -> np.ndarray:
        if segments.reward_factors is None:
            raise TeacherConfigError(
                "a population member with weights needs segments with reward factors: use an "
                "env that reports them (e.g. env=twogoal) or a dataset built with them"
            )
        short = [n.removeprefix("reward_") for n in segments.factor_names]
        unknown = [k for k in self.weights if k not in short]
        if unknown:
            raise TeacherConfigError(
                f"teacher.members weights name {', '.join(unknown)}, which the segments do not "
                f"carry: their factors are {', '.join(short) or 'none'}"
            )
        w = np.array([self.weights.get(k, 0.0) for k in short], dtype=np.float64)
        r = segments.reward_factors.astype(np.float64) @ w
        return np.where(segments.mask, r, 0.0)

    def __call__(self, queries: Queries) -> np.ndarray:
        first = replace(queries.first, true_reward=self.reward(queries.first))
        second = replace(queries.second, true_reward=self.reward(queries.second))
        return self.teacher(Queries(first, second, queries.query_id))


class PopulationTeacher(Teacher):
    """Members with distinct ids; each query answered by one of them (:meth:`label`)."""

    def __init__(
        self,
        members: Sequence[Mapping[str, Any]],
        rng: np.random.Generator | None = None,
        env: EnvSpec | None = None,
    ) -> None:
        self.rng = rng if rng is not None else np.random.default_rng()
        if not members:
            raise TeacherConfigError("teacher.members is empty: list at least one annotator")
        self.ids: list[str] = []
        self.members: list[Any] = []
        for i, spec in enumerate(members):
            spec = dict(spec)
            uid = str(spec.pop("id", "")).strip()
            if not uid:
                raise TeacherConfigError(f"teacher.members[{i}] has no id: give each one an id")
            if uid in self.ids:
                raise TeacherConfigError(f"teacher.members: id {uid!r} is used twice")
            self.ids.append(uid)
            self.members.append(self._member(uid, spec))
        self._answered: list[PreferenceDataset] = []
        self.last_annotators = np.zeros(0, dtype=str)
        if env is not None:
            self.use_env(env)

    def use_env(self, env: EnvSpec) -> None:
        """The run's env, for members that check their ranking against its factors."""
        for member in self.members:
            if isinstance(member, Teacher):
                member.use_env(env)

    def _member(self, uid: str, spec: dict[str, Any]) -> Any:
        weights, ranking = spec.pop("weights", None), spec.pop("ranking", None)
        if weights is not None and ranking is not None:
            raise TeacherConfigError(f"teacher member {uid!r}: give weights or ranking, not both")
        rng = np.random.default_rng(self.rng.integers(2**63))
        if ranking is not None:
            return HeronTeacher(ranking=list(ranking), rng=rng, **spec)
        unknown = sorted(set(spec) - set(SCRIPTED_KEYS))
        if unknown:
            raise TeacherConfigError(
                f"teacher member {uid!r}: unknown key(s) {', '.join(unknown)}: use id, weights "
                f"or ranking, and {', '.join(SCRIPTED_KEYS)}"
            )
        if spec.get("beta", math.inf) is None:
            spec["beta"] = math.inf
        scripted = ScriptedTeacher(rng=rng, **spec)
        return scripted if weights is None else WeightedFactors(weights, scripted)

    # -- answering ---------------------------------------------------------------------------
    def assign(self, n: int) -> np.ndarray:
        """Which member (index) answers each of ``n`` queries: in turns from a random one."""
        return (int(self.rng.integers(len(self.ids))) + np.arange(n)) % len(self.ids)

    def answer(self, queries: Queries, who: np.ndarray) -> np.ndarray:
        """Labels of ``queries``, query ``i`` answered by member ``who[i]``."""
        labels = np.full(len(queries), np.nan)
        for m in np.unique(who):
            rows = np.flatnonzero(who == m)
            labels[rows] = self.members[int(m)](queries[rows])
        return labels

    def label(self, queries: Queries, annotator: str | None = None) -> PreferenceDataset:
        """Every query answered (by ``annotator``, or dealt out in turns), with ids."""
        if annotator is None:
            who = self.assign(len(queries))
        elif annotator in self.ids:
            who = np.full(len(queries), self.ids.index(annotator))
        else:
            raise TeacherConfigError(
                f"unknown annotator {annotator!r}: the population is {', '.join(self.ids)}"
            )
        labels = self.answer(queries, who)
        self.last_annotators = np.asarray(self.ids)[who] if len(who) else np.zeros(0, str)
        return PreferenceDataset(queries, labels, self.last_annotators.copy())

    def __call__(self, queries: Queries) -> np.ndarray:
        """Labels only (the synchronous :class:`~pbrl.teachers.base.Teacher` call); who
        answered each is in ``last_annotators``."""
        return self.label(queries).labels

    # -- the asynchronous interface (the online loop keeps the ids) ----------------------------
    def submit(self, queries: Queries) -> None:
        self._answered.append(self.label(queries))

    def collect(self) -> PreferenceDataset | None:
        done, self._answered = self._answered, []
        if not done:
            return None
        return done[0] if len(done) == 1 else PreferenceDataset.concatenate(done)

    def describe(self) -> dict[str, Any]:
        return {"annotators": list(self.ids)}
