"""Personalized rewards (VPL): the latent reward, the population teacher, the two-goal task,
the z-conditioned IQL policy, vpl_info queries and bench_vpl."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from pbrl.data import PreferenceDataset, Queries
from pbrl.data.offline import OfflineDataset, load_dataset
from pbrl.errors import ConfigError
from pbrl.offline import vpl_iql
from pbrl.offline.common import LearnedReward
from pbrl.query import QuerySelector, information_gain, select_for_user
from pbrl.recipes import run as run_config
from pbrl.rewards import RewardEnsemble, VPLConfig, VPLReward, load_reward_model
from pbrl.rewards.dispatch import has_latent, latent_of, relabel_dataset
from pbrl.rewards.vpl import kl_beta, kl_divergence
from pbrl.teachers.population import PopulationTeacher
from pbrl.teachers.scripted import TeacherConfigError
from pbrl.train import CONF_DIR

pytest.importorskip("minari", reason="offline datasets need the `offline` extra (minari[hdf5])")

ROOT = Path(__file__).resolve().parent.parent
TWO_USERS = [{"id": "alice", "weights": {"goal_a": 1.0}}, {"id": "bob", "weights": {"goal_b": 1.0}}]
TINY_VPL = VPLConfig(hidden=16, n_layers=2, latent_dim=4, context_size=4, updates=3)


def load_script(name: str):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def goals(tmp_path_factory: pytest.TempPathFactory) -> OfflineDataset:  # type: ignore[misc]
    """A small two-goal dataset (scripted goal seeking + exploration), built here."""
    root = tmp_path_factory.mktemp("minari")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(root))
        make = load_script("make_dataset")
        cfg = make.parse_args(
            ["--env", "twogoal", "--kinds", "goals", "--size", "3000", "--namespace", "vpltest"]
        )
        make.build(cfg)
        data = load_dataset("vpltest/twogoal/goals-v0")
        yield data


def labeled(data: OfflineDataset, n: int, seed: int = 0) -> PreferenceDataset:
    pop = PopulationTeacher(TWO_USERS, rng=np.random.default_rng(seed))
    return pop.label(data.sample_queries(n, 10, np.random.default_rng(seed)))


# -- the dataset and the population ------------------------------------------------------------


def test_goals_dataset_reaches_both_goals_and_keeps_factors(goals: OfflineDataset) -> None:
    assert goals.env_id == "pbrl/TwoGoal-v0" and len(goals) == 3000
    assert goals.factor_names == ("reward_goal_a", "reward_goal_b")
    assert goals.factors is not None
    ends = goals.episode_starts[1:] - 1
    final = goals.next_observations[ends, :2]
    at_a = np.linalg.norm(final - [-0.3, 0.3], axis=1) < 0.08
    at_b = np.linalg.norm(final - [0.3, 0.3], axis=1) < 0.08
    assert at_a.mean() > 0.2 and at_b.mean() > 0.2  # both goals are in the data
    # the stored factors are the distances of the reached positions
    np.testing.assert_allclose(
        goals.factors[:, 0],
        -np.linalg.norm(goals.next_observations[:, :2] - [-0.3, 0.3], axis=1),
        atol=1e-5,
    )
    seg = goals.segments(goals.window_starts(10)[:3], 10)
    assert seg.reward_factors is not None and seg.reward_factors.shape == (3, 10, 2)


def test_population_members_answer_in_turns_by_their_own_preference(goals: OfflineDataset) -> None:
    pop = PopulationTeacher(TWO_USERS, rng=np.random.default_rng(0))
    q = goals.sample_queries(40, 10, np.random.default_rng(1))
    prefs = pop.label(q)
    assert sorted(set(prefs.annotator.tolist())) == ["alice", "bob"]
    assert np.sum(prefs.annotator == "alice") == 20  # dealt out in turns
    for who, col in (("alice", 0), ("bob", 1)):
        rows = np.flatnonzero(prefs.annotator == who)
        r1 = q.first.reward_factors[rows, :, col].sum(1)  # type: ignore[index]
        r2 = q.second.reward_factors[rows, :, col].sum(1)  # type: ignore[index]
        np.testing.assert_array_equal(prefs.labels[rows], np.where(r2 > r1, 1.0, 0.0))
    # the asynchronous interface keeps the ids
    pop.submit(q[:6])
    got = pop.collect()
    assert got is not None and set(got.annotator.tolist()) == {"alice", "bob"}


def test_population_bad_members_are_one_error_line() -> None:
    for members, match in [
        ([], "empty"),
        ([{"weights": {"goal_a": 1}}], "no id"),
        ([{"id": "a"}, {"id": "a"}], "twice"),
        ([{"id": "a", "colour": "red"}], "unknown key"),
    ]:
        with pytest.raises(TeacherConfigError, match=match) as exc:
            PopulationTeacher(members)
        assert "\n" not in str(exc.value)


def test_population_ids_survive_store_export_and_datasets(goals: OfflineDataset, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from pbrl.store import LabelStore

    pop = PopulationTeacher(TWO_USERS, rng=np.random.default_rng(0))
    q = goals.sample_queries(6, 10, np.random.default_rng(2))
    answers = {u: pop.label(q, annotator=u) for u in pop.ids}
    store = LabelStore(tmp_path / "labels.sqlite")
    store.add_queries(q, needed=2)
    for u in pop.ids:  # each member answers every pair under its own id
        while (lease := store.lease(u)) is not None:
            row = int(np.flatnonzero(q.query_id == lease.query_id)[0])
            store.answer(lease.lease_id, u, answers[u].labels[row])
    per = store.export("per-annotator")
    assert per is not None and len(per) == 12
    for u in pop.ids:
        rows = np.flatnonzero(per.annotator == u)
        order = [int(np.flatnonzero(q.query_id == i)[0]) for i in per.queries.query_id[rows]]
        np.testing.assert_array_equal(per.labels[rows], answers[u].labels[order])
    back = PreferenceDataset.load(per.save(tmp_path / "export.npz"))
    assert back.annotator.tolist() == per.annotator.tolist()
    # and the VPL model groups them by those ids
    from pbrl.rewards.vpl import annotator_groups

    assert {k: len(v) for k, v in annotator_groups(back).items()} == {"alice": 6, "bob": 6}


# -- the reward model --------------------------------------------------------------------------


def test_kl_term_and_annealing_match_hand_computed_values() -> None:
    mean = torch.tensor([[1.0, 0.0]])
    log_var = torch.tensor([[0.0, math.log(2.0)]])
    # 0.5 * [(1 + 1 - 1 - 0) + (0 + 2 - 1 - ln 2)]
    expected = 0.5 * (1.0 + 1.0 - math.log(2.0))
    assert kl_divergence(mean, log_var).item() == pytest.approx(expected, rel=1e-6)
    assert kl_divergence(torch.zeros(1, 3), torch.zeros(1, 3)).item() == 0.0
    assert kl_beta(0, 2.0, 100) == 0.0
    assert kl_beta(50, 2.0, 100) == pytest.approx(1.0)  # half-way: half the weight
    assert kl_beta(25, 2.0, 100) == pytest.approx(2.0 * (1 - math.cos(math.pi / 4)) / 2)
    assert kl_beta(100, 2.0, 100) == kl_beta(500, 2.0, 100) == 2.0
    assert kl_beta(0, 2.0, 0) == 2.0  # no annealing


def test_encoder_is_permutation_invariant_over_a_set(goals: OfflineDataset) -> None:
    torch.manual_seed(0)
    data = labeled(goals, 16)
    model = VPLReward(4, 2, TINY_VPL)
    model.fit(data, np.random.default_rng(0))
    alice = data[np.flatnonzero(data.annotator == "alice")]
    perm = np.random.default_rng(3).permutation(len(alice))
    m1, v1 = model.posterior(alice)
    m2, v2 = model.posterior(alice[perm])
    np.testing.assert_allclose(m1, m2, atol=1e-5)
    np.testing.assert_allclose(v1, v2, atol=1e-5)
    # a different set is a different posterior (the test could fail)
    assert not np.allclose(m1, model.infer(data[np.flatnonzero(data.annotator == "bob")]))


def test_identical_and_contradicting_users_give_finite_latents(goals: OfflineDataset) -> None:
    torch.manual_seed(0)
    q = goals.sample_queries(8, 10, np.random.default_rng(4))
    same = PreferenceDataset(q, np.ones(8), np.full(8, "stubborn"))
    twice = Queries(
        *(type(q.first).concatenate([s, s]) for s in (q.first, q.second))  # each pair twice
    )
    contra = PreferenceDataset(twice, np.r_[np.zeros(8), np.ones(8)], np.full(16, "fickle"))
    model = VPLReward(4, 2, TINY_VPL)
    model.fit(PreferenceDataset.concatenate([same, contra]), np.random.default_rng(0))
    for pairs in (same, contra):
        mean, log_var = model.posterior(pairs)
        assert np.isfinite(mean).all() and np.isfinite(log_var).all()
    assert set(model.latents) == {"stubborn", "fickle"}


def test_bad_input_is_one_error_line(goals: OfflineDataset) -> None:
    data = labeled(goals, 12)
    model = VPLReward(4, 2, VPLConfig(hidden=8, context_size=16, updates=1))
    with pytest.raises(ConfigError, match="larger than annotator 'alice'") as exc:
        model.fit(data, np.random.default_rng(0))  # 6 labels each, context 16
    assert "\n" not in str(exc.value)
    anonymous = PreferenceDataset(data.queries, data.labels)  # no annotator ids
    with pytest.raises(ConfigError, match="annotator id") as exc:
        VPLReward(4, 2, TINY_VPL).fit(anonymous, np.random.default_rng(0))
    assert "\n" not in str(exc.value)
    with pytest.raises(ConfigError, match="unknown user 'carol'.*alice, bob") as exc:
        vpl_iql.user_labels(data, "carol")
    assert "\n" not in str(exc.value)
    with pytest.raises(ConfigError, match="fewer than the context size"):
        vpl_iql.context_set(data, "alice", 16, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="reward=vpl"):
        latent_of(RewardEnsemble(4, 2), data)


def test_save_load_round_trip_and_dispatch(goals: OfflineDataset, tmp_path) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    data = labeled(goals, 16)
    model = VPLReward(4, 2, TINY_VPL)
    model.fit(data, np.random.default_rng(0))
    model.save(tmp_path / "vpl.pt")
    back = load_reward_model(tmp_path / "vpl.pt")
    assert isinstance(back, VPLReward) and has_latent(back) and not has_latent(RewardEnsemble)
    np.testing.assert_allclose(back.infer(data[:8]), model.infer(data[:8]), atol=1e-6)
    np.testing.assert_allclose(back.latent_of("bob"), model.latent_of("bob"))
    r = relabel_dataset(back, goals, 10)  # the prior-mean user's reward
    assert r.shape == (len(goals),) and np.isfinite(r).all()
    with pytest.raises(ConfigError, match="unknown user"):
        back.latent_of("carol")
    bounded = VPLReward(4, 2, VPLConfig(output="tanh", latent_dim=4))
    r = bounded.reward(100 * torch.randn(64, 4), torch.zeros(64, 2), 100 * torch.randn(4))
    assert r.abs().max() <= 1.0
    with pytest.raises(ConfigError, match="reward.output"):
        VPLReward(4, 2, VPLConfig(output="relu"))


# -- queries -----------------------------------------------------------------------------------


def test_information_gain_is_zero_where_latents_agree() -> None:
    probs = np.array([[0.9, 0.9, 0.5], [0.1, 0.9, 0.5]])
    h = lambda p: -(p * np.log(p) + (1 - p) * np.log(1 - p))  # noqa: E731
    np.testing.assert_allclose(information_gain(probs), [h(0.5) - h(0.9), 0.0, 0.0], atol=1e-9)


def test_vpl_info_picks_pairs_the_users_disagree_on(goals: OfflineDataset) -> None:
    torch.manual_seed(0)
    data = labeled(goals, 200)
    model = VPLReward(4, 2, VPLConfig(hidden=32, latent_dim=8, updates=150, kl_anneal_steps=50))
    model.fit(data, np.random.default_rng(0))
    rng = np.random.default_rng(5)
    cand = goals.sample_queries(300, 10, rng)
    pop = PopulationTeacher(TWO_USERS)
    disagree = pop.label(cand, "alice").labels != pop.label(cand, "bob").labels
    picked = QuerySelector("vpl_info", 10)(lambda k: cand[np.arange(k)], 30, model, rng)
    chosen = np.isin(cand.query_id, picked.query_id)
    assert disagree[chosen].mean() > disagree.mean() + 0.1
    rows = select_for_user(model, cand, None, 30, rng)  # a new user: latents from the prior
    assert len(set(rows.tolist())) == 30
    with pytest.raises(ConfigError, match="vpl_info.*reward=vpl"):
        QuerySelector("vpl_info", 2)(lambda k: cand[np.arange(k)], 2, RewardEnsemble(4, 2), rng)


# -- the whole run -------------------------------------------------------------------------------

TINY_RUN = [
    "total_timesteps=20",
    "max_feedback=24",
    "reward.hidden=16",
    "reward.latent_dim=4",
    "reward.context_size=4",
    "reward.updates=4",
    "algo.hidden=16",
    "algo.batch_size=16",
    "algo.latents_per_user=2",
    "eval.n_episodes=2",
    "eval.random_episodes=1",
    "eval.test_queries=8",
    "checkpoint_every=10",
    "video.width=48",
    "video.height=48",
    "progress_bar=false",
]


def compose_vpl(extra: list[str]):  # type: ignore[no-untyped-def]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=["+exp=vpl_twogoal", *TINY_RUN, *extra])


def test_vpl_experiment_runs_tiny_and_evaluates_each_user(goals, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    did = ["dataset.id=vpltest/twogoal/goals-v0"]
    summary = run_config(compose_vpl(did), tmp_path / "run")
    assert summary["algo"] == "vpl_iql" and summary["num_labels"] == 24
    users = summary["users"]
    assert set(users) == {"alice", "bob"}
    for res in users.values():
        assert set(res["reached"]) == {"goal_a", "goal_b"} and len(res["z"]) == 4
        assert Path(res["video"]).exists()
    labels = PreferenceDataset.load(tmp_path / "run" / "preferences.npz")
    assert sorted(set(labels.annotator.tolist())) == ["alice", "bob"]
    # the trained run, evaluated again for one annotator
    again = run_config(compose_vpl([*did, "user=bob"]), tmp_path / "run")
    assert list(again["users"]) == ["bob"] and again["users"]["bob"]["z"] == users["bob"]["z"]
    with pytest.raises(ConfigError, match="unknown user 'carol'"):
        run_config(compose_vpl([*did, "user=carol"]), tmp_path / "run")
    # labels a user brings without an annotator column
    rows = ["start_1,start_2,length,label"]
    starts = goals.window_starts(10)
    rows += [f"{starts[i]},{starts[-1 - i]},10,{i % 2}" for i in range(24)]
    (tmp_path / "anonymous.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(ConfigError, match="annotator id") as exc:
        run_config(
            compose_vpl([*did, f"dataset.preferences={tmp_path / 'anonymous.csv'}"]),
            tmp_path / "run2",
        )
    assert "\n" not in str(exc.value)


# -- learning ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_latent_separates_users_who_disagree(goals: OfflineDataset) -> None:
    """Fails if z is ignored: on pairs the two users label differently, one reward (one z for
    both) gets at most one of them right, so the two accuracies sum to at most 1."""
    torch.manual_seed(0)
    data = labeled(goals, 400)
    model = VPLReward(4, 2, VPLConfig(hidden=64, updates=400, kl_anneal_steps=200))
    model.fit(data, np.random.default_rng(0))
    pop = PopulationTeacher(TWO_USERS)
    test = goals.sample_queries(500, 10, np.random.default_rng(9))
    ya, yb = pop.label(test, "alice").labels, pop.label(test, "bob").labels
    rows = np.flatnonzero((ya != yb) & np.isin(ya, (0.0, 1.0)) & np.isin(yb, (0.0, 1.0)))
    acc = {}
    for u, y in (("alice", ya), ("bob", yb)):
        z = vpl_iql.context_set(data, u, 16, np.random.default_rng(1))
        acc[u] = model.user_accuracy(PreferenceDataset(test[rows], y[rows]), model.infer(z))
    assert acc["alice"] + acc["bob"] > 1.6, acc
    shared = model.infer(data)  # one latent for both: at most one user served
    one = [model.user_accuracy(PreferenceDataset(test[rows], y[rows]), shared) for y in (ya, yb)]
    assert sum(one) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.slow
def test_z_conditioned_policy_reaches_each_users_own_goal(goals: OfflineDataset) -> None:
    """Fails if the policy ignores z: one policy on s ⊕ z must end at alice's goal under her
    latent and at bob's under his (a policy blind to z goes to one place for both)."""
    torch.manual_seed(0)
    data = labeled(goals, 400)
    model = VPLReward(4, 2, VPLConfig(hidden=64, updates=600))
    model.fit(data, np.random.default_rng(0))
    hidden = goals.with_rewards(np.full(len(goals), np.nan, np.float32))
    reward = LearnedReward(model, relabel_dataset(model, hidden, 10))
    cfg = vpl_iql.VPLIQLConfig(hidden=128)  # conf/algo/vpl_iql.yaml's reward_scale: none
    assert cfg.reward_scale == "none"
    steps = 5000
    trainer = vpl_iql.build(cfg, hidden, data, reward, steps, torch.device("cpu"), 0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        trainer.train(trainer.sample(gen))
    ends = {}
    for user, goal in (("alice", "goal_a"), ("bob", "goal_b")):
        ev = vpl_iql.rollout_user(trainer.agent_for(user), "pbrl/TwoGoal-v0", {}, 5, 100)
        assert ev.reached[goal] >= 0.8, (user, ev.reached)
        ends[user] = ev.reached
    # each ends at their own goal, so the policy told the two latents apart
    assert ends["alice"]["goal_b"] == 0.0 and ends["bob"]["goal_a"] == 0.0


# -- the benchmark -------------------------------------------------------------------------------


def test_bench_vpl_reuses_finished_runs(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    bench = load_script("bench_vpl")
    calls: list[tuple[str, int]] = []

    def fake_method(method, data, seed, s):  # type: ignore[no-untyped-def]
        calls.append((method, seed))
        return {u: {"disagree_acc": 0.5, "goal_rate": 0.0, "labels": s.labels} for u in bench.USERS}

    def fake_queries(selection, data, seed, s):  # type: ignore[no-untyped-def]
        calls.append((selection, seed))
        return {str(b): {u: 0.5 for u in bench.USERS} for b in s.query_budgets}

    monkeypatch.setattr(bench, "dataset", lambda out, s: None)
    monkeypatch.setattr(bench, "run_method", fake_method)
    monkeypatch.setattr(bench, "run_queries", fake_queries)
    args = ["--quick", "--seeds", "0", "1", "--out", str(tmp_path)]
    bench.main(args)
    assert len(calls) == 2 * (3 + 2)
    bench.main(args)  # everything reused
    assert len(calls) == 10
    bench.main(["--seeds", "0", "--out", str(tmp_path)])  # other settings: run again
    assert len(calls) == 15
    out = json.loads((tmp_path / "vpl.json").read_text())
    assert set(out) == {"vpl", "bt_pooled", "bt_per_user"}
    assert set(out["vpl"]["0"]) == {"alice", "bob"}
    assert set(out["vpl"]["0"]["bob"]) == {"disagree_acc", "goal_rate", "labels"}


# -- the labeling page ---------------------------------------------------------------------------


def test_page_shows_each_annotators_z_spread_after_each_answer(goals, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A reward=vpl model announced in the store (by the human teacher): every progress the
    page's API returns carries the annotator's posterior spread, updated after each answer."""
    pytest.importorskip("fastapi", reason="the web stack is not installed: pip install -e .[gui]")
    pytest.importorskip("httpx", reason="pip install httpx")
    from fastapi.testclient import TestClient

    from pbrl.gui.server import create_app
    from pbrl.store import LabelStore
    from pbrl.teachers.human import HumanTeacher

    torch.manual_seed(0)
    model = VPLReward(4, 2, TINY_VPL)
    model.fit(labeled(goals, 24), np.random.default_rng(0))
    q = goals.sample_queries(5, 10, np.random.default_rng(3))
    store = LabelStore(tmp_path / "labels.sqlite")
    store.add_queries(q, source="vpl-page", needed=2)
    pop = PopulationTeacher(TWO_USERS, rng=np.random.default_rng(0))
    truth = {u: pop.label(q, annotator=u).labels for u in pop.ids}
    teacher = HumanTeacher(store=str(store.path))
    with TestClient(create_app(store.path, prerender=0)) as c:
        # no latent reward announced (or another kind of model): no spread
        assert c.get("/api/status", params={"annotator": "alice"}).json()["progress"]["z"] is None
        teacher.set_reward_model(RewardEnsemble(4, 2))
        assert "latent_reward" not in store.meta()
        teacher.set_reward_model(model)
        assert Path(store.meta()["latent_reward"]).is_file()
        prior = c.get("/api/status", params={"annotator": "alice"}).json()["progress"]["z"]
        assert prior == {"spread": 1.0, "labels": 0}
        assert c.get("/api/status").json()["progress"]["z"] is None  # no annotator: none
        lease = c.post("/api/next", json={"annotator": "alice"}).json()["lease"]
        spreads = []
        for k in range(1, 6):
            row = int(np.flatnonzero(q.query_id == lease["query_id"])[0])
            label = "skip" if k == 3 else truth["alice"][row]
            r = c.post(
                "/api/answer",
                json={"annotator": "alice", "lease_id": lease["lease_id"], "label": label},
            ).json()
            z, lease = r["progress"]["z"], r["lease"]
            decided = k - (k >= 3)  # the skip tells nothing about z
            mine = store.annotator_labels("alice")
            assert mine is not None and len(mine) == k and z["labels"] == decided
            _, log_var = model.posterior(mine)
            assert z["spread"] == pytest.approx(float(np.exp(0.5 * log_var).mean()), abs=1e-4)
            assert 0.0 < z["spread"] and math.isfinite(z["spread"])
            spreads.append(z["spread"])
        assert len(set(spreads)) > 1  # it moves as she answers
        # bob's latent is his own: nothing yet
        bob = c.post("/api/next", json={"annotator": "bob"}).json()["progress"]["z"]
        assert bob == {"spread": 1.0, "labels": 0}
        undone = c.post("/api/undo", json={"annotator": "alice"}).json()["progress"]["z"]
        assert undone["labels"] == 3 and undone["spread"] == spreads[-2]
    teacher.close()
