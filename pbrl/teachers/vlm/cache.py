"""The VLM teacher's answer cache: every reply on disk, so a rerun asks nothing twice.

Keyed by sha256 over the model name, the stage, the full prompt text and the sha256 of every
image's PNG bytes (:func:`cache_key`); docs/vlm.md ("The answer cache") says what that
implies.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from pathlib import Path

DEFAULT_CACHE = "~/.cache/pbrl/vlm.sqlite"


def cache_key(model: str, stage: str, text: str, images: list[bytes]) -> str:
    """sha256 over the model, the stage, the prompt text and the images' sha256s."""
    h = hashlib.sha256()
    for part in (model, stage, text, *(hashlib.sha256(b).hexdigest() for b in images)):
        h.update(part.encode())
        h.update(b"\x00")
    return h.hexdigest()


class AnswerCache:
    """Replies on disk (SQLite, WAL): one row per (model, stage, prompt, images) key,
    committed as each answer arrives, so a crashed or repeated run asks nothing twice.
    Shared safely by the teacher's threads and by several processes (sweeps)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, model TEXT NOT NULL, "
            "stage TEXT NOT NULL, reply TEXT NOT NULL, tokens INTEGER NOT NULL, "
            "created REAL NOT NULL)"
        )
        self._db.commit()

    def get(self, key: str) -> tuple[str, int] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT reply, tokens FROM answers WHERE key = ?", (key,)
            ).fetchone()
        return None if row is None else (str(row[0]), int(row[1]))

    def put(self, key: str, model: str, stage: str, reply: str, tokens: int) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?)",
                (key, model, stage, reply, int(tokens), time.time()),
            )
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


__all__ = ["DEFAULT_CACHE", "AnswerCache", "cache_key"]
