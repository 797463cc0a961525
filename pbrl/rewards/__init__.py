"""Reward models: score (obs, act) batches, trained from labeled queries.

The ``reward`` config group picks one by ``kind``; its other keys are the model's config
dataclass fields (``conf/reward/<kind>.yaml``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from pbrl.envs.spec import EnvSpec
from pbrl.errors import ConfigError, closest, make_config
from pbrl.rewards.base import EpisodeReward, FactorReward, FrameReward, RewardModel
from pbrl.rewards.clip import ClipReward, ClipRewardConfig
from pbrl.rewards.ensemble import RewardEnsemble, RewardModelConfig
from pbrl.rewards.factor import FactorRewardConfig, FactorRewardModel
from pbrl.rewards.image import ImageRewardConfig, ImageRewardEnsemble
from pbrl.rewards.rapl import RAPLConfig, RAPLReward
from pbrl.rewards.rlhf_linear import LinearHeadReward, LinearRewardConfig
from pbrl.rewards.transformer import PreferenceTransformer, PreferenceTransformerConfig
from pbrl.rewards.vpl import VPLConfig, VPLReward

# kind -> (model class, its config dataclass)
REWARD_MODELS: dict[str, tuple[Any, Any]] = {
    "ensemble": (RewardEnsemble, RewardModelConfig),
    "transformer": (PreferenceTransformer, PreferenceTransformerConfig),
    "image": (ImageRewardEnsemble, ImageRewardConfig),  # CNN ensemble on rendered frames
    "clip": (ClipReward, ClipRewardConfig),  # zero-shot CLIP reward on frames (VLM-RM)
    "rapl": (RAPLReward, RAPLConfig),  # RAPL: aligned encoder + OT reward on whole videos
    "factor": (FactorRewardModel, FactorRewardConfig),  # HERON's: obs + reward-factor values
    # RAPL's RLHF baseline: the same frozen backbone + a linear scalar head, Bradley-Terry
    "rlhf_linear": (LinearHeadReward, LinearRewardConfig),
    "vpl": (VPLReward, VPLConfig),  # VPL: r(s, z) with a user latent z inferred from labels
}


def make_reward_model(
    values: Mapping[str, object],
    obs_dim: int,
    act_dim: int,
    device: str | torch.device = "cpu",
    env: EnvSpec | None = None,
    factor_names: Sequence[str] = (),
    video: Mapping[str, int] | None = None,
) -> RewardModel:
    """A fresh reward model from the ``reward`` config group (``kind`` + config fields).

    ``env``: the run's environment. A model that renders it (a frame or episode reward) takes
    the env id, its ``gym.make`` arguments and the camera from there (no config holds them); a
    factor reward reads its reward factors (or ``factor_names``, given alone). ``video``: the
    episodic recipe's frame subsampling of whole videos (``frame_stride``, ``n_frames``), for
    the rewards that read it (RAPL, the linear head)."""
    values = dict(values)
    kind = str(values.pop("kind", "ensemble"))
    if kind not in REWARD_MODELS:
        raise ConfigError(
            f"reward.kind={kind!r} is unknown{closest(kind, list(REWARD_MODELS))}: choose one "
            f"of {', '.join(REWARD_MODELS)}"
        )
    cls, config_cls = REWARD_MODELS[kind]
    names = {f.name for f in fields(config_cls)}
    values.update({k: v for k, v in (video or {}).items() if k in names})
    config = make_config(config_cls, values, "reward")
    if issubclass(cls, (FrameReward, EpisodeReward)):
        if env is None:
            raise ConfigError(
                f"reward.kind={kind} renders the env's states: it needs the run's env "
                "(make_reward_model(..., env=EnvSpec(...)))"
            )
        return cls(obs_dim, act_dim, config, device, env=env)  # type: ignore[no-any-return]
    if issubclass(cls, FactorReward):
        names_ = tuple(factor_names) or (env.factor_names if env is not None else ())
        return cls(obs_dim, act_dim, config, device, names_)  # type: ignore[no-any-return]
    model: RewardModel = cls(obs_dim, act_dim, config, device)
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
    "FactorRewardConfig",
    "FactorRewardModel",
    "ImageRewardConfig",
    "ImageRewardEnsemble",
    "LinearHeadReward",
    "LinearRewardConfig",
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
