"""``mujoco_warp`` backend: MuJoCo Warp worlds, results as torch tensors on the device.

MJWarp keeps its state in float32 Warp arrays. ``warp.to_torch`` views them without copies,
and the task formulas run in torch (in float64, like gymnasium's) on the same device. Device
side consumers read ``last_obs_torch`` and friends, or call :meth:`step_torch`; the SB3 API
(``step``/``reset``) converts to numpy as every SB3 algorithm expects.

Known differences from the gymnasium reference (see tests/test_sim.py):
- float32 physics: one step from the same state agrees to ~1e-3, and trajectories drift apart
  over tens of steps wherever the dynamics is chaotic (contacts);
- MJWarp 4.0 orients capsule-plane contact frames differently from MuJoCo C, so with
  pyramidal friction cones (all these tasks) friction differs when a capsule touches the
  floor in 3-D: Ant's contacts do not match MuJoCo C.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvStepReturn

from pbrl.sim.base import BatchedMujocoVecEnv
from pbrl.sim.tasks import make_task


class TorchStep(NamedTuple):
    """One device-side step: every field a tensor on the env's device, batch first."""

    obs: torch.Tensor  # after auto-reset, as SB3 returns it
    reward: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    terminal_obs: torch.Tensor  # before auto-reset: equals obs where no episode ended


class MujocoWarpVecEnv(BatchedMujocoVecEnv):
    """``n_envs`` MJWarp worlds of one task, on ``device`` ("cpu", "cuda", "cuda:1", ...).

    Args:
        env_id: one of ``pbrl.sim.tasks.TASKS``.
        n_envs: number of worlds.
        device: Warp device; its torch twin is ``self.device``.
        max_episode_steps: gymnasium's TimeLimit.
        nconmax, njmax: MJWarp's per-world contact and constraint capacities (default: enough
            for every geom touching the floor).
        **env_kwargs: the gymnasium v5 constructor keywords of ``env_id``.
    """

    def __init__(
        self,
        env_id: str,
        n_envs: int,
        device: str = "cpu",
        max_episode_steps: int = 1000,
        nconmax: int | None = None,
        njmax: int | None = None,
        **env_kwargs: object,
    ) -> None:
        try:
            import mujoco_warp as mjw
            import warp as wp
        except ImportError as e:  # pragma: no cover - depends on the install
            raise ImportError(
                "the mujoco_warp backend needs MuJoCo Warp: pip install mujoco-warp"
            ) from e
        task = make_task(env_id, **env_kwargs)
        super().__init__(task, n_envs, max_episode_steps)
        self._wp, self._mjw = wp, mjw
        try:
            self._wp_device = wp.get_device(device)
        except RuntimeError as e:
            raise ValueError(f"Warp device {device!r} is not available: {e}") from e
        self.device = torch.device(wp.device_to_torch(self._wp_device))
        model = task.model
        if nconmax is None:
            nconmax = max(48, 2 * model.ngeom)  # a capsule on a plane makes up to 2 contacts
        if njmax is None:
            rows = max(1, 2 * (int(model.geom_condim.max()) - 1))  # pyramidal rows per contact
            njmax = max(64, nconmax * rows + model.njnt)
        with self._scope():
            self._m = mjw.put_model(model)
            self._d = mjw.make_data(model, nworld=n_envs, nconmax=nconmax, njmax=njmax)
        # Live float32 views of the Warp state; writes go straight to the simulator.
        self._qpos = wp.to_torch(self._d.qpos)
        self._qvel = wp.to_torch(self._d.qvel)
        self._ctrl = wp.to_torch(self._d.ctrl)
        self._xpos = wp.to_torch(self._d.xpos) if task.tracked_body is not None else None
        f64, dev = torch.float64, self.device
        self._cfrc: torch.Tensor | None = None
        if task.needs_cfrc_ext:
            self._cfrc = torch.zeros((n_envs, model.nbody, 6), dtype=f64, device=dev)
        self._track = torch.zeros((n_envs, task.n_tracked), dtype=f64, device=dev)
        self.last_obs_torch = torch.zeros((n_envs, task.obs_dim), dtype=f64, device=dev)
        self.last_reward_torch = torch.zeros(n_envs, dtype=f64, device=dev)
        self.last_terminated_torch = torch.zeros(n_envs, dtype=torch.bool, device=self.device)
        self.last_info_torch: dict[str, torch.Tensor] = {}

    @contextlib.contextmanager
    def _scope(self) -> Iterator[None]:
        """Run Warp on this env's device and, on CUDA, on torch's current stream (so that
        torch reads after a step and writes before one need no extra synchronization)."""
        wp = self._wp
        with contextlib.ExitStack() as stack:
            stack.enter_context(wp.ScopedDevice(self._wp_device))
            if self._wp_device.is_cuda:
                stack.enter_context(wp.ScopedStream(wp.stream_from_torch(self.device)))
            yield

    # --- device-side stepping ------------------------------------------------------------
    def _physics(self, actions: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Apply actions, step frame_skip substeps, evaluate the task on the device."""
        task, mjw = self.task, self._mjw
        action = torch.as_tensor(actions, device=self.device)
        self._ctrl.copy_(action)
        with self._scope():
            for _ in range(task.frame_skip):
                mjw.step(self._m, self._d)
            if self._cfrc is not None:
                # As gymnasium: contact forces from mj_rnePostConstraint after the step.
                mjw.rne_postconstraint(self._m, self._d)
        if self._cfrc is not None:
            self._cfrc.copy_(self._wp.to_torch(self._d.cfrc_ext))
        qpos, qvel = self._qpos.double(), self._qvel.double()
        xpos = self._xpos.double() if self._xpos is not None else None
        after = task.tracked(qpos, xpos)
        reward, terminated, cols = task.step_terms(
            torch, qpos, qvel, self._track, after, action, self._cfrc
        )
        obs = task.observation(torch, qpos, qvel, self._cfrc)
        self._track = after.clone()
        info = torch.stack([c.double() for c in cols], dim=1)
        self.last_obs_torch, self.last_reward_torch = obs, reward
        self.last_terminated_torch = terminated
        self.last_info_torch = dict(zip(task.info_keys, info.unbind(1), strict=True))
        return obs, reward, terminated, info

    def step_wait(self) -> VecEnvStepReturn:
        assert self._actions is not None, "step_async() first"
        obs, reward, terminated, info = self._physics(self._actions)
        return self._finish_step(
            obs.cpu().numpy(), reward.cpu().numpy(), terminated.cpu().numpy(), info.cpu().numpy()
        )

    def step_torch(self, actions: np.ndarray | torch.Tensor) -> TorchStep:
        """Step with device tensors in and out, no infos (episode statistics still kept)."""
        terminal_obs, reward, terminated, _ = self._physics(actions)
        self._elapsed += 1
        truncated = self._elapsed >= self.max_episode_steps
        self._ep_return += reward.cpu().numpy()
        dones = terminated.cpu().numpy() | truncated
        if dones.any():
            self._reset_envs(np.flatnonzero(dones))  # replaces last_obs_torch
        trunc = torch.as_tensor(truncated, device=self.device)
        return TorchStep(self.last_obs_torch, reward, terminated, trunc, terminal_obs)

    # --- state access --------------------------------------------------------------------
    def _rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Observations of ``ids`` after a forward; refreshes their tracked positions."""
        qpos, qvel = self._qpos[ids].double(), self._qvel[ids].double()
        xpos = self._xpos[ids].double() if self._xpos is not None else None
        self._track[ids] = self.task.tracked(qpos, xpos)
        cfrc = self._cfrc[ids] if self._cfrc is not None else None
        obs = self.task.observation(torch, qpos, qvel, cfrc)
        # Replace rather than write in place: callers may still hold the previous tensor.
        last = self.last_obs_torch.clone()
        last[ids] = obs
        self.last_obs_torch = last
        return obs

    def _write(self, ids: torch.Tensor, qpos: np.ndarray, qvel: np.ndarray) -> None:
        self._qpos[ids] = torch.as_tensor(qpos, dtype=torch.float32, device=self.device)
        self._qvel[ids] = torch.as_tensor(qvel, dtype=torch.float32, device=self.device)
        # Every world is forwarded: MJWarp has no per-world forward. That only refreshes
        # derived fields of the others; the tracked positions they need are kept in _track.
        with self._scope():
            self._mjw.forward(self._m, self._d)

    def _reset_rows(
        self, ids: np.ndarray, qpos: np.ndarray, qvel: np.ndarray
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        ids_t = torch.as_tensor(ids, device=self.device)
        mask = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        mask[ids_t] = True
        with self._scope():
            self._mjw.reset_data(self._m, self._d, reset=self._wp.from_torch(mask))
        self._write(ids_t, qpos, qvel)
        if self._cfrc is not None:
            self._cfrc[ids_t] = 0.0  # as mj_resetData; mj_forward does not compute them
        obs = self._rows(ids_t)
        info = self.task.reset_info(torch, self._qpos[ids_t].double())
        return obs.cpu().numpy(), [c.cpu().numpy() for c in info]

    def set_state(
        self, qpos: np.ndarray, qvel: np.ndarray, indices: VecEnvIndices = None
    ) -> np.ndarray:
        ids_t = torch.as_tensor(self._index_array(indices), device=self.device)
        self._write(ids_t, qpos, qvel)
        return self._rows(ids_t).cpu().numpy()

    def sim_state(self) -> tuple[np.ndarray, np.ndarray]:
        return self._qpos.double().cpu().numpy(), self._qvel.double().cpu().numpy()

    def close(self) -> None:
        pass  # Warp arrays are freed with this object
