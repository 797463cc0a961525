"""Entropic optimal transport between videos' frame embeddings, batched in torch.

Two videos are point clouds of frame embeddings ``x [N, D]`` and ``y [M, D]`` with uniform
mass on every frame (or given weights ``a``, ``b``). With a cost matrix ``C [N, M]`` the
entropic OT plan is

    P* = argmin_{P in U(a, b)}  <P, C> - epsilon H(P),

found by Sinkhorn's iterations on the dual potentials in the log domain (stable for small
``epsilon``: no ``exp(-C / epsilon)`` underflows). From it:

* the video similarity of RAPL, ``s(x, y) = -sum(P* o C)``;
* the per-step OT reward of the robot's video ``x`` against a demonstration ``y``,
  ``r_t = -[P* C^T]_tt = -sum_j P*_tj C_tj`` (Tian et al.; ROT's reward).

The plan is computed without gradient: the gradient of the entropic OT cost with respect
to ``C`` is ``P*`` itself (Danskin's theorem), so differentiating ``-sum(P* o C)`` through
``C`` alone with ``P*`` fixed is the gradient of the transport cost, and no backward pass
runs through the iterations.
"""

from __future__ import annotations

import math

import torch


def cosine_cost(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``1 - cos(x_i, y_j)``: ``[..., N, D]``, ``[..., M, D]`` -> ``[..., N, M]`` in [0, 2]."""
    xn = torch.nn.functional.normalize(x, dim=-1)
    yn = torch.nn.functional.normalize(y, dim=-1)
    return 1.0 - xn @ yn.transpose(-1, -2)


def euclidean_cost(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``||x_i - y_j||``: ``[..., N, D]``, ``[..., M, D]`` -> ``[..., N, M]``."""
    sq = (x * x).sum(-1)[..., :, None] + (y * y).sum(-1)[..., None, :] - 2 * x @ y.transpose(-1, -2)
    # the small floor keeps the square root differentiable where a frame meets itself
    return sq.clamp_min(1e-12).sqrt()


COSTS = {"cosine": cosine_cost, "euclidean": euclidean_cost}


def _log_weights(w: torch.Tensor | None, n: int, like: torch.Tensor) -> torch.Tensor:
    batch = like.shape[:-2]
    if w is None:
        return torch.full((*batch, n), -math.log(n), dtype=like.dtype, device=like.device)
    w = torch.as_tensor(w, dtype=like.dtype, device=like.device).expand(*batch, n)
    if (w < 0).any():
        raise ValueError("transport weights must be >= 0")
    total = w.sum(-1, keepdim=True)
    if (total <= 0).any():
        raise ValueError("transport weights must not all be zero")
    return torch.log(w / total)  # log 0 = -inf: a frame without mass


@torch.no_grad()
def sinkhorn(
    cost: torch.Tensor,
    epsilon: float,
    n_iters: int = 200,
    a: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    tol: float = 1e-6,
) -> torch.Tensor:
    """Entropic OT plans ``[..., N, M]`` for costs ``[..., N, M]`` (any leading batch shape).

    ``a [..., N]``, ``b [..., M]``: the marginals (normalized here; None: uniform). Stops
    after ``n_iters`` iterations or once every row marginal is within ``tol`` (L1) of ``a``.
    """
    if not epsilon > 0:
        raise ValueError(f"epsilon={epsilon} must be positive")
    if cost.ndim < 2:
        raise ValueError(f"cost must be [..., N, M], got shape {tuple(cost.shape)}")
    cost = cost.detach()
    n, m = cost.shape[-2:]
    log_a = _log_weights(a, n, cost)
    log_b = _log_weights(b, m, cost)
    f = torch.zeros_like(log_a)
    g = torch.zeros_like(log_b)
    scaled = -cost / epsilon
    for it in range(n_iters):
        # f_i = eps log a_i - eps log sum_j exp((g_j - C_ij) / eps); then g alike
        f = epsilon * (log_a - torch.logsumexp(scaled + g[..., None, :] / epsilon, dim=-1))
        g = epsilon * (log_b - torch.logsumexp(scaled + f[..., :, None] / epsilon, dim=-2))
        if it % 10 == 9 or it == n_iters - 1:
            log_p = scaled + (f[..., :, None] + g[..., None, :]) / epsilon
            rows = torch.logsumexp(log_p, dim=-1).exp()
            if (rows - log_a.exp()).abs().sum(-1).max() < tol:
                break
    return torch.exp(scaled + (f[..., :, None] + g[..., None, :]) / epsilon)


def transport(
    x: torch.Tensor,
    y: torch.Tensor,
    epsilon: float,
    cost: str = "cosine",
    n_iters: int = 200,
    normalize_cost: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cost matrices ``C [..., N, M]`` (with gradient) and OT plans ``P* [..., N, M]``
    (without) between videos ``x [..., N, D]`` and ``y [..., M, D]``.

    ``normalize_cost``: the plan is solved for ``C / max(C)`` (per pair), so ``epsilon`` is
    relative to the largest cost and the plan does not change with the embedding's scale
    (which moves while an encoder trains); ``C`` itself is returned unscaled.
    """
    if cost not in COSTS:
        raise ValueError(f"cost={cost!r}: use one of {', '.join(COSTS)}")
    c = COSTS[cost](x, y)
    solve = c.detach()
    if normalize_cost:
        solve = solve / solve.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
    return c, sinkhorn(solve, epsilon, n_iters)


def ot_similarity(
    x: torch.Tensor,
    y: torch.Tensor,
    epsilon: float,
    cost: str = "euclidean",
    n_iters: int = 200,
    normalize_cost: bool = True,
) -> torch.Tensor:
    """RAPL's video similarity ``s = -sum(P* o C)`` per pair: ``[...]``."""
    c, plan = transport(x, y, epsilon, cost, n_iters, normalize_cost)
    return -(plan * c).sum(dim=(-2, -1))


def ot_step_rewards(
    x: torch.Tensor,
    y: torch.Tensor,
    epsilon: float,
    cost: str = "cosine",
    n_iters: int = 200,
    normalize_cost: bool = True,
) -> torch.Tensor:
    """Per-frame OT reward of video ``x [..., N, D]`` against ``y [..., M, D]``:
    ``r_t = -[P* C^T]_tt``, ``[..., N]`` (they sum to the similarity)."""
    c, plan = transport(x, y, epsilon, cost, n_iters, normalize_cost)
    return -(plan * c).sum(-1)
