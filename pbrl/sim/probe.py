"""What an environment looks like to pbrl, read off one step: sizes, reward factors, state."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np


def reward_factor_names(info: Mapping[str, object]) -> tuple[str, ...]:
    """Named scalar reward components gymnasium's MuJoCo envs put in ``info``."""
    return tuple(sorted(k for k, v in info.items() if k.startswith("reward_") and np.isscalar(v)))


def _flat_dim(space: gym.Space[object]) -> int:
    """Number of scalars in one element of a space with a shape (Box, Discrete, ...)."""
    if space.shape is None:  # Dict/Tuple spaces (np.prod(None) failed with TypeError too)
        raise TypeError(f"{space} has no shape: pbrl needs an array observation/action space")
    return int(np.prod(space.shape))


@dataclass(frozen=True)
class EnvInfo:
    obs_dim: int
    act_dim: int
    factor_names: tuple[str, ...]  # reward components in ``info`` (``reward_*``)
    state_dims: tuple[int, int] | None  # (nq, nv) of a MuJoCo env, else None


def probe_env(env_id: str, env_kwargs: Mapping[str, Any] | None = None) -> EnvInfo:
    """Shapes, reward-factor names and simulator-state sizes of an env, from one step."""
    import pbrl.envs  # noqa: F401  (registers pbrl/ environments)

    env = gym.make(env_id, **(env_kwargs or {}))
    env.reset(seed=0)
    _, _, _, _, info = env.step(env.action_space.sample())
    data = getattr(env.unwrapped, "data", None)
    out = EnvInfo(
        obs_dim=_flat_dim(env.observation_space),
        act_dim=_flat_dim(env.action_space),
        factor_names=reward_factor_names(info),
        state_dims=(len(data.qpos), len(data.qvel)) if data is not None else None,
    )
    env.close()
    return out
