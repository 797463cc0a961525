"""Ranking three clips on the labeling page (RAPL triplets): the store leases a triplet's three
pairs together and writes a ranking as their three answers at once; the API and the page."""

from __future__ import annotations

import itertools
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_label_store import pair_queries

from pbrl.data import PreferenceDataset, Queries, Segments
from pbrl.data.triplets import triplet_queries, triplets_from_dataset
from pbrl.store import (
    BadInput,
    Conflict,
    LabelStore,
    LeaseExpired,
    NotFound,
    labels_ranks,
    ranking_labels,
)

try:  # the web stack (pip install -e .[gui]); the store tests run without it
    from fastapi.testclient import TestClient

    from pbrl.gui.server import create_app

    NO_WEB = ""
except ImportError as exc:
    NO_WEB = f"the web stack is not installed ({exc}): pip install -e .[gui]"

try:  # the pair page's browser fixture (skips, with its reason, without playwright or chromium)
    from test_label_browser import answers, browser, free_port, prerendered  # noqa: F401

    NO_BROWSER = ""
except (ImportError, pytest.skip.Exception) as exc:
    NO_BROWSER = str(exc) or "no browser"

    @pytest.fixture(scope="module")
    def browser() -> object:  # type: ignore[no-redef]
        pytest.skip(NO_BROWSER)


def members(n: int, seed: int = 0) -> tuple[Segments, Segments, Segments]:
    """Three rows of renderable-looking segments (simulator state included) per triplet."""
    ab = pair_queries([1.0] * n, [2.0] * n, seed=seed)
    c = pair_queries([3.0] * n, [0.0] * n, seed=seed + 10).first
    return ab.first, ab.second, c


def add_triplets(store: LabelStore, ids: list[str], seed: int = 0, **kwargs: Any) -> Queries:
    a, b, c = members(len(ids), seed)
    queries = triplet_queries(a, b, c, np.array(ids))
    store.add_queries(queries, source="test-run", **kwargs)
    return queries


def add_pair(store: LabelStore, qid: str = "pair0") -> None:
    q = pair_queries([1.0], [0.0], seed=5)
    store.add_queries(Queries(q.first, q.second, np.array([qid])), source="test-run")


def live(store: LabelStore) -> dict[str, tuple[str, float]]:
    """query -> (annotator, label) of every live answer (NaN: skipped)."""
    return {
        r["query_id"]: (r["annotator"], math.nan if r["label"] is None else r["label"])
        for r in store.answers()
    }


def active_leases(store: LabelStore) -> list[Any]:
    return store._conn().execute("SELECT * FROM leases WHERE state='active'").fetchall()


@pytest.fixture
def store(tmp_path: Path) -> LabelStore:
    return LabelStore(tmp_path / "labels.sqlite")


PAIR_IDS = ("ab", "ac", "bc")


def ids_of(triplet: str) -> tuple[str, ...]:
    return tuple(f"{triplet}:{p}" for p in PAIR_IDS)


# -- rankings as pair labels ---------------------------------------------------------------------
def weak_orders() -> list[dict[str, int]]:
    """The 13 rankings of three items, ties included, as dense ranks (0 best)."""
    out = []
    for r in itertools.product(range(3), repeat=3):
        if sorted(set(r)) == list(range(len(set(r)))):  # dense: 0, then 1, then 2
            out.append(dict(zip("abc", r, strict=True)))
    return out


def test_ranks_and_labels_round_trip() -> None:
    assert len(weak_orders()) == 13
    assert ranking_labels({"a": 1, "b": 0, "c": 1}) == {"ab": 1.0, "ac": 0.5, "bc": 0.0}
    for ranks in weak_orders():
        assert labels_ranks(ranking_labels(ranks)) == ranks
    skipped = ranking_labels("skip")
    assert all(math.isnan(v) for v in skipped.values()) and labels_ranks(skipped) is None
    assert labels_ranks({"ab": 0.0, "ac": 1.0, "bc": 0.0}) is None  # a cycle is no ranking


@pytest.mark.parametrize(
    "bad, words",
    [
        (None, "missing"),
        ("", "not valid"),
        (["b", "a", "c"], "not valid"),
        ({"a": 0, "b": 1}, "leaves out c"),
        ({"a": 0, "b": 1, "c": 1, "d": 0}, "names d"),
        ({"a": 0, "b": 1, "c": 3}, "rank of c"),
        ({"a": 0, "b": True, "c": 1}, "rank of b"),
        ({"a": 0, "b": 0.5, "c": 1}, "rank of b"),
    ],
)
def test_bad_rankings_name_the_problem(bad: Any, words: str) -> None:
    with pytest.raises(BadInput, match=words) as err:
        ranking_labels(bad)
    assert '{"a": rank, "b": rank, "c": rank}' in str(err.value)  # and the fix


# -- store ---------------------------------------------------------------------------------------
def test_a_triplet_is_leased_whole(store: LabelStore) -> None:
    add_triplets(store, ["t1"])
    add_pair(store)
    add_triplets(store, ["t2"], seed=1)
    held = store.lease("alice", triplets=True)
    assert held is not None and held.triplet == "t1" and held.query_ids == ids_of("t1")
    assert held.query_id == "t1:ab" and ":" not in held.lease_id
    rows = active_leases(store)
    assert sorted(r["query_id"] for r in rows) == list(ids_of("t1"))
    assert {r["expires_at"] for r in rows} == {held.expires_at}
    assert store.counts()["leased"] == 3
    # Nobody else gets any of the three while alice holds them.
    bob = store.lease("bob", triplets=True)
    assert bob is not None and bob.triplet is None and bob.query_id == "pair0"
    carol = store.lease("carol", triplets=True)
    assert carol is not None and carol.triplet == "t2"
    assert store.lease("dave", triplets=True) is None
    # A reloaded page gets the same lease back, all three rows pushed out.
    time.sleep(0.01)
    again = store.lease("alice", triplets=True)
    assert again is not None and again.lease_id == held.lease_id and again.triplet == "t1"
    assert again.expires_at > held.expires_at
    assert {r["expires_at"] for r in active_leases(store) if r["annotator"] == "alice"} == {
        again.expires_at
    }


def test_a_ranking_is_three_answers_in_one_transaction(store: LabelStore) -> None:
    add_triplets(store, ["t1", "t2"])
    held = store.lease("alice", triplets=True)
    assert held is not None
    got = store.answer_triplet(held.lease_id, "alice", {"a": 1, "b": 0, "c": 1}, "t1")
    assert [a.query_id for a in got] == list(ids_of("t1"))
    assert live(store) == {
        "t1:ab": ("alice", 1.0),
        "t1:ac": ("alice", 0.5),
        "t1:bc": ("alice", 0.0),
    }
    assert all(store.query(q)["status"] == "answered" for q in ids_of("t1"))
    assert not [r for r in active_leases(store) if r["query_id"].startswith("t1")]
    with pytest.raises(Conflict, match="double submission"):
        store.answer_triplet(held.lease_id, "alice", {"a": 0, "b": 1, "c": 2})
    assert len(store.answers()) == 3

    # A skip skips all three; ties are fine.
    nxt = store.lease("alice", triplets=True)
    assert nxt is not None and nxt.triplet == "t2"
    store.answer_triplet(nxt.lease_id, "alice", "skip")
    assert all(math.isnan(live(store)[q][1]) for q in ids_of("t2"))
    assert store.lease("alice", triplets=True) is None


def test_wrong_answers_to_a_triplet_change_nothing(store: LabelStore) -> None:
    add_triplets(store, ["t1"])
    add_pair(store)
    held = store.lease("alice", triplets=True)
    pair = store.lease("bob", triplets=True)
    assert held is not None and pair is not None
    with pytest.raises(BadInput, match="answer_triplet"):
        store.answer(held.lease_id, "alice", "left")  # a pair answer to one of the three
    with pytest.raises(BadInput, match="answer_triplet"):
        store.answer(f"{held.lease_id}:ab", "alice", "left")
    with pytest.raises(BadInput, match="not a triplet"):
        store.answer_triplet(pair.lease_id, "bob", {"a": 0, "b": 1, "c": 2})
    with pytest.raises(BadInput, match="not 't9'"):
        store.answer_triplet(held.lease_id, "alice", {"a": 0, "b": 1, "c": 2}, "t9")
    with pytest.raises(Conflict, match="belongs to"):
        store.answer_triplet(held.lease_id, "bob", {"a": 0, "b": 1, "c": 2})
    with pytest.raises(NotFound, match="unknown lease 'nope'"):
        store.answer_triplet("nope", "alice", {"a": 0, "b": 1, "c": 2})
    with pytest.raises(BadInput):
        store.answer_triplet(held.lease_id, "alice", {"a": 0, "b": 1})
    assert store.answers() == [] and len(active_leases(store)) == 4

    # The third insert fails (alice already has a live answer to t1:bc): the first two are
    # rolled back with it, and the leases stay active.
    store._conn().execute(
        "INSERT INTO answers (query_id, annotator, label, shown_at, answered_at)"
        " VALUES ('t1:bc', 'alice', 0.0, 0, 0)"
    )
    with pytest.raises(Conflict, match="already answered query 't1:bc'"):
        store.answer_triplet(held.lease_id, "alice", {"a": 0, "b": 1, "c": 2})
    assert set(live(store)) == {"t1:bc"}
    assert len(active_leases(store)) == 4


def test_undo_retracts_the_whole_ranking(store: LabelStore) -> None:
    add_triplets(store, ["t1", "t2"])
    held = store.lease("alice", triplets=True)
    assert held is not None
    store.answer_triplet(held.lease_id, "alice", {"a": 2, "b": 0, "c": 1})
    other = store.lease("alice", triplets=True)  # the next triplet, released by the undo
    assert other is not None and other.triplet == "t2"
    undone, lease = store.undo_answers("alice")
    assert [a.query_id for a in undone] == list(ids_of("t1"))
    assert labels_ranks({a.query_id[-2:]: a.label for a in undone}) == {"a": 2, "b": 0, "c": 1}
    assert lease.triplet == "t1" and lease.lease_id != held.lease_id
    assert store.answers() == [] and len(store.answers(include_retracted=True)) == 3
    assert sorted(r["query_id"] for r in active_leases(store)) == list(ids_of("t1"))
    assert all(store.query(q)["status"] == "pending" for q in ids_of("t2"))
    # Answer again under the new lease; `undo` (one answer) gives the ab answer.
    store.answer_triplet(lease.lease_id, "alice", {"a": 0, "b": 0, "c": 1})
    first, again = store.undo("alice")
    assert first.query_id == "t1:ab" and first.label == 0.5 and again.triplet == "t1"
    store.answer_triplet(again.lease_id, "alice", {"a": 0, "b": 0, "c": 1})
    # Once a trainer has collected them, the three answers stay.
    dataset = store.collect(["test-run"])
    assert dataset is not None and sorted(dataset.queries.query_id) == list(ids_of("t1"))
    with pytest.raises(Conflict, match="already collected"):
        store.undo("alice")


def test_a_triplet_lease_expires_renews_and_is_released_whole(store: LabelStore) -> None:
    add_triplets(store, ["t1"])
    held = store.lease("alice", duration_s=0.3, triplets=True)
    assert held is not None
    renewed = store.renew(held.lease_id, "alice", duration_s=0.3)
    assert renewed.lease_id == held.lease_id and renewed.triplet == "t1"
    assert {r["expires_at"] for r in active_leases(store)} == {renewed.expires_at}
    assert store.lease("bob", triplets=True) is None
    time.sleep(0.4)
    with pytest.raises(LeaseExpired):
        store.renew(held.lease_id, "alice")
    bob = store.lease("bob", triplets=True)  # all three came back together
    assert bob is not None and bob.triplet == "t1"
    with pytest.raises(LeaseExpired):
        store.answer_triplet(held.lease_id, "alice", {"a": 0, "b": 1, "c": 2})
    assert store.release("bob") == 3
    assert all(store.query(q)["status"] == "pending" for q in ids_of("t1"))
    carol = store.lease("carol", triplets=True)
    assert carol is not None and carol.triplet == "t1"
    store.answer_triplet(carol.lease_id, "carol", {"a": 0, "b": 1, "c": 2})
    assert {who for who, _ in live(store).values()} == {"carol"}


def test_several_answers_per_triplet_and_broken_triplets(store: LabelStore) -> None:
    add_triplets(store, ["t1"], needed=2)
    alice, bob = store.lease("alice", triplets=True), store.lease("bob", triplets=True)
    assert alice is not None and bob is not None
    assert alice.triplet == bob.triplet == "t1" and alice.lease_id != bob.lease_id
    assert store.lease("carol", triplets=True) is None
    store.answer_triplet(alice.lease_id, "alice", {"a": 0, "b": 1, "c": 2})
    store.answer_triplet(bob.lease_id, "bob", {"a": 2, "b": 1, "c": 0})
    assert all(store.query(q)["status"] == "answered" for q in ids_of("t1"))
    # A triplet missing a pair is no triplet: its pairs are shown one at a time.
    a, b, c = members(1, seed=3)
    q = triplet_queries(a, b, c, np.array(["t9"]))
    store.add_queries(q[np.array([0, 1])], source="test-run")  # t9:ab, t9:ac only
    got = store.lease("dave", triplets=True)
    assert got is not None and got.triplet is None and got.query_id == "t9:ab"
    store.answer(got.lease_id, "dave", "left")


def test_the_python_api_leases_pairs_unless_asked_for_triplets(store: LabelStore) -> None:
    add_triplets(store, ["t1"])
    one = store.lease("script")  # e.g. a scripted labeler answering pair by pair
    assert one is not None and one.triplet is None and one.query_id == "t1:ab"
    # The page's annotator cannot get the triplet whole now: its free pairs come one by one.
    page = store.lease("alice", triplets=True)
    assert page is not None and page.triplet is None and page.query_id == "t1:ac"
    store.answer(one.lease_id, "script", "left")
    store.answer(page.lease_id, "alice", "right")
    assert set(live(store)) == {"t1:ab", "t1:ac"}


def _rank_until_empty(path: Path, name: str, out: dict[str, list[str]]) -> None:
    store = LabelStore(path)
    done = out.setdefault(name, [])
    while (lease := store.lease(name, triplets=True)) is not None:
        assert lease.triplet is not None
        store.answer_triplet(lease.lease_id, name, {"a": 0, "b": 1, "c": 2})
        done.append(lease.triplet)
    store.close()


def test_two_annotators_at_once_rank_each_triplet_once(store: LabelStore) -> None:
    ids = [f"t{i}" for i in range(30)]
    add_triplets(store, ids)
    out: dict[str, list[str]] = {}
    threads = [
        threading.Thread(target=_rank_until_empty, args=(store.path, name, out))
        for name in ("alice", "bob")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    done = out["alice"] + out["bob"]
    assert sorted(done) == sorted(ids)  # each triplet ranked once, by one of them
    by = live(store)
    assert len(by) == 90
    for name, triplets in out.items():
        assert all(by[q][0] == name for t in triplets for q in ids_of(t))  # never split


def test_ranked_triplets_read_back_from_the_export(store: LabelStore) -> None:
    orders = weak_orders()
    ids = [f"t{i:02d}" for i in range(len(orders) + 1)]
    queries = add_triplets(store, ids)
    for ranks in [*orders, "skip"]:
        held = store.lease("alice", triplets=True)
        assert held is not None
        store.answer_triplet(held.lease_id, "alice", ranks)
    dataset = store.export()
    assert dataset is not None
    triplets, dropped = triplets_from_dataset(dataset)
    assert triplets is not None and dropped == 1 and len(triplets) == len(orders)
    obs = {  # member of triplet i -> its observations
        (tid, m): seg
        for i, tid in enumerate(ids)
        for m, seg in zip(
            "abc",
            (queries.first.obs[3 * i], queries.second.obs[3 * i], queries.second.obs[3 * i + 1]),
            strict=True,
        )
    }
    for k, tid in enumerate(triplets.triplet_id):
        ranks = orders[ids.index(tid)]

        def member(segs: Segments, tid: str = str(tid), k: int = k) -> str:
            return next(m for m in "abc" if np.array_equal(obs[(tid, m)], segs.obs[k]))

        anchor, first, second = (
            member(s) for s in (triplets.anchor, triplets.first, triplets.second)
        )
        assert ranks[anchor] == 0 and ranks[first] <= ranks[second]
        assert triplets.target[k] == (0.5 if ranks[first] == ranks[second] else 1.0)


_RANKER = """
import sys
from pbrl.store import LabelStore
store = LabelStore(sys.argv[1])
while (lease := store.lease("w", triplets=True)) is not None:
    store.answer_triplet(lease.lease_id, "w", {"a": 2, "b": 0, "c": 1})
    print(lease.triplet, flush=True)  # printed only after the commit returned
"""


def test_sigkill_mid_ranking_leaves_whole_triplets(store: LabelStore) -> None:
    add_triplets(store, [f"t{i:03d}" for i in range(150)])
    proc = subprocess.Popen(
        [sys.executable, "-c", _RANKER, str(store.path)], stdout=subprocess.PIPE, text=True
    )
    acked = []
    assert proc.stdout is not None
    for line in proc.stdout:
        acked.append(line.strip())
        if len(acked) == 10:
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(10)
    store = LabelStore(store.path)  # reopen after the crash (WAL recovery)
    by_triplet: dict[str, int] = {}
    for q in live(store):
        by_triplet[q[:-3]] = by_triplet.get(q[:-3], 0) + 1
    assert set(acked) <= set(by_triplet)
    assert set(by_triplet.values()) == {3}  # every triplet has all three answers or none


# -- API -----------------------------------------------------------------------------------------
@pytest.fixture
def client(store: LabelStore) -> Iterator[TestClient]:
    if NO_WEB:
        pytest.skip(NO_WEB)
    add_triplets(store, ["t1", "t2"])
    add_pair(store)
    with TestClient(create_app(store.path, prerender=0)) as c:
        yield c


def post(client: TestClient, path: str, status: int = 200, **body: Any) -> dict[str, Any]:
    r = client.post(path, json=body)
    assert r.status_code == status, r.text
    return r.json()


def test_api_leases_and_answers_a_triplet(client: TestClient, store: LabelStore) -> None:
    assert client.get("/static/triplet.js").headers["content-type"].startswith("text/javascript")
    assert 'src="/static/triplet.js"' in client.get("/").text
    lease = post(client, "/api/next", annotator="alice")["lease"]
    assert lease["query_id"] == "t1:ab" and lease["suggestion"] is None
    assert lease["triplet"] == {
        "id": "t1",
        "query_ids": ["t1:ab", "t1:ac", "t1:bc"],
        "clips": {
            "a": "/clips/t1%3Aab/left",
            "b": "/clips/t1%3Aab/right",
            "c": "/clips/t1%3Aac/right",
        },
    }
    renewed = post(client, "/api/renew", annotator="alice", lease_id=lease["lease_id"])["lease"]
    assert renewed["triplet"]["id"] == "t1" and renewed["expires_at"] >= lease["expires_at"]
    got = post(
        client,
        "/api/answer_triplet",
        annotator="alice",
        lease_id=lease["lease_id"],
        triplet_id="t1",
        ranks={"a": 1, "b": 0, "c": 1},
    )
    assert got["answer"]["triplet_id"] == "t1" and len(got["answer"]["ids"]) == 3
    assert got["answer"]["labels"] == {"ab": 1.0, "ac": 0.5, "bc": 0.0}
    assert got["answer"]["ranks"] == {"a": 1, "b": 0, "c": 1}
    assert got["progress"]["answered"] == 3 and got["progress"]["mine"] == 3
    assert got["lease"]["triplet"]["id"] == "t2"
    undone = post(client, "/api/undo", annotator="alice")
    assert undone["undone"]["triplet"]["ranks"] == {"a": 1, "b": 0, "c": 1}
    assert undone["lease"]["triplet"]["id"] == "t1" and undone["progress"]["answered"] == 0
    skip = post(
        client,
        "/api/answer_triplet",
        annotator="alice",
        lease_id=undone["lease"]["lease_id"],
        ranks="skip",
    )
    assert skip["answer"]["ranks"] is None and skip["answer"]["labels"] == dict.fromkeys(
        ("ab", "ac", "bc")
    )
    # Pairs are answered as before, next to triplets.
    bob = post(client, "/api/next", annotator="bob")["lease"]
    assert bob["query_id"] == "pair0" and bob["triplet"] is None
    post(client, "/api/answer", annotator="bob", lease_id=bob["lease_id"], label="left")
    assert len(store.answers()) == 4


def test_api_refuses_bad_rankings_with_the_fix(client: TestClient, store: LabelStore) -> None:
    lease = post(client, "/api/next", annotator="alice")["lease"]
    assert post(client, "/api/next", annotator="bob")["lease"]["triplet"]["id"] == "t2"
    pair = post(client, "/api/next", annotator="carol")["lease"]
    assert pair["query_id"] == "pair0"
    ok = {"a": 0, "b": 1, "c": 2}
    cases = [
        ({"lease_id": lease["lease_id"]}, 422, "ranking is missing"),
        ({"lease_id": lease["lease_id"], "ranks": ["b", "a", "c"]}, 422, '"skip"'),
        ({"lease_id": lease["lease_id"], "ranks": {"a": 0, "b": 1}}, 422, "leaves out c"),
        ({"lease_id": lease["lease_id"], "ranks": {"a": 0, "b": 1, "c": 5}}, 422, "rank of c"),
        ({"lease_id": lease["lease_id"], "ranks": ok, "triplet_id": "t2"}, 422, "not 't2'"),
        ({"lease_id": "nope", "ranks": ok}, 404, "unknown lease"),
        ({"lease_id": pair["lease_id"], "ranks": ok}, 409, "belongs to"),
        ({"lease_id": lease["lease_id"], "ranks": ok, "annotator": "bob"}, 409, "belongs to"),
    ]
    for body, status, words in cases:
        got = post(client, "/api/answer_triplet", status, **{"annotator": "alice", **body})
        assert words in got["detail"], (body, got)
    carol = {"annotator": "carol", "lease_id": pair["lease_id"], "ranks": ok}
    assert "answer it with a label" in post(client, "/api/answer_triplet", 422, **carol)["detail"]
    as_pair = {"annotator": "alice", "lease_id": lease["lease_id"], "label": "left"}
    assert "/api/answer_triplet" in post(client, "/api/answer", 422, **as_pair)["detail"]
    assert store.answers() == []
    post(client, "/api/answer_triplet", annotator="alice", lease_id=lease["lease_id"], ranks=ok)
    again = post(
        client, "/api/answer_triplet", 409, annotator="alice", lease_id=lease["lease_id"], ranks=ok
    )
    assert "double submission" in again["detail"] and len(store.answers()) == 3


def test_api_refuses_an_expired_triplet_lease(store: LabelStore) -> None:
    if NO_WEB:
        pytest.skip(NO_WEB)
    add_triplets(store, ["t1"])
    with TestClient(create_app(store.path, prerender=0, lease_s=0.2)) as client:
        lease = post(client, "/api/next", annotator="alice")["lease"]
        time.sleep(0.3)
        body = {"annotator": "alice", "lease_id": lease["lease_id"], "ranks": "skip"}
        assert "expired" in post(client, "/api/answer_triplet", 410, **body)["detail"]
    assert store.answers() == []


# -- the page in a real browser ------------------------------------------------------------------
ENV = "InvertedPendulum-v5"


def triplet_server(tmp_path: Path, n: int = 3) -> Any:
    """A served store with ``n`` renderable triplets, then one pair, all clips rendered."""
    from pbrl.gui import sources
    from pbrl.gui.server import BackgroundServer

    store = LabelStore(tmp_path / "labels.sqlite")
    pairs, _ = sources.queries_from_env(ENV, 2 * n + 1, segment_length=20, seed=0)
    a, b, c = pairs.first[:n], pairs.second[:n], pairs.first[n : 2 * n]
    store.add_queries(triplet_queries(a, b, c, np.array([f"t{i}" for i in range(n)])), source="s")
    store.add_queries(pairs[np.array([2 * n])], source="s")
    queued = 3 * n + 1  # the page never shows a triplet's bc pair: its clips are not pre-rendered
    server = BackgroundServer(store.path, port=free_port(), prerender=queued, width=128, height=128)
    return prerendered(server, 2 * n + 1)


def wait_three_playing(page: Any) -> None:
    """The three clips loaded and playing, on one clock."""
    page.wait_for_function(
        "() => ['clip1', 'clip2', 'clip3'].every(id => { const v = document.getElementById(id);"
        " return v.readyState >= 2 && v.duration > 0 && !v.paused; })",
        timeout=30000,
    )
    t0 = page.evaluate("clips.map(v => v.currentTime)")
    page.wait_for_timeout(400)
    t1 = page.evaluate("clips.map(v => v.currentTime)")
    assert t0 != t1, (t0, t1)
    # in sync: each clip within 0.2 s of the first on the loop's circle (one may have wrapped)
    gap = "Math.max(...clips.map(v => { const d = Math.abs(v.currentTime - clips[0].currentTime);"
    assert page.evaluate(f"{gap} return Math.min(d, v.duration - d); }}))") < 0.2


def press(page: Any, *keys: str) -> None:
    for key in keys:
        page.keyboard.press(key)


def wait_for(page: Any, triplet: str) -> None:
    page.wait_for_function(
        f"document.body.dataset.triplet === '{triplet}' && document.body.dataset.state === 'ready'",
        timeout=30000,
    )


def test_ranking_three_clips_with_keys_in_chromium(browser: Any, tmp_path: Path) -> None:
    server = triplet_server(tmp_path)
    store = LabelStore(tmp_path / "labels.sqlite")
    try:
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server.url + "/?annotator=alice")
        wait_for(page, "t0")
        wait_three_playing(page)
        assert page.is_hidden("#pair") and page.is_visible("#triplet")
        assert page.inner_text("#heading").startswith("Rank the three clips")

        # 2, 3, Backspace, 1, =, 3: "2 > 1 = 3", saved at the third clip.
        press(page, "2", "3")
        assert page.inner_text("#ranking") == "2 > 3 > (1)"
        assert page.inner_text("#place2") == "#1" and page.inner_text("#place3") == "#2"
        press(page, "Backspace", "1", "=")
        assert page.inner_text("#ranking") == "2 > 1 ="
        assert answers(store) == {}
        press(page, "3")
        wait_for(page, "t1")
        t0 = {"t0:ab": 1.0, "t0:ac": 0.5, "t0:bc": 0.0}  # b > a = c
        assert answers(store) == t0
        assert "Saved: 2 > 1 = 3" in page.inner_text("#message")

        # u undoes the whole ranking; the same triplet comes back to be ranked again.
        press(page, "u")
        wait_for(page, "t0")
        assert answers(store) == {} and page.inner_text("#mine") == "0"
        assert "Undone (you had said: 2 > 1 = 3)" in page.inner_text("#message")
        wait_three_playing(page)
        press(page, "2", "1", "=", "3")
        wait_for(page, "t1")
        assert answers(store) == t0

        # 3, 1, Enter: the third is implied last (c > a > b). Then s skips all three.
        press(page, "Enter")
        assert "Rank two clips first" in page.inner_text("#message")
        press(page, "3", "1", "Enter")
        wait_for(page, "t2")
        t1 = {"t1:ab": 0.0, "t1:ac": 1.0, "t1:bc": 1.0}
        assert answers(store) == {**t0, **t1}
        press(page, "s")
        page.wait_for_function("document.body.dataset.kind === 'pair'", timeout=30000)
        assert all(answers(store)[q] is None for q in ids_of("t2"))

        # The pair after them is shown and answered as before.
        page.wait_for_function(
            "['left', 'right'].every(id => document.getElementById(id).readyState >= 2)"
        )
        assert page.is_visible("#pair") and page.is_hidden("#triplet")
        shown = page.evaluate("document.body.dataset.query")
        press(page, "ArrowLeft")
        page.wait_for_function(f"document.body.dataset.query !== '{shown}'", timeout=30000)
        assert answers(store)[shown] == 0.0
        assert page.inner_text("#mine") == "10"
        assert not errors, errors
        page.close()
    finally:
        server.stop()

    # The dataset reads back the rankings typed: t0 b > a = c, t1 c > a > b (t2 skipped).
    dataset = store.export()
    assert isinstance(dataset, PreferenceDataset)
    triplets, dropped = triplets_from_dataset(dataset)
    assert triplets is not None and dropped == 1 and list(triplets.triplet_id) == ["t0", "t1"]
    q = dataset.queries
    row = {qid: i for i, qid in enumerate(q.query_id)}

    def segment(triplet: str, member: str) -> np.ndarray:
        pair, side = {"a": ("ab", q.first), "b": ("ab", q.second), "c": ("ac", q.second)}[member]
        return side.obs[row[f"{triplet}:{pair}"]]

    for k, (tid, order, target) in enumerate([("t0", "bac", 0.5), ("t1", "cab", 1.0)]):
        for segs, member in zip(
            (triplets.anchor, triplets.first, triplets.second), order, strict=True
        ):
            assert np.array_equal(segs.obs[k], segment(tid, member)), (tid, member)
        assert triplets.target[k] == target
