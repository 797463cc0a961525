"""Opening a label store: connections (one per thread), write transactions, the schema check
and migration, metadata, and closing without leaving ``-wal``/``-shm`` files behind."""

from __future__ import annotations

import atexit
import json
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pbrl.store import schema
from pbrl.store.errors import NotAStore, NotWritable, check_writable

_OPEN: weakref.WeakSet[StoreBase] = weakref.WeakSet()  # closed at interpreter exit


@atexit.register
def _close_all() -> None:
    for store in list(_OPEN):
        store.close_all()


class StoreBase:
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
        changes, not even its journal mode or schema, and a file that is not a pbrl store is
        refused. Otherwise the store must be writable: a read-only file or folder is refused
        here, at once, rather than at the first answer; an older store is migrated.
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
        self._lock = threading.Lock()
        self._conns: dict[int, tuple[threading.Thread, sqlite3.Connection]] = {}
        self._immutable = False
        _OPEN.add(self)
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
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
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
                        # Closed by close/close_all from another thread: a connection
                        # that checks its thread is never closed once its thread has ended
                        # (left -wal/-shm files behind).
                        check_same_thread=False,
                    )
                else:
                    conn = sqlite3.connect(
                        self.path,
                        timeout=self.timeout,
                        isolation_level=None,
                        check_same_thread=False,
                    )
                conn.row_factory = sqlite3.Row
                if not self.readonly:
                    conn.execute("PRAGMA synchronous=FULL")  # acknowledged == on disk
                    conn.execute("PRAGMA foreign_keys=ON")
            except sqlite3.DatabaseError as exc:
                raise self._foreign(str(exc)) from exc
            self._local.conn = conn
            with self._lock:
                self._conns[threading.get_ident()] = (threading.current_thread(), conn)
        return conn

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
        """Close this thread's connection, and those of threads that have ended.

        A writer first folds the WAL into the store (``wal_checkpoint(TRUNCATE)``); when the
        last connection to the file closes (in any process), SQLite removes the ``-wal`` and
        ``-shm`` files. Connections of other threads still running stay open (they may be
        inside a transaction); :meth:`close_all`, run at interpreter exit, closes them too.
        Using the store after ``close`` opens a new connection.
        """
        me = threading.get_ident()
        with self._lock:
            done = [
                ident
                for ident, (thread, _) in self._conns.items()
                if ident == me or not thread.is_alive()
            ]
            conns = [self._conns.pop(ident)[1] for ident in done]
        self._local.conn = None
        for conn in conns:
            self._shut(conn)

    def close_all(self) -> None:
        """Close every connection of this store, in every thread (at interpreter exit)."""
        with self._lock:
            conns = [conn for _, conn in self._conns.values()]
            self._conns.clear()
        self._local.conn = None
        for conn in conns:
            self._shut(conn)

    def _shut(self, conn: sqlite3.Connection) -> None:
        try:
            if not self.readonly and not conn.in_transaction:
                conn.execute("PRAGMA busy_timeout=1000")  # don't wait long for readers
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass  # another process is busy with the file: it checkpoints when it closes
        finally:
            conn.close()
        if self.readonly and not self._immutable:
            self._tidy()

    def _tidy(self) -> None:
        """After a reader's close: SQLite lets only a writable connection remove the ``-wal``
        and ``-shm`` files a reader made, so when the ``-wal`` is empty (everything is in the
        store itself) and the folder writable, open one, read, and close it. It changes no
        byte of the store; if another connection is still open, it removes nothing."""
        wal = Path(f"{self.path}-wal")
        try:
            if wal.stat().st_size or not os.access(self.path.parent, os.W_OK | os.X_OK):
                return
            if not os.access(self.path, os.R_OK | os.W_OK):
                return
            conn = sqlite3.connect(self.path, timeout=0.1, isolation_level=None)
            try:
                conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            finally:
                conn.close()
        except (OSError, sqlite3.Error):
            pass  # nothing to tidy, or someone else is using the store

    # -- schema --------------------------------------------------------------------------------
    def _foreign(self, why: str) -> NotAStore:
        return NotAStore(
            f"{self.path} is not a pbrl label store ({why}): pass a store made by "
            "`python -m pbrl.label queries` or a teacher=human run"
        )

    def _check_schema(self, conn: sqlite3.Connection) -> None:
        """Refuse a file that is not a pbrl store (or is newer than this pbrl); writes nothing."""
        try:
            found = schema.tables(conn)
            if not found:
                raise self._foreign("an empty database")
            if not set(schema.TABLES) <= found:
                raise self._foreign(f"its tables are {', '.join(sorted(found))}")
            row = conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        except sqlite3.OperationalError as exc:  # e.g. a WAL store in a read-only folder
            raise NotWritable(f"cannot read label store {self.path}: {exc}") from exc
        except sqlite3.DatabaseError as exc:  # "file is not a database"
            raise self._foreign(str(exc)) from exc
        if row is None:
            raise self._foreign("no schema version in its meta table")
        if int(row["value"]) > schema.SCHEMA_VERSION:
            raise NotAStore(
                f"{self.path}: label store schema {row['value']} is newer than "
                f"this pbrl ({schema.SCHEMA_VERSION}): upgrade pbrl"
            )

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        try:
            found = schema.tables(conn)
        except sqlite3.DatabaseError as exc:
            raise self._foreign(str(exc)) from exc
        if found - {"sqlite_sequence"}:  # not a new, empty file: it must be a pbrl store
            self._check_schema(conn)
        try:
            conn.execute("PRAGMA journal_mode=WAL")  # persistent: every connection uses it
            with self._write(conn):
                row = conn.execute(
                    "SELECT value FROM meta WHERE key='schema'"
                    if "meta" in found
                    else "SELECT NULL WHERE 0"
                ).fetchone()
                if row is None:
                    schema.create(conn)
                    conn.execute(
                        "INSERT INTO meta VALUES ('schema', ?)", (str(schema.SCHEMA_VERSION),)
                    )
                    conn.execute("INSERT INTO meta VALUES ('created_at', ?)", (str(time.time()),))
                elif int(row["value"]) < schema.SCHEMA_VERSION:
                    # Migrate and bump the version in the same transaction: a crash leaves
                    # the old store as it was.
                    self._migrate(conn, int(row["value"]))
                    conn.execute(
                        "UPDATE meta SET value=? WHERE key='schema'", (str(schema.SCHEMA_VERSION),)
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
        schema.migrate(conn, version)

    def _has_table(self, conn: sqlite3.Connection, *names: str) -> bool:
        """False for an older store opened read-only that predates one of these tables."""
        return set(names) <= schema.tables(conn)

    # -- metadata ------------------------------------------------------------------------------
    def set_meta(self, **values: object) -> None:
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
