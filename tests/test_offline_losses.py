"""The offline methods' math against hand-computed values on tiny tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pbrl.data import PreferenceDataset, Queries, Segments
from pbrl.offline.cpl import cpl_loss, segment_scores
from pbrl.offline.dtr import normalize_ensemble, nstep_targets
from pbrl.offline.iql import (
    IQL,
    IQLConfig,
    awr_loss,
    expectile_loss,
    minmax_rewards,
    q_target,
    scale_rewards,
)
from pbrl.offline.nets import DecisionTransformer
from pbrl.offline.oppo import norm_loss, triplet_loss
from pbrl.rewards.transformer import PreferenceTransformer, PreferenceTransformerConfig


def t(*x: float) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


# -- IQL -------------------------------------------------------------------------------------


def test_iql_expectile_loss() -> None:
    # u = -1 weighs 1 - 0.7, u = 2 weighs 0.7: (0.3 * 1 + 0.7 * 4) / 2
    assert expectile_loss(t(-1.0, 2.0), 0.7).item() == pytest.approx(1.55)
    assert expectile_loss(t(-1.0, 2.0), 0.5).item() == pytest.approx(0.5 * (1 + 4) / 2)


def test_iql_q_target() -> None:
    out = q_target(t(1.0, 1.0), t(0.0, 1.0), t(10.0, 10.0), 0.9)
    assert out.tolist() == pytest.approx([10.0, 1.0])  # no bootstrap after a terminal


def test_iql_awr_loss_weights_and_clip() -> None:
    # weights exp(2 * [0, 1]) = [1, e^2]; loss = -(1 * -1 + e^2 * -2) / 2
    expected = (1.0 + 2.0 * math.exp(2.0)) / 2
    assert awr_loss(t(-1.0, -2.0), t(0.0, 1.0), 2.0, 100.0).item() == pytest.approx(
        expected, rel=1e-6
    )
    # exp(3 * 10) is clipped to 100
    assert awr_loss(t(-1.0), t(10.0), 3.0, 100.0).item() == pytest.approx(100.0)
    # the advantage carries no gradient into the value function
    adv = t(1.0).requires_grad_(True)
    logp = t(-1.0).requires_grad_(True)
    awr_loss(logp, adv, 1.0, 100.0).backward()
    assert adv.grad is None and logp.grad is not None


def test_iql_learned_reward_minmax() -> None:
    out = minmax_rewards(np.array([-2.0, 0.0, 2.0]))
    assert out.tolist() == pytest.approx([0.0, 0.5, 1.0])
    assert minmax_rewards(np.array([3.0, 3.0])).tolist() == [0.0, 0.0]


def test_iql_reward_scaling() -> None:
    out = scale_rewards(np.array([1.0, 2.0]), np.array([100.0, 600.0]))
    assert out.tolist() == pytest.approx([2.0, 4.0])  # 1000 / (600 - 100)


def test_iql_step_uses_the_target_critics_for_the_value() -> None:
    torch.manual_seed(0)
    algo = IQL(3, 2, IQLConfig(hidden=8), 10, torch.device("cpu"))
    batch = {
        "obs": torch.randn(5, 3),
        "act": torch.rand(5, 2) * 2 - 1,
        "reward": torch.randn(5),
        "next_obs": torch.randn(5, 3),
        "done": torch.zeros(5),
    }
    with torch.no_grad():
        u = algo.qf_target.min(batch["obs"], batch["act"]) - algo.vf(batch["obs"]).squeeze(-1)
    metrics = algo.train(batch)
    assert metrics["value_loss"] == pytest.approx(expectile_loss(u, 0.7).item(), rel=1e-5)


# -- CPL -------------------------------------------------------------------------------------


def test_cpl_segment_scores_mask_padding() -> None:
    out = segment_scores(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[1.0, 1.0, 0.0]]), 0.1)
    assert out.item() == pytest.approx(0.3)


def test_cpl_conservative_loss() -> None:
    s1, s2 = t(1.0, 1.0, 1.0), t(2.0, 2.0, 2.0)
    loss, acc = cpl_loss(s1, s2, t(1.0, 0.0, 0.5), 0.5)
    second = softplus(-(2.0 - 0.5 * 1.0))  # y = 1
    first = softplus(-(1.0 - 0.5 * 2.0))  # y = 0
    tie = 0.5 * second + 0.5 * first
    assert loss.item() == pytest.approx((second + first + tie) / 3, rel=1e-6)
    assert acc.item() == pytest.approx(0.5)  # right on y = 1, wrong on y = 0, tie not counted
    # λ = 1 is the plain Bradley–Terry loss on the scores
    loss1, _ = cpl_loss(t(1.0), t(2.0), t(1.0), 1.0)
    assert loss1.item() == pytest.approx(softplus(-1.0), rel=1e-6)


# -- OPPO ------------------------------------------------------------------------------------


def test_oppo_triplet_and_norm_losses() -> None:
    anchor = torch.zeros(2, 2)
    pos = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    neg = torch.tensor([[0.0, 1.0], [3.0, 4.0]])
    # max(5 - 1 + 1, 0) = 5 and max(1 - 5 + 1, 0) = 0
    assert triplet_loss(anchor, pos, neg, 1.0).item() == pytest.approx(2.5)
    assert torch.allclose(
        triplet_loss(anchor, pos, neg, 1.0),
        torch.nn.functional.triplet_margin_loss(anchor, pos, neg, margin=1.0, eps=0.0),
    )
    # (|(3, 4)| - 1)^2 = 16, (|(0.6, 0.8)| - 1)^2 = 0
    assert norm_loss(torch.tensor([[3.0, 4.0], [0.6, 0.8]])).item() == pytest.approx(8.0)


# -- DTR -------------------------------------------------------------------------------------


def test_dtr_ensemble_normalization() -> None:
    members = np.array([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0], [-3.0, -2.0, -1.0]])
    r, mean, std = normalize_ensemble(members)
    z = math.sqrt(1.5)  # (x - mean) / std for 3 evenly spaced values
    assert r.tolist() == pytest.approx([-z, 0.0, z], rel=1e-6)
    assert mean.tolist() == pytest.approx([2.0, 20.0, -2.0])
    # a member with a larger scale does not dominate: flipping one member's sign
    r2, _, _ = normalize_ensemble(np.array([[1.0, 2.0, 3.0], [300.0, 200.0, 100.0]]))
    assert r2.tolist() == pytest.approx([0.0, 0.0, 0.0], abs=1e-7)


def test_dtr_nstep_targets() -> None:
    reward = torch.tensor([[1.0, 2.0, 4.0], [1.0, 2.0, 4.0], [9.0, 2.0, 4.0]])
    mask = torch.tensor([[True, True, True], [True, True, True], [False, True, True]])
    q_last = t(8.0, 8.0, 8.0)
    terminal = torch.tensor([False, True, False])
    target, valid = nstep_targets(reward, mask, q_last, terminal, 0.5)
    # no termination: y0 = 1 + .5 * 2 + .25 * 8, y1 = 2 + .5 * 8, y2 has no target
    assert target[0, :2].tolist() == pytest.approx([4.0, 6.0])
    assert valid[0].tolist() == [True, True, False]
    # termination after the last step: discounted rewards to the end, no bootstrap
    assert target[1].tolist() == pytest.approx([1 + 0.5 * 2 + 0.25 * 4, 2 + 0.5 * 4, 4.0])
    assert valid[1].tolist() == [True, True, True]
    # left padding is ignored
    assert target[2, 1].item() == pytest.approx(6.0)
    assert valid[2].tolist() == [False, True, False]


# -- transformers ----------------------------------------------------------------------------


def _segments(obs: np.ndarray, act: np.ndarray, mask: np.ndarray) -> Segments:
    n, length = mask.shape
    return Segments(
        obs=obs.astype(np.float32),
        act=act.astype(np.float32),
        true_reward=np.zeros((n, length), np.float32),
        mask=mask,
        final_obs=obs[:, -1].astype(np.float32),
        terminated=~mask.all(1),
    )


def test_preference_transformer_score_is_attention_weighted_sum() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    pt = PreferenceTransformer(
        3, 2, PreferenceTransformerConfig(embed_dim=16, n_heads=2, dropout=0.0)
    )
    pt.eval()
    mask = np.ones((2, 5), bool)
    mask[1, 3:] = False
    seg = _segments(rng.normal(size=(2, 5, 3)), rng.uniform(-1, 1, (2, 5, 2)), mask)
    obs, act, m = (torch.as_tensor(x) for x in (seg.obs, seg.act, seg.mask))
    with torch.no_grad():
        score = pt.score(obs, act, m)
        r, _ = pt.step_rewards(obs, act, m)
    w = torch.as_tensor(pt.preference_weights(seg))
    assert torch.allclose(score, (w * r * m).sum(-1), atol=1e-5)
    assert w.sum(-1).tolist() == pytest.approx([5.0, 3.0], rel=1e-5)  # one unit per valid query
    # padded steps do not change a segment's score
    seg.obs[1, 3:] = 100.0
    with torch.no_grad():
        again = pt.score(torch.as_tensor(seg.obs), act, m)
    assert again[1].item() == pytest.approx(score[1].item(), abs=1e-5)
    # attention off: the plain sum of step rewards
    pt.config.preference_attention = False
    with torch.no_grad():
        plain = pt.score(obs, act, m)
    assert torch.allclose(plain, (r * m).sum(-1), atol=1e-6)


def test_preference_transformer_learns_a_simple_preference() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n, length = 96, 6
    a = _segments(
        rng.normal(size=(n, length, 2)), np.zeros((n, length, 1)), np.ones((n, length), bool)
    )
    b = _segments(
        rng.normal(size=(n, length, 2)), np.zeros((n, length, 1)), np.ones((n, length), bool)
    )
    labels = (b.obs[..., 0].sum(1) > a.obs[..., 0].sum(1)).astype(float)  # reward = obs[0]
    data = PreferenceDataset(Queries(a, b), labels)
    pt = PreferenceTransformer(
        2,
        1,
        PreferenceTransformerConfig(
            embed_dim=32,
            n_heads=2,
            dropout=0.0,
            learning_rate=3e-3,
            warmup_steps=5,
            batch_size=32,
            max_epochs=40,
        ),
    )
    metrics = pt.fit(data, rng)
    assert metrics["train_accuracy"] > 0.85
    assert pt.accuracy(data) > 0.85


def test_decision_transformer_is_causal_and_ignores_padding() -> None:
    torch.manual_seed(0)
    dt = DecisionTransformer(3, 2, 1, embed_dim=16, n_layers=2, n_heads=2, dropout=0.0).eval()
    b, k = 2, 4
    cond, obs, act = torch.randn(b, k, 1), torch.randn(b, k, 3), torch.randn(b, k, 2)
    ts = torch.arange(k).expand(b, k)
    mask = torch.ones(b, k, dtype=torch.bool)
    mask[1, :2] = False
    with torch.no_grad():
        out = dt(cond, obs, act, ts, mask)
        obs2, act2 = obs.clone(), act.clone()
        obs2[:, -1] += 5.0  # the future does not change earlier predictions
        act2[:, 2] += 5.0  # nor does the action being predicted
        obs2[1, :2] = 100.0  # nor does padding
        out2 = dt(cond, obs2, act2, ts, mask)
    assert torch.allclose(out[:, :2][mask[:, :2]], out2[:, :2][mask[:, :2]], atol=1e-5)
    assert torch.allclose(out[:, 2], out2[:, 2], atol=1e-5)
