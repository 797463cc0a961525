"""Shared test helpers: small synthetic segments with a known true reward."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "egl")
torch.set_num_threads(1)

from pbrl.data import Segments  # noqa: E402


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
