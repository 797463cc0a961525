"""``mujoco_batch`` backend: MuJoCo 4's native multithreaded batch stepping on the CPU."""

from __future__ import annotations

import mujoco
import mujoco.batch
import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvStepReturn

from pbrl.sim.base import BatchedMujocoVecEnv
from pbrl.sim.tasks import make_task


class MujocoBatchVecEnv(BatchedMujocoVecEnv):
    """Every sub-env is one simulation of a ``mujoco.batch.Batch``; the task formulas run
    vectorized in numpy on its live ``qpos``/``qvel`` views.

    The physics is bit-identical to gymnasium's (the batch runs the same ``mj_step`` on the
    same float64 state), so observations and rewards match the reference to rounding.

    Args:
        env_id: one of ``pbrl.sim.tasks.TASKS``.
        n_envs: number of simulations.
        num_threads: batch threads (0: all CPUs).
        max_episode_steps: gymnasium's TimeLimit.
        **env_kwargs: the gymnasium v5 constructor keywords of ``env_id``.
    """

    def __init__(
        self,
        env_id: str,
        n_envs: int,
        num_threads: int = 0,
        max_episode_steps: int = 1000,
        **env_kwargs: object,
    ) -> None:
        task = make_task(env_id, **env_kwargs)
        super().__init__(task, n_envs, max_episode_steps)
        # Ant's contact forces must come from mj_rnePostConstraint on each simulation's last
        # RK4 stage, as gymnasium computes them after mj_step; only a persistent batch keeps
        # that stage's contacts to recompute them from.
        self._batch = mujoco.batch.Batch(
            task.model, n_envs, num_threads, persistent=task.needs_cfrc_ext
        )
        self._qpos = self._batch.bind("qpos")
        self._qvel = self._batch.bind("qvel")
        self._ctrl = self._batch.bind("ctrl")
        # xpos is a derived field, copied out after every call; bind it only when used.
        self._xpos = self._batch.bind("xpos") if task.tracked_body is not None else None
        self._cfrc: np.ndarray | None = None
        if task.needs_cfrc_ext:
            self._cfrc = np.zeros((n_envs, task.model.nbody, 6))
            self._scratch = mujoco.MjData(task.model)
        self._track = np.zeros((n_envs, task.n_tracked))
        self._nstep = task.frame_skip

    def step_wait(self) -> VecEnvStepReturn:
        task, actions = self.task, self._actions
        before = self._track
        self._ctrl[:] = actions
        self._batch.step(nstep=self._nstep)
        if self._cfrc is not None:
            self._contact_forces()
        qpos, qvel = self._qpos, self._qvel
        after = task.tracked(qpos, self._xpos)
        reward, terminated, cols = task.step_terms(
            np, qpos, qvel, before, after, actions, self._cfrc
        )
        obs = task.observation(np, qpos, qvel, self._cfrc)
        self._track = after.copy()
        return self._finish_step(obs, reward, terminated, np.stack(cols, axis=1))

    def _contact_forces(self) -> None:
        # Per-simulation loop (Ant only): mj_rnePostConstraint needs each one's whole MjData.
        model, scratch, cfrc = self.task.model, self._scratch, self._cfrc
        assert cfrc is not None
        for i in range(self.num_envs):
            self._batch.get_data(i, scratch)
            mujoco.mj_rnePostConstraint(model, scratch)
            cfrc[i] = scratch.cfrc_ext

    def _reset_rows(
        self, ids: np.ndarray, qpos: np.ndarray, qvel: np.ndarray
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        # As gymnasium: mj_resetData, write the noisy state, mj_forward.
        self._batch.reset(ids, stage=mujoco.mjtStage.mjSTAGE_NONE)
        self._qpos[ids] = qpos
        self._qvel[ids] = qvel
        self._batch.forward(ids)
        if self._cfrc is not None:
            self._cfrc[ids] = 0.0  # mj_resetData zeroes them and mj_forward does not compute them
        return self._rows(ids), self.task.reset_info(np, self._qpos[ids])

    def _rows(self, ids: np.ndarray) -> np.ndarray:
        """Observations of ``ids`` after a forward, refreshing their tracked positions."""
        qpos, qvel = self._qpos[ids], self._qvel[ids]
        xpos = self._xpos[ids] if self._xpos is not None else None
        self._track[ids] = self.task.tracked(qpos, xpos)
        cfrc = self._cfrc[ids] if self._cfrc is not None else None
        return self.task.observation(np, qpos, qvel, cfrc)

    def set_state(
        self, qpos: np.ndarray, qvel: np.ndarray, indices: VecEnvIndices = None
    ) -> np.ndarray:
        ids = self._index_array(indices)
        self._qpos[ids] = qpos
        self._qvel[ids] = qvel
        self._batch.forward(ids)
        return self._rows(ids)

    def sim_state(self) -> tuple[np.ndarray, np.ndarray]:
        return self._qpos.copy(), self._qvel.copy()

    def get_data(self, i: int) -> mujoco.MjData:
        """Sub-env ``i``'s state as an ``MjData`` (run ``mj_forward`` before rendering it)."""
        return self._batch.get_data(i)

    def close(self) -> None:
        pass  # the batch and its threads are freed with this object
