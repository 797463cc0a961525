"""What a run needs from a reward, per kind: the one place that turns a model's declared kind
(:mod:`pbrl.rewards.base`) into per-step rewards of buffered transitions, a relabeled offline
dataset, or episode rewards. Runs call these and never ask a model what it is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from pbrl.data import PreferenceDataset, Segments
from pbrl.errors import ConfigError
from pbrl.rewards.base import (
    ContextReward,
    EpisodeReward,
    FactorReward,
    FrameReward,
    LatentReward,
    RewardModel,
    StateReward,
    ZeroShot,
    kind_of,
)
from pbrl.rewards.frames import kept_steps, spread_to_steps

if TYPE_CHECKING:
    from pbrl.data.offline import OfflineDataset

Model = RewardModel | type[RewardModel]


def _cls(model: Model) -> type[RewardModel]:
    return model if isinstance(model, type) else type(model)


# -- what a kind needs from a run ------------------------------------------------------------


def needs_labels(model: Model) -> bool:
    """False for a zero-shot reward: a run with it asks no teacher and has no label budget."""
    return not issubclass(_cls(model), ZeroShot)


def scores_steps(model: Model) -> bool:
    """Whether the reward of one step is known when the step is taken (online SAC/PPO)."""
    return issubclass(_cls(model), (StateReward, FrameReward, FactorReward))


def scores_episodes(model: Model) -> bool:
    """Whether the reward can score whole recorded episodes (the episodic recipe)."""
    return issubclass(_cls(model), (EpisodeReward, FrameReward))


def uses_demonstrations(model: Model) -> bool:
    """Whether the episode reward compares episodes with demonstrations (RAPL)."""
    return issubclass(_cls(model), EpisodeReward)


def step_fields(model: Model) -> tuple[str, ...]:
    """What a buffer must keep per transition, beside ``obs``/``act``, to score it later:
    the reached simulator state (``qpos``, ``qvel``) for a frame reward, the reward-factor
    values (``factors``) for a factor reward."""
    kind = kind_of(_cls(model))
    if kind is FrameReward:
        return ("qpos", "qvel")
    if kind is FactorReward:
        return ("factors",)
    return ()


# -- per-step rewards of transitions ---------------------------------------------------------


@dataclass
class Steps:
    """A batch of transitions as buffers keep them; each kind reads its own fields.

    ``qpos``/``qvel`` are the simulator state each step *reached* (the terminal state where an
    episode ended); ``factors`` the step's reward-factor values."""

    obs: np.ndarray  # [N, D]
    act: np.ndarray  # [N, A]
    qpos: np.ndarray | None = None  # [N, nq]
    qvel: np.ndarray | None = None  # [N, nv]
    factors: np.ndarray | None = None  # [N, K]

    def __len__(self) -> int:
        return len(self.obs)

    def __getitem__(self, rows: slice | np.ndarray) -> Steps:
        def pick(x: np.ndarray | None) -> np.ndarray | None:
            return None if x is None else x[rows]

        return Steps(
            self.obs[rows], self.act[rows], pick(self.qpos), pick(self.qvel), pick(self.factors)
        )

    @classmethod
    def of_segments(cls, segments: Segments) -> Steps:
        """The valid steps of ``segments`` (padding dropped), with the state each reached."""
        rows, steps = np.nonzero(segments.mask)
        qpos = qvel = None
        if segments.qpos is not None and segments.qvel is not None:
            qpos, qvel = segments.qpos[rows, steps + 1], segments.qvel[rows, steps + 1]
        factors = None if segments.reward_factors is None else segments.reward_factors[rows, steps]
        return cls(segments.obs[rows, steps], segments.act[rows, steps], qpos, qvel, factors)


@torch.no_grad()
def score_steps(model: RewardModel, steps: Steps, batch: int = 65536) -> np.ndarray:
    """The model's reward ``[N]`` (float32) of each transition, in batches."""
    out = np.empty(len(steps), dtype=np.float32)
    for i in range(0, len(steps), batch):
        out[i : i + batch] = _score(model, steps[i : i + batch])
    return out


def _score(model: RewardModel, s: Steps) -> np.ndarray:
    if isinstance(model, StateReward):
        return np.asarray(model.predict(s.obs, s.act))
    if isinstance(model, FrameReward):
        if s.qpos is None or s.qvel is None:
            raise ConfigError(
                f"{type(model).__name__} scores rendered frames of the simulator state, which "
                "this env or dataset does not expose: use a MuJoCo env (e.g. env=reacher)"
            )
        return model.state_rewards(s.qpos, s.qvel)
    if isinstance(model, FactorReward):
        if s.factors is None:
            raise ConfigError(
                f"{type(model).__name__} reads reward-factor values, which this env does not "
                "report: use an env with factors (pbrl.envs.factors)"
            )
        dev = model.device
        r = model.reward(
            torch.as_tensor(s.obs, device=dev, dtype=torch.float32),
            torch.as_tensor(s.act, device=dev, dtype=torch.float32),
            torch.as_tensor(s.factors, device=dev, dtype=torch.float32),
        )
        return r.float().cpu().numpy()
    raise ConfigError(
        f"{type(model).__name__} is a {kind_of(model).__name__}: it has no reward of a single "
        "step taken online; use a state, frame or factor reward here"
    )


def score_steps_on_device(
    model: RewardModel, obs: torch.Tensor, act: torch.Tensor
) -> torch.Tensor | None:
    """A state reward of a batch that already lives on a device (MuJoCo Warp), without a trip
    through numpy; None for kinds that need more than ``(obs, act)``."""
    if not isinstance(model, StateReward):
        return None
    with torch.no_grad():
        return model.reward(obs.to(model.device), act.to(model.device))


def member_rewards(model: RewardModel, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    """Per-member state rewards ``[E, N]`` (DTR's per-member normalization)."""
    if not isinstance(model, StateReward):
        raise ConfigError(
            f"{type(model).__name__} is no state reward: this algorithm needs per-member "
            "rewards of (obs, act): use reward=ensemble"
        )
    with torch.no_grad():
        return model.members(obs, act)


def state_reward_fn(
    model: RewardModel | None,
) -> Callable[[np.ndarray, np.ndarray], np.ndarray] | None:
    """``predict(obs, act)`` for evaluation's learned return where the kind has one."""
    return model.predict if isinstance(model, StateReward) else None


# -- offline datasets and episodes -----------------------------------------------------------


def relabel_dataset(model: RewardModel, data: OfflineDataset, length: int) -> np.ndarray:
    """The reward of every transition of an offline dataset (an ``OfflineDataset``):
    step by step for a state reward, in windows of ``length`` for a context reward, from
    rendered states for a frame reward."""
    if isinstance(model, StateReward):
        return score_steps(model, Steps(data.observations, data.actions))
    if isinstance(model, (ContextReward, FrameReward)):
        return np.asarray(model.relabel(data, length), dtype=np.float32)
    if isinstance(model, LatentReward):  # the prior's mean user (z = 0); a policy conditioned
        # on z relabels per user itself (score_steps_under)
        zero = np.zeros((1, model.latent_dim), np.float32)
        return score_steps_under(model, Steps(data.observations, data.actions), zero)[0]
    raise ConfigError(
        f"{type(model).__name__} is a {kind_of(model).__name__} and cannot relabel an offline "
        "dataset: use reward=ensemble, reward=transformer, reward=image or reward=clip"
    )


class _FrameEpisodes:
    """A frame reward as an episode reward: the frames of the ``frames`` rule
    (``(frame_stride, n_frames)``, :func:`pbrl.rewards.frames.kept_steps`) are scored, each
    spread over the steps it stands for; with every frame kept, each step earns the reward of
    the frame it reached."""

    def __init__(self, model: FrameReward, frames: tuple[int, int] = (1, 0)) -> None:
        self.model, self.frames = model, frames

    def episode_rewards(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        b, t1, _ = qpos.shape
        kept = kept_steps(t1 - 1, *self.frames)
        n = b * len(kept)
        steps = Steps(
            np.zeros((n, 0)),
            np.zeros((n, 0)),
            qpos[:, kept + 1].reshape(n, -1),
            qvel[:, kept + 1].reshape(n, -1),
        )
        return spread_to_steps(score_steps(self.model, steps).reshape(b, len(kept)), kept, t1 - 1)


def episode_rewards(
    model: RewardModel, qpos: np.ndarray, qvel: np.ndarray, frames: tuple[int, int] = (1, 0)
) -> np.ndarray:
    """Per-step rewards ``[B, T]`` of whole episodes with states ``[B, T + 1, ...]``. A frame
    reward scores the frames ``frames = (frame_stride, n_frames)`` keeps (an episode reward
    applies its own rule, the same settings)."""
    if isinstance(model, EpisodeReward):
        return model.episode_rewards(qpos, qvel)
    if isinstance(model, FrameReward):
        return _FrameEpisodes(model, frames).episode_rewards(qpos, qvel)
    raise ConfigError(
        f"{type(model).__name__} cannot score recorded episodes: use reward=rapl, reward=ot or "
        "reward=image"
    )


def set_demonstrations(model: RewardModel, segments: Segments) -> bool:
    """Hand demonstrations to a reward that compares with them; False where none does."""
    if isinstance(model, EpisodeReward):
        model.set_demonstrations(segments)
        return True
    return False


def latent_of(model: RewardModel, pairs: PreferenceDataset) -> np.ndarray:
    """A user's latent inferred from their labeled pairs (a latent reward only)."""
    return as_latent(model).infer(pairs)


def as_latent(model: RewardModel) -> LatentReward:
    """The model as a latent reward; one error line for any other kind."""
    if not isinstance(model, LatentReward):
        raise ConfigError(
            f"{type(model).__name__} has no user latent: a user's latent needs reward=vpl"
        )
    return model


def has_latent(model: Model | None) -> bool:
    """Whether the reward is personalized by a user latent (its policy is conditioned on it)."""
    return model is not None and issubclass(_cls(model), LatentReward)


@torch.no_grad()
def score_steps_under(
    model: RewardModel, steps: Steps, z: np.ndarray, batch: int = 65536
) -> np.ndarray:
    """A latent reward's reward ``[K, N]`` (float32) of each transition under each latent of
    ``z [K, Z]`` (a user each), in batches."""
    m = as_latent(model)
    zs = np.asarray(z, dtype=np.float32).reshape(-1, m.latent_dim)
    out = np.empty((len(zs), len(steps)), dtype=np.float32)
    dev = m.device
    for k, row in enumerate(zs):
        zt = torch.as_tensor(row, device=dev)
        for i in range(0, len(steps), batch):
            s = steps[i : i + batch]
            r = m.reward(
                torch.as_tensor(s.obs, device=dev, dtype=torch.float32),
                torch.as_tensor(s.act, device=dev, dtype=torch.float32),
                zt,
            )
            out[k, i : i + batch] = r.float().cpu().numpy()
    return out


__all__ = [
    "Steps",
    "as_latent",
    "episode_rewards",
    "has_latent",
    "latent_of",
    "member_rewards",
    "needs_labels",
    "relabel_dataset",
    "score_steps",
    "score_steps_on_device",
    "score_steps_under",
    "scores_episodes",
    "scores_steps",
    "set_demonstrations",
    "state_reward_fn",
    "step_fields",
    "uses_demonstrations",
]
