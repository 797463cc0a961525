"""HERON on transitions (pbrl.online.heron, pbrl.rewards.factor): pairs of single steps drawn
from SAC's replay buffer and labeled by the ranking, the buffer margin scope, the factor
reward model, PPO's value-target variant, and the official MountainCar setup learning."""

from __future__ import annotations

import types

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.logger import configure

from pbrl.data import PreferenceDataset, Queries
from pbrl.data.pool import TrajectoryPool
from pbrl.errors import ConfigError
from pbrl.online.feedback import FeedbackSchedule
from pbrl.online.heron import (
    KEPT_FIELDS,
    TransitionFeedback,
    Transitions,
    gae_advantages,
    replay_buffer_transitions,
    transition_pairs,
)
from pbrl.online.pebble import EntropyReplayBuffer
from pbrl.rewards import load_reward_model, make_reward_model
from pbrl.rewards.dispatch import Steps, score_steps
from pbrl.rewards.factor import FactorRewardConfig, FactorRewardModel
from pbrl.teachers.heron import HeronTeacher
from pbrl.teachers.scripted import TeacherConfigError

NAMES = ("reward_goal", "reward_action")


def filled_buffer(n: int = 40, seed: int = 0) -> tuple[EntropyReplayBuffer, np.ndarray]:
    """A replay buffer of ``n`` MountainCar-like steps whose obs[0] is the step's index, goal
    reached on every 10th; returns it and the factors ``[n, 2]`` it holds."""
    rng = np.random.default_rng(seed)
    obs_space = gym.spaces.Box(-np.inf, np.inf, (2,))
    buf = EntropyReplayBuffer(
        64, obs_space, gym.spaces.Box(-1, 1, (1,)), device="cpu",
        step_fields={"factors": 2, "true_reward": 1},
    )  # fmt: skip
    factors = np.zeros((n, 2))
    for i in range(n):
        a = rng.uniform(-1, 1)
        goal = 100.0 if i % 10 == 9 else 0.0
        factors[i] = (goal, -0.1 * a * a)
        info = {
            "step_factors": factors[i],
            "step_true_reward": np.array([factors[i].sum()]),
            "TimeLimit.truncated": False,
        }
        buf.add(
            np.array([[i, 0.5]]), np.array([[i + 1, 0.5]]), np.array([[a]]),
            np.array([0.0]), np.array([goal > 0]), [info],
        )  # fmt: skip
    return buf, factors


def test_transition_pairs_come_from_the_replay_buffer_and_follow_the_ranking():
    buf, factors = filled_buffer()
    steps = replay_buffer_transitions(buf)
    assert len(steps) == 40
    q = transition_pairs(steps, 500, np.random.default_rng(1), NAMES, "pbrl/X", "run")
    assert q.first.length == q.second.length == 1
    for half in (q.first, q.second):
        idx = half.obs[:, 0, 0].astype(int)  # obs[0] names the buffer row
        np.testing.assert_array_equal(half.obs[:, 0, 0], idx)
        np.testing.assert_allclose(half.reward_factors[:, 0], factors[idx], rtol=1e-6)
        np.testing.assert_allclose(half.true_reward[:, 0], factors[idx].sum(1), rtol=1e-6)
        np.testing.assert_array_equal(half.terminated, idx % 10 == 9)
        np.testing.assert_array_equal(half.final_obs[:, 0], idx + 1)
    assert (q.first.obs[:, 0, 0] != q.second.obs[:, 0, 0]).all()  # two different steps
    teacher = HeronTeacher(["goal", "action"], sigma=[0.0, 1.0], margin="buffer")
    std = factors.std(0)
    teacher.set_factor_spread(NAMES, std)
    labels = teacher(q)
    z1, z2 = q.first.reward_factors[:, 0], q.second.reward_factors[:, 0]
    goal = z1[:, 0] != z2[:, 0]
    np.testing.assert_array_equal(labels[goal], (z2[goal, 0] > z1[goal, 0]).astype(float))
    gap = z2[:, 1] - z1[:, 1]
    by_action = ~goal & (np.abs(gap) > std[1])
    np.testing.assert_array_equal(labels[by_action], (gap[by_action] > 0).astype(float))
    undecided = ~goal & ~by_action
    assert undecided.any() and np.isnan(labels[undecided]).all()  # ties and near-ties skipped
    assert goal.any() and by_action.any()


def test_buffer_margin_scope_against_hand_computed_cases():
    from test_heron import segments

    a = np.array([[[0.0, -0.10]], [[0.0, -0.30]], [[0.0, -0.05]]])
    b = np.array([[[0.0, -0.20]], [[0.0, -0.00]], [[100.0, -0.9]]])
    q = Queries(segments(a, NAMES), segments(b, NAMES))
    teacher = HeronTeacher(["goal", "action"], sigma=[0.0, 1.0], margin="buffer")
    with pytest.raises(TeacherConfigError, match="feedback.pairs=transitions"):
        teacher(q)
    # the buffer's action values spread 0.15 (not this batch's): a gap of 0.1 is undecided,
    # 0.3 decides; the goal level (sigma 0) decides any difference
    teacher.set_factor_spread(NAMES, np.array([30.0, 0.15]))
    np.testing.assert_array_equal(teacher(q), [np.nan, 1.0, 1.0])
    np.testing.assert_array_equal(teacher.last_levels, [-1, 1, 0])
    teacher.set_factor_spread(("reward_action", "reward_goal"), np.array([0.05, 30.0]))  # by name
    np.testing.assert_array_equal(teacher(q), [0.0, 1.0, 1.0])
    with pytest.raises(TeacherConfigError, match="one of"):
        HeronTeacher(["goal"], margin="everything")


def _feedback(buf: EntropyReplayBuffer, teacher, model, pairs: int = 300) -> TransitionFeedback:
    pool = TrajectoryPool(1, 100, 2, 1, NAMES, None, "pbrl/MountainCarContinuous-v0")
    schedule = FeedbackSchedule(every=10, first_at=0, pairs="transitions", pairs_per_update=pairs)
    fb = TransitionFeedback(
        schedule, lambda: replay_buffer_transitions(buf), pool, model, teacher,
        np.random.default_rng(0),
    )  # fmt: skip
    fb.model = types.SimpleNamespace(logger=configure(None, [""]))  # type: ignore[assignment]
    return fb


def test_a_transition_round_hands_the_buffer_spread_and_trains_on_decided_pairs():
    buf, factors = filled_buffer()
    model = FactorRewardModel(2, 1, FactorRewardConfig(hidden=32), "cpu", NAMES)
    teacher = HeronTeacher(["goal", "action"], sigma=[0.0, 1.0], margin="buffer")
    fb = _feedback(buf, teacher, model)
    fb.feedback_round()
    np.testing.assert_allclose(teacher.buffer_std, factors.std(0), rtol=1e-6)
    report = fb.report()
    assert report["rankings_given"] == 1 and report["pairs_drawn"] == 300
    assert 0 < report["comparisons_induced"] < 300 and report["reward_updates"] == 1
    assert fb.num_labels == report["comparisons_induced"] == len(fb.dataset.labels)
    assert np.isin(fb.dataset.labels, (0.0, 1.0)).all()
    fb.feedback_round()
    assert fb.report()["pairs_drawn"] == 600 and fb.state.updates == 2
    assert len(fb.dataset) < fb.num_labels  # each round trains on its own draw


def test_the_buffer_keeps_factors_for_a_plain_state_reward(tmp_path, monkeypatch):
    """BT's baseline: a state reward (reads obs, act only) with transition pairs; SAC's buffer
    keeps the factors and true reward the sampler needs, relabeling still works."""
    from conftest import compose_exp

    from pbrl.recipes import run as run_config

    monkeypatch.chdir(tmp_path)
    cfg = compose_exp(
        "heron_mountaincar", ["teacher=oracle", "reward=small", "feedback.pairs_per_update=50"]
    )
    summary = run_config(cfg, tmp_path / "run")
    pairs = summary["transition_pairs"]
    assert pairs["rankings_given"] == 0 and pairs["pairs_drawn"] == 50 * pairs["reward_updates"]
    assert 0 < pairs["comparisons_induced"] <= pairs["pairs_drawn"]
    assert summary["num_labels"] == pairs["comparisons_induced"]


def test_factor_reward_shapes_learning_offset_and_save_load(tmp_path):
    buf, _ = filled_buffer(60)
    steps = replay_buffer_transitions(buf)
    q = transition_pairs(steps, 2000, np.random.default_rng(0), NAMES)
    labels = np.where(q.second.reward_factors[:, 0, 0] > q.first.reward_factors[:, 0, 0], 1.0, 0.0)
    labels[q.second.reward_factors[:, 0, 0] == q.first.reward_factors[:, 0, 0]] = np.nan
    data = PreferenceDataset(q, labels)
    model = make_reward_model(
        {"kind": "factor", "hidden": 32, "max_epochs": 20, "offset": "max"},
        2,
        1,
        "cpu",
        factor_names=NAMES,
    )
    assert isinstance(model, FactorRewardModel) and model.factor_names == NAMES
    out = model.fit(data, np.random.default_rng(0))
    assert out["train_accuracy"] > 0.95
    assert model.segment_returns(q.first).shape == (1, 2000)
    r = model.reward(torch.zeros(5, 3, 2), torch.zeros(5, 3, 1), torch.zeros(5, 3, 2))
    assert r.shape == (5, 3)
    scored = score_steps(model, Steps(steps.obs, steps.act, factors=steps.factors))
    goal = steps.factors[:, 0] > 0
    assert scored[goal].min() > scored[~goal].max()  # the goal level is learned
    assert scored.max() <= 1e-4  # offset: max puts the largest labeled reward at 0
    model.save(tmp_path / "r.pt")
    again = load_reward_model(tmp_path / "r.pt")
    assert isinstance(again, FactorRewardModel) and again.factor_names == NAMES
    np.testing.assert_array_equal(
        score_steps(again, Steps(steps.obs, steps.act, factors=steps.factors)), scored
    )
    with pytest.raises(ConfigError, match="reports none"):
        make_reward_model({"kind": "factor"}, 2, 1)
    with pytest.raises(ConfigError, match="reward.offset"):
        make_reward_model({"kind": "factor", "offset": "min"}, 2, 1, "cpu", factor_names=NAMES)


def test_factor_reward_inputs_over_every_labeled_step_and_normalize():
    """A factor column that never varied in the labeled steps reads as 0 (an unseen goal value
    cannot give an arbitrary reward); the statistics are running sums over every round;
    ``normalize`` leaves the labeled steps' rewards with std 1 (max 0 with offset: max)."""
    buf, _ = filled_buffer(60)
    steps = replay_buffer_transitions(buf)
    no_goal = Transitions(*(x[steps.factors[:, 0] == 0] for x in (
        steps.obs, steps.act, steps.next_obs, steps.true_reward, steps.factors, steps.terminated
    )))  # fmt: skip
    q = transition_pairs(no_goal, 300, np.random.default_rng(0), NAMES)
    labels = np.where(q.second.reward_factors[:, 0, 1] > q.first.reward_factors[:, 0, 1], 1.0, 0.0)
    cfg = {"kind": "factor", "hidden": 16, "normalize": True, "offset": "max"}
    model = make_reward_model(cfg, 2, 1, "cpu", factor_names=NAMES)
    assert isinstance(model, FactorRewardModel)
    model.fit(PreferenceDataset(q, labels), np.random.default_rng(0))
    assert torch.isinf(model.in_std[-2])  # the goal column: constant so far
    obs, act = torch.tensor([[3.0, 0.5]] * 2), torch.zeros(2, 1)
    f = torch.tensor([[0.0, -0.05], [100.0, -0.05]])
    r = model.reward(obs, act, f)
    assert torch.isfinite(r).all() and r[0] == r[1]  # an unseen goal value changes nothing
    seen = score_steps(model, Steps(no_goal.obs, no_goal.act, factors=no_goal.factors))
    assert seen.max() <= 1e-4
    labeled = np.concatenate([q.first.obs[:, 0], q.second.obs[:, 0]])
    labeled_f = np.concatenate([q.first.reward_factors[:, 0], q.second.reward_factors[:, 0]])
    on = score_steps(model, Steps(labeled, np.zeros((len(labeled), 1)), factors=labeled_f))
    assert abs(on.std(ddof=1) - 1.0) < 1e-3  # normalize: unit std over the labeled steps
    n_before = float(model.in_count)
    q2 = transition_pairs(steps, 300, np.random.default_rng(1), NAMES)
    model.fit(PreferenceDataset(q2, np.ones(300)), np.random.default_rng(1))
    assert float(model.in_count) == n_before + 600  # running over both rounds
    assert torch.isfinite(model.in_std[-2])  # the goal has varied now


def test_replay_buffer_without_kept_fields_is_a_clear_error():
    buf = EntropyReplayBuffer(8, gym.spaces.Box(-1, 1, (2,)), gym.spaces.Box(-1, 1, (1,)))
    with pytest.raises(RuntimeError, match=", ".join(KEPT_FIELDS)):
        replay_buffer_transitions(buf)
    empty = Transitions(*(np.zeros((1, 1)),) * 3, np.zeros(1), np.zeros((1, 2)), np.zeros(1))
    with pytest.raises(RuntimeError, match="a pair needs two"):
        transition_pairs(empty, 3, np.random.default_rng(0), NAMES)


def test_value_target_advantages_match_sb3_gae_on_the_true_reward():
    rng = np.random.default_rng(0)
    t, e = 16, 3
    buf = RolloutBuffer(
        t, gym.spaces.Box(-1, 1, (2,)), gym.spaces.Box(-1, 1, (1,)), "cpu", 0.95, 0.99, e
    )
    true = rng.normal(size=(t, e)).astype(np.float32)
    starts = rng.random((t, e)) < 0.2
    for i in range(t):
        buf.add(
            rng.normal(size=(e, 2)), rng.normal(size=(e, 1)), true[i], starts[i],
            torch.as_tensor(rng.normal(size=e)), torch.zeros(e),
        )  # fmt: skip
    last, dones = torch.as_tensor(rng.normal(size=e)), rng.random(e) < 0.3
    values = buf.values.copy()
    buf.compute_returns_and_advantage(last, dones)
    ours = gae_advantages(
        true, values, buf.episode_starts, last.numpy(), dones.astype(np.float32), 0.99, 0.95
    )
    np.testing.assert_allclose(ours, buf.advantages, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.xfail(
    reason="HERON's claim is not reproduced yet: with +exp=heron_mountaincar_costs the reversed "
    "ranking also reached the flag (1.00, seed 0, bench_heron 2026-12-06); docs/heron.md",
    strict=False,
)
def test_mountaincar_heron_reaches_the_flag_and_the_reversed_ranking_does_not(
    tmp_path, monkeypatch
):
    """HERON on MountainCarContinuous, 50k SAC steps, with pbrl's per-step-cost variant
    (+exp=heron_mountaincar_costs; the official setup, +exp=heron_mountaincar, does not reach
    the flag in pbrl's SAC: docs/heron.md) against the same run with the ranking reversed
    (action > goal): the first must reach the flag in most evaluation episodes, the second in
    few. Two 50k-step runs: 459 s + 438 s in bench_heron (2026-12-06, load 4-5). Measured
    there, the reversed ranking also reached the flag (1.00): the test is marked xfail (not
    strict) until a setup where the ranking decides the outcome passes it (docs/heron.md)."""
    from hydra import compose, initialize_config_dir

    from pbrl.recipes import run as run_config
    from pbrl.train import CONF_DIR

    monkeypatch.chdir(tmp_path)
    rates = {}
    for name, extra in (
        ("ranked", []),
        ("reversed", ["teacher.ranking=[action,goal]", "teacher.sigma=[1.0,0.0]"]),
    ):
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose(
                "config",
                overrides=[
                    "+exp=heron_mountaincar_costs", "seed=0", "eval.n_episodes=10",
                    "video.enabled=false", "progress_bar=false", *extra,
                ],
            )  # fmt: skip
        summary = run_config(cfg, tmp_path / name)
        rates[name] = summary["eval_terminated_fraction"]
    assert rates["ranked"] >= 0.5 and rates["reversed"] <= 0.2, rates


@pytest.mark.slow
def test_heron_on_segments_reaches_the_flag(tmp_path, monkeypatch):
    """+exp=heron_mountaincar_segments (the paper's comparisons: 400 pairs of 50-step
    segments labeled by goal > action) reaches the flag in most evaluation episodes at 50k
    SAC steps (bench_heron, 2026-12-06: 1.00 for every seed measured, 390-430 s a run on a
    loaded machine), where the transition pairs of +exp=heron_mountaincar stand still."""
    from hydra import compose, initialize_config_dir

    from pbrl.recipes import run as run_config
    from pbrl.train import CONF_DIR

    monkeypatch.chdir(tmp_path)
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                "+exp=heron_mountaincar_segments", "seed=0", "eval.n_episodes=10",
                "video.enabled=false", "progress_bar=false",
            ],
        )  # fmt: skip
    summary = run_config(cfg, tmp_path / "run")
    assert summary["eval_terminated_fraction"] >= 0.8, summary["eval_terminated_fraction"]


def test_a_one_step_segment_is_a_still_with_its_factor_values_on_the_page(tmp_path):
    """HERON's transition pairs on the labeling page: each side is a still of the state the
    step reached with its factor values written on it, held as long as a short clip."""
    pytest.importorskip("fastapi")
    import imageio.v3 as iio
    from fastapi.testclient import TestClient

    from pbrl.gui.clips import still_frames
    from pbrl.gui.server import create_app
    from pbrl.online.heron import pool_transitions
    from pbrl.online.wrappers import random_rollout_pool
    from pbrl.store import LabelStore

    frames = np.zeros((2, 64, 64, 3), np.uint8)
    frames[1, 40:] = 200  # the reached state
    still = still_frames(frames, {"reward_forward": 1.25, "reward_ctrl": -0.5}, fps=25)
    assert len(still) == 50 and (still == still[0]).all()  # one frame, held 2 s
    np.testing.assert_array_equal(still[0, 40:], frames[1, 40:])  # the reached state
    assert still[0, :20].any()  # the caption: white text on a black band

    pool = random_rollout_pool("Hopper-v5", 80)
    steps = pool_transitions(pool)
    assert steps.qpos is not None and steps.qpos.shape[1] == 2
    names = pool.factor_names
    q = transition_pairs(steps, 2, np.random.default_rng(0), names, "Hopper-v5", "heron")
    store = LabelStore(tmp_path / "labels.sqlite")
    store.add_queries(q, source="heron")
    app = create_app(store.path, prerender=0, codec="vp9", width=64, height=64)
    with TestClient(app) as c:
        held = c.post("/api/next", json={"annotator": "alice"}).json()["lease"]
        r = c.get(held["clips"]["left"])
        assert r.status_code == 200 and r.headers["content-type"] == "video/webm"
    shown = iio.imread(r.content, extension=".webm")
    assert len(shown) > 10
    assert np.abs(shown.astype(int) - shown[0].astype(int)).max() < 30  # a still
