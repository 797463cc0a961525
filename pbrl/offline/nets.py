"""Networks shared by the offline algorithms: MLPs, a Gaussian policy, twin critics and a
small decision transformer (used by OPPO, conditioned on a preference embedding, and by DTR,
conditioned on the return-to-go)."""

from __future__ import annotations

import math

import torch
from torch import nn

from pbrl.rewards.nets import attention_mask, transformer


def mlp(
    n_in: int,
    n_out: int,
    hidden: int = 256,
    n_layers: int = 2,
    dropout: float = 0.0,
    layer_norm: bool = False,
    act: type[nn.Module] = nn.ReLU,
) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = n_in
    for _ in range(n_layers):
        layers.append(nn.Linear(width, hidden))
        if layer_norm:
            layers.append(nn.LayerNorm(hidden))
        layers.append(act())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = hidden
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


class TwinQ(nn.Module):
    """Two independent Q(s, a) networks; ``forward`` returns both ``[..., ]`` value tensors."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256, n_layers: int = 2) -> None:
        super().__init__()
        self.q1 = mlp(obs_dim + act_dim, 1, hidden, n_layers)
        self.q2 = mlp(obs_dim + act_dim, 1, hidden, n_layers)

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([obs, act], -1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)

    def min(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return torch.min(*self(obs, act))


class GaussianPolicy(nn.Module):
    """Diagonal Gaussian with a tanh-bounded mean and state-dependent, clipped log-std.

    ``log_prob`` is that of the (unsquashed) Gaussian, so dataset actions at the bounds of
    the action box keep a finite likelihood (IQL's and CPL's reference implementations do
    the same); ``act`` returns the mean.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: int = 256,
        n_layers: int = 2,
        dropout: float = 0.0,
        log_std_min: float = -5.0,
        log_std_max: float = 2.0,
    ) -> None:
        super().__init__()
        self.net = mlp(obs_dim, 2 * act_dim, hidden, n_layers, dropout)
        self.log_std_min, self.log_std_max = log_std_min, log_std_max

    def dist(self, obs: torch.Tensor) -> torch.distributions.Normal:
        mean, log_std = self.net(obs).chunk(2, -1)
        log_std = log_std.clamp(self.log_std_min, self.log_std_max)
        return torch.distributions.Normal(torch.tanh(mean), log_std.exp())

    def log_prob(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return self.dist(obs).log_prob(act).sum(-1)

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(obs).chunk(2, -1)[0])


class DecisionTransformer(nn.Module):
    """A GPT over ``(c_t, s_t, a_t)`` tokens that predicts ``a_t`` from the ``s_t`` token.

    ``c_t`` is the conditioning: the return-to-go (``cond_dim`` 1, Chen et al. 2021) or a
    preference embedding ``z`` repeated at every step (OPPO). Windows are left-padded:
    ``mask`` is False on padding.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        cond_dim: int,
        embed_dim: int = 128,
        n_layers: int = 3,
        n_heads: int = 1,
        max_ep_len: int = 1000,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.max_ep_len = max_ep_len
        self.embed_cond = nn.Linear(cond_dim, embed_dim)
        self.embed_obs = nn.Linear(obs_dim, embed_dim)
        self.embed_act = nn.Linear(act_dim, embed_dim)
        self.embed_time = nn.Embedding(max_ep_len + 1, embed_dim)
        self.embed_ln = nn.LayerNorm(embed_dim)
        self.body = transformer(embed_dim, n_layers, n_heads, dropout)
        self.head = nn.Sequential(nn.Linear(embed_dim, act_dim), nn.Tanh())

    def forward(
        self,
        cond: torch.Tensor,
        obs: torch.Tensor,
        act: torch.Tensor,
        timesteps: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """Predicted actions ``[B, K, A]`` for windows ``obs [B, K, D]`` etc."""
        b, k = mask.shape
        t = self.embed_time(timesteps.clamp(0, self.max_ep_len))
        tokens = torch.stack(
            [self.embed_cond(cond) + t, self.embed_obs(obs) + t, self.embed_act(act) + t], 2
        ).reshape(b, 3 * k, -1)
        valid = mask.repeat_interleave(3, 1)
        x = self.body(self.embed_ln(tokens), mask=attention_mask(valid, True, self.n_heads))
        return self.head(x.reshape(b, k, 3, -1)[:, :, 1])


def init_weights(module: nn.Module) -> None:
    """GPT-2 style initialization for the transformer models."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)


def cosine_warmup(
    optimizer: torch.optim.Optimizer, warmup: int, total: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then cosine decay to zero over ``total`` steps."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
