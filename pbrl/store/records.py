"""The store's small records (leases, answers, suggestions, runs, rankings) and the checks of
what people and callers send it (labels, annotator names, query ids)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from pbrl.data.preferences import parse_label as _parse_label
from pbrl.store.errors import BadInput

QUERY_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
ANNOTATOR = re.compile(r"^[^\x00-\x1f\x7f]{1,64}$")
RUN_NAME = re.compile(r"^[^\x00-\x1f\x7f]{1,200}$")


@dataclass(frozen=True)
class Lease:
    lease_id: str  # a triplet's lease: the id its three lease rows share
    query_id: str  # a triplet's lease: its first pair (``ab``)
    annotator: str
    shown_at: float
    expires_at: float
    env_id: str
    triplet: str | None = None  # set when the lease covers a triplet's three pairs
    pairs: tuple[str, ...] = ()  # a triplet's lease: the query ids of its ab, ac, bc pairs

    @property
    def query_ids(self) -> tuple[str, ...]:
        """The queries this lease covers: one pair, or a triplet's three pairs."""
        return self.pairs if self.triplet else (self.query_id,)


@dataclass(frozen=True)
class Answer:
    answer_id: int
    query_id: str
    annotator: str
    label: float  # NaN = skip
    shown_at: float
    answered_at: float
    triplet: str | None = None  # the triplet whose pair the query is (None: a lone pair)
    role: str | None = None  # that pair's place in its triplet: ab, ac or bc


SUGGESTION_WORDS = {0.0: "left", 1.0: "right", 0.5: "equal"}


@dataclass(frozen=True)
class Suggestion:
    """A model's answer to a query, shown to people as a suggestion (never as a label)."""

    query_id: str
    label: float  # 0 left/first, 1 right/second, 0.5 equal, NaN unsure
    analysis: str = ""  # the VLM's stage-1 text (what each image shows, the difference)
    reply: str = ""  # its raw stage-2 reply
    model: str = ""
    created_at: float = 0.0

    @property
    def word(self) -> str:
        """left / right / equal / unsure (the page's words)."""
        return SUGGESTION_WORDS.get(self.label, "unsure")

    def to_json(self) -> dict[str, object]:
        return {
            "label": None if math.isnan(self.label) else self.label,
            "word": self.word,
            "analysis": self.analysis,
            "model": self.model,
            "created_at": self.created_at,
        }


@dataclass(frozen=True)
class RunInfo:
    """A run the store knows: its environment and that environment's reward factors."""

    name: str
    env_id: str
    env_kwargs: dict[str, Any]
    factors: tuple[str, ...]  # bare names (``forward``, not ``reward_forward``), as reported
    created_at: float


@dataclass(frozen=True)
class Ranking:
    """A person's ranking of a run's reward factors (HERON): most important first."""

    ranking_id: int
    run: str
    factors: tuple[str, ...]
    higher_is_better: tuple[bool, ...]  # one per factor, in rank order
    annotator: str
    created_at: float

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.ranking_id,
            "run": self.run,
            "factors": list(self.factors),
            "higher_is_better": list(self.higher_is_better),
            "annotator": self.annotator,
            "created_at": self.created_at,
        }


def factor_name(name: str) -> str:
    """A reward factor's bare name: ``reward_forward`` and ``forward`` are both ``forward``."""
    return name.strip().removeprefix("reward_")


def parse_label(value: object, strict: bool = True) -> float:
    """A person's answer (see :func:`pbrl.data.preferences.parse_label`).

    Strict by default: a skip must be the word ``skip``; a missing label (``None``, NaN, "")
    is refused (:class:`BadInput`) rather than stored as a skip.
    """
    try:
        return _parse_label(value, strict=strict)
    except ValueError as exc:
        raise BadInput(str(exc)) from None


def check_annotator(name: object) -> str:
    if not isinstance(name, str) or not ANNOTATOR.match(name.strip()):
        raise BadInput("annotator must be a name of 1 to 64 printable characters")
    return name.strip()


def db_label(label: float) -> float | None:
    """A label as stored: NaN (skip, unsure) is NULL."""
    return None if math.isnan(label) else float(label)


def py_label(value: float | None) -> float:
    return math.nan if value is None else float(value)
