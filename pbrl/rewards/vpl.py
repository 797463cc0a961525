"""Variational Preference Learning (Poddar et al. 2024): a reward ``r(s, z)`` personalized by a
latent ``z`` of the user, inferred from a handful of that user's labels.

* Encoder q(z | C): a context set C of one annotator's labeled pairs; each pair (both
  segments' standardized features, flattened, and the label) is embedded by an MLP
  (``n_layers`` x ``hidden``), the embeddings are averaged over the set (so the posterior
  does not depend on the pairs' order, and a set of any size works), and two linear heads
  give the mean and log-variance of ``z`` (``latent_dim``).
* Decoder r(s[, a], z): an MLP (``n_layers`` x ``hidden``) on the step's features and ``z``.
* Loss per set (the negative ELBO): the Bradley–Terry cross-entropy of the set's labels under
  ``r(., z)``, z drawn from q by reparameterization, summed over the set's pairs, plus
  β KL(q(z | C) || N(0, I)), averaged over the sets of a batch. β rises from 0 to
  ``kl_weight`` over ``kl_anneal_steps`` gradient steps on a half-cosine (:func:`kl_beta`).

Each step draws ``batch_size`` sets: an annotator uniformly, then ``context_size`` of their
labels without replacement (the paper's context sets of 16). Labels need annotator ids
(``PreferenceDataset.annotator``); skips are dropped, ties (0.5) train as soft targets.
``infer(pairs)`` is the posterior mean of one user's pairs; ``posterior(pairs)`` the mean and
log-variance; the latent of each annotator seen in training is kept (``latents``), so a saved
model can serve a known user without their labels.
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
from pbrl.errors import ConfigError
from pbrl.rewards.base import NOTHING_TO_FIT, LatentReward, save_atomically, trainable_pairs


@dataclass
class VPLConfig:
    latent_dim: int = 32  # size of the user latent z (paper: 32)
    hidden: int = 256  # hidden units of the encoder's pair MLP and of the decoder
    n_layers: int = 3  # hidden layers of each (paper: 3)
    use_action: bool = False  # r(s, a, z) if true; r(s, z) as in the paper otherwise
    output: str = "linear"  # linear (the official decoder) | tanh (B-Pref's bounded rewards)
    context_size: int = 16  # labeled pairs per context set (paper: 16)
    kl_weight: float = 1.0  # β once annealed (the official code's default)
    kl_anneal_steps: int = 500  # gradient steps over which β rises from 0 (half-cosine)
    learning_rate: float = 1e-3  # official code: 1e-3
    batch_size: int = 32  # context sets per gradient step
    updates: int = 1500  # gradient steps per fit round
    weight_decay: float = 0.0


def kl_divergence(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(log_var)) || N(0, I)) per row, summed over the latent's dimensions."""
    return 0.5 * (mean.pow(2) + log_var.exp() - 1.0 - log_var).sum(-1)


def kl_beta(step: int, kl_weight: float, anneal_steps: int) -> float:
    """β at gradient step ``step``: ``kl_weight * (1 - cos(π t)) / 2`` with
    ``t = min(step / anneal_steps, 1)`` (0 at the start, ``kl_weight`` from ``anneal_steps`` on)."""
    if anneal_steps <= 0:
        return float(kl_weight)
    t = min(max(step, 0) / anneal_steps, 1.0)
    return float(kl_weight) * (1.0 - math.cos(math.pi * t)) / 2.0


def _mlp(n_in: int, hidden: int, n_layers: int, n_out: int | None) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(n_layers):
        layers += [nn.Linear(n_in if i == 0 else hidden, hidden), nn.LeakyReLU(0.2)]
    if n_out is not None:
        layers.append(nn.Linear(hidden if n_layers else n_in, n_out))
    return nn.Sequential(*layers)


def annotator_groups(dataset: PreferenceDataset) -> dict[str, np.ndarray]:
    """Rows of each annotator, in order of first appearance; one error line when any pair
    has no annotator id (VPL needs to know whose label is whose)."""
    who = np.asarray(dataset.annotator).astype(str)
    missing = int(np.sum(np.char.strip(who) == ""))
    if missing:
        raise ConfigError(
            f"reward=vpl needs an annotator id on every pair, but {missing} of {len(who)} have "
            "none: label with teacher=population (or bring labels with an annotator column)"
        )
    names = list(dict.fromkeys(who.tolist()))
    return {name: np.flatnonzero(who == name) for name in names}


class VPLReward(LatentReward, nn.Module):
    """VPL's latent-conditioned reward; ``reward(obs, act, z)`` scores steps for user ``z``."""

    in_mean: torch.Tensor  # feature standardization (buffers)
    in_std: torch.Tensor

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        config: VPLConfig | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__()
        self.config = cfg = config or VPLConfig()
        if cfg.context_size < 1 or cfg.latent_dim < 1:
            raise ConfigError("reward.context_size and reward.latent_dim must be >= 1")
        if cfg.output not in ("linear", "tanh"):
            raise ConfigError(f"reward.output={cfg.output!r}: use linear or tanh")
        self.obs_dim, self.act_dim = int(obs_dim), int(act_dim)
        self.latent_dim = int(cfg.latent_dim)
        self.context_size = int(cfg.context_size)
        self.n_features = self.obs_dim + (self.act_dim if cfg.use_action else 0)
        self.segment_length = 0  # the encoder's input size follows it: set by the first fit
        self.encoder: nn.Module | None = None
        self.mean_head: nn.Module | None = None
        self.log_var_head: nn.Module | None = None
        self.decoder = _mlp(self.n_features + self.latent_dim, cfg.hidden, cfg.n_layers, 1)
        self.register_buffer("in_mean", torch.zeros(self.n_features))
        self.register_buffer("in_std", torch.ones(self.n_features))
        self.latents: dict[str, np.ndarray] = {}  # posterior mean of each training annotator
        self.updates_done = 0  # gradient steps over all fits (β's annealing clock)
        self.device = torch.device(device)
        self.to(self.device)
        self.optimizer: torch.optim.Optimizer | None = None

    # -- networks ----------------------------------------------------------------------------
    def _build_encoder(self, segment_length: int) -> None:
        cfg = self.config
        self.segment_length = int(segment_length)
        n_in = 2 * self.segment_length * self.n_features + 1
        self.encoder = _mlp(n_in, cfg.hidden, cfg.n_layers, None).to(self.device)
        self.mean_head = nn.Linear(cfg.hidden, self.latent_dim).to(self.device)
        self.log_var_head = nn.Linear(cfg.hidden, self.latent_dim).to(self.device)
        self.optimizer = torch.optim.Adam(
            self.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay
        )

    def _features(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs.float(), act.float()], -1) if self.config.use_action else obs.float()
        return (x - self.in_mean) / self.in_std

    def _decode(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Per-step reward of standardized features ``x [..., F]`` and latents ``z [..., Z]``."""
        r = self.decoder(torch.cat([x, z], -1)).squeeze(-1)
        return torch.tanh(r) if self.config.output == "tanh" else r

    def reward(self, obs: torch.Tensor, act: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Per-step reward ``[*batch]`` of ``obs [*batch, D]``, ``act [*batch, A]`` under
        ``z`` (``[Z]``, broadcast, or ``[*batch, Z]``)."""
        x = self._features(obs.to(self.device), act.to(self.device))
        z = z.to(self.device, torch.float32).expand(*x.shape[:-1], self.latent_dim)
        return self._decode(x, z)

    def _pair_inputs(self, segments: tuple[Segments, Segments], labels: np.ndarray) -> torch.Tensor:
        """Encoder inputs ``[N, 2 T F + 1]``: both segments' standardized features (zeros on
        padded steps), flattened, and the label."""
        if segments[0].length != self.segment_length:
            raise ConfigError(
                f"reward=vpl was trained on {self.segment_length}-step segments; these pairs "
                f"have {segments[0].length}: label pairs of the same length"
            )
        parts = []
        for seg in segments:
            x = self._features(
                torch.as_tensor(seg.obs, device=self.device),
                torch.as_tensor(seg.act, device=self.device),
            )
            x = x * torch.as_tensor(seg.mask, device=self.device, dtype=torch.float32)[..., None]
            parts.append(x.reshape(len(seg), -1))
        y = torch.as_tensor(labels, device=self.device, dtype=torch.float32)[:, None]
        return torch.cat([*parts, y], -1)

    def encode(
        self, pairs: torch.Tensor, set_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance ``[B, Z]`` of sets of pair inputs ``[B, S, P]``
        (``set_mask [B, S]``: which members of a padded set are real)."""
        assert self.encoder is not None and self.mean_head is not None
        assert self.log_var_head is not None
        h = self.encoder(pairs)
        if set_mask is None:
            pooled = h.mean(-2)
        else:
            w = set_mask.float()[..., None]
            pooled = (h * w).sum(-2) / w.sum(-2).clamp_min(1.0)
        return self.mean_head(pooled), self.log_var_head(pooled)

    # -- one user's latent -------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if self.encoder is None:
            raise ConfigError("reward=vpl has not been trained: fit it on labels first")

    @torch.no_grad()
    def posterior(self, pairs: PreferenceDataset) -> tuple[np.ndarray, np.ndarray]:
        """Mean and log-variance ``[Z]`` of q(z | pairs) (skipped pairs left out)."""
        self._check_fitted()
        data = trainable_pairs(pairs)
        if data is None:
            raise ConfigError("inferring a user's latent needs at least one decided label")
        x = self._pair_inputs((data.queries.first, data.queries.second), data.labels)
        mean, log_var = self.encode(x[None])
        return mean[0].cpu().numpy(), log_var[0].cpu().numpy()

    def infer(self, pairs: PreferenceDataset) -> np.ndarray:
        """The posterior mean ``z [Z]`` of the user who labeled ``pairs``."""
        return self.posterior(pairs)[0]

    def latent_of(self, annotator: str) -> np.ndarray:
        """The latent inferred for ``annotator`` at training time (one error line if unknown)."""
        if annotator not in self.latents:
            known = ", ".join(self.latents) or "none"
            raise ConfigError(f"unknown user {annotator!r}: the reward model knows {known}")
        return self.latents[annotator]

    # -- segment scores under one latent -----------------------------------------------------
    def returns_under(self, segments: Segments, z: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Segment returns ``[K, N]`` under each of ``z [K, Z]`` (or ``[Z]``: ``K = 1``)."""
        zt = torch.as_tensor(np.asarray(z), device=self.device, dtype=torch.float32)
        zt = zt.reshape(-1, self.latent_dim)
        obs = torch.as_tensor(segments.obs, device=self.device)
        act = torch.as_tensor(segments.act, device=self.device)
        mask = torch.as_tensor(segments.mask, device=self.device, dtype=torch.float32)
        x = self._features(obs, act)  # [N, T, F]
        out = []
        for row in zt:
            r = self._decode(x, row.expand(*x.shape[:-1], self.latent_dim))
            out.append((r * mask).sum(-1))
        return torch.stack(out)

    def segment_returns(self, segments: Segments) -> torch.Tensor:
        """Returns ``[U, N]`` under the latent of each training annotator (the "members"
        of the population), so query selection and accuracy see the users' spread."""
        self._check_fitted()
        z = np.stack(list(self.latents.values())) if self.latents else np.zeros(self.latent_dim)
        return self.returns_under(segments, z)

    @torch.no_grad()
    def preference_probs_under(
        self, first: Segments, second: Segments, z: np.ndarray
    ) -> np.ndarray:
        """P(second ≻ first) ``[K, N]`` under each latent of ``z [K, Z]``."""
        self.eval()
        return (
            torch.sigmoid(self.returns_under(second, z) - self.returns_under(first, z))
            .cpu()
            .numpy()
        )

    def user_accuracy(self, dataset: PreferenceDataset, z: np.ndarray) -> float:
        """Agreement with non-tied, non-skipped labels of one user under their latent ``z``."""
        keep = np.flatnonzero(np.isin(dataset.labels, (0.0, 1.0)))
        if keep.size == 0:
            return float("nan")
        q = dataset.queries[keep]
        p = self.preference_probs_under(q.first, q.second, z)[0]
        return float(np.mean((p > 0.5) == (dataset.labels[keep] == 1.0)))

    # -- training ----------------------------------------------------------------------------
    def fit_normalization(self, segments: Segments) -> None:
        obs = torch.as_tensor(segments.obs[segments.mask], device=self.device)
        act = torch.as_tensor(segments.act[segments.mask], device=self.device)
        x = torch.cat([obs.float(), act.float()], -1) if self.config.use_action else obs.float()
        self.in_mean.copy_(x.mean(0))
        self.in_std.copy_(x.std(0).clamp_min(1e-6) if len(x) > 1 else torch.ones_like(x[0]))

    def fit(self, dataset: PreferenceDataset, rng: np.random.Generator) -> dict[str, float]:
        """``updates`` gradient steps on context sets of the annotators' labels."""
        cfg = self.config
        data = trainable_pairs(dataset)
        if data is None:
            return dict(NOTHING_TO_FIT)
        groups = annotator_groups(data)
        short = {k: len(v) for k, v in groups.items() if len(v) < cfg.context_size}
        if short:
            name, n = next(iter(short.items()))
            raise ConfigError(
                f"reward.context_size={cfg.context_size} is larger than annotator {name!r}'s "
                f"{n} labels: lower reward.context_size or label more per annotator"
            )
        q = data.queries
        if self.encoder is None:
            self.fit_normalization(Segments.concatenate([q.first, q.second]))
            self._build_encoder(q.first.length)
        assert self.optimizer is not None
        self.train()
        x = self._pair_inputs((q.first, q.second), data.labels)  # [N, P]
        steps = {
            name: torch.as_tensor(np.stack([getattr(q.first, name), getattr(q.second, name)], 1))
            for name in ("obs", "act", "mask")
        }
        feats = self._features(steps["obs"].to(self.device), steps["act"].to(self.device))
        mask = steps["mask"].to(self.device, torch.float32)  # [N, 2, T]
        y = torch.as_tensor(data.labels, device=self.device, dtype=torch.float32)
        members = list(groups.values())
        totals = {"loss": 0.0, "bce": 0.0, "kl": 0.0, "correct": 0.0, "counted": 0.0}
        last = max(1, cfg.updates // 5)  # report the last fifth of the round
        for i in range(cfg.updates):
            who = rng.integers(len(members), size=cfg.batch_size)
            idx = np.stack([rng.choice(members[u], cfg.context_size, replace=False) for u in who])
            bi = torch.as_tensor(idx, device=self.device)
            m = self._step(x[bi], feats[bi], mask[bi], y[bi])
            if i >= cfg.updates - last:
                for k in totals:
                    totals[k] += m[k]
        self.eval()
        self.latents = {name: self.infer(data[rows]) for name, rows in groups.items()}
        n = min(last, cfg.updates)
        return {
            "loss": totals["loss"] / n,
            "bce": totals["bce"] / n,
            "kl": totals["kl"] / n,
            "kl_beta": kl_beta(self.updates_done, cfg.kl_weight, cfg.kl_anneal_steps),
            "train_accuracy": totals["correct"] / max(totals["counted"], 1.0),
            "epochs": 0,
            "updates": cfg.updates,
            "annotators": len(groups),
        }

    def _step(
        self, pairs: torch.Tensor, feats: torch.Tensor, mask: torch.Tensor, y: torch.Tensor
    ) -> dict[str, float]:
        """One gradient step on sets ``pairs [B, S, P]`` with step features
        ``feats [B, S, 2, T, F]``, ``mask [B, S, 2, T]`` and labels ``y [B, S]``."""
        cfg = self.config
        assert self.optimizer is not None
        mean, log_var = self.encode(pairs)
        z = mean + torch.randn_like(mean) * torch.exp(0.5 * log_var)  # [B, Z]
        zz = z[:, None, None, None, :].expand(*feats.shape[:-1], self.latent_dim)
        r = self._decode(feats, zz)  # [B, S, 2, T]
        ret = (r * mask).sum(-1)
        logits = ret[..., 1] - ret[..., 0]
        bce = nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
        kl = kl_divergence(mean, log_var)
        beta = kl_beta(self.updates_done, cfg.kl_weight, cfg.kl_anneal_steps)
        loss = (bce.sum(-1) + beta * kl).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.updates_done += 1
        decided = (y != 0.5).float()
        correct = (((logits > 0).float() == y).float() * decided).sum().item()
        return {
            "loss": loss.item(),
            "bce": bce.mean().item(),
            "kl": kl.mean().item(),
            "correct": correct,
            "counted": decided.sum().item(),
        }

    # -- persistence -------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        save_atomically(
            {
                "kind": "vpl",
                "obs_dim": self.obs_dim,
                "act_dim": self.act_dim,
                "config": asdict(self.config),
                "segment_length": self.segment_length,
                "state": self.state_dict(),
                "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
                "latents": {k: v.tolist() for k, v in self.latents.items()},
                "updates_done": self.updates_done,
            },
            path,
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str | torch.device = "cpu") -> VPLReward:
        blob: dict[str, Any] = torch.load(path, map_location=device, weights_only=False)
        model = cls(blob["obs_dim"], blob["act_dim"], VPLConfig(**blob["config"]), device)
        if blob["segment_length"]:
            model._build_encoder(blob["segment_length"])
        model.load_state_dict(blob["state"])
        if blob["optimizer"] is not None and model.optimizer is not None:
            model.optimizer.load_state_dict(blob["optimizer"])
        model.latents = {k: np.asarray(v, np.float32) for k, v in blob["latents"].items()}
        model.updates_done = int(blob["updates_done"])
        return model
