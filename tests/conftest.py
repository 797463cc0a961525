"""Shared test helpers: small synthetic segments with a known true reward."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "egl")
torch.set_num_threads(1)

from browser_skips import (  # noqa: E402, F401  (hooks: browser tests never skip silently)
    pytest_make_collect_report,
    pytest_runtest_makereport,
    pytest_terminal_summary,
)
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from pbrl.data import Segments  # noqa: E402
from pbrl.train import CONF_DIR  # noqa: E402


def make_segments(
    n: int,
    t: int = 10,
    obs_dim: int = 4,
    act_dim: int = 2,
    seed: int = 0,
    reward_weights: tuple[float, ...] = (1.0, -0.5),
) -> Segments:
    """Random segments whose true reward is a linear function of the first observation dims."""
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, t, obs_dim)).astype(np.float32)
    act = rng.normal(size=(n, t, act_dim)).astype(np.float32)
    w = np.zeros(obs_dim, np.float32)
    w[: len(reward_weights)] = reward_weights
    return Segments(
        obs=obs,
        act=act,
        true_reward=obs @ w,
        mask=np.ones((n, t), bool),
        final_obs=obs[:, -1],
        terminated=np.zeros(n, bool),
    )


def segments_with_returns(returns: np.ndarray, t: int = 4) -> Segments:
    """Segments whose undiscounted true return equals ``returns`` (reward on the last step)."""
    n = len(returns)
    reward = np.zeros((n, t), np.float64)
    reward[:, -1] = returns
    return Segments(
        obs=np.zeros((n, t, 1), np.float32),
        act=np.zeros((n, t, 1), np.float32),
        true_reward=reward,
        mask=np.ones((n, t), bool),
        final_obs=np.zeros((n, 1), np.float32),
        terminated=np.zeros(n, bool),
    )


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


# A tiny online budget: every exp at this size tests the wiring, not learning.
TINY = [
    "total_timesteps=300",
    "max_feedback=12",
    "progress_bar=false",
    "checkpoint_every=100000",
    "feedback.every=100",
    "feedback.first_at=100",
    "feedback.queries_per_round=4",
    "feedback.segment_length=10",
    "feedback.pool_size=5000",
    "eval.n_episodes=1",
    "eval.random_episodes=1",
    "eval.test_queries=20",
    "reward.max_epochs=3",
    "video.width=64",
    "video.height=64",
    "video.queries_per_round=1",
]


def with_overrides(base: list[str], changes: list[str]) -> list[str]:
    """``base`` Hydra overrides with ``changes`` applied: a key both name takes the value
    from ``changes`` (in ``base``'s place); new keys come after."""
    new = dict(o.split("=", 1) for o in changes)
    out = [f"{k}={new.pop(k, v)}" for k, v in (o.split("=", 1) for o in base)]
    return out + [f"{k}={v}" for k, v in new.items()]


def tiny_overrides(cfg_algo_sb3: str) -> list[str]:
    if cfg_algo_sb3 == "sac":
        return [
            "algo.unsupervised_steps=100",
            "algo.kwargs.learning_starts=50",
            "algo.kwargs.buffer_size=2000",
            "algo.kwargs.batch_size=32",
        ]
    return [
        "n_envs=2",
        "algo.kwargs.n_steps=32",
        "algo.kwargs.batch_size=32",
        "algo.kwargs.n_epochs=1",
    ]


def compose_exp(name: str, extra: list[str] = ()) -> DictConfig:
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"+exp={name}", *extra])  # which algo
        return compose(
            "config", overrides=[f"+exp={name}", *TINY, *tiny_overrides(cfg.algo.sb3), *extra]
        )
