"""Fake rewards, one per declared kind, with outputs computable by hand: they drive the
recipes in tests without training anything."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pbrl.data import PreferenceDataset, Segments
from pbrl.envs.spec import EnvSpec
from pbrl.rewards.base import NOTHING_TO_FIT, EpisodeReward, FrameReward, StateReward
from pbrl.teachers.base import Teacher


@dataclass
class FakeConfig:
    """No settings: what a frame reward renders is the run's env (``env``)."""


class _Fake(nn.Module):
    """Built like every registered reward: ``cls(obs_dim, act_dim, config, device)``, and
    ``env=`` for the kinds that render it."""

    def __init__(
        self,
        obs_dim: int = 0,
        act_dim: int = 0,
        config: FakeConfig | None = None,
        device="cpu",
        env: EnvSpec | None = None,
    ) -> None:
        super().__init__()
        self.config = config or FakeConfig()
        self.env = env
        self.device = torch.device(device)
        self.fits = 0

    def fit(self, dataset: PreferenceDataset, rng: np.random.Generator) -> dict[str, float]:
        self.fits += 1
        return dict(NOTHING_TO_FIT)

    def save(self, path: str | os.PathLike[str]) -> None:
        torch.save({"kind": "fake"}, path)


class FirstObsReward(_Fake, StateReward):
    """A state reward: the first observation coordinate."""

    def reward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return obs[..., 0].float()

    def predict(self, obs: np.ndarray, act: np.ndarray) -> np.ndarray:
        return np.asarray(obs, dtype=np.float32)[..., 0]

    def segment_returns(self, segments: Segments) -> torch.Tensor:
        return torch.as_tensor((segments.obs[..., 0] * segments.mask).sum(-1))[None]


class StepIndexReward(_Fake, EpisodeReward):
    """An episode reward: step t of every episode earns t + 1."""

    def episode_rewards(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        b, t1, _ = qpos.shape
        return np.tile(np.arange(1, t1, dtype=np.float64), (b, 1))

    def set_demonstrations(self, segments: Segments) -> None:
        pass

    def segment_returns(self, segments: Segments) -> torch.Tensor:
        return torch.as_tensor(segments.mask.sum(-1) * (segments.mask.sum(-1) + 1) / 2)[None]


class MeanPixelReward(_Fake, FrameReward):
    """A frame reward: the mean pixel value of the rendered frame, in [0, 1]."""

    def __init__(self, *args, image_size: int = 16, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        from pbrl.envs.render import FrameCache

        assert self.env is not None, "a frame reward is given the run's env"
        self.env_id, self.image_size = self.env.id, image_size
        self._frames = FrameCache(self.env_id, image_size, capacity=0)

    @property
    def frame_cache(self):  # noqa: ANN201
        return self._frames

    def frame_reward(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        return torch.as_tensor(frames).float().mean((1, 2, 3)) / 255.0

    def relabel(self, data: object, length: int = 0) -> np.ndarray:
        raise NotImplementedError

    def segment_returns(self, segments: Segments) -> torch.Tensor:
        frames, index = self._frames.segment_frames(segments)
        per = self.frame_reward(frames).numpy()
        return torch.as_tensor(np.where(index >= 0, per[index], 0.0).sum(-1))[None]


class Silent(Teacher):
    """A teacher that answers ``answers`` queries (correctly), then never again."""

    def __init__(self, answers: int = 0, rng: np.random.Generator | None = None) -> None:
        self.left, self.asked, self.ready = int(answers), 0, []

    def submit(self, queries) -> None:  # noqa: ANN001
        from pbrl.data.preferences import oracle_labels

        k = min(self.left, len(queries))
        self.left -= k
        self.asked += len(queries) - k
        if k:
            rows = np.arange(k)
            self.ready.append(PreferenceDataset(queries[rows], oracle_labels(queries[rows])))

    def collect(self) -> PreferenceDataset | None:
        ready, self.ready = self.ready, []
        return PreferenceDataset.concatenate(ready) if ready else None

    def outstanding(self) -> int:
        return self.asked

    def where(self) -> str:
        return "(a test teacher that never answers)"
