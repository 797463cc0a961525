"""Reward kinds: what a reward model reads, declared by its type, and the Bradley–Terry
training loop the models share.

Every model is a :class:`RewardModel` (trained from labeled queries, scores segments for
query selection and accuracy) of exactly one kind, which says what it reads:

* :class:`StateReward`: a per-step reward of ``(obs, act)`` (the MLP ensemble);
* :class:`ContextReward`: a per-step reward that depends on the steps before it (the
  Preference Transformer): datasets are relabeled with segment context;
* :class:`FrameReward`: a per-step reward of the rendered frame of the state a step reached
  (the image CNN, CLIP);
* :class:`EpisodeReward`: a reward of whole episodes (RAPL's optimal transport against
  demonstrations);
* :class:`LatentReward`: a per-step reward of ``(obs, act)`` conditioned on a user's latent
  ``z`` inferred from that user's labels (VPL);
* :class:`FactorReward`: a per-step reward of ``(obs, act)`` and the step's reward-factor
  values (HERON's official model).

A zero-shot reward (CLIP) also derives from :class:`ZeroShot`: it needs no labels.
Runs never ask a model what it is: :mod:`pbrl.rewards.dispatch` turns the kind into what a
run needs (per-step rewards of buffered transitions, a relabeled dataset, episode rewards).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar, cast

import numpy as np
import torch

from pbrl.data import PreferenceDataset, Segments

if TYPE_CHECKING:
    from pbrl.data.offline import OfflineDataset
    from pbrl.envs.render import FrameCache


class RewardModel(ABC):
    """What every reward kind offers: ``fit`` on labels, segment scores (hence preference
    probabilities and accuracy), ``save`` (and a ``load`` classmethod per class)."""

    device: torch.device
    prob_batch_size: int | None = None  # segments per forward pass (None: all at once)

    @abstractmethod
    def fit(self, dataset: PreferenceDataset, rng: np.random.Generator) -> dict[str, float]:
        """One training round on every trainable label; returns ``loss``,
        ``train_accuracy`` and ``epochs`` (logged as ``reward_model/...``)."""

    @abstractmethod
    def segment_returns(self, segments: Segments) -> torch.Tensor:
        """Predicted segment scores ``[E, N]`` (E ensemble members; 1 for a single model)."""

    @abstractmethod
    def save(self, path: str | os.PathLike[str]) -> None: ...

    def describe(self) -> dict[str, object]:
        """Settings a run reports beside the config (e.g. which backbone was loaded)."""
        return {}

    def close(self) -> None:  # noqa: B027  (an optional hook)
        """Free what the model holds beside its weights (renderers)."""

    @torch.no_grad()
    def preference_probs(self, first: Segments, second: Segments) -> np.ndarray:
        """P(second ≻ first) per member, ``[E, N]``."""
        cast(torch.nn.Module, self).eval()  # every model is an nn.Module too
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


class StateReward(RewardModel):
    """A per-step reward of ``(obs, act)``: a step's reward stands alone."""

    @abstractmethod
    def reward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """Per-step reward ``[*batch]`` on the model's device."""

    @abstractmethod
    def predict(self, obs: np.ndarray, act: np.ndarray) -> np.ndarray:
        """Per-step reward of numpy batches ``obs [B, D]``, ``act [B, A]``."""

    def members(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """Per-member rewards ``[E, *batch]`` (a single model: ``E = 1``)."""
        return self.reward(obs, act)[None]


class ContextReward(RewardModel):
    """A per-step reward that depends on the steps before it (no online use)."""

    @abstractmethod
    def relabel(self, data: OfflineDataset, length: int) -> np.ndarray:
        """Reward of every transition of an offline dataset, scored in windows of ``length``."""


class FrameReward(RewardModel):
    """A per-step reward of the rendered frame of the state each step reached.

    Frames are square, ``image_size`` pixels, rendered of ``env_id`` from stored ``qpos``/
    ``qvel`` through ``frame_cache`` (which keeps recent frames, so a state rendered while
    stepping is not rendered again for queries and relabeling). ``segment_returns`` sums
    ``frame_reward`` over the states reached by each valid action (``qpos[:, 1:]``).
    """

    env_id: str
    image_size: int

    @property
    @abstractmethod
    def frame_cache(self) -> FrameCache:
        """Renders (and keeps, up to its capacity) the frames this model scores."""

    @abstractmethod
    def frame_reward(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``[B, H, W, 3]`` uint8 frames on any device -> reward ``[B]`` float on the model's
        device (member mean for an ensemble)."""

    @abstractmethod
    def relabel(self, data: OfflineDataset, length: int = 0) -> np.ndarray:
        """Reward of every transition of an offline dataset (its states rendered)."""

    def state_rewards(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        """Reward ``[K]`` (float32) of the frames of ``K`` states (``qpos [K, nq]``,
        ``qvel [K, nv]``), rendered through ``frame_cache``; a model may keep scores."""
        frames = self.frame_cache.frames(qpos, qvel)
        return self.frame_reward(torch.from_numpy(frames)).float().cpu().numpy()


class EpisodeReward(RewardModel):
    """A reward of whole episodes: a step's reward is known once its episode is complete."""

    @abstractmethod
    def episode_rewards(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        """Per-step rewards ``[B, T]`` of episodes with states ``[B, T + 1, ...]``."""

    @abstractmethod
    def set_demonstrations(self, segments: Segments) -> None:
        """The demonstrations the reward compares episodes with."""


class LatentReward(RewardModel):
    """A per-step reward of ``(obs, act)`` conditioned on a user's latent ``z`` (VPL).

    A user's ``z`` comes from a context set of that user's labeled pairs (``context_size`` of
    them); ``segment_returns`` scores under the latent of each annotator seen in training (the
    population as "members")."""

    latent_dim: int
    context_size: int  # labeled pairs of one user a latent is inferred from

    @abstractmethod
    def reward(self, obs: torch.Tensor, act: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Per-step reward ``[*batch]`` under latent ``z`` (``[Z]`` or ``[*batch, Z]``)."""

    @abstractmethod
    def infer(self, pairs: PreferenceDataset) -> np.ndarray:
        """The latent ``z [Z]`` (posterior mean) of the user who labeled ``pairs``."""

    @abstractmethod
    def posterior(self, pairs: PreferenceDataset) -> tuple[np.ndarray, np.ndarray]:
        """Mean and log-variance ``[Z]`` of q(z | pairs)."""

    @abstractmethod
    def preference_probs_under(
        self, first: Segments, second: Segments, z: np.ndarray
    ) -> np.ndarray:
        """P(second ≻ first) ``[K, N]`` under each latent of ``z [K, Z]``."""


class FactorReward(RewardModel):
    """A per-step reward of ``(obs, act)`` and the step's reward-factor values (HERON)."""

    factor_names: tuple[str, ...]

    @abstractmethod
    def reward(self, obs: torch.Tensor, act: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
        """Per-step reward ``[*batch]`` from ``factors [*batch, K]`` beside the state."""


class ZeroShot:
    """Mixed into a reward whose ``fit`` learns nothing (CLIP): a run needs no labels."""


KINDS: tuple[type[RewardModel], ...] = (
    StateReward,
    ContextReward,
    FrameReward,
    EpisodeReward,
    LatentReward,
    FactorReward,
)


def kind_of(cls: type[RewardModel] | RewardModel) -> type[RewardModel]:
    """The one kind (a class of :data:`KINDS`) a reward class or model belongs to."""
    c = cls if isinstance(cls, type) else type(cls)
    found = [k for k in KINDS if issubclass(c, k)]
    if len(found) != 1:
        raise TypeError(f"{c.__name__} must derive from exactly one reward kind, not {found}")
    return found[0]


# Each epoch's minibatch order: pair indices (their last axis), numpy or torch.
Order = TypeVar("Order", np.ndarray, torch.Tensor)

NOTHING_TO_FIT = {"loss": float("nan"), "train_accuracy": float("nan"), "epochs": 0, "updates": 0}


def save_atomically(blob: Mapping[str, object], path: str | os.PathLike[str]) -> Path:
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
    permute: Callable[[], Order],
    step: Callable[[Order], tuple[float, float, float]],
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
