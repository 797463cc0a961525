"""The label store: one SQLite file (WAL) holding queries, leases and every answer.

Nothing to install or run: the trainer (through :class:`pbrl.teachers.human.HumanTeacher`),
the labeling page and ``python -m pbrl.label`` open the same file, from any number of
processes. Every change is one ``BEGIN IMMEDIATE`` transaction committed with
``synchronous=FULL``, so an answer the page has acknowledged survives a crash (or SIGKILL)
of the page server or of the trainer at any moment, and a half-done change never lands.

Tables (``schema`` 3; an older store is migrated in place, in one transaction, the first
time a writer opens it):

* ``queries``: one row per segment pair, with the pair itself (a ``.npz`` blob of both
  :class:`~pbrl.data.Segments` rows, simulator state included, so clips can be re-rendered
  any time), the environment's constructor arguments, how many answers it needs, its
  ``status`` (``pending``, ``leased``, ``answered``), the scripted oracle's label when the
  segments carry a true reward, and when a trainer collected it.
* ``leases``: a query shown to one annotator; until the lease expires nobody else is shown
  it (unless the query asks for several annotators' answers). The three pairs of a triplet
  (``<t>:ab``, ``<t>:ac``, ``<t>:bc``, :mod:`pbrl.data.triplets`) are leased together to the
  labeling page (``lease(..., triplets=True)``): three rows ``<lease>:ab``, ``<lease>:ac``,
  ``<lease>:bc`` made, renewed, answered, expired and released together, and handed out as
  one lease ``<lease>`` (:attr:`Lease.triplet`). A ranking of the three
  (:meth:`LabelStore.answer_triplet`) is their three pair answers, written in one
  transaction; undo retracts all three.
* ``answers``: every answer with annotator, label (0 left/first better, 1 right/second,
  0.5 equal, NULL skip / can't tell), time shown and time answered. An undone answer is kept
  with ``retracted_at`` set; at most one live answer per (query, annotator).
* ``meta``: key/value strings (task description, latest evaluation video, ...).
* ``runs`` (schema 2): one row per run (the trainer's run name, the ``source`` of its queries):
  its environment and that environment's reward-factor names. Registered by ``add_queries``,
  by a ``teacher=heron`` run whose ranking comes from the store, or by
  ``python -m pbrl.label ranking --env``.
* ``rankings`` (schema 2): a person's ranking of a run's reward factors (HERON), most
  important first, with a direction per factor, the annotator and the time. Every ranking
  saved is kept; the latest is the run's ranking.
* ``suggestions`` (schema 3): a vision-language model's answer to a query, shown on the page
  as a suggestion (``teacher=vlm_then_human``): its label (0 / 1 / 0.5, NULL unsure), its
  stage-1 analysis text, its raw reply, the model's name and the time. One per query (a new
  suggestion replaces the old); the person's answer is an ordinary row of ``answers``, so
  both are kept. No foreign key: a teacher writes the suggestion *before* the query, so the
  page never shows the pair without it.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import sqlite3
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pbrl.data.preferences import PreferenceDataset, Queries, oracle_labels
from pbrl.data.preferences import parse_label as _parse_label
from pbrl.data.segments import Segments
from pbrl.data.triplets import PAIRS, TRIPLET_ID
from pbrl.errors import ConfigError

SCHEMA_VERSION = 3  # 1: queries, leases, answers, meta; 2: + runs, rankings; 3: + suggestions
Aggregate = Literal["majority", "first", "per-annotator"]
AGGREGATES: tuple[str, ...] = ("majority", "first", "per-annotator")
QUERY_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
ANNOTATOR = re.compile(r"^[^\x00-\x1f\x7f]{1,64}$")
RUN_NAME = re.compile(r"^[^\x00-\x1f\x7f]{1,200}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS queries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    source TEXT NOT NULL DEFAULT '',
    batch TEXT NOT NULL DEFAULT '',
    env_id TEXT NOT NULL DEFAULT '',
    env_kwargs TEXT NOT NULL DEFAULT '{}',
    needed INTEGER NOT NULL DEFAULT 1 CHECK (needed >= 1),
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'leased', 'answered')),
    oracle REAL,
    segments BLOB NOT NULL,
    delivered_at REAL
);
CREATE INDEX IF NOT EXISTS queries_open ON queries (status, seq);
CREATE TABLE IF NOT EXISTS leases (
    id TEXT PRIMARY KEY,
    query_id TEXT NOT NULL REFERENCES queries (id),
    annotator TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('active', 'answered', 'expired', 'released'))
);
CREATE INDEX IF NOT EXISTS leases_active ON leases (query_id) WHERE state = 'active';
CREATE INDEX IF NOT EXISTS leases_annotator ON leases (annotator) WHERE state = 'active';
CREATE TABLE IF NOT EXISTS answers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    query_id TEXT NOT NULL REFERENCES queries (id),
    annotator TEXT NOT NULL,
    label REAL CHECK (label IS NULL OR label IN (0.0, 0.5, 1.0)),
    shown_at REAL NOT NULL,
    answered_at REAL NOT NULL,
    lease_id TEXT UNIQUE REFERENCES leases (id),
    retracted_at REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS answers_once ON answers (query_id, annotator)
    WHERE retracted_at IS NULL;
CREATE INDEX IF NOT EXISTS answers_by_annotator ON answers (annotator, answered_at);
CREATE TABLE IF NOT EXISTS runs (
    name TEXT PRIMARY KEY,
    env_id TEXT NOT NULL DEFAULT '',
    env_kwargs TEXT NOT NULL DEFAULT '{}',
    factors TEXT NOT NULL DEFAULT '[]',
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rankings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run TEXT NOT NULL REFERENCES runs (name),
    factors TEXT NOT NULL,
    higher_is_better TEXT NOT NULL,
    annotator TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS rankings_by_run ON rankings (run, id);
CREATE TABLE IF NOT EXISTS suggestions (
    query_id TEXT PRIMARY KEY,
    label REAL CHECK (label IS NULL OR label IN (0.0, 0.5, 1.0)),
    analysis TEXT NOT NULL DEFAULT '',
    reply TEXT NOT NULL DEFAULT '',
    model TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL
);
"""


# -- errors: each maps to one HTTP status on the page's API ---------------------------------
class StoreError(Exception):
    """A request the store refuses; ``status`` is the HTTP status the page server answers."""

    status = 400


class BadInput(StoreError):
    status = 422


class NotFound(StoreError):
    status = 404


class Conflict(StoreError):
    status = 409


class LeaseExpired(StoreError):
    status = 410


class NotAStore(StoreError, ConfigError):
    """A file that is not a pbrl label store (another SQLite database, an empty file...)."""


class NotWritable(StoreError, ConfigError):
    """A store that cannot be written (read-only file, folder or file system)."""

    status = 503


_TABLES = ("meta", "queries", "leases", "answers")


def check_writable(path: str | Path) -> Path:
    """Raise :class:`NotWritable` (one line) unless a store at ``path`` can be created or
    written: its folder exists or can be made, and the file and folder are writable (SQLite
    writes ``-wal`` and ``-shm`` files next to the store)."""
    path = Path(path).expanduser().absolute()
    if path.is_dir():
        raise NotWritable(f"{path} is a folder, not a label store file: pass a file path")
    folder = path.parent
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise NotWritable(
            f"cannot create {path}: {existing} is a file, not a folder; "
            "pass a store path inside a folder"
        )
    if existing != folder:
        if not os.access(existing, os.W_OK | os.X_OK):
            raise NotWritable(
                f"cannot create {path}: folder {existing} is not writable; "
                "pass a store path in a folder you can write"
            )
        return path
    if not os.access(folder, os.W_OK | os.X_OK):
        raise NotWritable(
            f"folder {folder} is not writable (SQLite writes {path.name}-wal and "
            f"{path.name}-shm next to the store): make it writable or copy the store elsewhere"
        )
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise NotWritable(
            f"{path} is read-only: make it writable (chmod u+w) or copy it elsewhere; "
            "only `pbrl.label stats` and `export` read a store without writing"
        )
    return path


# -- small records ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Lease:
    lease_id: str
    query_id: str  # a triplet's lease: its first pair, ``<triplet>:ab``
    annotator: str
    shown_at: float
    expires_at: float
    env_id: str
    triplet: str | None = None  # set when the lease covers a triplet's three pairs

    @property
    def query_ids(self) -> tuple[str, ...]:
        """The queries this lease covers: one pair, or a triplet's three pairs."""
        return triplet_pairs(self.triplet) if self.triplet else (self.query_id,)


@dataclass(frozen=True)
class Answer:
    answer_id: int
    query_id: str
    annotator: str
    label: float  # NaN = skip
    shown_at: float
    answered_at: float


@dataclass(frozen=True)
class Suggestion:
    """A model's answer to a query, shown to people as a suggestion (never as a label)."""

    query_id: str
    label: float  # 0 left/first, 1 right/second, 0.5 equal, NaN unsure
    analysis: str = ""  # the VLM's stage-1 text (what each image shows, the difference)
    reply: str = ""  # its raw stage-2 reply
    model: str = ""
    created_at: float = 0.0

    @property
    def word(self) -> str:
        """left / right / equal / unsure (the page's words)."""
        return SUGGESTION_WORDS.get(self.label, "unsure")

    def to_json(self) -> dict[str, Any]:
        return {
            "label": None if math.isnan(self.label) else self.label,
            "word": self.word,
            "analysis": self.analysis,
            "model": self.model,
            "created_at": self.created_at,
        }


SUGGESTION_WORDS = {0.0: "left", 1.0: "right", 0.5: "equal"}


@dataclass(frozen=True)
class RunInfo:
    """A run the store knows: its environment and that environment's reward factors."""

    name: str
    env_id: str
    env_kwargs: dict[str, Any]
    factors: tuple[str, ...]  # bare names (``forward``, not ``reward_forward``), as reported
    created_at: float


@dataclass(frozen=True)
class Ranking:
    """A person's ranking of a run's reward factors (HERON): most important first."""

    ranking_id: int
    run: str
    factors: tuple[str, ...]
    higher_is_better: tuple[bool, ...]  # one per factor, in rank order
    annotator: str
    created_at: float

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.ranking_id,
            "run": self.run,
            "factors": list(self.factors),
            "higher_is_better": list(self.higher_is_better),
            "annotator": self.annotator,
            "created_at": self.created_at,
        }


def factor_name(name: str) -> str:
    """A reward factor's bare name: ``reward_forward`` and ``forward`` are both ``forward``."""
    return name.strip().removeprefix("reward_")


def parse_label(value: Any, strict: bool = True) -> float:
    """A person's answer (see :func:`pbrl.data.preferences.parse_label`).

    Strict by default: a skip must be the word ``skip``; a missing label (``None``, NaN, "")
    is refused (:class:`BadInput`) rather than stored as a skip.
    """
    try:
        return _parse_label(value, strict=strict)
    except ValueError as exc:
        raise BadInput(str(exc)) from None


def check_annotator(name: Any) -> str:
    if not isinstance(name, str) or not ANNOTATOR.match(name.strip()):
        raise BadInput("annotator must be a name of 1 to 64 printable characters")
    return name.strip()


# -- triplets: three pairs ranked as a whole ---------------------------------------------------
MEMBERS = ("a", "b", "c")  # a = first of <t>:ab, b = second of <t>:ab, c = second of <t>:ac
PAIR_NAMES = tuple(name for name, _, _ in PAIRS)  # ab, ac, bc
RANKS_HELP = (
    'a ranking is {"a": rank, "b": rank, "c": rank} with ranks 0 (best) to 2, equal ranks '
    'for a tie (b > a = c is {"a": 1, "b": 0, "c": 1}), or "skip"'
)


def triplet_pairs(triplet: str) -> tuple[str, ...]:
    """The query ids of a triplet's three pairs: ``<triplet>:ab``, ``:ac``, ``:bc``."""
    return tuple(f"{triplet}:{name}" for name in PAIR_NAMES)


def triplet_of(query_id: str) -> str | None:
    """The triplet whose pair ``query_id`` is (None: an ordinary pair)."""
    m = TRIPLET_ID.match(str(query_id))
    return m["triplet"] if m else None


def ranking_labels(ranks: Any) -> dict[str, float]:
    """The labels of a triplet's pairs (``ab``, ``ac``, ``bc``) from a person's ranking:
    ``{"a": 0, "b": 1, "c": 1}`` (0 best; equal ranks tie) or ``"skip"`` (all three NaN).
    Anything else is :class:`BadInput` naming the problem."""
    if isinstance(ranks, str) and ranks.strip().lower() == "skip":
        return dict.fromkeys(PAIR_NAMES, math.nan)
    if ranks is None:
        raise BadInput(f"the ranking is missing (a skip must be explicit): {RANKS_HELP}")
    if not isinstance(ranks, dict):
        raise BadInput(f"the ranking {ranks!r} is not valid: {RANKS_HELP}")
    missing = [m for m in MEMBERS if m not in ranks]
    extra = [k for k in ranks if k not in MEMBERS]
    if missing or extra:
        what = f"leaves out {', '.join(missing)}" if missing else f"names {', '.join(extra)}"
        raise BadInput(f"the ranking {what}: rank exactly a, b and c; {RANKS_HELP}")
    for m in MEMBERS:
        r = ranks[m]
        if isinstance(r, bool) or not isinstance(r, int) or not 0 <= r <= 2:
            raise BadInput(f"the rank of {m} is {r!r}, not 0, 1 or 2: {RANKS_HELP}")
    rank = [ranks[m] for m in MEMBERS]
    return {name: 0.5 if rank[i] == rank[j] else float(rank[i] > rank[j]) for name, i, j in PAIRS}


def labels_ranks(labels: dict[str, float]) -> dict[str, int] | None:
    """The ranking (``{"a": 0, ...}``, 0 best) that a triplet's pair labels say, or None
    for a skip or labels that are no ranking (inverse of :func:`ranking_labels`)."""
    if set(labels) != set(PAIR_NAMES) or any(math.isnan(v) for v in labels.values()):
        return None
    score = [0.0, 0.0, 0.0]
    for name, i, j in PAIRS:
        score[i] += 1.0 - labels[name]
        score[j] += labels[name]
    ranks = {m: sum(s > score[k] for s in set(score)) for k, m in enumerate(MEMBERS)}
    return ranks if ranking_labels(ranks) == labels else None


def _db_label(label: float) -> float | None:
    return None if math.isnan(label) else float(label)


def _py_label(value: float | None) -> float:
    return math.nan if value is None else float(value)


# -- segment pairs as blobs --------------------------------------------------------------------
def encode_pair(first: Segments, second: Segments) -> bytes:
    buf = io.BytesIO()
    arrays: dict[str, Any] = {**first.to_arrays("first/"), **second.to_arrays("second/")}
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def decode_pair(blob: bytes) -> tuple[Segments, Segments]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    return Segments.from_arrays(arrays, "first/"), Segments.from_arrays(arrays, "second/")


def _blob_factor_names(blob: bytes) -> tuple[str, ...]:
    """The reward-factor names of a stored pair, without decoding its arrays."""
    with np.load(io.BytesIO(blob), allow_pickle=False) as f:
        if "first/factor_names" not in f.files:
            return ()
        return tuple(str(x) for x in f["first/factor_names"].tolist())


def oracle_label(first: Segments, second: Segments) -> float | None:
    """The scripted oracle's label for one pair (as the trainer's diagnostics compute it),
    or None when the segments carry no true reward (e.g. an offline dataset without one)."""
    if not (np.any(first.true_reward) or np.any(second.true_reward)):
        return None
    return float(oracle_labels(Queries(first, second))[0])


# -- aggregation ---------------------------------------------------------------------------
def aggregate_labels(labels: Sequence[float], how: str = "majority") -> float:
    """One label from several annotators' answers to the same query (in answer order).

    ``majority``: the most frequent of 0 / 1 / 0.5 among decided answers; a tie between
    left and right is 0.5 (equally good); skips count only when everyone skipped.
    ``first``: the earliest answer, skip included.
    """
    if not labels:
        return math.nan
    if how == "first":
        return float(labels[0])
    if how != "majority":
        raise ValueError(f"unknown aggregation {how!r}: use majority or first")
    votes = Counter(float(x) for x in labels if not math.isnan(x))
    if not votes:
        return math.nan
    left, right, equal = votes[0.0], votes[1.0], votes[0.5]
    if left > max(right, equal):
        return 0.0
    if right > max(left, equal):
        return 1.0
    return 0.5


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


class LabelStore:
    """One SQLite label store, safe to use from many threads and processes at once.

    Each thread gets its own connection; writers serialize on SQLite's write lock (waiting
    up to ``timeout`` seconds), readers never block writers (WAL).
    """

    def __init__(
        self,
        path: str | Path,
        create: bool = True,
        timeout: float = 30.0,
        readonly: bool = False,
    ) -> None:
        """Open (or, with ``create``, make) the store at ``path``.

        ``readonly``: open it with SQLite's ``mode=ro`` (reports, exports): nothing in the file
        changes, not even its journal mode, and a file that is not a pbrl store is refused.
        Otherwise the store must be writable: a read-only file or folder is refused here, at
        once, rather than at the first answer.
        """
        self.path = Path(path).expanduser().resolve()
        self.readonly = bool(readonly)
        if not self.path.is_file():
            if self.path.exists():
                raise NotAStore(
                    f"{self.path} is a folder, not a label store file: pass a file path"
                )
            if not create or self.readonly:
                raise FileNotFoundError(
                    f"label store {self.path} does not exist: create it with "
                    "`python -m pbrl.label queries ... --store PATH` or a teacher=human run"
                )
        if not self.readonly:
            check_writable(self.path)
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.timeout = timeout
        self._local = threading.local()
        self._immutable = False
        if not self.readonly:
            self._init_schema(self._conn())
            return
        try:
            self._check_schema(self._conn())
        except NotWritable:
            # A WAL store in a folder this process cannot write: SQLite cannot make the
            # -shm file it reads through. Without a -wal file every commit is in the store
            # itself (and nobody can write it from here either): read it as immutable.
            if Path(f"{self.path}-wal").exists():
                raise
            self.close()
            self._immutable = True
            self._check_schema(self._conn())

    # -- connections ---------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                if self.readonly:
                    conn = sqlite3.connect(
                        self.path.as_uri()
                        + "?mode=ro"
                        + ("&immutable=1" if self._immutable else ""),
                        timeout=self.timeout,
                        isolation_level=None,
                        uri=True,
                    )
                else:
                    conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
                conn.row_factory = sqlite3.Row
                if not self.readonly:
                    conn.execute("PRAGMA synchronous=FULL")  # acknowledged == on disk
                    conn.execute("PRAGMA foreign_keys=ON")
            except sqlite3.DatabaseError as exc:
                raise self._foreign(str(exc)) from exc
            self._local.conn = conn
        return conn

    def _foreign(self, why: str) -> NotAStore:
        return NotAStore(
            f"{self.path} is not a pbrl label store ({why}): pass a store made by "
            "`python -m pbrl.label queries` or a teacher=human run"
        )

    def _check_schema(self, conn: sqlite3.Connection) -> None:
        """Refuse a file that is not a pbrl store (or is newer than this pbrl); writes nothing."""
        try:
            tables = {
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            if not tables:
                raise self._foreign("an empty database")
            if not set(_TABLES) <= tables:
                raise self._foreign(f"its tables are {', '.join(sorted(tables))}")
            row = conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        except sqlite3.OperationalError as exc:  # e.g. a WAL store in a read-only folder
            raise NotWritable(f"cannot read label store {self.path}: {exc}") from exc
        except sqlite3.DatabaseError as exc:  # "file is not a database"
            raise self._foreign(str(exc)) from exc
        if row is None:
            raise self._foreign("no schema version in its meta table")
        if int(row["value"]) > SCHEMA_VERSION:
            raise NotAStore(
                f"{self.path}: label store schema {row['value']} is newer than "
                f"this pbrl ({SCHEMA_VERSION}): upgrade pbrl"
            )

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        try:
            tables = {
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
        except sqlite3.DatabaseError as exc:
            raise self._foreign(str(exc)) from exc
        if tables - {"sqlite_sequence"}:  # not a new, empty file: it must be a pbrl store
            self._check_schema(conn)
        try:
            conn.execute("PRAGMA journal_mode=WAL")  # persistent: every connection uses it
            with self._write(conn):
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                row = conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
                if row is None:
                    conn.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
                    conn.execute("INSERT INTO meta VALUES ('created_at', ?)", (str(time.time()),))
                elif int(row["value"]) < SCHEMA_VERSION:
                    # The new tables exist now (CREATE IF NOT EXISTS above); fill them and
                    # bump the version in the same transaction: a crash leaves the old one.
                    self._migrate(conn, int(row["value"]))
                    conn.execute(
                        "UPDATE meta SET value=? WHERE key='schema'", (str(SCHEMA_VERSION),)
                    )
            # A file opened read-only by SQLite (read-only file system, ...) fails only at the
            # first write: write once and roll back, so a store that cannot take answers is
            # refused now rather than at the first answer.
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("UPDATE meta SET value=value WHERE key='schema'")
            finally:
                conn.execute("ROLLBACK")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise NotWritable(
                    f"label store {self.path} stayed locked by another process for "
                    f"{self.timeout:.0f} s ({exc}): try again"
                ) from exc
            raise NotWritable(
                f"cannot write label store {self.path} ({exc}): make the file and its "
                "folder writable, or copy the store elsewhere"
            ) from exc

    def _migrate(self, conn: sqlite3.Connection, version: int) -> None:
        """Bring a store of schema ``version`` up to date (inside the caller's transaction)."""
        if version < 2:
            # Schema 2 adds runs and rankings: register every run that submitted queries,
            # with its environment and factor names (read off one stored pair per run).
            sources = conn.execute(
                "SELECT source, MIN(seq) AS seq FROM queries WHERE source != '' GROUP BY source"
            ).fetchall()
            for src in sources:
                q = conn.execute(
                    "SELECT env_id, env_kwargs, created_at, segments FROM queries WHERE seq=?",
                    (src["seq"],),
                ).fetchone()
                self._add_run(
                    conn,
                    src["source"],
                    q["env_id"],
                    q["env_kwargs"],
                    _blob_factor_names(q["segments"]),
                    q["created_at"],
                )
        # Schema 3 adds suggestions: a new, empty table (created above); nothing to backfill.

    @staticmethod
    def _add_run(
        conn: sqlite3.Connection,
        name: str,
        env_id: str,
        env_kwargs: str,
        factors: Sequence[str],
        now: float,
    ) -> None:
        """Register ``name`` unless known; a known run without factor names gets these."""
        names = json.dumps([factor_name(f) for f in factors])
        conn.execute(
            "INSERT OR IGNORE INTO runs (name, env_id, env_kwargs, factors, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (name, env_id, env_kwargs, names, now),
        )
        if factors:
            conn.execute(
                "UPDATE runs SET factors=? WHERE name=? AND factors='[]' AND env_id=?",
                (names, name, env_id),
            )

    @contextmanager
    def _write(self, conn: sqlite3.Connection | None = None) -> Iterator[sqlite3.Connection]:
        """One write transaction: takes the write lock up front, commits or rolls back whole."""
        conn = conn or self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        """Close this thread's connection (other threads' close when they are collected)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- metadata ------------------------------------------------------------------------------
    def set_meta(self, **values: Any) -> None:
        """Store string-able values (JSON for anything but str); None deletes the key."""
        with self._write() as conn:
            for key, value in values.items():
                if value is None:
                    conn.execute("DELETE FROM meta WHERE key=?", (key,))
                else:
                    text = value if isinstance(value, str) else json.dumps(value)
                    conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, text))

    def meta(self) -> dict[str, str]:
        rows = self._conn().execute("SELECT key, value FROM meta").fetchall()
        return {r["key"]: r["value"] for r in rows}

    # -- queries -------------------------------------------------------------------------------
    def add_queries(
        self,
        queries: Queries,
        source: str = "",
        batch: str = "",
        needed: int = 1,
        env_kwargs: dict[str, Any] | None = None,
    ) -> list[str]:
        """Insert query pairs (pending); ids already in the store are left as they are."""
        if needed < 1:
            raise BadInput(f"answers per query must be >= 1, got {needed}")
        if queries.first.qpos is None or queries.first.qvel is None:
            raise BadInput(
                "queries carry no simulator state (qpos/qvel): they cannot be "
                "rendered for people to label"
            )
        kwargs = json.dumps(env_kwargs or {}, sort_keys=True)
        rows = []
        now = time.time()
        for i in range(len(queries)):
            qid = str(queries.query_id[i])
            if not QUERY_ID.match(qid):
                raise BadInput(
                    f"query id {qid!r} is not usable in a URL: use 1 to 128 of A-Z a-z 0-9 _ . : -"
                )
            first, second = queries.first[i], queries.second[i]
            rows.append(
                (
                    qid,
                    now,
                    source,
                    batch,
                    first.env_id,
                    kwargs,
                    int(needed),
                    oracle_label(first, second),
                    encode_pair(first, second),
                )
            )
        with self._write() as conn:
            conn.executemany(
                "INSERT OR IGNORE INTO queries (id, created_at, source, batch, env_id, env_kwargs,"
                " needed, oracle, segments) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            if source and len(queries):  # the run is known from its queries (rank page)
                first = queries.first
                self._add_run(conn, source, first.env_id, kwargs, first.factor_names, now)
        return [r[0] for r in rows]

    def query(self, query_id: str) -> sqlite3.Row:
        row = self._conn().execute("SELECT * FROM queries WHERE id=?", (query_id,)).fetchone()
        if row is None:
            raise NotFound(f"unknown query id {query_id!r}")
        return row

    def has_query(self, query_id: str) -> bool:
        return (
            self._conn().execute("SELECT 1 FROM queries WHERE id=?", (query_id,)).fetchone()
            is not None
        )

    def segments(self, query_id: str) -> tuple[Segments, Segments]:
        """The stored pair (first, second) of one query, simulator state included."""
        return decode_pair(self.query(query_id)["segments"])

    def upcoming(self, n: int) -> list[sqlite3.Row]:
        """The next ``n`` queries that still need answers, in the order they are handed out."""
        return (
            self._conn()
            .execute(
                "SELECT seq, id, env_id, env_kwargs FROM queries WHERE status != 'answered' "
                "ORDER BY seq LIMIT ?",
                (int(n),),
            )
            .fetchall()
        )

    def current_env_id(self) -> str:
        """The environment of the next query to label (else of the newest query), or ''."""
        row = (
            self._conn()
            .execute(
                "SELECT env_id FROM queries ORDER BY status = 'answered', "
                "CASE WHEN status = 'answered' THEN -seq ELSE seq END LIMIT 1"
            )
            .fetchone()
        )
        return str(row["env_id"]) if row else ""

    # -- leases --------------------------------------------------------------------------------
    def _expire(self, conn: sqlite3.Connection, now: float) -> None:
        rows = conn.execute(
            "SELECT id, query_id FROM leases WHERE state='active' AND expires_at<=?", (now,)
        ).fetchall()
        if rows:
            conn.executemany(
                "UPDATE leases SET state='expired' WHERE id=?", [(r["id"],) for r in rows]
            )
            self._refresh(conn, {r["query_id"] for r in rows}, now)

    def _refresh(self, conn: sqlite3.Connection, query_ids: Iterable[str], now: float) -> None:
        for qid in query_ids:
            conn.execute(
                "UPDATE queries SET status = CASE"
                " WHEN (SELECT COUNT(*) FROM answers a WHERE a.query_id=queries.id"
                "       AND a.retracted_at IS NULL) >= needed THEN 'answered'"
                " WHEN EXISTS (SELECT 1 FROM leases l WHERE l.query_id=queries.id"
                "       AND l.state='active' AND l.expires_at>?) THEN 'leased'"
                " ELSE 'pending' END WHERE id=?",
                (now, qid),
            )

    def _lease_row(self, conn: sqlite3.Connection, lease_id: str) -> Lease:
        """The :class:`Lease` of row ``lease_id`` (of a triplet's row: the triplet's lease)."""
        r = conn.execute(
            "SELECT l.*, q.env_id FROM leases l JOIN queries q ON q.id=l.query_id WHERE l.id=?",
            (lease_id,),
        ).fetchone()
        group, member, _ = r["id"].partition(":")
        triplet = triplet_of(r["query_id"]) if member else None
        return Lease(
            group if triplet else r["id"],
            triplet_pairs(triplet)[0] if triplet else r["query_id"],
            r["annotator"],
            r["created_at"],
            r["expires_at"],
            r["env_id"],
            triplet,
        )

    def _lease_ids(self, conn: sqlite3.Connection, lease_id: str) -> list[str]:
        """The rows of lease ``lease_id``: itself, or a triplet lease's three (also when given
        one of them); [] for an unknown lease."""
        group, member, _ = lease_id.partition(":")
        if not member and conn.execute("SELECT 1 FROM leases WHERE id=?", (group,)).fetchone():
            return [lease_id]
        members = [f"{group}:{name}" for name in PAIR_NAMES]
        found = conn.execute(
            "SELECT COUNT(*) FROM leases WHERE id IN (?, ?, ?)", members
        ).fetchone()[0]
        return members if found == 3 else []

    def _checked(
        self, conn: sqlite3.Connection, lease_id: str, annotator: str, now: float
    ) -> list[sqlite3.Row]:
        """The rows of a live lease of ``annotator`` (one, or a triplet's three), checked."""
        ids = self._lease_ids(conn, lease_id)
        if not ids:
            raise NotFound(f"unknown lease {lease_id!r}: ask for the next query first")
        return [self._check_lease(conn, i, annotator, None, now) for i in ids]

    def _open_sql(self) -> str:
        """Queries ``q`` that may be leased to annotator ``?`` at time ``?``."""
        return (
            "q.status != 'answered'"
            " AND NOT EXISTS (SELECT 1 FROM answers a WHERE a.query_id=q.id"
            "     AND a.annotator=? AND a.retracted_at IS NULL)"
            " AND (SELECT COUNT(*) FROM answers a WHERE a.query_id=q.id AND a.retracted_at IS NULL)"
            "   + (SELECT COUNT(*) FROM leases l WHERE l.query_id=q.id AND l.state='active'"
            "      AND l.expires_at>?) < q.needed"
        )

    def _open_triplet(
        self, conn: sqlite3.Connection, query_id: str, annotator: str, now: float
    ) -> str | None:
        """The triplet of ``query_id`` when all three of its pairs may be leased to
        ``annotator`` together (else None: the query is leased as a pair)."""
        triplet = triplet_of(query_id)
        if triplet is None:
            return None
        n = conn.execute(
            f"SELECT COUNT(*) FROM queries q WHERE q.id IN (?, ?, ?) AND {self._open_sql()}",
            (*triplet_pairs(triplet), annotator, now),
        ).fetchone()[0]
        return triplet if n == 3 else None

    def lease(
        self, annotator: str, duration_s: float = 300.0, triplets: bool = False
    ) -> Lease | None:
        """The query to show ``annotator`` next (None: nothing to label).

        An annotator holding an unexpired lease gets the same one back (a reloaded page shows
        the same pair), with its expiry pushed out. Otherwise the oldest query that still needs
        an answer, that this annotator has not answered and whose remaining answers are not all
        leased to others, is leased for ``duration_s`` seconds.

        ``triplets`` (the labeling page): a query that is a triplet's pair comes with its two
        siblings, as one lease on the three (answered by :meth:`answer_triplet`), when all
        three are open to ``annotator``; otherwise it is leased alone, like any pair.
        """
        annotator = check_annotator(annotator)
        now = time.time()
        with self._write() as conn:
            self._expire(conn, now)
            held = conn.execute(
                "SELECT id FROM leases WHERE annotator=? AND state='active' "
                "ORDER BY created_at DESC LIMIT 1",
                (annotator,),
            ).fetchone()
            if held is not None:
                ids = self._lease_ids(conn, held["id"])
                self._extend(conn, ids, now + duration_s)
                return self._lease_row(conn, ids[0])
            row = conn.execute(
                f"SELECT q.id FROM queries q WHERE {self._open_sql()} ORDER BY q.seq LIMIT 1",
                (annotator, now),
            ).fetchone()
            if row is None:
                return None
            triplet = self._open_triplet(conn, row["id"], annotator, now) if triplets else None
            if triplet is not None:
                return self._new_triplet_lease(conn, triplet, annotator, now, duration_s)
            return self._new_lease(conn, row["id"], annotator, now, duration_s)

    @staticmethod
    def _extend(conn: sqlite3.Connection, lease_ids: Sequence[str], until: float) -> None:
        conn.executemany(
            "UPDATE leases SET expires_at=? WHERE id=?", [(until, i) for i in lease_ids]
        )

    def _new_lease(
        self, conn: sqlite3.Connection, query_id: str, annotator: str, now: float, duration_s: float
    ) -> Lease:
        lease_id = uuid.uuid4().hex
        conn.execute(
            "INSERT INTO leases VALUES (?, ?, ?, ?, ?, 'active')",
            (lease_id, query_id, annotator, now, now + duration_s),
        )
        self._refresh(conn, [query_id], now)
        return self._lease_row(conn, lease_id)

    def _new_triplet_lease(
        self, conn: sqlite3.Connection, triplet: str, annotator: str, now: float, duration_s: float
    ) -> Lease:
        """One lease on a triplet's three pairs: rows ``<lease>:ab``, ``:ac``, ``:bc``."""
        group = uuid.uuid4().hex
        query_ids = triplet_pairs(triplet)
        conn.executemany(
            "INSERT INTO leases VALUES (?, ?, ?, ?, ?, 'active')",
            [
                (f"{group}:{name}", qid, annotator, now, now + duration_s)
                for name, qid in zip(PAIR_NAMES, query_ids, strict=True)
            ],
        )
        self._refresh(conn, query_ids, now)
        return self._lease_row(conn, f"{group}:{PAIR_NAMES[0]}")

    def renew(self, lease_id: str, annotator: str, duration_s: float = 300.0) -> Lease:
        """Push an unexpired lease's expiry out (the page does this while it is open)."""
        annotator = check_annotator(annotator)
        now = time.time()
        with self._write() as conn:
            rows = self._checked(conn, str(lease_id), annotator, now)
            self._extend(conn, [r["id"] for r in rows], now + duration_s)
            return self._lease_row(conn, rows[0]["id"])

    def _check_lease(
        self,
        conn: sqlite3.Connection,
        lease_id: str,
        annotator: str,
        query_id: str | None,
        now: float,
    ) -> sqlite3.Row:
        if (
            query_id is not None
            and conn.execute("SELECT 1 FROM queries WHERE id=?", (query_id,)).fetchone() is None
        ):
            raise NotFound(f"unknown query id {query_id!r}")
        row = conn.execute("SELECT * FROM leases WHERE id=?", (str(lease_id),)).fetchone()
        if row is None:
            raise NotFound(f"unknown lease {lease_id!r}: ask for the next query first")
        if row["annotator"] != annotator:
            raise Conflict(
                f"lease {lease_id} belongs to annotator {row['annotator']!r}, not {annotator!r}"
            )
        if query_id is not None and row["query_id"] != query_id:
            raise BadInput(f"lease {lease_id} is for query {row['query_id']!r}, not {query_id!r}")
        if row["state"] == "answered":
            raise Conflict(
                f"query {row['query_id']!r} was already answered under this lease "
                "(double submission): the first answer is kept"
            )
        if row["state"] in ("expired", "released") or row["expires_at"] <= now:
            raise LeaseExpired(
                f"the lease on query {row['query_id']!r} expired or was released "
                "before the answer arrived: ask for the next query"
            )
        return row

    # -- answers ---------------------------------------------------------------------------------
    def answer(
        self, lease_id: str, annotator: str, label: Any, query_id: str | None = None
    ) -> Answer:
        """Record ``annotator``'s answer to the query of ``lease_id``, atomically.

        Raises (and changes nothing) for an unknown query or lease, a bad label, a second
        answer under the same lease and a lease that expired before the answer arrived.
        """
        annotator = check_annotator(annotator)
        value = parse_label(label)
        now = time.time()
        with self._write() as conn:
            if len(ids := self._lease_ids(conn, str(lease_id))) == 3:
                triplet = self._lease_row(conn, ids[0]).triplet
                raise BadInput(
                    f"lease {lease_id} covers the three pairs of triplet {triplet!r}: answer "
                    "it with a ranking (POST /api/answer_triplet, LabelStore.answer_triplet)"
                )
            lease = self._check_lease(conn, lease_id, annotator, query_id, now)
            got = self._insert_answer(conn, lease, annotator, value, now)
            self._answered(conn, [lease], now)
        return got

    def answer_triplet(
        self, lease_id: str, annotator: str, ranks: Any, triplet_id: str | None = None
    ) -> list[Answer]:
        """Record ``annotator``'s ranking of the triplet of ``lease_id`` as its three pair
        answers (``ab``, ``ac``, ``bc``), in one transaction: all three or none.

        ``ranks``: ``{"a": 0, "b": 1, "c": 1}`` (0 best, equal ranks tie) or ``"skip"`` (all
        three skipped); see :func:`ranking_labels`. Refused like :meth:`answer`, and for a
        lease on a single pair.
        """
        annotator = check_annotator(annotator)
        labels = ranking_labels(ranks)
        now = time.time()
        with self._write() as conn:
            rows = self._checked(conn, str(lease_id), annotator, now)
            triplet = triplet_of(rows[0]["query_id"])
            if len(rows) != 3 or triplet is None:
                raise BadInput(
                    f"lease {lease_id} is for the pair {rows[0]['query_id']!r}, not a triplet: "
                    "answer it with a label (POST /api/answer, LabelStore.answer)"
                )
            if triplet_id is not None and triplet_id != triplet:
                raise BadInput(f"lease {lease_id} is for triplet {triplet!r}, not {triplet_id!r}")
            got = [
                self._insert_answer(conn, row, annotator, labels[row["id"].rpartition(":")[2]], now)
                for row in rows
            ]
            self._answered(conn, rows, now)
        return got

    @staticmethod
    def _insert_answer(
        conn: sqlite3.Connection, lease: sqlite3.Row, annotator: str, value: float, now: float
    ) -> Answer:
        try:
            cur = conn.execute(
                "INSERT INTO answers (query_id, annotator, label, shown_at, answered_at, lease_id)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    lease["query_id"],
                    annotator,
                    _db_label(value),
                    lease["created_at"],
                    now,
                    lease["id"],
                ),
            )
        except sqlite3.IntegrityError:
            raise Conflict(f"{annotator!r} already answered query {lease['query_id']!r}") from None
        answer_id = int(cur.lastrowid or 0)
        return Answer(answer_id, lease["query_id"], annotator, value, lease["created_at"], now)

    def _answered(
        self, conn: sqlite3.Connection, leases: Sequence[sqlite3.Row], now: float
    ) -> None:
        """Close answered leases and update their queries' status."""
        conn.executemany(
            "UPDATE leases SET state='answered' WHERE id=?", [(r["id"],) for r in leases]
        )
        self._expire(conn, now)
        self._refresh(conn, [r["query_id"] for r in leases], now)

    def undo(self, annotator: str, duration_s: float = 300.0) -> tuple[Answer, Lease]:
        """Retract ``annotator``'s latest answer and lease its query to them again.

        The retracted answer stays in the store (``retracted_at`` set). A lease the annotator
        held on another query is released. Answers a trainer has already collected cannot be
        undone (they are in its dataset). A triplet's ranking is undone whole (see
        :meth:`undo_answers`); this returns its ``ab`` answer.
        """
        answers, lease = self.undo_answers(annotator, duration_s)
        return answers[0], lease

    def undo_answers(self, annotator: str, duration_s: float = 300.0) -> tuple[list[Answer], Lease]:
        """:meth:`undo`, returning every answer it retracted: one pair's, or the three
        answers of a ranked triplet (its three pairs are leased again, together)."""
        annotator = check_annotator(annotator)
        now = time.time()
        with self._write() as conn:
            self._expire(conn, now)
            row = conn.execute(
                "SELECT a.*, q.delivered_at FROM answers a JOIN queries q ON q.id=a.query_id"
                " WHERE a.annotator=? AND a.retracted_at IS NULL"
                " ORDER BY a.answered_at DESC, a.id DESC LIMIT 1",
                (annotator,),
            ).fetchone()
            if row is None:
                raise Conflict(f"{annotator!r} has no answer to undo")
            rows = self._answer_group(conn, row)
            for r in rows:
                if r["delivered_at"] is not None:
                    raise Conflict(
                        f"the answer to query {r['query_id']!r} was already collected by "
                        "the trainer: it can no longer be undone"
                    )
            conn.executemany(
                "UPDATE answers SET retracted_at=? WHERE id=?", [(now, r["id"]) for r in rows]
            )
            held = conn.execute(
                "SELECT id, query_id FROM leases WHERE annotator=? AND state='active'", (annotator,)
            ).fetchall()
            conn.execute(
                "UPDATE leases SET state='released' WHERE annotator=? AND state='active'",
                (annotator,),
            )
            self._refresh(conn, {h["query_id"] for h in held}, now)
            triplet = triplet_of(row["query_id"]) if len(rows) == 3 else None
            if triplet is not None:
                lease = self._new_triplet_lease(conn, triplet, annotator, now, duration_s)
            else:
                lease = self._new_lease(conn, row["query_id"], annotator, now, duration_s)
        answers = [
            Answer(
                int(r["id"]),
                r["query_id"],
                annotator,
                _py_label(r["label"]),
                r["shown_at"],
                r["answered_at"],
            )
            for r in rows
        ]
        return answers, lease

    @staticmethod
    def _answer_group(conn: sqlite3.Connection, row: sqlite3.Row) -> list[sqlite3.Row]:
        """``row``, or the live answers given under the same triplet lease (``ab`` first)."""
        lease_id = row["lease_id"] or ""
        if ":" not in lease_id:
            return [row]
        group = lease_id.partition(":")[0]
        return conn.execute(
            "SELECT a.*, q.delivered_at FROM answers a JOIN queries q ON q.id=a.query_id"
            " WHERE a.lease_id IN (?, ?, ?) AND a.retracted_at IS NULL ORDER BY a.lease_id",
            [f"{group}:{name}" for name in PAIR_NAMES],
        ).fetchall()

    def release(self, annotator: str) -> int:
        """Give back every lease ``annotator`` holds (the page calls this when it closes)."""
        annotator = check_annotator(annotator)
        now = time.time()
        with self._write() as conn:
            held = conn.execute(
                "SELECT query_id FROM leases WHERE annotator=? AND state='active'", (annotator,)
            ).fetchall()
            conn.execute(
                "UPDATE leases SET state='released' WHERE annotator=? AND state='active'",
                (annotator,),
            )
            self._refresh(conn, {h["query_id"] for h in held}, now)
        return len(held)

    def answers(self, include_retracted: bool = False) -> list[sqlite3.Row]:
        """Every answer (oldest first), joined with its query's oracle label."""
        where = "" if include_retracted else "WHERE a.retracted_at IS NULL"
        return (
            self._conn()
            .execute(
                "SELECT a.*, q.oracle, q.seq FROM answers a JOIN queries q ON q.id=a.query_id "
                f"{where} ORDER BY a.answered_at, a.id"
            )
            .fetchall()
        )

    # -- progress --------------------------------------------------------------------------------
    def counts(self, annotator: str | None = None) -> dict[str, int]:
        """``total``, ``answered``, ``pending`` (not answered yet), ``leased`` (of pending,
        shown to someone right now), ``answers`` (live answers), ``mine`` (``annotator``'s)."""
        conn = self._conn()
        now = time.time()
        total, answered = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(status='answered'), 0) FROM queries"
        ).fetchone()
        leased = conn.execute(
            "SELECT COUNT(DISTINCT l.query_id) FROM leases l JOIN queries q ON q.id=l.query_id"
            " WHERE l.state='active' AND l.expires_at>? AND q.status != 'answered'",
            (now,),
        ).fetchone()[0]
        answers = conn.execute(
            "SELECT COUNT(*) FROM answers WHERE retracted_at IS NULL"
        ).fetchone()[0]
        mine = 0
        if annotator:
            mine = conn.execute(
                "SELECT COUNT(*) FROM answers WHERE retracted_at IS NULL AND annotator=?",
                (annotator,),
            ).fetchone()[0]
        return {
            "total": int(total),
            "answered": int(answered),
            "pending": int(total - answered),
            "leased": int(leased),
            "answers": int(answers),
            "mine": int(mine),
        }

    # -- datasets --------------------------------------------------------------------------------
    def _dataset(
        self,
        query_rows: Sequence[sqlite3.Row],
        answers: dict[str, list[sqlite3.Row]],
        aggregate: str,
    ) -> PreferenceDataset | None:
        firsts, seconds, ids, labels, who, when = [], [], [], [], [], []
        for q in query_rows:
            got = answers.get(q["id"], [])
            if not got:
                continue
            first, second = decode_pair(q["segments"])
            if aggregate == "per-annotator":
                groups = [[a] for a in got]
            else:
                groups = [got]
            for group in groups:
                firsts.append(first)
                seconds.append(second)
                ids.append(q["id"])
                labels.append(
                    aggregate_labels(
                        [_py_label(a["label"]) for a in group],
                        "first" if aggregate == "per-annotator" else aggregate,
                    )
                )
                who.append(",".join(a["annotator"] for a in group))
                when.append(max(a["answered_at"] for a in group))
        if not ids:
            return None
        lengths = sorted({f.length for f in firsts} | {s.length for s in seconds})
        if len(lengths) > 1:
            raise BadInput(
                f"the answered pairs have segments of different lengths {lengths}: one "
                "preference dataset holds one length; export each source separately "
                f"(sources: {', '.join(sorted({q['source'] for q in query_rows}))})"
            )
        queries = Queries(
            Segments.concatenate(firsts), Segments.concatenate(seconds), np.array(ids, dtype=str)
        )
        return PreferenceDataset(
            queries,
            np.array(labels, dtype=np.float64),
            np.array(who, dtype=str),
            np.array(when, dtype=np.float64),
        )

    def _answers_by_query(
        self, conn: sqlite3.Connection, query_ids: Sequence[str]
    ) -> dict[str, list[sqlite3.Row]]:
        out: dict[str, list[sqlite3.Row]] = defaultdict(list)
        for start in range(0, len(query_ids), 500):
            chunk = list(query_ids[start : start + 500])
            marks = ",".join("?" * len(chunk))
            for a in conn.execute(
                f"SELECT * FROM answers WHERE retracted_at IS NULL AND query_id IN ({marks})"
                " ORDER BY answered_at, id",
                chunk,
            ):
                out[a["query_id"]].append(a)
        return out

    def collect(
        self, sources: Sequence[str] | None = None, aggregate: str = "majority"
    ) -> PreferenceDataset | None:
        """Answered queries no trainer has collected yet, aggregated, marked as collected.

        ``sources`` limits it to queries submitted under those names (a trainer passes its
        run name, so two runs sharing a store never take each other's labels). Reading and
        marking is one transaction: a query is handed to exactly one trainer call.
        """
        if aggregate not in ("majority", "first"):
            raise ValueError(f"collect aggregates with majority or first, not {aggregate!r}")
        now = time.time()
        with self._write() as conn:
            sql = "SELECT * FROM queries WHERE status='answered' AND delivered_at IS NULL"
            args: list[Any] = []
            if sources is not None:
                sql += f" AND source IN ({','.join('?' * len(sources))})"
                args += list(sources)
            rows = conn.execute(sql + " ORDER BY seq", args).fetchall()
            if not rows:
                return None
            answers = self._answers_by_query(conn, [r["id"] for r in rows])
            conn.executemany(
                "UPDATE queries SET delivered_at=? WHERE id=?", [(now, r["id"]) for r in rows]
            )
            return self._dataset(rows, answers, aggregate)

    def uncollected(self, sources: Sequence[str]) -> int:
        """Queries submitted under ``sources`` that no trainer has collected yet."""
        if not sources:
            return 0
        marks = ",".join("?" * len(sources))
        return int(
            self._conn()
            .execute(
                f"SELECT COUNT(*) FROM queries WHERE delivered_at IS NULL AND source IN ({marks})",
                list(sources),
            )
            .fetchone()[0]
        )

    def export(
        self,
        aggregate: str = "majority",
        only_answered: bool = False,
        sources: Sequence[str] | None = None,
    ) -> PreferenceDataset | None:
        """Every query with at least one live answer as a preference dataset.

        ``majority`` / ``first``: one label per query; ``per-annotator``: one row per answer
        (the query repeated, ``annotator`` naming who). Marks nothing; collecting trainers are
        unaffected. ``only_answered`` keeps queries that have all the answers they asked for;
        ``sources`` keeps queries submitted under those names.
        """
        if aggregate not in AGGREGATES:
            raise ValueError(
                f"unknown aggregation {aggregate!r}: use one of {', '.join(AGGREGATES)}"
            )
        conn = self._conn()
        conn.execute("BEGIN")  # one consistent snapshot
        try:
            where, args = ["1"], []
            if only_answered:
                where.append("status='answered'")
            if sources is not None:
                where.append(f"source IN ({','.join('?' * len(sources))})")
                args += list(sources)
            rows = conn.execute(
                f"SELECT * FROM queries WHERE {' AND '.join(where)} ORDER BY seq", args
            ).fetchall()
            answers = self._answers_by_query(conn, [r["id"] for r in rows])
        finally:
            conn.execute("COMMIT")
        return self._dataset(rows, answers, aggregate)

    # -- agreement ---------------------------------------------------------------------------------
    def stats(self, aggregate: str = "majority") -> dict[str, Any]:
        """Progress, per-annotator counts, agreement between annotators and with the oracle.

        Agreement is the fraction of identical labels (skips excluded) on queries both sides
        answered; ``oracle`` is the scripted noise-free label, known when segments carry a true
        reward. ``None`` where there is nothing to compare.
        """
        rows = self.answers()
        by_query: dict[str, dict[str, float]] = defaultdict(dict)
        oracle: dict[str, float | None] = {}
        per: dict[str, dict[str, Any]] = {}
        for a in rows:
            label = _py_label(a["label"])
            by_query[a["query_id"]][a["annotator"]] = label
            oracle[a["query_id"]] = a["oracle"]
            s = per.setdefault(
                a["annotator"],
                {"answers": 0, "left": 0, "right": 0, "equal": 0, "skip": 0, "seconds": []},
            )
            s["answers"] += 1
            s[{0.0: "left", 1.0: "right", 0.5: "equal"}.get(label, "skip")] += 1
            s["seconds"].append(a["answered_at"] - a["shown_at"])
        names = sorted(per)

        def rate(pairs: list[tuple[float, float]]) -> dict[str, Any]:
            n = len(pairs)
            return {"n": n, "agreement": (sum(_same(x, y) for x, y in pairs) / n) if n else None}

        annotators = {}
        for name in names:
            s = per[name]
            vs_oracle = [
                (lab[name], o)
                for q, lab in by_query.items()
                if name in lab and not math.isnan(lab[name]) and (o := oracle[q]) is not None
            ]
            vs_others = [
                (lab[name], lab[other])
                for lab in by_query.values()
                if name in lab
                for other in lab
                if other != name and not math.isnan(lab[name]) and not math.isnan(lab[other])
            ]
            seconds = s.pop("seconds")
            annotators[name] = {
                **s,
                "median_seconds": float(np.median(seconds)) if seconds else None,
                "oracle": rate(vs_oracle),
                "others": rate(vs_others),
            }
        pairwise = {}
        for i, one in enumerate(names):
            for two in names[i + 1 :]:
                both = [
                    (lab[one], lab[two])
                    for lab in by_query.values()
                    if one in lab
                    and two in lab
                    and not math.isnan(lab[one])
                    and not math.isnan(lab[two])
                ]
                if both:
                    pairwise[f"{one} | {two}"] = rate(both)
        all_pairs = [
            (lab[x], lab[y])
            for lab in by_query.values()
            for x in lab
            for y in lab
            if x < y and not math.isnan(lab[x]) and not math.isnan(lab[y])
        ]
        aggregated = [
            (aggregate_labels(list(lab.values()), aggregate), oracle[q])
            for q, lab in by_query.items()
        ]
        vs_oracle = [(x, o) for x, o in aggregated if not math.isnan(x) and o is not None]
        return {
            "progress": self.counts(),
            "annotators": annotators,
            "pairwise": pairwise,
            "inter_annotator": rate(all_pairs),
            "aggregate": aggregate,
            "aggregated_vs_oracle": rate(vs_oracle),
            "oracle_known": sum(o is not None for o in oracle.values()),
            "vlm_human": self._vlm_human(by_query, oracle, aggregate),
        }

    def _vlm_human(
        self,
        by_query: dict[str, dict[str, float]],
        oracle: dict[str, float | None],
        aggregate: str,
    ) -> dict[str, Any]:
        """VLM suggestions against people's answers, per pair (people's answers aggregated).

        ``agreement``: among pairs where the VLM's suggestion and the people's label are both
        decided (not unsure / skip), the fraction with the same label; ``n`` is that count.
        """
        suggested = {s.query_id: s for s in self.suggestions()}
        answered = [q for q in suggested if q in by_query]
        both: list[tuple[float, float]] = []
        vlm_vs_oracle: list[tuple[float, float]] = []
        for q, s in suggested.items():
            o = oracle[q] if q in oracle else self._oracle_of(q)
            if not math.isnan(s.label) and o is not None:
                vlm_vs_oracle.append((s.label, o))
            if q in by_query and not math.isnan(s.label):
                person = aggregate_labels(list(by_query[q].values()), aggregate)
                if not math.isnan(person):
                    both.append((s.label, person))
        agree = sum(_same(x, y) for x, y in both)
        return {
            "suggestions": len(suggested),
            "unsure": sum(math.isnan(s.label) for s in suggested.values()),
            "answered_by_people": len(answered),
            "both_decided": len(both),
            "agree": agree,
            "agreement": agree / len(both) if both else None,
            "vlm_vs_oracle": {
                "n": len(vlm_vs_oracle),
                "agreement": (
                    sum(_same(x, y) for x, y in vlm_vs_oracle) / len(vlm_vs_oracle)
                    if vlm_vs_oracle
                    else None
                ),
            },
        }

    def _oracle_of(self, query_id: str) -> float | None:
        row = self._conn().execute("SELECT oracle FROM queries WHERE id=?", (query_id,)).fetchone()
        return None if row is None or row["oracle"] is None else float(row["oracle"])

    # -- suggestions (a VLM's answers shown to people, teacher=vlm_then_human) ------------------
    def _has_suggestions(self, conn: sqlite3.Connection) -> bool:
        """False for an older store opened read-only (no suggestions table yet)."""
        row = conn.execute(
            "SELECT COUNT(*) FROM sqlite_master WHERE type='table' AND name='suggestions'"
        ).fetchone()
        return int(row[0]) == 1

    @staticmethod
    def _suggestion(row: sqlite3.Row) -> Suggestion:
        return Suggestion(
            row["query_id"],
            _py_label(row["label"]),
            row["analysis"],
            row["reply"],
            row["model"],
            row["created_at"],
        )

    def set_suggestions(self, suggestions: Iterable[Suggestion]) -> int:
        """Store (or replace) suggestions, all in one transaction; returns how many.

        The query need not exist yet: write suggestions first, then the queries, and the page
        never shows a pair without its suggestion."""
        now = time.time()
        rows = []
        for s in suggestions:
            if not QUERY_ID.match(str(s.query_id)):
                raise BadInput(f"suggestion for query id {s.query_id!r}: not a valid query id")
            label = float(s.label)
            if not (math.isnan(label) or label in SUGGESTION_WORDS):
                raise BadInput(
                    f"suggestion for {s.query_id!r}: label {s.label!r} is not 0, 1, 0.5 or NaN"
                )
            rows.append(
                (
                    str(s.query_id),
                    _db_label(label),
                    str(s.analysis),
                    str(s.reply),
                    str(s.model),
                    s.created_at or now,
                )
            )
        if rows:
            with self._write() as conn:
                conn.executemany(
                    "INSERT OR REPLACE INTO suggestions (query_id, label, analysis, reply, model,"
                    " created_at) VALUES (?, ?, ?, ?, ?, ?)",
                    rows,
                )
        return len(rows)

    def suggestion(self, query_id: str) -> Suggestion | None:
        """The suggestion shown with ``query_id`` (None: there is none)."""
        conn = self._conn()
        if not self._has_suggestions(conn):
            return None
        row = conn.execute(
            "SELECT * FROM suggestions WHERE query_id=?", (str(query_id),)
        ).fetchone()
        return None if row is None else self._suggestion(row)

    def suggestions(self) -> list[Suggestion]:
        """Every stored suggestion, oldest first."""
        conn = self._conn()
        if not self._has_suggestions(conn):
            return []
        rows = conn.execute("SELECT * FROM suggestions ORDER BY created_at, query_id")
        return [self._suggestion(r) for r in rows.fetchall()]

    # -- runs and their rankings of reward factors (HERON) ------------------------------------
    def _has_runs(self, conn: sqlite3.Connection) -> bool:
        """False for a schema-1 store opened read-only (its tables predate runs/rankings)."""
        row = conn.execute(
            "SELECT COUNT(*) FROM sqlite_master WHERE type='table' AND name IN ('runs', 'rankings')"
        ).fetchone()
        return int(row[0]) == 2

    @staticmethod
    def _run_info(row: sqlite3.Row) -> RunInfo:
        return RunInfo(
            row["name"],
            row["env_id"],
            json.loads(row["env_kwargs"]),
            tuple(json.loads(row["factors"])),
            row["created_at"],
        )

    @staticmethod
    def _ranking(row: sqlite3.Row) -> Ranking:
        return Ranking(
            int(row["id"]),
            row["run"],
            tuple(json.loads(row["factors"])),
            tuple(bool(x) for x in json.loads(row["higher_is_better"])),
            row["annotator"],
            row["created_at"],
        )

    def register_run(
        self,
        name: str,
        env_id: str,
        factors: Sequence[str],
        env_kwargs: dict[str, Any] | None = None,
    ) -> RunInfo:
        """Make ``name`` known as a run of ``env_id`` whose reward factors are ``factors``
        (with or without the ``reward_`` prefix), so its factors can be ranked.

        Registering a known run again updates its factor names; a different environment is
        a :class:`Conflict` (its rankings name that environment's factors).
        """
        if not isinstance(name, str) or not RUN_NAME.match(name.strip()):
            raise BadInput("a run name must be 1 to 200 printable characters")
        name, env_id = name.strip(), str(env_id)
        names = [factor_name(str(f)) for f in factors]
        if len(set(names)) != len(names):
            raise BadInput(f"run {name!r}: factor names {names} repeat a name")
        kwargs = json.dumps(env_kwargs or {}, sort_keys=True)
        with self._write() as conn:
            row = conn.execute("SELECT * FROM runs WHERE name=?", (name,)).fetchone()
            if row is not None and row["env_id"] != env_id:
                raise Conflict(
                    f"run {name!r} is registered in {self.path.name} for {row['env_id']}, "
                    f"not {env_id}: give this run another name (teacher.run=NAME, --run NAME)"
                )
            if row is None:
                conn.execute(
                    "INSERT INTO runs (name, env_id, env_kwargs, factors, created_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (name, env_id, kwargs, json.dumps(names), time.time()),
                )
            else:
                conn.execute(
                    "UPDATE runs SET factors=?, env_kwargs=? WHERE name=?",
                    (json.dumps(names), kwargs, name),
                )
            return self._run_info(
                conn.execute("SELECT * FROM runs WHERE name=?", (name,)).fetchone()
            )

    def runs(self) -> list[RunInfo]:
        """Every run the store knows (oldest first)."""
        conn = self._conn()
        if not self._has_runs(conn):
            return []
        return [
            self._run_info(r)
            for r in conn.execute("SELECT * FROM runs ORDER BY created_at, name").fetchall()
        ]

    def run(self, name: str) -> RunInfo:
        conn = self._conn()
        row = None
        if self._has_runs(conn):
            row = conn.execute("SELECT * FROM runs WHERE name=?", (str(name),)).fetchone()
        if row is None:
            known = ", ".join(r.name for r in self.runs()) or "none yet"
            raise NotFound(
                f"unknown run {name!r} in {self.path.name} (runs: {known}): a teacher=heron "
                "run with teacher.ranking=store registers its run, or `python -m pbrl.label "
                f"ranking --db {self.path} --run NAME --env ENV_ID`"
            )
        return self._run_info(row)

    def check_ranking(
        self, run: RunInfo, factors: Any, higher_is_better: Any = True
    ) -> tuple[list[str], list[bool]]:
        """``factors`` and ``higher_is_better`` as a valid ranking of ``run``'s factors:
        exactly its factors, each once, and one direction (a bool) per factor or one for all."""
        own = list(run.factors)
        if not own:
            raise BadInput(
                f"run {run.name!r} ({run.env_id or 'unknown environment'}) reports no reward "
                "factors: there is nothing to rank"
            )
        listed = ", ".join(own)
        if not isinstance(factors, (list, tuple)) or not all(isinstance(f, str) for f in factors):
            raise BadInput(f"a ranking is a list of factor names, most important first ({listed})")
        names = [factor_name(f) for f in factors]
        for name in names:
            if name not in own:
                raise BadInput(
                    f"the ranking names {name!r}, which run {run.name!r} ({run.env_id}) does "
                    f"not report: its factors are {listed}"
                )
        repeated = [n for n, c in Counter(names).items() if c > 1]
        if repeated:
            raise BadInput(
                f"the ranking names {repeated[0]!r} more than once: rank each of {listed} once"
            )
        missing = [n for n in own if n not in names]
        if missing:
            raise BadInput(
                f"the ranking leaves out {', '.join(missing)}: rank every factor of run "
                f"{run.name!r} ({listed})"
            )
        flags = higher_is_better if isinstance(higher_is_better, (list, tuple)) else None
        if flags is None:
            flags = [higher_is_better] * len(names)
        if len(flags) != len(names) or not all(isinstance(x, bool) for x in flags):
            raise BadInput(
                f"higher_is_better must be true/false for each of the {len(names)} ranked "
                f"factors (or one for all), got {higher_is_better!r}"
            )
        return names, [bool(x) for x in flags]

    def set_ranking(
        self, run: str, factors: Any, higher_is_better: Any = True, annotator: str = "cli"
    ) -> Ranking:
        """Store ``annotator``'s ranking of ``run``'s reward factors (most important first),
        checked by :meth:`check_ranking`; earlier rankings stay (history), the latest counts."""
        annotator = check_annotator(annotator)
        info = self.run(run)
        names, flags = self.check_ranking(info, factors, higher_is_better)
        with self._write() as conn:
            cur = conn.execute(
                "INSERT INTO rankings (run, factors, higher_is_better, annotator, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (info.name, json.dumps(names), json.dumps(flags), annotator, time.time()),
            )
            row = conn.execute("SELECT * FROM rankings WHERE id=?", (cur.lastrowid,)).fetchone()
        return self._ranking(row)

    def ranking(self, run: str) -> Ranking | None:
        """The run's latest ranking, or None when nobody has ranked its factors yet."""
        conn = self._conn()
        if not self._has_runs(conn):
            return None
        row = conn.execute(
            "SELECT * FROM rankings WHERE run=? ORDER BY id DESC LIMIT 1", (str(run),)
        ).fetchone()
        return None if row is None else self._ranking(row)

    def rankings(self, run: str) -> list[Ranking]:
        """Every ranking saved for ``run``, oldest first (the last one counts)."""
        conn = self._conn()
        if not self._has_runs(conn):
            return []
        rows = conn.execute("SELECT * FROM rankings WHERE run=? ORDER BY id", (str(run),))
        return [self._ranking(r) for r in rows.fetchall()]
