"""Makes ``store_schema3.sqlite``: a label store as pbrl wrote it before triplets had a group
column (schema 3: queries, leases, answers, meta, runs, rankings, suggestions; a triplet's
pairs found only by their ``<t>:ab``/``:ac``/``:bc`` query ids).

It was run once, against commit fd59285 (where the store was ``pbrl/data/store.py``), with

    git worktree add /tmp/fd59285 fd59285
    cd /tmp/fd59285 && PYTHONPATH=$PWD python <this file> <repo>/tests/data/store_schema3.sqlite

and its output committed; it does not run against later commits (``pbrl.data.store`` is now
``pbrl.store``). tests/test_store_migration.py opens a copy with the current code and checks
that every row below survived the migration and that the triplets are grouped.

What it holds (InvertedPendulum-v5 segments of 4 steps, run ``demo-run``):

* pairs ``p0`` .. ``p3`` (``p0`` asks for two answers): alice answers ``p0`` left and ``p1``
  equal, bob answers ``p0`` right and skips ``p2``; alice answers ``p3`` right, undoes it
  (a retracted answer) and answers it left again. A trainer collected ``p0`` and ``p1``.
* triplet ``tfixture00001`` ranked by alice on the page (a triplet lease, three answers);
  triplet ``tfixture00002`` leased to bob (an active triplet lease: three lease rows);
  pair ``p4`` leased to carol (an active single lease).
* a VLM suggestion for ``p4``, run ``demo-run`` registered with factors forward/ctrl and
  ranked once, and a task description in ``meta``.
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import numpy as np

from pbrl.data import Queries, Segments
from pbrl.data.store import LabelStore, Suggestion  # as of commit fd59285
from pbrl.data.triplets import triplet_queries

YEAR = 365 * 24 * 3600.0  # leases that stay active for the test's lifetime


def segments(n: int, seed: int, t: int = 4) -> Segments:
    rng = np.random.default_rng(seed)
    reward = np.zeros((n, t), np.float32)
    reward[:, 0] = rng.normal(size=n)
    return Segments(
        obs=rng.normal(size=(n, t, 4)).astype(np.float32),
        act=rng.normal(size=(n, t, 1)).astype(np.float32),
        true_reward=reward,
        mask=np.ones((n, t), bool),
        final_obs=np.zeros((n, 4), np.float32),
        terminated=np.zeros(n, bool),
        qpos=rng.normal(size=(n, t + 1, 2)),
        qvel=rng.normal(size=(n, t + 1, 2)),
        env_id="InvertedPendulum-v5",
        run="demo-run",
    )


def main(path: Path) -> None:
    if path.exists():
        path.unlink()
    store = LabelStore(path)
    store.set_meta(task="keep the pole upright")
    pairs = Queries(segments(5, 1), segments(5, 2), np.array([f"p{i}" for i in range(5)]))
    store.set_suggestions([Suggestion("p4", 1.0, "the right pole is steadier", "right", "vlm-x")])

    def some(rows: list[int]) -> Queries:
        return Queries(pairs.first[rows], pairs.second[rows], pairs.query_id[rows])

    store.add_queries(some([0]), source="demo-run", needed=2)
    store.add_queries(some([1, 2, 3, 4]), source="demo-run")
    a, b, c = segments(2, 3), segments(2, 4), segments(2, 5)
    store.add_queries(
        triplet_queries(a, b, c, np.array(["tfixture00001", "tfixture00002"])), source="demo-run"
    )

    def answer(who: str, qid: str, label: str) -> None:
        lease = store.lease(who)
        assert lease is not None and lease.query_id == qid, (who, qid, lease)
        store.answer(lease.lease_id, who, label)

    answer("alice", "p0", "left")
    answer("bob", "p0", "right")
    answer("alice", "p1", "equal")
    assert store.collect(["demo-run"]) is not None  # p0 and p1 delivered to a trainer
    answer("bob", "p2", "skip")
    answer("alice", "p3", "right")
    store.undo("alice")  # retracts p3's answer and leases p3 to alice again
    lease = store.lease("alice")
    assert lease is not None and lease.query_id == "p3"
    store.answer(lease.lease_id, "alice", "left")
    lease = store.lease("carol", duration_s=YEAR)
    assert lease is not None and lease.query_id == "p4", lease
    lease = store.lease("alice", triplets=True)
    assert lease is not None and lease.triplet == "tfixture00001", lease
    store.answer_triplet(lease.lease_id, "alice", {"a": 1, "b": 0, "c": 2})
    lease = store.lease("bob", duration_s=YEAR, triplets=True)
    assert lease is not None and lease.triplet == "tfixture00002", lease
    store.register_run("demo-run", "InvertedPendulum-v5", ["reward_forward", "reward_ctrl"])
    store.set_ranking("demo-run", ["ctrl", "forward"], [False, True], annotator="alice")
    store.close()
    # Fold the WAL into the file (one file to commit) and repack it in 1 KiB pages (a
    # smaller fixture; a store's page size is no part of its schema), back in WAL mode.
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.execute("PRAGMA page_size=1024")
    conn.execute("VACUUM")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
