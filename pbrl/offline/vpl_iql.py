"""IQL conditioned on a user latent (VPL's policy): ``algo=vpl_iql`` with ``reward=vpl``.

How ``z`` flows:

1. The reward model (:class:`pbrl.rewards.vpl.VPLReward`) is fit on every annotator's labels.
2. For each annotator, ``latents_per_user`` context sets of ``context_size`` of their labels
   are drawn and encoded (posterior means): a bank of latents, a few per user, so the policy
   sees the spread a new context set gives, not one point per user.
3. Every transition is relabeled under every latent of the bank
   (:func:`pbrl.rewards.dispatch.score_steps_under`); one learned-reward normalization and
   scale over them all (IQL's, as ``algo=iql``).
4. IQL trains on ``(s ⊕ z, a, r(s, z), s' ⊕ z)``: each sampled transition is paired with a
   latent drawn uniformly from the bank, its reward the one under that latent.
5. At evaluation a user's ``z`` is inferred from ``context_size`` of that user's labels (the
   run's labels of that annotator) and appended to every observation
   (:meth:`VPLIQLTrainer.agent_for`); ``user`` (a top-level key) picks whose, and
   :func:`evaluate_users` rolls out the policy for each annotator, with a video each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch

from pbrl.data import PreferenceDataset
from pbrl.data.offline import OfflineDataset
from pbrl.errors import ConfigError
from pbrl.offline.common import Agent, Batch, LearnedReward, ObsNormalizer, PolicyAgent
from pbrl.offline.iql import IQL, IQLConfig, minmax_rewards, scale_rewards
from pbrl.rewards.base import LatentReward, trainable_pairs
from pbrl.rewards.dispatch import Steps, as_latent, has_latent, score_steps_under


@dataclass
class VPLIQLConfig(IQLConfig):
    name: str = "vpl_iql"
    gamma: float = 0.95  # 50-step goal reaching: a 20-step horizon learns in a few thousand steps
    # the learned rewards stay in [0, 1] (minmax): "returns" (x 1000 / return range) saturated
    # the advantage weights, and the policy chased the reward's slope past the goal (docs/vpl.md)
    reward_scale: str = "none"
    latents_per_user: int = 8  # latents per annotator in the policy's bank (random context sets)
    reward_kinds: ClassVar[tuple[str, ...]] = ("vpl",)


def user_labels(labels: PreferenceDataset, user: str) -> PreferenceDataset:
    """The decided labels of ``user`` (one error line naming the annotators if unknown)."""
    who = np.asarray(labels.annotator).astype(str)
    if user not in set(who.tolist()):
        known = ", ".join(dict.fromkeys(w for w in who.tolist() if w)) or "none"
        raise ConfigError(f"unknown user {user!r}: the labels' annotators are {known}")
    data = trainable_pairs(labels[np.flatnonzero(who == user)])
    if data is None:
        raise ConfigError(f"user {user!r} has no decided label to infer a latent from")
    return data


def context_set(
    labels: PreferenceDataset, user: str, size: int, rng: np.random.Generator
) -> PreferenceDataset:
    """``size`` of ``user``'s decided labels drawn without replacement (one error line when
    the user has fewer)."""
    mine = user_labels(labels, user)
    if len(mine) < size:
        raise ConfigError(
            f"user {user!r} has {len(mine)} decided labels, fewer than the context size "
            f"{size} (reward.context_size): label more or lower it"
        )
    return mine[rng.choice(len(mine), size, replace=False)]


class LatentSampler:
    """Transitions, each paired with a latent of the bank and its reward under it."""

    def __init__(
        self,
        data: OfflineDataset,
        norm: ObsNormalizer,
        latents: np.ndarray,
        rewards: np.ndarray,
        device: torch.device,
    ) -> None:
        def t(x: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.asarray(x, dtype=np.float32), device=device)

        self.obs, self.next_obs = t(norm(data.observations)), t(norm(data.next_observations))
        self.act, self.done = t(data.actions), t(data.terminals)
        self.latents, self.reward = t(latents), t(rewards)  # [K, Z], [K, N]
        self.device = device

    def sample(self, batch_size: int, gen: torch.Generator) -> Batch:
        i = torch.randint(len(self.obs), (batch_size,), generator=gen).to(self.device)
        k = torch.randint(len(self.latents), (batch_size,), generator=gen).to(self.device)
        z = self.latents[k]
        return {
            "obs": torch.cat([self.obs[i], z], -1),
            "act": self.act[i],
            "reward": self.reward[k, i],
            "next_obs": torch.cat([self.next_obs[i], z], -1),
            "done": self.done[i],
        }


class VPLIQLTrainer(IQL):
    """IQL on observations with a user latent appended; ``agent()`` acts for ``user``."""

    def __init__(
        self,
        sampler: LatentSampler,
        norm: ObsNormalizer,
        model: LatentReward,
        labels: PreferenceDataset,
        obs_dim: int,
        act_dim: int,
        cfg: VPLIQLConfig,
        total_steps: int,
        device: torch.device,
        seed: int,
    ) -> None:
        super().__init__(obs_dim + model.latent_dim, act_dim, cfg, total_steps, device)
        self.sampler, self.norm, self.model, self.labels = sampler, norm, model, labels
        self.device, self.seed = device, seed
        self.users = list(dict.fromkeys(np.asarray(labels.annotator).astype(str).tolist()))
        self.user = self.users[0]
        self._latents: dict[str, np.ndarray] = {}

    def sample(self, gen: torch.Generator) -> Batch:
        return self.sampler.sample(self.cfg.batch_size, gen)

    def select_user(self, user: str) -> None:
        """Whose latent ``agent()`` conditions on ("" keeps the first annotator)."""
        if user:
            user_labels(self.labels, user)  # one error line for an unknown user
            self.user = user

    def latent(self, user: str) -> np.ndarray:
        """``user``'s latent from ``context_size`` of their labels (drawn once per user, from
        the run's seed, so every evaluation of a run sees the same context)."""
        if user not in self._latents:
            size = self.model.context_size
            rng = np.random.default_rng([self.seed, len(self.users), self.users.index(user)])
            self._latents[user] = self.model.infer(context_set(self.labels, user, size, rng))
        return self._latents[user]

    def agent_for(self, user: str | None = None, z: np.ndarray | None = None) -> Agent:
        """The policy acting for ``user`` (or for a given latent ``z``)."""
        self.actor.eval()
        zt = torch.as_tensor(
            self.latent(user or self.user) if z is None else z, device=self.device
        ).float()

        def act(x: torch.Tensor) -> torch.Tensor:
            return self.actor.act(torch.cat([x, zt.expand(len(x), -1)], -1))

        return PolicyAgent(act, self.norm, self.device)

    def agent(self) -> Agent:
        return self.agent_for(self.user)


def latent_bank(
    model: LatentReward, labels: PreferenceDataset, per_user: int, rng: np.random.Generator
) -> tuple[np.ndarray, list[str]]:
    """``per_user`` latents of each annotator from random context sets, and whose each is."""
    size = model.context_size
    users = list(dict.fromkeys(np.asarray(labels.annotator).astype(str).tolist()))
    zs, owners = [], []
    for u in users:
        for _ in range(per_user):
            zs.append(model.infer(context_set(labels, u, size, rng)))
            owners.append(u)
    return np.stack(zs).astype(np.float32), owners


def build(
    config: VPLIQLConfig,
    data: OfflineDataset,
    labels: PreferenceDataset | None,
    reward: LearnedReward | None,
    total_steps: int,
    device: torch.device,
    seed: int,
) -> VPLIQLTrainer:
    if reward is None or labels is None or not has_latent(reward.model):
        raise ConfigError(
            f"algo {config.name} conditions IQL on a user latent: it needs reward=vpl, "
            "algo.learn_reward=true and labels with annotator ids (teacher=population)"
        )
    model = as_latent(reward.model)
    rng = np.random.default_rng([seed, 7])
    latents, _ = latent_bank(model, labels, config.latents_per_user, rng)
    rewards = score_steps_under(model, Steps(data.observations, data.actions), latents)
    if config.learned_reward_norm == "minmax":
        rewards = minmax_rewards(rewards)
    if config.reward_scale == "returns":
        returns = np.concatenate([data.episode_returns(r) for r in rewards])
        rewards = scale_rewards(rewards, returns)
    norm = ObsNormalizer(data, config.normalize_obs)
    sampler = LatentSampler(data, norm, latents, rewards, device)
    return VPLIQLTrainer(
        sampler, norm, model, labels, data.obs_dim, data.act_dim, config, total_steps, device, seed
    )


# -- evaluation per user ---------------------------------------------------------------------


@dataclass
class UserEval:
    """One user's episodes: true returns, the fraction of episodes that ended at each
    ``info["at_<name>"]`` flag the env reports (e.g. ``at_goal_a``: ``reached``), and the
    fraction in which it held at any step (maze2d-style success: ``reached_any``)."""

    returns: list[float] = field(default_factory=list)
    reached: dict[str, float] = field(default_factory=dict)
    reached_any: dict[str, float] = field(default_factory=dict)
    video: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "return_mean": float(np.mean(self.returns)) if self.returns else None,
            "reached": dict(self.reached),
            "reached_any": dict(self.reached_any),
            "video": self.video,
        }


def rollout_user(
    agent: Agent,
    env_id: str,
    env_kwargs: dict[str, Any],
    n_episodes: int,
    seed: int,
    video_path: Path | None = None,
    video_size: tuple[int, int] = (240, 240),
) -> UserEval:
    """``n_episodes`` of ``agent``; which ``at_*`` flags held at each episode's end, and which
    held at some step."""
    import pbrl.envs  # noqa: F401  (registers pbrl/ environments)

    env = gym.make(env_id, **env_kwargs)
    out = UserEval()
    ends: dict[str, list[float]] = {}
    anywhere: dict[str, list[float]] = {}
    qpos: list[np.ndarray] = []
    qvel: list[np.ndarray] = []
    mj = getattr(env.unwrapped, "data", None)
    for ep in range(n_episodes):
        obs, _ = env.reset(seed=seed + ep)
        agent.reset()
        done, ret = False, 0.0
        info: dict[str, Any] = {}
        seen: dict[str, float] = {}
        while not done:
            if ep == 0 and mj is not None:
                qpos.append(mj.qpos.copy())
                qvel.append(mj.qvel.copy())
            act = agent.act(np.asarray(obs, np.float32))
            if isinstance(env.action_space, gym.spaces.Box):
                act = np.clip(act, env.action_space.low, env.action_space.high)
            obs, r, term, trunc, info = env.step(act)
            ret, done = ret + float(r), term or trunc
            for k, v in info.items():
                if k.startswith("at_") and np.ndim(v) == 0:
                    seen[k[3:]] = max(seen.get(k[3:], 0.0), float(v))
        if ep == 0 and mj is not None:
            qpos.append(mj.qpos.copy())
            qvel.append(mj.qvel.copy())
        out.returns.append(ret)
        for k, v in info.items():
            if k.startswith("at_") and np.ndim(v) == 0:
                ends.setdefault(k[3:], []).append(float(v))
        for k, v in seen.items():
            anywhere.setdefault(k, []).append(v)
    env.close()
    out.reached = {k: float(np.mean(v)) for k, v in ends.items()}
    out.reached_any = {k: float(np.mean(v)) for k, v in anywhere.items()}
    if video_path is not None and qpos:
        from pbrl.envs.render import shared_renderer
        from pbrl.video import write_video

        rr = shared_renderer(env_id, env_kwargs, video_size[0], video_size[1])
        frames = rr.render_sequence(np.stack(qpos), np.stack(qvel))
        out.video = str(write_video(frames, video_path, fps=rr.fps or 20.0))
    return out


def evaluate_users(
    trainer: VPLIQLTrainer,
    users: list[str],
    env_id: str,
    env_kwargs: dict[str, Any],
    n_episodes: int,
    seed: int,
    video_dir: Path | None = None,
    video_size: tuple[int, int] = (240, 240),
) -> dict[str, dict[str, Any]]:
    """Each user's latent inferred from their labels, the policy rolled out for them."""
    out = {}
    for user in users:
        video = None if video_dir is None else video_dir / f"eval_{user}.mp4"
        ev = rollout_user(
            trainer.agent_for(user), env_id, env_kwargs, n_episodes, seed, video, video_size
        )
        out[user] = {**ev.to_json(), "z": trainer.latent(user).round(4).tolist()}
    return out
