"""A reward of the state and the step's reward-factor values (HERON's official reward model).

The official classic-control code of HERON (abukharin3/HERON, ``rm_mountain.py``) feeds the
reward model the observation with the step's factor values beside it (MountainCar: position,
velocity, ``done``, ``a²``) through an MLP ``in -> 256 -> 256 -> 1`` (ReLU), trained with
Bradley–Terry and Adam (lr 1e-3). :class:`FactorRewardModel` is that model: ``reward(obs,
act, factors)``, a :class:`~pbrl.rewards.base.FactorReward`. Segments score as the sum of
their valid steps, so it trains on one-step segments (HERON's transition pairs) and on longer
ones alike. Inputs are standardized with the statistics of every step labeled so far (the
factors' scales differ by orders of magnitude: MountainCar's goal is 100, its action cost
~0.1); a column that has not varied yet reads as 0.

``offset: max`` (not in the official code) subtracts the largest reward of the labeled steps
after each fit, so every step's reward is at most about 0: a Bradley–Terry reward is only
defined up to a constant, and in a task that *ends* at its goal a reward positive on every
step pays the agent to never end the episode (docs/heron.md).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from pbrl.data import PreferenceDataset, Segments
from pbrl.errors import ConfigError
from pbrl.rewards.base import (
    NOTHING_TO_FIT,
    FactorReward,
    fit_epochs,
    save_atomically,
    trainable_pairs,
)

OFFSETS = ("none", "max")


@dataclass
class FactorRewardConfig:
    hidden: int = 256  # units per hidden layer (official: 256)
    n_layers: int = 2  # hidden layers (official: 2, ReLU)
    use_obs: bool = True  # the observation beside the factors (official: yes)
    use_action: bool = False  # the action too (official: no; the action cost is a factor)
    learning_rate: float = 1e-3  # Adam (official: 1e-3)
    batch_size: int = 128  # labeled pairs per gradient step
    max_epochs: int = 1  # epochs per training round over the round's pairs
    acc_threshold: float = 1.0  # stop a round early once train accuracy exceeds this
    max_updates: int | None = None  # cap on gradient steps per round
    offset: str = "none"  # none | max: shift rewards so the largest labeled step's is 0
    normalize: bool = False  # divide by the std of the labeled steps' rewards (rm-normalize)
    normalize_to: float = 1.0  # with normalize: the labeled steps' rewards get this std
    offset_margin: float = 0.0  # offset: max puts the largest labeled reward at -margin x std

    def __post_init__(self) -> None:
        if self.offset not in OFFSETS:
            raise ConfigError(f"reward.offset={self.offset!r}: use one of {OFFSETS}")
        if self.normalize_to <= 0 or self.offset_margin < 0:
            raise ConfigError("reward.normalize_to must be > 0 and reward.offset_margin >= 0")
        if self.hidden <= 0 or self.n_layers < 0 or self.batch_size <= 0:
            raise ConfigError("reward.hidden and reward.batch_size must be > 0, n_layers >= 0")


class FactorRewardModel(FactorReward, nn.Module):
    """MLP reward of ``(obs[, act], factors)``; ``factor_names`` are the columns it reads, in
    the env's order (``Segments.factor_names``)."""

    in_mean: torch.Tensor  # input standardization (buffers)
    in_std: torch.Tensor  # inf for a column that never varied: it reads as 0
    in_count: torch.Tensor  # running sums over every labeled step so far
    in_sum: torch.Tensor
    in_sumsq: torch.Tensor
    shift: torch.Tensor  # subtracted from every reward (offset: max)
    scale: torch.Tensor  # every reward is divided by it (normalize)

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        config: FactorRewardConfig | None = None,
        device: str | torch.device = "cpu",
        factor_names: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.config = cfg = config or FactorRewardConfig()
        self.factor_names = tuple(str(f) for f in factor_names)
        if not self.factor_names:
            raise ConfigError(
                "reward.kind=factor reads the env's reward factors, and this env reports "
                "none: use an env with factors (pbrl/MountainCarContinuous-v0, MuJoCo v5)"
            )
        self.obs_dim, self.act_dim = int(obs_dim), int(act_dim)
        n_in = (
            len(self.factor_names)
            + (self.obs_dim if cfg.use_obs else 0)
            + (self.act_dim if cfg.use_action else 0)
        )
        layers: list[nn.Module] = []
        width = n_in
        for _ in range(cfg.n_layers):
            layers += [nn.Linear(width, cfg.hidden), nn.ReLU()]
            width = cfg.hidden
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)
        self.register_buffer("in_mean", torch.zeros(n_in))
        # before the first fit every input reads 0: the reward is a constant, not an arbitrary
        # function of unscaled inputs (MountainCar's goal is 100)
        self.register_buffer("in_std", torch.full((n_in,), float("inf")))
        self.register_buffer("in_count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("in_sum", torch.zeros(n_in, dtype=torch.float64))
        self.register_buffer("in_sumsq", torch.zeros(n_in, dtype=torch.float64))
        self.register_buffer("shift", torch.zeros(()))
        self.register_buffer("scale", torch.ones(()))
        self.device = torch.device(device)
        self.to(self.device)
        self.optimizer = torch.optim.Adam(self.parameters(), lr=cfg.learning_rate)

    # -- evaluation --------------------------------------------------------------------------
    def _inputs(self, obs: torch.Tensor, act: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
        parts = [obs.float()] if self.config.use_obs else []
        if self.config.use_action:
            parts.append(act.float())
        parts.append(factors.float())
        return torch.cat(parts, dim=-1)

    def _raw(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.in_mean) / self.in_std).squeeze(-1)

    def reward(self, obs: torch.Tensor, act: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
        """Per-step reward ``[*batch]`` (``factors [*batch, K]`` in ``factor_names`` order)."""
        if factors.shape[-1] != len(self.factor_names):
            raise ConfigError(
                f"the factor reward reads {len(self.factor_names)} factors "
                f"({', '.join(self.factor_names)}) but got {factors.shape[-1]}"
            )
        return (self._raw(self._inputs(obs, act, factors)) - self.shift) / self.scale

    def _segment_factors(self, segments: Segments) -> np.ndarray:
        if segments.reward_factors is None or tuple(segments.factor_names) != self.factor_names:
            raise ConfigError(
                f"the factor reward reads factors {self.factor_names}; these segments have "
                f"{tuple(segments.factor_names) or 'none'}"
            )
        return segments.reward_factors

    def segment_returns(self, segments: Segments) -> torch.Tensor:
        """Predicted returns ``[1, N]`` (masked sums over steps)."""
        dev = self.device
        r = self.reward(
            torch.as_tensor(segments.obs, device=dev),
            torch.as_tensor(segments.act, device=dev),
            torch.as_tensor(self._segment_factors(segments), device=dev),
        )
        mask = torch.as_tensor(segments.mask, device=dev, dtype=torch.float32)
        return (r * mask).sum(-1)[None]

    # -- training ----------------------------------------------------------------------------
    def fit(self, dataset: PreferenceDataset, rng: np.random.Generator) -> dict[str, float]:
        """One Bradley–Terry round over the dataset's decided pairs (ties and skips dropped:
        HERON's labels are 0 or 1)."""
        cfg = self.config
        data = trainable_pairs(dataset)
        if data is not None:
            keep = np.flatnonzero(np.isin(data.labels, (0.0, 1.0)))
            data = data[keep] if keep.size else None
        if data is None:
            return dict(NOTHING_TO_FIT)
        q, dev = data.queries, self.device
        x = torch.stack(
            [
                self._inputs(
                    torch.as_tensor(s.obs, device=dev),
                    torch.as_tensor(s.act, device=dev),
                    torch.as_tensor(self._segment_factors(s), device=dev),
                )
                for s in (q.first, q.second)
            ],
            1,
        )  # [N, 2, T, in]
        mask = torch.as_tensor(np.stack([q.first.mask, q.second.mask], 1), device=dev).float()
        valid = x[mask.bool()]
        self._standardize(valid)
        y = torch.as_tensor(data.labels, device=dev, dtype=torch.float32)
        n = len(y)
        self.train()
        metrics = fit_epochs(
            n,
            cfg.batch_size,
            cfg.max_epochs,
            cfg.acc_threshold,
            permute=lambda: rng.permutation(n),
            step=lambda rows: self._step(x, mask, y, torch.as_tensor(rows, device=dev)),
            max_updates=cfg.max_updates,
        )
        self.eval()
        with torch.no_grad():
            raw = self._raw(valid)
            if cfg.offset == "max":
                spread = raw.std() if len(raw) > 1 else torch.zeros(())
                self.shift.copy_(raw.max() + cfg.offset_margin * spread)
            else:
                self.shift.copy_(raw.mean() if cfg.normalize else torch.zeros(()))
            if cfg.normalize and len(raw) > 1:
                self.scale.copy_(raw.std().clamp_min(1e-6) / cfg.normalize_to)
        return metrics

    def _standardize(self, valid: torch.Tensor) -> None:
        """Input statistics over every labeled step so far (running sums), not this round's
        alone: a column that has never varied (MountainCar's goal before the flag is first
        reached) reads as 0, so an unseen value cannot produce an arbitrary reward; once it
        has varied its scale moves slowly from round to round."""
        v = valid.double()
        self.in_count += len(v)
        self.in_sum += v.sum(0)
        self.in_sumsq += (v * v).sum(0)
        mean = self.in_sum / self.in_count
        var = (self.in_sumsq / self.in_count - mean * mean).clamp_min(0.0)
        std = var.sqrt()
        flat = std <= 1e-6 * mean.abs().clamp_min(1.0)
        self.in_mean.copy_(mean.float())
        self.in_std.copy_(torch.where(flat, torch.full_like(std, float("inf")), std).float())

    def _step(
        self, x: torch.Tensor, mask: torch.Tensor, y: torch.Tensor, rows: torch.Tensor
    ) -> tuple[float, float, float]:
        ret = (self._raw(x[rows]) * mask[rows]).sum(-1)  # [B, 2]
        logits = ret[:, 1] - ret[:, 0]
        loss = nn.functional.binary_cross_entropy_with_logits(logits, y[rows])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        correct = ((logits > 0).float() == y[rows]).float().sum().item()
        return loss.item(), correct, float(len(rows))

    # -- persistence -------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        return {
            "factor_names": list(self.factor_names),
            "shift": float(self.shift),
            "scale": float(self.scale),
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        save_atomically(
            {
                "kind": "factor",
                "obs_dim": self.obs_dim,
                "act_dim": self.act_dim,
                "factor_names": list(self.factor_names),
                "config": asdict(self.config),
                "state": self.state_dict(),
                "optimizer": self.optimizer.state_dict(),
            },
            path,
        )

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], device: str | torch.device = "cpu"
    ) -> FactorRewardModel:
        blob: dict[str, Any] = torch.load(path, map_location=device, weights_only=False)
        model = cls(
            blob["obs_dim"],
            blob["act_dim"],
            FactorRewardConfig(**blob["config"]),
            device,
            blob["factor_names"],
        )
        model.load_state_dict(blob["state"])
        model.optimizer.load_state_dict(blob["optimizer"])
        return model
