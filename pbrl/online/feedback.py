"""The feedback loop as an SB3 callback: when the schedule says so, select queries from the
trajectory pool, hand them to the teacher, train the reward model on every label so far.

Everything here is typed and Hydra-free: :class:`FeedbackSchedule` holds the settings (the
``feedback:`` config group plus ``max_feedback``), :class:`FeedbackState` the counters a
resumed run continues from. Labels and counters are written together, atomically, to one
file after every round (``labels_path``), so a run killed at any moment never asks for
labels it already has and never exceeds ``max_feedback``.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

from pbrl.data import PreferenceDataset, Queries
from pbrl.data.pool import TrajectoryPool
from pbrl.errors import ConfigError, fault_point
from pbrl.query import QuerySelector
from pbrl.rewards.base import RewardModel
from pbrl.rewards.dispatch import Steps, score_steps
from pbrl.run import label_stats
from pbrl.teachers.base import Teacher, TeacherTimeout, WaitPolicy, wait_for


@dataclass
class FeedbackSchedule:
    every: int = 5000  # env steps between feedback rounds (B-Pref num_interact)
    queries_per_round: int = 50  # queries per round (B-Pref reward_batch)
    segment_length: int = 50  # steps per segment
    first_at: int = 1000  # first round no earlier than this many env steps
    pool_size: int = 100_000  # recent env steps that segments are cut from
    min_labels: int = 1  # labels needed before the first reward-model update
    max_feedback: int = 1000  # total queries asked of the teacher
    # HERON (pbrl.online.heron): `transitions` draws pairs_per_update pairs of single steps
    # from the agent's buffer at every round instead of segment queries (no max_feedback)
    pairs: str = "segments"  # segments | transitions
    pairs_per_update: int = 1920  # transition pairs drawn per round (official: 16 x 120)

    def __post_init__(self) -> None:
        if self.pairs not in ("segments", "transitions"):
            raise ConfigError(f"feedback.pairs={self.pairs!r}: use segments or transitions")
        if self.pairs_per_update <= 0:
            raise ConfigError(f"feedback.pairs_per_update={self.pairs_per_update} must be > 0")
        for name in ("every", "queries_per_round", "segment_length", "pool_size"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"feedback.{name}={getattr(self, name)} must be positive")
        if self.first_at < 0 or self.min_labels < 0 or self.max_feedback < 0:
            raise ConfigError(
                "feedback.first_at, feedback.min_labels and max_feedback must be >= 0"
            )

    def rounds(self, first: int, total: int) -> int:
        """Rounds on the grid ``first + k * every`` before step ``total``: a round at
        ``total`` itself is not held (nothing would learn from it)."""
        return 0 if first >= total else 1 + (total - 1 - first) // self.every

    def round_size(self, asked: int) -> int:
        return int(min(self.queries_per_round, self.max_feedback - asked))


@dataclass
class FeedbackState:
    """The counters of the loop (saved with the labels, restored on resume)."""

    next_at: int  # env step of the next round
    queries: int = 0  # queries asked so far
    rounds: int = 0  # rounds in which queries were asked
    updates: int = 0  # reward-model training rounds


class FeedbackCallback(BaseCallback):
    """Runs the schedule inside ``model.learn``; ``updates`` counts reward-model trainings
    (other callbacks, e.g. PEBBLE's relabeling, react to it)."""

    def __init__(
        self,
        schedule: FeedbackSchedule,
        pool: TrajectoryPool,
        reward_model: RewardModel,
        teacher: Teacher,
        selector: QuerySelector | None = None,
        rng: np.random.Generator | None = None,
        start_at: int | None = None,
        labels_path: str | Path | None = None,
        on_queries: Callable[[Queries, int], None] | None = None,
        wait: WaitPolicy | None = None,
    ) -> None:
        """``start_at``: first round's env step (default ``schedule.first_at``);
        ``labels_path``: where labels and counters are saved after every round;
        ``on_queries(queries, round)``: called with each round's queries (e.g. videos);
        ``wait``: how long a round waits for a teacher that answers later (its
        ``min_labels`` is the schedule's: the labels the first reward update needs)."""
        super().__init__()
        self.schedule, self.pool, self.reward_model = schedule, pool, reward_model
        self.teacher = teacher
        self.wait = replace(wait or WaitPolicy(), min_labels=schedule.min_labels)
        self._waited_in_vain = False  # the last wait timed out: don't wait until answers flow
        self._nothing_came = False  # a wait timed out with no usable label at all: stop
        self.selector = selector or QuerySelector()
        self.rng = rng if rng is not None else np.random.default_rng()
        first = schedule.first_at if start_at is None else start_at
        self.state = FeedbackState(next_at=int(first))
        self.labels_path = None if labels_path is None else Path(labels_path)
        self.on_queries = on_queries
        self.dataset: PreferenceDataset | None = None
        self._refit_pending = False
        self.reward_learning_s = 0.0  # fits, selection diagnostics: this process's total

    @property
    def label_rows(self) -> int:
        """Answers held, skips included."""
        return 0 if self.dataset is None else len(self.dataset)

    @property
    def num_labels(self) -> int:
        return 0 if self.dataset is None else len(self.dataset.trainable)

    # -- persistence -----------------------------------------------------------------------
    def restore(self, path: str | Path) -> None:
        """Labels and counters saved by an earlier run of this loop."""
        self.dataset, meta = PreferenceDataset.load_with_meta(path)
        if not len(self.dataset):
            self.dataset = None
        self.state = FeedbackState(**meta["feedback"])

    def _save(self, asked: Queries) -> None:
        if self.labels_path is None:
            return
        data = self.dataset
        if data is None:  # nothing answered yet: the counters still have to persist
            data = PreferenceDataset(asked[np.arange(0)], np.zeros(0))
        data.save(self.labels_path, meta={"feedback": asdict(self.state)})

    # -- the loop ----------------------------------------------------------------------------
    def _on_step(self) -> bool:
        s = self.schedule
        end = getattr(self.model, "_total_timesteps", None)  # where model.learn stops
        if (
            self.num_timesteps >= self.state.next_at
            and self.state.queries < s.max_feedback
            and (end is None or self.num_timesteps < end)  # the policy would not see it
        ):
            self.feedback_round()
            # Rounds stay on the grid first_at + k * every, whatever the step increments
            # (vectorized envs) or a resume; a deferred round moves to the next grid point.
            while self.state.next_at <= self.num_timesteps:
                self.state.next_at += s.every
        return True

    def feedback_round(self) -> None:
        """Select queries from the pool, ask the teacher, learn from what it answered."""
        s = self.schedule
        n = s.round_size(self.state.queries)
        model = self.reward_model if self.state.rounds > 0 else None
        try:
            queries = self.selector(
                lambda k: self.pool.sample_queries(k, s.segment_length, self.rng),
                n,
                model,
                self.rng,
            )
        except RuntimeError as exc:  # too little data yet: try again next time
            self.logger.record("preferences/deferred", str(exc), exclude=("tensorboard", "csv"))
            return
        self.state.queries += n
        self.state.rounds += 1
        self.teacher.set_reward_model(self.reward_model if self.state.updates else None)
        self.teacher.submit(queries)
        new = self.wait_for_answers()
        if self.on_queries is not None:
            self.on_queries(queries, self.state.rounds)
        fault_point("feedback_round")  # tests: a kill with answers in hand, not yet saved
        self.learn_from(new, queries)
        if self._nothing_came:  # saved above: the queries asked and any skips are kept
            raise TeacherTimeout(
                f"{self.teacher.name} gave no usable label in {self.wait.timeout_s:.0f} s "
                f"(wait.timeout_s) for the {self.state.queries} queries asked: nothing to learn "
                f"from. {self.teacher.where()}. The run stops here; rerun with resume=RUN_DIR "
                "once answers come, or raise wait.timeout_s"
            )

    def wait_for_answers(self) -> PreferenceDataset | None:
        """The round's answers under the wait policy. A wait that times out before any label
        exists ends the run once they are saved (:class:`TeacherTimeout`); after some labels
        it warns, and later rounds don't wait until answers flow again."""
        policy = replace(self.wait, timeout_s=0.0) if self._waited_in_vain else self.wait
        new, timed_out = wait_for(self.teacher, policy, had=self.num_labels)
        if new is not None and len(new.trainable):
            self._waited_in_vain = False
        if timed_out and not self._waited_in_vain:
            have = self.num_labels + (0 if new is None else len(new.trainable))
            if have == 0:
                self._nothing_came = True
                return new
            self._waited_in_vain = True
            warnings.warn(
                f"{self.teacher.name}: waited {policy.timeout_s:.0f} s (wait.timeout_s) for "
                f"answers ({have} usable labels, {self.wait.min_labels} wanted): training "
                f"continues on the labels it has. {self.teacher.where()}",
                RuntimeWarning,
                stacklevel=2,
            )
        return new

    def collect_late_answers(self) -> None:
        """Answers an asynchronous teacher received after the last round."""
        self.learn_from(self.teacher.collect())

    def learn_from(self, new: PreferenceDataset | None, asked: Queries | None = None) -> None:
        """Add new labels (saved with the counters), retrain the reward model."""
        t0 = time.time()
        if new is not None and len(new) == 0:
            new = None
        if new is not None:
            self.dataset = (
                new if self.dataset is None else PreferenceDataset.concatenate([self.dataset, new])
            )
        if asked is not None:
            self._save(asked)
        elif new is not None:
            self._save(new.queries)
        fault_point("feedback_saved")  # tests: a kill right after the labels were saved
        if new is None or self.dataset is None or self.num_labels < self.schedule.min_labels:
            return  # nothing new, or too few labels to train on yet
        self._fit(new, t0)

    def refit(self) -> None:
        """Train the reward model on every label held (e.g. restored labels newer than the
        model's checkpoint), when learning starts."""
        self._refit_pending = True

    def _on_training_start(self) -> None:
        if (
            self._refit_pending
            and self.dataset is not None
            and self.num_labels >= max(self.schedule.min_labels, 1)
        ):
            self._fit(None, time.time())
        self._refit_pending = False

    def _fit(self, new: PreferenceDataset | None, t0: float) -> None:
        assert self.dataset is not None
        metrics = self.reward_model.fit(self.dataset, self.rng)
        self.state.updates += 1
        log = self.logger.record
        log("preferences/labels", self.num_labels)
        log("preferences/queries", self.state.queries)
        if new is not None:
            for key, value in {**label_stats(new), **self.teacher.stats()}.items():
                log(f"preferences/{key}", value)
        log("reward_model/loss", metrics["loss"])
        log("reward_model/train_accuracy", metrics["train_accuracy"])
        log("reward_model/epochs", metrics["epochs"])
        for key, value in self.reward_stats().items():
            log(f"reward_model/{key}", value)
        spent = time.time() - t0
        self.reward_learning_s += spent
        log("time/reward_learning_s", spent)
        log("time/reward_learning_total_s", self.reward_learning_s)

    def reward_stats(self, n: int = 4096) -> dict[str, float]:
        """On up to ``n`` recent steps: the Pearson correlation of the learned per-step reward
        (as handed to RL) with the true one, and both rewards' std (the learned reward's
        scale moves from round to round unless the model standardizes it)."""
        held = min(self.pool.num_steps, n)
        length = self.schedule.segment_length
        if held < 2 or held < length:
            return {"true_reward_corr": float("nan")}
        segs = self.pool.sample_segments(max(1, held // length), length, self.rng)
        pred = score_steps(self.reward_model, Steps.of_segments(segs))
        true = segs.true_reward[segs.mask]
        corr = float(np.corrcoef(pred, true)[0, 1]) if true.std() > 0 and pred.std() > 0 else 0.0
        return {
            "true_reward_corr": corr,
            "reward_std": float(pred.std()),
            "true_reward_std": float(true.std()),
        }

    def state_dict(self) -> dict[str, object]:
        return asdict(self.state)
