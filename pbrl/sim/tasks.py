"""Gymnasium v5 MuJoCo locomotion tasks, rewritten for a whole batch at once.

Each task reproduces one ``gymnasium.envs.mujoco.*_v5`` environment: the same constructor
keywords and defaults, observations, reward terms (with the same info names), health checks
and reset noise. The batch formulas work on numpy arrays (``mujoco_batch``) and on torch
tensors (``mujoco_warp``) alike: ``xp`` is the array module (``numpy`` or ``torch``), and only
functions both modules share are used.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import mujoco
import numpy as np
from gymnasium.envs.mujoco.mujoco_env import expand_model_path

if TYPE_CHECKING:
    import torch

# The formulas run on numpy arrays (mujoco_batch) or on torch tensors (mujoco_warp), never a mix.
Array = TypeVar("Array", np.ndarray, "torch.Tensor")

# Keywords of gymnasium's MujocoEnv that only configure rendering; rendering is done from
# recorded qpos/qvel elsewhere, so the batched backends refuse them instead of ignoring them.
RENDER_KWARGS = frozenset(
    {
        "render_mode",
        "width",
        "height",
        "camera_id",
        "camera_name",
        "default_camera_config",
        "max_geom",
        "visual_options",
    }
)


def _cast(mask: Array, like: Array) -> Array:
    """A boolean mask as numbers of ``like``'s dtype (numpy and torch spell this differently)."""
    if isinstance(mask, np.ndarray):
        return mask.astype(like.dtype)
    return mask.to(like.dtype)


class MujocoTask:
    """One gymnasium v5 MuJoCo environment, as batch formulas.

    Subclasses set ``env_id``, ``defaults`` (the v5 constructor keywords and defaults,
    checked against gymnasium's signatures in the tests) and the formulas.
    """

    env_id: ClassVar[str]
    defaults: ClassVar[dict[str, object]]  # keyword -> default, checked by the tests
    # Names of the per-step info entries, in gymnasium's order, and of the reset info.
    info_keys: ClassVar[tuple[str, ...]]
    reset_info_keys: ClassVar[tuple[str, ...]]
    # Position difference gymnasium turns into velocity: qpos[0] for the planar walkers.
    n_tracked: ClassVar[int] = 1

    def __init__(self, **kwargs: object) -> None:
        render = sorted(RENDER_KWARGS.intersection(kwargs))
        if render:
            raise ValueError(
                f"{self.env_id}: rendering keywords {render} are not supported by batched "
                "backends (render from sim_state() qpos/qvel instead)"
            )
        unknown = sorted(set(kwargs) - set(self.defaults))
        if unknown:
            raise ValueError(
                f"{self.env_id}: unsupported keyword(s) {unknown}; supported: "
                f"{sorted(self.defaults)} (and max_episode_steps)"
            )
        self.params: dict[str, Any] = {**self.defaults, **kwargs}
        self.frame_skip = int(self.params["frame_skip"])
        self.model = mujoco.MjModel.from_xml_path(expand_model_path(self.params["xml_file"]))
        data = mujoco.MjData(self.model)
        # gymnasium's init_qpos/init_qvel: the state of a fresh MjData.
        self.init_qpos = data.qpos.copy()
        self.init_qvel = data.qvel.copy()
        self.dt = self.model.opt.timestep * self.frame_skip
        self.nq, self.nv, self.nu = self.model.nq, self.model.nv, self.model.nu
        self.reset_noise_scale = float(self.params["reset_noise_scale"])
        self.forward_reward_weight = float(self.params["forward_reward_weight"])
        self.ctrl_cost_weight = float(self.params["ctrl_cost_weight"])
        self.exclude_positions = bool(self.params["exclude_current_positions_from_observation"])
        self.tracked_body: int | None = None  # body whose xpos gives the velocity (Ant)
        self.needs_cfrc_ext = False  # whether formulas read contact forces (Ant)

    # --- formulas ------------------------------------------------------------------------
    def tracked(self, qpos: Array, xpos: Array | None) -> Array:
        """Positions whose change over one step gymnasium reports as velocity: (n, k)."""
        return qpos[:, 0:1]

    def observation(
        self, xp: ModuleType, qpos: Array, qvel: Array, cfrc_ext: Array | None
    ) -> Array:
        """Observations for a batch of states: (n, obs_dim)."""
        raise NotImplementedError

    def step_terms(
        self,
        xp: ModuleType,
        qpos: Array,
        qvel: Array,
        before: Array,
        after: Array,
        action: Array,
        cfrc_ext: Array | None,
    ) -> tuple[Array, Array, list[Array]]:
        """Reward (n,), terminated (n,) and the info columns in ``info_keys`` order."""
        raise NotImplementedError

    def reset_info(self, xp: ModuleType, qpos: Array) -> list[Array]:
        """Reset info columns in ``reset_info_keys`` order."""
        return [qpos[:, 0]]

    def sample_reset(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One env's reset state, drawing from ``rng`` exactly as gymnasium's reset_model."""
        s = self.reset_noise_scale
        qpos = self.init_qpos + rng.uniform(low=-s, high=s, size=self.nq)
        qvel = self.init_qvel + rng.uniform(low=-s, high=s, size=self.nv)
        return qpos, qvel

    def control_cost(self, xp: ModuleType, action: Array) -> Array:
        # Computed in the action's dtype, as gymnasium does (float32 for SB3's actions).
        return self.ctrl_cost_weight * xp.square(action).sum(axis=1)

    @property
    def obs_dim(self) -> int:
        raise NotImplementedError


class HalfCheetahTask(MujocoTask):
    """``HalfCheetah-v5``: run forward; no termination."""

    env_id = "HalfCheetah-v5"
    defaults = {
        "xml_file": "half_cheetah.xml",
        "frame_skip": 5,
        "forward_reward_weight": 1.0,
        "ctrl_cost_weight": 0.1,
        "reset_noise_scale": 0.1,
        "exclude_current_positions_from_observation": True,
    }
    info_keys = ("x_position", "x_velocity", "reward_forward", "reward_ctrl")
    reset_info_keys = ("x_position",)

    @property
    def obs_dim(self) -> int:
        return self.nq + self.nv - int(self.exclude_positions)

    def observation(
        self, xp: ModuleType, qpos: Array, qvel: Array, cfrc_ext: Array | None
    ) -> Array:
        pos = qpos[:, 1:] if self.exclude_positions else qpos
        return xp.concat([pos, qvel], axis=1)

    def step_terms(self, xp, qpos, qvel, before, after, action, cfrc_ext):
        x_velocity = (after[:, 0] - before[:, 0]) / self.dt
        forward = self.forward_reward_weight * x_velocity
        ctrl = self.control_cost(xp, action)
        reward = forward - ctrl
        terminated = xp.zeros_like(reward) > 0
        return reward, terminated, [qpos[:, 0], x_velocity, forward, -ctrl]

    def sample_reset(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        s = self.reset_noise_scale
        qpos = self.init_qpos + rng.uniform(low=-s, high=s, size=self.nq)
        qvel = self.init_qvel + s * rng.standard_normal(self.nv)
        return qpos, qvel


class _PlanarWalkerTask(MujocoTask):
    """Shared formulas of ``Hopper-v5`` and ``Walker2d-v5``."""

    info_keys = (
        "x_position",
        "z_distance_from_origin",
        "x_velocity",
        "reward_forward",
        "reward_ctrl",
        "reward_survive",
    )
    reset_info_keys = ("x_position", "z_distance_from_origin")

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.healthy_reward = float(self.params["healthy_reward"])
        self.terminate_when_unhealthy = bool(self.params["terminate_when_unhealthy"])
        self.healthy_z_range = tuple(map(float, self.params["healthy_z_range"]))
        self.healthy_angle_range = tuple(map(float, self.params["healthy_angle_range"]))

    @property
    def obs_dim(self) -> int:
        return self.nq + self.nv - int(self.exclude_positions)

    def observation(
        self, xp: ModuleType, qpos: Array, qvel: Array, cfrc_ext: Array | None
    ) -> Array:
        pos = qpos[:, 1:] if self.exclude_positions else qpos
        return xp.concat([pos, qvel.clip(-10.0, 10.0)], axis=1)

    def is_healthy(self, xp: ModuleType, qpos: Array, qvel: Array) -> Array:
        z, angle = qpos[:, 1], qpos[:, 2]
        (zmin, zmax), (amin, amax) = self.healthy_z_range, self.healthy_angle_range
        return (zmin < z) & (z < zmax) & (amin < angle) & (angle < amax)

    def step_terms(self, xp, qpos, qvel, before, after, action, cfrc_ext):
        x_velocity = (after[:, 0] - before[:, 0]) / self.dt
        forward = self.forward_reward_weight * x_velocity
        healthy = self.is_healthy(xp, qpos, qvel)
        survive = self.healthy_reward * _cast(healthy, qpos)
        ctrl = self.control_cost(xp, action)
        reward = forward + survive - ctrl
        terminated = ~healthy if self.terminate_when_unhealthy else healthy & False
        z_dist = qpos[:, 1] - self.init_qpos[1]
        return reward, terminated, [qpos[:, 0], z_dist, x_velocity, forward, -ctrl, survive]

    def reset_info(self, xp: ModuleType, qpos: Array) -> list[Array]:
        return [qpos[:, 0], qpos[:, 1] - self.init_qpos[1]]


class HopperTask(_PlanarWalkerTask):
    """``Hopper-v5``: hop forward; terminates when it falls or its state blows up."""

    env_id = "Hopper-v5"
    defaults = {
        "xml_file": "hopper.xml",
        "frame_skip": 4,
        "forward_reward_weight": 1.0,
        "ctrl_cost_weight": 1e-3,
        "healthy_reward": 1.0,
        "terminate_when_unhealthy": True,
        "healthy_state_range": (-100.0, 100.0),
        "healthy_z_range": (0.7, float("inf")),
        "healthy_angle_range": (-0.2, 0.2),
        "reset_noise_scale": 5e-3,
        "exclude_current_positions_from_observation": True,
    }

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.healthy_state_range = tuple(map(float, self.params["healthy_state_range"]))

    def is_healthy(self, xp: ModuleType, qpos: Array, qvel: Array) -> Array:
        # gymnasium checks state_vector()[2:], i.e. qpos[2:] and all of qvel.
        smin, smax = self.healthy_state_range
        state_ok = ((smin < qpos[:, 2:]) & (qpos[:, 2:] < smax)).all(1)
        state_ok = state_ok & ((smin < qvel) & (qvel < smax)).all(1)
        return state_ok & super().is_healthy(xp, qpos, qvel)


class Walker2dTask(_PlanarWalkerTask):
    """``Walker2d-v5``: walk forward; terminates when the torso leaves its height/angle range."""

    env_id = "Walker2d-v5"
    defaults = {
        "xml_file": "walker2d_v5.xml",
        "frame_skip": 4,
        "forward_reward_weight": 1.0,
        "ctrl_cost_weight": 1e-3,
        "healthy_reward": 1.0,
        "terminate_when_unhealthy": True,
        "healthy_z_range": (0.8, 2.0),
        "healthy_angle_range": (-1.0, 1.0),
        "reset_noise_scale": 5e-3,
        "exclude_current_positions_from_observation": True,
    }


class AntTask(MujocoTask):
    """``Ant-v5``: walk forward in the plane; contact forces in observation and cost."""

    env_id = "Ant-v5"
    defaults = {
        "xml_file": "ant.xml",
        "frame_skip": 5,
        "forward_reward_weight": 1.0,
        "ctrl_cost_weight": 0.5,
        "contact_cost_weight": 5e-4,
        "healthy_reward": 1.0,
        "main_body": 1,
        "terminate_when_unhealthy": True,
        "healthy_z_range": (0.2, 1.0),
        "contact_force_range": (-1.0, 1.0),
        "reset_noise_scale": 0.1,
        "exclude_current_positions_from_observation": True,
        "include_cfrc_ext_in_observation": True,
    }
    info_keys = (
        "x_position",
        "y_position",
        "distance_from_origin",
        "x_velocity",
        "y_velocity",
        "reward_forward",
        "reward_ctrl",
        "reward_contact",
        "reward_survive",
    )
    reset_info_keys = ("x_position", "y_position", "distance_from_origin")
    n_tracked = 2

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        p = self.params
        self.contact_cost_weight = float(p["contact_cost_weight"])
        self.healthy_reward = float(p["healthy_reward"])
        self.terminate_when_unhealthy = bool(p["terminate_when_unhealthy"])
        self.healthy_z_range = tuple(map(float, p["healthy_z_range"]))
        self.contact_force_range = tuple(map(float, p["contact_force_range"]))
        self.include_cfrc_ext = bool(p["include_cfrc_ext_in_observation"])
        body = p["main_body"]
        if isinstance(body, str):
            body = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, body)
            if body < 0:
                raise ValueError(f"Ant-v5: no body named {p['main_body']!r}")
        self.tracked_body = int(body)
        self.needs_cfrc_ext = self.include_cfrc_ext or self.contact_cost_weight != 0.0

    @property
    def obs_dim(self) -> int:
        n = self.nq + self.nv - 2 * int(self.exclude_positions)
        return n + (self.model.nbody - 1) * 6 * int(self.include_cfrc_ext)

    def tracked(self, qpos: Array, xpos: Array | None) -> Array:
        assert xpos is not None
        return xpos[:, self.tracked_body, 0:2]

    def _contact_forces(self, cfrc_ext: Array) -> Array:
        lo, hi = self.contact_force_range
        return cfrc_ext.clip(lo, hi)

    def observation(
        self, xp: ModuleType, qpos: Array, qvel: Array, cfrc_ext: Array | None
    ) -> Array:
        pos = qpos[:, 2:] if self.exclude_positions else qpos
        parts = [pos, qvel]
        if self.include_cfrc_ext:
            assert cfrc_ext is not None
            parts.append(self._contact_forces(cfrc_ext[:, 1:]).reshape(qpos.shape[0], -1))
        return xp.concat(parts, axis=1)

    def is_healthy(self, xp: ModuleType, qpos: Array, qvel: Array) -> Array:
        zmin, zmax = self.healthy_z_range
        finite = xp.isfinite(qpos).all(axis=1) & xp.isfinite(qvel).all(axis=1)
        return finite & (zmin <= qpos[:, 2]) & (qpos[:, 2] <= zmax)

    def step_terms(self, xp, qpos, qvel, before, after, action, cfrc_ext):
        velocity = (after - before) / self.dt
        x_velocity, y_velocity = velocity[:, 0], velocity[:, 1]
        forward = x_velocity * self.forward_reward_weight
        healthy = self.is_healthy(xp, qpos, qvel)
        survive = self.healthy_reward * _cast(healthy, qpos)
        ctrl = self.control_cost(xp, action)
        if self.contact_cost_weight != 0.0:
            assert cfrc_ext is not None
            forces = self._contact_forces(cfrc_ext).reshape(qpos.shape[0], -1)
            contact = self.contact_cost_weight * xp.square(forces).sum(axis=1)
        else:
            contact = xp.zeros_like(forward)
        reward = forward + survive - (ctrl + contact)
        terminated = ~healthy if self.terminate_when_unhealthy else healthy & False
        distance = xp.sqrt(qpos[:, 0] * qpos[:, 0] + qpos[:, 1] * qpos[:, 1])
        cols = [
            qpos[:, 0],
            qpos[:, 1],
            distance,
            x_velocity,
            y_velocity,
            forward,
            -ctrl,
            -contact,
            survive,
        ]
        return reward, terminated, cols

    def reset_info(self, xp: ModuleType, qpos: Array) -> list[Array]:
        distance = xp.sqrt(qpos[:, 0] * qpos[:, 0] + qpos[:, 1] * qpos[:, 1])
        return [qpos[:, 0], qpos[:, 1], distance]

    def sample_reset(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        s = self.reset_noise_scale
        qpos = self.init_qpos + rng.uniform(low=-s, high=s, size=self.nq)
        qvel = self.init_qvel + s * rng.standard_normal(self.nv)
        return qpos, qvel


TASKS: dict[str, type[MujocoTask]] = {
    t.env_id: t for t in (HalfCheetahTask, HopperTask, Walker2dTask, AntTask)
}


def make_task(env_id: str, **kwargs: object) -> MujocoTask:
    """The batch formulas of ``env_id``; ValueError names the supported ids."""
    if env_id not in TASKS:
        raise ValueError(f"unsupported env_id {env_id!r}; supported: {sorted(TASKS)}")
    return TASKS[env_id](**kwargs)
