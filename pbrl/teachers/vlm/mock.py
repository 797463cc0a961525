"""A local OpenAI-compatible chat-completions server that answers like a VLM, without a VLM.

To try ``teacher=vlm`` without an API key (it runs until Ctrl-C and prints the overrides that
point a training run at it)::

    python -m pbrl.teachers.vlm.mock                  # --port 8011 by default; --port 0: a free one

Run that way it has no oracle, so it ranks images at random, consistently (a score per image
fixed by its bytes): the labels exercise the whole loop (rendering, both requests, the cache,
the figures) but carry no knowledge of the task.

In code (``scripts/bench_vlm.py``, the tests), register each image's score, e.g. the true
return of the segment it shows, and it compares the two images' scores as an oracle would::

    with MockVLM(noise=0.1, latency_s=0.2) as vlm:
        vlm.register_segments(teacher.segment_images(queries.first), queries.first.returns())
        ...  # VLMTeacher(base_url=vlm.base_url, model=vlm.model, api_key_env=None, ...)

stdlib ``http.server``, one thread per request, bound to 127.0.0.1 only. Endpoints:
``GET /v1/models`` (the teacher's probe) and ``POST /v1/chat/completions`` (:meth:`MockVLM.chat`).

* Stage 1 (a request carrying images): the images are split in half (Image 1's, Image 2's);
  each half scores as the registered score of its last registered image (with ``guess``, an
  unregistered last image scores a number drawn from ``seed`` and its bytes). The higher score
  wins; with probability ``noise`` the verdict is flipped (a draw fixed by ``seed`` and the
  images, so concurrent requests give the same answers in any order); unknown images or equal
  scores give "no difference". The reply is analysis text ending in a verdict sentence.
* Stage 2 (text only): reads that verdict sentence back out of the prompt (the analysis the
  teacher forwards) and replies ``0``, ``1`` or ``-1``, like a model reading its own
  analysis; with probability ``malformed`` (a draw fixed by ``seed`` and the prompt) the
  first line is garbage instead.

Faults: ``latency_s`` per request; ``error_rate`` (a fraction of chat requests answered with
``error_status``, 429 by default); ``fail_next(n, status)`` for a burst; ``api_key`` (other
keys get 401); requests naming another model get 404 ``model_not_found``. Counters:
``requests`` (chat requests), ``stage_requests``, ``model_requests``, ``errors_sent``,
``max_in_flight`` (most chat requests being answered at once).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import random
import re
import signal
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

VERDICT = "Overall, Image {n} is closer to achieving the goal."
NO_DIFFERENCE = "Overall, I cannot see a difference between the images in terms of the goal."
_VERDICT = re.compile(r"Overall, Image ([12]) is closer to achieving the goal\.")
GARBAGE = "The answer is: {answer}"  # first line of a malformed reply
DEFAULT_PORT = 8011  # the command's; MockVLM() takes a free port

# an answer: HTTP status, JSON body, extra headers
Answer = tuple[int, dict[str, object], dict[str, str]]


class MockVLM:
    def __init__(
        self,
        model: str = "mock-vlm",
        noise: float = 0.0,
        latency_s: float = 0.0,
        malformed: float = 0.0,
        error_rate: float = 0.0,
        error_status: int = 429,
        api_key: str | None = None,
        seed: int = 0,
        guess: bool = False,
        port: int = 0,
    ) -> None:
        if not 0.0 <= noise <= 1.0 or not 0.0 <= malformed <= 1.0 or not 0.0 <= error_rate <= 1.0:
            raise ValueError("noise, malformed and error_rate are probabilities in [0, 1]")
        self.model, self.noise, self.latency_s = model, float(noise), float(latency_s)
        self.malformed, self.error_rate = float(malformed), float(error_rate)
        self.error_status, self.api_key = int(error_status), api_key
        self.seed = int(seed)
        self._random = random.Random(seed)  # error_rate draws
        self._scores: dict[str, float] = {}
        self._lock = threading.Lock()
        self._burst: list[tuple[int, float | None]] = []
        self.guess, self.port = bool(guess), int(port)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.reset_counts()

    # -- the oracle --------------------------------------------------------------------------
    def register(self, image: bytes | str, score: float) -> None:
        """The oracle's score of an image (its bytes, or their sha256 hex digest)."""
        key = image if isinstance(image, str) else hashlib.sha256(image).hexdigest()
        with self._lock:
            self._scores[key] = float(score)

    def register_segments(self, images: Sequence[Sequence[bytes]], scores: Iterable[float]) -> None:
        """Every image of each segment scores as the segment (e.g. its true return)."""
        for segment_images, score in zip(images, scores, strict=True):
            for image in segment_images:
                self.register(image, float(score))

    def fail_next(self, n: int, status: int = 429, retry_after: float | None = None) -> None:
        """Answer the next ``n`` chat requests with ``status`` (a burst of errors)."""
        with self._lock:
            self._burst += [(int(status), retry_after)] * int(n)

    def reset_counts(self) -> None:
        with self._lock:
            self.requests = 0
            self.stage_requests = {1: 0, 2: 0}
            self.model_requests = 0
            self.errors_sent = 0
            self.in_flight = 0
            self.max_in_flight = 0

    # -- lifetime ----------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("MockVLM is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def start(self) -> MockVLM:
        if self._server is not None:
            return self
        handler = type("Handler", (_Handler,), {"mock": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="mock-vlm", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> MockVLM:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- answers -----------------------------------------------------------------------------
    def _score(self, image_url: str) -> float | None:
        _, _, data = image_url.partition("base64,")
        digest = hashlib.sha256(base64.b64decode(data)).hexdigest()
        return self._scores.get(digest)

    def _side_score(self, side: list[str]) -> float | None:
        known = [s for s in (self._score(u) for u in side) if s is not None]
        if known:
            return known[-1]
        return self._draw("guess", side[-1]) if self.guess and side else None

    def analysis(self, image_urls: list[str]) -> str:
        half = len(image_urls) // 2
        sides = [image_urls[:half], image_urls[half:]]
        scores = [self._side_score(side) for side in sides]
        # like a real analysis, the text is particular to the pair (here: names its images)
        names = [
            hashlib.sha256(side[-1].encode()).hexdigest()[:8] if side else "-" for side in sides
        ]
        text = (
            f"1. Image 1 shows the robot in state {names[0]} ({half} image(s)).\n"
            f"2. Image 2 shows the robot in state {names[1]} ({len(image_urls) - half} "
            "image(s)).\n3. "
        )
        a, b = scores
        if a is None or b is None or a == b or len(image_urls) < 2:
            return text + NO_DIFFERENCE
        better = 1 if a > b else 2
        if self._draw("noise", *image_urls) < self.noise:
            better = 3 - better
        return text + VERDICT.format(n=better)

    def label(self, prompt: str) -> str:
        match = _VERDICT.search(prompt)
        answer = "-1" if match is None else str(int(match.group(1)) - 1)
        garbage = self._draw("malformed", prompt) < self.malformed
        return GARBAGE.format(answer=answer) + "\n" + answer if garbage else answer

    def _draw(self, what: str, *content: str) -> float:
        """A uniform [0, 1) number fixed by the seed and the request's content: the same
        pair gets the same verdict whatever order concurrent requests arrive in."""
        h = hashlib.sha256(f"{self.seed}:{what}".encode())
        for part in content:
            h.update(part.encode())
        return int.from_bytes(h.digest()[:8], "big") / 2.0**64

    def chat(self, body: dict[str, Any]) -> Answer:  # parsed request JSON, checked as read
        """The answer to one chat-completions request (its JSON body): an error (a burst,
        ``error_rate``, an unknown model) or a stage-1 / stage-2 reply."""
        with self._lock:
            burst = self._burst.pop(0) if self._burst else None
            if burst is None and self.error_rate > 0 and self._random.random() < self.error_rate:
                burst = (self.error_status, None)
            if burst is not None:
                self.errors_sent += 1
        if burst is not None:
            status, retry_after = burst
            headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
            message = "Rate limit reached." if status == 429 else "Server error."
            return status, _error(status, message, "busy"), headers
        if body.get("model") != self.model:
            message = f"The model `{body.get('model')}` does not exist."
            return 404, _error(404, message, "model_not_found"), {}
        texts, images = [], []
        for message in body.get("messages", []):
            content = message.get("content")
            if isinstance(content, str):
                texts.append(content)
                continue
            for part in content or []:
                if part.get("type") == "text":
                    texts.append(part.get("text", ""))
                elif part.get("type") == "image_url":
                    images.append(part["image_url"]["url"])
        stage = 1 if images else 2
        with self._lock:
            self.stage_requests[stage] += 1
            number = self.requests
        reply = self.analysis(images) if images else self.label("\n".join(texts))
        prompt_tokens = sum(len(t) for t in texts) // 4 + 85 * len(images)
        completion_tokens = max(1, len(reply) // 4)
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": reply},
            "finish_reason": "stop",
        }
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        answer = {
            "id": f"chatcmpl-mock-{number}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [choice],
            "usage": usage,
        }
        return 200, answer, {}


def _error(status: int, message: str, code: str) -> dict[str, object]:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "code": code}}


class _Handler(BaseHTTPRequestHandler):
    mock: MockVLM
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def _send(
        self, status: int, body: dict[str, object], headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        key = self.mock.api_key
        if key is None or self.headers.get("Authorization") == f"Bearer {key}":
            return True
        self._send(401, _error(401, "Incorrect API key provided.", "invalid_api_key"))
        return False

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path.rstrip("/") != "/v1/models":
            self._send(404, _error(404, f"no route {self.path}", "not_found"))
            return
        with self.mock._lock:
            self.mock.model_requests += 1
        if self._authorized():
            model = {"id": self.mock.model, "object": "model", "owned_by": "pbrl"}
            self._send(200, {"object": "list", "data": [model]})

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length", 0))
        raw = self.rfile.read(length)
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._send(404, _error(404, f"no route {self.path}", "not_found"))
            return
        mock = self.mock
        with mock._lock:
            mock.requests += 1
            mock.in_flight += 1
            mock.max_in_flight = max(mock.max_in_flight, mock.in_flight)
        try:
            if mock.latency_s > 0:
                time.sleep(mock.latency_s)
            if not self._authorized():
                return
            try:
                body = json.loads(raw)
            except json.JSONDecodeError:
                self._send(400, _error(400, "the body is not JSON", "invalid_json"))
                return
            self._send(*mock.chat(body))
        finally:
            with mock._lock:
                mock.in_flight -= 1


# -- the command ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Serve a mock VLM in the foreground and print how to train against it."""
    parser = argparse.ArgumentParser(
        prog="python -m pbrl.teachers.vlm.mock",
        description="A local OpenAI-compatible VLM stand-in for teacher=vlm (no API key, no "
        "model: it ranks images at random, consistently). Runs until Ctrl-C.",
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="port on 127.0.0.1 (0: a free one)"
    )
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per request")
    args = parser.parse_args(argv)
    # one model name, never a real one: answers are cached under the model's name
    mock = MockVLM(latency_s=args.latency, guess=True, port=args.port)
    try:
        mock.start()
    except OSError as exc:
        print(
            f"cannot listen on 127.0.0.1:{args.port} ({exc.strerror or exc}): choose another "
            "--port, or --port 0 for a free one",
            file=sys.stderr,
        )
        return 2
    # Ctrl-C and SIGTERM (a supervisor, a test) stop it, even where the shell that started it
    # ignores SIGINT for background jobs
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.default_int_handler)
    print(
        f"mock VLM: model {mock.model!r} at {mock.base_url} (it ranks images at random, "
        "consistently: no task knowledge)\n"
        "Train against it from another shell (Ctrl-C here stops the server):",
        flush=True,
    )
    print(f"    {train_command(mock)}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        mock.stop()
    return 0


def train_command(mock: MockVLM, exp: str = "vlm_pebble_reacher") -> str:
    """The ``pbrl.train`` command line that points ``teacher=vlm`` at ``mock``."""
    return (
        f"python -m pbrl.train +exp={exp} teacher.base_url={mock.base_url} "
        f"teacher.model={mock.model} teacher.api_key_env=null"
    )


__all__ = ["DEFAULT_PORT", "MockVLM", "main", "train_command"]

if __name__ == "__main__":
    sys.exit(main())
