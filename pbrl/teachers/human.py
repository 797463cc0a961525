"""People as the teacher: queries go to a label store, answers come back when people give them.

``teacher=human`` in ``python -m pbrl.train`` builds a :class:`HumanTeacher`. The trainer
treats it as asynchronous (like rl-teacher): each feedback round it ``submit``s the round's
queries to the store and ``collect``s whatever answers arrived since the last round, then
keeps training on the labels it has. People label meanwhile on the page::

    python -m pbrl.label serve --store labels/<exp name>.sqlite

(or set ``teacher.serve=true`` to serve the page from the training process).

Waiting: a round blocks, for at most ``wait_timeout_s`` seconds, until at least
``min_labels`` usable labels (skips do not count) have arrived in total: the same number the
trainer needs before its first reward update (``feedback.min_labels``). If the time runs
out, training goes on with what exists, with a warning, and later rounds do not wait again
until someone answers. ``wait_for_round=true`` makes every round wait until all queries asked
so far are answered (a synchronous teacher: reproducible, slow).

Answers stay in the store whatever happens to the trainer: a crashed run loses none, and
``python -m pbrl.label export`` writes every answer later.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, cast

import numpy as np

from pbrl.data import PreferenceDataset, Queries
from pbrl.data.store import LabelStore, StoreError, check_writable
from pbrl.errors import require_extra
from pbrl.teachers.base import AsyncTeacher
from pbrl.teachers.scripted import TeacherConfigError

log = logging.getLogger("pbrl")


class HumanTeacher(AsyncTeacher):
    def __init__(
        self,
        store: str,
        min_labels: int = 1,
        wait_timeout_s: float | None = 600.0,
        wait_for_round: bool = False,
        poll_s: float = 1.0,
        answers_per_query: int = 1,
        aggregate: str = "majority",
        task: str | None = None,
        env_kwargs: dict[str, Any] | None = None,
        serve: bool = False,
        host: str = "127.0.0.1",
        port: int = 8000,
        token: str | None = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        if not store:
            raise TeacherConfigError("teacher.store is empty: give the label store's path")
        if wait_timeout_s is not None and wait_timeout_s < 0:
            raise TeacherConfigError(
                f"teacher.wait_timeout_s={wait_timeout_s} is invalid: use "
                ">= 0 seconds (0: never wait), or null to wait forever"
            )
        if answers_per_query < 1:
            raise TeacherConfigError(f"teacher.answers_per_query={answers_per_query}: use >= 1")
        if aggregate not in ("majority", "first"):
            raise TeacherConfigError(f"teacher.aggregate={aggregate!r}: use majority or first")
        if poll_s <= 0:
            raise TeacherConfigError(f"teacher.poll_s={poll_s}: use a positive number of seconds")
        # the labeling page (served here or by `pbrl.label serve`) is the gui extra
        require_extra("gui", ("fastapi", "uvicorn"), "teacher=human (its labeling page)")
        if serve:
            from pbrl.gui.server import check_bind

            try:
                check_bind(host, token)
            except ValueError as exc:
                raise TeacherConfigError(f"teacher.serve: {exc}") from None
        self.store_path = Path(store).expanduser()
        try:
            check_writable(self.store_path)  # before training starts, not at the first round
        except StoreError as exc:
            raise TeacherConfigError(f"teacher.store: {exc}") from None
        self.min_labels, self.wait_timeout_s = int(min_labels), wait_timeout_s
        self.wait_for_round, self.poll_s = bool(wait_for_round), float(poll_s)
        self.answers_per_query, self.aggregate = int(answers_per_query), aggregate
        if env_kwargs is not None and not isinstance(env_kwargs, dict):  # a DictConfig from Hydra
            from omegaconf import OmegaConf

            env_kwargs = cast(dict[str, Any], OmegaConf.to_container(env_kwargs, resolve=True))
        self.task, self.env_kwargs = task, dict(env_kwargs or {})
        self.serve, self.host, self.port, self.token = serve, host, int(port), token
        self.rng = rng
        # Opened on first use: building the teacher (the trainer validates its config by
        # building one) must not create files or start servers.
        self._store: LabelStore | None = None
        self._server: Any = None
        self.sources: list[str] = []
        self.labels_received = 0  # usable labels handed to the trainer so far
        self.submitted = 0
        self.rounds = 0
        self._gave_up = False

    @property
    def store(self) -> LabelStore:
        if self._store is None:
            self._store = LabelStore(self.store_path)
            if self.task:
                self._store.set_meta(task=self.task)
            if self.serve:
                from pbrl.gui.server import BackgroundServer

                self._server = BackgroundServer(
                    self._store, self.host, self.port, self.token
                ).start()
                log.info("labeling page: %s/", self._server.url)
        return self._store

    # -- the asynchronous teacher protocol -------------------------------------------------------
    def submit(self, queries: Queries) -> None:
        """Put a round's queries in the store for people to label."""
        source = queries.first.run or self._fallback_source()
        if source not in self.sources:
            self.sources.append(source)
        self.rounds += 1
        self.store.add_queries(
            queries,
            source=source,
            batch=f"round {self.rounds}",
            needed=self.answers_per_query,
            env_kwargs=self.env_kwargs,
        )
        self.submitted += len(queries)
        counts = self.store.counts()
        where = (
            self._server.url + "/"
            if self._server
            else (f"python -m pbrl.label serve --store {self.store.path}")
        )
        log.info(
            "%d queries waiting for people (%d answered so far): %s",
            counts["pending"],
            counts["answered"],
            where,
        )

    def collect(self) -> PreferenceDataset | None:
        """Answers that arrived since the last call, one aggregated label per query (or None).

        Blocks as described in the module docstring; never longer than ``wait_timeout_s``.
        """
        if not self.sources:  # nothing submitted yet: nothing of ours can be answered
            return None
        deadline = math.inf if self.wait_timeout_s is None else time.time() + self.wait_timeout_s
        parts: list[PreferenceDataset] = []
        while True:
            new = self.store.collect(self.sources, self.aggregate)
            if new is not None:
                parts.append(new)
                self.labels_received += len(new.trainable)
                self._gave_up = False
            if not self._must_wait() or self._gave_up:
                break
            if time.time() >= deadline:
                self._gave_up = True
                warnings.warn(
                    f"HumanTeacher: no answers for {self.wait_timeout_s:.0f} s "
                    f"({self.labels_received} usable labels, {self.min_labels} wanted): training "
                    f"continues on the labels it has. Label at: python -m pbrl.label serve "
                    f"--store {self.store.path}",
                    RuntimeWarning,
                    stacklevel=2,
                )
                break
            time.sleep(min(self.poll_s, max(0.0, deadline - time.time())))
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else PreferenceDataset.concatenate(parts)

    def _must_wait(self) -> bool:
        if self.labels_received < self.min_labels:
            return True
        return self.wait_for_round and self.store.uncollected(self.sources) > 0

    def __call__(self, queries: Queries) -> np.ndarray:
        """Synchronous use (``labels = teacher(queries)``): submit, wait for every answer."""
        self.submit(queries)
        wanted = {str(q) for q in queries.query_id}
        labels: dict[str, float] = {}
        deadline = math.inf if self.wait_timeout_s is None else time.time() + self.wait_timeout_s
        while wanted - labels.keys() and time.time() < deadline:
            new = self.store.collect(self.sources, self.aggregate)
            if new is not None:
                labels.update(zip(new.queries.query_id.tolist(), new.labels.tolist(), strict=True))
                self.labels_received += len(new.trainable)
            else:
                time.sleep(self.poll_s)
        return np.array([labels.get(str(q), math.nan) for q in queries.query_id])

    # -- extras --------------------------------------------------------------------------------------
    def show_eval_video(
        self, path: str | Path, step: int | None = None, true_return: float | None = None
    ) -> None:
        """Announce the newest evaluation video of the policy: the page shows it."""
        self.store.set_meta(
            eval_video=str(Path(path).resolve()),
            eval_video_step=step,
            eval_video_return=true_return,
            eval_video_at=time.time(),
        )

    def _fallback_source(self) -> str:
        if not self.sources:
            return f"teacher-{uuid.uuid4().hex[:8]}"
        return self.sources[0]

    def close(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self._store is not None:
            self._store.close()
