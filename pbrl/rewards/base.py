"""The one reward-model interface, and the Bradley–Terry training loop its models share.

A reward model scores ``(obs, act)`` and is trained from labeled queries. The MLP ensemble
(:mod:`pbrl.rewards.ensemble`) and the Preference Transformer
(:mod:`pbrl.rewards.transformer`) implement :class:`RewardModel`; so do the image and
reward-factor models that plug in later. Query selection, the online loop, the offline
runner and evaluation only use this interface.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeGuard, cast, runtime_checkable

import numpy as np
import torch

from pbrl.data import PreferenceDataset, Segments


@runtime_checkable
class RewardModel(Protocol):
    """``inputs`` (a class attribute, optional: ``"state"`` when absent) says what a model
    scores: ``"state"`` models score ``(obs, act)`` through ``reward``/``predict``;
    ``"frames"`` models (:class:`FrameReward`) score rendered frames of simulator states and
    raise ``TypeError`` from ``reward``/``predict``. ``needs_labels`` (optional, True when
    absent) is False for a zero-shot reward that ``fit`` does not change (``reward=clip``):
    the online loop then runs it with ``max_feedback=0``."""

    device: torch.device
    #: True when ``reward(obs, act)`` of one step is the model's reward for that step (an
    #: MLP); False when a step's reward depends on its history (the Preference Transformer):
    #: then datasets are relabeled with segment context, not step by step. Frame rewards
    #: that relabel offline datasets by rendering their states set it False and provide
    #: ``relabel(data, length)`` (:class:`pbrl.rewards.image.ImageRewardEnsemble`).
    markovian: bool

    def fit(self, dataset: PreferenceDataset, rng: np.random.Generator) -> dict[str, float]:
        """One training round on every trainable label; returns ``loss``,
        ``train_accuracy`` and ``epochs`` (logged as ``reward_model/...``)."""
        ...

    def reward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """Per-step reward ``[*batch]`` on the model's device."""
        ...

    def predict(self, obs: np.ndarray, act: np.ndarray) -> np.ndarray:
        """Per-step reward of numpy batches ``obs [B, D]``, ``act [B, A]``."""
        ...

    def segment_returns(self, segments: Segments) -> torch.Tensor:
        """Predicted segment scores ``[E, N]`` (E ensemble members; 1 for a single model)."""
        ...

    def preference_probs(self, first: Segments, second: Segments) -> np.ndarray:
        """P(second ≻ first) per member, ``[E, N]``."""
        ...

    def accuracy(self, dataset: PreferenceDataset) -> float: ...

    def save(self, path: str | os.PathLike[str]) -> None: ...


@runtime_checkable
class FrameReward(RewardModel, Protocol):
    """A reward computed from rendered frames (``inputs = "frames"``).

    Frames are rendered square, ``image_size`` pixels, by :class:`pbrl.video.StateRenderer`
    of ``env_id`` from stored ``qpos``/``qvel``. ``segment_returns`` sums ``frame_reward``
    over the states reached by each valid action (``qpos[:, 1:]``; padded steps count 0), so
    ``preference_probs``, ``accuracy`` and query selection work unchanged. The online loop
    (:mod:`pbrl.online.frames`) renders the state reached after each step and calls
    ``frame_reward`` with the whole batch of envs. Optional attributes it reads: ``camera``
    (free-camera overrides: ``distance``, ``elevation``, ``azimuth``, ``lookat``; absent or
    empty: the renderer's default view) and ``frame_cache`` (a
    :class:`pbrl.rewards.frame_cache.FrameCache` to render into, so states rendered while
    stepping are not rendered again for queries and relabeling).
    """

    inputs: str  # "frames"
    env_id: str
    image_size: int

    def frame_reward(self, frames: torch.Tensor) -> torch.Tensor:
        """``[B, H, W, 3]`` uint8 frames on any device -> reward ``[B]`` float on the model's
        device (member mean for an ensemble)."""
        ...


def is_frame_reward(model: object) -> TypeGuard[FrameReward]:
    """Whether ``model`` scores rendered frames (``inputs == "frames"``) rather than states."""
    return getattr(model, "inputs", "state") == "frames"


class PreferenceScoring:
    """``preference_probs`` and ``accuracy`` from ``segment_returns``, for ``nn.Module``
    reward models (mixed in before ``nn.Module``)."""

    prob_batch_size: int | None = None  # segments per forward pass (None: all at once)

    def segment_returns(self, segments: Segments) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def preference_probs(self, first: Segments, second: Segments) -> np.ndarray:
        """P(second ≻ first) per member, ``[E, N]``."""
        cast(torch.nn.Module, self).eval()  # mixed in before nn.Module
        n = len(first)
        step = self.prob_batch_size or max(n, 1)
        out = []
        for i in range(0, n, step):
            rows = np.arange(i, min(i + step, n))
            a, b = (first, second) if step >= n else (first[rows], second[rows])
            out.append(torch.sigmoid(self.segment_returns(b) - self.segment_returns(a)))
        if not out:
            return np.zeros((1, 0))
        return torch.cat(out, dim=-1).cpu().numpy()

    def accuracy(self, dataset: PreferenceDataset) -> float:
        """Agreement of the (member-mean) preference with non-tied, non-skipped labels."""
        keep = np.flatnonzero(np.isin(dataset.labels, (0.0, 1.0)))
        if keep.size == 0:
            return float("nan")
        q = dataset.queries[keep]
        p = self.preference_probs(q.first, q.second).mean(0)
        return float(np.mean((p > 0.5) == (dataset.labels[keep] == 1.0)))


NOTHING_TO_FIT = {"loss": float("nan"), "train_accuracy": float("nan"), "epochs": 0, "updates": 0}


def save_atomically(blob: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """``torch.save(blob)`` to ``path`` through a temporary file: a crash mid-write leaves
    the previous file (or none), never a truncated one."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    torch.save(blob, tmp)
    os.replace(tmp, p)
    return p


def trainable_pairs(dataset: PreferenceDataset) -> PreferenceDataset | None:
    """The labels a model trains on (skips dropped), or None when there are none."""
    idx = dataset.trainable
    return dataset[idx] if idx.size else None


def fit_epochs(
    n: int,
    batch_size: int,
    max_epochs: int,
    acc_threshold: float,
    permute: Callable[[], Any],
    step: Callable[[Any], tuple[float, float, float]],
    max_updates: int | None = None,
) -> dict[str, float]:
    """B-Pref's training round: epochs over ``n`` labeled pairs in minibatches until the
    train accuracy exceeds ``acc_threshold`` or ``max_epochs`` is reached.

    ``max_updates`` (not in B-Pref) also caps the round's gradient steps, so a round's cost
    stops growing with the number of labels; the round may then end inside an epoch.
    ``permute()`` gives each epoch's order (its last axis indexes pairs); ``step(rows)``
    trains on one minibatch and returns its mean loss, correct and counted (decided) pairs.
    Returns the last epoch's mean loss and accuracy, the epochs run (a partial last epoch
    counts as one) and the gradient steps taken.
    """
    loss_v, acc_v, epoch, updates = float("nan"), 0.0, 0, 0
    for epoch in range(1, max_epochs + 1):
        order = permute()
        total, correct, counted, seen = 0.0, 0.0, 0.0, 0
        for start in range(0, n, batch_size):
            rows = order[..., start : start + batch_size]
            loss, c, k = step(rows)
            updates += 1
            seen += rows.shape[-1]
            total += loss * rows.shape[-1]
            correct, counted = correct + c, counted + k
            if max_updates is not None and updates >= max_updates:
                break
        loss_v, acc_v = total / max(seen, 1), correct / max(counted, 1.0)
        if acc_v > acc_threshold or (max_updates is not None and updates >= max_updates):
            break
    return {"loss": loss_v, "train_accuracy": acc_v, "epochs": epoch, "updates": updates}
