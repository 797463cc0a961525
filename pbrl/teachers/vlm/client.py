"""The VLM teacher's endpoint: one OpenAI-compatible chat-completions server, reached through
the ``openai`` client, with pbrl's own rate limit, retries and start-up probe.

* :func:`api_key` reads the key from the variable ``teacher.api_key_env`` names.
* :meth:`ChatEndpoint.probe` (``GET /models``, or a one-token chat request where the endpoint
  has no model list) turns an unreachable endpoint, a rejected key or an unknown model into one
  :class:`~pbrl.teachers.scripted.TeacherConfigError` before training starts.
* :meth:`ChatEndpoint.complete` asks one chat completion at temperature 0, callable from many
  threads at once: request starts obey a requests-per-second limit (:class:`RateLimiter`) and
  a per-request timeout; 429, 408, 409, 5xx, timeouts and connection errors are retried with
  exponential backoff (the ``openai`` client's own retries are off); a request that still
  fails raises :class:`GiveUp` (logged once per kind of failure), never anything else.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from pbrl.teachers.scripted import TeacherConfigError

if TYPE_CHECKING:
    from openai import OpenAI
    from openai.types.chat import ChatCompletionMessageParam

    from pbrl.teachers.vlm.prompts import ChatMessage

log = logging.getLogger("pbrl")

RETRY_STATUS = frozenset({408, 409, 429})  # and every 5xx

_PROBED: set[tuple[str, str, str]] = set()  # (base_url, model, key hash) that passed


class GiveUp(Exception):
    """A request that will not be answered (retries exhausted, or not worth retrying)."""


def api_key(api_key_env: str | None) -> str:
    """The key in the variable ``api_key_env`` names; ``"none"`` when it is null (a server
    without authentication: the ``openai`` client needs a value)."""
    if not api_key_env:
        return "none"
    key = os.environ.get(str(api_key_env))
    if not key:
        raise TeacherConfigError(
            f"teacher.api_key_env={api_key_env}: the environment variable {api_key_env} is "
            f"not set; export {api_key_env}=<your key>, or teacher.api_key_env=null for a "
            "server without authentication"
        )
    return key


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


class ChatEndpoint:
    """Chat completions from ``model`` at ``base_url``, with retries (see the module docstring).

    ``count(**figures)`` is called with ``requests=1`` per HTTP request sent, ``retries=1`` per
    retry and ``answered=1, latency_s=..., tokens=...`` per answer. Setting ``stop`` ends the
    waits (rate limit, backoff) and makes further requests give up.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        key: str,
        *,
        timeout_s: float,
        max_retries: int,
        backoff_s: float,
        backoff_max_s: float,
        requests_per_second: float | None,
        rng: np.random.Generator,
        stop: threading.Event,
        count: Callable[..., None] = lambda **figures: None,
    ) -> None:
        self.base_url, self.model, self.api_key = base_url, model, key
        self.timeout_s, self.max_retries = timeout_s, max_retries
        self.backoff_s, self.backoff_max_s = backoff_s, backoff_max_s
        self._rng, self._rng_lock = rng, threading.Lock()
        self._stop, self._count = stop, count
        self._limiter = RateLimiter(requests_per_second)
        self._warned: set[str] = set()
        self._client = self._make_client()

    def _make_client(self) -> OpenAI:
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

    def close(self) -> None:
        self._client.close()

    # -- the start-up probe --------------------------------------------------------------------
    def probe(self, timeout_s: float) -> None:
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
                f"{where} answered HTTP {exc.status_code} to {what}: {short(exc)}"
            )
        if isinstance(exc, openai.APIConnectionError):  # refused, DNS, timeout
            return TeacherConfigError(
                f"cannot reach {where} ({type(exc).__name__}: {short(exc)}): start the server "
                "or fix the URL (it ends in /v1 for OpenAI-compatible servers)"
            )
        return TeacherConfigError(f"{where}: {what} failed: {type(exc).__name__}: {exc}")

    # -- requests ------------------------------------------------------------------------------
    def complete(self, messages: list[ChatMessage], max_tokens: int | None) -> tuple[str, int]:
        """One chat completion at temperature 0, asked with retries and backoff: the reply's
        text and its total tokens. Raises :class:`GiveUp` when it will not be answered."""
        import openai

        extra: dict[str, Any] = {} if max_tokens is None else {"max_tokens": int(max_tokens)}
        for attempt in range(self.max_retries + 1):
            if self._stop.is_set():
                raise GiveUp("closed")
            self._limiter.wait(self._stop)
            t0 = time.monotonic()
            self._count(requests=1)
            try:
                response = self._client.chat.completions.create(
                    model=self.model,
                    messages=cast("list[ChatCompletionMessageParam]", messages),
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
                        f"VLMTeacher: {self.base_url} answered HTTP {status}: {short(exc)} "
                        "(those pairs are skipped)",
                    )
                    raise GiveUp(str(exc)) from None
                if attempt == self.max_retries:
                    self._warn_once(
                        "retries",
                        f"VLMTeacher: gave up on a request after {self.max_retries} retries "
                        f"({type(exc).__name__}: {short(exc)}); the pair is skipped",
                    )
                    raise GiveUp(str(exc)) from None
                self._count(retries=1)
                self._stop.wait(self.backoff(attempt, exc))
                continue
            latency = time.monotonic() - t0
            reply = ""
            if response.choices:
                reply = response.choices[0].message.content or ""
            tokens = int(response.usage.total_tokens) if response.usage else 0
            self._count(answered=1, latency_s=latency, tokens=tokens)
            return reply, tokens
        raise GiveUp("unreachable")  # the loop returns or raises

    def backoff(self, attempt: int, exc: Exception) -> float:
        """``backoff_s * 2**attempt`` with up to 25% jitter, at least a server's Retry-After,
        at most ``backoff_max_s``."""
        with self._rng_lock:
            jitter = 1.0 + 0.25 * float(self._rng.random())
        delay = self.backoff_s * 2.0**attempt * jitter
        response = getattr(exc, "response", None)
        if response is not None:
            try:
                delay = max(delay, float(response.headers.get("retry-after", 0)))
            except (TypeError, ValueError):
                pass
        return min(delay, self.backoff_max_s)

    def _warn_once(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning(message)


def short(exc: Exception, limit: int = 200) -> str:
    """An API error's message on one line, at most ``limit`` characters."""
    body = getattr(exc, "body", None)
    message = None
    if isinstance(body, dict):
        message = body.get("message") or (body.get("error") or {}).get("message")
    text = str(message or exc).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


__all__ = ["RETRY_STATUS", "ChatEndpoint", "GiveUp", "RateLimiter", "api_key", "short"]
