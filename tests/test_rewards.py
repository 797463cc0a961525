import numpy as np
import pytest
import torch
from conftest import make_segments

from pbrl.data import PreferenceDataset, Queries, Segments
from pbrl.query import QuerySelector, disagreement_scores, entropy_scores
from pbrl.rewards import RewardEnsemble, RewardModelConfig
from pbrl.teachers import ScriptedTeacher


def labeled(n, seed):
    q = Queries(make_segments(n, seed=seed), make_segments(n, seed=seed + 100))
    return PreferenceDataset(q, ScriptedTeacher()(q))


def test_bradley_terry_loss_matches_hand_computation():
    """One gradient step's reported loss equals -[y log p + (1-y) log(1-p)] computed by hand."""
    torch.manual_seed(0)
    model = RewardEnsemble(
        4,
        2,
        RewardModelConfig(
            n_members=2, hidden=8, n_layers=1, output="linear", max_epochs=1, batch_size=8
        ),
    )
    ds = labeled(3, seed=0)
    ds.labels[:] = [1.0, 0.0, 0.5]
    ds.queries.first.mask[0, 5:] = False  # padded steps must not count
    with torch.no_grad():  # fit() normalizes inputs with statistics of both halves first
        model.fit_normalization(Segments.concatenate([ds.queries.first, ds.queries.second]))
        r1, r2 = model.segment_returns(ds.queries.first), model.segment_returns(ds.queries.second)
        p = torch.sigmoid(r2 - r1).numpy()
    y = ds.labels
    expected = -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()
    metrics = model.fit(ds, np.random.default_rng(0))  # loss is measured before the update
    assert metrics["loss"] == pytest.approx(expected, rel=1e-5)
    assert metrics["epochs"] == 1


def test_masked_steps_do_not_change_predicted_return():
    model = RewardEnsemble(4, 2)
    s = make_segments(2)
    s.mask[:, 6:] = False
    before = model.segment_returns(s).detach().clone()
    s.obs[:, 6:] += 100.0
    assert torch.allclose(model.segment_returns(s), before)


def test_training_reaches_accuracy_and_generalizes():
    rng = np.random.default_rng(0)
    model = RewardEnsemble(4, 2, RewardModelConfig(max_epochs=40))
    metrics = model.fit(labeled(300, seed=1), rng)
    assert metrics["train_accuracy"] > 0.9
    assert model.accuracy(labeled(300, seed=7)) > 0.8


def test_stops_at_accuracy_threshold():
    model = RewardEnsemble(4, 2, RewardModelConfig(max_epochs=200, acc_threshold=0.8))
    metrics = model.fit(labeled(200, seed=3), np.random.default_rng(0))
    assert metrics["train_accuracy"] > 0.8 and metrics["epochs"] < 200


def test_max_updates_caps_a_rounds_gradient_steps():
    data = labeled(200, seed=3)  # 200 pairs / batch 16 = 13 steps per epoch
    capped = RewardModelConfig(batch_size=16, max_epochs=50, acc_threshold=1.0, max_updates=20)
    metrics = RewardEnsemble(4, 2, capped).fit(data, np.random.default_rng(0))
    assert metrics["updates"] == 20 and metrics["epochs"] == 2  # stopped inside epoch 2
    free = RewardModelConfig(batch_size=16, max_epochs=3, acc_threshold=1.0)
    metrics = RewardEnsemble(4, 2, free).fit(data, np.random.default_rng(0))
    assert metrics["updates"] == 3 * 13 and metrics["epochs"] == 3


def test_skipped_labels_are_not_trained_on():
    ds = labeled(4, seed=0)
    ds.labels[:] = np.nan
    metrics = RewardEnsemble(4, 2).fit(ds, np.random.default_rng(0))
    assert metrics["epochs"] == 0


def test_save_load_round_trip(tmp_path):
    model = RewardEnsemble(4, 2, RewardModelConfig(n_members=2, use_action=False))
    model.fit(labeled(50, seed=2), np.random.default_rng(0))
    model.save(tmp_path / "rm.pt")
    back = RewardEnsemble.load(tmp_path / "rm.pt")
    obs, act = np.ones((5, 4), np.float32), np.zeros((5, 2), np.float32)
    np.testing.assert_allclose(back.predict(obs, act), model.predict(obs, act))
    assert back.config == model.config


def test_normalize_standardizes_the_reward_not_the_fit(tmp_path):
    """With ``normalize`` the per-step reward of the labeled steps has mean 0 and std
    ``normalize_to``; the fitted model (segment returns, so accuracy) is the raw one, and a
    saved model keeps the scale. A model saved before the option loads as raw."""
    data = labeled(100, seed=4)
    q = data.queries
    steps = Segments.concatenate([q.first, q.second])
    obs, act = steps.obs[steps.mask], steps.act[steps.mask]

    def fitted(**kw):
        torch.manual_seed(0)
        cfg = RewardModelConfig(n_members=2, hidden=16, n_layers=1, output="linear", **kw)
        model = RewardEnsemble(4, 2, cfg)
        model.fit(data, np.random.default_rng(0))
        return model

    raw, norm = fitted(), fitted(normalize=True, normalize_to=2.0)
    r = norm.predict(obs, act)
    assert r.mean() == pytest.approx(0.0, abs=1e-4) and r.std(ddof=1) == pytest.approx(
        2.0, rel=1e-4
    )
    torch.testing.assert_close(norm.segment_returns(q.first), raw.segment_returns(q.first))
    expected = (raw.predict(obs, act) - float(norm.shift)) / float(norm.scale)
    np.testing.assert_allclose(r, expected, rtol=1e-5, atol=1e-5)
    assert abs(raw.predict(obs, act).std() - 2.0) > 0.2  # the raw scale is not the target

    norm.save(tmp_path / "rm.pt")
    np.testing.assert_allclose(RewardEnsemble.load(tmp_path / "rm.pt").predict(obs, act), r)
    blob = torch.load(tmp_path / "rm.pt", weights_only=False)
    for name in ("shift", "scale"):
        del blob["state"][name]
    blob["config"].pop("normalize"), blob["config"].pop("normalize_to")
    torch.save(blob, tmp_path / "old.pt")
    np.testing.assert_allclose(
        RewardEnsemble.load(tmp_path / "old.pt").predict(obs, act),
        raw.predict(obs, act),
        rtol=1e-5,
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="normalize_to"):
        RewardModelConfig(normalize_to=0.0)


@pytest.mark.parametrize(
    "settings",
    [{}, {"output": "linear", "normalize": True}, {"use_action": False}, {"n_layers": 0}],
)
def test_a_few_rows_are_scored_in_numpy_as_torch_scores_them(settings):
    """``predict`` on up to 64 rows (an agent's step) takes a numpy path over views of the
    weights: it equals the torch reward before and after a fit, after ``load_state_dict`` and
    in a deep copy (whose views must read the copy's weights)."""
    import copy

    torch.manual_seed(0)
    model = RewardEnsemble(4, 2, RewardModelConfig(n_members=3, hidden=16, **settings))
    rng = np.random.default_rng(0)
    obs, act = rng.normal(size=(64, 4)), rng.normal(size=(64, 2)).astype(np.float32)

    def check(m):
        slow = m.reward(torch.as_tensor(obs), torch.as_tensor(act)).detach().numpy()
        fast = m.predict(obs, act)
        assert fast.dtype == np.float32 and fast.shape == (64,)
        np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(m.predict(obs[:1], act[:1]), slow[:1], rtol=1e-5, atol=1e-6)

    check(model)
    before = model.predict(obs, act)
    model.fit(labeled(50, seed=2), rng)  # the optimizer writes the weights in place
    assert not np.allclose(model.predict(obs, act), before)
    check(model)
    other = RewardEnsemble(4, 2, model.config)
    other.predict(obs, act)  # its views made before the load
    other.load_state_dict(model.state_dict())
    check(other)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(0.5)
    check(twin)
    check(model)


def test_disagreement_and_entropy_scores_by_hand():
    probs = np.array([[0.5, 0.9, 0.1], [0.5, 0.1, 0.1]])  # [E=2, N=3]
    np.testing.assert_allclose(disagreement_scores(probs), [0.0, 0.4, 0.0])
    h = lambda p: -(p * np.log(p) + (1 - p) * np.log(1 - p))  # noqa: E731
    np.testing.assert_allclose(entropy_scores(probs), [np.log(2), h(0.9), h(0.1)])


def test_selector_keeps_most_uncertain_candidates():
    model = RewardEnsemble(4, 2)
    pool = labeled(200, seed=5).queries
    drawn = []

    def sample(k):
        drawn.append(k)
        return pool[np.arange(k)]

    picked = QuerySelector("disagreement", large_batch=10)(
        sample, 10, model, np.random.default_rng(0)
    )
    assert drawn == [100] and len(picked) == 10
    scores = disagreement_scores(
        model.preference_probs(pool.first[np.arange(100)], pool.second[np.arange(100)])
    )
    chosen = disagreement_scores(model.preference_probs(picked.first, picked.second))
    assert chosen.min() >= np.sort(scores)[-10] - 1e-9
    with pytest.raises(ValueError, match="choose one of"):
        QuerySelector("bogus")
