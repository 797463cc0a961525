"""The two teacher interfaces.

* :class:`Teacher`: ``labels = teacher(queries)``, answered at once (scripted, regret,
  reward-factor teachers). Labels: 0 first preferred, 1 second, 0.5 equal, NaN skip.
* :class:`AsyncTeacher`: answers arrive later (people on the labeling page, remote models):
  ``submit(queries)`` hands a round over, ``collect()`` returns whatever was answered since
  the last call, ``close()`` releases what the teacher holds. The online loop only speaks
  this one; :func:`as_async` puts a synchronous teacher behind it.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from pbrl.data import PreferenceDataset, Queries

if TYPE_CHECKING:
    from pbrl.rewards.base import RewardModel


class Teacher(Protocol):
    def __call__(self, queries: Queries) -> np.ndarray: ...


@runtime_checkable
class ReportsStats(Protocol):
    """A teacher with figures about its last answers (logged as ``preferences/<name>``)."""

    def stats(self) -> dict[str, float]: ...


@runtime_checkable
class DescribesItself(Protocol):
    """A teacher whose effective settings differ from its config (e.g. a ranking read from
    the label store); ``describe()`` is merged over the config in ``summary.json``."""

    def describe(self) -> dict[str, Any]: ...


@runtime_checkable
class WatchesRewardModel(Protocol):
    """A teacher that looks at the current reward model when a round is submitted (e.g. to
    send the pairs its ensemble disagrees on to people). The feedback loop calls
    ``set_reward_model`` before each ``submit``: None until the model has been fit once."""

    def set_reward_model(self, model: RewardModel | None) -> None: ...


class AsyncTeacher(ABC):
    @property
    def name(self) -> str:
        """Who answers (the annotator id of scripted answers)."""
        return type(self).__name__

    @abstractmethod
    def submit(self, queries: Queries) -> None:
        """Hand a round's queries over to be answered."""

    @abstractmethod
    def collect(self) -> PreferenceDataset | None:
        """Answers that arrived since the last call (None when there are none)."""

    def close(self) -> None:  # noqa: B027  (an optional hook)
        """Release what the teacher holds (a served page, a connection)."""

    def answer_all(self, queries: Queries, poll_s: float = 0.5) -> PreferenceDataset:
        """Submit ``queries`` and wait until every one is answered: the answers in the order
        asked (a teacher that answers later bounds the wait itself, e.g. ``wait_timeout_s``)."""
        self.submit(queries)
        wanted = [str(q) for q in queries.query_id]
        got: dict[str, tuple[float, str]] = {}
        while True:
            new = self.collect()
            if new is not None:
                for qid, label, who in zip(
                    new.queries.query_id.tolist(),
                    new.labels.tolist(),
                    list(new.annotator if new.annotator is not None else [""] * len(new)),
                    strict=True,
                ):
                    got[str(qid)] = (float(label), str(who))
            if all(q in got for q in wanted):
                break
            time.sleep(poll_s)
        labels = np.array([got[q][0] for q in wanted])
        return PreferenceDataset(queries, labels, np.array([got[q][1] for q in wanted]))

    def stats(self) -> dict[str, float]:
        """Figures about the answers collected last (``preferences/<name>``)."""
        return {}

    def describe(self) -> dict[str, Any]:
        """Effective settings that the config does not show (merged into ``summary.json``)."""
        return {}

    def show_eval_video(  # noqa: B027  (an optional hook)
        self, path: str | Path, step: int | None = None, true_return: float | None = None
    ) -> None:
        """A new evaluation video of the policy exists (a page may show it to people)."""


class Immediate(AsyncTeacher):
    """A synchronous :class:`Teacher` behind the asynchronous interface: each submitted round
    is answered at once, and ``collect`` returns it, annotated with the teacher's class name."""

    def __init__(self, teacher: Teacher) -> None:
        self.teacher = teacher
        self._name = type(teacher).__name__
        self._answered: list[PreferenceDataset] = []

    def submit(self, queries: Queries) -> None:
        labels = self.teacher(queries)
        self._answered.append(PreferenceDataset(queries, labels, np.full(len(queries), self._name)))

    @property
    def name(self) -> str:
        return self._name

    def stats(self) -> dict[str, float]:
        return self.teacher.stats() if isinstance(self.teacher, ReportsStats) else {}

    def describe(self) -> dict[str, Any]:
        return self.teacher.describe() if isinstance(self.teacher, DescribesItself) else {}

    def collect(self) -> PreferenceDataset | None:
        done, self._answered = self._answered, []
        if not done:
            return None
        return done[0] if len(done) == 1 else PreferenceDataset.concatenate(done)


def as_async(teacher: Teacher | AsyncTeacher) -> AsyncTeacher:
    return teacher if isinstance(teacher, AsyncTeacher) else Immediate(teacher)
