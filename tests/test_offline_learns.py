"""Every offline method learns from preferences on a dataset where cloning it fails (slow).

The dataset: Reacher-v5 episodes from three scripted behaviors in equal parts: reaching
for the target (return about -12), reaching for the target mirrored through the base
(about -26), and spinning the arm with a constant torque (about -73). Cloning the mixture
averages the three and does worse than random; a method that uses the labels (or the true
reward, for the oracle) must pick out the first behavior. Measured when written (one seed,
normalized 0 = random -44, 100 = -7): BC -19; IQL-oracle 91; reward ensemble + IQL 82;
Preference Transformer + IQL 61; CPL 93; DTR 82; OPPO 93.

    python -m pytest -m slow tests/test_offline_learns.py
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from pbrl.data.offline import Episode, save_minari
from pbrl.recipes import run as run_config

pytest.importorskip("minari", reason="offline datasets need the `offline` extra (minari[hdf5])")
pytestmark = pytest.mark.slow

CONF = Path(__file__).resolve().parent.parent / "conf"
DATASET = "pbrl-test/reacher/mixed-v0"
RANDOM_RETURN, GOOD_RETURN = -44.0, -7.0  # uniform random policy; a well-tuned reacher
LINKS = (0.1, 0.11)

RUN = [
    f"dataset.id={DATASET}",
    "env=reacher",
    "total_timesteps=3000",
    "max_feedback=200",
    "feedback.segment_length=25",
    "dataset.tie_threshold=0.5",
    "eval.n_episodes=10",
    "eval.every=0",
    "checkpoint_every=3000",
    "eval.test_queries=200",
    "video.enabled=false",
    "progress_bar=false",
    "reward.max_epochs=30",
]
# Smaller sequence models and batches than the papers' so each run takes about a minute.
METHODS = {
    "offline_iql_oracle_hopper": [],
    "offline_iql_hopper": [],
    "offline_pt_iql_hopper": [],
    # BC warm-up for a fifth of the run; this mixture wants the paper-code BC weight (0.5):
    # with the hopper exp's 2.0 the BC term wins and CPL scored 14.5 here.
    "offline_cpl_hopper": [
        "algo.bc_steps=600",
        "algo.bc_coeff=0.5",
        "algo.hidden=256",
        "algo.batch_size=16",
    ],
    "offline_dtr_hopper": [
        "algo.embed_dim=64",
        "algo.n_layers=1",
        "algo.n_heads=1",
        "algo.context=10",
        "algo.batch_size=32",
        "algo.critic_layers=2",
    ],
    "offline_oppo_hopper": [
        "algo.encoder_embed=64",
        "algo.encoder_layers=1",
        "algo.encoder_heads=2",
        "algo.policy_embed=64",
        "algo.policy_layers=1",
        "algo.context=10",
        "algo.batch_size=16",
        "algo.dataset_segments=16",
    ],
}


def reach(obs: np.ndarray, mirrored: bool) -> np.ndarray:
    """Jacobian-transpose PD control of the fingertip toward the target (or its mirror)."""
    c1, c2, s1, s2 = obs[:4]
    c12, s12 = c1 * c2 - s1 * s2, s1 * c2 + c1 * s2
    l1, l2 = LINKS
    jac = np.array([[-l1 * s1 - l2 * s12, -l2 * s12], [l1 * c1 + l2 * c12, l2 * c12]])
    target, tip_minus_target = obs[4:6], obs[8:10]
    error = -target - (tip_minus_target + target) if mirrored else -tip_minus_target
    return 50 * jac.T @ error - 0.1 * obs[6:8]


def record(behavior: str, seed: int) -> Episode:
    env = gym.make("Reacher-v5")
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    data = env.unwrapped.data  # type: ignore[attr-defined]
    observations, actions, rewards = [obs], [], []
    qpos, qvel = [data.qpos.copy()], [data.qvel.copy()]
    done = False
    while not done:
        base = np.array([0.8, -0.8]) if behavior == "spin" else reach(obs, behavior == "mirror")
        act = np.clip(base + 0.2 * rng.standard_normal(2), -1, 1).astype(np.float32)
        obs, reward, terminated, truncated, _ = env.step(act)
        done = terminated or truncated
        observations.append(obs)
        actions.append(act)
        rewards.append(float(reward))
        qpos.append(data.qpos.copy())
        qvel.append(data.qvel.copy())
    env.close()
    n = len(actions)
    return Episode(
        np.array(observations),
        np.array(actions),
        np.array(rewards),
        np.zeros(n, bool),
        np.eye(n, dtype=bool)[-1],
        np.array(qpos),
        np.array(qvel),
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("minari")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(root))
        behaviors = ["reach", "mirror", "spin"] * 40
        episodes = [record(b, seed) for seed, b in enumerate(behaviors)]
        mean = {
            b: np.mean(
                [e.rewards.sum() for e, eb in zip(episodes, behaviors, strict=True) if eb == b]
            )
            for b in set(behaviors)
        }
        assert mean["reach"] > mean["mirror"] > mean["spin"]  # the labels have something to say
        save_minari(DATASET, episodes, "Reacher-v5", RANDOM_RETURN, GOOD_RETURN)
    return root


def run(exp: str, store: Path, run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(store))
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"+exp={exp}", *RUN, *METHODS.get(exp, [])])
    return run_config(cfg, run_dir)


def test_cloning_the_mixture_fails(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    summary = run("offline_bc_hopper", store, tmp_path, monkeypatch)
    assert summary["eval_normalized_score_mean"] < 30


@pytest.mark.parametrize("exp", sorted(METHODS))
def test_method_picks_out_the_good_behavior(
    exp: str, store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    summary = run(exp, store, tmp_path, monkeypatch)
    assert summary["eval_normalized_score_mean"] > 50, summary["eval_true_return_mean"]
    if summary["reward_model_test_accuracy"] is not None:
        assert summary["reward_model_test_accuracy"] > 0.75
