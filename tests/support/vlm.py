"""The mock VLM server as the tests use it: it keeps every chat request's JSON body (for
prompt assertions) and, with ``score_rendered=True``, scores every image rendered in this
process by the true return of the segment it shows, so an online run in the test's process
gets oracle answers with no other setup.

The scoring wraps :meth:`pbrl.teachers.vlm.images.SegmentImager.images` while such a server
runs (restored when the last one stops): the package carries no hook for it.
"""

from __future__ import annotations

import threading
from typing import Any

from pbrl.data import Segments
from pbrl.teachers.vlm.images import SegmentImager
from pbrl.teachers.vlm.mock import Answer, MockVLM

_render = SegmentImager.images
_scoring: list[RecordingMockVLM] = []
_scoring_lock = threading.Lock()


def _scored_images(self: SegmentImager, segments: Segments, i: int) -> list[bytes]:
    images = _render(self, segments, i)
    for server in list(_scoring):
        server.register_segments([images], [float(segments.returns()[i])])
    return images


class RecordingMockVLM(MockVLM):
    """:class:`MockVLM` plus ``bodies`` (every chat request's JSON) and ``score_rendered``."""

    def __init__(self, *args: Any, score_rendered: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.score_rendered = bool(score_rendered)

    def reset_counts(self) -> None:
        super().reset_counts()
        with self._lock:
            self.bodies: list[dict[str, Any]] = []

    def chat(self, body: dict[str, Any]) -> Answer:
        with self._lock:
            self.bodies.append(body)
        return super().chat(body)

    def start(self) -> RecordingMockVLM:
        starting = self._server is None
        super().start()
        if starting and self.score_rendered:
            with _scoring_lock:
                if not _scoring:
                    SegmentImager.images = _scored_images  # type: ignore[method-assign]
                _scoring.append(self)
        return self

    def stop(self) -> None:
        with _scoring_lock:
            if self in _scoring:
                _scoring.remove(self)
                if not _scoring:
                    SegmentImager.images = _render  # type: ignore[method-assign]
        super().stop()

    def __enter__(self) -> RecordingMockVLM:
        return self.start()
