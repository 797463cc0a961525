"""People in the training loop: ``teacher=human`` (pbrl.teachers.human.HumanTeacher).

A scripted "person" answers through the page's HTTP API with the oracle's label, while
``python -m pbrl.train +exp=quickstart teacher=human`` trains in a subprocess.
"""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the web stack is not installed: pip install -e .[gui]")
pytest.importorskip("uvicorn", reason="the web stack is not installed: pip install -e .[gui]")
httpx = pytest.importorskip("httpx", reason="pip install httpx")

from hydra import compose, initialize_config_dir  # noqa: E402
from test_label_store import pair_queries  # noqa: E402  (tests/ is on sys.path)

from pbrl.data import PreferenceDataset  # noqa: E402
from pbrl.data.preferences import oracle_labels  # noqa: E402
from pbrl.gui.server import BackgroundServer  # noqa: E402
from pbrl.run import build_teacher  # noqa: E402
from pbrl.store import LabelStore, labels_ranks  # noqa: E402
from pbrl.teachers.base import WaitPolicy, wait_for  # noqa: E402
from pbrl.teachers.human import HumanTeacher  # noqa: E402
from pbrl.teachers.scripted import TeacherConfigError  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ScriptedPerson(threading.Thread):
    """Labels through the page's HTTP API, answering as the oracle would (larger true return).

    The oracle's label comes from the store (``queries.oracle``): a stand-in for watching.
    """

    def __init__(
        self, url: str, store: Path, name: str = "scripted-person", token: str | None = None
    ) -> None:
        super().__init__(daemon=True)
        self.url, self.store_path, self.name = url, store, name
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.stop = threading.Event()
        self.answered: list[str] = []
        self.errors: list[str] = []

    def run(self) -> None:
        store = LabelStore(self.store_path, create=False)
        with httpx.Client(base_url=self.url, timeout=30, headers=self.headers) as c:
            while not self.stop.is_set():
                lease = c.post("/api/next", json={"annotator": self.name}).json()["lease"]
                if lease is None:
                    time.sleep(0.05)
                    continue
                if lease.get("triplet"):  # three clips: rank them as the oracle would
                    r = c.post("/api/answer_triplet", json=self.ranking(store, lease))
                    self._note(r, lease["query_id"])
                    continue
                oracle = store.query(lease["query_id"])["oracle"]
                r = c.post(
                    "/api/answer",
                    json={
                        "annotator": self.name,
                        "label": oracle,
                        "lease_id": lease["lease_id"],
                        "query_id": lease["query_id"],
                    },
                )
                self._note(r, lease["query_id"])

    def _note(self, r: httpx.Response, query_id: str) -> None:
        if r.status_code == 200:
            self.answered.append(query_id)
        else:
            self.errors.append(r.text)

    def ranking(self, store: LabelStore, lease: dict) -> dict:
        """The ranking of a triplet lease that the oracle's pair labels imply (or a skip)."""
        qids = lease["triplet"]["query_ids"]
        labels = {q.rpartition(":")[2]: store.query(q)["oracle"] for q in qids}
        ranks = None if None in labels.values() else labels_ranks(labels)
        return {"annotator": self.name, "lease_id": lease["lease_id"], "ranks": ranks or "skip"}


@pytest.fixture
def served(tmp_path: Path):  # type: ignore[no-untyped-def]
    path = tmp_path / "labels.sqlite"
    LabelStore(path)
    with BackgroundServer(path, port=free_port(), prerender=0) as server:
        yield server, path


# -- the teacher on its own ---------------------------------------------------------------------------
def test_submit_then_collect_what_people_answered(served) -> None:  # type: ignore[no-untyped-def]
    server, path = served
    teacher = HumanTeacher(str(path))
    queries = pair_queries([1.0, 5.0, 2.0], [3.0, 0.0, 2.5])
    teacher.submit(queries)
    assert teacher.collect() is None  # nobody has answered yet; collect never waits
    assert teacher.outstanding() == 3
    person = ScriptedPerson(server.url, path)
    person.start()
    deadline = time.time() + 30
    while len(person.answered) < 3 and time.time() < deadline:
        time.sleep(0.05)
    person.stop.set()
    data = teacher.collect()
    assert data is not None and len(data) == 3 and not person.errors
    order = [list(queries.query_id).index(q) for q in data.queries.query_id]
    np.testing.assert_array_equal(data.labels, oracle_labels(queries)[order])
    assert data.queries.first.equals(queries.first[order])  # segments as the trainer sampled them
    assert set(data.annotator) == {"scripted-person"}
    assert teacher.collect() is None  # handed over once
    assert teacher.outstanding() == 0


def test_a_wait_for_min_labels_times_out_then_returns_as_soon_as_they_exist(
    tmp_path: Path,
) -> None:
    teacher = HumanTeacher(str(tmp_path / "s.sqlite"))
    teacher.submit(pair_queries([1.0, 2.0], [0.0, 0.0]))
    t0 = time.time()
    answers, timed_out = wait_for(teacher, WaitPolicy(min_labels=2, timeout_s=0.3, poll_s=0.05))
    assert answers is None and timed_out and time.time() - t0 >= 0.3

    # Someone answers while a round waits: the round returns as soon as min_labels exist.
    teacher = HumanTeacher(str(tmp_path / "s2.sqlite"))
    teacher.submit(pair_queries([1.0, 2.0, 3.0], [0.0, 0.0, 0.0]))
    store = LabelStore(tmp_path / "s2.sqlite")

    def answer_two() -> None:
        for _ in range(2):
            time.sleep(0.2)
            lease = store.lease("late-person")
            store.answer(lease.lease_id, "late-person", "left")

    threading.Thread(target=answer_two).start()
    t0 = time.time()
    data, timed_out = wait_for(teacher, WaitPolicy(min_labels=2, timeout_s=30, poll_s=0.05))
    assert data is not None and len(data.trainable) == 2 and time.time() - t0 < 10
    assert not timed_out and teacher.outstanding() == 1


def test_wait_for_round_blocks_until_every_query_is_answered(tmp_path: Path) -> None:
    teacher = HumanTeacher(str(tmp_path / "s.sqlite"))
    teacher.submit(pair_queries([1.0, 2.0, 3.0], [0.0, 0.0, 0.0]))
    store = LabelStore(tmp_path / "s.sqlite")

    def answer_all() -> None:
        while (lease := store.lease("p")) is not None:
            time.sleep(0.1)
            store.answer(lease.lease_id, "p", "skip" if lease.query_id.endswith("0") else "right")

    threading.Thread(target=answer_all).start()
    policy = WaitPolicy(all_asked=True, timeout_s=30, poll_s=0.05)
    data, timed_out = wait_for(teacher, policy)
    assert data is not None and len(data) == 3 and not timed_out  # the whole round at once


def test_bad_teacher_settings_fail_when_built(tmp_path: Path) -> None:
    for kwargs, words in [
        ({"answers_per_query": 0}, "answers_per_query"),
        ({"aggregate": "mean"}, "aggregate"),
        ({"store": ""}, "store"),
    ]:
        with pytest.raises(TeacherConfigError, match=words):
            HumanTeacher(**{"store": str(tmp_path / "s.sqlite"), **kwargs})  # type: ignore[arg-type]
    assert not (tmp_path / "s.sqlite").exists()  # building a teacher touches no files


def test_the_run_serves_the_page_and_the_teacher_shows_the_eval_video(tmp_path: Path) -> None:
    """``label_page.serve=true``: the run (not the teacher) serves the page for the teacher's
    store, the teacher's messages point to it, and closing the run stops it."""
    from pbrl import recipes
    from pbrl.run import start_run
    from pbrl.video import write_video

    port = free_port()
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=["+exp=quickstart", "teacher=human", f"teacher.store={tmp_path / 's.sqlite'}",
                       "label_page.serve=true", f"label_page.port={port}"],
        )  # fmt: skip
    checked = recipes.check(cfg)
    teacher = checked.teacher
    assert isinstance(teacher, HumanTeacher)
    ctx = start_run(cfg, tmp_path / "run", teacher)
    try:
        assert f"http://127.0.0.1:{port}" in teacher.where()
        teacher.submit(pair_queries([1.0], [0.0]))
        video = write_video(np.zeros((3, 16, 16, 3), np.uint8), tmp_path / "eval.mp4", fps=5)
        teacher.show_eval_video(video, step=4000, true_return=17.0)
        status = httpx.get(f"http://127.0.0.1:{port}/api/status").json()
        assert status["progress"]["pending"] == 1
        assert status["eval_video"]["step"] == "4000"
        assert httpx.get(f"http://127.0.0.1:{port}{status['eval_video']['url']}").status_code == 200
    finally:
        ctx.close()
    with pytest.raises(httpx.TransportError):  # closing the run stopped the page
        httpx.get(f"http://127.0.0.1:{port}/api/status", timeout=2)


def test_label_page_settings_are_checked_before_the_run(tmp_path: Path) -> None:
    from pbrl import recipes
    from pbrl.errors import ConfigError

    store = f"teacher.store={tmp_path / 's.sqlite'}"
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        for overrides, words in [
            (["teacher=human", store, "label_page.serve=true", "label_page.host=0.0.0.0"],
             "label_page: refusing to serve on 0.0.0.0 without a token"),
            (["label_page.serve=true"], r"teacher \(ScriptedTeacher\) asks no people"),
        ]:  # fmt: skip
            cfg = compose("config", overrides=["+exp=quickstart", *overrides])
            with pytest.raises(ConfigError, match=words):
                recipes.check(cfg)
    assert not (tmp_path / "s.sqlite").exists()


def test_hydra_builds_the_human_teacher_from_config(tmp_path: Path) -> None:
    from pbrl.train import validate

    store = tmp_path / "labels.sqlite"
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        for chosen in (["+exp=quickstart", "teacher=human"], ["+exp=human_quickstart"]):
            cfg = compose(
                "config", overrides=[*chosen, f"teacher.store={store}", "feedback.min_labels=7"]
            )
            validate(cfg)  # builds the teacher once, as pbrl.train does
            teacher = build_teacher(cfg, np.random.default_rng(0))  # given the run's env
            assert isinstance(teacher, HumanTeacher)
            assert teacher.env_kwargs == {} and cfg.wait.timeout_s == 600
    assert not store.exists()


# -- end to end: the page feeds a training run ------------------------------------------------------
TINY = [
    "total_timesteps=500",
    "algo.unsupervised_steps=100",
    "algo.kwargs.learning_starts=100",
    "algo.kwargs.batch_size=32",
    "algo.kwargs.buffer_size=1000",
    "algo.kwargs.policy_kwargs.net_arch=[32,32]",
    "feedback.every=100",
    "feedback.first_at=100",
    "feedback.queries_per_round=4",
    "feedback.segment_length=8",
    "max_feedback=16",
    "feedback.min_labels=4",
    "reward.max_epochs=3",
    "reward.hidden=32",
    "reward.n_members=2",
    "eval.n_episodes=1",
    "eval.random_episodes=1",
    "eval.test_queries=8",
    "video.enabled=false",
    "progress_bar=false",
    "checkpoint_every=100000",
    "wait.timeout_s=120",
    "wait.poll_s=0.1",
]


def run_with_person(
    tmp_path: Path, overrides: list[str], timeout: int
) -> tuple[dict, ScriptedPerson]:
    store = tmp_path / "labels.sqlite"
    LabelStore(store)
    with BackgroundServer(store, port=free_port(), prerender=0) as server:
        person = ScriptedPerson(server.url, store)
        person.start()
        cmd = [
            sys.executable,
            "-m",
            "pbrl.train",
            "+exp=quickstart",
            "teacher=human",
            f"teacher.store={store}",
            f"hydra.run.dir={tmp_path / 'run'}",
            f"video.root={tmp_path / 'videos'}",
            *overrides,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=tmp_path)
        person.stop.set()
        person.join(10)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not person.errors, person.errors[:3]
    return json.loads((tmp_path / "run" / "summary.json").read_text()), person


def test_labels_flow_from_the_page_into_training(tmp_path: Path) -> None:
    summary, person = run_with_person(tmp_path, TINY, timeout=600)
    assert summary["teacher"]["_target_"].endswith("HumanTeacher")
    assert summary["num_labels"] >= 4  # min_labels: the first round waited for the person
    prefs = PreferenceDataset.load(tmp_path / "run" / "checkpoint" / "preferences.npz")
    store = LabelStore(tmp_path / "labels.sqlite")
    # Every label the trainer used is an answer the person gave on the page, unchanged.
    rows = {r["query_id"]: r for r in store.answers()}
    assert set(prefs.queries.query_id) <= set(person.answered)
    for qid, label in zip(prefs.queries.query_id, prefs.labels, strict=True):
        stored = rows[qid]["label"]
        assert (math.isnan(label) and stored is None) or label == stored
        assert store.query(qid)["delivered_at"] is not None
    np.testing.assert_array_equal(prefs.labels, oracle_labels(prefs.queries))
    assert set(prefs.annotator) == {"scripted-person"}

    # The finished run's trajectory pool feeds more pairs to people (and renders).
    from pbrl.gui.clips import ClipCache
    from pbrl.label import main as label_main

    more = tmp_path / "more.sqlite"
    label_main(["queries", "--from-run", str(tmp_path / "run"), "--num", "3", "--store", str(more)])
    extra = LabelStore(more)
    assert extra.counts()["pending"] == 3
    row = extra.upcoming(1)[0]
    assert extra.segments(row["id"])[0].length == 8  # the run's feedback.segment_length
    cache = ClipCache(more, tmp_path / "clips", width=64, height=64, prerender=0)
    try:
        cache.wait(row["seq"], row["id"], timeout=60)
    finally:
        cache.stop()
    assert cache.path(row["seq"], row["id"], "left").stat().st_size > 0


LEARN = [  # quickstart, smaller nets and budget: about 5 min on 2 busy cores
    "env=inverted_pendulum",
    "feedback.segment_length=20",
    "total_timesteps=4000",
    "algo.unsupervised_steps=500",
    "algo.kwargs.learning_starts=250",
    "algo.kwargs.policy_kwargs.net_arch=[64,64]",
    "reward.hidden=64",
    "feedback.every=500",
    "feedback.first_at=500",
    "feedback.queries_per_round=20",
    "max_feedback=140",
    "feedback.min_labels=20",
    "eval.n_episodes=5",
    "video.enabled=false",
    "progress_bar=false",
    "wait.timeout_s=600",
    "wait.poll_s=0.2",
]


@pytest.mark.slow
def test_a_scripted_person_teaches_the_pendulum(tmp_path: Path) -> None:
    """The page as the only source of labels, answered asynchronously: the policy learns."""
    summary, person = run_with_person(tmp_path, LEARN, timeout=1800)
    assert summary["num_labels"] >= 100 and len(person.answered) >= summary["num_labels"]
    assert summary["eval_true_return_mean"] > max(40.0, 4 * summary["random_true_return_mean"])
    assert summary["reward_model_test_accuracy"] > 0.7
