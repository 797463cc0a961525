"""A vision-language model as the teacher: RL-VLM-F (Wang et al. 2024) over any
OpenAI-compatible chat-completions endpoint.

For each query pair the teacher renders what it shows (:mod:`pbrl.teachers.vlm_images`: the
last frame of each segment by default) and asks two questions:

1. *analysis* (both images and the task's goal text): what each image shows, and whether they
   differ in how well they achieve the goal;
2. *label* (text only: the goal and the analysis): one line, ``0`` (goal better achieved in
   Image 1), ``1`` (in Image 2) or ``-1`` (unsure / no difference).

The first line of the label reply, stripped, must be exactly one of those numbers; anything
else is read as unsure. Unsure pairs and pairs whose two images are identical (no request is
made for them) are skipped (NaN). Labels follow pbrl's convention: 0 first preferred, 1 second.
Temperature 0.

Asynchronous (:class:`~pbrl.teachers.base.AsyncTeacher`): ``submit`` hands a round to a
background render thread and a pool of ``max_concurrency`` request threads and returns at
once; ``collect`` returns whatever pairs were answered since its last call (annotator
``"vlm"``). Requests obey a requests-per-second limit and a per-request timeout; 429, 408, 409,
5xx, timeouts and connection errors are retried with exponential backoff (the ``openai``
client's own retries are off); a pair that still fails is skipped and counted
(``vlm_failed``), never a crash. Every answer is committed to an on-disk SQLite cache keyed by
sha256 of the image bytes, the prompt text, the model and the stage, so a rerun of the same
queries makes no request at all.

Construction sends a probe (``GET /models``, or a one-token chat request where the endpoint
has no model list): an unreachable endpoint, a rejected key or an unknown model is one
:class:`~pbrl.teachers.scripted.TeacherConfigError` before training starts.

docs/vlm.md has the prompts, the cache, cost figures and how to point it at vLLM or OpenAI.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import sqlite3
import threading
import time
import warnings
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from pbrl.data import PreferenceDataset, Queries
from pbrl.data.preferences import oracle_labels
from pbrl.store import StoreError, check_writable
from pbrl.teachers.base import AsyncTeacher
from pbrl.teachers.scripted import TeacherConfigError
from pbrl.teachers.vlm_images import ImageSpec, SegmentImager, check_renderable, checked_camera

log = logging.getLogger("pbrl")

ANNOTATOR = "vlm"
ANALYSIS, LABEL = "analysis", "label"  # the two stages (part of every cache key)
DEFAULT_CACHE = "~/.cache/pbrl/vlm.sqlite"
RETRY_STATUS = frozenset({408, 409, 429})  # and every 5xx


# -- prompts -------------------------------------------------------------------------------------
# Worded after RL-VLM-F's two prompts (what is in each image, then a difference in terms of the
# goal; then a single-line 0 / 1 / -1 answer), not copied from them.


def _image_heading(n: int, spec: ImageSpec) -> str:
    if spec.frames == "strip":
        return (
            f"Image {n} ({spec.num_frames} frames of one clip side by side, "
            "time running left to right):"
        )
    if spec.frames == "k":
        return f"Image {n} ({spec.num_frames} frames of one clip, in time order):"
    return f"Image {n}:"


def analysis_texts(goal: str, spec: ImageSpec) -> tuple[str, str, str]:
    """Stage 1's text: before the first image(s), between the two, after the second."""
    first = "Look at these two images of the same robot task.\n" + _image_heading(1, spec)
    between = _image_heading(2, spec)
    after = (
        "Answer these questions:\n"
        "1. What does Image 1 show?\n"
        "2. What does Image 2 show?\n"
        f"3. The goal is: {goal}. Do Image 1 and Image 2 differ in how well the goal is "
        "achieved? Describe the difference, if there is one."
    )
    return first, between, after


def label_text(goal: str, analysis: str) -> str:
    """Stage 2's text-only prompt: the goal, the questions, the stage-1 answer."""
    return (
        "Two images of the same robot task were compared. These questions were asked:\n"
        "1. What does Image 1 show?\n"
        "2. What does Image 2 show?\n"
        f"3. The goal is: {goal}. Do Image 1 and Image 2 differ in how well the goal is "
        "achieved?\n"
        f"The answers were:\n{analysis.strip()}\n\n"
        "Based on these answers, in which image is the goal better achieved? Reply with a "
        "single line holding one number and nothing else: 0 if the goal is better achieved "
        "in Image 1, 1 if it is better achieved in Image 2, -1 if you are unsure or there is "
        "no difference."
    )


def _data_url(png: bytes) -> str:
    import base64

    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def analysis_messages(
    goal: str, images_1: list[bytes], images_2: list[bytes], spec: ImageSpec
) -> list[dict[str, Any]]:
    first, between, after = analysis_texts(goal, spec)
    parts: list[dict[str, Any]] = [{"type": "text", "text": first}]
    parts += [{"type": "image_url", "image_url": {"url": _data_url(b)}} for b in images_1]
    parts.append({"type": "text", "text": between})
    parts += [{"type": "image_url", "image_url": {"url": _data_url(b)}} for b in images_2]
    parts.append({"type": "text", "text": after})
    return [{"role": "user", "content": parts}]


def label_messages(goal: str, analysis: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": label_text(goal, analysis)}]


_ANSWER = re.compile(r"(0|1|-1)")


def parse_answer(reply: str | None) -> int:
    """The label reply's first line, stripped, as 0, 1 or -1; anything else is -1 (unsure)."""
    lines = (reply or "").strip().splitlines()
    first = lines[0].strip() if lines else ""
    return int(first) if _ANSWER.fullmatch(first) else -1


def answer_label(answer: int) -> float:
    """0 -> 0.0 (first preferred), 1 -> 1.0 (second), -1 -> NaN (skip)."""
    return {0: 0.0, 1: 1.0}.get(answer, math.nan)


def cache_key(model: str, stage: str, text: str, images: list[bytes]) -> str:
    """sha256 over the model, the stage, the prompt text and the images' sha256s."""
    h = hashlib.sha256()
    for part in (model, stage, text, *(hashlib.sha256(b).hexdigest() for b in images)):
        h.update(part.encode())
        h.update(b"\x00")
    return h.hexdigest()


# -- the answer cache ----------------------------------------------------------------------------


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


# -- rate limit and figures ----------------------------------------------------------------------


class RateLimiter:
    """At most ``per_second`` request starts per second (evenly spaced), across threads."""

    def __init__(self, per_second: float | None) -> None:
        self.interval = 0.0 if not per_second else 1.0 / float(per_second)
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self, stop: threading.Event) -> None:
        if self.interval <= 0:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            stop.wait(start - now)


@dataclass
class _Figures:
    """Counters behind ``stats()``; one instance per stats window, one for the whole run."""

    requests: int = 0  # HTTP requests sent (retries included)
    cache_hits: int = 0  # answers read from the cache instead
    retries: int = 0
    latency_s: float = 0.0  # summed over successful requests
    answered: int = 0  # successful requests
    tokens: int = 0
    pairs: int = 0  # pairs finished (every outcome)
    labeled: int = 0  # 0 / 1 answers
    unsure: int = 0  # -1 or unparseable
    identical: int = 0  # no request: both images the same
    failed: int = 0  # gave up (retries exhausted, or an error not worth retrying)
    correct: int = 0  # labels agreeing with the true-return oracle ...
    judged: int = 0  # ... among labeled pairs whose true returns differ
    busy_s: float = 0.0  # wall time with at least one pair in progress


@dataclass
class _Pair:
    round: int
    row: int
    images_1: list[bytes] = field(default_factory=list)
    images_2: list[bytes] = field(default_factory=list)


class _GiveUp(Exception):
    """A request that will not be answered (retries exhausted, or not worth retrying)."""


_PROBED: set[tuple[str, str, str]] = set()  # (base_url, model, key hash) that passed


class VLMTeacher(AsyncTeacher):
    """``teacher=vlm``: see the module docstring and ``conf/teacher/vlm.yaml``.

    ``goal`` is the task's text goal; when it is empty, ``goals[env_id]`` is used (the config
    keeps one per environment). ``api_key_env`` names the environment variable holding the key
    (``null`` for servers without authentication, e.g. a local vLLM). ``cache=null`` disables
    the answer cache. ``min_labels``/``wait_timeout_s``/``wait_for_round``: how long
    ``collect`` blocks (see :meth:`collect`).
    """

    def __init__(
        self,
        model: str,
        base_url: str = "https://api.openai.com/v1",
        api_key_env: str | None = "OPENAI_API_KEY",
        goal: str | None = None,
        goals: Mapping[str, str] | None = None,
        env_id: str | None = None,
        env_kwargs: Mapping[str, Any] | None = None,
        camera: Mapping[str, Any] | None = None,
        frames: str = "last",
        num_frames: int = 4,
        size: int = 224,
        max_concurrency: int = 8,
        requests_per_second: float | None = 5.0,
        timeout_s: float = 60.0,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        backoff_max_s: float = 30.0,
        analysis_max_tokens: int | None = 512,
        label_max_tokens: int | None = 16,
        cache: str | None = DEFAULT_CACHE,
        price_per_1k_tokens: float | None = None,
        min_labels: int = 0,
        wait_timeout_s: float | None = 300.0,
        wait_for_round: bool = False,
        probe: bool = True,
        probe_timeout_s: float = 15.0,
        rng: np.random.Generator | None = None,
    ) -> None:
        if not model:
            raise TeacherConfigError("teacher.model is empty: name the VLM, e.g. gpt-4o-mini")
        if not base_url or not str(base_url).startswith(("http://", "https://")):
            raise TeacherConfigError(
                f"teacher.base_url={base_url!r}: give the endpoint's URL, e.g. "
                "http://localhost:8000/v1 (vLLM) or https://api.openai.com/v1"
            )
        self.model, self.base_url = str(model), str(base_url).rstrip("/")
        self.env_id = env_id
        self.env_kwargs = _plain_dict(env_kwargs)
        self.goal = self._resolve_goal(goal, _plain_dict(goals), env_id)
        self.spec = ImageSpec(frames, int(num_frames), int(size))
        self.camera = checked_camera(_plain_dict(camera))
        for name, value, low in (
            ("max_concurrency", max_concurrency, 1),
            ("max_retries", max_retries, 0),
            ("min_labels", min_labels, 0),
        ):
            if int(value) < low:
                raise TeacherConfigError(f"teacher.{name}={value}: use an integer >= {low}")
        for name, fvalue in (
            ("timeout_s", timeout_s),
            ("backoff_s", backoff_s),
            ("backoff_max_s", backoff_max_s),
            ("probe_timeout_s", probe_timeout_s),
        ):
            if not float(fvalue) > 0:
                raise TeacherConfigError(f"teacher.{name}={fvalue}: use a positive number")
        if requests_per_second is not None and not float(requests_per_second) > 0:
            raise TeacherConfigError(
                f"teacher.requests_per_second={requests_per_second}: use a positive rate, "
                "or null for no limit"
            )
        if wait_timeout_s is not None and float(wait_timeout_s) < 0:
            raise TeacherConfigError(
                f"teacher.wait_timeout_s={wait_timeout_s}: use >= 0 seconds, or null (forever)"
            )
        if price_per_1k_tokens is not None and float(price_per_1k_tokens) < 0:
            raise TeacherConfigError(f"teacher.price_per_1k_tokens={price_per_1k_tokens}: use >= 0")
        self.max_concurrency, self.max_retries = int(max_concurrency), int(max_retries)
        self.timeout_s, self.backoff_s = float(timeout_s), float(backoff_s)
        self.backoff_max_s = float(backoff_max_s)
        self.analysis_max_tokens, self.label_max_tokens = analysis_max_tokens, label_max_tokens
        self.price_per_1k_tokens = (
            None if price_per_1k_tokens is None else float(price_per_1k_tokens)
        )
        self.min_labels, self.wait_for_round = int(min_labels), bool(wait_for_round)
        self.wait_timeout_s = None if wait_timeout_s is None else float(wait_timeout_s)
        self.cache_path = None if not cache else Path(cache).expanduser()
        if self.cache_path is not None:
            try:
                check_writable(self.cache_path)  # at start, not at the first answer
            except StoreError as exc:
                raise TeacherConfigError(f"teacher.cache: {exc}") from None
        if env_id:
            check_renderable(env_id, self.env_kwargs)
        self.api_key = self._api_key(api_key_env)
        self._rng = rng if rng is not None else np.random.default_rng()
        self._limiter = RateLimiter(requests_per_second)
        self._client = self._make_client()
        if probe:
            self._probe(float(probe_timeout_s))

        # Started on first submit: building the teacher (pbrl.train builds one to validate the
        # config) must not create files or threads.
        self._cache: AnswerCache | None = None
        self._render_pool: ThreadPoolExecutor | None = None
        self._request_pool: ThreadPoolExecutor | None = None
        self._imager: SegmentImager | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._done = threading.Condition(self._lock)
        self._rounds: list[Queries] = []
        self._finished: list[tuple[int, int, float, float]] = []  # round, row, label, time
        self._in_progress = 0
        self._busy_since: float | None = None
        self._window, self.total = _Figures(), _Figures()
        self.submitted = 0
        self.pairs_done = 0
        self.labels_received = 0  # usable labels handed out by collect
        self.transcripts: dict[str, tuple[str, str]] = {}  # query id -> (analysis, label reply)
        # query id -> labeled / unsure / identical / failed (set before collect() returns it)
        self.outcomes: dict[str, str] = {}
        self._warned: set[str] = set()
        self._gave_up_waiting = False

    # -- settings ------------------------------------------------------------------------------
    @staticmethod
    def _resolve_goal(goal: str | None, goals: dict[str, Any], env_id: str | None) -> str:
        if goal:
            return str(goal)
        if env_id and goals.get(env_id):
            return str(goals[env_id])
        known = ", ".join(sorted(goals)) or "none"
        raise TeacherConfigError(
            f"teacher=vlm has no goal text for {env_id or 'this env'}: set "
            f"teacher.goal='<what the last frame should show>' (the config has goals for: "
            f"{known})"
        )

    @staticmethod
    def _api_key(api_key_env: str | None) -> str:
        if not api_key_env:
            return "none"  # a server without authentication (the openai client needs a value)
        key = os.environ.get(str(api_key_env))
        if not key:
            raise TeacherConfigError(
                f"teacher.api_key_env={api_key_env}: the environment variable {api_key_env} is "
                f"not set; export {api_key_env}=<your key>, or teacher.api_key_env=null for a "
                "server without authentication"
            )
        return key

    def _make_client(self) -> Any:
        try:
            from openai import OpenAI
        except ImportError:
            raise TeacherConfigError(
                "teacher=vlm needs the openai package: pip install -e '.[vlm]'"
            ) from None
        # The HTTP client logs every request at INFO: one line per request floods a run's log
        # (pbrl's own figures count them). Quietened unless the user set a level.
        for name in ("httpx", "httpx2", "openai"):
            if logging.getLogger(name).level == logging.NOTSET:
                logging.getLogger(name).setLevel(logging.WARNING)
        # The client's own retries are off: ours (below) are explicit, counted and tested.
        return OpenAI(
            api_key=self.api_key, base_url=self.base_url, max_retries=0, timeout=self.timeout_s
        )

    def _probe(self, timeout_s: float) -> None:
        """One clear error now for an endpoint that cannot answer later."""
        import openai

        probed = (self.base_url, self.model, hashlib.sha256(self.api_key.encode()).hexdigest())
        if probed in _PROBED:  # pbrl.train builds the teacher twice (validation, the run)
            return
        where = f"the VLM endpoint teacher.base_url={self.base_url}"
        client = self._client.with_options(timeout=timeout_s)
        served: list[str] | None
        try:
            served = [m.id for m in client.models.list()]
        except openai.NotFoundError:
            served = None  # no model list: ask the model itself below
        except Exception as exc:
            raise self._probe_error(exc, where, "GET /models") from None
        if served is None or self.model not in served:
            try:
                client.chat.completions.create(
                    model=self.model,
                    messages=[{"role": "user", "content": "Reply with 0."}],
                    temperature=0,
                    max_tokens=1,
                )
            except openai.APIStatusError as exc:
                if exc.status_code in (400, 404) and served is not None:
                    raise TeacherConfigError(
                        f"teacher.model={self.model!r} is not served by {where} (HTTP "
                        f"{exc.status_code}); it lists: {', '.join(served[:12]) or 'nothing'}"
                    ) from None
                raise self._probe_error(exc, where, "a one-token chat request") from None
            except Exception as exc:
                raise self._probe_error(exc, where, "a one-token chat request") from None
        _PROBED.add(probed)

    def _probe_error(self, exc: Exception, where: str, what: str) -> TeacherConfigError:
        import openai

        if isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError)):
            key = "the key" if self.api_key == "none" else "the key in teacher.api_key_env"
            return TeacherConfigError(
                f"{where} refused {key} (HTTP {exc.status_code}) to {what}: set a valid key"
            )
        if isinstance(exc, openai.NotFoundError):
            return TeacherConfigError(
                f"{where}: teacher.model={self.model!r} was not found (HTTP 404) for {what}"
            )
        if isinstance(exc, openai.APIStatusError):
            return TeacherConfigError(
                f"{where} answered HTTP {exc.status_code} to {what}: {_short(exc)}"
            )
        if isinstance(exc, openai.APIConnectionError):  # refused, DNS, timeout
            return TeacherConfigError(
                f"cannot reach {where} ({type(exc).__name__}: {_short(exc)}): start the server "
                "or fix the URL (it ends in /v1 for OpenAI-compatible servers)"
            )
        return TeacherConfigError(f"{where}: {what} failed: {type(exc).__name__}: {exc}")

    # -- the asynchronous teacher protocol -------------------------------------------------------
    def _start(self) -> None:
        if self._request_pool is not None:
            return
        if self.cache_path is not None:
            self._cache = AnswerCache(self.cache_path)
        self._render_pool = ThreadPoolExecutor(1, thread_name_prefix="vlm-render")
        self._request_pool = ThreadPoolExecutor(
            self.max_concurrency, thread_name_prefix="vlm-request"
        )

    def submit(self, queries: Queries) -> None:
        """Queue a round: rendering and requests run in the background; returns at once."""
        if self._stop.is_set():
            raise RuntimeError("VLMTeacher is closed")
        if not len(queries):
            return
        self._start()
        assert self._render_pool is not None
        with self._lock:
            self._rounds.append(queries)
            index = len(self._rounds) - 1
            self.submitted += len(queries)
            self._render_pool.submit(self._render_round, index, queries)

    def collect(self) -> PreferenceDataset | None:
        """Pairs answered since the last call (NaN for skipped ones), or None.

        Blocks only while fewer than ``min_labels`` usable labels have been collected in total
        (for the first reward update), or, with ``wait_for_round``, until every submitted
        pair is answered; never longer than ``wait_timeout_s`` (then warns once and goes on).
        """
        deadline = math.inf if self.wait_timeout_s is None else time.time() + self.wait_timeout_s
        with self._done:
            while self._must_wait() and not self._gave_up_waiting:
                left = deadline - time.time()
                if left <= 0:
                    self._gave_up_waiting = True
                    warnings.warn(
                        f"VLMTeacher: waited {self.wait_timeout_s:.0f} s for answers "
                        f"({self.pairs_done} of {self.submitted} pairs answered): training "
                        "continues; later answers arrive in later rounds",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                    break
                self._done.wait(min(left, 1.0))
            done, self._finished = self._finished, []
            if done:
                self._gave_up_waiting = False  # answers flow again: later rounds may wait
        if not done:
            return None
        parts = []
        by_round: dict[int, list[tuple[int, float, float]]] = {}
        for rnd, row, label, at in done:
            by_round.setdefault(rnd, []).append((row, label, at))
        for rnd in sorted(by_round):
            rows = sorted(by_round[rnd])
            idx = np.array([r for r, _, _ in rows])
            parts.append(
                PreferenceDataset(
                    self._rounds[rnd][idx],
                    np.array([label for _, label, _ in rows]),
                    np.full(len(rows), ANNOTATOR),
                    np.array([at for _, _, at in rows]),
                )
            )
        out = parts[0] if len(parts) == 1 else PreferenceDataset.concatenate(parts)
        self.labels_received += len(out.trainable)
        return out

    def _must_wait(self) -> bool:  # holding self._lock
        pending = self.pairs_done < self.submitted
        if not pending:
            return False
        if self.wait_for_round:
            return True
        usable = sum(1 for *_, label, _ in self._finished if not math.isnan(label))
        return self.labels_received + usable < self.min_labels

    def __call__(self, queries: Queries) -> np.ndarray:
        """Synchronous use: label every pair (blocks until all are answered or skipped)."""
        before = len(self._rounds)
        self.submit(queries)
        labels = np.full(len(queries), math.nan)
        deadline = math.inf if self.wait_timeout_s is None else time.time() + self.wait_timeout_s
        with self._done:
            while self.pairs_done < self.submitted and time.time() < deadline:
                self._done.wait(1.0)
            keep: list[tuple[int, int, float, float]] = []
            for item in self._finished:
                if item[0] == before:
                    labels[item[1]] = item[2]
                else:
                    keep.append(item)
            self._finished = keep
        self.labels_received += int((~np.isnan(labels)).sum())
        return labels

    def close(self) -> None:
        """Stop asking: queued pairs are dropped, requests in flight finish (bounded by the
        timeout), the renderers and the cache are closed."""
        self._stop.set()
        if self._request_pool is not None:
            self._request_pool.shutdown(wait=True, cancel_futures=True)
        if self._render_pool is not None:
            if self._imager is not None:
                imager = self._imager
                self._render_pool.submit(imager.close).result()
            self._render_pool.shutdown(wait=True, cancel_futures=True)
        if self._cache is not None:
            self._cache.close()
        self._client.close()

    # -- background work -----------------------------------------------------------------------
    def _render_round(self, index: int, queries: Queries) -> None:
        """Runs in the render thread (an OpenGL context belongs to one thread)."""
        if self._imager is None:
            self._imager = SegmentImager(self.spec, self.env_kwargs, self.camera)
        for row in range(len(queries)):
            if self._stop.is_set():
                return
            self._begin()
            pair = _Pair(index, row)
            try:
                pair.images_1 = self._imager.images(queries.first, row)
                pair.images_2 = self._imager.images(queries.second, row)
            except Exception as exc:
                self._warn_once("render", f"VLMTeacher: rendering a pair failed: {exc}")
                self._finish(pair, math.nan, "failed")
                continue
            if pair.images_1 == pair.images_2:
                self._finish(pair, math.nan, "identical")
                continue
            assert self._request_pool is not None
            try:
                self._request_pool.submit(self._label_pair, pair)
            except RuntimeError:  # closed meanwhile
                return

    def _label_pair(self, pair: _Pair) -> None:
        try:
            label, outcome = self._ask(pair)
        except _GiveUp:
            label, outcome = math.nan, "failed"
        except Exception as exc:  # a bug must not kill the thread pool silently
            self._warn_once(type(exc).__name__, f"VLMTeacher: a pair failed: {exc!r}")
            label, outcome = math.nan, "failed"
        self._finish(pair, label, outcome)

    def _ask(self, pair: _Pair) -> tuple[float, str]:
        images = [*pair.images_1, *pair.images_2]
        messages = analysis_messages(self.goal, pair.images_1, pair.images_2, self.spec)
        text = "\n".join(analysis_texts(self.goal, self.spec))
        analysis = self._complete(
            cache_key(self.model, ANALYSIS, text, images),
            ANALYSIS,
            messages,
            self.analysis_max_tokens,
        )
        prompt = label_text(self.goal, analysis)
        reply = self._complete(
            cache_key(self.model, LABEL, prompt, images),
            LABEL,
            label_messages(self.goal, analysis),
            self.label_max_tokens,
        )
        query_id = str(self._rounds[pair.round].query_id[pair.row])
        with self._lock:
            self.transcripts[query_id] = (analysis, reply)
        answer = parse_answer(reply)
        return answer_label(answer), "labeled" if answer in (0, 1) else "unsure"

    def _complete(
        self, key: str, stage: str, messages: list[dict[str, Any]], max_tokens: int | None
    ) -> str:
        """One chat completion: from the cache, or asked with retries and backoff."""
        import openai

        if self._cache is not None:
            hit = self._cache.get(key)
            if hit is not None:
                self._count(cache_hits=1)
                return hit[0]
        extra: dict[str, Any] = {} if max_tokens is None else {"max_tokens": int(max_tokens)}
        for attempt in range(self.max_retries + 1):
            if self._stop.is_set():
                raise _GiveUp("closed")
            self._limiter.wait(self._stop)
            t0 = time.monotonic()
            self._count(requests=1)
            try:
                response = self._client.chat.completions.create(
                    model=self.model,
                    messages=cast(Any, messages),
                    temperature=0,
                    timeout=self.timeout_s,
                    **extra,
                )
            except openai.APIError as exc:
                status = getattr(exc, "status_code", None)
                code = getattr(exc, "code", None)
                retry = isinstance(exc, openai.APIConnectionError) or (
                    status is not None
                    and (status in RETRY_STATUS or status >= 500)
                    and code != "insufficient_quota"  # a 429 that waiting does not fix
                )
                if not retry:
                    self._warn_once(
                        f"status {status}",
                        f"VLMTeacher: {self.base_url} answered HTTP {status}: {_short(exc)} "
                        "(those pairs are skipped)",
                    )
                    raise _GiveUp(str(exc)) from None
                if attempt == self.max_retries:
                    self._warn_once(
                        "retries",
                        f"VLMTeacher: gave up on a request after {self.max_retries} retries "
                        f"({type(exc).__name__}: {_short(exc)}); the pair is skipped",
                    )
                    raise _GiveUp(str(exc)) from None
                self._count(retries=1)
                self._stop.wait(self._backoff(attempt, exc))
                continue
            latency = time.monotonic() - t0
            reply = ""
            if response.choices:
                reply = response.choices[0].message.content or ""
            tokens = int(response.usage.total_tokens) if response.usage else 0
            self._count(answered=1, latency_s=latency, tokens=tokens)
            if self._cache is not None:
                self._cache.put(key, self.model, stage, reply, tokens)
            return reply
        raise _GiveUp("unreachable")  # the loop returns or raises

    def _backoff(self, attempt: int, exc: Exception) -> float:
        """``backoff_s * 2**attempt`` with up to 25% jitter, at least a server's Retry-After,
        at most ``backoff_max_s``."""
        with self._lock:
            jitter = 1.0 + 0.25 * float(self._rng.random())
        delay = self.backoff_s * 2.0**attempt * jitter
        response = getattr(exc, "response", None)
        if response is not None:
            try:
                delay = max(delay, float(response.headers.get("retry-after", 0)))
            except (TypeError, ValueError):
                pass
        return min(delay, self.backoff_max_s)

    # -- bookkeeping ----------------------------------------------------------------------------
    def _count(self, **values: float) -> None:
        with self._lock:
            for figures in (self._window, self.total):
                for name, value in values.items():
                    setattr(figures, name, getattr(figures, name) + value)

    def _begin(self) -> None:
        with self._lock:
            if self._in_progress == 0:
                self._busy_since = time.monotonic()
            self._in_progress += 1

    def _finish(self, pair: _Pair, label: float, outcome: str) -> None:
        queries = self._rounds[pair.round]
        judged = correct = 0
        if outcome == "labeled":
            oracle = float(oracle_labels(queries[pair.row])[0])
            if oracle != 0.5:
                judged, correct = 1, int(oracle == label)
        with self._done:
            for figures in (self._window, self.total):
                figures.pairs += 1
                setattr(figures, outcome, getattr(figures, outcome) + 1)
                figures.judged += judged
                figures.correct += correct
            self._in_progress -= 1
            if self._in_progress == 0 and self._busy_since is not None:
                spent = time.monotonic() - self._busy_since
                self._window.busy_s += spent
                self.total.busy_s += spent
                self._busy_since = None
            self._finished.append((pair.round, pair.row, label, time.time()))
            self.outcomes[str(queries.query_id[pair.row])] = outcome
            self.pairs_done += 1
            self._done.notify_all()

    def _warn_once(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning(message)

    def stats(self) -> dict[str, float]:
        """Figures since the last call, logged as ``preferences/vlm_*`` (``total_stats`` has
        the whole run's)."""
        with self._lock:
            window = self._window
            if self._busy_since is not None:  # pairs still in progress: split the busy time
                now = time.monotonic()
                window.busy_s += now - self._busy_since
                self.total.busy_s += now - self._busy_since
                self._busy_since = now
            self._window = _Figures()
        return self._figures(window)

    def total_stats(self) -> dict[str, float]:
        with self._lock:
            figures = _Figures(**vars(self.total))
            if self._busy_since is not None:
                figures.busy_s += time.monotonic() - self._busy_since
        return self._figures(figures)

    def describe(self) -> dict[str, Any]:
        """For ``summary.json``: the goal text used and the whole run's figures."""
        totals = {k: (None if math.isnan(v) else v) for k, v in self.total_stats().items()}
        return {"goal": self.goal, "totals": totals}

    def _figures(self, f: _Figures) -> dict[str, float]:
        looked_up = f.requests - f.retries + f.cache_hits
        asked = f.labeled + f.unsure
        out = {
            "vlm_pairs": float(f.pairs),
            "vlm_requests": float(f.requests),
            "vlm_retries": float(f.retries),
            "vlm_cache_hits": float(f.cache_hits),
            "vlm_cache_hit_rate": f.cache_hits / looked_up if looked_up else math.nan,
            "vlm_latency_s": f.latency_s / f.answered if f.answered else math.nan,
            "vlm_s_per_100_pairs": 100.0 * f.busy_s / f.pairs if f.pairs else math.nan,
            "vlm_tokens": float(f.tokens),
            "vlm_unsure_fraction": f.unsure / asked if asked else math.nan,
            "vlm_identical": float(f.identical),
            "vlm_failed": float(f.failed),
            "vlm_accuracy": f.correct / f.judged if f.judged else math.nan,
        }
        if self.price_per_1k_tokens is not None:
            out["vlm_cost"] = f.tokens / 1000.0 * self.price_per_1k_tokens
        return out

    # -- helpers for tests and the benchmark ---------------------------------------------------
    def segment_images(self, segments: Any) -> list[list[bytes]]:
        """The images this teacher shows for each segment row, rendered in the calling thread
        (e.g. to register oracle scores with :class:`pbrl.teachers.vlm_mock.MockVLM`)."""
        from pbrl.teachers.vlm_images import render_segment_images

        return render_segment_images(segments, self.spec, self.env_kwargs, self.camera)


def _plain_dict(value: Mapping[str, Any] | None) -> dict[str, Any]:
    """A plain dict from a mapping or a Hydra DictConfig."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        from omegaconf import DictConfig, OmegaConf

        if isinstance(value, DictConfig):
            return cast(dict[str, Any], OmegaConf.to_container(value, resolve=True))
    return dict(value)


def _short(exc: Exception, limit: int = 200) -> str:
    body = getattr(exc, "body", None)
    message = None
    if isinstance(body, dict):
        message = body.get("message") or (body.get("error") or {}).get("message")
    text = str(message or exc).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


__all__ = [
    "AnswerCache",
    "VLMTeacher",
    "analysis_messages",
    "analysis_texts",
    "answer_label",
    "cache_key",
    "label_messages",
    "label_text",
    "parse_answer",
]
