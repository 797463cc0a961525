"""The VLM teacher's background work: render each pair, ask its two questions.

:class:`PairLabeler` renders every round in one thread (an OpenGL context belongs to one
thread) and runs each pair's two requests in a pool of ``max_concurrency`` threads: stage 1
(the images) then stage 2 (the analysis), each read from the answer cache or asked of the
endpoint. Pairs whose two images are byte-identical are not asked. Every pair ends in one
call of ``finish(round, row, label, outcome, transcript)``, whatever happened: a failure is
an outcome (``failed``), never an exception in a worker thread.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pbrl.data import Queries
from pbrl.envs.spec import EnvSpec
from pbrl.teachers.vlm.cache import AnswerCache, cache_key
from pbrl.teachers.vlm.client import ChatEndpoint, GiveUp
from pbrl.teachers.vlm.figures import Tally
from pbrl.teachers.vlm.images import ImageSpec, SegmentImager
from pbrl.teachers.vlm.prompts import (
    ANALYSIS,
    LABEL,
    ChatMessage,
    analysis_messages,
    analysis_texts,
    answer_label,
    label_messages,
    label_text,
    parse_answer,
)

log = logging.getLogger("pbrl")

# round, row, label (NaN: skipped), outcome, (analysis, label reply) where both were answered
Finish = Callable[[int, int, float, str, "tuple[str, str] | None"], None]


class PairLabeler:
    """Labels submitted rounds in the background; see the module docstring."""

    def __init__(
        self,
        *,
        goal: str,
        spec: ImageSpec,
        endpoint: ChatEndpoint,
        cache_path: Path | None,
        max_concurrency: int,
        analysis_max_tokens: int | None,
        label_max_tokens: int | None,
        figures: Tally,
        stop: threading.Event,
        finish: Finish,
    ) -> None:
        self.goal, self.spec = goal, spec
        self.env: EnvSpec | None = None  # the run's (VLMTeacher.use_env): renders its states
        self.endpoint, self.cache_path = endpoint, cache_path
        self.max_concurrency = max_concurrency
        self.analysis_max_tokens, self.label_max_tokens = analysis_max_tokens, label_max_tokens
        self.figures, self._stop, self._finish = figures, stop, finish
        # Started on first submit: building the teacher (pbrl.train builds one to validate the
        # config) must not create files or threads.
        self._cache: AnswerCache | None = None
        self._render_pool: ThreadPoolExecutor | None = None
        self._request_pool: ThreadPoolExecutor | None = None
        self._imager: SegmentImager | None = None
        self._warned: set[str] = set()

    def start(self) -> None:
        if self._request_pool is not None:
            return
        if self.cache_path is not None:
            self._cache = AnswerCache(self.cache_path)
        self._render_pool = ThreadPoolExecutor(1, thread_name_prefix="vlm-render")
        self._request_pool = ThreadPoolExecutor(
            self.max_concurrency, thread_name_prefix="vlm-request"
        )

    def submit(self, index: int, queries: Queries) -> None:
        """Queue round ``index`` (after :meth:`start`)."""
        assert self._render_pool is not None
        self._render_pool.submit(self._render_round, index, queries)

    def close(self) -> None:
        """Queued pairs are dropped, requests in flight finish (the caller set ``stop``), the
        renderers and the cache are closed."""
        if self._request_pool is not None:
            self._request_pool.shutdown(wait=True, cancel_futures=True)
        if self._render_pool is not None:
            if self._imager is not None:
                imager = self._imager
                self._render_pool.submit(imager.close).result()
            self._render_pool.shutdown(wait=True, cancel_futures=True)
        if self._cache is not None:
            self._cache.close()

    # -- the render thread ---------------------------------------------------------------------
    def _render_round(self, index: int, queries: Queries) -> None:
        if self._imager is None:
            self._imager = SegmentImager(self.spec, self.env)
        for row in range(len(queries)):
            if self._stop.is_set():
                return
            self.figures.begin()
            try:
                images_1 = self._imager.images(queries.first, row)
                images_2 = self._imager.images(queries.second, row)
            except Exception as exc:
                self._warn_once("render", f"VLMTeacher: rendering a pair failed: {exc}")
                self._finish(index, row, math.nan, "failed", None)
                continue
            if images_1 == images_2:
                self._finish(index, row, math.nan, "identical", None)
                continue
            assert self._request_pool is not None
            try:
                self._request_pool.submit(self._label_pair, index, row, images_1, images_2)
            except RuntimeError:  # closed meanwhile
                return

    # -- the request threads -------------------------------------------------------------------
    def _label_pair(
        self, index: int, row: int, images_1: list[bytes], images_2: list[bytes]
    ) -> None:
        transcript = None
        try:
            transcript = self._ask(images_1, images_2)
            answer = parse_answer(transcript[1])
            label, outcome = answer_label(answer), "labeled" if answer in (0, 1) else "unsure"
        except GiveUp:
            label, outcome = math.nan, "failed"
        except Exception as exc:  # a bug must not kill the thread pool silently
            self._warn_once(type(exc).__name__, f"VLMTeacher: a pair failed: {exc!r}")
            label, outcome = math.nan, "failed"
        self._finish(index, row, label, outcome, transcript)

    def _ask(self, images_1: list[bytes], images_2: list[bytes]) -> tuple[str, str]:
        """Both stages for one pair: the analysis and the label reply."""
        images = [*images_1, *images_2]
        messages = analysis_messages(self.goal, images_1, images_2, self.spec)
        text = "\n".join(analysis_texts(self.goal, self.spec))
        analysis = self._complete(
            cache_key(self.endpoint.model, ANALYSIS, text, images),
            ANALYSIS,
            messages,
            self.analysis_max_tokens,
        )
        prompt = label_text(self.goal, analysis)
        reply = self._complete(
            cache_key(self.endpoint.model, LABEL, prompt, images),
            LABEL,
            label_messages(self.goal, analysis),
            self.label_max_tokens,
        )
        return analysis, reply

    def _complete(
        self, key: str, stage: str, messages: list[ChatMessage], max_tokens: int | None
    ) -> str:
        """One chat completion: from the cache, or asked of the endpoint (with retries)."""
        if self._cache is not None:
            hit = self._cache.get(key)
            if hit is not None:
                self.figures.count(cache_hits=1)
                return hit[0]
        reply, tokens = self.endpoint.complete(messages, max_tokens)
        if self._cache is not None:
            self._cache.put(key, self.endpoint.model, stage, reply, tokens)
        return reply

    def _warn_once(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning(message)


__all__ = ["Finish", "PairLabeler"]
