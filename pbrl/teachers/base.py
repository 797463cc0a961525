"""The one teacher protocol, and the one place a run waits for answers.

Every teacher is asynchronous: ``submit(queries)`` hands a round over and returns at once,
``collect()`` returns whatever was answered since the last call (never blocking),
``outstanding()`` counts what was asked and not yet answered, ``close()`` releases what the
teacher holds. Labels: 0 first preferred, 1 second, 0.5 equal, NaN skip.

* :class:`Scripted` teachers (B-Pref's, regret, HERON's rankings, triplets) answer at once
  through the same protocol: a subclass implements ``labels = teacher(queries)``.
* People (:class:`~pbrl.teachers.human.HumanTeacher`), a VLM and routing teachers answer later.

How long a run waits is the run's decision, not the teacher's: a :class:`WaitPolicy` (block
until n labels, or until every query asked is answered; wait up to t; or don't wait) is
applied by :func:`wait_for`, the only loop that waits. Optional abilities are declared here
with no-op defaults (``use_env``, ``stats``, ``describe``, ``set_reward_model``,
``show_eval_video``, ``where``), so a run calls them on any teacher without asking what it is.
"""

from __future__ import annotations

import math
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pbrl.data import PreferenceDataset, Queries
from pbrl.errors import ConfigError

if TYPE_CHECKING:
    from pbrl.envs.spec import EnvSpec
    from pbrl.rewards.base import RewardModel


class Teacher(ABC):
    @property
    def name(self) -> str:
        """Who answers (the annotator id of scripted answers)."""
        return type(self).__name__

    @abstractmethod
    def submit(self, queries: Queries) -> None:
        """Hand a round's queries over to be answered; returns at once."""

    @abstractmethod
    def collect(self) -> PreferenceDataset | None:
        """Answers that arrived since the last call (None when there are none); never blocks."""

    def outstanding(self) -> int:
        """Queries asked and not answered yet (0 for a teacher that answers at once)."""
        return 0

    def close(self) -> None:  # noqa: B027  (an optional hook)
        """Release what the teacher holds (a connection, threads, renderers)."""

    # -- declared abilities: no-ops unless a teacher has them --------------------------------
    def use_env(self, env: EnvSpec) -> None:  # noqa: B027  (an optional hook)
        """The run's environment, once, right after the teacher is built (a teacher that
        renders states, reads reward factors or names the task takes what it needs; its
        config holds no env details). A bad fit is a :class:`ConfigError`."""

    def stats(self) -> dict[str, float]:
        """Figures about the answers collected last (``preferences/<name>``)."""
        return {}

    def describe(self) -> dict[str, object]:
        """Effective settings that the config does not show (merged into ``summary.json``)."""
        return {}

    def set_reward_model(self, model: RewardModel | None) -> None:  # noqa: B027
        """The current reward model, before each round (None until its first fit): a teacher
        may use it (e.g. to send people the pairs the ensemble disagrees on)."""

    def show_eval_video(  # noqa: B027  (an optional hook)
        self, path: str | Path, step: int | None = None, true_return: float | None = None
    ) -> None:
        """A new evaluation video of the policy exists (a page may show it to people)."""

    def where(self) -> str:
        """Where answers come from, for messages about waiting (e.g. the labeling page)."""
        return ""

    def label_store(self) -> Path | None:
        """The label store people answer this teacher's queries in (None: it asks no people).
        The run serves the labeling page for it when ``label_page.serve=true``."""
        return None

    def show_page(self, url: str) -> None:  # noqa: B027  (an optional hook)
        """The address of the labeling page the run serves for :meth:`label_store`."""

    def set_factor_spread(self, factor_names: Sequence[str], std: np.ndarray) -> None:  # noqa: B027
        """The spread of each reward factor over the buffer the next pairs come from (HERON's
        ``margin: buffer`` uses it)."""


class Scripted(Teacher):
    """A teacher that answers at once: ``labels = teacher(queries)``. Each submitted round is
    labeled on the spot; ``collect`` returns it, annotated with the teacher's name."""

    @abstractmethod
    def __call__(self, queries: Queries) -> np.ndarray: ...

    def _answered(self) -> list[PreferenceDataset]:
        # scripted teachers are dataclasses: no __init__ of ours runs
        return self.__dict__.setdefault("_answers", [])  # type: ignore[no-any-return]

    def submit(self, queries: Queries) -> None:
        labels = np.asarray(self(queries), dtype=np.float64)
        names = np.full(len(queries), self.name)
        self._answered().append(PreferenceDataset(queries, labels, names))

    def collect(self) -> PreferenceDataset | None:
        done = self._answered()[:]
        self._answered().clear()
        if not done:
            return None
        return done[0] if len(done) == 1 else PreferenceDataset.concatenate(done)


def checked_teacher(obj: object) -> Teacher:
    """``obj`` as a :class:`Teacher`, or a :class:`ConfigError` saying how to make it one."""
    if not isinstance(obj, Teacher):
        raise ConfigError(
            f"teacher._target_ built a {type(obj).__name__}, not a pbrl Teacher: derive it from "
            "pbrl.teachers.Scripted (answers at once) or pbrl.teachers.Teacher (answers later)"
        )
    return obj


# -- waiting -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WaitPolicy:
    """How long a run waits for answers (the ``wait`` config group sets the run's).

    ``wait_for`` returns once ``min_labels`` usable labels exist in total (those the run
    already ``had`` included) and, with ``all_asked``, nothing is outstanding; or once
    ``timeout_s`` has passed (None: no limit; 0: never wait); or at once when nothing more
    can arrive."""

    min_labels: int = 0
    all_asked: bool = False
    timeout_s: float | None = 600.0
    poll_s: float = 1.0

    def __post_init__(self) -> None:
        if self.timeout_s is not None and self.timeout_s < 0:
            raise ConfigError(
                f"wait.timeout_s={self.timeout_s}: use >= 0 seconds (0: never wait), or null "
                "to wait without a limit"
            )
        if not self.poll_s > 0:
            raise ConfigError(f"wait.poll_s={self.poll_s}: use a positive number of seconds")


class TeacherTimeout(ConfigError):
    """No answer came within the wait policy's time: the run stops, keeping what it has."""


def wait_for(
    teacher: Teacher, policy: WaitPolicy, had: int = 0
) -> tuple[PreferenceDataset | None, bool]:
    """Collect answers until ``policy`` is met, nothing more can arrive, or its time is up:
    the answers, and whether the time ran out with the policy unmet."""
    deadline = math.inf if policy.timeout_s is None else time.time() + policy.timeout_s
    parts: list[PreferenceDataset] = []
    usable = had
    while True:
        new = teacher.collect()
        if new is not None and len(new):
            parts.append(new)
            usable += len(new.trainable)
        pending = teacher.outstanding()
        met = usable >= policy.min_labels and not (policy.all_asked and pending)
        timed_out = not met and pending > 0 and time.time() >= deadline
        if met or pending == 0 or timed_out:  # done, nothing more can arrive, or time is up
            break
        time.sleep(min(policy.poll_s, max(0.0, deadline - time.time())))
    if not parts:
        return None, timed_out
    return (parts[0] if len(parts) == 1 else PreferenceDataset.concatenate(parts)), timed_out


def ask(teacher: Teacher, queries: Queries, policy: WaitPolicy) -> PreferenceDataset:
    """Submit ``queries`` and wait (``policy``, every query asked) for their answers: one
    row per query, in the order asked; NaN (a skip) where none came in time, with a warning
    naming where answers were expected."""
    teacher.submit(queries)
    answers, _ = wait_for(teacher, WaitPolicy(len(queries), True, policy.timeout_s, policy.poll_s))
    got: dict[str, tuple[float, str]] = {}
    if answers is not None:
        who = answers.annotator if answers.annotator is not None else [""] * len(answers)
        for qid, label, name in zip(
            answers.queries.query_id.tolist(), answers.labels.tolist(), list(who), strict=True
        ):
            got[str(qid)] = (float(label), str(name))
    wanted = [str(q) for q in queries.query_id]
    missing = sum(q not in got for q in wanted)
    if missing:
        warnings.warn(
            f"{teacher.name}: {missing} of {len(wanted)} queries unanswered after "
            f"{policy.timeout_s} s (wait.timeout_s); they count as skipped. {teacher.where()}",
            RuntimeWarning,
            stacklevel=2,
        )
    labels = np.array([got.get(q, (math.nan, ""))[0] for q in wanted])
    names = np.array([got.get(q, (math.nan, teacher.name))[1] for q in wanted])
    return PreferenceDataset(queries, labels, names)
