"""The VLM teacher's figures: counters per stats window and for the whole run, and the
``preferences/vlm_*`` values they give (docs/vlm.md, "Figures", says what each one means)."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

OUTCOMES = ("labeled", "unsure", "identical", "failed")  # how a pair can finish


@dataclass
class Figures:
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

    def values(self, price_per_1k_tokens: float | None = None) -> dict[str, float]:
        """The ``vlm_*`` figures (``vlm_cost`` only with a price)."""
        looked_up = self.requests - self.retries + self.cache_hits
        asked = self.labeled + self.unsure
        out = {
            "vlm_pairs": float(self.pairs),
            "vlm_requests": float(self.requests),
            "vlm_retries": float(self.retries),
            "vlm_cache_hits": float(self.cache_hits),
            "vlm_cache_hit_rate": self.cache_hits / looked_up if looked_up else math.nan,
            "vlm_latency_s": self.latency_s / self.answered if self.answered else math.nan,
            "vlm_s_per_100_pairs": 100.0 * self.busy_s / self.pairs if self.pairs else math.nan,
            "vlm_tokens": float(self.tokens),
            "vlm_unsure_fraction": self.unsure / asked if asked else math.nan,
            "vlm_identical": float(self.identical),
            "vlm_failed": float(self.failed),
            "vlm_accuracy": self.correct / self.judged if self.judged else math.nan,
        }
        if price_per_1k_tokens is not None:
            out["vlm_cost"] = self.tokens / 1000.0 * price_per_1k_tokens
        return out


class Tally:
    """The current window's figures and the whole run's, updated from many threads; the busy
    time counts the wall time with at least one pair between :meth:`begin` and :meth:`finish`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._window, self._total = Figures(), Figures()
        self._in_progress = 0
        self._busy_since: float | None = None

    def count(self, **values: float) -> None:
        """Add to counters of both (e.g. ``requests=1``)."""
        with self._lock:
            for figures in (self._window, self._total):
                for name, value in values.items():
                    setattr(figures, name, getattr(figures, name) + value)

    def begin(self) -> None:
        """A pair is in progress (rendering or asking)."""
        with self._lock:
            if self._in_progress == 0:
                self._busy_since = time.monotonic()
            self._in_progress += 1

    def finish(self, outcome: str, judged: int = 0, correct: int = 0) -> None:
        """A pair finished with ``outcome`` (one of :data:`OUTCOMES`)."""
        with self._lock:
            for figures in (self._window, self._total):
                figures.pairs += 1
                setattr(figures, outcome, getattr(figures, outcome) + 1)
                figures.judged += judged
                figures.correct += correct
            self._in_progress -= 1
            if self._in_progress == 0 and self._busy_since is not None:
                spent = time.monotonic() - self._busy_since
                self._window.busy_s += spent
                self._total.busy_s += spent
                self._busy_since = None

    def take_window(self) -> Figures:
        """The figures since the last call (a new window starts)."""
        with self._lock:
            window = self._window
            if self._busy_since is not None:  # pairs still in progress: split the busy time
                now = time.monotonic()
                window.busy_s += now - self._busy_since
                self._total.busy_s += now - self._busy_since
                self._busy_since = now
            self._window = Figures()
        return window

    def total(self) -> Figures:
        """A copy of the whole run's figures, the busy time up to now included."""
        with self._lock:
            figures = Figures(**vars(self._total))
            if self._busy_since is not None:
                figures.busy_s += time.monotonic() - self._busy_since
        return figures


__all__ = ["OUTCOMES", "Figures", "Tally"]
