"""Triplets in the store: three pairs ranked as a whole (RAPL, :mod:`pbrl.data.triplets`).

The store groups a triplet's pairs by column (schema 4): ``queries.triplet`` names the
triplet a pair belongs to and ``queries.role`` its place in it (``ab``, ``ac`` or ``bc``);
``leases.triplet_lease`` names the triplet lease a lease row is one of. The pairs' query ids
keep the text the data model gives them (``<triplet>:ab`` ..., what the page, exports and the
RAPL run read), but the store reads them only once, when a pair comes in
(:func:`triplet_roles`, through :func:`pbrl.data.triplets.group_triplets`), and when it
migrates an older store; leasing, answering and undoing find a triplet by its columns.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from pbrl.data.triplets import PAIRS, group_triplets
from pbrl.store.errors import BadInput

MEMBERS = ("a", "b", "c")  # a = first of pair ab, b = second of ab, c = second of ac
PAIR_NAMES = tuple(name for name, _, _ in PAIRS)  # ab, ac, bc
RANKS_HELP = (
    'a ranking is {"a": rank, "b": rank, "c": rank} with ranks 0 (best) to 2, equal ranks '
    'for a tie (b > a = c is {"a": 1, "b": 0, "c": 1}), or "skip"'
)


def triplet_roles(query_ids: Iterable[str]) -> list[tuple[str | None, str | None]]:
    """``(triplet, role)`` of each query id as the data model names triplets' pairs
    (``(None, None)``: a lone pair). The store calls it when pairs come in, to fill its
    ``triplet`` and ``role`` columns, and never again."""
    ids = np.array([str(q) for q in query_ids], dtype=str)
    out: list[tuple[str | None, str | None]] = [(None, None)] * len(ids)
    for triplet, rows in group_triplets(ids).items():
        for role, row in rows.items():
            out[row] = (triplet, role)
    return out


def triplet_of(query_id: str) -> str | None:
    """The triplet whose pair ``query_id`` is by its name (None: an ordinary pair); for
    callers holding only an id. The store itself reads its ``triplet`` column instead."""
    return triplet_roles([query_id])[0][0]


def triplet_pairs(triplet: str) -> tuple[str, ...]:
    """The query ids the data model gives a triplet's three pairs: ``<triplet>:ab``, ..."""
    return tuple(f"{triplet}:{name}" for name in PAIR_NAMES)


def ranking_labels(ranks: object) -> dict[str, float]:
    """The labels of a triplet's pairs (``ab``, ``ac``, ``bc``) from a person's ranking:
    ``{"a": 0, "b": 1, "c": 1}`` (0 best; equal ranks tie) or ``"skip"`` (all three NaN).
    Anything else is :class:`BadInput` naming the problem."""
    if isinstance(ranks, str) and ranks.strip().lower() == "skip":
        return dict.fromkeys(PAIR_NAMES, math.nan)
    if ranks is None:
        raise BadInput(f"the ranking is missing (a skip must be explicit): {RANKS_HELP}")
    if not isinstance(ranks, dict):
        raise BadInput(f"the ranking {ranks!r} is not valid: {RANKS_HELP}")
    missing = [m for m in MEMBERS if m not in ranks]
    extra = [k for k in ranks if k not in MEMBERS]
    if missing or extra:
        what = f"leaves out {', '.join(missing)}" if missing else f"names {', '.join(extra)}"
        raise BadInput(f"the ranking {what}: rank exactly a, b and c; {RANKS_HELP}")
    for m in MEMBERS:
        r = ranks[m]
        if isinstance(r, bool) or not isinstance(r, int) or not 0 <= r <= 2:
            raise BadInput(f"the rank of {m} is {r!r}, not 0, 1 or 2: {RANKS_HELP}")
    rank = [ranks[m] for m in MEMBERS]
    return {name: 0.5 if rank[i] == rank[j] else float(rank[i] > rank[j]) for name, i, j in PAIRS}


def labels_ranks(labels: dict[str, float]) -> dict[str, int] | None:
    """The ranking (``{"a": 0, ...}``, 0 best) that a triplet's pair labels say, or None
    for a skip or labels that are no ranking (inverse of :func:`ranking_labels`)."""
    if set(labels) != set(PAIR_NAMES) or any(math.isnan(v) for v in labels.values()):
        return None
    score = [0.0, 0.0, 0.0]
    for name, i, j in PAIRS:
        score[i] += 1.0 - labels[name]
        score[j] += labels[name]
    ranks = {m: sum(s > score[k] for s in set(score)) for k, m in enumerate(MEMBERS)}
    return ranks if ranking_labels(ranks) == labels else None
