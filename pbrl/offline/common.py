"""What every offline algorithm shares: the runner's fields of its config, the reward learned
from the labels, batches from a dataset, the agent interface, and the base class the runner
trains and checkpoints.

Every algorithm module has ``build(config, data, labels, reward, total_steps, device, seed)
-> OfflineTrainer`` (the same signature for all; unused arguments are ignored), and the
runner's registry (:data:`pbrl.offline.runner.ALGORITHMS`) maps ``algo.name`` to the config
dataclass and that function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from pbrl.data import PreferenceDataset
from pbrl.data.offline import OfflineDataset
from pbrl.errors import ConfigError
from pbrl.rewards.base import RewardModel

Batch = dict[str, torch.Tensor]


@dataclass
class OfflineAlgoConfig:
    """The keys every offline ``conf/algo/<name>.yaml`` has; each algorithm's config
    dataclass adds its own, so the whole group is the config (no key is stripped)."""

    name: str = ""  # the registry key (pbrl.offline.runner.ALGORITHMS)
    kind: str = "offline"  # pbrl.recipes runs offline algos with pbrl.offline.runner.RECIPE
    preference: bool = False  # learns from preference labels (scripted or dataset.preferences)
    learn_reward: bool = False  # fit the ``reward`` group's model on the labels, relabel the data

    #: ``reward.kind`` values the algorithm can use when it learns a reward (empty: any)
    reward_kinds: ClassVar[tuple[str, ...]] = ()


@dataclass
class LearnedReward:
    """The reward model fit on the labels, and every dataset transition relabeled by it."""

    model: RewardModel
    rewards: np.ndarray  # [N] float32, in the dataset's transition order


def require_labels(labels: PreferenceDataset | None, algo: str) -> PreferenceDataset:
    """The labels an algorithm trains on; a :class:`ConfigError` when there are none."""
    if labels is None:
        raise ConfigError(
            f"algo {algo} learns from preference labels: set algo.preference=true and "
            "max_feedback > 0 (or dataset.preferences=FILE)"
        )
    if len(labels.trainable) == 0:
        raise ConfigError(
            f"algo {algo} needs preference labels, but all {len(labels)} are skips: "
            "raise max_feedback or bring a label file with decided labels (dataset.preferences)"
        )
    return labels


# -- agents --------------------------------------------------------------------------------


class Agent(Protocol):
    """A policy acting in an episode: ``reset()`` at its start, then ``act(obs)`` per step."""

    def reset(self) -> None: ...

    def act(self, obs: np.ndarray) -> np.ndarray: ...


class ObsNormalizer:
    """Standardizes observations with dataset statistics (numpy and torch)."""

    def __init__(self, data: OfflineDataset, enabled: bool = True, eps: float = 1e-3) -> None:
        if enabled:
            self.mean = data.observations.mean(0).astype(np.float32)
            self.std = (data.observations.std(0) + eps).astype(np.float32)
        else:
            self.mean = np.zeros(data.obs_dim, np.float32)
            self.std = np.ones(data.obs_dim, np.float32)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return ((obs - self.mean) / self.std).astype(np.float32)


class PolicyAgent:
    """A memoryless policy ``fn(normalized obs tensor [B, D]) -> action tensor [B, A]``."""

    def __init__(
        self, fn: Callable[[torch.Tensor], torch.Tensor], norm: ObsNormalizer, device: torch.device
    ) -> None:
        self.fn, self.norm, self.device = fn, norm, device

    def reset(self) -> None:
        pass

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(self.norm(obs[None]), device=self.device)
        return self.fn(x)[0].cpu().numpy()


# -- batches -------------------------------------------------------------------------------


def _randint(high: int, size: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(high, (size,), generator=gen)


class TransitionSampler:
    """Uniform minibatches of ``(obs, act, reward, next_obs, done)`` on the training device."""

    def __init__(
        self,
        data: OfflineDataset,
        norm: ObsNormalizer,
        device: torch.device,
        rewards: np.ndarray | None = None,
    ) -> None:
        def t(x: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.asarray(x, dtype=np.float32), device=device)

        self.obs, self.next_obs = t(norm(data.observations)), t(norm(data.next_observations))
        self.act = t(data.actions)
        self.reward = t(data.rewards if rewards is None else rewards)
        self.done = t(data.terminals)
        self.device = device

    def __len__(self) -> int:
        return len(self.obs)

    def sample(self, batch_size: int, gen: torch.Generator) -> Batch:
        i = _randint(len(self), batch_size, gen).to(self.device)
        return {
            "obs": self.obs[i],
            "act": self.act[i],
            "reward": self.reward[i],
            "next_obs": self.next_obs[i],
            "done": self.done[i],
        }


class WindowSampler:
    """Windows of the last ``context`` steps of an episode up to a uniformly drawn step,
    left-padded at the episode start (how a decision transformer sees its history)."""

    def __init__(
        self,
        data: OfflineDataset,
        norm: ObsNormalizer,
        context: int,
        device: torch.device,
        rewards: np.ndarray | None = None,
        rtg_scale: float = 1.0,
    ) -> None:
        rew = np.asarray(data.rewards if rewards is None else rewards, dtype=np.float64)
        self.data, self.context, self.device = data, context, device
        self.obs = torch.as_tensor(norm(data.observations), device=device)
        self.act = torch.as_tensor(data.actions, device=device)
        self.reward = torch.as_tensor(rew, dtype=torch.float32, device=device)
        # Return-to-go: reward summed from each step to the end of its episode.
        csum = np.cumsum(rew[::-1])[::-1]
        ends = data.episode_starts[1:][data.episode_of]
        after = np.where(ends < len(rew), np.append(csum, 0.0)[ends], 0.0)
        self.rtg = torch.as_tensor((csum - after) / rtg_scale, dtype=torch.float32, device=device)
        self.ep_start = torch.as_tensor(data.episode_starts[data.episode_of], device=device)
        self.step = torch.as_tensor(data.step_in_episode, device=device)
        self.terminal = torch.as_tensor(data.terminals, device=device)

    def sample(self, batch_size: int, gen: torch.Generator) -> Batch:
        end = _randint(len(self.data), batch_size, gen).to(self.device)
        idx = end[:, None] - self.context + 1 + torch.arange(self.context, device=self.device)
        mask = idx >= self.ep_start[end][:, None]
        idx = torch.where(mask, idx, end[:, None])  # padded rows copy a valid step, then zeroed
        m = mask.float()
        return {
            "obs": self.obs[idx] * m[..., None],
            "act": self.act[idx] * m[..., None],
            "reward": self.reward[idx] * m,
            "rtg": (self.rtg[idx] * m)[..., None],
            "timesteps": self.step[idx] * mask,
            "mask": mask,
            "last_terminal": self.terminal[end],
        }


# -- the trainer interface -----------------------------------------------------------------


class OfflineTrainer:
    """An algorithm as the runner sees it: ``sample`` a batch, ``train(batch) -> metrics``,
    ``agent()`` to evaluate. Modules, optimizers, schedulers and parameters held as
    attributes are checkpointed automatically."""

    def sample(self, gen: torch.Generator) -> Batch:
        raise NotImplementedError

    def train(self, batch: Batch) -> dict[str, float]:
        raise NotImplementedError

    def agent(self) -> Agent:
        raise NotImplementedError

    def _stateful(self) -> dict[str, nn.Module | torch.optim.Optimizer | LRScheduler]:
        kinds = (nn.Module, torch.optim.Optimizer, LRScheduler)
        return {k: v for k, v in vars(self).items() if isinstance(v, kinds)}

    def state_dict(self) -> dict[str, object]:
        state: dict[str, object] = {k: v.state_dict() for k, v in self._stateful().items()}
        state["_tensors"] = {
            k: v.detach().clone()
            for k, v in vars(self).items()
            if isinstance(v, torch.Tensor) and v.requires_grad
        }
        state["_step"] = getattr(self, "step", 0)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, v in self._stateful().items():
            v.load_state_dict(state[k])
        with torch.no_grad():
            for k, v in state.get("_tensors", {}).items():
                getattr(self, k).copy_(v)
        self.step = state.get("_step", 0)


def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    with torch.no_grad():
        for t, s in zip(target.parameters(), source.parameters(), strict=True):
            t.lerp_(s, tau)
