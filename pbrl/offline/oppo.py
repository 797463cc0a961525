"""OPPO (Kang et al. 2023, "Beyond Reward: Offline Preference-guided Policy Optimization"):
no reward model; preferences shape a space of trajectory embeddings instead.

* A hindsight encoder ``I(τ) -> z`` (a small transformer over a segment's ``(s, a)`` steps,
  mean-pooled) summarizes what a segment did.
* A contextual policy ``π(a | s, z)`` (a decision transformer conditioned on ``z``) learns to
  reproduce a segment's actions from its own embedding: L_rec = MSE(π(s, I(τ)), a).
* A learned optimal context ``z*`` is pulled towards preferred segments' embeddings and away
  from rejected ones: L_pref = max(‖z* - I(τ+)‖ - ‖z* - I(τ-)‖ + margin, 0); and
  L_norm = (‖I(τ)‖ - 1)² keeps the embeddings on a common scale.

Each step: (A) encoder + policy on L_rec + 0.1 L_pref + 0.1 L_norm (z* fixed), (B) z* alone
on L_pref (embeddings fixed). At test time the policy acts with ``z*``. Paper: z dim 8,
encoder 3 layers x 128, policy context 20, AdamW 1e-4 (z*: 1e-3), batch 64, 100k steps.
Labels: a fixed budget of scripted queries (the official code asks an unlimited oracle for
every batch; the fixed budget is the honest setting). Ties and skips are not used (a
triplet needs a winner).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pbrl.data import PreferenceDataset, Segments
from pbrl.data.offline import OfflineDataset
from pbrl.errors import ConfigError
from pbrl.offline.common import (
    Agent,
    Batch,
    LearnedReward,
    ObsNormalizer,
    OfflineAlgoConfig,
    OfflineTrainer,
    require_labels,
)
from pbrl.offline.nets import DecisionTransformer, init_weights
from pbrl.rewards.nets import attention_mask, transformer


@dataclass
class OPPOConfig(OfflineAlgoConfig):
    name: str = "oppo"
    preference: bool = True
    z_dim: int = 8  # preference embedding size
    encoder_embed: int = 128
    encoder_layers: int = 3
    encoder_heads: int = 4
    policy_embed: int = 128
    policy_layers: int = 3
    policy_heads: int = 1
    context: int = 20  # policy context (steps)
    dropout: float = 0.1
    margin: float = 1.0  # triplet margin
    pref_coeff: float = 0.1  # weight of L_pref in step A
    norm_coeff: float = 0.1  # weight of L_norm in step A
    batch_size: int = 64  # labeled pairs per step
    dataset_segments: int = 64  # unlabeled dataset segments per step for L_rec (0: labeled only)
    learning_rate: float = 1e-4  # AdamW, encoder and policy
    z_learning_rate: float = 1e-3  # z*
    weight_decay: float = 1e-4
    grad_clip: float = 0.25
    max_ep_len: int = 1000
    normalize_obs: bool = True


# -- losses ------------------------------------------------------------------------------


def triplet_loss(
    anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float
) -> torch.Tensor:
    """mean(max(‖a - p‖ - ‖a - n‖ + margin, 0)) (Euclidean distances)."""
    d_pos = (anchor - positive).norm(dim=-1)
    d_neg = (anchor - negative).norm(dim=-1)
    return F.relu(d_pos - d_neg + margin).mean()


def norm_loss(z: torch.Tensor) -> torch.Tensor:
    """mean((‖z‖ - 1)²)."""
    return (z.norm(dim=-1) - 1.0).pow(2).mean()


# -- networks ----------------------------------------------------------------------------


class HindsightEncoder(nn.Module):
    """``(s, a)`` steps of a segment -> embedding ``z`` (mean over valid steps)."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        z_dim: int,
        embed: int,
        n_layers: int,
        n_heads: int,
        max_len: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.embed = nn.Linear(obs_dim + act_dim, embed)
        self.position = nn.Embedding(max_len, embed)
        self.body = transformer(embed, n_layers, n_heads, dropout)
        self.out = nn.Sequential(nn.LayerNorm(embed), nn.Linear(embed, z_dim))

    def forward(self, obs: torch.Tensor, act: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        t = obs.shape[1]
        pos = self.position(
            torch.arange(t, device=obs.device).clamp(max=self.position.num_embeddings - 1)
        )
        h = self.body(
            self.embed(torch.cat([obs, act], -1)) + pos,
            mask=attention_mask(mask, False, self.n_heads),
        )
        m = mask.float()[..., None]
        return self.out((h * m).sum(1) / m.sum(1).clamp_min(1.0))


# -- the algorithm -----------------------------------------------------------------------


class SegmentSource:
    """Tensors of labeled pairs (winner, loser) and of random dataset segments."""

    def __init__(
        self,
        prefs: PreferenceDataset,
        data: OfflineDataset,
        norm: ObsNormalizer,
        device: torch.device,
    ) -> None:
        decided = np.flatnonzero(np.isin(prefs.labels, (0.0, 1.0)))
        if decided.size == 0:
            raise ConfigError(
                "OPPO needs labels with a winner (0 or 1), but all are ties or skips: "
                "lower dataset.tie_threshold or bring labels that pick a segment"
            )
        q = prefs.queries[decided]
        n = len(decided)
        both = Segments.concatenate([q.first, q.second])
        second_wins = prefs.labels[decided] == 1.0
        winner = np.where(second_wins, n + np.arange(n), np.arange(n))
        loser = np.where(second_wins, np.arange(n), n + np.arange(n))

        def pack(seg: Segments) -> dict[str, torch.Tensor]:
            assert seg.start is not None
            return {
                "obs": torch.as_tensor(norm(seg.obs), device=device),
                "act": torch.as_tensor(seg.act, dtype=torch.float32, device=device),
                "mask": torch.as_tensor(seg.mask, device=device),
                "start": torch.as_tensor(seg.start, device=device),
            }

        self.win, self.lose = pack(both[winner]), pack(both[loser])
        self.length = q.first.length
        self.data, self.norm, self.device = data, norm, device
        self.starts = data.window_starts(self.length)
        self.obs = torch.as_tensor(norm(data.observations), device=device)
        self.act = torch.as_tensor(data.actions, device=device)
        self.ep_end = torch.as_tensor(data.episode_starts[1:][data.episode_of], device=device)
        self.step = torch.as_tensor(data.step_in_episode, device=device)

    def pairs(self, n: int, gen: torch.Generator) -> tuple[dict, dict]:
        i = torch.randint(len(self.win["obs"]), (n,), generator=gen).to(self.device)
        return {k: v[i] for k, v in self.win.items()}, {k: v[i] for k, v in self.lose.items()}

    def dataset(self, n: int, gen: torch.Generator) -> dict:
        s = torch.as_tensor(
            self.starts[torch.randint(len(self.starts), (n,), generator=gen).numpy()],
            device=self.device,
        )
        idx = s[:, None] + torch.arange(self.length, device=self.device)
        mask = idx < self.ep_end[s][:, None]
        idx = torch.minimum(idx, self.ep_end[s][:, None] - 1)
        return {"obs": self.obs[idx], "act": self.act[idx], "mask": mask, "start": self.step[s]}


def policy_window(
    seg: dict, z: torch.Tensor, context: int, gen: torch.Generator
) -> tuple[torch.Tensor, ...]:
    """A random ``context``-step window of each segment, conditioned on its embedding."""
    b, length = seg["mask"].shape
    k = min(context, length)
    off = torch.randint(length - k + 1, (b,), generator=gen).to(z.device)
    idx = off[:, None] + torch.arange(k, device=z.device)
    rows = torch.arange(b, device=z.device)[:, None]
    obs, act, mask = seg["obs"][rows, idx], seg["act"][rows, idx], seg["mask"][rows, idx]
    timesteps = seg["start"][:, None] + idx
    cond = z[:, None, :].expand(b, k, z.shape[-1])
    return cond, obs, act, timesteps, mask


class OPPO(OfflineTrainer):
    def __init__(
        self,
        source: SegmentSource,
        norm: ObsNormalizer,
        obs_dim: int,
        act_dim: int,
        cfg: OPPOConfig,
        device: torch.device,
    ) -> None:
        self.cfg, self.source, self.norm, self.device, self.step = cfg, source, norm, device, 0
        self.encoder = HindsightEncoder(
            obs_dim,
            act_dim,
            cfg.z_dim,
            cfg.encoder_embed,
            cfg.encoder_layers,
            cfg.encoder_heads,
            max(source.length, 1),
            cfg.dropout,
        ).to(device)
        self.policy = DecisionTransformer(
            obs_dim,
            act_dim,
            cfg.z_dim,
            cfg.policy_embed,
            cfg.policy_layers,
            cfg.policy_heads,
            cfg.max_ep_len,
            cfg.dropout,
        ).to(device)
        init_weights(self.encoder)
        init_weights(self.policy)
        self.z_star = (
            torch.randn(cfg.z_dim, device=device).div_(cfg.z_dim**0.5).requires_grad_(True)
        )
        params = list(self.encoder.parameters()) + list(self.policy.parameters())
        self.opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        self.z_opt = torch.optim.AdamW([self.z_star], lr=cfg.z_learning_rate, weight_decay=0.0)
        self.gen = torch.Generator().manual_seed(0)

    def sample(self, gen: torch.Generator) -> Batch:
        win, lose = self.source.pairs(self.cfg.batch_size, gen)
        batch = {f"win_{k}": v for k, v in win.items()} | {f"lose_{k}": v for k, v in lose.items()}
        if self.cfg.dataset_segments > 0:
            extra = self.source.dataset(self.cfg.dataset_segments, gen)
            batch |= {f"data_{k}": v for k, v in extra.items()}
        return batch

    def train(self, batch: Batch) -> dict[str, float]:
        cfg = self.cfg
        groups = ["win", "lose"] + (["data"] if "data_obs" in batch else [])
        segs = {g: {k: batch[f"{g}_{k}"] for k in ("obs", "act", "mask", "start")} for g in groups}
        self.encoder.train()
        self.policy.train()
        # (A) encoder + policy
        z = {g: self.encoder(s["obs"], s["act"], s["mask"]) for g, s in segs.items()}
        rec = []
        for g, s in segs.items():
            cond, obs, act, timesteps, mask = policy_window(s, z[g], cfg.context, self.gen)
            pred = self.policy(cond, obs, act, timesteps, mask)
            m = mask.float()
            rec.append(((pred - act).pow(2).sum(-1) * m).sum() / m.sum().clamp_min(1.0))
        rec_loss = torch.stack(rec).mean()
        pref = triplet_loss(
            self.z_star.detach().expand_as(z["win"]), z["win"], z["lose"], cfg.margin
        )
        norm = norm_loss(torch.cat(list(z.values())))
        loss = rec_loss + cfg.pref_coeff * pref + cfg.norm_coeff * norm
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(
                list(self.encoder.parameters()) + list(self.policy.parameters()), cfg.grad_clip
            )
        self.opt.step()
        # (B) z* alone
        z_loss = triplet_loss(
            self.z_star.expand_as(z["win"]), z["win"].detach(), z["lose"].detach(), cfg.margin
        )
        self.z_opt.zero_grad(set_to_none=True)
        z_loss.backward()
        self.z_opt.step()
        self.step += 1
        with torch.no_grad():
            d_win = (self.z_star - z["win"]).norm(dim=-1)
            d_lose = (self.z_star - z["lose"]).norm(dim=-1)
        return {
            "rec_loss": rec_loss.item(),
            "pref_loss": pref.item(),
            "norm_loss": norm.item(),
            "z_star_loss": z_loss.item(),
            "z_star_norm": self.z_star.norm().item(),
            "z_star_closer_to_winner": (d_win < d_lose).float().mean().item(),
        }

    def agent(self) -> Agent:
        self.policy.eval()
        return ContextAgent(
            self.policy,
            self.z_star.detach(),
            self.norm,
            self.cfg.context,
            self.cfg.max_ep_len,
            self.device,
        )


class ContextAgent:
    """Acts with a decision transformer conditioned on a fixed context ``z`` (OPPO's z*)."""

    def __init__(
        self,
        policy: DecisionTransformer,
        z: torch.Tensor,
        norm: ObsNormalizer,
        context: int,
        max_ep_len: int,
        device: torch.device,
    ) -> None:
        self.policy, self.z, self.norm, self.context, self.device = policy, z, norm, context, device
        self.max_ep_len = max_ep_len
        self.reset()

    def reset(self) -> None:
        self.obs: deque[np.ndarray] = deque(maxlen=self.context)
        self.acts: deque[np.ndarray] = deque(maxlen=self.context)
        self.t = 0

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        self.obs.append(self.norm(obs))
        self.acts.append(np.zeros(self.policy.embed_act.in_features, np.float32))
        n, k = len(self.obs), self.context
        obs_w = np.zeros((k, len(self.obs[0])), np.float32)
        act_w = np.zeros((k, self.policy.embed_act.in_features), np.float32)
        obs_w[k - n :], act_w[k - n :] = np.stack(self.obs), np.stack(self.acts)
        mask = np.arange(k) >= k - n
        steps = np.clip(self.t - (k - 1) + np.arange(k), 0, None)
        t = lambda x: torch.as_tensor(x, device=self.device)[None]  # noqa: E731
        cond = self.z[None, None, :].expand(1, k, self.z.shape[-1])
        pred = self.policy(cond, t(obs_w), t(act_w), t(steps), t(mask))[0, -1].cpu().numpy()
        self.acts[-1] = pred
        self.t += 1
        return pred


def build(
    config: OPPOConfig,
    data: OfflineDataset,
    labels: PreferenceDataset | None,
    reward: LearnedReward | None,
    total_steps: int,
    device: torch.device,
    seed: int,
) -> OPPO:
    prefs = require_labels(labels, config.name)
    norm = ObsNormalizer(data, config.normalize_obs)
    source = SegmentSource(prefs, data, norm, device)
    trainer = OPPO(source, norm, data.obs_dim, data.act_dim, config, device)
    trainer.gen.manual_seed(int(seed) + 1)
    return trainer
