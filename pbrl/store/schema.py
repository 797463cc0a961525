"""The label store's tables, its schema versions and the migrations between them.

Tables (``schema`` 4; an older store is migrated in place, in one transaction, the first
time a writer opens it; a reader opens it as it is):

* ``queries``: one row per segment pair, with the pair itself (a ``.npz`` blob of both
  :class:`~pbrl.data.Segments` rows, simulator state included, so clips can be re-rendered
  any time), the environment's constructor arguments, how many answers it needs, its
  ``status`` (``pending``, ``leased``, ``answered``), the scripted oracle's label when the
  segments carry a true reward, and when a trainer collected it. A triplet's pair (schema 4)
  has ``triplet`` (the triplet's id) and ``role`` (``ab``, ``ac`` or ``bc``); a lone pair
  has neither.
* ``leases``: a query shown to one annotator; until the lease expires nobody else is shown
  it (unless the query asks for several annotators' answers). The three pairs of a triplet
  are leased together to the labeling page: three rows sharing ``triplet_lease`` (schema 4),
  made, renewed, answered, expired and released together and handed out as one lease.
* ``answers``: every answer with annotator, label (0 left/first better, 1 right/second,
  0.5 equal, NULL skip / can't tell), time shown and time answered. An undone answer is kept
  with ``retracted_at`` set; at most one live answer per (query, annotator).
* ``meta``: key/value strings (``schema``, task description, latest evaluation video, ...).
* ``runs`` (schema 2): one row per run (the trainer's run name, the ``source`` of its
  queries): its environment and that environment's reward-factor names.
* ``rankings`` (schema 2): a person's ranking of a run's reward factors (HERON), most
  important first, with a direction per factor, the annotator and the time.
* ``suggestions`` (schema 3): a vision-language model's answer to a query, shown on the page
  as a suggestion: its label (0 / 1 / 0.5, NULL unsure), its analysis text, its raw reply,
  the model's name and the time. One per query; no foreign key (a teacher writes the
  suggestion *before* the query, so the page never shows the pair without it).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence

from pbrl.store.codec import blob_factor_names
from pbrl.store.records import factor_name
from pbrl.store.triplets import PAIR_NAMES, triplet_roles

# 1: queries, leases, answers, meta; 2: + runs, rankings; 3: + suggestions;
# 4: + queries.triplet / queries.role and leases.triplet_lease (triplets grouped by column)
SCHEMA_VERSION = 4
TABLES = ("meta", "queries", "leases", "answers")  # what every version has

_ROLE = f"CHECK (role IN ({', '.join(repr(r) for r in PAIR_NAMES)}))"
_BASE = [
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    f"""CREATE TABLE IF NOT EXISTS queries (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL,
        source TEXT NOT NULL DEFAULT '',
        batch TEXT NOT NULL DEFAULT '',
        env_id TEXT NOT NULL DEFAULT '',
        env_kwargs TEXT NOT NULL DEFAULT '{{}}',
        needed INTEGER NOT NULL DEFAULT 1 CHECK (needed >= 1),
        status TEXT NOT NULL DEFAULT 'pending'
            CHECK (status IN ('pending', 'leased', 'answered')),
        oracle REAL,
        segments BLOB NOT NULL,
        delivered_at REAL,
        triplet TEXT,
        role TEXT {_ROLE}
    )""",
    "CREATE INDEX IF NOT EXISTS queries_open ON queries (status, seq)",
    """CREATE TABLE IF NOT EXISTS leases (
        id TEXT PRIMARY KEY,
        query_id TEXT NOT NULL REFERENCES queries (id),
        annotator TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('active', 'answered', 'expired', 'released')),
        triplet_lease TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS leases_active ON leases (query_id) WHERE state = 'active'",
    "CREATE INDEX IF NOT EXISTS leases_annotator ON leases (annotator) WHERE state = 'active'",
    """CREATE TABLE IF NOT EXISTS answers (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        query_id TEXT NOT NULL REFERENCES queries (id),
        annotator TEXT NOT NULL,
        label REAL CHECK (label IS NULL OR label IN (0.0, 0.5, 1.0)),
        shown_at REAL NOT NULL,
        answered_at REAL NOT NULL,
        lease_id TEXT UNIQUE REFERENCES leases (id),
        retracted_at REAL
    )""",
    """CREATE UNIQUE INDEX IF NOT EXISTS answers_once ON answers (query_id, annotator)
        WHERE retracted_at IS NULL""",
    "CREATE INDEX IF NOT EXISTS answers_by_annotator ON answers (annotator, answered_at)",
]
_RUNS = [  # schema 2
    """CREATE TABLE IF NOT EXISTS runs (
        name TEXT PRIMARY KEY,
        env_id TEXT NOT NULL DEFAULT '',
        env_kwargs TEXT NOT NULL DEFAULT '{}',
        factors TEXT NOT NULL DEFAULT '[]',
        created_at REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS rankings (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        run TEXT NOT NULL REFERENCES runs (name),
        factors TEXT NOT NULL,
        higher_is_better TEXT NOT NULL,
        annotator TEXT NOT NULL,
        created_at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS rankings_by_run ON rankings (run, id)",
]
_SUGGESTIONS = [  # schema 3
    """CREATE TABLE IF NOT EXISTS suggestions (
        query_id TEXT PRIMARY KEY,
        label REAL CHECK (label IS NULL OR label IN (0.0, 0.5, 1.0)),
        analysis TEXT NOT NULL DEFAULT '',
        reply TEXT NOT NULL DEFAULT '',
        model TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL
    )""",
]
_TRIPLET_COLUMNS = [  # schema 4: (table, column, declaration)
    ("queries", "triplet", "TEXT"),
    ("queries", "role", f"TEXT {_ROLE}"),
    ("leases", "triplet_lease", "TEXT"),
]
_TRIPLET_INDEXES = [  # schema 4
    """CREATE UNIQUE INDEX IF NOT EXISTS queries_triplet ON queries (triplet, role)
        WHERE triplet IS NOT NULL""",
    """CREATE INDEX IF NOT EXISTS leases_triplet ON leases (triplet_lease)
        WHERE triplet_lease IS NOT NULL""",
]


def tables(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def has_column(conn: sqlite3.Connection, table: str, column: str) -> bool:
    return any(r[1] == column for r in conn.execute(f"PRAGMA table_info({table})"))


def create(conn: sqlite3.Connection) -> None:
    """Make every table of the current schema in a new, empty store (inside a transaction)."""
    for statement in [*_BASE, *_RUNS, *_SUGGESTIONS, *_TRIPLET_INDEXES]:
        conn.execute(statement)


def migrate(conn: sqlite3.Connection, version: int) -> None:
    """Bring a store of schema ``version`` up to :data:`SCHEMA_VERSION`, one step after the
    other, inside the caller's transaction (a crash leaves the store as it was)."""
    if version < 2:
        _to_2(conn)
    if version < 3:
        for statement in _SUGGESTIONS:  # a new, empty table: nothing to backfill
            conn.execute(statement)
    if version < 4:
        _to_4(conn)


def _to_2(conn: sqlite3.Connection) -> None:
    """Schema 2 adds runs and rankings: register every run that submitted queries, with its
    environment and factor names (read off one stored pair per run)."""
    for statement in _RUNS:
        conn.execute(statement)
    sources = conn.execute(
        "SELECT source, MIN(seq) AS seq FROM queries WHERE source != '' GROUP BY source"
    ).fetchall()
    for src in sources:
        q = conn.execute(
            "SELECT env_id, env_kwargs, created_at, segments FROM queries WHERE seq=?",
            (src["seq"],),
        ).fetchone()
        add_run(
            conn,
            src["source"],
            q["env_id"],
            q["env_kwargs"],
            blob_factor_names(q["segments"]),
            q["created_at"],
        )


def _to_4(conn: sqlite3.Connection) -> None:
    """Schema 4 groups triplets by column: each pair named ``<triplet>:ab`` (``:ac``,
    ``:bc``) gets its ``triplet`` and ``role``, and each lease row ``<lease>:ab`` (``:ac``,
    ``:bc``) of a triplet lease whose three rows exist gets ``triplet_lease`` = ``<lease>``.
    The last time the store reads a triplet off an id."""
    for table, column, declaration in _TRIPLET_COLUMNS:
        if not has_column(conn, table, column):
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
    ids = [r[0] for r in conn.execute("SELECT id FROM queries ORDER BY seq")]
    conn.executemany(
        "UPDATE queries SET triplet=?, role=? WHERE id=?",
        [(t, role, qid) for qid, (t, role) in zip(ids, triplet_roles(ids), strict=True) if t],
    )
    lease_ids = {r[0] for r in conn.execute("SELECT id FROM leases")}
    groups = {
        lid[: -len(role) - 1]
        for lid in lease_ids
        for role in PAIR_NAMES
        if lid.endswith(f":{role}")
    }
    conn.executemany(
        "UPDATE leases SET triplet_lease=? WHERE id=?",
        [
            (group, f"{group}:{role}")
            for group in sorted(groups)
            if all(f"{group}:{r}" in lease_ids for r in PAIR_NAMES)
            for role in PAIR_NAMES
        ],
    )
    for statement in _TRIPLET_INDEXES:
        conn.execute(statement)


def add_run(
    conn: sqlite3.Connection,
    name: str,
    env_id: str,
    env_kwargs: str,
    factors: Sequence[str],
    now: float,
) -> None:
    """Register run ``name`` unless known; a known run without factor names gets these."""
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
