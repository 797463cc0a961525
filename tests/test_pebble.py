"""PEBBLE pieces: k-NN state entropy, intrinsic rewards at sample time, critic reset."""

import gymnasium as gym
import numpy as np
import pytest
import torch
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
