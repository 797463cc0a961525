"""Answers: a person's label for a leased pair, a ranking of a leased triplet (its three pair
answers, in one transaction), undo, and the progress counts."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence

from pbrl.store.errors import BadInput, Conflict
from pbrl.store.leases import LeasesMixin
from pbrl.store.records import Answer, Lease, check_annotator, db_label, parse_label, py_label
from pbrl.store.triplets import ranking_labels

# An answer row with its query's collection time, triplet and role.
_ANSWER = (
    "SELECT a.*, q.delivered_at, q.triplet, q.role FROM answers a JOIN queries q ON q.id=a.query_id"
)


class AnswersMixin(LeasesMixin):
    def answer(
        self, lease_id: str, annotator: str, label: object, query_id: str | None = None
    ) -> Answer:
        """Record ``annotator``'s answer to the query of ``lease_id``, atomically.

        Raises (and changes nothing) for an unknown query or lease, a bad label, a second
        answer under the same lease and a lease that expired before the answer arrived.
        """
        annotator = check_annotator(annotator)
        value = parse_label(label)
        now = time.time()
        with self._write() as conn:
            rows = self._lease_rows(conn, str(lease_id))
            if len(rows) == 3:
                raise BadInput(
                    f"lease {lease_id} covers the three pairs of triplet {rows[0]['triplet']!r}: "
                    "answer it with a ranking (POST /api/answer_triplet, "
                    "LabelStore.answer_triplet)"
                )
            lease = self._check_lease(conn, lease_id, annotator, query_id, now)
            got = self._insert_answer(conn, lease, annotator, value, now)
            self._answered(conn, [lease], now)
        return got

    def answer_triplet(
        self, lease_id: str, annotator: str, ranks: object, triplet_id: str | None = None
    ) -> list[Answer]:
        """Record ``annotator``'s ranking of the triplet of ``lease_id`` as its three pair
        answers (``ab``, ``ac``, ``bc``), in one transaction: all three or none.

        ``ranks``: ``{"a": 0, "b": 1, "c": 1}`` (0 best, equal ranks tie) or ``"skip"`` (all
        three skipped); see :func:`~pbrl.store.triplets.ranking_labels`. Refused like
        :meth:`answer`, and for a lease on a single pair.
        """
        annotator = check_annotator(annotator)
        labels = ranking_labels(ranks)
        now = time.time()
        with self._write() as conn:
            rows = self._checked(conn, str(lease_id), annotator, now)
            triplet = rows[0]["triplet"]
            if len(rows) != 3 or rows[0]["triplet_lease"] is None:
                raise BadInput(
                    f"lease {lease_id} is for the pair {rows[0]['query_id']!r}, not a triplet: "
                    "answer it with a label (POST /api/answer, LabelStore.answer)"
                )
            if triplet_id is not None and triplet_id != triplet:
                raise BadInput(f"lease {lease_id} is for triplet {triplet!r}, not {triplet_id!r}")
            got = [
                self._insert_answer(conn, row, annotator, labels[row["role"]], now) for row in rows
            ]
            self._answered(conn, rows, now)
        return got

    @staticmethod
    def _insert_answer(
        conn: sqlite3.Connection, lease: sqlite3.Row, annotator: str, value: float, now: float
    ) -> Answer:
        """Insert the answer given under lease row ``lease`` (which carries its query's
        triplet and role)."""
        try:
            cur = conn.execute(
                "INSERT INTO answers (query_id, annotator, label, shown_at, answered_at, lease_id)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    lease["query_id"],
                    annotator,
                    db_label(value),
                    lease["created_at"],
                    now,
                    lease["id"],
                ),
            )
        except sqlite3.IntegrityError:
            raise Conflict(f"{annotator!r} already answered query {lease['query_id']!r}") from None
        return Answer(
            int(cur.lastrowid or 0),
            lease["query_id"],
            annotator,
            value,
            lease["created_at"],
            now,
            lease["triplet"],
            lease["role"],
        )

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
                f"{_ANSWER} WHERE a.annotator=? AND a.retracted_at IS NULL"
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
            if len(rows) == 3:
                lease = self._new_triplet_lease(conn, row["triplet"], annotator, now, duration_s)
            else:
                lease = self._new_lease(conn, row["query_id"], annotator, now, duration_s)
        answers = [
            Answer(
                int(r["id"]),
                r["query_id"],
                annotator,
                py_label(r["label"]),
                r["shown_at"],
                r["answered_at"],
                r["triplet"],
                r["role"],
            )
            for r in rows
        ]
        return answers, lease

    @staticmethod
    def _answer_group(conn: sqlite3.Connection, row: sqlite3.Row) -> list[sqlite3.Row]:
        """``row``, or the live answers given under the same triplet lease (``ab`` first)."""
        lease = conn.execute(
            "SELECT triplet_lease FROM leases WHERE id=?", (row["lease_id"],)
        ).fetchone()
        if lease is None or lease["triplet_lease"] is None:
            return [row]
        return conn.execute(
            f"{_ANSWER} JOIN leases l ON l.id=a.lease_id"
            " WHERE l.triplet_lease=? AND a.retracted_at IS NULL ORDER BY q.role",
            (lease["triplet_lease"],),
        ).fetchall()

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
