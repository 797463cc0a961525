"""People as the teacher: queries go to a label store, answers come back when people give them.

``teacher=human`` in ``python -m pbrl.train`` builds a :class:`HumanTeacher`. The trainer
treats it as asynchronous (like rl-teacher): each feedback round it ``submit``s the round's
queries to the store and ``collect``s whatever answers arrived since the last round, then
keeps training on the labels it has. People label meanwhile on the page::

    python -m pbrl.label serve --store labels/<exp name>.sqlite

(or set ``label_page.serve=true``: the run serves the page from its own process).

The teacher never waits: how long a run waits for people is the run's ``wait`` settings
(:class:`~pbrl.teachers.base.WaitPolicy`): by default a round blocks, for at most
``wait.timeout_s`` seconds, until ``feedback.min_labels`` usable labels exist in total.

Answers stay in the store whatever happens to the trainer: a crashed run loses none, and
``python -m pbrl.label export`` writes every answer later.
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path

import numpy as np

from pbrl.data import PreferenceDataset, Queries
from pbrl.envs.spec import EnvSpec
from pbrl.errors import require_extra
from pbrl.rewards.base import RewardModel
from pbrl.store import LabelStore, StoreError, check_writable
from pbrl.teachers.base import Teacher
from pbrl.teachers.scripted import TeacherConfigError

log = logging.getLogger("pbrl")


class HumanTeacher(Teacher):
    def __init__(
        self,
        store: str,
        answers_per_query: int = 1,
        aggregate: str = "majority",
        task: str | None = None,
        env: EnvSpec | None = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        if not store:
            raise TeacherConfigError("teacher.store is empty: give the label store's path")
        if answers_per_query < 1:
            raise TeacherConfigError(f"teacher.answers_per_query={answers_per_query}: use >= 1")
        if aggregate not in ("majority", "first"):
            raise TeacherConfigError(f"teacher.aggregate={aggregate!r}: use majority or first")
        # the labeling page (served by the run or by `pbrl.label serve`) is the gui extra
        require_extra("gui", ("fastapi", "uvicorn"), "teacher=human (its labeling page)")
        self.store_path = Path(store).expanduser()
        try:
            check_writable(self.store_path)  # before training starts, not at the first round
        except StoreError as exc:
            raise TeacherConfigError(f"teacher.store: {exc}") from None
        self.answers_per_query, self.aggregate = int(answers_per_query), aggregate
        self.task = task
        self.env_kwargs: dict[str, object] = {}  # the page re-renders clips with them (use_env)
        if env is not None:
            self.use_env(env)
        self.rng = rng
        # Opened on first use: building the teacher (the run's config check builds it) must
        # not create files.
        self._store: LabelStore | None = None
        self.page_url: str | None = None  # set by the run when it serves the page
        self.sources: list[str] = []
        self.labels_received = 0  # usable labels handed to the trainer so far
        self.submitted = 0
        self.rounds = 0

    @property
    def store(self) -> LabelStore:
        if self._store is None:
            self._store = LabelStore(self.store_path)
            if self.task:
                self._store.set_meta(task=self.task)
        return self._store

    def use_env(self, env: EnvSpec) -> None:
        """The run's env: its ``gym.make`` arguments go with each query, so the page renders
        the clips exactly as the env was configured."""
        self.env_kwargs = dict(env.kwargs)

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
        log.info(
            "%d queries waiting for people (%d answered so far). %s",
            counts["pending"],
            counts["answered"],
            self.where(),
        )

    def collect(self) -> PreferenceDataset | None:
        """Answers that arrived since the last call, one aggregated label per query (or None)."""
        if not self.sources:  # nothing submitted yet: nothing of ours can be answered
            return None
        new = self.store.collect(self.sources, self.aggregate)
        if new is not None:
            self.labels_received += len(new.trainable)
        return new

    def outstanding(self) -> int:
        """Queries submitted that people have not answered (or that await more answers)."""
        return self.store.uncollected(self.sources) if self.sources else 0

    def where(self) -> str:
        if self.page_url is not None:
            return f"Label at {self.page_url}/"
        return f"Label at: python -m pbrl.label serve --store {self.store_path}"

    def label_store(self) -> Path:
        return self.store_path

    def show_page(self, url: str) -> None:
        self.page_url = url

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

    def set_reward_model(self, model: RewardModel | None) -> None:
        """A latent reward (``reward=vpl``) is saved beside the store and announced (meta
        ``latent_reward``): the page shows each annotator how sure it is about their z
        (:mod:`pbrl.gui.latent`). Other reward models are not announced."""
        from pbrl.rewards.dispatch import has_latent

        if model is None or not has_latent(model):
            return
        path = self.store_path.with_name(self.store_path.stem + "_latent_reward.pt")
        model.save(path)  # written atomically: the page never reads a half-written file
        self.store.set_meta(latent_reward=str(path.resolve()))

    def _fallback_source(self) -> str:
        if not self.sources:
            return f"teacher-{uuid.uuid4().hex[:8]}"
        return self.sources[0]

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
