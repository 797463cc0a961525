"""Leases: a query shown to one annotator, kept from everyone else until it expires.

A triplet's three pairs are leased together to the labeling page (``lease(...,
triplets=True)``): three lease rows sharing ``triplet_lease``, made, renewed, answered,
expired and released together, and handed out as one :class:`Lease` whose ``lease_id`` is
that shared id (:attr:`Lease.triplet` names the triplet). The rows' own ids are
``<lease>:ab``, ``:ac``, ``:bc``, but nothing reads them back: the column groups them.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Iterable, Sequence

from pbrl.store.connection import StoreBase
from pbrl.store.errors import BadInput, Conflict, LeaseExpired, NotFound
from pbrl.store.records import Lease, check_annotator

# A lease row with its query's triplet and role.
_ROW = "SELECT l.*, q.env_id, q.triplet, q.role FROM leases l JOIN queries q ON q.id=l.query_id"


class LeasesMixin(StoreBase):
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

    def _lease_rows(self, conn: sqlite3.Connection, lease_id: str) -> list[sqlite3.Row]:
        """The rows of lease ``lease_id`` (with their queries' triplet and role): itself, or a
        triplet lease's three in ab, ac, bc order (also when given one of them); [] for an
        unknown lease."""
        row = conn.execute(f"{_ROW} WHERE l.id=?", (lease_id,)).fetchone()
        if row is not None and row["triplet_lease"] is None:
            return [row]
        group = lease_id if row is None else row["triplet_lease"]
        rows = conn.execute(f"{_ROW} WHERE l.triplet_lease=? ORDER BY q.role", (group,))
        members = rows.fetchall()
        return members if len(members) == 3 else []

    def _lease(self, rows: Sequence[sqlite3.Row]) -> Lease:
        """The :class:`Lease` of one lease row, or of a triplet lease's three rows."""
        r = rows[0]
        if r["triplet_lease"] is None:
            return Lease(
                r["id"],
                r["query_id"],
                r["annotator"],
                r["created_at"],
                r["expires_at"],
                r["env_id"],
            )
        return Lease(
            r["triplet_lease"],
            r["query_id"],
            r["annotator"],
            r["created_at"],
            r["expires_at"],
            r["env_id"],
            r["triplet"],
            tuple(x["query_id"] for x in rows),
        )

    def _checked(
        self, conn: sqlite3.Connection, lease_id: str, annotator: str, now: float
    ) -> list[sqlite3.Row]:
        """The rows of a live lease of ``annotator`` (one, or a triplet's three), checked."""
        rows = self._lease_rows(conn, lease_id)
        if not rows:
            raise NotFound(f"unknown lease {lease_id!r}: ask for the next query first")
        return [self._check_lease(conn, r["id"], annotator, None, now) for r in rows]

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
        self, conn: sqlite3.Connection, triplet: str | None, annotator: str, now: float
    ) -> bool:
        """Whether all three pairs of ``triplet`` may be leased to ``annotator`` together
        (else its pair is leased alone)."""
        if triplet is None:
            return False
        n = conn.execute(
            f"SELECT COUNT(*) FROM queries q WHERE q.triplet=? AND {self._open_sql()}",
            (triplet, annotator, now),
        ).fetchone()[0]
        return int(n) == 3

    def lease(
        self, annotator: str, duration_s: float = 300.0, triplets: bool = False
    ) -> Lease | None:
        """The query to show ``annotator`` next (None: nothing to label).

        An annotator holding an unexpired lease gets the same one back (a reloaded page shows
        the same pair), with its expiry pushed out. Otherwise the oldest query that still needs
        an answer, that this annotator has not answered and whose remaining answers are not all
        leased to others, is leased for ``duration_s`` seconds.

        ``triplets`` (the labeling page): a query that is a triplet's pair comes with its two
        siblings, as one lease on the three (answered by ``answer_triplet``), when all
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
                rows = self._lease_rows(conn, held["id"])
                self._extend(conn, [r["id"] for r in rows], now + duration_s)
                return self._lease(self._lease_rows(conn, held["id"]))
            row = conn.execute(
                f"SELECT q.id, q.triplet FROM queries q WHERE {self._open_sql()}"
                " ORDER BY q.seq LIMIT 1",
                (annotator, now),
            ).fetchone()
            if row is None:
                return None
            if triplets and self._open_triplet(conn, row["triplet"], annotator, now):
                return self._new_triplet_lease(conn, row["triplet"], annotator, now, duration_s)
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
            "INSERT INTO leases (id, query_id, annotator, created_at, expires_at, state)"
            " VALUES (?, ?, ?, ?, ?, 'active')",
            (lease_id, query_id, annotator, now, now + duration_s),
        )
        self._refresh(conn, [query_id], now)
        return self._lease(self._lease_rows(conn, lease_id))

    def _new_triplet_lease(
        self, conn: sqlite3.Connection, triplet: str, annotator: str, now: float, duration_s: float
    ) -> Lease:
        """One lease on a triplet's three pairs: three rows sharing ``triplet_lease``."""
        group = uuid.uuid4().hex
        pairs = conn.execute(
            "SELECT id, role FROM queries WHERE triplet=? ORDER BY role", (triplet,)
        ).fetchall()
        conn.executemany(
            "INSERT INTO leases (id, query_id, annotator, created_at, expires_at, state,"
            " triplet_lease) VALUES (?, ?, ?, ?, ?, 'active', ?)",
            [
                (f"{group}:{p['role']}", p["id"], annotator, now, now + duration_s, group)
                for p in pairs
            ],
        )
        self._refresh(conn, [p["id"] for p in pairs], now)
        return self._lease(self._lease_rows(conn, group))

    def renew(self, lease_id: str, annotator: str, duration_s: float = 300.0) -> Lease:
        """Push an unexpired lease's expiry out (the page does this while it is open)."""
        annotator = check_annotator(annotator)
        now = time.time()
        with self._write() as conn:
            rows = self._checked(conn, str(lease_id), annotator, now)
            self._extend(conn, [r["id"] for r in rows], now + duration_s)
            return self._lease(self._lease_rows(conn, rows[0]["id"]))

    def _check_lease(
        self,
        conn: sqlite3.Connection,
        lease_id: str,
        annotator: str,
        query_id: str | None,
        now: float,
    ) -> sqlite3.Row:
        """Lease row ``lease_id`` (with its query's triplet and role), live and ``annotator``'s."""
        if (
            query_id is not None
            and conn.execute("SELECT 1 FROM queries WHERE id=?", (query_id,)).fetchone() is None
        ):
            raise NotFound(f"unknown query id {query_id!r}")
        row = conn.execute(f"{_ROW} WHERE l.id=?", (str(lease_id),)).fetchone()
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
