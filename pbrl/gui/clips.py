"""Clips of stored queries, rendered lazily from simulator state in one worker thread.

OpenGL contexts belong to the thread that made them, so every :class:`~pbrl.video.StateRenderer`
lives in the worker. The page asks for a clip; a cached file is served at once, a missing one
is rendered first (urgent jobs jump the queue). While idle the worker renders the next
``prerender`` queries that still need answers, so once the cache is warm the page never
waits: answering one pair moves the window, and the worker renders the next while the
person watches.

Files are named from the store's row number and a hash of the query id, never from request
text, and written atomically (``write_video`` renames a finished temporary file).
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any

from pbrl.data.store import LabelStore

log = logging.getLogger("pbrl.label")
SIDES = ("left", "right")  # left = the query's first segment (label 0), right = second (label 1)
CONTAINER = {"h264": ("mp4", "video/mp4"), "vp9": ("webm", "video/webm")}


class RenderError(RuntimeError):
    """A clip that cannot be rendered (no simulator state, unknown environment, ...)."""


class ClipCache:
    def __init__(
        self,
        store_path: str | Path,
        cache_dir: str | Path,
        width: int = 256,
        height: int = 256,
        codec: str = "h264",
        prerender: int = 4,
        poll_s: float = 2.0,
    ) -> None:
        if codec not in CONTAINER:
            raise ValueError(f"unknown codec {codec!r}: use h264 (MP4) or vp9 (WebM)")
        self.store_path = Path(store_path)
        self.dir = Path(cache_dir).expanduser().resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.width, self.height, self.codec = int(width), int(height), codec
        self.suffix, self.media_type = CONTAINER[codec]
        self.prerender, self.poll_s = int(prerender), float(poll_s)
        self._jobs: queue.PriorityQueue[tuple[int, int, str]] = queue.PriorityQueue()
        self._order = 0
        self._done: dict[str, threading.Event] = {}
        self._errors: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.rendered = 0  # clips rendered by this cache (both sides of a pair count once)

    # -- paths ------------------------------------------------------------------------------
    def path(self, seq: int, query_id: str, side: str) -> Path:
        if side not in SIDES:
            raise ValueError(f"side must be left or right, not {side!r}")
        digest = hashlib.sha1(query_id.encode()).hexdigest()[:16]
        return self.dir / f"{int(seq):08d}_{digest}_{side}.{self.suffix}"

    def ready(self, seq: int, query_id: str) -> bool:
        return all(self.path(seq, query_id, s).exists() for s in SIDES)

    # -- worker -----------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="pbrl-clip-renderer", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        self._jobs.put((-1, -1, ""))
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def request(self, seq: int, query_id: str, urgent: bool = True) -> threading.Event:
        """Queue a pair for rendering (no-op when cached); the event is set when it is done."""
        with self._lock:
            if query_id in self._errors or self.ready(seq, query_id):
                done = threading.Event()
                done.set()
                return done
            event = self._done.get(query_id)
            if event is None or event.is_set():  # not queued (or its file went missing)
                event = self._done[query_id] = threading.Event()
                self._order += 1
                self._jobs.put((0 if urgent else 1, self._order, query_id))
            elif urgent:  # queued for pre-rendering: move it up (the later copy is a no-op)
                self._order += 1
                self._jobs.put((0, self._order, query_id))
        self.start()
        return event

    def wait(self, seq: int, query_id: str, timeout: float = 120.0) -> None:
        """Block until the pair is cached; raises :class:`RenderError` if it cannot be."""
        event = self.request(seq, query_id, urgent=True)
        if not event.wait(timeout):
            raise RenderError(f"rendering query {query_id!r} took longer than {timeout:.0f} s")
        if query_id in self._errors:
            raise RenderError(self._errors[query_id])

    def poke(self) -> None:
        """Look for new pending queries to pre-render now (after a lease or answer)."""
        self._wake.set()
        self.start()

    def _prefetch(self, store: LabelStore) -> None:
        if self.prerender <= 0:
            return
        for row in store.upcoming(self.prerender):
            if not self.ready(row["seq"], row["id"]) and row["id"] not in self._errors:
                self.request(row["seq"], row["id"], urgent=False)

    def _run(self) -> None:
        import pbrl.video as video

        try:
            import pbrl.envs  # noqa: F401  (registers pbrl/ environments)
        except Exception:  # an env module that fails to import must not stop the page
            log.exception("importing pbrl.envs failed")
        store = LabelStore(self.store_path, create=False)
        renderers: dict[tuple[str, str], Any] = {}
        try:
            while not self._stop.is_set():
                try:
                    _, _, query_id = self._jobs.get(timeout=self.poll_s)
                except queue.Empty:
                    query_id = ""
                if self._stop.is_set():
                    break
                if not query_id:
                    if self._wake.is_set() or self._jobs.empty():
                        self._wake.clear()
                        self._prefetch(store)
                    continue
                self._render(store, renderers, video, query_id)
                if self._jobs.empty():
                    self._prefetch(store)
        finally:
            for r in renderers.values():
                r.close()
            store.close()

    def _render(
        self, store: LabelStore, renderers: dict[tuple[str, str], Any], video: Any, query_id: str
    ) -> None:
        with self._lock:
            event = self._done.setdefault(query_id, threading.Event())
        try:
            row = store.query(query_id)
            seq = int(row["seq"])
            if self.ready(seq, query_id):
                return
            first, second = store.segments(query_id)
            key = (row["env_id"] or first.env_id, row["env_kwargs"])
            if not key[0]:
                raise RenderError(f"query {query_id!r} names no environment: cannot render it")
            renderer = renderers.get(key)
            if renderer is None:
                kwargs = json.loads(key[1] or "{}")
                try:
                    renderer = video.StateRenderer(key[0], self.width, self.height, **kwargs)
                except Exception as exc:
                    raise RenderError(f"cannot make a renderer for {key[0]}: {exc}") from exc
                renderers[key] = renderer
            t0 = time.time()
            for side, segs in zip(SIDES, (first, second), strict=True):
                frames = video.segment_frames(segs, 0, renderer)
                video.write_video(
                    frames,
                    self.path(seq, query_id, side),
                    fps=renderer.fps or 30.0,
                    codec=self.codec,
                )
            self.rendered += 1
            log.debug("rendered %s in %.2f s", query_id, time.time() - t0)
        except Exception as exc:
            message = (
                exc.args[0] if isinstance(exc, RenderError) else f"{type(exc).__name__}: {exc}"
            )
            self._errors[query_id] = str(message)
            log.warning("cannot render query %s: %s", query_id, message)
        finally:
            event.set()
