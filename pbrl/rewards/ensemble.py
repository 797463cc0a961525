"""An ensemble of MLP reward models trained with the Bradley–Terry model on partial return.

P(second ≻ first) = sigmoid(Σ_t r̂(second_t) − Σ_t r̂(first_t)), sums over valid steps only;
cross-entropy with soft targets (0.5 for ties), skips ignored. Members are evaluated in one
batched pass (weights stacked as [E, in, out]), each trained on its own shuffling of the
labels as in B-Pref. Inputs are standardized with statistics of the labeled segments.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from pbrl.data import PreferenceDataset, Segments
from pbrl.rewards.base import (
    NOTHING_TO_FIT,
    StateReward,
    fit_epochs,
    save_atomically,
    trainable_pairs,
)

LEAKY_SLOPE = np.float32(0.01)  # torch's default
SMALL_BATCH = 64  # predict() runs batches up to this size in numpy (on the CPU)


class EnsembleLinear(nn.Module):
    """``E`` independent linear layers applied to an ``[E, B, in]`` batch."""

    def __init__(self, members: int, n_in: int, n_out: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(n_in)
        self.weight = nn.Parameter(torch.empty(members, n_in, n_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(members, 1, n_out).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


@dataclass
class RewardModelConfig:
    n_members: int = 3  # ensemble size (B-Pref: 3)
    hidden: int = 256  # hidden units per layer
    n_layers: int = 3  # hidden layers
    use_action: bool = True  # r(s, a) if true, r(s) otherwise
    output: str = "tanh"  # "tanh" (B-Pref, rewards in [-1, 1]) or "linear"
    learning_rate: float = 3e-4
    batch_size: int = 128  # labeled pairs per gradient step
    max_epochs: int = 50  # cap on epochs per training round
    acc_threshold: float = 0.97  # stop a round once train accuracy exceeds this
    max_updates: int | None = None  # cap on gradient steps per round (None: B-Pref, no cap)
    weight_decay: float = 0.0
    # standardize the per-step reward handed to RL (reward / predict; not the Bradley-Terry
    # fit): after each round, subtract the mean and divide by the std of the labeled steps'
    # rewards, times normalize_to. A round's fit sets the raw scale (about 0.1 after the first
    # 100 labels on HalfCheetah, 1.4 after 1000, the true reward's ~0.75): SAC's entropy
    # bonus then outweighs it early (docs/performance.md). Off: B-Pref's unscaled reward.
    normalize: bool = False
    normalize_to: float = 1.0

    def __post_init__(self) -> None:
        if self.normalize_to <= 0:
            raise ValueError(f"reward.normalize_to={self.normalize_to}: use a value > 0")


class RewardEnsemble(StateReward, nn.Module):
    """Reward ensemble; ``reward(obs, act)`` is the member mean used by the policy."""

    in_mean: torch.Tensor  # input standardization (buffers)
    in_std: torch.Tensor
    shift: torch.Tensor  # reward() = (member mean - shift) / scale (normalize; else 0 and 1)
    scale: torch.Tensor

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        config: RewardModelConfig | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__()
        self.config = config or RewardModelConfig()
        cfg = self.config
        if cfg.output not in ("tanh", "linear"):
            raise ValueError(f"reward.output={cfg.output!r}: use 'tanh' or 'linear'")
        self.obs_dim, self.act_dim = int(obs_dim), int(act_dim)
        n_in = self.obs_dim + (self.act_dim if cfg.use_action else 0)
        layers: list[nn.Module] = []
        for i in range(cfg.n_layers):
            layers += [
                EnsembleLinear(cfg.n_members, n_in if i == 0 else cfg.hidden, cfg.hidden),
                nn.LeakyReLU(float(LEAKY_SLOPE)),
            ]
        layers.append(EnsembleLinear(cfg.n_members, cfg.hidden if cfg.n_layers else n_in, 1))
        self.net = nn.Sequential(*layers)
        self._views: tuple | None = None  # numpy views for _predict_numpy, made on first use
        self.register_buffer("in_mean", torch.zeros(n_in))
        self.register_buffer("in_std", torch.ones(n_in))
        self.register_buffer("shift", torch.zeros(()))
        self.register_buffer("scale", torch.ones(()))
        self.device = torch.device(device)
        self.to(self.device)
        self.optimizer = torch.optim.Adam(
            self.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay
        )

    # -- evaluation --------------------------------------------------------------------------
    def _inputs(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        # Observations are flat vectors [..., D]; image observations need a CNN model.
        return torch.cat([obs, act], dim=-1) if self.config.use_action else obs

    def members(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """Per-member rewards ``[E, *batch]`` for inputs ``obs [*batch, D]``, ``act [*batch, A]``."""
        x = self._inputs(obs.float(), act.float())
        batch_shape = x.shape[:-1]
        x = (x.reshape(-1, x.shape[-1]) - self.in_mean) / self.in_std
        x = x.unsqueeze(0).expand(self.config.n_members, -1, -1)
        r = self.net(x).squeeze(-1)
        if self.config.output == "tanh":
            r = torch.tanh(r)
        return r.reshape(self.config.n_members, *batch_shape)

    def reward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """Ensemble-mean reward (standardized with ``normalize``), on the model's device (no
        numpy round trip). ``members`` and ``segment_returns`` stay raw: the fitted model."""
        r = self.members(obs, act).mean(0)
        return (r - self.shift) / self.scale if self.config.normalize else r

    def predict(self, obs: np.ndarray, act: np.ndarray, batch_size: int = 65536) -> np.ndarray:
        """Numpy convenience: mean reward for ``obs [B, D]``, ``act [B, A]`` in chunks. A few
        rows on the CPU (an agent's step) go through numpy: torch's per-operation overhead
        is most of a one-row call (~100 us against ~20)."""
        if len(obs) <= SMALL_BATCH and self.device.type == "cpu":
            return self._predict_numpy(np.asarray(obs), np.asarray(act))
        with torch.no_grad():
            out = []
            for i in range(0, len(obs), batch_size):
                o = torch.as_tensor(obs[i : i + batch_size], device=self.device)
                a = torch.as_tensor(act[i : i + batch_size], device=self.device)
                out.append(self.reward(o, a).cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)

    def _predict_numpy(self, obs: np.ndarray, act: np.ndarray) -> np.ndarray:
        """:meth:`reward` in numpy, member by member, on views of the parameters and buffers
        (the optimizer and ``load_state_dict`` write them in place, so the views stay current;
        ``_apply``, behind ``.to()``, drops them)."""
        if self._views is None:
            linears = [m for m in self.net if isinstance(m, EnsembleLinear)]
            self._views = (
                [
                    [(m.weight.detach()[e].numpy(), m.bias.detach()[e, 0].numpy()) for m in linears]
                    for e in range(self.config.n_members)
                ],
                *(b.numpy() for b in (self.in_mean, self.in_std, self.shift, self.scale)),
            )
        members, mean, std, shift, scale = self._views
        cfg = self.config
        x = np.concatenate([obs, act], -1) if cfg.use_action else obs
        x = (x.astype(np.float32) - mean) / std
        r = np.zeros(len(x), np.float32)
        for layers in members:
            h = x
            for i, (w, b) in enumerate(layers):
                h = h @ w + b
                if i < len(layers) - 1:
                    h = np.maximum(h, LEAKY_SLOPE * h)  # LeakyReLU (slope < 1)
            r += np.tanh(h[:, 0]) if cfg.output == "tanh" else h[:, 0]
        r /= len(members)
        return (r - shift) / scale if cfg.normalize else r

    def _apply(self, *args: Any, **kwargs: Any) -> RewardEnsemble:
        self._views = None  # .to() / .float() may replace the tensors the views read
        return super()._apply(*args, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_views": None}  # a copy's views would read the original

    def segment_returns(self, segments: Segments) -> torch.Tensor:
        """Predicted returns ``[E, N]`` (masked sums)."""
        obs = torch.as_tensor(segments.obs, device=self.device)
        act = torch.as_tensor(segments.act, device=self.device)
        mask = torch.as_tensor(segments.mask, device=self.device, dtype=torch.float32)
        return (self.members(obs, act) * mask).sum(-1)

    # -- training ----------------------------------------------------------------------------
    def fit_normalization(self, segments: Segments) -> None:
        obs = torch.as_tensor(segments.obs[segments.mask], device=self.device)
        act = torch.as_tensor(segments.act[segments.mask], device=self.device)
        x = self._inputs(obs.float(), act.float())
        self.in_mean.copy_(x.mean(0))
        self.in_std.copy_(x.std(0).clamp_min(1e-6) if len(x) > 1 else torch.ones_like(x[0]))

    def fit(self, dataset: PreferenceDataset, rng: np.random.Generator) -> dict[str, float]:
        """One training round (:func:`~pbrl.rewards.base.fit_epochs`); each member trains on
        its own shuffling of the labels."""
        cfg = self.config
        data = trainable_pairs(dataset)
        if data is None:
            return dict(NOTHING_TO_FIT)
        q = data.queries
        self.fit_normalization(Segments.concatenate([q.first, q.second]))
        tensors = {
            name: torch.as_tensor(
                np.stack([getattr(q.first, name), getattr(q.second, name)], 1), device=self.device
            )
            for name in ("obs", "act", "mask")
        }  # each [N, 2, T, ...]
        y = torch.as_tensor(data.labels, device=self.device, dtype=torch.float32)
        n, e = len(y), cfg.n_members
        metrics = fit_epochs(
            n,
            cfg.batch_size,
            cfg.max_epochs,
            cfg.acc_threshold,
            permute=lambda: np.stack([rng.permutation(n) for _ in range(e)]),  # [E, N]
            step=lambda rows: self._step(tensors, y, torch.as_tensor(rows, device=self.device)),
            max_updates=cfg.max_updates,
        )
        if cfg.normalize:
            self._fit_output_scale(tensors)
        return metrics

    @torch.no_grad()
    def _fit_output_scale(self, t: dict[str, torch.Tensor]) -> None:
        """``shift``/``scale`` from the ensemble-mean rewards of every labeled step."""
        valid = t["mask"].bool()
        r = self.members(t["obs"][valid], t["act"][valid]).mean(0)
        self.shift.copy_(r.mean())
        if len(r) > 1:
            self.scale.copy_(r.std().clamp_min(1e-6) / self.config.normalize_to)

    def _step(
        self, t: dict[str, torch.Tensor], y: torch.Tensor, bi: torch.Tensor
    ) -> tuple[float, float, float]:
        e, b = bi.shape
        obs, act = t["obs"][bi], t["act"][bi]  # [E, B, 2, T, D]
        mask = t["mask"][bi].float()  # [E, B, 2, T]
        x = self._inputs(obs.float(), act.float())
        x = (x - self.in_mean) / self.in_std
        r = self.net(x.reshape(e, -1, x.shape[-1])).reshape(mask.shape)
        if self.config.output == "tanh":
            r = torch.tanh(r)
        ret = (r * mask).sum(-1)  # [E, B, 2]
        logits = ret[..., 1] - ret[..., 0]
        target = y[bi]
        loss = nn.functional.binary_cross_entropy_with_logits(logits, target)
        self.optimizer.zero_grad(set_to_none=True)
        (loss * e).backward()  # sum over members: each member's gradient is its own mean loss
        self.optimizer.step()
        decided = (target != 0.5).float()
        correct = (((logits > 0).float() == target).float() * decided).sum().item()
        return loss.item(), correct, decided.sum().item()

    # -- persistence -------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        save_atomically(
            {
                "kind": "ensemble",
                "obs_dim": self.obs_dim,
                "act_dim": self.act_dim,
                "config": asdict(self.config),
                "state": self.state_dict(),
                "optimizer": self.optimizer.state_dict(),
            },
            path,
        )

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], device: str | torch.device = "cpu"
    ) -> RewardEnsemble:
        blob: dict[str, Any] = torch.load(path, map_location=device, weights_only=False)
        model = cls(blob["obs_dim"], blob["act_dim"], RewardModelConfig(**blob["config"]), device)
        state = blob["state"]
        for name in ("shift", "scale"):  # saved before normalize existed: raw rewards
            state.setdefault(name, getattr(model, name))
        model.load_state_dict(state)
        model.optimizer.load_state_dict(blob["optimizer"])
        return model
