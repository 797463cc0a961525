"""``teacher=vlm``: :class:`VLMTeacher` (the package docstring, :mod:`pbrl.teachers.vlm`,
describes it). Here: its settings, the asynchronous protocol (``submit``, ``collect``,
``close``) and the bookkeeping of answered pairs; :class:`~pbrl.teachers.vlm.pipeline.PairLabeler`
renders and asks in the background, :class:`~pbrl.teachers.vlm.client.ChatEndpoint` talks to
the endpoint.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import cast

import numpy as np

from pbrl.data import PreferenceDataset, Queries, Segments
from pbrl.data.preferences import oracle_labels
from pbrl.envs.spec import EnvSpec
from pbrl.store import StoreError, check_writable
from pbrl.teachers.base import Teacher
from pbrl.teachers.scripted import TeacherConfigError
from pbrl.teachers.vlm.cache import DEFAULT_CACHE
from pbrl.teachers.vlm.client import ChatEndpoint, api_key
from pbrl.teachers.vlm.figures import Tally
from pbrl.teachers.vlm.images import ImageSpec, check_renderable
from pbrl.teachers.vlm.pipeline import PairLabeler

ANNOTATOR = "vlm"


class VLMTeacher(Teacher):
    """``teacher=vlm``: see :mod:`pbrl.teachers.vlm` and ``conf/teacher/vlm.yaml``.

    ``goal`` is the task's text goal; when it is empty, ``goals[env.id]`` is used (the config
    keeps one per environment). ``env``: the run's environment (its id picks the goal, its
    ``gym.make`` arguments and camera render the frames); a run hands it over with
    :meth:`use_env`, so the config holds none of it. ``api_key_env`` names the environment variable holding the key
    (``null`` for servers without authentication, e.g. a local vLLM). ``cache=null`` disables
    the answer cache. The teacher never waits: ``collect`` returns what is answered, and the
    run's ``wait`` settings say how long to wait for the rest.
    """

    def __init__(
        self,
        model: str,
        base_url: str = "https://api.openai.com/v1",
        api_key_env: str | None = "OPENAI_API_KEY",
        goal: str | None = None,
        goals: Mapping[str, str] | None = None,
        env: EnvSpec | None = None,
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
        self.given_goal, self.goals = goal, _plain_dict(goals)
        self.env: EnvSpec | None = None
        self.goal = str(goal) if goal else ""  # or the env's, from goals (use_env)
        self.spec = ImageSpec(frames, int(num_frames), int(size))
        for name, value, low in (
            ("max_concurrency", max_concurrency, 1),
            ("max_retries", max_retries, 0),
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
        if price_per_1k_tokens is not None and float(price_per_1k_tokens) < 0:
            raise TeacherConfigError(f"teacher.price_per_1k_tokens={price_per_1k_tokens}: use >= 0")
        self.max_concurrency, self.max_retries = int(max_concurrency), int(max_retries)
        self.timeout_s, self.backoff_s = float(timeout_s), float(backoff_s)
        self.backoff_max_s = float(backoff_max_s)
        self.analysis_max_tokens, self.label_max_tokens = analysis_max_tokens, label_max_tokens
        self.price_per_1k_tokens = (
            None if price_per_1k_tokens is None else float(price_per_1k_tokens)
        )
        self.cache_path = None if not cache else Path(cache).expanduser()
        if self.cache_path is not None:
            try:
                check_writable(self.cache_path)  # at start, not at the first answer
            except StoreError as exc:
                raise TeacherConfigError(f"teacher.cache: {exc}") from None
        self.api_key = api_key(api_key_env)
        self._stop = threading.Event()
        self.figures = Tally()
        self.endpoint = ChatEndpoint(
            self.base_url,
            self.model,
            self.api_key,
            timeout_s=self.timeout_s,
            max_retries=self.max_retries,
            backoff_s=self.backoff_s,
            backoff_max_s=self.backoff_max_s,
            requests_per_second=requests_per_second,
            rng=rng if rng is not None else np.random.default_rng(),
            stop=self._stop,
            count=self.figures.count,
        )
        if probe:
            self.endpoint.probe(float(probe_timeout_s))

        self._labeler = PairLabeler(  # starts threads and opens the cache on first submit
            goal=self.goal,
            spec=self.spec,
            endpoint=self.endpoint,
            cache_path=self.cache_path,
            max_concurrency=self.max_concurrency,
            analysis_max_tokens=analysis_max_tokens,
            label_max_tokens=label_max_tokens,
            figures=self.figures,
            stop=self._stop,
            finish=self._finish,
        )
        self._lock = threading.Lock()
        self._done = threading.Condition(self._lock)
        self._rounds: list[Queries] = []
        self._finished: list[tuple[int, int, float, float]] = []  # round, row, label, time
        self.submitted = 0
        self.pairs_done = 0
        self.labels_received = 0  # usable labels handed out by collect
        self.transcripts: dict[str, tuple[str, str]] = {}  # query id -> (analysis, label reply)
        # query id -> labeled / unsure / identical / failed (set before collect() returns it)
        self.outcomes: dict[str, str] = {}
        if env is not None:
            self.use_env(env)

    def use_env(self, env: EnvSpec) -> None:
        """The env whose states are shown: picks the goal text (unless ``goal`` was given)
        and renders with its ``gym.make`` arguments and camera."""
        check_renderable(env)
        self.env = env
        self.goal = self._resolve_goal(self.given_goal, self.goals, env.id)
        self._labeler.goal, self._labeler.env = self.goal, env

    @property
    def env_id(self) -> str | None:
        return None if self.env is None else self.env.id

    @property
    def env_kwargs(self) -> dict[str, object]:
        return {} if self.env is None else dict(self.env.kwargs)

    @property
    def camera(self) -> dict[str, object]:
        return {} if self.env is None else dict(self.env.camera)

    # -- settings ------------------------------------------------------------------------------
    @staticmethod
    def _resolve_goal(goal: str | None, goals: dict[str, object], env_id: str | None) -> str:
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

    # -- the asynchronous teacher protocol -------------------------------------------------------
    def submit(self, queries: Queries) -> None:
        """Queue a round: rendering and requests run in the background; returns at once."""
        if self._stop.is_set():
            raise RuntimeError("VLMTeacher is closed")
        if not len(queries):
            return
        if not self.goal:
            self.goal = self._labeler.goal = self._resolve_goal(None, self.goals, None)
        self._labeler.start()
        with self._lock:
            self._rounds.append(queries)
            index = len(self._rounds) - 1
            self.submitted += len(queries)
            self._labeler.submit(index, queries)

    def collect(self) -> PreferenceDataset | None:
        """Pairs answered since the last call (NaN for skipped ones), or None; never blocks."""
        with self._done:
            done, self._finished = self._finished, []
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

    def outstanding(self) -> int:
        """Pairs submitted and not answered (or skipped) yet."""
        with self._done:
            return self.submitted - self.pairs_done + len(self._finished)

    def where(self) -> str:
        return f"(the VLM at {self.base_url})"

    def close(self) -> None:
        """Stop asking: queued pairs are dropped, requests in flight finish (bounded by the
        timeout), the renderers and the cache are closed."""
        self._stop.set()
        self._labeler.close()
        self.endpoint.close()

    # -- bookkeeping ----------------------------------------------------------------------------
    def _finish(
        self, index: int, row: int, label: float, outcome: str, transcript: tuple[str, str] | None
    ) -> None:
        """A pair is done (called from the background threads)."""
        queries = self._rounds[index]
        judged = correct = 0
        if outcome == "labeled":
            oracle = float(oracle_labels(queries[row])[0])
            if oracle != 0.5:
                judged, correct = 1, int(oracle == label)
        self.figures.finish(outcome, judged, correct)
        query_id = str(queries.query_id[row])
        with self._done:
            if transcript is not None:
                self.transcripts[query_id] = transcript
            self._finished.append((index, row, label, time.time()))
            self.outcomes[query_id] = outcome
            self.pairs_done += 1
            self._done.notify_all()

    def stats(self) -> dict[str, float]:
        """Figures since the last call, logged as ``preferences/vlm_*`` (``total_stats`` has
        the whole run's)."""
        return self.figures.take_window().values(self.price_per_1k_tokens)

    def total_stats(self) -> dict[str, float]:
        return self.figures.total().values(self.price_per_1k_tokens)

    def describe(self) -> dict[str, object]:
        """For ``summary.json``: the goal text used and the whole run's figures."""
        totals = {k: (None if math.isnan(v) else v) for k, v in self.total_stats().items()}
        return {"goal": self.goal, "totals": totals}

    # -- helpers for tests and the benchmark ---------------------------------------------------
    def segment_images(self, segments: Segments) -> list[list[bytes]]:
        """The images this teacher shows for each segment row, rendered in the calling thread
        (e.g. to register oracle scores with :class:`pbrl.teachers.vlm.mock.MockVLM`)."""
        from pbrl.teachers.vlm.images import render_segment_images

        return render_segment_images(segments, self.spec, self.env)


def _plain_dict(value: Mapping[str, object] | None) -> dict[str, object]:
    """A plain dict from a mapping or a Hydra DictConfig."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        from omegaconf import DictConfig, OmegaConf

        if isinstance(value, DictConfig):
            return cast(dict[str, object], OmegaConf.to_container(value, resolve=True))
    return dict(value)


__all__ = ["ANNOTATOR", "VLMTeacher"]
