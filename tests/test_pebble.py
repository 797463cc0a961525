"""PEBBLE pieces: k-NN state entropy, intrinsic rewards at sample time, critic reset."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from fake_rewards import FirstObsReward
from stable_baselines3 import SAC

from pbrl.online.pebble import EntropyReplayBuffer, knn_distance, reset_critic


def test_knn_distance_by_hand():
    ref = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    # each row of x is in ref (distance 0 to itself); k=1 -> nearest other point
    d = knn_distance(ref, ref, k=1, chunk=2)  # chunked path must agree
    assert d.tolist() == [1.0, 1.0, 2.0, 4.0]
    d2 = knn_distance(ref, ref, k=2)
    assert d2.tolist() == [3.0, 2.0, 3.0, 6.0]


def test_intrinsic_reward_is_knn_distance_over_running_std():
    space = gym.spaces.Box(-10, 10, (1,))
    buf = EntropyReplayBuffer(8, space, gym.spaces.Box(-1, 1, (1,)), device="cpu", entropy_k=1)
    for x in [0.0, 1.0, 3.0, 7.0]:
        buf.add(
            np.array([[x]]),
            np.array([[x]]),
            np.zeros((1, 1)),
            np.array([5.0]),
            np.array([False]),
            [{}],
        )
    samples = buf._get_samples(np.array([0, 1, 2, 3]))
    assert samples.rewards.flatten().tolist() == [5.0] * 4  # intrinsic off: stored reward
    buf.intrinsic = True
    samples = buf._get_samples(np.array([0, 1, 2, 3]))
    dist = np.array([1.0, 1.0, 2.0, 4.0])  # next_obs == obs here
    expected = dist / (np.sqrt(buf.entropy_stats.var) + 1e-8)
    np.testing.assert_allclose(samples.rewards.flatten().numpy(), expected, rtol=1e-5)


def test_reset_critic_reinitializes_critic_and_target_only():
    model = SAC("MlpPolicy", "Pendulum-v1", learning_starts=10, seed=0, device="cpu")
    model.learn(40)
    actor = [p.detach().clone() for p in model.actor.parameters()]
    critic = [p.detach().clone() for p in model.critic.parameters()]
    reset_critic(model)
    assert all(torch.equal(a, b) for a, b in zip(actor, model.actor.parameters(), strict=True))
    assert not any(
        torch.equal(a, b)
        for a, b in zip(critic, model.critic.parameters(), strict=True)
        if a.ndim == 2
    )
    for a, b in zip(model.critic.parameters(), model.critic_target.parameters(), strict=True):
        assert torch.equal(a, b)
    assert model.critic.optimizer.state == {} or len(model.critic.optimizer.state) == 0
    model.learn(20)  # still trains


@pytest.mark.parametrize("k", [1, 3])
def test_knn_matches_bruteforce(k):
    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(k))
    d = torch.cdist(x, x).sort(dim=1).values[:, k]
    torch.testing.assert_close(knn_distance(x, x, k, chunk=7), d)


class DoublingScorer:
    """Stands in for PreferenceVecEnv(defer=True): reward = 2 x the step's qpos, batches kept."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.reported: list[np.ndarray] = []

    def score(self, steps) -> np.ndarray:  # type: ignore[no-untyped-def]
        self.batches.append(len(steps.obs))
        return 2.0 * steps.qpos[:, 0]

    def add_scored(self, rewards: np.ndarray, dones: np.ndarray, infos=None) -> None:  # type: ignore[no-untyped-def]
        self.reported.append(np.array(rewards, dtype=float))


def deferred_buffer(size: int, every: int) -> tuple[EntropyReplayBuffer, DoublingScorer]:
    box = gym.spaces.Box(-np.inf, np.inf, (1,))
    buf = EntropyReplayBuffer(
        size, box, gym.spaces.Box(-1, 1, (1,)), device="cpu", step_fields={"qpos": 1, "qvel": 1}
    )
    scorer = DoublingScorer()
    buf.defer_scoring(scorer, every)  # type: ignore[arg-type]
    return buf, scorer


def add_steps(buf: EntropyReplayBuffer, values) -> None:  # type: ignore[no-untyped-def]
    for x in values:
        info = {"step_qpos": np.array([x]), "step_qvel": np.array([0.0])}
        buf.add(np.array([[x]]), np.array([[x]]), np.zeros((1, 1)), np.zeros(1),
                np.array([False]), [info])  # fmt: skip


def test_deferred_scoring_scores_in_batches_and_never_samples_unscored_steps():
    buf, scorer = deferred_buffer(size=100, every=4)
    add_steps(buf, [1.0, 2.0, 3.0])
    assert scorer.batches == [] and buf.pending == 3
    add_steps(buf, [4.0])  # the fourth step completes the batch: one call for four steps
    assert scorer.batches == [4] and buf.pending == 0
    np.testing.assert_array_equal(buf.rewards[:4, 0], [2.0, 4.0, 6.0, 8.0])
    np.testing.assert_array_equal(scorer.reported[0][:, 0], [2.0, 4.0, 6.0, 8.0])
    add_steps(buf, [5.0, 6.0])  # pending: stored with a placeholder, never drawn
    np.random.seed(0)  # noqa: NPY002 (SB3 samples from the global RNG)
    drawn = buf.sample(2000).observations.flatten().numpy()
    assert set(drawn.tolist()) == {1.0, 2.0, 3.0, 4.0}
    assert buf.rewards[4, 0] == 0.0 and buf.pending == 2
    buf.score_pending()  # e.g. before a checkpoint
    np.testing.assert_array_equal(buf.rewards[:6, 0], [2.0, 4.0, 6.0, 8.0, 10.0, 12.0])
    assert scorer.batches == [4, 2]


def test_deferred_scoring_after_the_buffer_wrapped_around():
    buf, scorer = deferred_buffer(size=6, every=3)
    add_steps(buf, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])  # 7, 8 overwrite 1, 2; 7, 8 pending
    assert buf.full and buf.pos == 2 and buf.pending == 2
    np.random.seed(1)  # noqa: NPY002
    drawn = set(buf.sample(2000).observations.flatten().tolist())
    assert drawn == {3.0, 4.0, 5.0, 6.0}
    add_steps(buf, [9.0])  # overwrites 3: batch 7, 8, 9 scored across the wrap
    assert scorer.batches == [3, 3, 3] and buf.pending == 0
    np.testing.assert_array_equal(buf.rewards[:, 0], [14.0, 16.0, 18.0, 8.0, 10.0, 12.0])


def test_deferred_steps_stay_unscored_under_the_entropy_reward_until_relabeled():
    buf, scorer = deferred_buffer(size=50, every=2)
    buf.intrinsic = True  # PEBBLE's pre-training: the stored reward is never read
    add_steps(buf, [1.0, 2.0])
    assert scorer.batches == [] and np.isnan(scorer.reported[0]).all()

    add_steps(buf, [3.0])  # pending when the first reward update relabels the buffer
    buf.relabel(FirstObsReward())  # reward = the observation
    np.testing.assert_allclose(buf.rewards[:3, 0], [1.0, 2.0, 3.0])
    assert buf.pending == 0 and scorer.reported[-1][:, 0].tolist() == [3.0]


def test_pebble_relabels_with_the_standardized_reward(tmp_path, monkeypatch):
    """``pebble_halfcheetah_50k`` (``reward.normalize``) end to end on a cheaper env: SAC's
    buffer holds the reward as handed to RL (standardized) of the actions the env took
    (InvertedPendulum's are in [-3, 3]; SAC stores them in [-1, 1]), both for the steps
    relabeled after the last round and those scored as taken; the labeled steps' rewards
    have mean 0 and std 1 under the final model; each round logs the reward's scale."""
    import csv
    import pickle

    from conftest import compose_exp

    from pbrl.data import PreferenceDataset, Segments
    from pbrl.recipes import run as run_config
    from pbrl.rewards import RewardEnsemble

    monkeypatch.chdir(tmp_path)
    cfg = compose_exp(
        "pebble_halfcheetah_50k", ["env.id=InvertedPendulum-v5", "algo.unsupervised_steps=0"]
    )
    run_config(cfg, tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoint"
    model = RewardEnsemble.load(ckpt / "reward_model.pt")
    assert model.config.normalize and float(model.scale) != 1.0
    with open(ckpt / "replay_buffer.pkl", "rb") as f:
        buffer = pickle.load(f)
    n = buffer.buffer_size if buffer.full else buffer.pos
    obs, act = buffer.observations[:n, 0], 3.0 * buffer.actions[:n, 0]
    np.testing.assert_allclose(buffer.rewards[:n, 0], model.predict(obs, act), rtol=1e-4, atol=1e-5)
    q = PreferenceDataset.load(ckpt / "preferences.npz").queries
    steps = Segments.concatenate([q.first, q.second])
    r = model.predict(steps.obs[steps.mask], steps.act[steps.mask])
    assert abs(r.mean()) < 1e-3 and r.std(ddof=1) == pytest.approx(1.0, rel=1e-3)
    rows = list(csv.DictReader((tmp_path / "run" / "tb" / "progress.csv").open()))
    stds = [float(x["reward_model/reward_std"]) for x in rows if x.get("reward_model/reward_std")]
    assert stds and all(0.0 < s < 10.0 for s in stds)
