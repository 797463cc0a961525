"""Contrastive Preference Learning (Hejna et al. 2024): a policy straight from preferences,
with no reward model and no RL.

Under the regret preference model with maximum-entropy optimal advantages A* = α log π*,
a segment's score is S(σ) = α Σ_t log π(a_t | s_t), and the policy is fit by a contrastive
(Bradley–Terry) loss on the scores. The *conservative* variant weights the rejected
segment's score by λ ∈ (0, 1]:

    L = y softplus(-(S_2 - λ S_1)) + (1 - y) softplus(-(S_1 - λ S_2))

(y = 1: the second segment is preferred; ties count half each way). A behavior-cloning term
on all dataset transitions (``bc_coeff``) and BC warm-up steps (``bc_steps``) keep the
policy on the data, as in the paper's code. Paper (Meta-World): α 0.1, λ 0.5, lr 1e-4,
96 comparisons per batch, MLP 512 x 512 with dropout 0.25.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pbrl.data import PreferenceDataset
from pbrl.data.offline import OfflineDataset
from pbrl.offline.common import (
    Agent,
    Batch,
    LearnedReward,
    ObsNormalizer,
    OfflineAlgoConfig,
    OfflineTrainer,
    PolicyAgent,
    TransitionSampler,
    require_labels,
)
from pbrl.offline.nets import GaussianPolicy


@dataclass
class CPLConfig(OfflineAlgoConfig):
    name: str = "cpl"
    preference: bool = True
    alpha: float = 0.1  # temperature: A* = alpha log pi
    conservative: float = 0.5  # λ, the weight of the rejected segment's score
    bc_coeff: float = 0.0  # weight of -log pi on dataset transitions
    bc_steps: int = 0  # behavior-cloning warm-up steps before the preference loss
    batch_size: int = 96  # labeled comparisons per step
    bc_batch_size: int = 256  # dataset transitions per step for the BC term
    learning_rate: float = 1e-4
    hidden: int = 512
    n_layers: int = 2
    dropout: float = 0.25
    normalize_obs: bool = True


# -- losses ------------------------------------------------------------------------------


def segment_scores(log_prob: torch.Tensor, mask: torch.Tensor, alpha: float) -> torch.Tensor:
    """S(σ) = α Σ_t log π(a_t|s_t) over valid steps: ``[B, T] -> [B]``."""
    return alpha * (log_prob * mask).sum(-1)


def cpl_loss(
    score1: torch.Tensor, score2: torch.Tensor, labels: torch.Tensor, conservative: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """CPL's conservative contrastive loss and its accuracy on decided labels."""
    logit21 = score2 - conservative * score1  # for "second preferred"
    logit12 = score1 - conservative * score2
    loss = labels * F.softplus(-logit21) + (1 - labels) * F.softplus(-logit12)
    decided = labels != 0.5
    correct = ((score2 > score1) == (labels > 0.5)).float()
    acc = correct[decided].mean() if decided.any() else torch.tensor(float("nan"))
    return loss.mean(), acc


class CPL(OfflineTrainer):
    def __init__(
        self,
        prefs: PreferenceDataset,
        sampler: TransitionSampler,
        norm: ObsNormalizer,
        obs_dim: int,
        act_dim: int,
        cfg: CPLConfig,
        device: torch.device,
    ) -> None:
        self.cfg, self.sampler, self.norm, self.device, self.step = cfg, sampler, norm, device, 0
        keep = prefs.trainable
        q = prefs.queries[keep]

        def t(x: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.asarray(x, dtype=np.float32), device=device)

        # labeled segment pairs, [N, 2, T, ...]
        self.seg_obs = t(np.stack([norm(q.first.obs), norm(q.second.obs)], 1))
        self.seg_act = t(np.stack([q.first.act, q.second.act], 1))
        self.seg_mask = t(np.stack([q.first.mask, q.second.mask], 1))
        self.labels = t(prefs.labels[keep])
        self.policy = GaussianPolicy(obs_dim, act_dim, cfg.hidden, cfg.n_layers, cfg.dropout).to(
            device
        )
        self.opt = torch.optim.Adam(self.policy.parameters(), lr=cfg.learning_rate)

    def sample(self, gen: torch.Generator) -> Batch:
        batch = self.sampler.sample(self.cfg.bc_batch_size, gen)
        i = torch.randint(len(self.labels), (self.cfg.batch_size,), generator=gen).to(self.device)
        batch.update(
            seg_obs=self.seg_obs[i],
            seg_act=self.seg_act[i],
            seg_mask=self.seg_mask[i],
            labels=self.labels[i],
        )
        return batch

    def train(self, batch: Batch) -> dict[str, float]:
        self.policy.train()  # agent() switched to eval mode (dropout off) for evaluation
        cfg = self.cfg
        bc = -self.policy.log_prob(batch["obs"], batch["act"]).mean()
        out = {"bc_loss": bc.item()}
        if self.step < cfg.bc_steps:
            loss = bc
        else:
            logp = self.policy.log_prob(batch["seg_obs"], batch["seg_act"])  # [B, 2, T]
            scores = segment_scores(logp, batch["seg_mask"], cfg.alpha)  # [B, 2]
            pref, acc = cpl_loss(scores[:, 0], scores[:, 1], batch["labels"], cfg.conservative)
            loss = pref + cfg.bc_coeff * bc
            out.update(cpl_loss=pref.item(), cpl_accuracy=acc.item())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.step += 1
        return out

    def agent(self) -> Agent:
        self.policy.eval()
        return PolicyAgent(self.policy.act, self.norm, self.device)


def build(
    config: CPLConfig,
    data: OfflineDataset,
    labels: PreferenceDataset | None,
    reward: LearnedReward | None,
    total_steps: int,
    device: torch.device,
    seed: int,
) -> CPL:
    prefs = require_labels(labels, config.name)
    norm = ObsNormalizer(data, config.normalize_obs)
    sampler = TransitionSampler(data, norm, device, rewards=np.zeros(len(data)))
    return CPL(prefs, sampler, norm, data.obs_dim, data.act_dim, config, device)
