"""Reward factors of classic-control tasks, for rankings of factors (HERON).

gymnasium's MuJoCo v5 envs already report their reward's terms in ``info`` (``reward_forward``,
``reward_ctrl``, ``reward_survive``, ``reward_contact``); these wrappers do the same for the
two classic-control tasks the HERON paper uses, so every factor reaches ``Segments`` through
the same path. The factors of a step add up to its reward exactly.

* ``pbrl/MountainCarContinuous-v0``: ``reward_goal`` (100 on the step that reaches the flag),
  ``reward_action`` (-0.1 a²).
* ``pbrl/Pendulum-v1``: ``reward_angle`` (-θ²), ``reward_velocity`` (-0.1 θ̇²),
  ``reward_torque`` (-0.001 u²), from the state before the step, as the env computes them.
"""

from __future__ import annotations

import math
from typing import Any, SupportsFloat, cast

import gymnasium as gym
import numpy as np
from gymnasium.envs.classic_control.pendulum import PendulumEnv


class MountainCarFactors(gym.Wrapper[np.ndarray, np.ndarray, np.ndarray, np.ndarray]):
    def step(
        self, action: np.ndarray
    ) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, object]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        info["reward_goal"] = 100.0 if terminated else 0.0
        info["reward_action"] = -0.1 * float(np.asarray(action).reshape(-1)[0]) ** 2
        return obs, reward, terminated, truncated, info


class PendulumFactors(gym.Wrapper[np.ndarray, np.ndarray, np.ndarray, np.ndarray]):
    def step(
        self, action: np.ndarray
    ) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, object]]:
        env = cast(PendulumEnv, self.env.unwrapped)
        theta, theta_dot = (float(x) for x in env.state)
        u = float(np.clip(np.asarray(action).reshape(-1)[0], -env.max_torque, env.max_torque))
        obs, reward, terminated, truncated, info = self.env.step(action)
        angle = ((theta + math.pi) % (2 * math.pi)) - math.pi
        info["reward_angle"] = -(angle**2)
        info["reward_velocity"] = -0.1 * theta_dot**2
        info["reward_torque"] = -0.001 * u**2
        return obs, reward, terminated, truncated, info


def mountain_car(**kwargs: Any) -> gym.Env[np.ndarray, np.ndarray]:
    return MountainCarFactors(gym.make("MountainCarContinuous-v0", **kwargs).unwrapped)


def pendulum(**kwargs: Any) -> gym.Env[np.ndarray, np.ndarray]:
    return PendulumFactors(gym.make("Pendulum-v1", **kwargs).unwrapped)
