"""HERON's teacher: the level-by-level comparator against hand-computed cases, margins,
directions, skips; reward factors of every factor-exposing env; one-line errors."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import pbrl.envs  # noqa: F401  (registers pbrl/ environments)
from pbrl.data import Queries, Segments
from pbrl.envs.spec import EnvSpec
from pbrl.teachers.heron import HeronTeacher, heron_compare
from pbrl.teachers.scripted import TeacherConfigError

NAN = np.nan


def test_comparator_decides_at_the_first_level_that_separates():
    z1 = np.array([[1.0, 0.0], [1.0, 5.0], [1.0, 5.0], [1.0, 5.0], [3.0, 0.0]])
    z2 = np.array([[2.0, 0.0], [1.0, 7.0], [1.0, 3.0], [1.0, 5.0], [2.5, 9.0]])
    labels, level = heron_compare(z1, z2, np.array([0.5, 1.0]), np.array([True, True]))
    # 1: level 0 prefers 2 (diff 1 > 0.5); 2: tie at 0, level 1 prefers 2; 3: level 1 prefers 1;
    # 4: tied everywhere -> skip; 5: level-0 gap 0.5 is not > 0.5, level 1 decides for 2
    np.testing.assert_array_equal(labels, [1.0, 1.0, 0.0, NAN, 1.0])
    np.testing.assert_array_equal(level, [0, 1, 1, -1, 1])


def test_comparator_direction_flag_and_zero_margin():
    z1, z2 = np.array([[1.0], [2.0], [2.0]]), np.array([[2.0], [1.0], [2.0]])
    labels, _ = heron_compare(z1, z2, np.array([0.0]), np.array([False]))  # lower is better
    np.testing.assert_array_equal(labels, [0.0, 1.0, NAN])


def segments(
    factors: np.ndarray, names: tuple[str, ...], mask: np.ndarray | None = None
) -> Segments:
    n, t, _ = factors.shape
    return Segments(
        obs=np.zeros((n, t, 1), np.float32),
        act=np.zeros((n, t, 1), np.float32),
        true_reward=factors.sum(-1).astype(np.float32),
        mask=np.ones((n, t), bool) if mask is None else mask,
        final_obs=np.zeros((n, 1), np.float32),
        terminated=np.zeros(n, bool),
        reward_factors=factors.astype(np.float32),
        factor_names=names,
    )


def test_teacher_margins_are_sigma_times_the_batch_std_of_segment_totals():
    names = ("reward_forward", "reward_ctrl", "reward_survive")
    # per-step factors over 2 steps; totals: first (2, -1, 2), second (4, -1, 2) etc.
    a = np.array([[[1, -0.5, 1], [1, -0.5, 1]], [[0, 0, 1], [0, 0, 0]]], float)
    b = np.array([[[2, -0.5, 1], [2, -0.5, 1]], [[0, -1, 1], [0, -1, 0]]], float)
    q = Queries(segments(a, names), segments(b, names))
    teacher = HeronTeacher(["survive", "reward_forward", "ctrl"], sigma=[1.0, 0.1, 0.0])
    labels = teacher(q)
    # survive totals: 2, 1 | 2, 1 -> tied within std (0.5) at level 0 for both pairs;
    # forward: 2 vs 4 -> 2 > 0.1 * std([2, 0, 4, 0]) = 0.166 -> second; 0 vs 0 -> tie;
    # ctrl: 0 vs -2 -> first preferred (higher is better), margin 0
    np.testing.assert_array_equal(labels, [1.0, 0.0])
    np.testing.assert_array_equal(teacher.last_levels, [1, 2])
    fractions = teacher.level_fractions()
    assert fractions == {
        "level0_survive": 0.0,
        "level1_forward": 0.5,
        "level2_ctrl": 0.5,
        "undecided": 0.0,
    }
    # every batch so far, for summary.json: a second call with one pair undecided
    teacher(Queries(segments(a[:1], names), segments(a[:1], names)))
    described = teacher.describe()
    assert described["ranking"] == ["survive", "forward", "ctrl"]
    assert described["higher_is_better"] == [True, True, True]
    assert described["decided_by_level"] == {"survive": 0.0, "forward": 1 / 3, "ctrl": 1 / 3}
    assert described["undecided"] == pytest.approx(1 / 3)


def test_mean_aggregate_and_padded_steps():
    names = ("reward_goal",)
    mask = np.array([[True, True], [True, False]])
    a = segments(np.array([[[1.0], [1.0]], [[1.0], [5.0]]]), names, mask)
    b = segments(np.array([[[1.0], [1.0]], [[1.0], [1.0]]]), names)
    # padded step ignored: totals equal (2 vs 2; 1 vs 2 -> second), means 1 vs 1 -> tie
    assert np.array_equal(
        HeronTeacher(["goal"], sigma=0.0)(Queries(a, b)), [NAN, 1.0], equal_nan=True
    )
    means = HeronTeacher(["goal"], sigma=0.0, aggregate="mean")(Queries(a, b))
    assert np.isnan(means).all()


def test_running_margin_remembers_earlier_batches():
    names = ("reward_goal",)
    wide = Queries(segments(np.array([[[0.0]]]), names), segments(np.array([[[100.0]]]), names))
    close = Queries(segments(np.array([[[0.0]]]), names), segments(np.array([[[1.0]]]), names))
    running = HeronTeacher(["goal"], sigma=0.5, margin="running")
    assert running(wide)[0] == 1.0
    assert np.isnan(running(close)[0])  # 1 < 0.5 x std of everything seen
    assert HeronTeacher(["goal"], sigma=0.5)(close)[0] == 1.0  # the batch alone: 1 > 0.25


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"ranking": []}, "ranking is empty"),
        ({"ranking": ["forward", "forward"]}, "names a factor twice"),
        ({"ranking": ["forward", "ctrl"], "sigma": [1.0, 1.0, 1.0]}, "3 values for 2"),
        ({"ranking": ["forward"], "sigma": -1.0}, "use σ >= 0"),
        ({"ranking": ["forward"], "higher_is_better": [True, False]}, "2 values for 1"),
        ({"ranking": ["forward"], "margin": "pool"}, "teacher.margin"),
        ({"ranking": ["speed"], "env": EnvSpec("HalfCheetah-v5")}, "its factors are ctrl, forward"),
    ],
)
def test_bad_settings_are_one_line(kwargs, match):
    with pytest.raises(TeacherConfigError, match=match):
        HeronTeacher(**kwargs)


@pytest.mark.parametrize(
    "env_id,factors",
    [
        ("HalfCheetah-v5", {"reward_forward", "reward_ctrl"}),
        ("Hopper-v5", {"reward_forward", "reward_ctrl", "reward_survive"}),
        ("Walker2d-v5", {"reward_forward", "reward_ctrl", "reward_survive"}),
        ("Ant-v5", {"reward_forward", "reward_ctrl", "reward_contact", "reward_survive"}),
        ("pbrl/MountainCarContinuous-v0", {"reward_goal", "reward_action"}),
        ("pbrl/Pendulum-v1", {"reward_angle", "reward_velocity", "reward_torque"}),
    ],
)
def test_every_factor_env_reports_factors_that_add_up_to_its_reward(env_id, factors):
    env = gym.make(env_id)
    env.reset(seed=0)
    env.action_space.seed(0)
    for _ in range(100):
        _, reward, terminated, truncated, info = env.step(env.action_space.sample())
        named = {k for k in info if k.startswith("reward_")}
        assert named == factors
        assert sum(info[k] for k in named) == pytest.approx(reward, abs=1e-6)
        if terminated or truncated:
            env.reset()


@pytest.mark.parametrize("sim", ["mujoco_batch", "mujoco_warp"])
def test_batched_backends_report_the_same_factors_as_gymnasium(sim):
    """Every batched task puts gymnasium's reward terms in each sub-env's info, adding up to
    the step's reward, so rankings work on any backend."""
    from pbrl.sim import BATCHED_ENV_IDS, make_vec_env
    from pbrl.sim.probe import probe_env

    if sim == "mujoco_warp":
        pytest.importorskip("mujoco_warp")
    for env_id in BATCHED_ENV_IDS:
        expected = set(probe_env(env_id).factor_names)
        venv = make_vec_env(sim, env_id, 2, seed=0)
        venv.reset()
        rng = np.random.default_rng(0)
        for _ in range(20):
            act = rng.uniform(-1, 1, (2, *venv.action_space.shape))
            _, reward, _, infos = venv.step(act)
            for i, info in enumerate(infos):
                named = {k for k in info if k.startswith("reward_")}
                assert named == expected, env_id
                assert sum(info[k] for k in named) == pytest.approx(float(reward[i]), abs=1e-4)
        venv.close()


@pytest.mark.parametrize("env_id", ["Hopper-v5", "pbrl/MountainCarContinuous-v0"])
def test_evaluation_reports_factor_totals_that_add_up_to_the_return(env_id):
    from pbrl.evaluation import evaluate

    result = evaluate(env_id, None, n_episodes=2, seed=0)
    totals = result.factor_totals
    assert set(totals) >= ({"goal", "action"} if "Mountain" in env_id else {"forward", "ctrl"})
    summed = np.sum([totals[k] for k in totals], axis=0)
    np.testing.assert_allclose(summed, result.true_returns, rtol=1e-6, atol=1e-6)
    assert len(result.terminated) == 2
    if "Mountain" in env_id:  # the goal factor is 100 exactly when the episode terminated
        np.testing.assert_array_equal(np.array(totals["goal"]) == 100.0, result.terminated)


def test_prefppo_runs_on_heron_labels(tmp_path, monkeypatch):
    """HERON drives PrefPPO (the hopper exp, official ranking, transition pairs from the
    trajectory pool, at a tiny budget)."""
    from conftest import compose_exp

    from pbrl.recipes import run as run_config

    monkeypatch.chdir(tmp_path)
    cfg = compose_exp(
        "heron_hopper",
        ["algo=prefppo", "n_envs=2", "algo.kwargs.n_steps=32", "algo.kwargs.batch_size=32"],
    )
    summary = run_config(cfg, tmp_path / "run")
    assert summary["algo"] == "prefppo" and summary["num_labels"] > 0
    assert summary["teacher"]["ranking"] == ["forward", "survive", "ctrl"]
    pairs = summary["transition_pairs"]
    assert pairs["rankings_given"] == 1 and pairs["reward_updates"] >= 1
    assert summary["num_labels"] == pairs["comparisons_induced"] <= pairs["pairs_drawn"]
    levels = summary["teacher"]["decided_by_level"]
    assert sum(levels.values()) + summary["teacher"]["undecided"] == pytest.approx(1.0)
    assert set(summary["eval_factor_totals"]) >= {"forward", "ctrl", "survive"}


# Pendulum: "keep the pole up > keep it still > spend little torque". Trained with the
# ranking's directions, the policy must swing up and hold the pole (angle total near 0); with
# the angle's direction reversed ("lower is better": the teacher prefers the pole down) it
# must not. A run that ignored the ranking could not pass both.
PENDULUM = [
    "env=pendulum",
    "teacher=heron",
    "teacher.ranking=[angle,velocity,torque]",
    "teacher.sigma=[0.5,1.0,1.0]",
    "algo=pebble",
    "reward=small",
    "total_timesteps=12000",
    "max_feedback=400",
    "feedback.every=1000",
    "feedback.first_at=1000",
    "feedback.queries_per_round=50",
    "algo.unsupervised_steps=1000",
    "algo.kwargs.learning_starts=1000",
    "algo.kwargs.buffer_size=12000",
    "algo.kwargs.learning_rate=1e-3",  # the RL Zoo's SAC setting for Pendulum
    "algo.kwargs.policy_kwargs.net_arch=[64,64]",
    "eval.n_episodes=5",
    "video.enabled=false",
    "progress_bar=false",
]


@pytest.mark.slow
def test_heron_ranking_steers_pendulum(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir

    from pbrl.recipes import run as run_config
    from pbrl.train import CONF_DIR

    monkeypatch.chdir(tmp_path)
    totals = {}
    for name, directions in (("ranked", "[true,true,true]"), ("reversed", "[false,true,true]")):
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=[*PENDULUM, f"teacher.higher_is_better={directions}"])
        summary = run_config(cfg, tmp_path / name)
        totals[name] = summary["eval_factor_totals"]["angle"]
        if name == "ranked":
            random = summary["random_true_return_mean"]
            assert summary["eval_true_return_mean"] > random + 0.5 * abs(random), summary
    # angle totals are -θ² summed over 200 steps: ~-400 hanging down, ~0 held up
    assert totals["ranked"] > totals["reversed"] + 100, totals
