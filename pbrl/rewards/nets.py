"""Network pieces the reward models share with the offline algorithms' transformers."""

from __future__ import annotations

import torch
from torch import nn


def attention_mask(valid: torch.Tensor, causal: bool, n_heads: int) -> torch.Tensor:
    """Boolean ``[B * heads, L, L]`` mask (True = blocked) for ``nn.TransformerEncoder``.

    Keys at invalid (padded) positions are blocked; every position may always attend to
    itself, so padded queries never see an all-blocked row (which would give NaN).
    """
    b, length = valid.shape
    allowed = valid[:, None, :].expand(b, length, length)
    if causal:
        allowed = allowed & torch.ones(length, length, dtype=torch.bool, device=valid.device).tril()
    allowed = allowed | torch.eye(length, dtype=torch.bool, device=valid.device)
    return (~allowed).repeat_interleave(n_heads, 0)


def transformer(
    embed_dim: int, n_layers: int, n_heads: int, dropout: float
) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        embed_dim,
        n_heads,
        4 * embed_dim,
        dropout,
        activation="gelu",
        batch_first=True,
        norm_first=True,
    )
    return nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
