"""The store's errors (each maps to one HTTP status on the page's API) and the check that a
store path can be written."""

from __future__ import annotations

import os
from pathlib import Path

from pbrl.errors import ConfigError


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
