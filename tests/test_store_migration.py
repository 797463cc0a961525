"""The label store's schema 4 on real files: a store written by an earlier pbrl (schema 3,
tests/data/store_schema3.sqlite, made by tests/data/make_store_schema3.py at commit fd59285)
is migrated in place, in one transaction, with every row kept and its triplets grouped by
column; and a closed store leaves no ``-wal``/``-shm`` files behind."""

from __future__ import annotations

import math
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_label_store import pair_queries

from pbrl.data import Queries
from pbrl.data.triplets import triplets_from_dataset
from pbrl.store import SCHEMA_VERSION, LabelStore, schema

FIXTURE = Path(__file__).parent / "data" / "store_schema3.sqlite"
OLD_TABLES = ("meta", "queries", "leases", "answers", "runs", "rankings", "suggestions")
RANKED, LEASED = "tfixture00001", "tfixture00002"  # alice ranked the first; bob holds the second


def rows(path: Path, table: str) -> list[dict[str, Any]]:
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY rowid")]


def version(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()[0]


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def old(tmp_path: Path) -> Path:
    path = tmp_path / "labels.sqlite"
    shutil.copy(FIXTURE, path)
    return path


def test_the_fixture_is_a_schema_3_store() -> None:
    assert version(FIXTURE) == "3" and SCHEMA_VERSION == 4
    assert {"triplet", "role"}.isdisjoint(rows(FIXTURE, "queries")[0])


def test_a_schema_3_file_is_migrated_with_every_row_kept(old: Path) -> None:
    before = {t: rows(old, t) for t in OLD_TABLES}
    assert len(before["answers"]) == 9 and len(before["leases"]) == 13

    ro = LabelStore(old, readonly=True)  # a report reads it as it is and changes nothing
    assert ro.counts()["answers"] == 8 and ro.ranking("demo-run") is not None
    ro.close()
    assert version(old) == "3" and {t: rows(old, t) for t in OLD_TABLES} == before

    store = LabelStore(old)
    assert version(old) == str(SCHEMA_VERSION)
    after = {t: rows(old, t) for t in OLD_TABLES}
    for table in OLD_TABLES:  # every row, every old column, unchanged
        if table == "meta":
            continue
        assert [{k: r[k] for k in before[table][0]} for r in after[table]] == before[table]
    meta_before = {r["key"]: r["value"] for r in before["meta"]}
    assert {r["key"]: r["value"] for r in after["meta"]} == {**meta_before, "schema": "4"}

    # Triplets grouped by column: each pair's triplet and role, each triplet lease's rows.
    grouped = {r["id"]: (r["triplet"], r["role"]) for r in after["queries"]}
    for t in (RANKED, LEASED):
        for role in ("ab", "ac", "bc"):
            assert grouped.pop(f"{t}:{role}") == (t, role)
    assert set(grouped.values()) == {(None, None)}  # p0 .. p4 are lone pairs
    groups: dict[str | None, list[str]] = {}
    for r in after["leases"]:
        groups.setdefault(r["triplet_lease"], []).append(r["query_id"])
    lone = groups.pop(None)
    assert sorted(lone) == ["p0", "p0", "p1", "p2", "p3", "p3", "p4"]
    assert sorted(sorted(g) for g in groups.values()) == [
        [f"{t}:ab", f"{t}:ac", f"{t}:bc"] for t in (RANKED, LEASED)
    ]
    store.close()


def test_a_migrated_store_works_on(old: Path) -> None:
    store = LabelStore(old)
    assert store.meta()["task"] == "keep the pole upright"
    ranking = store.ranking("demo-run")
    assert ranking is not None and ranking.factors == ("ctrl", "forward")
    assert ranking.higher_is_better == (False, True) and ranking.annotator == "alice"
    assert [(r.name, r.factors) for r in store.runs()] == [("demo-run", ("forward", "ctrl"))]
    suggestion = store.suggestion("p4")
    assert suggestion is not None and suggestion.word == "right" and suggestion.model == "vlm-x"

    # bob's triplet lease, made before the migration, comes back whole and takes a ranking.
    held = store.lease("bob", triplets=True)
    assert held is not None and held.triplet == LEASED
    assert held.query_ids == (f"{LEASED}:ab", f"{LEASED}:ac", f"{LEASED}:bc")
    got = store.answer_triplet(held.lease_id, "bob", {"a": 2, "b": 0, "c": 1}, LEASED)
    assert [(a.triplet, a.role, a.label) for a in got] == [
        (LEASED, "ab", 1.0),
        (LEASED, "ac", 1.0),
        (LEASED, "bc", 0.0),
    ]
    carol = store.lease("carol")  # carol's lease on p4 too
    assert carol is not None and carol.query_id == "p4"

    # alice's ranking, answered before the migration, is undone whole and leased again whole.
    undone, again = store.undo_answers("alice")
    assert [a.query_id for a in undone] == [f"{RANKED}:ab", f"{RANKED}:ac", f"{RANKED}:bc"]
    assert again.triplet == RANKED and len(again.query_ids) == 3
    store.answer_triplet(again.lease_id, "alice", {"a": 0, "b": 1, "c": 2})

    # Answers from before and after the migration: two annotators on p0, both triplets ranked.
    dataset = store.export("per-annotator")
    assert dataset is not None
    p0 = sorted(
        (str(who), float(y))
        for q, who, y in zip(
            dataset.queries.query_id, dataset.annotator, dataset.labels, strict=True
        )
        if q == "p0"
    )
    assert p0 == [("alice", 0.0), ("bob", 1.0)]
    assert any(math.isnan(y) for y in dataset.labels)  # bob's skip of p2
    triplets, dropped = triplets_from_dataset(store.export())
    assert triplets is not None and dropped == 0
    assert sorted(triplets.triplet_id) == [RANKED, LEASED]
    store.close()


def test_a_crash_mid_migration_leaves_the_schema_3_store(
    old: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = {t: rows(old, t) for t in OLD_TABLES}
    real = schema._to_4

    def crash(conn: sqlite3.Connection) -> None:
        real(conn)  # columns added and filled, then the power goes
        raise RuntimeError("power cut")

    monkeypatch.setattr(schema, "_to_4", crash)
    with pytest.raises(RuntimeError, match="power cut"):
        LabelStore(old)
    assert version(old) == "3" and {t: rows(old, t) for t in OLD_TABLES} == before
    assert "triplet" not in rows(old, "queries")[0]
    monkeypatch.undo()
    LabelStore(old).close()
    assert version(old) == "4" and rows(old, "queries")[-1]["triplet"] == LEASED


def test_triplet_columns_come_from_the_pairs_added(tmp_path: Path) -> None:
    """New pairs get their triplet and role when they come in; a lone pair named like a
    triplet's pair is grouped only with the siblings that exist (it is leased alone)."""
    store = LabelStore(tmp_path / "labels.sqlite")
    q = pair_queries([1.0, 2.0, 3.0], [0.0, 1.0, 2.0])
    store.add_queries(Queries(q.first, q.second, np.array(["solo", "t7:ab", "t7:ac"])), "s")
    got = {r["id"]: (r["triplet"], r["role"]) for r in rows(store.path, "queries")}
    assert got == {"solo": (None, None), "t7:ab": ("t7", "ab"), "t7:ac": ("t7", "ac")}
    lease = store.lease("alice", triplets=True)
    assert lease is not None and lease.triplet is None and lease.query_id == "solo"


# -- closing: no -wal / -shm left behind (issue 25) -------------------------------------------
def test_a_closed_store_leaves_only_its_file(tmp_path: Path) -> None:
    store = LabelStore(tmp_path / "labels.sqlite")
    store.add_queries(pair_queries([1.0], [0.0]), source="s")
    lease = store.lease("alice")
    assert lease is not None
    worker = threading.Thread(target=store.answer, args=(lease.lease_id, "alice", "left"))
    worker.start()  # a connection of another thread, which has ended by the close
    worker.join()
    assert "labels.sqlite-wal" in files(tmp_path)  # WAL while open
    store.close()
    assert files(tmp_path) == ["labels.sqlite"]
    again = LabelStore(tmp_path / "labels.sqlite", readonly=True)
    assert again.counts()["answers"] == 1  # the answer is in the file itself
    again.close()
    assert files(tmp_path) == ["labels.sqlite"]


def test_closing_one_of_two_open_stores_keeps_wal_for_the_other(tmp_path: Path) -> None:
    path = tmp_path / "labels.sqlite"
    page, trainer = LabelStore(path), LabelStore(path)  # e.g. the server and a training run
    page.add_queries(pair_queries([1.0, 2.0], [0.0, 1.0]), source="s")
    page.close()
    conn = trainer._conn()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    lease = trainer.lease("bob")
    assert lease is not None
    trainer.answer(lease.lease_id, "bob", "right")
    assert page.counts()["answers"] == 1  # a closed store opens again when used
    page.close()
    trainer.close()
    assert files(tmp_path) == ["labels.sqlite"]


_LEFT_OPEN = """
import sys, threading
from pbrl.store import LabelStore
from test_label_store import pair_queries
store = LabelStore(sys.argv[1])
store.add_queries(pair_queries([1.0], [0.0]), source="s")
reader = LabelStore(sys.argv[1], readonly=True)  # as the page's clip worker reads it
t = threading.Thread(target=lambda: print(store.counts()["total"], reader.counts()["total"]))
t.start(); t.join()
import builtins  # kept until late in shutdown: without the exit hook the reader closes last
builtins.kept = reader if sys.argv[2] == "reader-last" else store
"""


@pytest.mark.parametrize("order", ["reader-last", "writer-last"])
def test_stores_left_open_are_closed_at_exit(tmp_path: Path, order: str) -> None:
    """A writer and a reader left open at exit (a page server and its clip worker), each
    used from another thread too: the last one closed removes the -wal and -shm files.
    (At fd59285 both stayed: a connection made in a thread and collected in another was
    never closed, and a reader closing last cannot remove them.)"""
    path = tmp_path / "labels.sqlite"
    env_path = [str(Path(__file__).parent), *sys.path]
    out = subprocess.run(
        [sys.executable, "-c", _LEFT_OPEN, str(path), order],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(env_path)},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "1 1"
    assert files(tmp_path) == ["labels.sqlite"]
