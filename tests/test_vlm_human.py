"""A VLM first, people for the rest (``teacher=vlm_then_human``), and VLM suggestions on the
labeling page: the store's suggestions (schema 3, migrated from 2), VLM-human agreement in
``pbrl.label stats``, the page's API and the page in Chromium, and the routing teacher against
the mock OpenAI-compatible server (real HTTP) with a scripted person posting to the page's API.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("openai")
pytest.importorskip("fastapi", reason="the web stack is not installed: pip install -e .[gui]")
httpx = pytest.importorskip("httpx", reason="pip install httpx")

from fastapi.testclient import TestClient  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.errors import ConfigCompositionException  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from support.vlm import RecordingMockVLM  # noqa: E402
from test_human_loop import ScriptedPerson, free_port  # noqa: E402  (tests/ is on sys.path)
from test_label_store import pair_queries  # noqa: E402
from test_vlm_teacher import TINY_ONLINE, make_teacher, run_train  # noqa: E402

from pbrl.data import PreferenceDataset, Queries  # noqa: E402
from pbrl.data.pool import TrajectoryPool  # noqa: E402
from pbrl.data.preferences import oracle_labels  # noqa: E402
from pbrl.gui.server import BackgroundServer, create_app  # noqa: E402
from pbrl.label import main as label_main  # noqa: E402
from pbrl.online.wrappers import random_rollout_pool  # noqa: E402
from pbrl.rewards import RewardEnsemble, RewardModelConfig  # noqa: E402
from pbrl.run import build_teacher, wait_policy  # noqa: E402
from pbrl.store import SCHEMA_VERSION, BadInput, LabelStore, Suggestion  # noqa: E402
from pbrl.teachers.base import WaitPolicy, wait_for  # noqa: E402
from pbrl.teachers.human import HumanTeacher  # noqa: E402
from pbrl.teachers.scripted import TeacherConfigError  # noqa: E402
from pbrl.teachers.vlm_human import VLMThenHuman  # noqa: E402
from pbrl.train import CONF_DIR  # noqa: E402

ANALYSIS = "1. Image 1 shows the arm far from the target.\n2. Image 2 shows it touching it."


@pytest.fixture(scope="module")
def reacher_pool() -> TrajectoryPool:
    return random_rollout_pool("Reacher-v5", 200, seed=3)


def suggest(qid: str, label: float, analysis: str = ANALYSIS) -> Suggestion:
    return Suggestion(qid, label, analysis, str(label), "mock-vlm")


# -- the store: schema 3, suggestions, agreement -------------------------------------------------
def test_a_schema_2_store_is_migrated_in_one_transaction(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    db = LabelStore(path)
    queries = pair_queries([1.0, 2.0], [0.0, 3.0])
    db.add_queries(queries, source="run-a")
    lease = db.lease("alice")
    assert lease is not None
    db.answer(lease.lease_id, "alice", "left")
    db.close()
    # As pbrl wrote it before suggestions existed: schema 2, no suggestions table.
    conn = sqlite3.connect(path)
    conn.executescript("DROP TABLE suggestions; UPDATE meta SET value='2' WHERE key='schema';")
    conn.close()

    def schema_and_tables() -> tuple[str, set[str]]:
        with sqlite3.connect(path) as c:
            version = c.execute("SELECT value FROM meta WHERE key='schema'").fetchone()[0]
            tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        return version, tables

    ro = LabelStore(path, readonly=True)  # reports read an old store without changing it
    assert ro.suggestions() == [] and ro.suggestion(lease.query_id) is None
    assert ro.stats()["vlm_human"]["suggestions"] == 0
    ro.close()
    assert schema_and_tables()[0] == "2" and "suggestions" not in schema_and_tables()[1]

    real = LabelStore._migrate

    def crash(self: LabelStore, conn: sqlite3.Connection, version: int) -> None:
        real(self, conn, version)
        raise RuntimeError("power cut")

    with pytest.MonkeyPatch.context() as mp:  # a crash mid-migration changes nothing
        mp.setattr(LabelStore, "_migrate", crash)
        with pytest.raises(RuntimeError, match="power cut"):
            LabelStore(path)
    assert schema_and_tables()[0] == "2" and "suggestions" not in schema_and_tables()[1]

    migrated = LabelStore(path)
    version, tables = schema_and_tables()
    assert version == str(SCHEMA_VERSION) and "suggestions" in tables
    assert migrated.counts()["total"] == 2 and len(migrated.answers()) == 1  # data untouched
    assert migrated.run("run-a").env_id == "InvertedPendulum-v5"
    migrated.set_suggestions([suggest(lease.query_id, 1.0)])
    assert migrated.suggestion(lease.query_id) == Suggestion(
        lease.query_id, 1.0, ANALYSIS, "1.0", "mock-vlm", migrated.suggestions()[0].created_at
    )


def test_suggestions_are_kept_beside_answers_and_stats_report_agreement(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "labels.sqlite"
    db = LabelStore(path)
    queries = pair_queries([1.0, 5.0, 2.0, 0.0, 4.0], [3.0, 0.0, 2.5, 1.0, 1.0])
    ids = [str(q) for q in queries.query_id]
    # written before the queries (the teacher's order): the page never shows a pair without it
    db.set_suggestions(
        [
            suggest(ids[0], 1.0),  # person agrees (right)
            suggest(ids[1], 1.0),  # person overrides: left
            suggest(ids[2], math.nan),  # unsure: not compared
            suggest(ids[3], 0.0),  # person skips: not compared
        ]
    )  # ids[4]: no suggestion
    db.add_queries(queries, source="run-a")
    for label in ("right", "left", "right", "skip", "left"):
        lease = db.lease("alice")
        assert lease is not None
        db.answer(lease.lease_id, "alice", label)
    unsure, overridden = db.suggestion(ids[2]), db.suggestion(ids[1])
    assert db.suggestion(ids[4]) is None and unsure is not None and math.isnan(unsure.label)
    assert overridden is not None and overridden.word == "right"
    assert {a["query_id"]: a["label"] for a in db.answers()}[ids[1]] == 0.0  # both kept

    v = db.stats()["vlm_human"]
    assert v["suggestions"] == 4 and v["unsure"] == 1 and v["answered_by_people"] == 4
    assert v["both_decided"] == 2 and v["agree"] == 1 and v["agreement"] == 0.5
    # the oracle: ids[0] right (3 > 1), ids[1] left (5 > 0), ids[3] right (1 > 0)
    assert v["vlm_vs_oracle"] == {"n": 3, "agreement": pytest.approx(1 / 3)}
    # the people's answers stay the only annotators (a suggestion is not an answer)
    assert set(db.stats()["annotators"]) == {"alice"}

    label_main(["stats", "--store", str(path)])
    out = capsys.readouterr().out
    assert "VLM suggestions: 4 pairs (1 unsure), 4 answered by people" in out
    assert "VLM vs people: 50% (n=2) (1 agree of 2 pairs both decided)" in out
    label_main(["stats", "--store", str(path), "--json"])
    assert json.loads(capsys.readouterr().out)["vlm_human"]["agree"] == 1

    with pytest.raises(BadInput, match="not 0, 1, 0.5 or NaN"):
        db.set_suggestions([suggest(ids[0], 2.0)])
    with pytest.raises(BadInput, match="not a valid query id"):
        db.set_suggestions([suggest("a b", 0.0)])


def test_the_api_hands_out_a_pairs_suggestion_with_its_lease(tmp_path: Path) -> None:
    db = LabelStore(tmp_path / "labels.sqlite")
    queries = pair_queries([1.0, 2.0], [0.0, 3.0])
    ids = [str(q) for q in queries.query_id]
    db.set_suggestions([suggest(ids[0], math.nan, "cannot tell <b>them</b> apart")])
    db.add_queries(queries, source="run-a")
    with TestClient(create_app(db, prerender=0, cache_dir=tmp_path / "clips")) as client:
        lease = client.post("/api/next", json={"annotator": "bob"}).json()["lease"]
        assert lease["query_id"] == ids[0]
        assert lease["suggestion"]["word"] == "unsure" and lease["suggestion"]["label"] is None
        assert lease["suggestion"]["analysis"] == "cannot tell <b>them</b> apart"
        assert lease["suggestion"]["model"] == "mock-vlm"
        r = client.post(
            "/api/answer",
            json={"annotator": "bob", "lease_id": lease["lease_id"], "label": "right"},
        ).json()
        assert r["lease"]["query_id"] == ids[1] and r["lease"]["suggestion"] is None


# -- the page in Chromium -------------------------------------------------------------------------
def test_the_page_shows_the_suggestion_and_the_person_overrides_it(tmp_path: Path) -> None:
    browser_tests = pytest.importorskip("test_label_browser")  # skips without chromium
    server = browser_tests.warm_server(tmp_path, n=2, length=10, size=96)
    store = LabelStore(tmp_path / "labels.sqlite")
    first, second = [r["id"] for r in store.upcoming(2)]
    store.set_suggestions([suggest(first, 1.0)])
    from playwright.sync_api import sync_playwright

    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=browser_tests.CHROMIUM, args=browser_tests.ARGS
            )
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server.url + "/?annotator=carol")
            page.wait_for_function(f"document.body.dataset.query === '{first}'", timeout=30000)
            assert page.is_visible("#suggestion")
            assert page.inner_text("#suggestion-word") == "right"
            assert "mock-vlm" in page.inner_text("#suggestion")
            assert not page.is_visible("#suggestion-analysis")  # collapsed until asked for
            page.click("#suggestion-details summary")
            assert page.inner_text("#suggestion-analysis") == ANALYSIS
            # nothing preselected: no answer is sent until the person presses a key
            page.wait_for_timeout(300)
            assert store.answers() == [] and not page.query_selector("button.flash")
            page.keyboard.press("ArrowLeft")  # overrides the VLM's "right"
            page.wait_for_function(f"document.body.dataset.query === '{second}'", timeout=30000)
            assert not page.is_visible("#suggestion")  # the next pair has none
            assert {a["query_id"]: a["label"] for a in store.answers()} == {first: 0.0}
            kept = store.suggestion(first)
            assert kept is not None and kept.label == 1.0  # the suggestion stays beside it
            v = store.stats()["vlm_human"]
            assert (v["both_decided"], v["agree"], v["agreement"]) == (1, 0, 0.0)
            assert not errors, errors
            browser.close()
    finally:
        server.stop()


# -- the routing teacher -------------------------------------------------------------------------
def make_vlm_then_human(
    vlm: RecordingMockVLM, tmp_path: Path, route: str = "unsure", **kwargs: Any
) -> VLMThenHuman:
    inner = make_teacher(vlm, tmp_path)
    human = HumanTeacher(str(tmp_path / "labels.sqlite"))
    return VLMThenHuman(inner, human, route=route, **kwargs)


def wait_vlm(teacher: VLMThenHuman, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while teacher.vlm.pairs_done < teacher.vlm.submitted and time.time() < deadline:
        time.sleep(0.02)
    assert teacher.vlm.pairs_done == teacher.vlm.submitted, "the VLM did not answer in time"


def labels_by_id(data: Any) -> dict[str, float]:
    return dict(zip(data.queries.query_id.tolist(), data.labels.tolist(), strict=True))


def test_only_unsure_pairs_reach_people_and_their_answers_arrive_later(
    reacher_pool: TrajectoryPool, tmp_path: Path
) -> None:
    queries: Queries = reacher_pool.sample_queries(10, 10, np.random.default_rng(1))
    oracle = dict(zip(queries.query_id.tolist(), oracle_labels(queries).tolist(), strict=True))
    store_path = tmp_path / "labels.sqlite"
    LabelStore(store_path)
    with (
        RecordingMockVLM(score_rendered=True, malformed=0.4, seed=2) as vlm,
        BackgroundServer(store_path, port=free_port(), prerender=0) as server,
    ):
        teacher = make_vlm_then_human(vlm, tmp_path)
        teacher.submit(queries)
        assert teacher.outstanding() == len(oracle)  # all with the VLM
        wait_vlm(teacher)
        first = teacher.collect()
        assert first is not None and set(first.annotator) == {"vlm"}
        by_vlm = labels_by_id(first)
        assert not any(math.isnan(x) for x in by_vlm.values())  # only decided VLM labels
        assert all(by_vlm[q] == oracle[q] for q in by_vlm)  # noise 0: the oracle's label

        store = LabelStore(store_path)
        routed = {r["id"] for r in store.upcoming(100)}
        assert routed == set(oracle) - set(by_vlm)  # exactly the pairs the VLM left open
        assert 0 < len(routed) < len(oracle), "the mock's seed should leave some pairs unsure"
        for qid in routed:  # each with the VLM's (unsure) answer and analysis attached
            s = store.suggestion(qid)
            assert s is not None and s.word == "unsure" and "Image 1 shows" in s.analysis
            assert s.reply.startswith("The answer is:") and s.model == vlm.model
        assert teacher.collect() is None  # nobody has answered yet, and collect never waits
        assert teacher.outstanding() == len(routed)  # the pairs with people are still asked
        t0 = time.time()  # a round that does not wait for people returns at once, timed out
        no_wait = WaitPolicy(min_labels=len(by_vlm) + 1, timeout_s=0)
        assert wait_for(teacher, no_wait, had=teacher.labels_received) == (None, True)
        assert time.time() - t0 < 5
        assert teacher.stats()["vlm_human_routed"] == len(routed)

        # People answer later (through the page's API); a round waiting for them gets them.
        person = ScriptedPerson(server.url, store_path)
        person.start()
        t0 = time.time()
        policy = WaitPolicy(min_labels=len(oracle), timeout_s=60, poll_s=0.05)
        later, timed_out = wait_for(teacher, policy, had=teacher.labels_received)
        person.stop.set()
        assert later is not None and not timed_out and time.time() - t0 < 60
        assert not person.errors and teacher.outstanding() == 0
        assert set(later.annotator) == {"scripted-person"}
        assert labels_by_id(later) == {q: oracle[q] for q in routed}
        assert later.queries.first.equals(
            queries.first[[list(queries.query_id).index(q) for q in later.queries.query_id]]
        )
        assert teacher.labels_received == len(oracle) and teacher.collect() is None
        assert teacher.describe()["routed_to_people"] == len(routed)
        v = store.stats()["vlm_human"]  # all suggestions unsure: nothing to compare
        assert v["suggestions"] == len(routed) == v["answered_by_people"]
        assert v["both_decided"] == 0 and v["agreement"] is None
        teacher.close()


def test_route_all_asks_people_everything_and_measures_the_vlm(
    reacher_pool: TrajectoryPool, tmp_path: Path
) -> None:
    queries: Queries = reacher_pool.sample_queries(8, 10, np.random.default_rng(2))
    oracle = oracle_labels(queries)
    store_path = tmp_path / "labels.sqlite"
    LabelStore(store_path)
    with (
        RecordingMockVLM(score_rendered=True, noise=0.4, seed=5) as vlm,
        BackgroundServer(store_path, port=free_port(), prerender=0) as server,
    ):
        teacher = make_vlm_then_human(vlm, tmp_path, route="all")
        teacher.submit(queries)
        person = ScriptedPerson(server.url, store_path)
        person.start()
        # waits for people; the VLM's answers are suggestions only
        policy = WaitPolicy(min_labels=len(queries), timeout_s=60, poll_s=0.05)
        data, timed_out = wait_for(teacher, policy)
        person.stop.set()
        assert not timed_out and teacher.outstanding() == 0
        assert data is not None and set(data.annotator) == {"scripted-person"}
        assert labels_by_id(data) == dict(
            zip(queries.query_id.tolist(), oracle.tolist(), strict=True)
        )
        store = LabelStore(store_path)
        suggested = {s.query_id: s.label for s in store.suggestions()}
        assert set(suggested) == set(queries.query_id.tolist())
        decided = [
            (suggested[str(q)], o)
            for q, o in zip(queries.query_id, oracle, strict=True)
            if not math.isnan(suggested[str(q)])
        ]
        agree = sum(a == b for a, b in decided)
        assert 0 < agree < len(decided), "noise 0.4 should flip some of the VLM's answers"
        v = store.stats()["vlm_human"]  # the person answers as the oracle would
        assert (v["both_decided"], v["agree"]) == (len(decided), agree)
        assert v["agreement"] == pytest.approx(agree / len(decided))
        teacher.close()


def test_pairs_the_ensemble_disagrees_on_go_to_people_with_the_vlms_answer(
    reacher_pool: TrajectoryPool, tmp_path: Path
) -> None:
    """disagreement=0.3: the 3 of 10 pairs whose members' P(second > first) spread most reach
    the store even though the VLM (noise 0) decided them; its answer is their suggestion."""
    queries: Queries = reacher_pool.sample_queries(10, 10, np.random.default_rng(4))
    train = reacher_pool.sample_queries(12, 10, np.random.default_rng(5))
    obs_dim = queries.first.obs.shape[-1]
    act_dim = queries.first.act.shape[-1]
    model = RewardEnsemble(obs_dim, act_dim, RewardModelConfig(max_epochs=3))
    model.fit(PreferenceDataset(train, oracle_labels(train)), np.random.default_rng(0))
    spread = model.preference_probs(queries.first, queries.second).std(axis=0)
    expected = set(queries.query_id[np.argsort(-spread)[:3]].tolist())
    store_path = tmp_path / "labels.sqlite"
    LabelStore(store_path)
    with RecordingMockVLM(score_rendered=True, seed=2) as vlm:
        teacher = make_vlm_then_human(vlm, tmp_path, disagreement=0.3)
        teacher.set_reward_model(None)  # before the first fit: nothing is contested
        assert teacher._most_contested(queries) == set()
        teacher.set_reward_model(model)  # what the feedback loop hands over before a round
        assert teacher._most_contested(queries) == expected
        teacher.submit(queries)
        wait_vlm(teacher)
        data = teacher.collect()
        assert data is not None and set(data.annotator) == {"vlm"}
        routed = {r["id"] for r in LabelStore(store_path).upcoming(100)}
        unsure = routed - expected  # pairs the VLM could not decide go to people as ever
        assert expected <= routed and set(labels_by_id(data)) == set(queries.query_id) - routed
        store = LabelStore(store_path)
        for qid in expected - unsure:
            s = store.suggestion(qid)
            assert s is not None and s.word in ("left", "right")  # the VLM's decided answer
        assert teacher.describe()["routed_contested"] == len(expected)
        assert teacher.stats()["vlm_human_routed_contested"] == len(expected)
        teacher.close()


def test_config_builds_the_teacher_and_rejects_bad_settings(tmp_path: Path) -> None:
    with RecordingMockVLM() as vlm:
        overrides = [
            "+exp=quickstart",
            "teacher=vlm_then_human",
            f"teacher.vlm.base_url={vlm.base_url}",
            f"teacher.vlm.model={vlm.model}",
            "teacher.vlm.api_key_env=null",
            f"teacher.vlm.cache={tmp_path}/vlm.sqlite",
            f"teacher.human.store={tmp_path}/labels.sqlite",
        ]
        with initialize_config_dir(str(CONF_DIR), version_base=None):
            cfg = compose("config", overrides=overrides)
            bad = compose("config", overrides=[*overrides, "teacher.route=sometimes"])
            too_much = compose("config", overrides=[*overrides, "teacher.disagreement=1.5"])
            both = compose(
                "config", overrides=[*overrides, "teacher.route=all", "teacher.disagreement=0.2"]
            )
            waits = compose(
                "config", overrides=[*overrides, "wait.for_round=true", "wait.timeout_s=null"]
            )
            # how long to wait is the run's (the wait group), no teacher's
            for old in ("teacher.min_labels=1", "teacher.wait_timeout_s=60",
                        "teacher.vlm.wait_for_round=true", "teacher.human.poll_s=0.5"):  # fmt: skip
                with pytest.raises(ConfigCompositionException, match=old.split("=")[0]):
                    compose("config", overrides=[*overrides, old])
        teacher = build_teacher(cfg, np.random.default_rng(0))  # given the run's env
        assert isinstance(teacher, VLMThenHuman) and teacher.route == "unsure"
        assert teacher.vlm.goal.startswith("the tip of the two-link robot arm")
        for group in (cfg.teacher, cfg.teacher.vlm, cfg.teacher.human):
            assert not {"min_labels", "wait_timeout_s", "wait_for_round", "poll_s"} & set(group)
        assert wait_policy(cfg) == WaitPolicy(timeout_s=600.0, all_asked=False, poll_s=1.0)
        assert wait_policy(waits) == WaitPolicy(timeout_s=None, all_asked=True, poll_s=1.0)
        assert not (tmp_path / "labels.sqlite").exists()  # building creates no files
        teacher.close()
        with pytest.raises(Exception, match="teacher.route='sometimes': use unsure") as info:
            instantiate(bad.teacher, rng=np.random.default_rng(0))
        cause: BaseException | None = info.value
        while cause is not None and not isinstance(cause, TeacherConfigError):
            cause = cause.__cause__
        assert isinstance(cause, TeacherConfigError)
        for cfg_bad, needle in (
            (too_much, "teacher.disagreement=1.5: use a fraction"),
            (both, "teacher.disagreement applies to route=unsure"),
        ):
            with pytest.raises(Exception) as info:
                instantiate(cfg_bad.teacher, rng=np.random.default_rng(0))
            cause = info.value
            while cause is not None and not isinstance(cause, TeacherConfigError):
                cause = cause.__cause__
            assert cause is not None and needle in str(cause)


def test_tiny_online_run_routes_unsure_pairs_to_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """python -m pbrl.train +exp=quickstart teacher=vlm_then_human (tiny budget, nobody
    labels: the run trains on the VLM's labels, the unsure pairs wait in the store)."""
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    with RecordingMockVLM(score_rendered=True, malformed=0.5, seed=1) as vlm:
        run_train(
            [
                "+exp=quickstart",
                *TINY_ONLINE,
                "teacher=vlm_then_human",
                # wait for a first VLM label however slow the machine (never for people)
                "feedback.min_labels=1",
                "wait.timeout_s=120",
                "teacher.disagreement=0.5",  # round 2: the 2 most contested pairs to people
                f"teacher.vlm.base_url={vlm.base_url}",
                f"teacher.vlm.model={vlm.model}",
                "teacher.vlm.api_key_env=null",
                f"teacher.vlm.cache={tmp_path}/vlm.sqlite",
                "teacher.vlm.size=64",
                f"teacher.human.store={tmp_path}/labels.sqlite",
                f"hydra.run.dir={run}",
            ],
            monkeypatch,
        )
    summary = json.loads((run / "summary.json").read_text())
    assert summary["teacher"]["_target_"] == "pbrl.teachers.vlm_human.VLMThenHuman"
    routed = summary["teacher"]["routed_to_people"]
    assert routed > 0 and summary["teacher"]["labels_from_vlm"] == summary["num_labels"]
    # round 1's labels fit the model; round 2's 4 pairs: the 2 most contested marked for people
    assert summary["teacher"]["contested_marked"] == 2
    store = LabelStore(tmp_path / "labels.sqlite", readonly=True)
    assert store.counts()["total"] == routed and len(store.suggestions()) == routed
    text = "".join(p.read_text() for p in (run / "tb").rglob("*.csv"))
    assert "preferences/vlm_human_routed" in text


def test_tiny_offline_run_routes_unsure_pairs_to_people_on_the_runs_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """python -m pbrl.train +exp=offline_vlm_iql_hopper teacher=vlm_then_human
    label_page.serve=true: the offline recipe asks the routing teacher through the same
    protocol as online runs; the pairs the VLM is unsure about go to the page the run serves,
    a scripted person answers them there, and the run trains on both sources' labels."""
    pytest.importorskip("minari", reason="offline datasets need the `offline` extra")
    from test_image_reward import hopper_dataset

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    dataset_id = hopper_dataset(tmp_path / "minari")
    run, store, port = tmp_path / "run", tmp_path / "labels.sqlite", free_port()
    url = f"http://127.0.0.1:{port}"
    person = ScriptedPerson(url, store, name="person")

    def label_once_the_page_is_up() -> None:
        while not person.stop.is_set():
            try:
                httpx.get(f"{url}/api/status", timeout=1)
            except httpx.TransportError:
                time.sleep(0.1)
                continue
            try:
                person.run()
            except httpx.TransportError:  # the run ended and stopped its page (the labels
                pass  # the run used are checked below)
            return

    helper = threading.Thread(target=label_once_the_page_is_up, daemon=True)
    helper.start()
    try:
        with RecordingMockVLM(score_rendered=True, malformed=0.5, seed=1) as vlm:
            run_train(
                ["+exp=offline_vlm_iql_hopper", f"dataset.id={dataset_id}",
                 "++env.kwargs.max_episode_steps=60", "total_timesteps=10", "max_feedback=16",
                 "eval.n_episodes=1", "eval.random_episodes=1", "eval.test_queries=16",
                 "checkpoint_every=5", "video.enabled=false", "progress_bar=false",
                 "reward.max_epochs=2", "reward.image_size=32", "reward.hidden=16",
                 "algo.batch_size=32", "algo.hidden=32", "teacher=vlm_then_human",
                 f"teacher.vlm.base_url={vlm.base_url}", f"teacher.vlm.model={vlm.model}",
                 "teacher.vlm.api_key_env=null", f"teacher.vlm.cache={tmp_path}/vlm.sqlite",
                 "teacher.vlm.size=64", f"teacher.human.store={store}",
                 "label_page.serve=true", f"label_page.port={port}",
                 "wait.timeout_s=120", "wait.poll_s=0.05", f"hydra.run.dir={run}"],
                monkeypatch,
            )  # fmt: skip
    finally:
        person.stop.set()
        helper.join(10)
    assert not person.errors, person.errors[:3]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["teacher"]["_target_"] == "pbrl.teachers.vlm_human.VLMThenHuman"
    routed = summary["teacher"]["routed_to_people"]
    assert 0 < routed < 16 and summary["num_queries"] == 16
    labels = PreferenceDataset.load(run / "preferences.npz")
    answered_by = {a for a, lab in zip(labels.annotator, labels.labels, strict=True) if lab == lab}
    assert answered_by == {"vlm", "person"}  # both sources' labels reach the offline reward
    assert sorted(person.answered) == sorted(
        q for q, a in zip(labels.queries.query_id, labels.annotator, strict=True) if a == "person"
    )
    with pytest.raises(httpx.TransportError):  # the run stopped its page when it ended
        httpx.get(f"{url}/api/status", timeout=2)
