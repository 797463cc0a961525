"""Implicit Q-Learning (Kostrikov et al. 2022) on the dataset's own reward or a learned one:

* ``algo=iql_oracle`` (``learn_reward: false``) — the dataset's true reward (the oracle);
* ``algo=iql`` (``learn_reward: true``) — every transition relabeled by the reward model the
  ``reward`` config group picks, trained on the preference labels: the Bradley–Terry MLP
  ensemble (``reward=ensemble``, the Uni-RLHF / PT pipeline, "preference IQL") or the
  Preference Transformer (``reward=transformer``).

Losses, with u = min(Q'_1, Q'_2)(s, a) - V(s):
  L_V = E[|τ - 1(u < 0)| u²]                                  (expectile regression)
  L_Q = E[(Q_i(s, a) - (r + γ (1 - d) V(s')))²]               (both critics)
  L_π = -E[min(exp(β (Q'(s, a) - V(s))), 100) log π(a | s)]   (advantage-weighted regression)
Locomotion settings (paper, CORL): τ 0.7, β 3, γ 0.99, batch 256, lr 3e-4 with cosine decay
of the actor's, MLPs 2 x 256, Polyak 0.005, reward scaled by 1000 / (max - min episode
return); deterministic evaluation.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from pbrl.data import PreferenceDataset
from pbrl.data.offline import OfflineDataset
from pbrl.errors import ConfigError
from pbrl.offline.common import (
    Agent,
    Batch,
    LearnedReward,
    ObsNormalizer,
    OfflineAlgoConfig,
    OfflineTrainer,
    PolicyAgent,
    TransitionSampler,
    soft_update,
)
from pbrl.offline.nets import GaussianPolicy, TwinQ, mlp


@dataclass
class IQLConfig(OfflineAlgoConfig):
    name: str = "iql"
    preference: bool = True
    learn_reward: bool = True  # false: the dataset's true reward (iql_oracle)
    expectile: float = 0.7  # τ of the value's expectile regression
    beta: float = 3.0  # inverse temperature of the advantage weights
    max_weight: float = 100.0  # clip of exp(β A)
    gamma: float = 0.99
    tau: float = 0.005  # Polyak rate of the target critics
    batch_size: int = 256
    learning_rate: float = 3e-4  # all three networks
    hidden: int = 256
    n_layers: int = 2
    actor_dropout: float = 0.0
    cosine_actor_lr: bool = True  # decay the actor's learning rate to 0 over training
    learned_reward_norm: str = "minmax"  # minmax: learned rewards to [0, 1] first | none
    reward_scale: str = "returns"  # returns: r * 1000 / (max - min episode return) | none
    normalize_obs: bool = True

    def __post_init__(self) -> None:
        if self.learned_reward_norm not in ("minmax", "none"):
            raise ConfigError(
                f"algo.learned_reward_norm={self.learned_reward_norm!r}: use minmax or none"
            )
        if self.reward_scale not in ("returns", "none"):
            raise ConfigError(f"algo.reward_scale={self.reward_scale!r}: use returns or none")


# -- losses (pure functions, unit-tested against hand-computed values) ---------------------


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """E[|τ - 1(u < 0)| u²] for u = ``diff``."""
    weight = torch.abs(expectile - (diff < 0).float())
    return (weight * diff.pow(2)).mean()


def q_target(
    reward: torch.Tensor, done: torch.Tensor, next_v: torch.Tensor, gamma: float
) -> torch.Tensor:
    return reward + gamma * (1.0 - done) * next_v


def awr_loss(
    log_prob: torch.Tensor, adv: torch.Tensor, beta: float, max_weight: float
) -> torch.Tensor:
    """-E[min(exp(β A), max_weight) log π(a|s)], weights without gradient."""
    weight = torch.exp(beta * adv.detach()).clamp(max=max_weight)
    return -(weight * log_prob).mean()


def minmax_rewards(rewards: np.ndarray) -> np.ndarray:
    """Learned rewards mapped to [0, 1] over the dataset.

    Bradley–Terry fixes a reward only up to a constant, but with terminations (Hopper,
    Walker2d fall) the constant decides whether staying alive pays: below zero, IQL learns
    to fall at once. Non-negative rewards give survival the value the true alive bonus does.
    """
    low, high = float(np.min(rewards)), float(np.max(rewards))
    return (rewards - low) / (high - low) if high > low else np.zeros_like(rewards)


def scale_rewards(rewards: np.ndarray, episode_returns: np.ndarray) -> np.ndarray:
    """IQL's locomotion scaling: r * 1000 / (max - min episode return)."""
    spread = float(episode_returns.max() - episode_returns.min())
    return rewards * (1000.0 / spread) if spread > 0 else rewards


class IQL(OfflineTrainer):
    def __init__(
        self, obs_dim: int, act_dim: int, cfg: IQLConfig, total_steps: int, device: torch.device
    ) -> None:
        self.cfg, self.step = cfg, 0
        self.qf = TwinQ(obs_dim, act_dim, cfg.hidden, cfg.n_layers).to(device)
        self.qf_target = copy.deepcopy(self.qf).requires_grad_(False)
        self.vf = mlp(obs_dim, 1, cfg.hidden, cfg.n_layers).to(device)
        self.actor = GaussianPolicy(
            obs_dim, act_dim, cfg.hidden, cfg.n_layers, cfg.actor_dropout
        ).to(device)
        self.q_opt = torch.optim.Adam(self.qf.parameters(), lr=cfg.learning_rate)
        self.v_opt = torch.optim.Adam(self.vf.parameters(), lr=cfg.learning_rate)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.learning_rate)
        self.actor_sched = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.actor_opt, max(1, total_steps) if cfg.cosine_actor_lr else 10**12
        )

    def train(self, batch: Batch) -> dict[str, float]:
        self.actor.train()  # agent() switched to eval mode (dropout off) for evaluation
        cfg = self.cfg
        obs, act = batch["obs"], batch["act"]
        # value: expectile of the target critics' Q
        with torch.no_grad():
            target_q = self.qf_target.min(obs, act)
            next_v = self.vf(batch["next_obs"]).squeeze(-1)
        v = self.vf(obs).squeeze(-1)
        adv = target_q - v
        v_loss = expectile_loss(adv, cfg.expectile)
        self.v_opt.zero_grad(set_to_none=True)
        v_loss.backward()
        self.v_opt.step()
        # critics: one-step TD towards r + γ V(s')
        target = q_target(batch["reward"], batch["done"], next_v, cfg.gamma)
        q1, q2 = self.qf(obs, act)
        q_loss = ((q1 - target).pow(2).mean() + (q2 - target).pow(2).mean()) / 2
        self.q_opt.zero_grad(set_to_none=True)
        q_loss.backward()
        self.q_opt.step()
        soft_update(self.qf_target, self.qf, cfg.tau)
        # actor: advantage-weighted regression
        actor_loss = awr_loss(self.actor.log_prob(obs, act), adv, cfg.beta, cfg.max_weight)
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_opt.step()
        self.actor_sched.step()
        self.step += 1
        return {
            "value_loss": v_loss.item(),
            "q_loss": q_loss.item(),
            "actor_loss": actor_loss.item(),
            "q_mean": q1.mean().item(),
            "advantage_mean": adv.mean().item(),
        }


class IQLTrainer(IQL):
    """IQL with its data: transitions (relabeled or not) sampled uniformly."""

    def __init__(
        self,
        sampler: TransitionSampler,
        norm: ObsNormalizer,
        obs_dim: int,
        act_dim: int,
        cfg: IQLConfig,
        total_steps: int,
        device: torch.device,
    ) -> None:
        super().__init__(obs_dim, act_dim, cfg, total_steps, device)
        self.sampler, self.norm, self.device = sampler, norm, device

    def sample(self, gen: torch.Generator) -> Batch:
        return self.sampler.sample(self.cfg.batch_size, gen)

    def agent(self) -> Agent:
        self.actor.eval()
        return PolicyAgent(self.actor.act, self.norm, self.device)


def build(
    config: IQLConfig,
    data: OfflineDataset,
    labels: PreferenceDataset | None,
    reward: LearnedReward | None,
    total_steps: int,
    device: torch.device,
    seed: int,
) -> IQLTrainer:
    if reward is None:
        rewards = data.rewards
        if np.isnan(rewards).any():
            raise ConfigError(
                f"algo {config.name} has no reward: a preference run hides the dataset's; "
                "set algo.learn_reward=true (a reward from the labels) or "
                "algo.preference=false (the true reward)"
            )
    else:
        rewards = reward.rewards
        if config.learned_reward_norm == "minmax":
            rewards = minmax_rewards(rewards)
    if config.reward_scale == "returns":
        rewards = scale_rewards(rewards, data.episode_returns(rewards))
    norm = ObsNormalizer(data, config.normalize_obs)
    sampler = TransitionSampler(data, norm, device, rewards)
    return IQLTrainer(sampler, norm, data.obs_dim, data.act_dim, config, total_steps, device)
