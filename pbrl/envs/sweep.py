"""Sweep: a planar agent pushes a few blocks into a goal zone (pbrl's X-Magical-like task).

A MuJoCo model built from an MJCF string: a square walled arena seen from above, a round
agent and ``n_objects`` square blocks that slide in the plane (two slide joints each; joint
damping stands in for floor friction), and a green goal zone along the top wall that
renders but never collides. The agent's two actuators set its velocity (m/s, in [-1, 1]).

What matters is where the blocks end up, not how the agent moves: the true reward of a
step, from the state it reaches, is the sum of two factors (in ``info`` like gymnasium's
MuJoCo envs report theirs, so they reach ``Segments.reward_factors``):

* ``reward_in_zone``: the fraction of blocks whose centre is inside the zone (0..1);
* ``reward_progress``: minus the blocks' mean distance to the zone, in arena widths
  (0 once every block is inside).

``info["success"]`` is 1.0 when every block is inside the zone (else 0.0). Episodes have a fixed
length (``max_episode_steps``, 50) and never terminate early, so every episode's video has
the same number of frames. Observation: agent position and velocity, then each block's
position and velocity (``4 + 4 * n_objects`` values). ``qpos``/``qvel`` are the full
simulator state, so :class:`pbrl.video.StateRenderer` re-renders any stored step.

:func:`expert_action` is a scripted pusher that sweeps the blocks into the zone one after
the other: demonstrations and a known-good policy for tests and benchmarks.
"""

from __future__ import annotations

from typing import Any, cast

import mujoco
import numpy as np
from gymnasium import spaces, utils
from gymnasium.envs.mujoco.mujoco_env import MujocoEnv

HALF = 0.5  # the arena is [-HALF, HALF]^2 (metres)
ZONE_Y = 0.25  # the goal zone is y >= ZONE_Y (the strip along the top wall)
BLOCK = 0.05  # block half-size
AGENT = 0.06  # agent radius
AGENT_SPEED = 1.0  # |action| <= 1 is a velocity target in m/s
COLORS = ("0.85 0.2 0.2 1", "0.2 0.35 0.9 1", "0.95 0.75 0.1 1", "0.2 0.7 0.7 1")
# a free camera; lookat is an array, as in gymnasium's own camera configs
DEFAULT_CAMERA_CONFIG: dict[str, float | np.ndarray] = {
    "distance": 1.55,
    "elevation": -90.0,
    "azimuth": 90.0,
    "lookat": np.array([0.0, 0.0, 0.0]),
}


def sweep_xml(n_objects: int = 3) -> str:
    """The MJCF of an arena with ``n_objects`` blocks."""
    if not 1 <= n_objects <= len(COLORS):
        raise ValueError(f"n_objects={n_objects}: use 1..{len(COLORS)}")
    wall = HALF + 0.025
    blocks = "\n".join(
        f"""    <body name="block{k}" pos="0 0 {BLOCK}">
      <joint name="block{k}_x" type="slide" axis="1 0 0" damping="4"/>
      <joint name="block{k}_y" type="slide" axis="0 1 0" damping="4"/>
      <geom type="box" size="{BLOCK} {BLOCK} {BLOCK}" mass="0.3" rgba="{COLORS[k]}"/>
    </body>"""
        for k in range(n_objects)
    )
    # The arena (walls, zone, floor) is the first body: it has no joint, so StateRenderer
    # keeps the camera fixed instead of following a moving body.
    return f"""<mujoco model="sweep">
  <option timestep="0.01" gravity="0 0 0"/>
  <visual>
    <global offwidth="480" offheight="480"/>
    <quality shadowsize="1024"/>
    <headlight ambient="0.45 0.45 0.45" diffuse="0.35 0.35 0.35" specular="0 0 0"/>
  </visual>
  <default><geom contype="1" conaffinity="1" friction="0.2 0.005 0.0001" condim="3"/></default>
  <worldbody>
    <light pos="0 0 3" dir="0 0 -1" directional="true" diffuse="0.3 0.3 0.3" specular="0 0 0"
           castshadow="false"/>
    <body name="arena">
      <geom name="floor" type="plane" size="{HALF} {HALF} 0.01" rgba="0.55 0.55 0.55 1"
            contype="0" conaffinity="0"/>
      <geom name="zone" type="box" pos="0 {(ZONE_Y + HALF) / 2} 0.001"
            size="{HALF} {(HALF - ZONE_Y) / 2} 0.001" rgba="0.3 0.75 0.35 1"
            contype="0" conaffinity="0"/>
      <geom name="wall_n" type="box" pos="0 {wall} 0.05" size="{wall + 0.025} 0.025 0.05"
            rgba="0.2 0.2 0.2 1"/>
      <geom name="wall_s" type="box" pos="0 {-wall} 0.05" size="{wall + 0.025} 0.025 0.05"
            rgba="0.2 0.2 0.2 1"/>
      <geom name="wall_e" type="box" pos="{wall} 0 0.05" size="0.025 {wall + 0.025} 0.05"
            rgba="0.2 0.2 0.2 1"/>
      <geom name="wall_w" type="box" pos="{-wall} 0 0.05" size="0.025 {wall + 0.025} 0.05"
            rgba="0.2 0.2 0.2 1"/>
    </body>
    <body name="agent" pos="0 0 {BLOCK}">
      <joint name="agent_x" type="slide" axis="1 0 0" damping="0.5"/>
      <joint name="agent_y" type="slide" axis="0 1 0" damping="0.5"/>
      <geom type="cylinder" size="{AGENT} {BLOCK}" mass="1" rgba="0.55 0.2 0.75 1"/>
    </body>
{blocks}
  </worldbody>
  <actuator>
    <velocity joint="agent_x" kv="40" ctrlrange="-1 1" ctrllimited="true"/>
    <velocity joint="agent_y" kv="40" ctrlrange="-1 1" ctrllimited="true"/>
  </actuator>
</mujoco>"""


def zone_distance(xy: np.ndarray) -> np.ndarray:
    """Distance of block centres ``[..., 2]`` to the zone (0 inside)."""
    return np.maximum(ZONE_Y - np.asarray(xy)[..., 1], 0.0)


def sweep_factors(block_xy: np.ndarray) -> dict[str, np.ndarray]:
    """The reward factors of states whose block positions are ``[..., K, 2]``."""
    inside = np.asarray(block_xy)[..., 1] >= ZONE_Y
    return {
        "reward_in_zone": inside.mean(-1),
        "reward_progress": -zone_distance(block_xy).mean(-1) / (2 * HALF),
    }


def sweep_reward_from_qpos(qpos: np.ndarray) -> np.ndarray:
    """True reward of states ``qpos [..., 2 + 2K]`` (the step that reached them)."""
    qpos = np.asarray(qpos)
    blocks = qpos[..., 2:].reshape(*qpos.shape[:-1], -1, 2)
    factors = sweep_factors(blocks)
    return factors["reward_in_zone"] + factors["reward_progress"]


class SweepEnv(MujocoEnv, utils.EzPickle):
    metadata = {"render_modes": ["human", "rgb_array", "depth_array"], "render_fps": 10}

    def __init__(
        self,
        n_objects: int = 3,
        frame_skip: int = 10,
        default_camera_config: dict[str, float | np.ndarray] | None = None,
        **kwargs: Any,
    ) -> None:
        utils.EzPickle.__init__(self, n_objects, frame_skip, default_camera_config, **kwargs)
        self.n_objects = int(n_objects)
        self._xml = sweep_xml(self.n_objects)
        obs_dim = 4 + 4 * self.n_objects
        # MujocoEnv insists on an existing model file; the model itself comes from the MJCF
        # string (``_initialize_simulation`` below), so this module's own path stands in.
        MujocoEnv.__init__(
            self,
            __file__,
            frame_skip,
            observation_space=spaces.Box(-np.inf, np.inf, (obs_dim,), np.float64),
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

    # -- state -----------------------------------------------------------------------------
    @property
    def agent_xy(self) -> np.ndarray:
        return self.data.qpos[:2].copy()

    @property
    def block_xy(self) -> np.ndarray:
        """``[K, 2]`` block centres."""
        return self.data.qpos[2:].reshape(self.n_objects, 2).copy()

    def _get_obs(self) -> np.ndarray:
        q, v = self.data.qpos, self.data.qvel
        parts = [q[:2], v[:2]]
        for k in range(self.n_objects):
            parts += [q[2 + 2 * k : 4 + 2 * k], v[2 + 2 * k : 4 + 2 * k]]
        return np.concatenate(parts)

    def reset_model(self) -> np.ndarray:
        """Blocks anywhere below the zone, apart from each other; the agent apart from them."""
        rng = self.np_random
        placed: list[np.ndarray] = []
        while len(placed) < self.n_objects:
            xy = np.array([rng.uniform(-0.35, 0.35), rng.uniform(-0.3, ZONE_Y - 0.12)])
            if all(np.abs(xy - p).max() > 3 * BLOCK for p in placed):
                placed.append(xy)
        while True:
            agent = rng.uniform(-0.4, 0.4, size=2)
            if all(np.linalg.norm(agent - p) > AGENT + 2 * BLOCK for p in placed):
                break
        qpos = np.concatenate([agent, *placed])
        self.set_state(qpos, np.zeros(self.model.nv))
        return self._get_obs()

    def step(
        self, action: np.ndarray
    ) -> tuple[np.ndarray, np.float64, bool, bool, dict[str, np.float64]]:
        action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0) * AGENT_SPEED
        self.do_simulation(action, self.frame_skip)
        factors = sweep_factors(self.block_xy)
        info = {k: np.float64(v) for k, v in factors.items()}
        info["success"] = np.float64(factors["reward_in_zone"] == 1.0)  # 1.0: all blocks in
        reward = np.float64(sum(factors.values()))
        if self.render_mode == "human":
            self.render()
        # never terminates: the TimeLimit wrapper of the registration ends every episode
        return self._get_obs(), reward, False, False, info


def expert_action(env: SweepEnv, gain: float = 10.0) -> np.ndarray:
    """A scripted sweeper: take the lowest block still outside the zone, go round it to the
    point just below it, then push it straight up into the zone; once every block is in,
    back off downwards. Puts every block in the zone in most 50-step episodes."""
    agent, blocks = env.agent_xy, env.block_xy
    reach = BLOCK + AGENT + 0.01  # centre distance of agent and block in contact
    outside = [k for k in range(env.n_objects) if blocks[k, 1] < ZONE_Y + BLOCK]
    if not outside:
        target = np.array([agent[0], -0.35])
    else:
        block = blocks[min(outside, key=lambda i: blocks[i, 1])]
        behind = block - np.array([0.0, reach])
        clear = BLOCK + AGENT + 0.03  # a lateral offset that passes the block
        if abs(agent[0] - block[0]) < 0.025 and abs(agent[1] - behind[1]) < 0.03:
            # in place: push up, steering to stay under the block's centre
            target = np.array([block[0] + 2.0 * (block[0] - agent[0]), ZONE_Y + 0.3])
        elif agent[1] > behind[1] + 0.02:  # level with or above the block: go round it
            side = 1.0 if agent[0] >= block[0] else -1.0
            if abs(block[0] + side * clear) > HALF - AGENT:
                side = -side
            side_x = block[0] + side * clear
            if abs(agent[0] - block[0]) < clear - 0.01:
                target = np.array([side_x, agent[1]])  # step aside first
            else:
                target = np.array([side_x, behind[1]])  # then down past the block
        else:
            target = behind
    return np.clip(gain * (target - agent), -1.0, 1.0)
