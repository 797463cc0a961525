"""Behavior cloning: a deterministic MLP policy regressed onto the dataset's actions.

The floor every offline method should clear on mixed-quality data (medium-replay,
medium-expert) and roughly match on single-policy data (medium). CORL settings: MLP
2 x 256, tanh output, MSE, Adam 3e-4, batch 256.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

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
)
from pbrl.offline.nets import mlp


@dataclass
class BCConfig(OfflineAlgoConfig):
    name: str = "bc"
    batch_size: int = 256
    learning_rate: float = 3e-4
    hidden: int = 256
    n_layers: int = 2
    dropout: float = 0.0
    normalize_obs: bool = True


def bc_loss(pred: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    return (pred - act).pow(2).sum(-1).mean()


class BC(OfflineTrainer):
    def __init__(
        self,
        sampler: TransitionSampler,
        norm: ObsNormalizer,
        obs_dim: int,
        act_dim: int,
        cfg: BCConfig,
        device: torch.device,
    ) -> None:
        self.cfg, self.sampler, self.norm, self.device, self.step = cfg, sampler, norm, device, 0
        self.actor = torch.nn.Sequential(
            mlp(obs_dim, act_dim, cfg.hidden, cfg.n_layers, cfg.dropout), torch.nn.Tanh()
        ).to(device)
        self.opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.learning_rate)

    def sample(self, gen: torch.Generator) -> Batch:
        return self.sampler.sample(self.cfg.batch_size, gen)

    def train(self, batch: Batch) -> dict[str, float]:
        self.actor.train()  # agent() switched to eval mode (dropout off) for evaluation
        loss = bc_loss(self.actor(batch["obs"]), batch["act"])
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.step += 1
        return {"bc_loss": loss.item()}

    def agent(self) -> Agent:
        self.actor.eval()
        return PolicyAgent(self.actor, self.norm, self.device)


def build(
    config: BCConfig,
    data: OfflineDataset,
    labels: PreferenceDataset | None,
    reward: LearnedReward | None,
    total_steps: int,
    device: torch.device,
    seed: int,
) -> BC:
    norm = ObsNormalizer(data, config.normalize_obs)
    sampler = TransitionSampler(data, norm, device, rewards=None)
    return BC(sampler, norm, data.obs_dim, data.act_dim, config, device)
