"""The SQLite label store (pbrl.store): leases, answers, undo, aggregation, agreement."""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pbrl.data import PreferenceDataset, Queries, Segments
from pbrl.store import (
    BadInput,
    Conflict,
    LabelStore,
    LeaseExpired,
    NotAStore,
    NotFound,
    NotWritable,
    aggregate_labels,
    parse_label,
)

NQ, NV = 3, 2


def pair_queries(
    returns_first: list[float], returns_second: list[float], t: int = 5, seed: int = 0
) -> Queries:
    """Queries whose segments have the given true returns (and simulator state)."""

    def segs(returns: list[float], offset: int) -> Segments:
        n = len(returns)
        rng = np.random.default_rng(seed + offset)
        reward = np.zeros((n, t), np.float32)
        reward[:, 0] = returns
        return Segments(
            obs=rng.normal(size=(n, t, 4)).astype(np.float32),
            act=rng.normal(size=(n, t, 1)).astype(np.float32),
            true_reward=reward,
            mask=np.ones((n, t), bool),
            final_obs=np.zeros((n, 4), np.float32),
            terminated=np.zeros(n, bool),
            qpos=rng.normal(size=(n, t + 1, NQ)),
            qvel=rng.normal(size=(n, t + 1, NV)),
            env_id="InvertedPendulum-v5",
            run="test-run",
        )

    return Queries(segs(returns_first, 0), segs(returns_second, 1))


@pytest.fixture
def store(tmp_path: Path) -> LabelStore:
    return LabelStore(tmp_path / "labels.sqlite")


def fill(store: LabelStore, n: int = 4, **kwargs: object) -> Queries:
    queries = pair_queries([float(i) for i in range(n)], [float(n - i) for i in range(n)])
    store.add_queries(queries, source="test-run", **kwargs)  # type: ignore[arg-type]
    return queries


# -- labels -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "given, expected",
    [
        ("left", 0.0),
        ("right", 1.0),
        ("equal", 0.5),
        ("skip", math.nan),
        (0, 0.0),
        (1, 1.0),
        (0.5, 0.5),
        ("RIGHT", 1.0),
        (" Skip ", math.nan),
    ],
)
def test_parse_label(given: object, expected: float) -> None:
    got = parse_label(given)
    assert (math.isnan(got) and math.isnan(expected)) or got == expected


@pytest.mark.parametrize("bad", [2, -1, 0.3, "better", True, [0]])
def test_parse_label_rejects(bad: object) -> None:
    with pytest.raises(BadInput):
        parse_label(bad)


@pytest.mark.parametrize("missing", [None, float("nan"), np.float32("nan"), "", "nan", "null"])
def test_a_skip_must_be_explicit(store: LabelStore, missing: object) -> None:
    """A person's answer without a label is refused, not stored as a skip; label files
    (offline data) still read an empty cell as a skip."""
    from pbrl.data.preferences import parse_label as parse_file_label

    with pytest.raises(BadInput, match='(missing|empty).*"skip"'):
        parse_label(missing)
    assert math.isnan(parse_file_label(missing))  # the default (files) is unchanged
    fill(store, 1)
    lease = store.lease("alice")
    assert lease is not None
    with pytest.raises(BadInput, match="skip"):
        store.answer(lease.lease_id, "alice", missing)
    assert store.counts()["answers"] == 0
    store.answer(lease.lease_id, "alice", "skip")
    assert math.isnan(store.answers()[0]["label"] or math.nan)


@pytest.mark.parametrize(
    "labels, majority, first",
    [
        ([0.0], 0.0, 0.0),
        ([0.0, 1.0], 0.5, 0.0),  # left/right tie: equally good
        ([1.0, 1.0, 0.0], 1.0, 1.0),
        ([math.nan, 0.0], 0.0, math.nan),  # skips count only when everyone skipped
        ([math.nan, math.nan], math.nan, math.nan),
        ([0.5, 0.5, 1.0], 0.5, 0.5),
        ([0.0, 0.5], 0.5, 0.0),
        ([], math.nan, math.nan),
    ],
)
def test_aggregate_labels(labels: list[float], majority: float, first: float) -> None:
    for how, want in (("majority", majority), ("first", first)):
        got = aggregate_labels(labels, how)
        assert (math.isnan(got) and math.isnan(want)) or got == want, how


# -- leases and answers ----------------------------------------------------------------------------
def test_lease_answer_and_collect_round_trip(store: LabelStore) -> None:
    queries = fill(store, 3)
    assert store.counts() == {
        "total": 3,
        "answered": 0,
        "pending": 3,
        "leased": 0,
        "answers": 0,
        "mine": 0,
    }
    given = {}
    for label in ("left", "right", "skip"):
        lease = store.lease("alice")
        assert lease is not None
        store.answer(lease.lease_id, "alice", label, lease.query_id)
        given[lease.query_id] = parse_label(label)
    assert store.lease("alice") is None  # nothing left for alice
    assert store.counts("alice")["mine"] == 3 and store.counts()["answered"] == 3

    data = store.collect(["test-run"])
    assert data is not None and len(data) == 3
    for i, qid in enumerate(data.queries.query_id):
        j = list(queries.query_id).index(qid)
        assert data.queries.first[i].equals(queries.first[j])  # segments survive the store
        assert data.queries.second[i].equals(queries.second[j])
        assert _same(data.labels[i], given[qid])
    assert set(data.annotator) == {"alice"}
    assert store.collect(["test-run"]) is None  # each answer is handed over once


def test_a_leased_query_is_not_shown_to_another_until_the_lease_expires(store: LabelStore) -> None:
    fill(store, 2)
    a = store.lease("alice", duration_s=0.3)
    b = store.lease("bob", duration_s=0.3)
    assert a and b and a.query_id != b.query_id
    assert store.lease("carol") is None  # both pairs are held
    assert store.lease("alice").lease_id == a.lease_id  # a reload shows the same pair
    time.sleep(0.5)
    c = store.lease("carol")
    assert c is not None and c.query_id in (a.query_id, b.query_id)
    with pytest.raises(LeaseExpired):
        store.answer(b.lease_id, "bob", "left")
    assert store.counts()["answers"] == 0


def test_bad_answers_change_nothing(store: LabelStore) -> None:
    fill(store, 2)
    lease = store.lease("alice")
    assert lease is not None
    with pytest.raises(NotFound):
        store.answer("no-such-lease", "alice", "left")
    with pytest.raises(NotFound):
        store.answer(lease.lease_id, "alice", "left", query_id="no-such-query")
    with pytest.raises(BadInput):
        store.answer(lease.lease_id, "alice", 0.7)
    with pytest.raises(Conflict):
        store.answer(lease.lease_id, "mallory", "left")  # someone else's lease
    with pytest.raises(BadInput):
        store.answer(lease.lease_id, "", "left")
    assert store.counts()["answers"] == 0
    store.answer(lease.lease_id, "alice", "right")
    with pytest.raises(Conflict):  # double submission
        store.answer(lease.lease_id, "alice", "left")
    rows = store.answers()
    assert len(rows) == 1 and rows[0]["label"] == 1.0


def test_undo_retracts_and_shows_the_pair_again(store: LabelStore) -> None:
    fill(store, 3)
    first = store.lease("alice")
    store.answer(first.lease_id, "alice", "left")
    held = store.lease("alice")  # the next pair, now on screen
    undone, again = store.undo("alice")
    assert undone.query_id == first.query_id and undone.label == 0.0
    assert again.query_id == first.query_id and again.lease_id != first.lease_id
    assert store.counts("alice")["mine"] == 0
    assert store.lease("bob").query_id == held.query_id  # the released pair is free again
    store.answer(again.lease_id, "alice", "equal")
    live = store.answers()
    assert len(live) == 1 and live[0]["label"] == 0.5
    assert len(store.answers(include_retracted=True)) == 2  # the undone answer is kept
    with pytest.raises(Conflict):
        store.undo("nobody")
    store.collect()
    with pytest.raises(Conflict, match="already collected"):
        store.undo("alice")


def test_several_annotators_per_query(store: LabelStore) -> None:
    fill(store, 1, needed=3)
    leases = [store.lease(name) for name in ("a", "b", "c")]
    assert all(lease is not None for lease in leases)
    assert len({lease.query_id for lease in leases}) == 1  # the same pair, three people
    assert store.lease("d") is None  # its three answers are all spoken for
    for lease, label in zip(leases[:2], ("left", "right"), strict=True):
        store.answer(lease.lease_id, lease.annotator, label)
    assert store.collect() is None  # still one answer short
    store.answer(leases[2].lease_id, "c", "right")
    majority = store.export("majority")
    assert majority is not None and majority.labels.tolist() == [1.0]
    assert majority.annotator[0] == "a,b,c"
    assert store.export("first").labels.tolist() == [0.0]
    per = store.export("per-annotator")
    assert per.labels.tolist() == [0.0, 1.0, 1.0] and per.annotator.tolist() == ["a", "b", "c"]
    assert len(set(per.queries.query_id)) == 1


def test_export_round_trips_through_the_preference_dataset_format(
    store: LabelStore, tmp_path: Path
) -> None:
    fill(store, 3)
    for label in ("left", "right", "skip"):
        lease = store.lease("alice")
        store.answer(lease.lease_id, "alice", label)
    data = store.export()
    path = data.save(tmp_path / "prefs.npz")
    back = PreferenceDataset.load(path)
    assert back.queries.query_id.tolist() == data.queries.query_id.tolist()
    np.testing.assert_array_equal(back.labels, data.labels)
    assert back.queries.first.equals(data.queries.first)
    assert len(back.trainable) == 2


def test_collect_only_takes_its_own_sources(store: LabelStore) -> None:
    store.add_queries(pair_queries([1.0], [0.0]), source="run-a")
    store.add_queries(pair_queries([1.0], [0.0], seed=5), source="run-b")
    for _ in range(2):
        lease = store.lease("alice")
        store.answer(lease.lease_id, "alice", "left")
    assert len(store.collect(["run-a"])) == 1
    assert store.uncollected(["run-b"]) == 1
    assert len(store.collect(["run-b"])) == 1


def test_export_of_mixed_segment_lengths_names_the_sources(store: LabelStore) -> None:
    store.add_queries(pair_queries([1.0], [0.0], t=5), source="run-a")
    store.add_queries(pair_queries([1.0], [0.0], t=7, seed=3), source="run-b")
    for _ in range(2):
        lease = store.lease("alice")
        store.answer(lease.lease_id, "alice", "left")
    with pytest.raises(BadInput, match="run-a, run-b"):
        store.export()
    assert store.export(sources=["run-b"]).queries.first.length == 7


def test_stats_agreement(store: LabelStore) -> None:
    # Oracle: the first segment has the larger return in every pair -> label 0.
    store.add_queries(pair_queries([5.0, 5.0, 5.0], [1.0, 1.0, 1.0]), source="s", needed=2)
    answers = {"alice": ["left", "left", "right"], "bob": ["left", "right", "skip"]}
    for _ in range(3):
        for name in ("alice", "bob"):
            lease = store.lease(name)
            i = int(store.query(lease.query_id)["seq"]) - 1
            store.answer(lease.lease_id, name, answers[name][i])
    s = store.stats()
    assert s["annotators"]["alice"]["answers"] == 3
    assert s["annotators"]["alice"]["oracle"] == {"n": 3, "agreement": pytest.approx(2 / 3)}
    assert s["annotators"]["bob"]["oracle"] == {"n": 2, "agreement": 0.5}
    assert s["annotators"]["bob"]["skip"] == 1
    # Shared decided answers: pairs 1 (agree) and 2 (disagree).
    assert s["pairwise"]["alice | bob"] == {"n": 2, "agreement": 0.5}
    assert s["inter_annotator"] == {"n": 2, "agreement": 0.5}
    # Majority labels: 0, 0.5 (left/right tie), 1 (bob skipped) -> 1 of 3 matches the oracle.
    assert s["aggregated_vs_oracle"] == {"n": 3, "agreement": pytest.approx(1 / 3)}


def test_queries_without_state_or_with_bad_ids_are_refused(store: LabelStore) -> None:
    q = pair_queries([1.0], [0.0])
    no_state = Queries(Segments(**{**q.first.__dict__, "qpos": None, "qvel": None}), q.second)
    with pytest.raises(BadInput, match="simulator state"):
        store.add_queries(no_state)
    bad = Queries(q.first, q.second, np.array(["../../etc"]))
    with pytest.raises(BadInput, match="URL"):
        store.add_queries(bad)
    assert store.counts()["total"] == 0


def test_missing_or_foreign_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LabelStore(tmp_path / "nope.sqlite", create=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LabelStore(tmp_path / "nope.sqlite", readonly=True)
    assert not (tmp_path / "nope.sqlite").exists()
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database" * 100)
    with pytest.raises(ValueError, match="label store"):
        LabelStore(junk)


def _foreign_db(path: Path) -> Path:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE songs (title TEXT)")
    conn.execute("INSERT INTO songs VALUES ('x')")
    conn.commit()
    conn.close()
    return path


def _tables_and_journal(path: Path) -> tuple[set[str], str]:
    conn = sqlite3.connect(path)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    conn.close()
    return tables, mode


@pytest.mark.parametrize("readonly", [True, False])
def test_foreign_or_empty_files_are_refused_and_left_unchanged(
    tmp_path: Path, readonly: bool
) -> None:
    foreign = _foreign_db(tmp_path / "music.sqlite")
    with pytest.raises(NotAStore, match=r"is not a pbrl label store \(its tables are songs\)"):
        LabelStore(foreign, readonly=readonly)
    assert _tables_and_journal(foreign) == ({"songs"}, "delete")
    assert not Path(f"{foreign}-wal").exists()
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    if readonly:  # a read-only command on an empty file: refused, nothing written
        with pytest.raises(NotAStore, match="not a pbrl label store .an empty database"):
            LabelStore(empty, readonly=True)
        assert empty.stat().st_size == 0 and not Path(f"{empty}-wal").exists()
    else:  # `queries` / a trainer may start a store in an empty file
        LabelStore(empty)
        assert LabelStore(empty, readonly=True).counts()["total"] == 0


def test_readonly_store_reads_and_writes_nothing(store: LabelStore, tmp_path: Path) -> None:
    fill(store, 2)
    lease = store.lease("alice")
    assert lease is not None
    store.answer(lease.lease_id, "alice", "left")
    store.close()
    before = store.path.read_bytes()
    ro = LabelStore(store.path, readonly=True)
    assert ro.counts()["answers"] == 1 and ro.stats()["progress"]["total"] == 2
    assert len(ro.export()) == 1
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        ro.set_meta(task="x")
    ro.close()
    assert store.path.read_bytes() == before


def test_store_under_a_file_or_in_a_folder_is_refused(tmp_path: Path) -> None:
    afile = tmp_path / "somefile.txt"
    afile.write_text("x")
    with pytest.raises(NotWritable, match="somefile.txt is a file, not a folder"):
        LabelStore(afile / "labels.sqlite")
    with pytest.raises(NotWritable, match="somefile.txt is a file, not a folder"):
        LabelStore(afile / "deeper" / "labels.sqlite")
    with pytest.raises(NotAStore, match="is a folder, not a label store file"):
        LabelStore(tmp_path)


def _without_root_powers() -> list[str]:
    """A command prefix under which root obeys file permissions (as everyone else does)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: file permissions do not apply")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search"]


@pytest.mark.parametrize("what", ["file", "folder"])
def test_read_only_store_is_refused_for_writing_but_readable(tmp_path: Path, what: str) -> None:
    path = tmp_path / "ro" / "labels.sqlite"
    store = LabelStore(path)
    fill(store, 1)
    store.close()
    (path if what == "file" else path.parent).chmod(0o444 if what == "file" else 0o555)
    script = (
        "import sys\n"
        "from pbrl.store import LabelStore, StoreError\n"
        f"print(LabelStore({str(path)!r}, readonly=True).counts()['total'])\n"
        "try:\n"
        f"    LabelStore({str(path)!r})\n"
        "except StoreError as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    try:
        out = subprocess.run(
            [*_without_root_powers(), sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        path.parent.chmod(0o755)
        path.chmod(0o644)
    assert out.returncode == 0, out.stderr
    total, error = out.stdout.strip().split("\n")
    assert total == "1"
    words = "is read-only" if what == "file" else "is not writable"
    assert error.startswith("NotWritable") and words in error, error


# -- several processes at once ---------------------------------------------------------------------
def _label_all(path: str, name: str, out: mp.Queue) -> None:
    store = LabelStore(path)
    done = []
    while (lease := store.lease(name)) is not None:
        store.answer(lease.lease_id, name, "left")
        done.append(lease.query_id)
    out.put((name, done))


def test_eight_processes_label_each_query_exactly_once(tmp_path: Path) -> None:
    path = tmp_path / "labels.sqlite"
    store = LabelStore(path)
    store.add_queries(pair_queries([1.0] * 40, [0.0] * 40), source="s")
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    procs = [ctx.Process(target=_label_all, args=(str(path), f"p{i}", out)) for i in range(8)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(30)
    done = [q for qs in results.values() for q in qs]
    assert len(done) == 40 and len(set(done)) == 40  # every pair once, by exactly one process
    rows = store.answers()
    assert len(rows) == 40 and len({r["query_id"] for r in rows}) == 40


_WRITER = """
import sys
from pbrl.store import LabelStore
store = LabelStore(sys.argv[1])
while (lease := store.lease("w")) is not None:
    store.answer(lease.lease_id, "w", "right")
    print(lease.query_id, flush=True)  # printed only after the commit returned
"""


def test_sigkill_mid_write_loses_no_committed_answer(tmp_path: Path) -> None:
    path = tmp_path / "labels.sqlite"
    store = LabelStore(path)
    store.add_queries(pair_queries([1.0] * 400, [0.0] * 400), source="s")
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    acked = []
    assert proc.stdout is not None
    for line in proc.stdout:
        acked.append(line.strip())
        if len(acked) == 25:
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(10)
    store = LabelStore(path)  # reopen after the crash (WAL recovery)
    rows = store.answers()
    stored = [r["query_id"] for r in rows]
    assert set(acked) <= set(stored) and len(stored) == len(set(stored))
    assert all(r["label"] == 1.0 for r in rows)
    assert store.query(stored[-1])["status"] == "answered"


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b
