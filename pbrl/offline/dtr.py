"""DTR (Tu et al. 2025, "In-Dataset Trajectory Return Regularization for Offline
Preference-based RL"): a decision transformer conditioned on in-dataset returns-to-go keeps
the policy near trajectories the learned reward rates highly, and a twin-Q critic trained on
n-step targets over each window lets it pick better actions than the data.

1. Reward: an ensemble of MLP reward models (``reward`` config group) trained on the labels;
   each member is standardized over the dataset, then averaged:
   r̂ = mean_e[(r̂_e - mean r̂_e) / std r̂_e].
2. Critic: Q_i(s_t, a_t) -> n-step target over the rest of the window, bootstrapped with the
   target critic at the window's last state and the (EMA) policy's action there:
   y_t = Σ_{j=t}^{K-2} γ^{j-t} r_j + γ^{K-1-t} min Q'(s_{K-1}, â_{K-1}); when the episode
   terminated at the window's last step, y_t = Σ_{j=t}^{K-1} γ^{j-t} r_j (no bootstrap).
3. Actor: L = MSE(â, a) - λ Q(s, â) with λ = η · progress / E|Q| (η = 3), progress growing
   linearly from 0 to 1 over training.
4. Acting: several initial returns-to-go (``rtg_multipliers`` x the best dataset return),
   each decremented by the learned reward of the executed actions; the candidate actions are
   scored by the critic and the best is taken.

Paper/official code: embed 256, 4 layers, 4 heads, context 20, lr 1e-4 with weight decay
1e-4, grad clip 9 (hopper), EMA 0.995, critic 3 x 256, Polyak 0.005.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch import nn

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
    WindowSampler,
    soft_update,
)
from pbrl.offline.nets import DecisionTransformer, TwinQ, init_weights
from pbrl.rewards.dispatch import member_rewards

RewardFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class DTRConfig(OfflineAlgoConfig):
    name: str = "dtr"
    preference: bool = True
    learn_reward: bool = True  # the ensemble of the ``reward`` group (reward=ensemble)
    reward_kinds: ClassVar[tuple[str, ...]] = ("ensemble",)  # its members are normalized
    embed_dim: int = 256
    n_layers: int = 4
    n_heads: int = 4
    context: int = 20  # K, steps per window
    dropout: float = 0.1
    critic_hidden: int = 256
    critic_layers: int = 3
    gamma: float = 0.99
    tau: float = 0.005  # Polyak rate of the target critic
    eta: float = 3.0  # weight of the Q term at the end of training
    batch_size: int = 64
    learning_rate: float = 1e-4
    critic_learning_rate: float = 3e-4
    weight_decay: float = 1e-4
    grad_clip: float = 9.0
    ema_decay: float = 0.995  # the actor copy used for target actions
    ema_start: int = 1000
    ema_every: int = 5
    rtg_multipliers: list[float] = field(default_factory=lambda: [0.5, 1.0, 1.5, 2.0])
    max_ep_len: int = 1000
    normalize_obs: bool = True


# -- the math (unit-tested) ----------------------------------------------------------------


def normalize_ensemble(members: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-member standardization over the dataset, then the mean: ``[E, N] -> [N]``.

    Returns the rewards and each member's (mean, std), to normalize new steps the same way.
    """
    mean = members.mean(1)
    std = members.std(1) + 1e-8
    return ((members - mean[:, None]) / std[:, None]).mean(0), mean, std


def nstep_targets(
    reward: torch.Tensor,
    mask: torch.Tensor,
    q_last: torch.Tensor,
    last_terminal: torch.Tensor,
    gamma: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """n-step targets for every step of right-aligned windows.

    ``reward``/``mask`` ``[B, K]`` (mask False on left padding), ``q_last [B]`` the bootstrap
    value at the last state, ``last_terminal [B]`` whether the episode ended after the last
    step. Returns ``(targets [B, K], valid [B, K])``: without termination the last step has
    no target (nothing to bootstrap its own Q from within the window).
    """
    b, k = reward.shape
    r = reward * mask
    term = last_terminal.float()
    # without termination the last step's reward is excluded (it is inside Q(s_{K-1}, ·))
    r = torch.cat([r[:, :-1], (r[:, -1] * term)[:, None]], 1)
    powers = torch.arange(k, device=reward.device, dtype=reward.dtype)
    # discounted sums to the window's end: G_t = Σ_{j>=t} γ^{j-t} r_j
    disc = gamma**powers
    g = torch.flip(torch.cumsum(torch.flip(r * disc, [1]), 1), [1]) / disc
    boot = (gamma ** (k - 1 - powers))[None] * q_last[:, None] * (1.0 - term)[:, None]
    valid = mask.clone()
    valid[:, -1] = valid[:, -1] & last_terminal.bool()
    return g + boot, valid


# -- the algorithm -------------------------------------------------------------------------


class DTR(OfflineTrainer):
    def __init__(
        self,
        sampler: WindowSampler,
        norm: ObsNormalizer,
        reward_fn: RewardFn,
        rtg_scale: float,
        best_return: float,
        obs_dim: int,
        act_dim: int,
        cfg: DTRConfig,
        total_steps: int,
        device: torch.device,
    ) -> None:
        self.cfg, self.sampler, self.norm, self.device, self.step = cfg, sampler, norm, device, 0
        self.reward_fn, self.rtg_scale, self.best_return = reward_fn, rtg_scale, best_return
        self.total_steps = max(1, total_steps)
        self.actor = DecisionTransformer(
            obs_dim,
            act_dim,
            1,
            cfg.embed_dim,
            cfg.n_layers,
            cfg.n_heads,
            cfg.max_ep_len,
            cfg.dropout,
        ).to(device)
        init_weights(self.actor)
        self.actor_ema = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic = TwinQ(obs_dim, act_dim, cfg.critic_hidden, cfg.critic_layers).to(device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_opt = torch.optim.AdamW(
            self.actor.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay
        )
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_learning_rate)
        self.coin = torch.Generator().manual_seed(0)

    def sample(self, gen: torch.Generator) -> Batch:
        return self.sampler.sample(self.cfg.batch_size, gen)

    def train(self, batch: Batch) -> dict[str, float]:
        cfg = self.cfg
        obs, act, mask = batch["obs"], batch["act"], batch["mask"]
        rtg, ts = batch["rtg"], batch["timesteps"]
        self.actor.train()
        # critic: n-step targets over the window
        with torch.no_grad():
            next_act = self.actor_ema(rtg, obs, act, ts, mask)[:, -1]
            q_last = self.critic_target.min(obs[:, -1], next_act)
            target, valid = nstep_targets(
                batch["reward"], mask, q_last, batch["last_terminal"], cfg.gamma
            )
        q1, q2 = self.critic(obs, act)
        v = valid.float()
        critic_loss = (((q1 - target).pow(2) + (q2 - target).pow(2)) * v).sum() / v.sum().clamp_min(
            1
        )
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.grad_clip)
        self.critic_opt.step()
        # actor: return-conditioned reconstruction - λ Q
        pred = self.actor(rtg, obs, act, ts, mask)
        m = mask.float()
        bc_loss = (((pred - act).pow(2).sum(-1)) * m).sum() / m.sum().clamp_min(1)
        qa1, qa2 = self.critic(obs[mask], pred[mask])
        first = torch.rand((), generator=self.coin) < 0.5  # which critic scores, which scales
        q_new, q_other = (qa1, qa2) if first else (qa2, qa1)
        q_loss = -q_new.mean() / q_other.abs().mean().detach().clamp_min(1e-6)
        progress = min(1.0, self.step / self.total_steps)
        actor_loss = bc_loss + cfg.eta * progress * q_loss
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.actor.parameters(), cfg.grad_clip)
        self.actor_opt.step()
        # target networks
        soft_update(self.critic_target, self.critic, cfg.tau)
        if self.step >= cfg.ema_start and self.step % cfg.ema_every == 0:
            soft_update(self.actor_ema, self.actor, 1.0 - cfg.ema_decay)
        elif self.step < cfg.ema_start:
            self.actor_ema.load_state_dict(self.actor.state_dict())
        self.step += 1
        return {
            "critic_loss": critic_loss.item(),
            "bc_loss": bc_loss.item(),
            "q_loss": q_loss.item(),
            "actor_loss": actor_loss.item(),
            "q_mean": q1[valid].mean().item() if valid.any() else 0.0,
            "target_mean": target[valid].mean().item() if valid.any() else 0.0,
        }

    def agent(self) -> Agent:
        self.actor.eval()
        starts = [m * self.best_return for m in self.cfg.rtg_multipliers]
        return QGuidedAgent(
            self.actor,
            self.critic,
            self.reward_fn,
            starts,
            self.rtg_scale,
            self.norm,
            self.cfg.context,
            self.device,
        )


class QGuidedAgent:
    """Runs the decision transformer for several return-to-go targets at once and takes the
    candidate action the critic values most. Returns-to-go fall by the *learned* reward of
    each executed action (the true reward is not known to a preference learner)."""

    def __init__(
        self,
        actor: DecisionTransformer,
        critic: TwinQ,
        reward_fn: RewardFn,
        initial_rtgs: list[float],
        rtg_scale: float,
        norm: ObsNormalizer,
        context: int,
        device: torch.device,
    ) -> None:
        self.actor, self.critic, self.reward_fn = actor, critic, reward_fn
        self.initial = np.asarray(initial_rtgs, np.float32)
        self.rtg_scale, self.norm, self.context, self.device = rtg_scale, norm, context, device
        self.act_dim = actor.embed_act.in_features
        self.reset()

    def reset(self) -> None:
        k = self.context
        self.obs: deque[np.ndarray] = deque(maxlen=k)
        self.acts: deque[np.ndarray] = deque(maxlen=k)
        self.rtgs: deque[np.ndarray] = deque(maxlen=k)  # one value per candidate
        self.rtg = self.initial.copy()
        self.t = 0

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        c, k = len(self.initial), self.context
        o = self.norm(obs)
        self.obs.append(o)
        self.acts.append(np.zeros(self.act_dim, np.float32))
        self.rtgs.append(self.rtg / self.rtg_scale)
        n = len(self.obs)
        obs_w = np.zeros((k, len(o)), np.float32)
        act_w = np.zeros((k, self.act_dim), np.float32)
        rtg_w = np.zeros((c, k), np.float32)
        obs_w[k - n :], act_w[k - n :] = np.stack(self.obs), np.stack(self.acts)
        rtg_w[:, k - n :] = np.stack(self.rtgs, 1)
        mask = np.arange(k) >= k - n
        steps = np.clip(self.t - (k - 1) + np.arange(k), 0, None)

        def t(x: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(x, device=self.device)

        rep = lambda x: t(x)[None].expand(c, *x.shape)  # noqa: E731
        pred = self.actor(t(rtg_w)[..., None], rep(obs_w), rep(act_w), rep(steps), rep(mask))[:, -1]
        q = self.critic.min(t(o)[None].expand(c, -1), pred)
        action = pred[int(torch.argmax(q))].cpu().numpy()
        self.acts[-1] = action
        r = float(self.reward_fn(obs[None].astype(np.float32), action[None])[0])
        self.rtg = self.rtg - r
        self.t += 1
        return action


def build(
    config: DTRConfig,
    data: OfflineDataset,
    labels: PreferenceDataset | None,
    reward: LearnedReward | None,
    total_steps: int,
    device: torch.device,
    seed: int,
) -> DTR:
    if reward is None:
        raise ConfigError(
            f"algo {config.name} needs a reward ensemble learned from the labels: "
            "set reward=ensemble and algo.learn_reward=true"
        )
    model = reward.model

    def members_of(obs: np.ndarray, act: np.ndarray) -> np.ndarray:
        o, a = torch.as_tensor(obs, device=device), torch.as_tensor(act, device=device)
        return member_rewards(model, o, a).cpu().numpy()  # [E, N]; a state reward only

    members = np.concatenate(
        [
            members_of(data.observations[i : i + 65536], data.actions[i : i + 65536])
            for i in range(0, len(data), 65536)
        ],
        1,
    )
    rewards, mean, std = normalize_ensemble(members)

    def reward_fn(obs: np.ndarray, act: np.ndarray) -> np.ndarray:
        e = members_of(obs, act)
        return ((e - mean[:, None]) / std[:, None]).mean(0)

    returns = data.episode_returns(rewards)
    best = float(returns.max())
    rtg_scale = float(np.abs(returns).max()) or 1.0
    norm = ObsNormalizer(data, config.normalize_obs)
    sampler = WindowSampler(data, norm, config.context, device, rewards, rtg_scale)
    return DTR(
        sampler,
        norm,
        reward_fn,
        rtg_scale,
        best,
        data.obs_dim,
        data.act_dim,
        config,
        total_steps,
        device,
    )
