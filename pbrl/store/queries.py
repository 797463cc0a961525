"""Queries: segment pairs put in the store to be labeled, and reading them back."""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from pbrl.data.preferences import Queries
from pbrl.data.segments import Segments
from pbrl.store.codec import decode_pair, encode_pair, oracle_label
from pbrl.store.connection import StoreBase
from pbrl.store.errors import BadInput, NotFound
from pbrl.store.records import QUERY_ID
from pbrl.store.schema import add_run, has_column
from pbrl.store.triplets import triplet_roles


class QueriesMixin(StoreBase):
    def add_queries(
        self,
        queries: Queries,
        source: str = "",
        batch: str = "",
        needed: int = 1,
        env_kwargs: dict[str, Any] | None = None,
    ) -> list[str]:
        """Insert query pairs (pending); ids already in the store are left as they are.

        A triplet's pairs (:func:`pbrl.data.triplets.triplet_queries`) are stored with their
        triplet and role (``ab``, ``ac``, ``bc``), so the page can lease them together."""
        if needed < 1:
            raise BadInput(f"answers per query must be >= 1, got {needed}")
        if queries.first.qpos is None or queries.first.qvel is None:
            raise BadInput(
                "queries carry no simulator state (qpos/qvel): they cannot be "
                "rendered for people to label"
            )
        kwargs = json.dumps(env_kwargs or {}, sort_keys=True)
        ids = [str(q) for q in queries.query_id]
        for qid in ids:
            if not QUERY_ID.match(qid):
                raise BadInput(
                    f"query id {qid!r} is not usable in a URL: use 1 to 128 of A-Z a-z 0-9 _ . : -"
                )
        rows = []
        now = time.time()
        for i, (qid, (triplet, role)) in enumerate(zip(ids, triplet_roles(ids), strict=True)):
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
                    triplet,
                    role,
                )
            )
        with self._write() as conn:
            conn.executemany(
                "INSERT OR IGNORE INTO queries (id, created_at, source, batch, env_id, env_kwargs,"
                " needed, oracle, segments, triplet, role) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            if source and len(queries):  # the run is known from its queries (rank page)
                first = queries.first
                add_run(conn, source, first.env_id, kwargs, first.factor_names, now)
        return ids

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
        """The next ``n`` queries that still need answers, in the order they are handed out
        (``seq``, ``id``, ``env_id``, ``env_kwargs`` and ``role``: a triplet's pair's)."""
        conn = self._conn()
        role = "role" if has_column(conn, "queries", "role") else "NULL AS role"  # schema < 4
        return conn.execute(
            f"SELECT seq, id, env_id, env_kwargs, {role} FROM queries "
            "WHERE status != 'answered' ORDER BY seq LIMIT ?",
            (int(n),),
        ).fetchall()

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
