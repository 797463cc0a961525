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
from typing import Any, Protocol, cast, runtime_checkable

import numpy as np
import torch

from pbrl.data import PreferenceDataset, Segments


@runtime_checkable
class RewardModel(Protocol):
    device: torch.device
    #: True when ``reward(obs, act)`` of one step is the model's reward for that step (an
    #: MLP); False when a step's reward depends on its history (the Preference Transformer):
    #: then datasets are relabeled with segment context, not step by step.
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


NOTHING_TO_FIT = {"loss": float("nan"), "train_accuracy": float("nan"), "epochs": 0}


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
) -> dict[str, float]:
    """B-Pref's training round: epochs over ``n`` labeled pairs in minibatches until the
    train accuracy exceeds ``acc_threshold`` or ``max_epochs`` is reached.

    ``permute()`` gives each epoch's order (its last axis indexes pairs); ``step(rows)``
    trains on one minibatch and returns its mean loss, correct and counted (decided) pairs.
    Returns the last epoch's mean loss and accuracy, and the epochs run.
    """
    loss_v, acc_v, epoch = float("nan"), 0.0, 0
    for epoch in range(1, max_epochs + 1):
        order = permute()
        total, correct, counted = 0.0, 0.0, 0.0
        for start in range(0, n, batch_size):
            rows = order[..., start : start + batch_size]
            loss, c, k = step(rows)
            total += loss * rows.shape[-1]
            correct, counted = correct + c, counted + k
        loss_v, acc_v = total / n, correct / max(counted, 1.0)
        if acc_v > acc_threshold:
            break
    return {"loss": loss_v, "train_accuracy": acc_v, "epochs": epoch}
