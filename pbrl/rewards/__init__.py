"""Reward models: score (obs, act) batches, trained from labeled queries.

The ``reward`` config group picks one by ``kind``; its other keys are the model's config
dataclass fields (``conf/reward/<kind>.yaml``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from pbrl.errors import ConfigError, closest, make_config
from pbrl.rewards.base import RewardModel
from pbrl.rewards.clip import ClipReward, ClipRewardConfig
from pbrl.rewards.ensemble import RewardEnsemble, RewardModelConfig
from pbrl.rewards.image import ImageRewardConfig, ImageRewardEnsemble
from pbrl.rewards.rapl import RAPLConfig, RAPLReward
from pbrl.rewards.transformer import PreferenceTransformer, PreferenceTransformerConfig
from pbrl.rewards.vpl import VPLConfig, VPLReward

# kind -> (model class, its config dataclass)
REWARD_MODELS: dict[str, tuple[Any, Any]] = {
    "ensemble": (RewardEnsemble, RewardModelConfig),
    "transformer": (PreferenceTransformer, PreferenceTransformerConfig),
    "image": (ImageRewardEnsemble, ImageRewardConfig),  # CNN ensemble on rendered frames
    "clip": (ClipReward, ClipRewardConfig),  # zero-shot CLIP reward on frames (VLM-RM)
    "rapl": (RAPLReward, RAPLConfig),  # RAPL: aligned encoder + OT reward on whole videos
    "vpl": (VPLReward, VPLConfig),  # VPL: r(s, z) with a user latent z inferred from labels
}


def make_reward_model(
    values: Mapping[str, Any], obs_dim: int, act_dim: int, device: str | torch.device = "cpu"
) -> RewardModel:
    """A fresh reward model from the ``reward`` config group (``kind`` + config fields)."""
    values = dict(values)
    kind = str(values.pop("kind", "ensemble"))
    if kind not in REWARD_MODELS:
        raise ConfigError(
            f"reward.kind={kind!r} is unknown{closest(kind, list(REWARD_MODELS))}: choose one "
            f"of {', '.join(REWARD_MODELS)}"
        )
    cls, config_cls = REWARD_MODELS[kind]
    model: RewardModel = cls(obs_dim, act_dim, make_config(config_cls, values, "reward"), device)
    return model


def reward_kind_name(model: RewardModel) -> str:
    """The ``reward.kind`` a model was built from (its class's entry in ``REWARD_MODELS``)."""
    return next((k for k, (cls, _) in REWARD_MODELS.items() if type(model) is cls), "")


def load_reward_model(path: str | Path, device: str | torch.device = "cpu") -> RewardModel:
    """A reward model saved by its ``save`` (the file names its kind)."""
    blob = torch.load(path, map_location="cpu", weights_only=False)
    kind = blob.get("kind", "ensemble")
    model: RewardModel = REWARD_MODELS[kind][0].load(path, device)
    return model


__all__ = [
    "REWARD_MODELS",
    "ClipReward",
    "ClipRewardConfig",
    "ImageRewardConfig",
    "ImageRewardEnsemble",
    "PreferenceTransformer",
    "PreferenceTransformerConfig",
    "RAPLConfig",
    "RAPLReward",
    "RewardEnsemble",
    "RewardModel",
    "RewardModelConfig",
    "VPLConfig",
    "VPLReward",
    "load_reward_model",
    "make_reward_model",
    "reward_kind_name",
]
