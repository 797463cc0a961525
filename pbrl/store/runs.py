"""Runs and people's rankings of their reward factors (HERON): a run's environment and factor
names, and every ranking saved for it (the latest counts)."""

from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from pbrl.store.connection import StoreBase
from pbrl.store.errors import BadInput, Conflict, NotFound
from pbrl.store.records import RUN_NAME, Ranking, RunInfo, check_annotator, factor_name


class RunsMixin(StoreBase):
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
        if not self._has_table(conn, "runs", "rankings"):
            return []
        return [
            self._run_info(r)
            for r in conn.execute("SELECT * FROM runs ORDER BY created_at, name").fetchall()
        ]

    def run(self, name: str) -> RunInfo:
        conn = self._conn()
        row = None
        if self._has_table(conn, "runs", "rankings"):
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
        self, run: RunInfo, factors: object, higher_is_better: object = True
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
        self, run: str, factors: object, higher_is_better: object = True, annotator: str = "cli"
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
        if not self._has_table(conn, "runs", "rankings"):
            return None
        row = conn.execute(
            "SELECT * FROM rankings WHERE run=? ORDER BY id DESC LIMIT 1", (str(run),)
        ).fetchone()
        return None if row is None else self._ranking(row)

    def rankings(self, run: str) -> list[Ranking]:
        """Every ranking saved for ``run``, oldest first (the last one counts)."""
        conn = self._conn()
        if not self._has_table(conn, "runs", "rankings"):
            return []
        rows = conn.execute("SELECT * FROM rankings WHERE run=? ORDER BY id", (str(run),))
        return [self._ranking(r) for r in rows.fetchall()]
