"""Clips of stored queries, rendered lazily from simulator state in one worker thread.

OpenGL contexts belong to the thread that made them, so every :class:`~pbrl.video.StateRenderer`
lives in the worker. The page asks for a clip; a cached file is served at once, a missing one
is rendered first (urgent jobs jump the queue). While idle the worker renders the next
``prerender`` queries that still need answers, so once the cache is warm the page never
waits: answering one pair moves the window, and the worker renders the next while the
person watches.

Files are named from the store's row number and a hash of the query id, never from request
text, and written atomically (``write_video`` renames a finished temporary file).

A segment shorter than ``MIN_CLIP_S`` seconds (Reacher's 25 steps last 0.5 s) plays several
times in one clip, with its last frame held briefly between repeats, so a person can watch
it; a one-step segment (a single transition: HERON's pairs) is a still of the state it
reached with its reward-factor values written on it. Some environments get a camera and colours for people (``CLIP_STYLES``: Reacher is seen
from above, close, with a bright target); training-time evaluation videos are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pbrl.store import LabelStore

log = logging.getLogger("pbrl.label")
SIDES = ("left", "right")  # left = the query's first segment (label 0), right = second (label 1)
CONTAINER = {"h264": ("mp4", "video/mp4"), "vp9": ("webm", "video/webm")}
MIN_CLIP_S = 2.0  # a shorter segment is repeated within its clip until it plays this long
LOOP_HOLD_S = 0.25  # the last frame is held this long between repeats: the end is visible


@dataclass(frozen=True)
class ClipStyle:
    """How clips of one environment family are drawn for people (the labeling page only).

    ``camera``: attributes of the free camera (``distance``, ``elevation``, ``azimuth``,
    ``lookat``); ``geom_rgba`` / ``geom_radius``: colours and (visual) sizes of named geoms;
    ``headlight``: (ambient, diffuse) brightness of the camera's light.
    """

    camera: dict[str, Any] = field(default_factory=dict)
    geom_rgba: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)
    geom_radius: dict[str, float] = field(default_factory=dict)
    headlight: tuple[float, float] | None = None


CLIP_STYLES: dict[str, ClipStyle] = {
    # The default camera shows Reacher's 0.4 m arena as a small, grey, oblique patch with a
    # 1.8 cm dark-red target: from straight above and close, with a brighter floor, a bright
    # (larger) target and a dark arm, the fingertip's distance to the target is easy to see.
    "Reacher": ClipStyle(
        camera={"distance": 0.7, "elevation": -90.0, "azimuth": 90.0, "lookat": (0.0, 0.0, 0.0)},
        geom_rgba={
            "target": (0.9, 0.0, 0.0, 1.0),
            "fingertip": (0.0, 0.75, 0.1, 1.0),
            "link0": (0.1, 0.15, 0.45, 1.0),
            "link1": (0.1, 0.15, 0.45, 1.0),
        },
        geom_radius={"target": 0.015, "fingertip": 0.013},
        headlight=(0.45, 0.55),
    ),
}


def clip_style(env_id: str) -> ClipStyle | None:
    """The :class:`ClipStyle` of ``env_id``'s family (``Reacher-v5`` -> ``Reacher``), if any."""
    name = env_id.split("/")[-1]
    for family, style in CLIP_STYLES.items():
        if name.split("-")[0] == family:
            return style
    return None


def apply_style(renderer: Any, style: ClipStyle) -> None:
    """Set ``style`` on a :class:`~pbrl.video.StateRenderer` (geoms it lacks are skipped)."""
    import mujoco

    model = renderer.model
    for name, value in style.camera.items():
        if isinstance(getattr(renderer.camera, name), np.ndarray):
            getattr(renderer.camera, name)[:] = value
        else:
            setattr(renderer.camera, name, value)

    def geom(name: str) -> int:
        return int(mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, name))

    for name, rgba in style.geom_rgba.items():
        if geom(name) >= 0:
            model.geom_rgba[geom(name)] = rgba
    for name, radius in style.geom_radius.items():
        if geom(name) >= 0:
            model.geom_size[geom(name), 0] = radius
    if style.headlight is not None:
        model.vis.headlight.ambient[:] = style.headlight[0]
        model.vis.headlight.diffuse[:] = style.headlight[1]


def loop_frames(
    frames: np.ndarray, fps: float, min_seconds: float = MIN_CLIP_S, hold_s: float = LOOP_HOLD_S
) -> np.ndarray:
    """``frames`` repeated (the last one held ``hold_s`` between repeats) until they play at
    least ``min_seconds`` at ``fps``; a clip that long already is returned as it is."""
    if len(frames) >= min_seconds * fps:
        return frames
    hold = np.repeat(frames[-1:], max(1, round(hold_s * fps)), axis=0)
    once = np.concatenate([frames, hold])
    repeats = math.ceil(min_seconds * fps / len(once))
    return np.concatenate([once] * repeats)


def still_frames(
    frames: np.ndarray, factors: dict[str, float], fps: float, seconds: float = MIN_CLIP_S
) -> np.ndarray:
    """A one-step segment (a single transition, HERON's pairs) as a still: the frame of the
    state the step reached, its reward-factor values written on it, held ``seconds``."""
    from PIL import Image, ImageDraw

    image = Image.fromarray(np.ascontiguousarray(frames[-1]))
    draw = ImageDraw.Draw(image)
    lines = [f"{name.removeprefix('reward_')}: {value:.3g}" for name, value in factors.items()]
    if lines:
        height = 12 * len(lines) + 6
        draw.rectangle((0, 0, image.width, height), fill=(0, 0, 0))
        for i, line in enumerate(lines):
            draw.text((4, 3 + 12 * i), line, fill=(255, 255, 255))
    still = np.asarray(image)[None]
    return np.repeat(still, max(1, round(seconds * fps)), axis=0)


def default_cache_dir(store_path: str | Path) -> Path:
    """``<store>_clips`` beside the store."""
    path = Path(store_path)
    return path.with_name(path.stem + "_clips")


def make_cache_dir(cache_dir: str | Path) -> Path:
    """Make the clip folder; a ``ValueError`` (one line) if it cannot be made or written."""
    path = Path(cache_dir).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(
            f"cannot make the clip folder {path} ({exc.strerror}): pass --cache DIR in a "
            "folder you can write"
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(
            f"the clip folder {path} is not writable: pass --cache DIR in a folder you can write"
        )
    return path


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
        self.dir = make_cache_dir(cache_dir)
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
            if row["role"] == "bc":
                continue  # a triplet's page shows the clips of its ab and ac pairs only
            if not self.ready(row["seq"], row["id"]) and row["id"] not in self._errors:
                self.request(row["seq"], row["id"], urgent=False)

    def _run(self) -> None:
        import pbrl.video as video

        try:
            import pbrl.envs  # noqa: F401  (registers pbrl/ environments)
        except Exception:  # an env module that fails to import must not stop the page
            log.exception("importing pbrl.envs failed")
        store = LabelStore(self.store_path, readonly=True)  # the worker only reads
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
                style = clip_style(key[0])
                if style is not None:
                    apply_style(renderer, style)
                renderers[key] = renderer
            t0 = time.time()
            fps = renderer.fps or 30.0
            for side, segs in zip(SIDES, (first, second), strict=True):
                frames = video.segment_frames(segs, 0, renderer)
                if segs.length == 1:  # a single transition: a still with its factor values
                    values = (
                        {}
                        if segs.reward_factors is None
                        else {
                            name: float(v)
                            for name, v in zip(
                                segs.factor_names, segs.reward_factors[0, 0], strict=True
                            )
                        }
                    )
                    frames = still_frames(frames, values, fps)
                else:
                    frames = loop_frames(frames, fps)
                video.write_video(frames, self.path(seq, query_id, side), fps=fps, codec=self.codec)
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
