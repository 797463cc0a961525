"""Evaluation on the true reward, shared by online and offline runs."""

from __future__ import annotations

import resource
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np

Policy = Callable[[np.ndarray], np.ndarray]


@dataclass
class EvalResult:
    true_returns: list[float] = field(default_factory=list)
    learned_returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    terminated: list[bool] = field(default_factory=list)  # ended by the env, not the time limit
    # per-episode totals of each reward factor the env reports (``info["reward_<name>"]``)
    factor_totals: dict[str, list[float]] = field(default_factory=dict)
    video: str | None = None

    def factor_means(self) -> dict[str, float]:
        """Mean total of each reward factor over the episodes."""
        return {k: float(np.mean(v)) for k, v in self.factor_totals.items()}

    @property
    def mean(self) -> float:
        return float(np.mean(self.true_returns)) if self.true_returns else float("nan")

    @property
    def std(self) -> float:
        return float(np.std(self.true_returns)) if self.true_returns else float("nan")


def evaluate(
    env_id: str,
    policy: Policy | None,
    n_episodes: int,
    seed: int,
    reward_fn: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    video_path: str | Path | None = None,
    video_size: tuple[int, int] = (240, 240),
    env_kwargs: dict | None = None,
    on_reset: Callable[[], None] | None = None,
) -> EvalResult:
    """Run ``n_episodes`` with ``policy`` (None = uniform random actions) on the true reward.

    ``on_reset`` is called before each episode (policies with memory, e.g. a decision
    transformer's context). Actions are clipped to the action space. The first episode's
    simulator states are kept and, with ``video_path``, re-rendered to an MP4 afterwards
    (the same path labeling uses, so it is exercised on every run).
    """
    env = gym.make(env_id, **(env_kwargs or {}))
    env.action_space.seed(seed)
    result = EvalResult()
    qpos: list[np.ndarray] = []
    qvel: list[np.ndarray] = []
    data = getattr(env.unwrapped, "data", None)
    for ep in range(n_episodes):
        obs, _ = env.reset(seed=seed + ep)
        if on_reset is not None:
            on_reset()
        done, ret, learned, length = False, 0.0, 0.0, 0
        factors: dict[str, float] = {}
        terminated = False
        while not done:
            if ep == 0 and data is not None:
                qpos.append(data.qpos.copy())
                qvel.append(data.qvel.copy())
            act = env.action_space.sample() if policy is None else policy(obs)
            if isinstance(env.action_space, gym.spaces.Box):
                act = np.clip(act, env.action_space.low, env.action_space.high)
            if reward_fn is not None:
                learned += float(
                    reward_fn(np.asarray(obs, np.float32)[None], np.asarray(act, np.float32)[None])[
                        0
                    ]
                )
            obs, r, terminated, truncated, info = env.step(act)
            ret, length, done = ret + float(r), length + 1, terminated or truncated
            for key, value in info.items():
                if key.startswith("reward_") and np.ndim(value) == 0:
                    factors[key[7:]] = factors.get(key[7:], 0.0) + float(value)
        if ep == 0 and data is not None:
            qpos.append(data.qpos.copy())
            qvel.append(data.qvel.copy())
        result.true_returns.append(ret)
        result.learned_returns.append(learned)
        result.lengths.append(length)
        result.terminated.append(bool(terminated))
        for key, total in factors.items():
            result.factor_totals.setdefault(key, []).append(total)
    env.close()
    if video_path is not None and qpos:
        from pbrl.envs.render import shared_renderer
        from pbrl.video import write_video

        # the process's renderer of this view: made once, not per evaluation
        renderer = shared_renderer(env_id, env_kwargs, video_size[0], video_size[1])
        frames = renderer.render_sequence(np.stack(qpos), np.stack(qvel))
        if renderer.fps is None:  # write_video(fps=None) failed with TypeError too
            raise TypeError(f"{env_id} declares no render_fps: cannot write a video")
        result.video = str(write_video(frames, video_path, fps=renderer.fps))
    return result


def peak_rss_mb() -> float:
    """Peak resident memory of this process and its finished children, in MB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024.0
