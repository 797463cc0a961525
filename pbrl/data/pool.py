"""A ring buffer of recent transitions per environment stream, from which segments are cut.

Online loops record every vectorized step here (true reward, reward factors and simulator
state included); query selection samples fixed-length windows from it. A window never
crosses an episode boundary: if the episode *terminated* inside it, the rest is padded
(``mask`` False); windows running into a time-limit truncation or into steps not yet
recorded are rejected, because their returns would not be comparable.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from pbrl.data.preferences import Queries
from pbrl.data.segments import Segments


class TrajectoryPool:
    def __init__(
        self,
        n_envs: int,
        capacity: int,
        obs_dim: int,
        act_dim: int,
        factor_names: tuple[str, ...] = (),
        state_dims: tuple[int, int] | None = None,
        env_id: str = "",
        run: str = "",
    ) -> None:
        self.n_envs, self.capacity = n_envs, max(1, capacity // n_envs)  # steps kept per env
        self.factor_names, self.env_id, self.run = tuple(factor_names), env_id, run
        c, e = self.capacity, n_envs
        self.obs = np.zeros((e, c, obs_dim), np.float32)
        self.next_obs = np.zeros((e, c, obs_dim), np.float32)
        self.act = np.zeros((e, c, act_dim), np.float32)
        self.reward = np.zeros((e, c), np.float32)
        self.factors = np.zeros((e, c, len(self.factor_names)), np.float32)
        self.terminated = np.zeros((e, c), bool)
        self.truncated = np.zeros((e, c), bool)
        self.episode = np.zeros((e, c), np.int64)
        self.step_in_episode = np.zeros((e, c), np.int64)
        nq, nv = state_dims or (0, 0)
        self.has_state = state_dims is not None
        self.qpos, self.qvel = np.zeros((e, c, nq)), np.zeros((e, c, nv))
        self.next_qpos, self.next_qvel = np.zeros((e, c, nq)), np.zeros((e, c, nv))
        self.written = np.zeros(e, np.int64)  # total steps recorded per env (time index)
        self.current_episode = np.arange(e, dtype=np.int64)  # globally unique episode ids
        self.current_step = np.zeros(e, np.int64)
        self.next_episode_id = e

    # -- recording ---------------------------------------------------------------------------
    def add(
        self,
        obs: np.ndarray,
        act: np.ndarray,
        reward: np.ndarray,
        next_obs: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        factors: np.ndarray | None = None,
        qpos: np.ndarray | None = None,
        qvel: np.ndarray | None = None,
        next_qpos: np.ndarray | None = None,
        next_qvel: np.ndarray | None = None,
    ) -> None:
        """Record one vectorized step (arrays with a leading ``n_envs`` dimension)."""
        e = np.arange(self.n_envs)
        i = self.written % self.capacity
        self.obs[e, i] = obs.reshape(self.n_envs, -1)
        self.next_obs[e, i] = next_obs.reshape(self.n_envs, -1)
        self.act[e, i] = act.reshape(self.n_envs, -1)
        self.reward[e, i] = reward
        if factors is not None and self.factor_names:
            self.factors[e, i] = factors
        self.terminated[e, i], self.truncated[e, i] = terminated, truncated
        self.episode[e, i], self.step_in_episode[e, i] = self.current_episode, self.current_step
        if self.has_state and qpos is not None and qvel is not None:
            self.qpos[e, i], self.qvel[e, i] = qpos, qvel
            self.next_qpos[e, i] = qpos if next_qpos is None else next_qpos
            self.next_qvel[e, i] = qvel if next_qvel is None else next_qvel
        self.written += 1
        self.current_step += 1
        done = np.flatnonzero(np.asarray(terminated) | np.asarray(truncated))
        for j in done:  # new episode ids for envs that auto-reset
            self.current_episode[j] = self.next_episode_id
            self.next_episode_id += 1
            self.current_step[j] = 0

    def start_new_episodes(self) -> None:
        """Cut every env's current episode here (e.g. on resume, when the envs are reset):
        no window spans the cut, and later steps get new episode ids."""
        recorded = np.flatnonzero(self.written > 0)
        self.truncated[recorded, (self.written[recorded] - 1) % self.capacity] = True
        self.current_episode = self.next_episode_id + np.arange(self.n_envs)
        self.next_episode_id += self.n_envs
        self.current_step[:] = 0

    @property
    def num_steps(self) -> int:
        return int(np.minimum(self.written, self.capacity).sum())

    # -- sampling ----------------------------------------------------------------------------
    def sample_segments(
        self, n: int, length: int, rng: np.random.Generator, max_tries: int = 50
    ) -> Segments:
        """``n`` windows of ``length`` steps, uniformly over valid start steps."""
        picked: list[tuple[np.ndarray, np.ndarray]] = []
        have = 0
        for _ in range(max_tries):
            envs, starts = self._candidate_starts(2 * (n - have) + 8, rng)
            ok = self._valid(envs, starts, length)
            envs, starts = envs[ok][: n - have], starts[ok][: n - have]
            picked.append((envs, starts))
            have += len(envs)
            if have >= n:
                break
        if have < n:
            raise RuntimeError(
                f"only {have} of {n} segments of length {length} fit the recorded data "
                f"({self.num_steps} steps): collect more steps before querying, or shorten "
                "feedback.segment_length"
            )
        envs = np.concatenate([p[0] for p in picked])
        starts = np.concatenate([p[1] for p in picked])
        return self._gather(envs, starts, length)

    def sample_queries(self, n: int, length: int, rng: np.random.Generator) -> Queries:
        segs = self.sample_segments(2 * n, length, rng)
        return Queries(segs[np.arange(n)], segs[np.arange(n, 2 * n)])

    def _candidate_starts(self, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        held = np.minimum(self.written, self.capacity)
        if held.sum() == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        envs = rng.choice(self.n_envs, size=k, p=held / held.sum())
        oldest = self.written[envs] - held[envs]
        starts = oldest + (rng.random(k) * held[envs]).astype(np.int64)
        return envs, starts

    def _window(self, envs: np.ndarray, starts: np.ndarray, length: int) -> tuple[np.ndarray, ...]:
        t = starts[:, None] + np.arange(length)[None, :]  # time indices [K, L]
        recorded = t < self.written[envs][:, None]
        slot = t % self.capacity
        e = envs[:, None]
        same_ep = self.episode[e, slot] == self.episode[envs, starts % self.capacity][:, None]
        ended = self.terminated[e, slot] | self.truncated[e, slot]
        before_end = np.cumsum(ended, axis=1) - ended == 0  # no episode end strictly before t
        mask = recorded & same_ep & before_end
        return slot, mask

    def _valid(self, envs: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
        if len(envs) == 0:
            return np.zeros(0, bool)
        slot, mask = self._window(envs, starts, length)
        n_valid = mask.sum(1)
        last = slot[np.arange(len(envs)), np.maximum(n_valid - 1, 0)]
        # Full windows, or windows cut short by a termination (padded); a window cut short
        # by a truncation or by the end of the recorded data is not comparable.
        return (n_valid > 0) & ((n_valid == length) | self.terminated[envs, last])

    def _gather(self, envs: np.ndarray, starts: np.ndarray, length: int) -> Segments:
        slot, mask = self._window(envs, starts, length)
        n = len(envs)
        n_valid = mask.sum(1)
        rows = np.arange(n)
        last = slot[rows, n_valid - 1]
        # Padded steps repeat the last valid step's inputs with zero reward.
        fill = np.where(mask, slot, last[:, None])
        e = envs[:, None]
        reward = np.where(mask, self.reward[e, fill], 0.0).astype(np.float32)
        factors = (
            np.where(mask[..., None], self.factors[e, fill], 0.0).astype(np.float32)
            if self.factor_names
            else None
        )
        qpos = qvel = None
        if self.has_state:
            qpos = np.concatenate([self.qpos[e, fill], self.next_qpos[envs, last][:, None]], 1)
            qvel = np.concatenate([self.qvel[e, fill], self.next_qvel[envs, last][:, None]], 1)
            # After the episode ended the state stays at the terminal state.
            pad = np.concatenate([~mask, np.zeros((n, 1), bool)], 1)
            qpos[pad] = np.repeat(self.next_qpos[envs, last], (~mask).sum(1), axis=0)
            qvel[pad] = np.repeat(self.next_qvel[envs, last], (~mask).sum(1), axis=0)
        return Segments(
            obs=self.obs[e, fill],
            act=self.act[e, fill],
            true_reward=reward,
            mask=mask,
            final_obs=self.next_obs[envs, last],
            terminated=self.terminated[envs, last],
            reward_factors=factors,
            qpos=qpos,
            qvel=qvel,
            episode=self.episode[envs, slot[:, 0]],
            start=self.step_in_episode[envs, slot[:, 0]],
            factor_names=self.factor_names,
            env_id=self.env_id,
            run=self.run,
        )

    # -- persistence (for resume) ------------------------------------------------------------
    _STATE = (
        "obs",
        "next_obs",
        "act",
        "reward",
        "factors",
        "terminated",
        "truncated",
        "episode",
        "step_in_episode",
        "qpos",
        "qvel",
        "next_qpos",
        "next_qvel",
        "written",
        "current_episode",
        "current_step",
    )

    def step_widths(self) -> dict[str, int]:
        """Width of each per-step field a reward may read beyond ``(obs, act)``: the reached
        state (``qpos``, ``qvel``, when recorded) and the reward factors."""
        out = {"factors": len(self.factor_names)}
        if self.has_state:
            out |= {"qpos": int(self.qpos.shape[-1]), "qvel": int(self.qvel.shape[-1])}
        return out

    @property
    def obs_dim(self) -> int:
        return int(self.obs.shape[-1])

    @property
    def act_dim(self) -> int:
        return int(self.act.shape[-1])

    def meta(self) -> dict[str, object]:
        """What the constructor needs to rebuild this pool (saved with its arrays)."""
        return {
            "n_envs": self.n_envs,
            "capacity": self.capacity * self.n_envs,
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "factor_names": list(self.factor_names),
            "state_dims": [int(self.qpos.shape[-1]), int(self.qvel.shape[-1])]
            if self.has_state
            else None,
            "env_id": self.env_id,
            "run": self.run,
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write arrays and metadata atomically (temp file + rename)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(
            tmp,
            next_episode_id=self.next_episode_id,
            meta=np.array(json.dumps(self.meta())),
            **{k: getattr(self, k) for k in self._STATE},
        )
        os.replace(tmp, path)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> TrajectoryPool:
        """A pool exactly as :meth:`save` wrote it, metadata included."""
        with np.load(path) as f:
            if "meta" not in f.files:
                raise ValueError(
                    f"{path}: a trajectory pool without metadata (written by an "
                    "older pbrl); rebuild it with TrajectoryPool(...).load(path)"
                )
            meta = json.loads(str(f["meta"]))
        state_dims = meta["state_dims"]
        pool = cls(
            int(meta["n_envs"]),
            int(meta["capacity"]),
            int(meta["obs_dim"]),
            int(meta["act_dim"]),
            tuple(meta["factor_names"]),
            None if state_dims is None else (int(state_dims[0]), int(state_dims[1])),
            str(meta["env_id"]),
            str(meta["run"]),
        )
        pool.load(path)
        return pool

    def load(self, path: str | os.PathLike[str]) -> None:
        with np.load(path) as f:
            for k in self._STATE:
                if f[k].shape != getattr(self, k).shape:
                    raise ValueError(
                        f"{path}: pool field {k} has shape {f[k].shape}, "
                        f"expected {getattr(self, k).shape} (different config?)"
                    )
                setattr(self, k, f[k].copy())
            self.next_episode_id = int(f["next_episode_id"])
