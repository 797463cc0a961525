"""TwoGoal: a point mass in a walled square with two goals (pbrl's multi-user task, VPL).

A MuJoCo model from an MJCF string (like :mod:`pbrl.envs.sweep`): a round agent that slides
in the plane (two slide joints, velocity actuators, |action| <= 1 m/s), a fixed start near the
bottom wall, and two goal discs near the top corners (the velocity target is
scaled to at most 1 m/s in any direction), goal ``a`` left (red) and goal ``b``
right (blue), that render but never collide.

Who wants what is not the environment's business: it reports both goals as reward factors
(in ``info``, like gymnasium's MuJoCo envs report theirs, so they reach
``Segments.reward_factors`` and offline datasets), and a user of the population teacher
(:mod:`pbrl.teachers.population`) prefers one factor or the other:

* ``reward_goal_a``: minus the distance to goal a (metres), from the state a step reached;
* ``reward_goal_b``: the same for goal b.

The env's own reward is the factor of ``goal`` (a constructor argument, ``"a"`` by default):
evaluation's true return is then one user's. ``info["at_goal_a"]`` / ``info["at_goal_b"]`` are
1.0 while the agent is within ``GOAL_RADIUS`` of that goal. Episodes have a fixed length (the
registration's 50 steps) and never terminate early.

Observation: position and velocity ``(x, y, vx, vy)``. :func:`goal_seeking_action` is the
scripted behaviour policy of the offline dataset (scripts/make_dataset.py ``--kinds goals``).
"""

from __future__ import annotations

from typing import Any, cast

import mujoco
import numpy as np
from gymnasium import spaces, utils
from gymnasium.envs.mujoco.mujoco_env import MujocoEnv

HALF = 0.5  # the arena is [-HALF, HALF]^2 (metres)
AGENT = 0.04  # agent radius
GOAL_RADIUS = 0.08  # "at a goal" within this distance of its centre
START = np.array([0.0, -0.35])  # fixed start (plus START_NOISE uniform jitter)
START_NOISE = 0.02
GOALS: dict[str, np.ndarray] = {"a": np.array([-0.3, 0.3]), "b": np.array([0.3, 0.3])}
FACTORS = tuple(f"goal_{g}" for g in GOALS)  # reward-factor names (info["reward_<name>"])
# a free camera; lookat is an array, as in gymnasium's own camera configs
DEFAULT_CAMERA_CONFIG: dict[str, float | np.ndarray] = {
    "distance": 1.55,
    "elevation": -90.0,
    "azimuth": 90.0,
    "lookat": np.array([0.0, 0.0, 0.0]),
}


def twogoal_xml() -> str:
    wall = HALF + 0.025
    goals = "\n".join(
        f'      <geom name="goal_{g}" type="cylinder" pos="{p[0]} {p[1]} 0.001" '
        f'size="{GOAL_RADIUS} 0.001" rgba="{rgba}" contype="0" conaffinity="0"/>'
        for (g, p), rgba in zip(GOALS.items(), ("0.9 0.25 0.2 1", "0.2 0.4 0.95 1"), strict=True)
    )
    # The arena is the first body and has no joint: StateRenderer keeps the camera fixed.
    return f"""<mujoco model="twogoal">
  <option timestep="0.01" gravity="0 0 0"/>
  <visual>
    <global offwidth="480" offheight="480"/>
    <quality shadowsize="1024"/>
    <headlight ambient="0.45 0.45 0.45" diffuse="0.35 0.35 0.35" specular="0 0 0"/>
  </visual>
  <worldbody>
    <light pos="0 0 3" dir="0 0 -1" directional="true" diffuse="0.3 0.3 0.3" specular="0 0 0"
           castshadow="false"/>
    <body name="arena">
      <geom name="floor" type="plane" size="{HALF} {HALF} 0.01" rgba="0.6 0.6 0.6 1"
            contype="0" conaffinity="0"/>
{goals}
      <geom name="wall_n" type="box" pos="0 {wall} 0.05" size="{wall + 0.025} 0.025 0.05"
            rgba="0.2 0.2 0.2 1"/>
      <geom name="wall_s" type="box" pos="0 {-wall} 0.05" size="{wall + 0.025} 0.025 0.05"
            rgba="0.2 0.2 0.2 1"/>
      <geom name="wall_e" type="box" pos="{wall} 0 0.05" size="0.025 {wall + 0.025} 0.05"
            rgba="0.2 0.2 0.2 1"/>
      <geom name="wall_w" type="box" pos="{-wall} 0 0.05" size="0.025 {wall + 0.025} 0.05"
            rgba="0.2 0.2 0.2 1"/>
    </body>
    <body name="agent" pos="0 0 0.03">
      <joint name="agent_x" type="slide" axis="1 0 0" damping="0.5"/>
      <joint name="agent_y" type="slide" axis="0 1 0" damping="0.5"/>
      <geom type="cylinder" size="{AGENT} 0.03" mass="1" rgba="0.55 0.2 0.75 1"/>
    </body>
  </worldbody>
  <actuator>
    <velocity joint="agent_x" kv="40" ctrlrange="-1 1" ctrllimited="true"/>
    <velocity joint="agent_y" kv="40" ctrlrange="-1 1" ctrllimited="true"/>
  </actuator>
</mujoco>"""


def goal_factors(xy: np.ndarray) -> dict[str, np.ndarray]:
    """The reward factors of positions ``xy [..., 2]``: minus the distance to each goal."""
    xy = np.asarray(xy, dtype=np.float64)
    return {f"reward_goal_{g}": -np.linalg.norm(xy - p, axis=-1) for g, p in GOALS.items()}


class TwoGoalEnv(MujocoEnv, utils.EzPickle):
    metadata = {"render_modes": ["human", "rgb_array", "depth_array"], "render_fps": 20}

    def __init__(
        self,
        goal: str = "a",
        frame_skip: int = 5,
        default_camera_config: dict[str, float | np.ndarray] | None = None,
        **kwargs: Any,
    ) -> None:
        if goal not in GOALS:
            raise ValueError(f"TwoGoal goal={goal!r}: choose one of {', '.join(GOALS)}")
        utils.EzPickle.__init__(self, goal, frame_skip, default_camera_config, **kwargs)
        self.goal = goal
        self._xml = twogoal_xml()
        MujocoEnv.__init__(
            self,
            __file__,  # MujocoEnv insists on a model file; the model comes from the string
            frame_skip,
            observation_space=spaces.Box(-np.inf, np.inf, (4,), np.float64),
            default_camera_config=cast(
                "dict[str, float]", default_camera_config or DEFAULT_CAMERA_CONFIG
            ),
            **kwargs,
        )
        self.metadata = {**self.metadata, "render_fps": int(round(1.0 / self.dt))}

    def _initialize_simulation(self) -> tuple[mujoco.MjModel, mujoco.MjData]:
        model = mujoco.MjModel.from_xml_string(self._xml)
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, self.width)
        model.vis.global_.offheight = max(model.vis.global_.offheight, self.height)
        return model, mujoco.MjData(model)

    @property
    def agent_xy(self) -> np.ndarray:
        return self.data.qpos[:2].copy()

    def _get_obs(self) -> np.ndarray:
        return np.concatenate([self.data.qpos[:2], self.data.qvel[:2]])

    def reset_model(self) -> np.ndarray:
        jitter = self.np_random.uniform(-START_NOISE, START_NOISE, size=2)
        self.set_state(START + jitter, np.zeros(self.model.nv))
        return self._get_obs()

    def step(
        self, action: np.ndarray
    ) -> tuple[np.ndarray, np.float64, bool, bool, dict[str, np.float64]]:
        action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        action = action / max(1.0, float(np.linalg.norm(action)))  # speed <= 1 in any direction
        self.do_simulation(action, self.frame_skip)
        xy = self.agent_xy
        info = {k: np.float64(v) for k, v in goal_factors(xy).items()}
        for g, p in GOALS.items():
            info[f"at_goal_{g}"] = np.float64(np.linalg.norm(xy - p) <= GOAL_RADIUS)
        reward = info[f"reward_goal_{self.goal}"]
        if self.render_mode == "human":
            self.render()
        return self._get_obs(), reward, False, False, info


def goal_seeking_action(
    obs: np.ndarray, goal: np.ndarray | None, rng: np.random.Generator, noise: float = 0.3
) -> np.ndarray:
    """The dataset's behaviour: head straight for ``goal`` (full speed, then proportional
    over the last 0.125 m) with Gaussian action noise; ``goal=None`` is uniform random
    exploration."""
    if goal is None:
        return rng.uniform(-1.0, 1.0, size=2)
    # straight at the goal: full speed, slowing down over the last 0.125 m
    delta = goal - np.asarray(obs)[:2]
    dist = float(np.linalg.norm(delta))
    act = delta / max(dist, 1e-8) * min(1.0, 8.0 * dist)
    return np.clip(act + noise * rng.normal(size=2), -1.0, 1.0)
