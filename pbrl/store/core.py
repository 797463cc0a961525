"""The label store: one SQLite file (WAL) holding queries, leases and every answer.

Nothing to install or run: the trainer (through :class:`pbrl.teachers.human.HumanTeacher`),
the labeling page and ``python -m pbrl.label`` open the same file, from any number of
processes. Every change is one ``BEGIN IMMEDIATE`` transaction committed with
``synchronous=FULL``, so an answer the page has acknowledged survives a crash (or SIGKILL)
of the page server or of the trainer at any moment, and a half-done change never lands.

:class:`LabelStore` is composed of one part per concern, each in its module: opening,
transactions and closing (:mod:`~pbrl.store.connection`), the tables and their migrations
(:mod:`~pbrl.store.schema`), queries, leases, answers, datasets, stats, suggestions, and runs
with their rankings.
"""

from __future__ import annotations

from pbrl.store.answers import AnswersMixin
from pbrl.store.datasets import DatasetsMixin
from pbrl.store.leases import LeasesMixin
from pbrl.store.queries import QueriesMixin
from pbrl.store.runs import RunsMixin
from pbrl.store.stats import StatsMixin
from pbrl.store.suggestions import SuggestionsMixin


class LabelStore(
    StatsMixin,
    AnswersMixin,
    LeasesMixin,
    SuggestionsMixin,
    DatasetsMixin,
    QueriesMixin,
    RunsMixin,
):
    """One SQLite label store, safe to use from many threads and processes at once.

    Each thread gets its own connection; writers serialize on SQLite's write lock (waiting
    up to ``timeout`` seconds), readers never block writers (WAL). See
    :class:`~pbrl.store.connection.StoreBase` for opening and closing.
    """
