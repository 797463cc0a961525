"""Injecting the learned reward into SB3 from outside, and recording what it needs.

``PreferenceVecEnv`` sits between the simulator's VecEnv (with SB3's Monitor inside, so
``rollout/ep_rew_mean`` stays the *true* return) and the algorithm. Each step it records
the transition (true reward, reward factors, simulator state) into a ``TrajectoryPool`` and
replaces the reward with the learned reward of the step, or passes the true reward through when
``reward_model`` is None (the true-reward baselines run through the same code path).

The reward model is evaluated once per step for the whole batch. On a device-side backend
(``mujoco_warp``: ``last_obs_torch``) it reads the observations where they live, on the
batch's device, instead of going through numpy.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from typing import Any, Protocol, cast

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvStepReturn

from pbrl.data.pool import TrajectoryPool
from pbrl.errors import ConfigError
from pbrl.rewards.base import RewardModel
from pbrl.rewards.dispatch import Steps, score_steps, score_steps_on_device, step_fields
from pbrl.sim.probe import probe_env


class _SimStateVecEnv(Protocol):
    def sim_state(self) -> tuple[np.ndarray, np.ndarray]: ...


def sim_state(venv: VecEnv) -> tuple[np.ndarray, np.ndarray] | None:
    """Current ``(qpos, qvel)`` of every sub-env, or None for non-MuJoCo envs."""
    try:
        # every pbrl.sim backend provides it (through VecEnvWrappers' attribute forwarding)
        return cast(_SimStateVecEnv, venv).sim_state()
    except (AttributeError, TypeError):
        return None  # not a MuJoCo env


def make_pool(
    env_id: str,
    n_envs: int,
    capacity: int,
    env_kwargs: Mapping[str, object] | None = None,
    run: str = "",
) -> TrajectoryPool:
    """An empty trajectory pool shaped for ``env_id`` (sizes, reward factors, MuJoCo state)."""
    info = probe_env(env_id, env_kwargs)
    return TrajectoryPool(
        n_envs,
        capacity,
        info.obs_dim,
        info.act_dim,
        info.factor_names,
        info.state_dims,
        env_id,
        run,
    )


def random_rollout_pool(
    env_id: str, steps: int, seed: int = 0, env_kwargs: dict[str, Any] | None = None
) -> TrajectoryPool:
    """A pool of ``steps`` random-action steps in one env (MuJoCo state recorded, so the
    segments re-render; ``env_kwargs`` as a run's ``env.kwargs``): query material for tests
    and benchmarks."""
    pool = make_pool(env_id, 1, steps, env_kwargs)
    env = gym.make(env_id, **(env_kwargs or {}))
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    data = getattr(env.unwrapped, "data", None)  # a MuJoCo env's state, else None
    for _ in range(steps):
        state: dict[str, np.ndarray] = {}
        if data is not None:
            state = {"qpos": data.qpos.copy()[None], "qvel": data.qvel.copy()[None]}
        act = env.action_space.sample()
        nxt, reward, term, trunc, _ = env.step(act)
        if data is not None:
            state |= {"next_qpos": data.qpos.copy()[None], "next_qvel": data.qvel.copy()[None]}
        pool.add(
            obs[None], act[None], np.array([reward]), nxt[None], np.array([term]),
            np.array([trunc]), **state,
        )  # fmt: skip
        obs = nxt
        if term or trunc:
            obs, _ = env.reset()
    env.close()
    return pool


class PreferenceVecEnv(VecEnvWrapper):
    """Records each step into the pool and hands the agent the learned reward of the step
    (:func:`pbrl.rewards.dispatch.score_steps`: whatever the model's kind reads: ``(obs, act)``,
    the frame of the state the step reached, the step's reward factors), or the true reward
    when ``reward_model`` is None.

    What the kind reads beyond ``(obs, act)`` is also put in each step's ``info`` under
    ``step_<field>`` (:func:`pbrl.rewards.dispatch.step_fields`), so a replay buffer can keep
    it and relabel its transitions after a reward update. ``reward_s`` and ``scored`` count the
    time spent scoring and the steps scored (``time/reward_steps_per_s``)."""

    def __init__(
        self,
        venv: VecEnv,
        pool: TrajectoryPool | None,
        reward_model: RewardModel | None,
        keep: tuple[str, ...] = (),
        defer: bool = False,
    ) -> None:
        """``keep``: step fields reported beyond what the reward reads (HERON's transition
        pairs keep ``factors`` and ``true_reward`` in SAC's buffer whatever the reward).

        ``defer``: hand the agent a placeholder reward (0) and leave the scoring to whoever
        stores the steps (SAC's replay buffer scores a frame reward's steps in batches:
        :class:`~pbrl.online.pebble.EntropyReplayBuffer`), which reports them back through
        :meth:`score` and :meth:`add_scored`."""
        super().__init__(venv)
        self.defer = defer and reward_model is not None
        self.pool, self.reward_model = pool, reward_model
        fields = step_fields(reward_model) if reward_model is not None else ()
        self.fields = fields + tuple(k for k in keep if k not in fields)
        if "qpos" in self.fields and sim_state(venv) is None:
            raise ConfigError(
                f"reward {type(reward_model).__name__} scores rendered frames of the simulator "
                "state, which this env does not expose: use a MuJoCo env (e.g. env=reacher)"
            )
        self.factor_names: tuple[str, ...] = tuple(pool.factor_names) if pool is not None else ()
        self.last_obs: np.ndarray | None = None
        self.actions: np.ndarray | None = None
        self.state: tuple[np.ndarray, np.ndarray] | None = None  # (qpos, qvel) before the step
        self.obs_torch: torch.Tensor | None = None
        self.learned_return = np.zeros(self.num_envs)
        self.learned_episode_returns: deque[float] = deque(maxlen=100)
        self.reward_s, self.scored = 0.0, 0

    def _needs_state(self) -> bool:
        return "qpos" in self.fields or (self.pool is not None and self.pool.has_state)

    def reset(self) -> np.ndarray:
        obs = cast(np.ndarray, self.venv.reset())  # pbrl's envs have array observations
        self.last_obs = obs
        if self._needs_state():
            self.state = sim_state(self.venv)
        self.learned_return[:] = 0.0
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self.actions = np.asarray(actions)
        device_obs = getattr(self.venv, "last_obs_torch", None)  # a backend's optional batch
        self.obs_torch = None if device_obs is None else device_obs.clone()
        self.venv.step_async(actions)

    def step_wait(self) -> VecEnvStepReturn:
        step_obs, true_reward, dones, infos = self.venv.step_wait()
        obs = cast(np.ndarray, step_obs)  # pbrl's envs have array observations
        assert self.last_obs is not None and self.actions is not None, "call reset() first"
        prev_obs, actions = self.last_obs, self.actions
        reached = self._reached(dones, infos) if self._needs_state() else None
        factors = None
        if self.factor_names:
            factors = np.array([[info.get(k, 0.0) for k in self.factor_names] for info in infos])
        if self.pool is not None:
            self._record(prev_obs, actions, obs, true_reward, dones, infos, factors, reached)
        if reached is not None:
            self.state = sim_state(self.venv)
        reward = true_reward
        if self.reward_model is not None:
            if self.defer:
                reward = np.zeros(self.num_envs, dtype=np.float32)
            else:
                reward = self._score(prev_obs, actions, reached, factors)
            extra = {
                "qpos": None,
                "qvel": None,
                "factors": factors,
                "true_reward": np.asarray(true_reward, float)[:, None],
            }
            if reached is not None:
                extra["qpos"], extra["qvel"] = reached
            for name in self.fields:
                for j, info in enumerate(infos):
                    info[f"step_{name}"] = extra[name][j]  # type: ignore[index]
        if not self.defer:
            self.add_scored(reward[None], dones[None], infos)
        for j, info in enumerate(infos):
            info["true_reward"] = float(true_reward[j])
        self.last_obs = obs
        return obs, reward, dones, infos

    def add_scored(
        self, rewards: np.ndarray, dones: np.ndarray, infos: list[dict] | None = None
    ) -> None:
        """Learned rewards ``[T, n_envs]`` of the next ``T`` steps of every env in order, and
        where episodes ended: episode returns under the learned reward (``infos``: this
        step's, to carry the finished episodes' ``learned_return``). A NaN reward (a step left
        unscored) makes its episode's return unknown: it is not reported."""
        for reward, done in zip(rewards, dones, strict=True):
            self.learned_return += reward
            for i in np.flatnonzero(done):
                total = float(self.learned_return[i])
                if not np.isnan(total):
                    self.learned_episode_returns.append(total)
                    if infos is not None:
                        infos[i]["learned_return"] = total
                self.learned_return[i] = 0.0

    def score(self, steps: Steps) -> np.ndarray:
        """The learned reward of ``steps`` (timed and counted as scoring while stepping)."""
        assert self.reward_model is not None
        t0 = time.perf_counter()
        reward = score_steps(self.reward_model, steps)
        self.reward_s += time.perf_counter() - t0
        self.scored += len(reward)
        return reward

    def _score(
        self,
        obs: np.ndarray,
        act: np.ndarray,
        reached: tuple[np.ndarray, np.ndarray] | None,
        factors: np.ndarray | None,
    ) -> np.ndarray:
        assert self.reward_model is not None
        if self.obs_torch is not None:  # the batch lives on a device (MuJoCo Warp)
            t0 = time.perf_counter()
            act_t = torch.as_tensor(act, device=self.obs_torch.device)
            on_device = score_steps_on_device(self.reward_model, self.obs_torch, act_t)
            if on_device is not None:
                reward = on_device.cpu().numpy()
                self.reward_s += time.perf_counter() - t0
                self.scored += len(reward)
                return reward
        qpos, qvel = reached if reached is not None else (None, None)
        return self.score(Steps(obs, act, qpos, qvel, factors))

    def _reached(
        self, dones: np.ndarray, infos: list[dict]
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """The state each env reached: the next step's start state, except where an episode
        ended and the env auto-reset; there the backend left the terminal state in the info."""
        post = sim_state(self.venv)
        if post is None:
            return None
        qpos, qvel = post[0].copy(), post[1].copy()
        for i in np.flatnonzero(dones):
            if "terminal_qpos" in infos[i]:
                qpos[i], qvel[i] = infos[i]["terminal_qpos"], infos[i]["terminal_qvel"]
        return qpos, qvel

    def _record(
        self,
        obs: np.ndarray,
        act: np.ndarray,
        new_obs: np.ndarray,
        reward: np.ndarray,
        dones: np.ndarray,
        infos: list[dict],
        factors: np.ndarray | None,
        reached: tuple[np.ndarray, np.ndarray] | None,
    ) -> None:
        pool = self.pool
        assert pool is not None
        truncated = np.array([bool(i.get("TimeLimit.truncated", False)) for i in infos])
        terminated = dones & ~truncated
        next_obs = np.array(new_obs, copy=True)
        for i in np.flatnonzero(dones):
            next_obs[i] = infos[i]["terminal_observation"]
        qpos = qvel = next_qpos = next_qvel = None
        if pool.has_state and self.state is not None and reached is not None:
            (qpos, qvel), (next_qpos, next_qvel) = self.state, reached
        pool.add(
            obs,
            act,
            reward,
            next_obs,
            terminated,
            truncated,
            factors if pool.factor_names else None,
            qpos,
            qvel,
            next_qpos,
            next_qvel,
        )
