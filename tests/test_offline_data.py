"""Offline datasets: episodes <-> flat arrays <-> Minari, segments, preference labels and files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pbrl.data import PreferenceDataset
from pbrl.data.offline import (
    DatasetNotFoundError,
    Episode,
    OfflineDataset,
    d4rl_reference,
    load_dataset,
    load_preferences,
    normalized_score,
    save_minari,
    save_preference_index,
    scripted_preferences,
)
from pbrl.teachers import ScriptedTeacher

OBS, ACT, NQ, NV = 11, 3, 6, 6  # Hopper-v5


def episode(
    rng: np.random.Generator, length: int, terminated: bool, reward: float = 1.0
) -> Episode:
    term, trunc = np.zeros(length, bool), np.zeros(length, bool)
    (term if terminated else trunc)[-1] = True
    qpos = rng.normal(size=(length + 1, NQ))
    return Episode(
        np.concatenate([qpos[:, 1:], rng.normal(size=(length + 1, NV))], 1),
        rng.uniform(-1, 1, (length, ACT)).astype(np.float32),
        np.full(length, reward) + 0.01 * np.arange(length),
        term,
        trunc,
        qpos,
        rng.normal(size=(length + 1, NV)),
    )


@pytest.fixture
def episodes() -> list[Episode]:
    rng = np.random.default_rng(0)
    # a long cut-off episode, a short fall, a short cut-off one, a long fall
    return [
        episode(rng, 12, False, 1.0),
        episode(rng, 3, True, 2.0),
        episode(rng, 4, False, 3.0),
        episode(rng, 8, True, 0.5),
    ]


def test_flat_arrays_keep_episodes_terminals_and_states(episodes: list[Episode]) -> None:
    data = OfflineDataset.from_episodes(episodes, env_id="Hopper-v5")
    assert len(data) == 27 and data.num_episodes == 4
    assert data.terminals.sum() == 2 and data.timeouts.sum() == 2
    assert data.terminals[14] and data.timeouts[11] and not data.terminals[11]
    np.testing.assert_allclose(data.episode_returns(), [e.ret for e in episodes], rtol=1e-6)
    for e, ep in enumerate(episodes):
        back = data.episode(e)
        np.testing.assert_array_equal(back.qpos, ep.qpos)
        np.testing.assert_allclose(back.observations, ep.observations, rtol=1e-6)
    # qpos of transition i is the state before its action
    i = 13  # second step of episode 1
    np.testing.assert_array_equal(
        data.qpos[data.state_index(np.array([i]))[0]], episodes[1].qpos[1]
    )


def test_window_starts_stay_in_one_episode(episodes: list[Episode]) -> None:
    data = OfflineDataset.from_episodes(episodes)
    starts = data.window_starts(5)
    # episode 0 (12 steps): 8 windows; episode 1 fell after 3: one padded; episode 2 was cut
    # after 4: none; episode 3 (8 steps): 4 windows
    assert starts.tolist() == list(range(8)) + [12] + [19, 20, 21, 22]
    seg = data.segments(starts, 5)
    assert seg.mask.sum(1).tolist() == [5] * 8 + [3] + [5] * 4
    assert seg.terminated.tolist() == [False] * 8 + [True, False, False, False, True]
    padded = seg[8]
    assert padded.true_reward[0, 3:].tolist() == [0.0, 0.0]
    assert padded.returns()[0] == pytest.approx(episodes[1].ret)
    # states: 0..3 of the episode, then its final state held
    np.testing.assert_array_equal(padded.qpos[0, :4], episodes[1].qpos[:4])
    np.testing.assert_array_equal(padded.qpos[0, 4:], np.repeat(episodes[1].qpos[3:], 2, 0))
    np.testing.assert_allclose(seg.final_obs[0], episodes[0].observations[5], rtol=1e-6)
    with pytest.raises(ValueError, match="did not terminate"):
        data.segments(np.array([15]), 5)  # episode 2 was cut off after 4 steps


def test_minari_round_trip(tmp_path, monkeypatch, episodes: list[Episode]) -> None:
    pytest.importorskip("minari", reason="needs the `offline` extra (minari[hdf5])")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    save_minari(
        "pbrl-test/hopper/unit-v0",
        episodes,
        "Hopper-v5",
        ref_min_score=-1.0,
        ref_max_score=99.0,
        metadata={"kind": "unit"},
    )
    data = load_dataset("pbrl-test/hopper/unit-v0")
    flat = OfflineDataset.from_episodes(episodes)
    for name in (
        "observations",
        "actions",
        "rewards",
        "next_observations",
        "terminals",
        "timeouts",
        "episode_starts",
        "qpos",
        "qvel",
    ):
        np.testing.assert_allclose(
            getattr(data, name), getattr(flat, name), rtol=1e-6, err_msg=name
        )
    assert data.env_id == "Hopper-v5" and data.dataset_id == "pbrl-test/hopper/unit-v0"
    assert (data.ref_min_score, data.ref_max_score) == (-1.0, 99.0)
    assert data.metadata["pbrl"] == {"kind": "unit"}
    assert data.metadata["d4rl_ref_max_score"] == pytest.approx(3234.3)
    assert data.normalized_score(49.0) == pytest.approx(50.0)
    assert data.d4rl_normalized_score(3234.3) == pytest.approx(100.0)
    with pytest.raises(FileExistsError):
        save_minari("pbrl-test/hopper/unit-v0", episodes, "Hopper-v5")
    with pytest.raises(DatasetNotFoundError, match="minari download pbrl-test/hopper/other-v0"):
        load_dataset("pbrl-test/hopper/other-v0")


def test_reference_scores() -> None:
    assert d4rl_reference("Walker2d-v5") == pytest.approx((1.629008, 4592.3))
    assert d4rl_reference("mujoco/halfcheetah/medium-v0") == pytest.approx((-280.178953, 12135.0))
    assert d4rl_reference("Reacher-v5") is None
    assert normalized_score(np.array([0.0, 10.0]), 0.0, 10.0).tolist() == [0.0, 100.0]


def test_scripted_preferences_follow_uni_rlhf(episodes: list[Episode]) -> None:
    data = OfflineDataset.from_episodes(episodes, env_id="Hopper-v5", dataset_id="unit")
    prefs = scripted_preferences(
        data, 50, 3, ScriptedTeacher(), np.random.default_rng(0), tie_threshold=0.5
    )
    q = prefs.queries
    assert len(prefs) == 50 and q.first.length == 3
    r1, r2 = q.first.returns(), q.second.returns()
    close = np.abs(r1 - r2) <= 0.5
    assert close.any() and (~close).any()
    assert (prefs.labels[close] == 0.5).all()
    assert (prefs.labels[~close] == (r2 > r1)[~close]).all()
    assert q.first.qpos is not None and q.first.qpos.shape == (50, 4, NQ)
    # each segment lies in one episode
    for s in (q.first, q.second):
        assert (s.start + s.mask.sum(1) <= data.episode_lengths[s.episode]).all()


def test_label_files_a_user_brings(tmp_path, episodes: list[Episode]) -> None:
    data = OfflineDataset.from_episodes(episodes, env_id="Hopper-v5", dataset_id="unit")
    prefs = scripted_preferences(data, 20, 4, ScriptedTeacher(), np.random.default_rng(1))
    # the pbrl format, as saved
    path = prefs.save(tmp_path / "labels.npz")
    back = load_preferences(path, data)
    assert back.queries.first.equals(prefs.queries.first)
    # the index form (CSV) names windows of the dataset
    csv_path = save_preference_index(tmp_path / "labels.csv", prefs, data)
    from_csv = load_preferences(csv_path, data)
    np.testing.assert_array_equal(from_csv.labels, prefs.labels)
    np.testing.assert_array_equal(from_csv.queries.second.obs, prefs.queries.second.obs)
    # JSON rows by episode and step, one skipped
    rows = [
        {"episode_1": 0, "step_1": 2, "episode_2": 3, "step_2": 0, "label": 1},
        {"episode_1": 3, "step_1": 4, "episode_2": 0, "step_2": 8, "label": None},
    ]
    (tmp_path / "labels.json").write_text(json.dumps(rows))
    from_json = load_preferences(tmp_path / "labels.json", data, segment_length=4)
    assert np.isnan(from_json.labels[1]) and from_json.labels[0] == 1.0
    assert from_json.queries.second.start.tolist() == [0, 8]
    assert len(from_json.trainable) == 1


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ("start_1,start_2,label\n0,19,2\n", "invalid preference label"),
        ("start_1,start_2,label\n0,16,1\n", "row 0: a 4-step window starting at transition 16"),
        ("start_1,label\n0,1\n", "missing column"),
        ("start_1,start_2,label\n0,x,1\n", "row 0: column 'start_2'"),
    ],
)
def test_malformed_label_files_are_named(
    tmp_path, episodes: list[Episode], rows: str, match: str
) -> None:
    data = OfflineDataset.from_episodes(episodes, dataset_id="unit")
    path = tmp_path / "bad.csv"
    path.write_text(rows)
    with pytest.raises(ValueError, match=match):
        load_preferences(path, data, segment_length=4)


def test_preference_dataset_format_is_unchanged(tmp_path, episodes: list[Episode]) -> None:
    data = OfflineDataset.from_episodes(episodes, env_id="Hopper-v5")
    prefs = scripted_preferences(data, 5, 3, ScriptedTeacher(), np.random.default_rng(2))
    loaded = PreferenceDataset.load(prefs.save(tmp_path / "p.npz"))
    assert loaded.queries.first.qpos is not None  # qpos/qvel travel for re-rendering
    assert loaded.queries.first.env_id == "Hopper-v5"
