"""Preference datasets from the store: what trainers collect (each answer once) and what
``pbrl.label export`` writes, with several annotators' answers aggregated."""

from __future__ import annotations

import math
import sqlite3
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Literal

import numpy as np

from pbrl.data.preferences import PreferenceDataset, Queries
from pbrl.data.segments import Segments
from pbrl.store.codec import decode_pair
from pbrl.store.connection import StoreBase
from pbrl.store.errors import BadInput
from pbrl.store.records import py_label

Aggregate = Literal["majority", "first", "per-annotator"]
AGGREGATES: tuple[str, ...] = ("majority", "first", "per-annotator")


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


class DatasetsMixin(StoreBase):
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
                        [py_label(a["label"]) for a in group],
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
            args: list[str] = []
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

    def annotator_labels(self, annotator: str) -> PreferenceDataset | None:
        """``annotator``'s live answers, one row per answer, oldest first (None: none yet)."""
        conn = self._conn()
        conn.execute("BEGIN")  # one consistent snapshot
        try:
            mine = conn.execute(
                "SELECT * FROM answers WHERE retracted_at IS NULL AND annotator=?"
                " ORDER BY answered_at, id",
                (annotator,),
            ).fetchall()
            ids = list(dict.fromkeys(a["query_id"] for a in mine))
            rows = []
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                rows += conn.execute(
                    f"SELECT * FROM queries WHERE id IN ({','.join('?' * len(chunk))})"
                    " ORDER BY seq",
                    chunk,
                ).fetchall()
        finally:
            conn.execute("COMMIT")
        answers: dict[str, list[sqlite3.Row]] = defaultdict(list)
        for a in mine:
            answers[a["query_id"]].append(a)
        return self._dataset(rows, answers, "per-annotator")

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
