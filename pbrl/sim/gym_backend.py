"""``gymnasium`` backend: the reference, SB3's DummyVecEnv over ``Monitor(gymnasium.make())``."""

from __future__ import annotations

from typing import Any, Protocol, SupportsFloat, cast

import gymnasium as gym
import mujoco
import numpy as np
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices


class _MujocoState(Protocol):
    """What is read of a gymnasium MuJoCo env (``MujocoEnv`` subclasses)."""

    data: mujoco.MjData

    def set_state(self, qpos: np.ndarray, qvel: np.ndarray) -> None: ...

    def _get_obs(self) -> np.ndarray: ...


class TerminalStateInfo(gym.Wrapper[np.ndarray, np.ndarray, np.ndarray, np.ndarray]):
    """Puts the MuJoCo state of an episode's last step into its info (``terminal_qpos``,
    ``terminal_qvel``), before the VecEnv's auto-reset overwrites it."""

    def step(
        self, action: np.ndarray
    ) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, object]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        if terminated or truncated:
            # Wrapped only around envs with MuJoCo ``data`` (GymnasiumVecEnv.make).
            data = cast(_MujocoState, self.env.unwrapped).data
            info["terminal_qpos"], info["terminal_qvel"] = data.qpos.copy(), data.qvel.copy()
        return obs, reward, terminated, truncated, info


class GymnasiumVecEnv(DummyVecEnv):
    """DummyVecEnv of ``n_envs`` monitored ``gymnasium.make(env_id, **env_kwargs)``.

    Works for any gymnasium env; ``sim_state``/``set_state`` need a MuJoCo env.
    """

    def __init__(self, env_id: str, n_envs: int, **env_kwargs: Any) -> None:
        def make() -> gym.Env:
            env = gym.make(env_id, **env_kwargs)
            if hasattr(env.unwrapped, "data"):
                env = TerminalStateInfo(env)
            return Monitor(env)

        super().__init__([make for _ in range(n_envs)])
        self.env_id = env_id

    def _mujoco(self, i: int) -> _MujocoState:
        env = self.envs[i].unwrapped
        if not hasattr(env, "data"):
            raise TypeError(f"{self.env_id} is not a MuJoCo env: it has no simulator state")
        return cast(_MujocoState, env)

    def sim_state(self) -> tuple[np.ndarray, np.ndarray]:
        """Copies of every sub-env's ``qpos`` (n, nq) and ``qvel`` (n, nv)."""
        envs = [self._mujoco(i) for i in range(self.num_envs)]
        return np.stack([e.data.qpos for e in envs]), np.stack([e.data.qvel for e in envs])

    def set_state(
        self, qpos: np.ndarray, qvel: np.ndarray, indices: VecEnvIndices = None
    ) -> np.ndarray:
        """``MujocoEnv.set_state`` on sub-envs ``indices``; returns their observations."""
        ids = list(self._get_indices(indices))
        qpos, qvel = np.atleast_2d(qpos), np.atleast_2d(qvel)
        obs = []
        for row, i in enumerate(ids):
            env = self._mujoco(i)
            env.set_state(np.array(qpos[row], dtype=np.float64), np.array(qvel[row]))
            ob = env._get_obs()
            self._save_obs(i, ob)
            obs.append(ob)
        return np.stack(obs)
