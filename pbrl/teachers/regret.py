"""Regret teachers (Knox et al. 2022): prefer the segment that deviates less from optimal.

``RegretTeacher`` (continuous control) estimates ``V*`` and ``Q*`` with an expert's critic:
an SB3 SAC trained on the true reward, ``V(s) = min_i Q_i(s, μ(s))`` with ``μ`` the
deterministic actor. For a segment with valid steps ``t < T`` (``mask``), final
observation ``s_T`` and ``terminated`` flag:

* ``form="value"``: ``regret = V(s_0) - [Σ_t γ^t r_t + γ^T V(s_T) (1 - terminated)]``,
* ``form="advantage"``: ``regret = -Σ_t A(s_t, a_t)``, ``A = Q(s, a) - V(s)``.

``DeliveryTeacher`` labels delivery-gridworld segments with exact ``V*`` (regret model)
or by partial return. Both prefer the lower regret (higher utility): deterministically
(``beta=None``/inf; ties 0.5) or sampled with ``P(σ2 ≻ σ1) = sigmoid(beta · (u2 - u1))``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from numpy.typing import ArrayLike

from pbrl.data import Queries, Segments
from pbrl.envs.delivery import ACTION_DELTAS, TRUE_WEIGHTS, Board, DeliveryTables, as_board
from pbrl.regret.mdp import Solution, encode_segments, segment_stats, value_iteration
from pbrl.regret.preference import check_model, compare, utility
from pbrl.teachers.base import Scripted
from pbrl.teachers.scripted import TeacherConfigError

if TYPE_CHECKING:
    from stable_baselines3 import SAC

FORMS = ("value", "advantage")


class Critic(Protocol):
    """Value estimates of an expert: ``value(obs [B, D]) -> [B]``, ``q(obs, act) -> [B]``."""

    gamma: float

    def value(self, obs: np.ndarray) -> np.ndarray: ...

    def q(self, obs: np.ndarray, act: np.ndarray) -> np.ndarray: ...


class SACCritic:
    """``Critic`` view of an SB3 SAC model: the minimum over its Q networks (SAC's own
    target), evaluated at the deterministic actor action for ``V``."""

    def __init__(self, model: SAC, batch_size: int = 4096) -> None:
        self.model = model
        self.policy = model.policy
        self.gamma = float(model.gamma)
        self.batch_size = batch_size
        self.policy.set_training_mode(False)

    def value(self, obs: np.ndarray) -> np.ndarray:
        return self._batched(obs, None)

    def q(self, obs: np.ndarray, act: np.ndarray) -> np.ndarray:
        # the critic was trained on actions rescaled to [-1, 1]
        return self._batched(obs, self.policy.scale_action(np.asarray(act, dtype=np.float32)))

    def _batched(self, obs: np.ndarray, scaled_act: np.ndarray | None) -> np.ndarray:
        out = []
        with torch.no_grad():
            for i in range(0, len(obs), self.batch_size):
                obs_t, _ = self.policy.obs_to_tensor(obs[i : i + self.batch_size])
                if scaled_act is None:
                    act_t = self.policy.actor(obs_t, deterministic=True)
                else:
                    act_t = torch.as_tensor(
                        scaled_act[i : i + self.batch_size], device=self.policy.device
                    ).float()
                q = torch.min(torch.cat(self.policy.critic(obs_t, act_t), dim=1), dim=1).values
                out.append(q.cpu().numpy().astype(np.float64))
        return np.concatenate(out) if out else np.zeros(0)


def load_sac_critic(path: str | os.PathLike[str], device: str = "cpu") -> SACCritic:
    """Load an SB3 SAC ``.zip`` as a critic, with errors that say what to pass instead."""
    from stable_baselines3 import SAC

    if not os.path.isfile(path):
        raise TeacherConfigError(
            f"teacher.expert_path={path} does not exist: pass the .zip of an SB3 SAC expert "
            "trained on the true reward (model.save(path))"
        )
    try:
        return SACCritic(SAC.load(str(path), device=device))
    except Exception as exc:  # SB3 raises assorted errors for a wrong archive
        raise TeacherConfigError(
            f"teacher.expert_path={path} is not an SB3 SAC model ({type(exc).__name__}: {exc})"
        ) from exc


def _check_beta(beta: float | None) -> float:
    beta = math.inf if beta is None else float(beta)
    if not beta > 0:
        raise TeacherConfigError(f"teacher.beta={beta} is invalid: use beta > 0, or null/inf")
    return beta


@dataclass
class RegretTeacher(Scripted):
    """Labels continuous-control segments by regret under an expert's critic.

    Build with ``expert_path`` (an SB3 SAC ``.zip``, as Hydra does) or ``from_model``.
    ``gamma=None`` takes the expert's own discount, which its critic's values assume.
    """

    expert_path: str | None = None
    gamma: float | None = None
    form: str = "value"
    beta: float | None = None
    device: str = "cpu"
    rng: np.random.Generator = field(default_factory=np.random.default_rng)
    critic: Critic | None = None
    scale: float = field(init=False, repr=False)  # beta as a number (inf: deterministic)

    def __post_init__(self) -> None:
        if self.form not in FORMS:
            raise TeacherConfigError(f"teacher.form={self.form!r} is invalid: use one of {FORMS}")
        self.scale = _check_beta(self.beta)
        if self.critic is None:
            if not self.expert_path:
                raise TeacherConfigError(
                    "teacher=regret needs teacher.expert_path=PATH.zip: an SB3 SAC expert "
                    "trained on the true reward"
                )
            self.critic = load_sac_critic(self.expert_path, self.device)
        if self.gamma is None:
            self.gamma = float(self.critic.gamma)
        if not 0.0 < self.gamma <= 1.0:
            raise TeacherConfigError(f"teacher.gamma={self.gamma} is invalid: use 0 < gamma <= 1")

    @classmethod
    def from_model(cls, model: SAC, **kwargs: Any) -> RegretTeacher:
        """A teacher around an in-memory SB3 SAC model."""
        return cls(critic=SACCritic(model), **kwargs)

    def regret(self, segments: Segments) -> np.ndarray:
        """Regret ``[N]`` of each segment (lower is better)."""
        assert self.critic is not None and self.gamma is not None
        mask = segments.mask.astype(np.float64)
        n, t = mask.shape
        obs = segments.obs.reshape(n * t, *segments.obs.shape[2:])
        if self.form == "advantage":
            act = segments.act.reshape(n * t, *segments.act.shape[2:])
            adv = self.critic.q(obs, act) - self.critic.value(obs)
            return -(adv.reshape(n, t) * mask).sum(axis=1)
        discount = self.gamma ** np.arange(t)
        partial = (segments.true_reward * mask * discount).sum(axis=1)
        steps = mask.sum(axis=1)
        v_start = self.critic.value(segments.obs[:, 0])
        v_end = self.critic.value(segments.final_obs) * (1.0 - segments.terminated)
        return v_start - (partial + self.gamma**steps * v_end)

    def __call__(self, queries: Queries) -> np.ndarray:
        return compare(
            -self.regret(queries.first), -self.regret(queries.second), self.scale, self.rng
        )


@dataclass
class DeliveryTeacher(Scripted):
    """Scripted delivery-gridworld teacher under the regret or partial-return model.

    ``label_pairs(starts [N, 2, 2], moves [N, 2, T, 2])`` labels (row, col)-move pairs;
    calling it on ``Queries`` reads segments recorded from ``DeliveryEnv`` (obs = cell,
    act = action index, padded steps after termination).
    """

    board: Board | str | os.PathLike[str] | ArrayLike
    model: str = "regret"
    form: str = "value"
    beta: float | None = None
    gamma: float = 1.0
    weights: Any = field(default_factory=lambda: TRUE_WEIGHTS.copy())
    rng: np.random.Generator = field(default_factory=np.random.default_rng)
    scale: float = field(init=False, repr=False)
    tables: DeliveryTables = field(init=False, repr=False)
    solution: Solution = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.tables = as_board(self.board).tables
        self.scale = _check_beta(self.beta)
        if self.form not in FORMS:
            raise TeacherConfigError(f"teacher.form={self.form!r} is invalid: use one of {FORMS}")
        check_model(self.model)
        self.weights = np.asarray(self.weights, dtype=np.float64)
        self.solution = value_iteration(self.tables, self.weights, self.gamma)

    def utilities(self, starts: np.ndarray, moves: np.ndarray) -> np.ndarray:
        """Per-segment utility ``[N]`` for ``starts [N, 2]``, ``moves [N, T, 2]``."""
        segments = encode_segments(self.tables, starts, moves)
        stats = segment_stats(self.tables, segments, self.weights, self.solution)
        return utility(stats, self.model, self.form)

    def label_pairs(self, starts: np.ndarray, moves: np.ndarray) -> np.ndarray:
        starts, moves = np.asarray(starts), np.asarray(moves)
        n, t = moves.shape[0], moves.shape[2]
        u = self.utilities(starts.reshape(2 * n, 2), moves.reshape(2 * n, t, 2)).reshape(n, 2)
        return compare(u[:, 0], u[:, 1], self.scale, self.rng)

    def __call__(self, queries: Queries) -> np.ndarray:
        u1 = self.utilities(*_cells_and_moves(queries.first))
        u2 = self.utilities(*_cells_and_moves(queries.second))
        return compare(u1, u2, self.scale, self.rng)


def _cells_and_moves(segments: Segments) -> tuple[np.ndarray, np.ndarray]:
    act = segments.act.reshape(len(segments), segments.length).astype(np.int64)
    # padded steps may hold any action value: clip before the lookup, then zero them
    moves = np.where(segments.mask[..., None], ACTION_DELTAS[np.clip(act, 0, 3)], 0)
    return segments.obs[:, 0].astype(np.int64), moves
