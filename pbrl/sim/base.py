"""Host-side bookkeeping shared by the batched MuJoCo backends.

A batched backend steps every sub-env's physics in one call and evaluates the task formulas
over the whole batch. What stays per env (the SB3 info dicts, episode statistics, the reset
noise streams) lives here, in numpy, and reproduces what gymnasium's ``TimeLimit``, SB3's
``Monitor`` and ``DummyVecEnv`` add around a single env.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvStepReturn

from pbrl.sim.tasks import MujocoTask


class BatchedMujocoVecEnv(VecEnv):
    """SB3 VecEnv over one :class:`MujocoTask`, all sub-envs stepped as one batch.

    Behaves like ``DummyVecEnv`` over ``Monitor(gymnasium.make(env_id))``: auto-reset with
    ``terminal_observation`` and ``TimeLimit.truncated`` in the infos, ``info["episode"]`` at
    each episode end, reset infos in ``reset_infos``, and per-env reset noise drawn from the
    same generator gymnasium would seed with ``seed + i``.

    Subclasses implement the physics: ``step_wait``, ``_reset_rows``, ``set_state``,
    ``sim_state`` and ``close``.
    """

    def __init__(self, task: MujocoTask, n_envs: int, max_episode_steps: int = 1000) -> None:
        if n_envs < 1:
            raise ValueError(f"n_envs must be positive, got {n_envs}")
        self.task = task
        self.env_id = task.env_id
        self.max_episode_steps = int(max_episode_steps)
        self.render_mode = None  # read by VecEnv.__init__ through get_attr
        obs_space = spaces.Box(-np.inf, np.inf, shape=(task.obs_dim,), dtype=np.float64)
        # gymnasium's MujocoEnv._set_action_space: the actuators' ctrlrange, as float32.
        low, high = task.model.actuator_ctrlrange.copy().astype(np.float32).T
        act_space = spaces.Box(low=low, high=high, dtype=np.float32)
        super().__init__(n_envs, obs_space, act_space)
        self._rngs = [seeding.np_random()[0] for _ in range(n_envs)]
        self._elapsed = np.zeros(n_envs, dtype=np.int64)
        self._ep_return = np.zeros(n_envs, dtype=np.float64)
        self._t_start = time.time()
        self._actions: np.ndarray | None = None
        self._info_keys = (*task.info_keys, "TimeLimit.truncated")

    # --- SB3 VecEnv API ------------------------------------------------------------------
    def reset(self) -> np.ndarray:
        for i, seed in enumerate(self._seeds):
            if seed is not None:
                self._rngs[i] = seeding.np_random(seed)[0]
        obs = self._reset_envs(np.arange(self.num_envs))
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions)

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[object]:
        # One simulator serves every sub-env: each index sees the batch's attribute.
        return [getattr(self, attr_name) for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: object, indices: VecEnvIndices = None) -> None:
        if indices is not None and len(list(self._get_indices(indices))) != self.num_envs:
            raise ValueError("batched backends share attributes: set them for all envs")
        setattr(self, attr_name, value)

    def env_method(
        self,
        method_name: str,
        *method_args: object,
        indices: VecEnvIndices = None,
        **kwargs: object,
    ) -> list[object]:
        raise NotImplementedError(
            f"{type(self).__name__} has no per-env objects to call {method_name!r} on"
        )

    def env_is_wrapped(
        self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None
    ) -> list[bool]:
        # Episode statistics are added exactly as SB3's Monitor does, so report Monitor: that
        # makes evaluate_policy read info["episode"] instead of warning.
        wrapped = issubclass(Monitor, wrapper_class)
        return [wrapped for _ in self._get_indices(indices)]

    # --- shared step/reset logic ---------------------------------------------------------
    def _reset_envs(self, ids: np.ndarray) -> np.ndarray:
        """Reset sub-envs ``ids`` with gymnasium's noise; return their observations."""
        states = [self.task.sample_reset(self._rngs[i]) for i in ids]
        qpos = np.stack([s[0] for s in states])
        qvel = np.stack([s[1] for s in states])
        obs, info_cols = self._reset_rows(ids, qpos, qvel)
        keys = self.task.reset_info_keys
        for i, row in zip(ids.tolist(), np.stack(info_cols, axis=1).tolist(), strict=True):
            self.reset_infos[i] = dict(zip(keys, row, strict=True))
        self._elapsed[ids] = 0
        self._ep_return[ids] = 0.0
        return obs

    def _finish_step(
        self,
        obs: np.ndarray,
        reward: np.ndarray,
        terminated: np.ndarray,
        info: np.ndarray,
    ) -> VecEnvStepReturn:
        """Time limit, episode statistics, infos and auto-reset, from float64 batch results.

        ``info`` holds the task's info columns, (n, len(task.info_keys)).
        """
        self._elapsed += 1
        truncated = self._elapsed >= self.max_episode_steps
        dones = terminated | truncated
        self._ep_return += reward
        # One tolist() per step, then a dict per env: much cheaper than per-element indexing.
        rows = info.tolist()
        keys = self._info_keys
        timeouts = (truncated & ~terminated).tolist()
        infos = [
            dict(zip(keys, (*row, t), strict=True)) for row, t in zip(rows, timeouts, strict=True)
        ]
        if dones.any():
            ids = np.flatnonzero(dones)
            now = round(time.time() - self._t_start, 6)
            qpos, qvel = self.sim_state()  # terminal states, before the auto-reset
            for i in ids.tolist():
                infos[i]["terminal_observation"] = obs[i].copy()
                infos[i]["terminal_qpos"], infos[i]["terminal_qvel"] = qpos[i], qvel[i]
                infos[i]["episode"] = {
                    "r": round(float(self._ep_return[i]), 6),
                    "l": int(self._elapsed[i]),
                    "t": now,
                }
            obs[ids] = self._reset_envs(ids)
        return obs, reward.astype(np.float32), dones, infos

    def _reset_rows(
        self, ids: np.ndarray, qpos: np.ndarray, qvel: np.ndarray
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Reset the physics of ``ids`` to these states; return obs rows and reset info columns."""
        raise NotImplementedError

    def set_state(
        self, qpos: np.ndarray, qvel: np.ndarray, indices: VecEnvIndices = None
    ) -> np.ndarray:
        """Overwrite sub-envs' joint state (as gymnasium's ``MujocoEnv.set_state``).

        Episode counters are left alone. Returns the observations at the new states.
        """
        raise NotImplementedError

    def sim_state(self) -> tuple[np.ndarray, np.ndarray]:
        """Copies of every sub-env's ``qpos`` (n, nq) and ``qvel`` (n, nv), as float64."""
        raise NotImplementedError

    def _index_array(self, indices: VecEnvIndices) -> np.ndarray:
        idx: Iterable[int] = self._get_indices(indices)
        return np.asarray(list(idx), dtype=np.int64)
