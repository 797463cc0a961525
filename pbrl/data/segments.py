"""Segments: fixed-length windows of trajectories, stored as a batch of arrays.

A single segment is a ``Segments`` of length 1; every component of pbrl (teachers, reward
models, query selection, datasets, the labeling page) reads and writes this one type.

Episodes that end before a window is full (a Hopper falling over) are padded: ``mask`` is
False on padded steps, their rewards are zero, and every sum over a segment (its return, a
reward model's predicted return) counts only the valid steps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, TypedDict

import numpy as np
from numpy.typing import ArrayLike

# Rows of a batch: one row (kept as a batch of one), a slice, indices or a boolean mask.
Rows = int | np.integer | slice | Sequence[int] | np.ndarray


class _Meta(TypedDict):
    """The fields of ``Segments`` that are not per-row arrays."""

    factor_names: tuple[str, ...]
    env_id: str
    run: str


# Array fields with a leading batch dimension; ``None`` when a source does not provide them.
_ARRAY_FIELDS = (
    "obs",
    "act",
    "true_reward",
    "mask",
    "final_obs",
    "terminated",
    "reward_factors",
    "qpos",
    "qvel",
    "episode",
    "start",
)


@dataclass
class Segments:
    """A batch of ``N`` trajectory windows of ``T`` steps.

    ``true_reward`` (and ``reward_factors``) are for scripted teachers and evaluation only:
    no learner reads them.
    """

    obs: np.ndarray  # [N, T, *obs_shape] observation before each action
    act: np.ndarray  # [N, T, *act_shape]
    true_reward: np.ndarray  # [N, T] environment reward (0 on padded steps)
    mask: np.ndarray  # [N, T] bool, False on steps after the episode ended
    final_obs: np.ndarray  # [N, *obs_shape] observation after the last valid action
    terminated: np.ndarray  # [N] bool, the episode terminated inside this window
    reward_factors: np.ndarray | None = None  # [N, T, K] named reward components
    qpos: np.ndarray | None = None  # [N, T + 1, nq] simulator state, for re-rendering
    qvel: np.ndarray | None = None  # [N, T + 1, nv]
    episode: np.ndarray | None = None  # [N] int, episode index within its run
    start: np.ndarray | None = None  # [N] int, step of the episode the window starts at
    factor_names: tuple[str, ...] = ()
    env_id: str = ""
    run: str = ""

    def __post_init__(self) -> None:
        n, t = self.true_reward.shape
        self.mask = self.mask.astype(bool)
        self.terminated = self.terminated.astype(bool)
        if self.episode is None:
            self.episode = np.full(n, -1, dtype=np.int64)
        if self.start is None:
            self.start = np.zeros(n, dtype=np.int64)
        for name in _ARRAY_FIELDS:
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"Segments.{name} has {len(value)} rows, expected {n}")
        if self.obs.shape[1] != t or self.act.shape[1] != t or self.mask.shape != (n, t):
            raise ValueError("Segments: obs, act and mask must all have T steps")
        if self.reward_factors is not None and self.reward_factors.shape[-1] != len(
            self.factor_names
        ):
            raise ValueError("Segments.reward_factors needs one name per factor in factor_names")

    # -- shape ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.true_reward.shape[0])

    @property
    def length(self) -> int:
        """Window length ``T`` in steps."""
        return int(self.true_reward.shape[1])

    def __getitem__(self, index: Rows) -> Segments:
        """Select rows (an int keeps the batch dimension)."""
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        values: dict[str, Any] = {name: _take(getattr(self, name), index) for name in _ARRAY_FIELDS}
        return Segments(**values, **self._meta())

    # -- statistics ----------------------------------------------------------------------
    def returns(self, gamma: float = 1.0) -> np.ndarray:
        """Sum of true reward over valid steps, later steps weighted ``gamma**(T-1-t)``."""
        weights = gamma ** np.arange(self.length - 1, -1, -1, dtype=np.float64)
        return (self.true_reward * self.mask * weights).sum(axis=1)

    # -- construction / serialization ----------------------------------------------------
    def _meta(self) -> _Meta:
        return {"factor_names": self.factor_names, "env_id": self.env_id, "run": self.run}

    @staticmethod
    def concatenate(parts: list[Segments]) -> Segments:
        if not parts:
            raise ValueError("Segments.concatenate needs at least one batch")
        meta = parts[0]._meta()
        values: dict[str, Any] = {}
        for name in _ARRAY_FIELDS:
            arrays = [getattr(p, name) for p in parts]
            values[name] = None if any(a is None for a in arrays) else np.concatenate(arrays)
        return Segments(**values, **meta)

    def to_arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        """Flat ``name -> array`` dict (for ``np.savez``); round-trips with ``from_arrays``."""
        out = {prefix + n: getattr(self, n) for n in _ARRAY_FIELDS if getattr(self, n) is not None}
        out[prefix + "factor_names"] = np.array(self.factor_names, dtype=str)
        out[prefix + "env_id"] = np.array(self.env_id)
        out[prefix + "run"] = np.array(self.run)
        return out

    @staticmethod
    def from_arrays(arrays: Mapping[str, ArrayLike], prefix: str = "") -> Segments:
        def get(name: str) -> Any:
            key = prefix + name
            return np.asarray(arrays[key]) if key in arrays else None

        values = {name: get(name) for name in _ARRAY_FIELDS}
        return Segments(
            **values,
            factor_names=tuple(str(x) for x in get("factor_names").tolist()),
            env_id=str(get("env_id")),
            run=str(get("run")),
        )

    def equals(self, other: Segments) -> bool:
        """Exact equality of every field (used by round-trip tests)."""
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
                if a is None or b is None or a.dtype != b.dtype or not np.array_equal(a, b):
                    return False
            elif a != b:
                return False
        return True


def _take(value: np.ndarray | None, index: Rows) -> np.ndarray | None:
    return None if value is None else value[index]
