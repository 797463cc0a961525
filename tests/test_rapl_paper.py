"""RAPL as the paper measures it (issue 23): the within-trajectory metric, the linear-head RLHF
baseline, the frozen backbone, the paper's triplets, and a sweep task PPO can solve."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch

import pbrl.envs  # noqa: F401  (registers pbrl/Sweep-v0)
from pbrl.data import PreferenceDataset
from pbrl.data.triplets import sample_triplets, triplets_from_dataset
from pbrl.envs.rollouts import collect_episodes
from pbrl.envs.spec import EnvSpec
from pbrl.online.episodic import within_spearman
from pbrl.rewards import REWARD_MODELS
from pbrl.rewards.base import FrameReward, kind_of
from pbrl.rewards.dispatch import scores_episodes, scores_steps, uses_demonstrations
from pbrl.rewards.rapl import RAPLConfig, RAPLReward, VideoEncoder
from pbrl.rewards.resnet import resnet18
from pbrl.rewards.rlhf_linear import LinearHeadReward, LinearRewardConfig
from pbrl.teachers.triplet import TripletTeacher

ROOT = Path(__file__).resolve().parent.parent
ONE_BLOCK = {"n_objects": 1}


# -- the metric --------------------------------------------------------------------------------
def test_within_trajectory_spearman_on_a_hand_computed_case():
    true = np.array([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0]])
    learned = np.array(
        [
            [10.0, 20.0, 20.0, 30.0],  # a tie: ranks 1, 2.5, 2.5, 4 against 1, 2, 3, 4
            [4.0, 3.0, 2.0, 1.0],  # reversed: -1
            [1.0, 2.0, 3.0, 4.0],  # the true reward is constant: no correlation
        ]
    )
    w = within_spearman(learned, true)
    # row 0: centred ranks (-1.5, 0, 0, 1.5) and (-1.5, -0.5, 0.5, 1.5): 4.5 / sqrt(4.5 * 5)
    row0 = 4.5 / math.sqrt(4.5 * 5.0)
    assert w.per_row[0] == pytest.approx(row0) and row0 == pytest.approx(3 / math.sqrt(10))
    assert w.per_row[1] == pytest.approx(-1.0) and np.isnan(w.per_row[2])
    assert w.constant == 1 and w.counted == 2  # reported, not averaged in as 0
    assert w.mean == pytest.approx((row0 - 1.0) / 2)
    flat = within_spearman(np.ones((2, 3)), np.arange(6.0).reshape(2, 3))  # learned constant
    assert flat.constant == 2 and np.isnan(flat.mean)
    with pytest.raises(ValueError, match="need \\[n, T\\]"):
        within_spearman(np.ones((2, 3)), np.ones((3, 2)))


# -- the paper's triplets ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pool():
    return collect_episodes("pbrl/Sweep-v0", 60, 0, np.random.default_rng(0), (0, 1), ONE_BLOCK)


def test_teacher_ranks_equal_triplets_at_the_configured_rate_and_the_rest_apart(pool):
    rng = np.random.default_rng(1)
    returns = pool.returns()
    span = returns.max() - returns.min()
    n, fraction, equal_gap, min_gap = 30, 0.3, 0.1, 0.15  # ties only below the gap
    q = sample_triplets(pool, n, rng, None, min_gap, fraction, 0.5 * equal_gap)
    teacher = TripletTeacher(equal_gap=equal_gap, rng=np.random.default_rng(2))
    labels = teacher(q)
    assert teacher.stats() == {"triplets": 30.0, "equal_triplets": 9.0}  # round(0.3 * 30)
    triplets, dropped = triplets_from_dataset(PreferenceDataset(q, labels))
    assert triplets is not None and dropped == 0 and len(triplets) == n
    assert (triplets.target == 0.5).sum() == 9  # their loss pulls P to 0.5
    members = [triplets.anchor.returns(), triplets.first.returns(), triplets.second.returns()]
    r = np.stack(members, 1)
    spread = np.abs(r[:, :, None] - r[:, None, :])[:, [0, 0, 1], [1, 2, 2]]
    equal = np.array([all(v == 0.5 for v in row) for row in labels.reshape(n, 3)])
    assert equal.sum() == 9
    assert (spread.min(1)[~equal] >= min_gap * span - 1e-9).all()  # the others well apart
    assert (np.stack(members, 1)[equal] >= np.median(returns)).all()  # equal ones are good
    no_ties = TripletTeacher(rng=np.random.default_rng(2))  # the default: no equal triplets
    no_ties(q)
    assert no_ties.stats()["equal_triplets"] == 0
    with pytest.raises(ValueError, match="no a triplet whose returns differ pairwise"):
        sample_triplets(pool, 2, rng, None, min_gap=0.9, tries=50)


# -- the backbone stays frozen; the linear-head baseline -----------------------------------------
@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("backbone") / "resnet18.pth"
    torch.save(resnet18().state_dict(), path)
    return path


def test_rlhf_linear_is_a_frame_reward_and_training_leaves_the_backbone_frozen(
    tmp_path, backbone_file, pool
):
    assert REWARD_MODELS["rlhf_linear"] == (LinearHeadReward, LinearRewardConfig)
    assert kind_of(LinearHeadReward) is FrameReward
    assert scores_steps(LinearHeadReward) and scores_episodes(LinearHeadReward)
    assert not uses_demonstrations(LinearHeadReward)
    env = EnvSpec("pbrl/Sweep-v0", ONE_BLOCK)
    common = {
        "image_size": 64,
        "backbone_weights": str(backbone_file),
        "frame_stride": 10,
        "epochs": 3,
    }
    encoder = VideoEncoder(RAPLConfig(**common), env=env)
    before = {k: v.clone() for k, v in encoder.backbone.state_dict().items()}
    rng = np.random.default_rng(0)
    q = sample_triplets(pool, 8, rng)
    prefs = PreferenceDataset(q, TripletTeacher()(q))
    rapl = RAPLReward(0, 0, RAPLConfig(**common), encoder=encoder)
    linear = LinearHeadReward(0, 0, LinearRewardConfig(**common), encoder=encoder)
    head_before = linear.head.weight.detach().clone()
    assert rapl.fit(prefs, rng)["updates"] > 0
    fit = linear.fit(prefs, rng)
    assert fit["pairs"] == 24 and fit["updates"] == 3  # 19 train pairs, batch 30: 1 an epoch
    assert not torch.equal(head_before, linear.head.weight)
    for key, value in encoder.backbone.state_dict().items():  # frozen, BatchNorm stats too
        assert torch.equal(value, before[key]), key
    assert not any(p.requires_grad for p in encoder.backbone.parameters())
    assert not encoder.backbone.training
    # a step's reward is its frame's: the episode's per-step rewards sum to the kept frames'
    frames = encoder.frame_cache.frames(pool.qpos[:2, 10], pool.qvel[:2, 10], store=False)
    per_frame = linear.frame_reward(frames)
    assert per_frame.shape == (2,)
    returns = linear.segment_returns(pool[:3])
    assert returns.shape == (1, 3)
    linear.save(tmp_path / "linear.pt")
    again = LinearHeadReward.load(tmp_path / "linear.pt")
    assert torch.allclose(again.segment_returns(pool[:3]), returns)
    # in the episodic recipe it scores the frames RAPL sees, each spread over its steps
    from pbrl.rewards.dispatch import episode_rewards

    qpos, qvel = pool.qpos[:2], pool.qvel[:2]  # [2, T + 1, ...]
    t = qpos.shape[1] - 1
    every = episode_rewards(linear, qpos, qvel)  # every frame: a step earns its frame's reward
    assert every.shape == (2, t)
    strided = episode_rewards(linear, qpos, qvel, (10, 0))
    kept = np.arange(t - 1, -1, -10)[::-1]  # the steps whose frames count, ending at the last
    assert np.allclose(strided.sum(1), every[:, kept].sum(1), atol=1e-5)  # returns: kept frames'
    assert np.allclose(strided[:, kept[0]], every[:, kept[0]] / (kept[0] + 1), atol=1e-6)
    assert np.allclose(strided[:, kept[-1]], every[:, kept[-1]] / 10, atol=1e-6)


# -- a task PPO solves on its true reward ------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ppo_on_the_true_reward_solves_the_one_block_sweep_task(seed):
    """The RAPL exps' PPO settings (16 envs) on the env's reward: >= 80% of 20 episodes
    after 150k steps, every seed (measured 2026-12-06: 1.00 for seeds 0-2, about a minute
    each; with 4 envs only seed 0 got there, seed 2 had 0.05 after 200k)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from sweep_true_ppo import train

    rows = train(150_000, seed=seed, n_objects=1, every=150_000)
    assert rows[-1]["success"] >= 0.8


@pytest.mark.slow
def test_the_episodic_relabel_loop_with_the_true_reward_solves_the_task(monkeypatch):
    """RAPL's policy loop (rewards written into PPO's rollout buffer at each rollout's end,
    normalized, GAE recomputed) given the true per-step reward from the recorded states: it
    must solve the task as plain PPO on the env's reward does (1.00 at 150k, seed 0). A loop
    that misaligns steps or rewards fails here, whatever the learned reward is worth."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecNormalize

    import pbrl.online.episodic as episodic
    from pbrl.envs.sweep import sweep_reward_from_qpos
    from pbrl.sim import make_vec_env

    torch.set_num_threads(1)
    monkeypatch.setattr(
        episodic,
        "episode_rewards",
        lambda _model, qpos, _qvel, _frames: sweep_reward_from_qpos(qpos[:, 1:]),
    )
    recorder = episodic.EpisodeRecorder(
        make_vec_env("gymnasium", "pbrl/Sweep-v0", 16, 0, n_objects=1)
    )
    venv = VecNormalize(recorder, norm_obs=True, norm_reward=False)
    model = PPO("MlpPolicy", venv, seed=0, verbose=0, n_steps=200, batch_size=100,
                policy_kwargs={"net_arch": [64, 64]})  # fmt: skip
    model.learn(150_000, callback=episodic.EpisodicRelabel(recorder, cast(Any, None), True))
    sys.path.insert(0, str(ROOT / "scripts"))
    from sweep_true_ppo import evaluate  # the same 20 evaluation episodes as plain PPO's

    assert evaluate(model, venv)["success"] >= 0.8
