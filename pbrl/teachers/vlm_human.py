"""A VLM first, people for the rest: ``teacher=vlm_then_human``.

Not in the papers (issue 14, "beyond the papers"). Each round goes to a
:class:`~pbrl.teachers.vlm.VLMTeacher` (RL-VLM-F's two-stage prompts). As its answers arrive:

* a pair the VLM answers decidedly (0 or 1) is a label at once (annotator ``"vlm"``);
* a pair it does not (unsure, unparseable, both images identical, or the request failed) goes
  to the people's label store (:class:`~pbrl.teachers.human.HumanTeacher`) with the VLM's
  answer attached as a *suggestion*: the labeling page shows "VLM suggests: ..." and the
  stage-1 analysis, preselects nothing, and the person answers with the usual keys. The
  store keeps the suggestion and the person's answer (``python -m pbrl.label stats``
  reports their agreement).

``route=all`` sends every pair to people with the VLM's suggestion (decided or not) and uses
only people's answers as labels: VLM-assisted labeling, and the way to measure how often
people agree with the VLM before trusting it with ``route=unsure``.

``disagreement=f`` (0 < f <= 1, with ``route=unsure``) also sends people the fraction ``f`` of
each round's pairs that the reward ensemble disagrees on most (the std over its members of
P(second ≻ first), as ``query=disagreement`` scores candidates), even where the VLM decided:
the VLM's answer becomes their suggestion. The feedback loop hands the teacher the reward
model before each round (``Teacher.set_reward_model``); before the first
fit, and with a one-member model (no disagreement to measure), nothing is routed this way.

Waiting is the run's (``wait`` settings): ``collect`` routes and returns what arrived, and
``outstanding`` counts the pairs still with the VLM or with people.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from pbrl.data import PreferenceDataset
from pbrl.data.preferences import Queries
from pbrl.envs.spec import EnvSpec
from pbrl.rewards.base import RewardModel
from pbrl.store import Suggestion
from pbrl.teachers.base import Teacher
from pbrl.teachers.human import HumanTeacher
from pbrl.teachers.scripted import TeacherConfigError
from pbrl.teachers.vlm import ANNOTATOR, VLMTeacher, parse_answer

log = logging.getLogger("pbrl")

ROUTES = ("unsure", "all")


class VLMThenHuman(Teacher):
    """``teacher=vlm_then_human``: see the module docstring and the config's comments."""

    def __init__(
        self,
        vlm: VLMTeacher,
        human: HumanTeacher,
        route: str = "unsure",
        disagreement: float = 0.0,
        rng: np.random.Generator | None = None,
    ) -> None:
        if not isinstance(vlm, VLMTeacher):
            raise TeacherConfigError(
                f"teacher.vlm must build a VLMTeacher (_target_: pbrl.teachers.vlm.VLMTeacher), "
                f"got {type(vlm).__name__}"
            )
        if not isinstance(human, HumanTeacher):
            raise TeacherConfigError(
                "teacher.human must build a HumanTeacher "
                f"(_target_: pbrl.teachers.human.HumanTeacher), got {type(human).__name__}"
            )
        if route not in ROUTES:
            raise TeacherConfigError(
                f"teacher.route={route!r}: use unsure (people label what the VLM cannot) or "
                "all (people label every pair, the VLM's answer shown as a suggestion)"
            )
        if not 0.0 <= float(disagreement) <= 1.0:
            raise TeacherConfigError(
                f"teacher.disagreement={disagreement}: use a fraction of each round in [0, 1] "
                "(0: only the pairs the VLM is unsure about go to people)"
            )
        if float(disagreement) > 0 and route == "all":
            raise TeacherConfigError(
                "teacher.disagreement applies to route=unsure (route=all already sends people "
                "every pair): set one of them"
            )
        self.vlm, self.human, self.route = vlm, human, route
        self.disagreement = float(disagreement)
        self._model: RewardModel | None = None
        self._contested: set[str] = set()  # decided by the VLM or not, these go to people
        self.rng = rng
        self.labels_received = 0  # usable labels handed out (both sources)
        self.routed = 0  # pairs sent to people
        self.routed_contested = 0  # of them: sent because the ensemble disagrees
        self.contested_marked = 0  # pairs submitted as contested (routed when the VLM answers)
        self.from_vlm = 0  # usable labels from the VLM
        self.from_people = 0  # answers from people (skips included)
        self._window = {"routed": 0, "contested": 0, "vlm_labels": 0, "people_answers": 0}

    def label_store(self) -> Path:
        return self.human.label_store()

    def show_page(self, url: str) -> None:
        self.human.show_page(url)

    # -- the asynchronous teacher protocol ---------------------------------------------------
    def use_env(self, env: EnvSpec) -> None:
        self.vlm.use_env(env)
        self.human.use_env(env)

    def set_reward_model(self, model: RewardModel | None) -> None:
        """The current reward model (None before its first fit): see ``disagreement``."""
        self._model = model

    def submit(self, queries: Queries) -> None:
        """Hand the round to the VLM (returns at once; its answers are routed in collect)."""
        contested = self._most_contested(queries)
        self.contested_marked += len(contested)
        self._contested |= contested
        self.vlm.submit(queries)

    def _most_contested(self, queries: Queries) -> set[str]:
        """The ids of the ``disagreement`` fraction of ``queries`` the ensemble disagrees on
        most (none without a fit model, or when its members all agree)."""
        if self.disagreement <= 0 or self._model is None or not len(queries):
            return set()
        probs = self._model.preference_probs(queries.first, queries.second)
        score = np.asarray(probs).std(axis=0)  # members' spread, as query=disagreement scores
        k = math.ceil(self.disagreement * len(queries))
        top = np.argsort(-score, kind="stable")[:k]
        top = top[score[top] > 0]  # a one-member ensemble never disagrees
        return {str(q) for q in queries.query_id[top]}

    def collect(self) -> PreferenceDataset | None:
        """VLM labels and people's answers that arrived since the last call (or None)."""
        parts = self._poll()
        if not parts:
            return None
        out = parts[0] if len(parts) == 1 else PreferenceDataset.concatenate(parts)
        self.labels_received += len(out.trainable)
        return out

    def outstanding(self) -> int:
        """Pairs with the VLM and pairs with people, not answered yet."""
        return self.vlm.outstanding() + self._people_pending()

    def where(self) -> str:
        return self.human.where()

    def _poll(self) -> list[PreferenceDataset]:
        """Route the VLM's new answers; collect people's new answers. Never blocks."""
        parts: list[PreferenceDataset] = []
        answered = self.vlm.collect()
        if answered is not None:
            if self.route == "all":
                to_people = np.ones(len(answered), dtype=bool)
            else:
                ids = answered.queries.query_id.astype(str)
                contested = np.isin(ids, list(self._contested)) & ~np.isnan(answered.labels)
                self._contested.difference_update(ids.tolist())
                self.routed_contested += int(contested.sum())
                self._window["contested"] += int(contested.sum())
                to_people = np.isnan(answered.labels) | contested
            keep = ~to_people
            if keep.any():
                decided = answered[np.flatnonzero(keep)]
                for qid in decided.queries.query_id.tolist():  # not needed as suggestions
                    self.vlm.outcomes.pop(str(qid), None)
                    self.vlm.transcripts.pop(str(qid), None)
                parts.append(decided)
                self.from_vlm += len(decided.trainable)
                self._window["vlm_labels"] += len(decided.trainable)
            if to_people.any():
                self._route(answered.queries[np.flatnonzero(to_people)])
        people = self.human.collect()
        if people is not None:
            parts.append(people)
            self.from_people += len(people)
            self._window["people_answers"] += len(people)
        return parts

    def _route(self, queries: Queries) -> None:
        """Send pairs to people, each with the VLM's answer as a suggestion (written first,
        so the page never shows a pair without it)."""
        suggestions = []
        for qid in queries.query_id.tolist():
            suggestion = self.suggestion(str(qid))
            if suggestion is not None:
                suggestions.append(suggestion)
        self.human.store.set_suggestions(suggestions)
        self.human.submit(queries)
        self.routed += len(queries)
        self._window["routed"] += len(queries)

    def suggestion(self, query_id: str) -> Suggestion | None:
        """What the VLM said about a pair (None: it was never asked, e.g. a failed request)."""
        outcome = self.vlm.outcomes.pop(query_id, None)
        transcript = self.vlm.transcripts.pop(query_id, None)
        model = self.vlm.model
        if transcript is not None:
            analysis, reply = transcript
            answer = parse_answer(reply)
            label = {0: 0.0, 1: 1.0}.get(answer, math.nan)
            return Suggestion(query_id, label, analysis, reply, model)
        if outcome == "identical":  # no request made: the VLM would see the same image twice
            text = "(not asked: the two images the VLM would see are identical)"
            return Suggestion(query_id, math.nan, text, "", model)
        return None

    def _people_pending(self) -> int:
        return self.human.store.uncollected(self.human.sources) if self.human.sources else 0

    # -- extras ------------------------------------------------------------------------------
    def stats(self) -> dict[str, float]:
        """The VLM's figures (``vlm_*``) and the routing since the last call."""
        window, self._window = self._window, dict.fromkeys(self._window, 0)
        return {
            **self.vlm.stats(),
            "vlm_human_routed": float(window["routed"]),
            "vlm_human_routed_contested": float(window["contested"]),
            "vlm_human_vlm_labels": float(window["vlm_labels"]),
            "vlm_human_people_answers": float(window["people_answers"]),
            "vlm_human_pending": float(self._people_pending()),
        }

    def describe(self) -> dict[str, object]:
        return {
            "vlm": self.vlm.describe(),
            "routed_to_people": self.routed,
            "routed_contested": self.routed_contested,
            "contested_marked": self.contested_marked,
            "labels_from_vlm": self.from_vlm,
            "answers_from_people": self.from_people,
        }

    def show_eval_video(
        self, path: str | Path, step: int | None = None, true_return: float | None = None
    ) -> None:
        self.human.show_eval_video(path, step, true_return)

    def close(self) -> None:
        try:
            self.vlm.close()
        finally:
            self.human.close()


__all__ = ["ANNOTATOR", "ROUTES", "VLMThenHuman"]
