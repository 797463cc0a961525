import numpy as np
import pytest
from conftest import make_segments

from pbrl.data import PreferenceDataset, Queries, Segments, check_labels


def test_segment_returns_respect_mask_and_myopia():
    s = make_segments(2, t=3)
    s.true_reward[:] = [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]
    s.mask[1, 2] = False
    assert s.returns().tolist() == [6.0, 3.0]
    # gamma weights later steps more: 0.5^2*1 + 0.5*2 + 3
    assert s.returns(0.5)[0] == pytest.approx(0.25 + 1.0 + 3.0)


def test_indexing_keeps_batch_and_metadata():
    s = make_segments(5)
    s.env_id = "X-v0"
    one = s[3]
    assert len(one) == 1 and one.env_id == "X-v0"
    np.testing.assert_array_equal(one.obs[0], s.obs[3])


def test_shape_errors_are_clear():
    s = make_segments(3)
    with pytest.raises(ValueError, match="rows"):
        Segments(
            obs=s.obs,
            act=s.act[:2],
            true_reward=s.true_reward,
            mask=s.mask,
            final_obs=s.final_obs,
            terminated=s.terminated,
        )


def test_labels_validated():
    assert np.isnan(check_labels([0, 1, 0.5, np.nan])[3])
    with pytest.raises(ValueError, match="invalid preference label"):
        check_labels([0, 2])


def test_preference_dataset_round_trip(tmp_path):
    first, second = make_segments(6, seed=1), make_segments(6, seed=2)
    for s in (first, second):
        s.reward_factors = np.stack([s.true_reward, -s.true_reward], -1)
        s.factor_names = ("reward_a", "reward_b")
        s.qpos = np.random.default_rng(0).normal(size=(6, s.length + 1, 3))
        s.qvel = np.zeros((6, s.length + 1, 2))
        s.env_id, s.run = "HalfCheetah-v5", "run-1"
    labels = np.array([0, 1, 0.5, np.nan, 1, 0])
    ds = PreferenceDataset(Queries(first, second), labels, np.array(list("abcdef")))
    path = ds.save(tmp_path / "prefs.npz")
    back = PreferenceDataset.load(path)
    assert back.queries.first.equals(first) and back.queries.second.equals(second)
    np.testing.assert_array_equal(back.labels, labels)  # NaN-aware
    np.testing.assert_array_equal(back.queries.query_id, ds.queries.query_id)
    np.testing.assert_array_equal(back.annotator, ds.annotator)
    np.testing.assert_array_equal(back.answered_at, ds.answered_at)
    assert back.trainable.tolist() == [0, 1, 2, 4, 5]


def test_load_rejects_foreign_files(tmp_path):
    bad = tmp_path / "x.npz"
    np.savez(bad, a=np.zeros(2))
    with pytest.raises(ValueError, match="not a pbrl preference dataset"):
        PreferenceDataset.load(bad)
    with pytest.raises(FileNotFoundError):
        PreferenceDataset.load(tmp_path / "missing.npz")
