"""RAPL's RLHF baseline: the same frozen backbone, a linear scalar head, Bradley–Terry.

Tian et al. compare RAPL with "RLHF" on the same pre-trained ResNet-18: a linear head maps a
frame's 512-d feature to a scalar reward, trained with the Bradley–Terry loss on the
preferences (here: the three pairs each ranked triplet implies), and a video's score is the
sum of its frames' rewards. It is a per-step frame reward (:class:`FrameReward`): the reward
of a step is the head's value on the frame of the state it reached, so PPO can use it step by
step as well as through the episodic recipe.

Training is RAPL's: Adam (``learning_rate``), ``epochs`` epochs, the head of the epoch with
the lowest validation loss kept (``val_fraction`` of the pairs held out), on the frames RAPL
sees (every ``frame_stride``-th, or ``n_frames`` per video). The backbone is frozen: its
features are computed once per state (:class:`pbrl.rewards.rapl.VideoEncoder`).
"""

from __future__ import annotations

import copy
import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from pbrl.data import PreferenceDataset, Segments
from pbrl.data.offline import OfflineDataset
from pbrl.envs.render import FrameCache
from pbrl.envs.spec import EnvSpec, saved_env
from pbrl.rewards.base import NOTHING_TO_FIT, FrameReward, save_atomically, trainable_pairs
from pbrl.rewards.rapl import EncoderConfig, VideoEncoder
from pbrl.rewards.resnet import FEATURE_DIM


@dataclass
class LinearRewardConfig(EncoderConfig):
    """``conf/reward/rlhf_linear.yaml``: the encoder settings of RAPL, then the head's.
    ``batch_size`` counts labeled pairs here (30: the pairs of RAPL's 10 triplets)."""

    batch_size: int = 30
    score_batch: int = 2048  # frames per forward pass when scoring


class LinearHeadReward(FrameReward, nn.Module):
    """A frozen ResNet-18 and a trainable ``512 -> 1`` linear head (RAPL's RLHF baseline)."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        config: LinearRewardConfig | None = None,
        device: str | torch.device = "cpu",
        env: EnvSpec | None = None,
        encoder: VideoEncoder | None = None,
    ) -> None:
        """``env``: the env whose states are rendered (or ``encoder``'s, when one is shared)."""
        super().__init__()
        self.config = cfg = config or LinearRewardConfig()
        self.obs_dim, self.act_dim = int(obs_dim), int(act_dim)
        self.device = torch.device(device)
        self.encoder = encoder if encoder is not None else VideoEncoder(cfg, self.device, env)
        self.env = self.encoder.env
        self.env_id, self.image_size = self.env.id, cfg.image_size
        self.head = nn.Linear(FEATURE_DIM, 1)
        self.to(self.device)
        self.optimizer = torch.optim.Adam(self.head.parameters(), lr=cfg.learning_rate)
        self.prob_batch_size = 256

    def describe(self) -> dict[str, object]:
        return {"backbone": self.encoder.info}

    @property
    def frame_cache(self) -> FrameCache:
        return self.encoder.frame_cache

    # -- rewards -------------------------------------------------------------------------------
    def frame_reward(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Reward ``[B]`` of frames ``[B, S, S, 3]`` uint8."""
        with torch.no_grad():
            feats = self.encoder.frame_features(frames)
            return self.head(feats).squeeze(-1)

    def video_rewards(self, features: torch.Tensor) -> torch.Tensor:
        """Per-frame rewards ``[N, T']`` of videos given as backbone features."""
        return self.head(features.to(self.device)).squeeze(-1)

    def segment_returns(self, segments: Segments) -> torch.Tensor:
        """Predicted returns ``[1, N]``: the rewards of the kept frames summed."""
        with torch.no_grad():
            return self.video_rewards(self.encoder.video_features(segments)).sum(-1)[None]

    def relabel(self, data: OfflineDataset, length: int = 0) -> np.ndarray:
        """Reward of every transition of an offline dataset (the frame of the state reached)."""
        return self.frame_cache.relabel(
            data, self.frame_reward, self.config.score_batch, "the linear-head reward"
        )

    # -- Bradley–Terry on pairs ------------------------------------------------------------------
    def _loss(
        self, f1: torch.Tensor, f2: torch.Tensor, y: torch.Tensor, rows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean BT cross-entropy of P(second preferred) with labels ``y`` (0, 1 or 0.5)."""
        logits = self.video_rewards(f2[rows]).sum(-1) - self.video_rewards(f1[rows]).sum(-1)
        return nn.functional.binary_cross_entropy_with_logits(logits, y[rows]), logits

    def _evaluate(
        self, f1: torch.Tensor, f2: torch.Tensor, y: torch.Tensor, rows: np.ndarray
    ) -> tuple[float, float]:
        with torch.no_grad():
            idx = torch.as_tensor(rows, device=self.device)
            loss, logits = self._loss(f1, f2, y, idx)
            target = y[idx]
            sure = target != 0.5
            acc = ((logits > 0) == (target > 0.5))[sure].float().mean().item()
        return float(loss.item()), float(acc) if sure.any() else float("nan")

    def fit(self, dataset: PreferenceDataset, rng: np.random.Generator) -> dict[str, float]:
        """``epochs`` epochs of Bradley–Terry on the labeled pairs; the best validation
        epoch's head is kept."""
        cfg = self.config
        pairs = trainable_pairs(dataset)
        if pairs is None:
            return dict(NOTHING_TO_FIT)
        enc = self.encoder
        f1 = enc.video_features(pairs.queries.first).to(self.device)
        f2 = enc.video_features(pairs.queries.second).to(self.device)
        y = torch.as_tensor(pairs.labels, dtype=torch.float32, device=self.device)
        n = len(y)
        order = rng.permutation(n)
        n_val = int(round(cfg.val_fraction * n)) if n >= 5 else 0
        val, train = order[:n_val], order[n_val:]
        best = (float("inf"), copy.deepcopy(self.head.state_dict()), 0)
        updates = 0
        self.train()
        for epoch in range(1, cfg.epochs + 1):
            perm = train[rng.permutation(len(train))]
            for start in range(0, len(perm), cfg.batch_size):
                idx = torch.as_tensor(perm[start : start + cfg.batch_size], device=self.device)
                loss, _ = self._loss(f1, f2, y, idx)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                updates += 1
            score = self._evaluate(f1, f2, y, val)[0] if n_val else -epoch
            if score < best[0]:
                best = (score, copy.deepcopy(self.head.state_dict()), epoch)
        self.head.load_state_dict(best[1])
        self.eval()
        loss_v, acc = self._evaluate(f1, f2, y, train)
        out: dict[str, float] = {
            "loss": loss_v,
            "train_accuracy": acc,
            "epochs": cfg.epochs,
            "updates": updates,
            "best_epoch": best[2],
            "pairs": n,
        }
        if n_val:
            out["val_loss"], out["val_accuracy"] = self._evaluate(f1, f2, y, val)
        return out

    # -- persistence -------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        save_atomically(
            {
                "kind": "rlhf_linear",
                "obs_dim": self.obs_dim,
                "act_dim": self.act_dim,
                "config": asdict(self.config),
                "env": self.env.view,
                "backbone": self.encoder.info,
                "head": self.head.state_dict(),
                "optimizer": self.optimizer.state_dict(),
            },
            path,
        )

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], device: str | torch.device = "cpu"
    ) -> LinearHeadReward:
        blob: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
        env, config = saved_env(blob)
        if blob["backbone"].get("path"):
            config["backbone_weights"] = blob["backbone"]["path"]
        model = cls(blob["obs_dim"], blob["act_dim"], LinearRewardConfig(**config), device, env)
        model.head.load_state_dict(blob["head"])
        model.optimizer.load_state_dict(blob["optimizer"])
        return model

    def close(self) -> None:
        self.encoder.close()
