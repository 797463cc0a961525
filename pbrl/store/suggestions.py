"""Suggestions: a vision-language model's answers to queries, shown to people on the page
(``teacher=vlm_then_human``). A person's answer is an ordinary answer: both are kept."""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Iterable

from pbrl.store.connection import StoreBase
from pbrl.store.errors import BadInput
from pbrl.store.records import QUERY_ID, SUGGESTION_WORDS, Suggestion, db_label, py_label


class SuggestionsMixin(StoreBase):
    @staticmethod
    def _suggestion(row: sqlite3.Row) -> Suggestion:
        return Suggestion(
            row["query_id"],
            py_label(row["label"]),
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
                    db_label(label),
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
        if not self._has_table(conn, "suggestions"):
            return None
        row = conn.execute(
            "SELECT * FROM suggestions WHERE query_id=?", (str(query_id),)
        ).fetchone()
        return None if row is None else self._suggestion(row)

    def suggestions(self) -> list[Suggestion]:
        """Every stored suggestion, oldest first."""
        conn = self._conn()
        if not self._has_table(conn, "suggestions"):
            return []
        rows = conn.execute("SELECT * FROM suggestions ORDER BY created_at, query_id")
        return [self._suggestion(r) for r in rows.fetchall()]
