"""Preference Transformer (Kim et al. 2023): a non-Markovian reward model with preference
attention.

A causal transformer reads a segment's ``(s_t, a_t)`` steps (one token per step) and gives
each step a hidden state ``x_t`` and a reward ``r̂_t``. The *preference attention* layer
weights the rewards by their importance: with queries and keys from ``x``,
``z_i = Σ_t softmax_t(q_i · k_t / √d) r̂_t`` and the segment's score is ``Σ_i z_i =
Σ_t w_t r̂_t`` (``w_t`` = the total attention step ``t`` receives). Preferences follow
Bradley–Terry on the scores. With ``preference_attention: false`` the score is the plain sum
``Σ_t r̂_t`` (the official code's default flag silently does this; here the attention is on
unless turned off explicitly).

Relabeling a dataset (:meth:`PreferenceTransformer.relabel`) gives each step the reward
``r̂_t`` the causal model assigns it with up to ``L`` steps of its own episode as context:
windows of ``L`` steps advance by ``relabel_stride`` and each step takes its reward from the
window where it has the longest history (stride 1 is PT's own "last" relabeling).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from pbrl.data import PreferenceDataset, Segments
from pbrl.rewards.base import (
    NOTHING_TO_FIT,
    ContextReward,
    fit_epochs,
    save_atomically,
    trainable_pairs,
)
from pbrl.rewards.nets import attention_mask, transformer

if TYPE_CHECKING:
    from pbrl.data.offline import OfflineDataset


@dataclass
class PreferenceTransformerConfig:
    embed_dim: int = 256  # PT: 256
    n_layers: int = 1  # causal transformer layers (PT: 1)
    n_heads: int = 4  # PT: 4
    dropout: float = 0.1
    preference_attention: bool = True  # weight step rewards by preference attention
    max_len: int = 1024  # longest segment (positional embeddings)
    learning_rate: float = 1e-4  # AdamW (PT: 1e-4 with warm-up)
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    batch_size: int = 64  # labeled pairs per step
    max_epochs: int = 50
    acc_threshold: float = 0.97  # stop once train accuracy exceeds this (as RewardEnsemble)
    relabel_stride: int = 0  # 0: half the segment length; 1: PT's exact "last" relabeling


class PreferenceTransformer(ContextReward, nn.Module):
    prob_batch_size = 256
    in_mean: torch.Tensor  # input standardization (buffers)
    in_std: torch.Tensor

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        config: PreferenceTransformerConfig | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__()
        self.config = cfg = config or PreferenceTransformerConfig()
        self.obs_dim, self.act_dim = int(obs_dim), int(act_dim)
        d = cfg.embed_dim
        self.embed = nn.Linear(self.obs_dim + self.act_dim, d)
        self.position = nn.Embedding(cfg.max_len, d)
        self.embed_ln = nn.LayerNorm(d)
        self.body = transformer(d, cfg.n_layers, cfg.n_heads, cfg.dropout)
        self.final_ln = nn.LayerNorm(d)
        self.reward_head = nn.Linear(d, 1)
        self.query_key = nn.Linear(d, 2 * d)  # preference attention
        self.register_buffer("in_mean", torch.zeros(self.obs_dim + self.act_dim))
        self.register_buffer("in_std", torch.ones(self.obs_dim + self.act_dim))
        self.device = torch.device(device)
        self.to(self.device)
        self.optimizer = torch.optim.AdamW(
            self.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay
        )
        self.updates = 0

    # -- the model ---------------------------------------------------------------------------
    def step_rewards(
        self,
        obs: torch.Tensor,
        act: torch.Tensor,
        valid: torch.Tensor,
        positions: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rewards ``r̂ [B, T]`` and hidden states ``[B, T, d]`` of windows ``obs [B, T, D]``.

        ``valid`` is False on padding (before or after the steps of the episode).
        """
        b, t = valid.shape
        x = (torch.cat([obs.float(), act.float()], -1) - self.in_mean) / self.in_std
        if positions is None:
            positions = torch.arange(t, device=x.device).expand(b, t)
        h = self.embed_ln(
            self.embed(x) + self.position(positions.clamp(0, self.config.max_len - 1))
        )
        h = self.body(h, mask=attention_mask(valid, True, self.config.n_heads))
        h = self.final_ln(h)
        return self.reward_head(h).squeeze(-1), h

    def score(self, obs: torch.Tensor, act: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Segment scores ``[B]``: ``Σ_t w_t r̂_t`` (or ``Σ_t r̂_t`` without preference attention)."""
        r, h = self.step_rewards(obs, act, mask)
        m = mask.float()
        if not self.config.preference_attention:
            return (r * m).sum(-1)
        q, k = self.query_key(h).chunk(2, -1)
        logits = q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])  # [B, T(query), T(key)]
        logits = logits.masked_fill(~mask[:, None, :], float("-inf"))
        z = torch.softmax(logits, -1) @ r[..., None]  # [B, T, 1]
        return (z.squeeze(-1) * m).sum(-1)

    def preference_weights(self, segments: Segments) -> np.ndarray:
        """``w_t`` per step (total attention received), ``[N, T]``; for inspection."""
        obs, act, mask = self._tensors(segments)
        with torch.no_grad():
            _, h = self.step_rewards(obs, act, mask)
            q, k = self.query_key(h).chunk(2, -1)
            logits = (q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])).masked_fill(
                ~mask[:, None, :], float("-inf")
            )
            w = (torch.softmax(logits, -1) * mask[..., None].float()).sum(1)
        return w.cpu().numpy()

    # -- preferences -------------------------------------------------------------------------
    def _tensors(self, s: Segments) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (
            torch.as_tensor(s.obs, device=self.device),
            torch.as_tensor(s.act, device=self.device),
            torch.as_tensor(s.mask, device=self.device),
        )

    def segment_returns(self, segments: Segments) -> torch.Tensor:
        """Segment scores ``[1, N]`` (one model: a single "member")."""
        return self.score(*self._tensors(segments))[None]

    def reward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """Per-step reward of steps seen without history (each a one-step window). The
        model's rewards depend on context: relabel datasets with :meth:`relabel`."""
        flat_o, flat_a = obs.reshape(-1, 1, obs.shape[-1]), act.reshape(-1, 1, act.shape[-1])
        valid = torch.ones(flat_o.shape[:2], dtype=torch.bool, device=obs.device)
        r, _ = self.step_rewards(flat_o, flat_a, valid)
        return r.reshape(obs.shape[:-1])

    @torch.no_grad()
    def predict(self, obs: np.ndarray, act: np.ndarray, batch_size: int = 65536) -> np.ndarray:
        self.eval()
        out = [
            self.reward(
                torch.as_tensor(obs[i : i + batch_size], device=self.device),
                torch.as_tensor(act[i : i + batch_size], device=self.device),
            )
            .cpu()
            .numpy()
            for i in range(0, len(obs), batch_size)
        ]
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)

    def fit(self, dataset: PreferenceDataset, rng: np.random.Generator) -> dict[str, float]:
        """One training round (:func:`~pbrl.rewards.base.fit_epochs`) on every non-skipped
        label, with PT's warm-up and cosine learning-rate schedule over the round."""
        cfg = self.config
        data = trainable_pairs(dataset)
        if data is None:
            return dict(NOTHING_TO_FIT)
        q = data.queries
        if q.first.length > cfg.max_len:
            raise ValueError(
                f"segments of {q.first.length} steps exceed the Preference "
                f"Transformer's max_len={cfg.max_len}"
            )
        both = Segments.concatenate([q.first, q.second])
        x = np.concatenate([both.obs[both.mask], both.act[both.mask]], -1)
        self.in_mean.copy_(torch.as_tensor(x.mean(0)))
        self.in_std.copy_(torch.as_tensor(x.std(0) + 1e-6))
        t1, t2 = self._tensors(q.first), self._tensors(q.second)
        y = torch.as_tensor(data.labels, dtype=torch.float32, device=self.device)
        n = len(y)
        steps = cfg.max_epochs * math.ceil(n / cfg.batch_size)
        sched = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: (
                min(1.0, (s + 1) / max(1, cfg.warmup_steps))
                * 0.5
                * (1 + math.cos(math.pi * min(1.0, s / max(1, steps))))
            ),
        )

        def step(bi: torch.Tensor) -> tuple[float, float, float]:
            logits = self.score(*(v[bi] for v in t2)) - self.score(*(v[bi] for v in t1))
            loss = nn.functional.binary_cross_entropy_with_logits(logits, y[bi])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            sched.step()
            self.updates += 1
            decided = (y[bi] != 0.5).float()
            correct = (((logits > 0).float() == y[bi]).float() * decided).sum().item()
            return loss.item(), correct, decided.sum().item()

        self.train()
        metrics = fit_epochs(
            n,
            cfg.batch_size,
            cfg.max_epochs,
            cfg.acc_threshold,
            permute=lambda: torch.as_tensor(rng.permutation(n), device=self.device),
            step=step,
        )
        self.eval()
        return metrics

    # -- relabeling --------------------------------------------------------------------------
    @torch.no_grad()
    def relabel(self, data: OfflineDataset, length: int, batch_size: int = 256) -> np.ndarray:
        """Reward of every transition of an :class:`~pbrl.data.offline.OfflineDataset`."""
        self.eval()
        stride = self.config.relabel_stride or max(1, length // 2)
        stride = min(stride, length)
        starts, ends = data.episode_starts[:-1], data.episode_starts[1:]
        windows = []
        for s, e in zip(starts, ends, strict=True):
            # window w covers [w, w + L); it labels its last `stride` steps
            windows.append(np.arange(s - (length - stride), e - (length - stride), stride))
        w0 = np.concatenate(windows)
        ep = np.repeat(np.arange(len(starts)), [len(w) for w in windows])
        idx = w0[:, None] + np.arange(length)[None]
        valid = (idx >= starts[ep][:, None]) & (idx < ends[ep][:, None])
        first_valid = np.maximum(starts[ep] - w0, 0)
        positions = np.clip(np.arange(length)[None] - first_valid[:, None], 0, None)
        fill = np.clip(idx, 0, len(data) - 1)
        out = np.zeros(len(data), dtype=np.float32)
        for i in range(0, len(w0), batch_size):
            sl = slice(i, i + batch_size)
            v = torch.as_tensor(valid[sl], device=self.device)
            r, _ = self.step_rewards(
                torch.as_tensor(data.observations[fill[sl]], device=self.device),
                torch.as_tensor(data.actions[fill[sl]], device=self.device),
                v,
                torch.as_tensor(positions[sl], device=self.device),
            )
            labeled = r.cpu().numpy()[:, length - stride :]
            tgt = idx[sl][:, length - stride :]
            ok = valid[sl][:, length - stride :]
            out[tgt[ok]] = labeled[ok]
        return out

    # -- persistence -------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        save_atomically(
            {
                "kind": "transformer",
                "obs_dim": self.obs_dim,
                "act_dim": self.act_dim,
                "config": asdict(self.config),
                "state": self.state_dict(),
            },
            path,
        )

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], device: str | torch.device = "cpu"
    ) -> PreferenceTransformer:
        blob: dict[str, Any] = torch.load(path, map_location=device, weights_only=False)
        model = cls(
            blob["obs_dim"], blob["act_dim"], PreferenceTransformerConfig(**blob["config"]), device
        )
        model.load_state_dict(blob["state"])
        model.eval()
        return model
