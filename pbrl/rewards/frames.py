"""Which frames of a fixed-length video a reward sees, and how their rewards become per-step
rewards: shared by RAPL's OT reward and by frame rewards scored in the episodic recipe, so
every reward of a RAPL comparison sees the same frames (``episodic.frame_stride``,
``episodic.n_frames``)."""

from __future__ import annotations

import numpy as np


def kept_steps(length: int, frame_stride: int = 1, n_frames: int = 0) -> np.ndarray:
    """The steps of a ``length``-step video whose frames count, ending at the last step:
    ``n_frames`` evenly spaced ones, or else every ``frame_stride``-th one."""
    if n_frames:
        return np.unique(np.linspace(length - 1, 0, min(n_frames, length)).round().astype(int))
    return np.arange(length - 1, -1, -frame_stride)[::-1]


def spread_to_steps(rewards: np.ndarray, kept: np.ndarray, length: int) -> np.ndarray:
    """Per-step rewards ``[B, length]`` from the kept frames' rewards ``[B, len(kept)]``: each
    kept frame's reward spread evenly over the steps it stands for (itself and the skipped
    ones before it), so an episode's return is the sum of its kept frames' rewards."""
    block = np.searchsorted(kept, np.arange(length))  # the kept frame at or after each step
    counts = np.bincount(block, minlength=len(kept))
    return (rewards / counts)[:, block]
