import numpy as np

from pbrl.data.pool import TrajectoryPool


def fill(pool, steps, term_every=7, trunc_every=10):
    for t in range(steps):
        term = np.array([t % term_every == term_every - 1, False])
        trunc = np.array([False, t % trunc_every == trunc_every - 1])
        state = np.full((2, 2), float(t))
        pool.add(
            np.full((2, 3), t),
            np.zeros((2, 1)),
            np.ones(2),
            np.full((2, 3), t + 1),
            term,
            trunc,
            np.ones((2, 1)),
            state,
            state,
            state + 1,
            state + 1,
        )


def test_windows_never_cross_episodes_and_pad_only_after_termination():
    pool = TrajectoryPool(2, 200, 3, 1, ("reward_a",), (2, 2))
    fill(pool, 60)
    segs = pool.sample_segments(500, 5, np.random.default_rng(0))
    short = ~segs.mask.all(1)
    assert short.any() and segs.terminated[short].all()  # only terminated episodes are padded
    # obs inside a window are consecutive steps of one episode
    o = segs.obs[..., 0]
    valid_pairs = segs.mask[:, 1:]
    assert np.all((np.diff(o, axis=1) == 1) | ~valid_pairs)
    assert np.all(segs.true_reward[~segs.mask] == 0)
    # re-render states: T+1 states, the last valid one followed by the terminal state
    i = np.flatnonzero(short)[0]
    k = segs.mask[i].sum()
    assert segs.qpos.shape[1] == 6
    assert segs.qpos[i, k, 0] == segs.qpos[i, k - 1, 0] + 1
    assert np.all(segs.qpos[i, k:, 0] == segs.qpos[i, k, 0])
    assert segs.final_obs[i, 0] == segs.obs[i, k - 1, 0] + 1


def test_truncated_windows_rejected():
    pool = TrajectoryPool(2, 200, 3, 1)
    fill(pool, 60)
    segs = pool.sample_segments(300, 8, np.random.default_rng(1))
    assert segs.mask.all(1)[~segs.terminated].all()


def test_ring_buffer_only_keeps_capacity(tmp_path):
    pool = TrajectoryPool(2, 40, 3, 1)
    fill(pool, 100)
    segs = pool.sample_segments(200, 3, np.random.default_rng(2))
    assert segs.obs[..., 0].min() >= 80  # oldest 80 steps per env were overwritten
    pool.save(tmp_path / "pool.npz")
    other = TrajectoryPool(2, 40, 3, 1)
    other.load(tmp_path / "pool.npz")
    assert other.written.tolist() == pool.written.tolist()
    np.testing.assert_array_equal(other.obs, pool.obs)


def test_not_enough_data_is_a_clear_error():
    pool = TrajectoryPool(1, 100, 3, 1)
    import pytest

    with pytest.raises(RuntimeError, match="collect more steps"):
        pool.sample_segments(5, 10, np.random.default_rng(0))


def test_start_new_episodes_cuts_windows():
    pool = TrajectoryPool(2, 200, 3, 1)
    fill(pool, 12, term_every=1000, trunc_every=1000)
    pool.start_new_episodes()
    fill(pool, 12, term_every=1000, trunc_every=1000)
    segs = pool.sample_segments(300, 4, np.random.default_rng(3))
    o = segs.obs[..., 0]
    assert np.all(np.diff(o, axis=1) == 1)  # no window runs from step 11 of one run into 0
    assert len(np.unique(segs.episode)) == 4
