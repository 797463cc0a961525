"""Whole episodes of scripted behaviour as ``Segments``, and task success from states.

Visual-reward experiments (RAPL) need videos of varied quality with a known true reward:
:func:`collect_episodes` runs a mix of a task's scripted expert (where pbrl has one) and
random actions — per episode, each step is random with probability ``eps`` drawn
uniformly from ``eps_range`` — and returns every episode whole (fixed length), with the
simulator states (``qpos``/``qvel``: ``T + 1`` per episode) that re-render it, the true
reward and its factors.

:func:`task_success` says whether a state solves the task: every block in the zone
(``pbrl/Sweep-v0``), or the object within ``PUSHER_RADIUS`` of the goal (``Pusher-v5``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import gymnasium as gym
import numpy as np
from gymnasium.envs.mujoco.mujoco_env import MujocoEnv
from numpy.typing import DTypeLike

from pbrl.data.segments import Segments
from pbrl.envs.sweep import ZONE_Y, SweepEnv, expert_action

PUSHER_RADIUS = 0.1  # m: the object's centre this close to the goal's counts as success

# env id -> scripted expert(unwrapped env) -> action
EXPERTS: dict[str, Callable[[SweepEnv], np.ndarray]] = {"pbrl/Sweep-v0": expert_action}


@dataclass
class _Episode:
    """One episode's steps as collected (stacked into ``Segments`` at the end)."""

    obs: list[np.ndarray] = field(default_factory=list)
    act: list[np.ndarray] = field(default_factory=list)
    rew: list[float] = field(default_factory=list)
    fac: list[dict[str, float]] = field(default_factory=list)  # reward_* of info
    qpos: list[np.ndarray] = field(default_factory=list)  # the states, reset's first
    qvel: list[np.ndarray] = field(default_factory=list)
    final_obs: np.ndarray | None = None


def task_success(env_id: str, qpos: np.ndarray) -> np.ndarray:
    """Success of states ``qpos [..., nq]`` of ``env_id`` (bool ``[...]``)."""
    qpos = np.asarray(qpos)
    if env_id == "pbrl/Sweep-v0":
        blocks = qpos[..., 2:].reshape(*qpos.shape[:-1], -1, 2)
        return np.all(blocks[..., 1] >= ZONE_Y, axis=-1)
    if env_id.startswith("Pusher-"):
        # qpos: 7 arm joints, the object's (x, y) slides, the goal's (x, y) slides; both
        # bodies start at the same place, so the slides' difference is their distance
        return np.linalg.norm(qpos[..., 7:9] - qpos[..., 9:11], axis=-1) < PUSHER_RADIUS
    raise ValueError(f"task_success knows pbrl/Sweep-v0 and Pusher-v5, not {env_id!r}")


def collect_episodes(
    env_id: str,
    n_episodes: int,
    seed: int,
    rng: np.random.Generator,
    eps_range: tuple[float, float] = (0.0, 1.0),
    env_kwargs: dict[str, Any] | None = None,
    run: str = "",
) -> Segments:
    """``n_episodes`` whole episodes (reset seeds ``seed + i``), each a segment of the env's
    fixed episode length; random actions with probability ``eps ~ U(eps_range)`` per
    episode, the scripted expert otherwise (only random where the env has no expert)."""
    import pbrl.envs  # noqa: F401  (registers pbrl/ environments)

    env = gym.make(env_id, **(env_kwargs or {}))
    env.action_space.seed(int(rng.integers(2**31)))
    if not hasattr(env.unwrapped, "data"):
        raise ValueError(f"{env_id} is not a MuJoCo env: its episodes cannot be re-rendered")
    u = cast(MujocoEnv, env.unwrapped)
    expert = EXPERTS.get(env_id)
    episodes: list[_Episode] = []
    for i in range(n_episodes):
        obs, _ = env.reset(seed=seed + i)
        eps = rng.uniform(*eps_range) if expert is not None else 1.0
        ep = _Episode()
        ep.qpos.append(u.data.qpos.copy())
        ep.qvel.append(u.data.qvel.copy())
        done = False
        while not done:
            if expert is None or rng.random() < eps:
                act = env.action_space.sample()
            else:
                act = expert(cast(SweepEnv, u))  # the only env with an expert
            ep.obs.append(obs)
            ep.act.append(np.asarray(act, dtype=np.float32))
            obs, r, terminated, truncated, info = env.step(act)
            done = terminated or truncated
            if terminated:
                raise ValueError(
                    f"{env_id} terminated an episode: collect_episodes needs fixed-length episodes"
                )
            ep.rew.append(float(r))
            ep.fac.append({k: float(v) for k, v in info.items() if k.startswith("reward_")})
            ep.qpos.append(u.data.qpos.copy())
            ep.qvel.append(u.data.qvel.copy())
        ep.final_obs = obs
        episodes.append(ep)
    env.close()
    names = tuple(sorted(episodes[0].fac[0])) if episodes and episodes[0].fac else ()
    lengths = {len(ep.rew) for ep in episodes}
    if len(lengths) > 1:
        raise ValueError(f"{env_id}: episodes of different lengths {sorted(lengths)}")

    def stack(
        rows: Sequence[Sequence[float] | Sequence[np.ndarray]], dtype: DTypeLike = np.float32
    ) -> np.ndarray:
        return np.array([np.asarray(row, dtype=dtype) for row in rows])

    factors = np.array([[[f[k] for k in names] for f in ep.fac] for ep in episodes])
    n, t = len(episodes), lengths.pop() if lengths else 0
    return Segments(
        obs=stack([ep.obs for ep in episodes]),
        act=stack([ep.act for ep in episodes]),
        true_reward=stack([ep.rew for ep in episodes]),
        mask=np.ones((n, t), bool),
        final_obs=np.array([ep.final_obs for ep in episodes], dtype=np.float32),
        terminated=np.zeros(n, bool),
        reward_factors=factors.astype(np.float32) if names else None,
        qpos=stack([ep.qpos for ep in episodes], np.float64),
        qvel=stack([ep.qvel for ep in episodes], np.float64),
        episode=np.arange(n, dtype=np.int64),
        start=np.zeros(n, dtype=np.int64),
        factor_names=names,
        env_id=env_id,
        run=run,
    )


__all__ = ["EXPERTS", "PUSHER_RADIUS", "collect_episodes", "task_success"]
