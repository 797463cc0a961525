"""Triplets of segments ranked as a whole, stored as the three pairs they imply.

RAPL (Tian et al.) learns from rankings of three videos. pbrl keeps one data model: a
triplet ``(a, b, c)`` is the three queries ``(a, b)``, ``(a, c)``, ``(b, c)`` with the ids
``<triplet>:ab``, ``<triplet>:ac`` and ``<triplet>:bc``, labeled like any pair (0 first
preferred, 1 second, 0.5 equal, NaN skip). So a ranking lives in a ``PreferenceDataset``
``.npz`` and in the SQLite label store unchanged, every pair-based reward model (the RLHF
baselines) trains on exactly the pairs the rankings imply, and a ranking can be read back
from any three answers with those ids (:func:`triplets_from_dataset`).

Reading a ranking back: each member scores 1 per pair it wins and 0.5 per tie; the
anchor is the member with the highest score, the other two follow in score order with
``target`` = P(first ≻ second) from their own pair's label (1, or 0.5 for a tie). A
triplet with a skipped pair, an incomplete one, or one whose labels contradict each other
(a cycle a ≻ b ≻ c ≻ a: a strict preference between two members with equal scores, or
against the scores) is left out.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

import numpy as np

from pbrl.data.preferences import PreferenceDataset, Queries
from pbrl.data.segments import Segments

PAIRS = (("ab", 0, 1), ("ac", 0, 2), ("bc", 1, 2))  # pair name, first member, second member
TRIPLET_ID = re.compile(r"^(?P<triplet>.+):(?P<pair>ab|ac|bc)$")


def new_triplet_ids(n: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """``n`` fresh triplet ids (``t`` + 12 hex digits; from ``rng`` when given)."""
    if rng is None:
        return np.array([f"t{uuid.uuid4().hex[:12]}" for _ in range(n)])
    return np.array([f"t{int(v):012x}" for v in rng.integers(0, 16**12, size=n)])


def triplet_queries(
    a: Segments, b: Segments, c: Segments, triplet_ids: np.ndarray | None = None
) -> Queries:
    """The three pairs of each triplet ``(a[i], b[i], c[i])``, grouped by triplet:
    ``(a, b)``, ``(a, c)``, ``(b, c)`` with ids ``<triplet>:ab`` ..."""
    n = len(a)
    if len(b) != n or len(c) != n:
        raise ValueError(f"triplet_queries: {n}, {len(b)} and {len(c)} segments: need equal")
    ids = new_triplet_ids(n) if triplet_ids is None else np.asarray(triplet_ids).astype(str)
    if len(ids) != n:
        raise ValueError(f"triplet_queries: {len(ids)} triplet ids for {n} triplets")
    members = Segments.concatenate([a, b, c])  # row m * n + i is member m of triplet i
    rows = np.arange(n)[:, None]
    first = (np.array([p[1] for p in PAIRS]) * n + rows).reshape(-1)
    second = (np.array([p[2] for p in PAIRS]) * n + rows).reshape(-1)
    qid = np.array([f"{t}:{name}" for t in ids for name, _, _ in PAIRS])
    return Queries(members[first], members[second], qid)


def sample_triplets(
    pool: Segments,
    n: int,
    rng: np.random.Generator,
    ids: np.ndarray | None = None,
    min_gap: float = 0.0,
    equal_fraction: float = 0.0,
    equal_gap: float = 0.0,
    tries: int = 10_000,
) -> Queries:
    """``n`` triplets of distinct segments of ``pool`` (as their pairs).

    Default: drawn uniformly. ``min_gap > 0``: well separated, as the RAPL authors built
    their feedback: any two members' returns differ by at least ``min_gap`` times the
    pool's return range (drawn by rejection). ``equal_fraction``: that share of the
    triplets (rounded) are equal triplets instead, three segments from the better half of
    the pool (return at or above its median) whose returns lie within ``equal_gap`` times the
    pool's return range of each other, which a teacher that ties returns closer than that
    (``TripletTeacher.equal_gap``) ranks as all equal; the two kinds are shuffled together."""
    if len(pool) < 3:
        raise ValueError(f"a triplet needs 3 distinct segments; the pool holds {len(pool)}")
    if not 0.0 <= equal_fraction <= 1.0 or min_gap < 0 or equal_gap < 0:
        raise ValueError("sample_triplets: use 0 <= equal_fraction <= 1, min_gap, equal_gap >= 0")
    returns = pool.returns()
    n_equal = int(round(equal_fraction * n))
    if min_gap == 0 and n_equal == 0:
        picks = np.stack([rng.choice(len(pool), size=3, replace=False) for _ in range(n)])
        picks = picks.reshape(n, 3)
        return triplet_queries(pool[picks[:, 0]], pool[picks[:, 1]], pool[picks[:, 2]], ids)
    span = float(returns.max() - returns.min())
    gap, tie = min_gap * span, equal_gap * span
    good = np.flatnonzero(returns >= np.median(returns))
    rows: list[np.ndarray] = []
    for k in range(n):
        equal = k < n_equal
        source = good if equal else np.arange(len(pool))
        for _ in range(tries):
            if len(source) < 3:
                break
            pick = rng.choice(source, size=3, replace=False)
            r = returns[pick]
            spread = np.abs(r[:, None] - r[None, :])[np.triu_indices(3, 1)]
            if (equal and spread.max() < tie) or (not equal and spread.min() >= gap):
                rows.append(pick)
                break
        else:
            what = (
                f"an equal triplet (returns within {tie:g}) in the better half"
                if equal
                else f"a triplet whose returns differ pairwise by >= {gap:g}"
            )
            raise ValueError(f"sample_triplets: no {what} of the pool after {tries} draws")
        if len(rows) <= k:
            raise ValueError("sample_triplets: the better half of the pool has < 3 segments")
    picks = np.stack(rows)[rng.permutation(n)]
    return triplet_queries(pool[picks[:, 0]], pool[picks[:, 1]], pool[picks[:, 2]], ids)


def group_triplets(query_ids: np.ndarray) -> dict[str, dict[str, int]]:
    """``triplet -> {pair name -> row}`` for the rows whose ids name a triplet's pair."""
    groups: dict[str, dict[str, int]] = {}
    for row, qid in enumerate(np.asarray(query_ids).astype(str)):
        m = TRIPLET_ID.match(qid)
        if m:
            groups.setdefault(m["triplet"], {})[m["pair"]] = row
    return groups


def rank_triplet(labels: dict[str, float]) -> tuple[list[int], float] | None:
    """Members ``[anchor, first, second]`` (0 = a, 1 = b, 2 = c) and P(first ≻ second) from
    the labels of pairs ``ab``, ``ac``, ``bc``; None if a pair is missing, skipped, or the
    labels contradict each other."""
    if set(labels) != {"ab", "ac", "bc"} or any(np.isnan(v) for v in labels.values()):
        return None
    score = [0.0, 0.0, 0.0]
    for name, i, j in PAIRS:
        y = labels[name]  # 0: i preferred, 1: j preferred, 0.5: equal
        score[i] += 1.0 - y
        score[j] += y
    for name, i, j in PAIRS:
        y = labels[name]
        if (y == 0.0 and not score[i] > score[j]) or (y == 1.0 and not score[j] > score[i]):
            return None  # a cycle, or a strict preference against the scores
    order = sorted(range(3), key=lambda k: -score[k])  # stable: ties keep a, b, c order
    first, second = order[1], order[2]
    name, i, _ = next(p for p in PAIRS if {p[1], p[2]} == {first, second})
    y = labels[name]  # P(pair's second ≻ pair's first)
    return order, float(1.0 - y if first == i else y)


@dataclass
class Triplets:
    """Ranked triplets, as RAPL's alignment loss reads them."""

    anchor: Segments  # the most preferred video of each triplet
    first: Segments  # the other two, the preferred (or an equal) one first
    second: Segments
    target: np.ndarray  # [N] P(first ≻ second): 1.0, or 0.5 where the teacher found them equal
    triplet_id: np.ndarray  # [N] str

    def __len__(self) -> int:
        return len(self.target)

    def __getitem__(self, index: np.ndarray) -> Triplets:
        return Triplets(
            self.anchor[index],
            self.first[index],
            self.second[index],
            self.target[index],
            self.triplet_id[index],
        )


def triplets_from_dataset(dataset: PreferenceDataset) -> tuple[Triplets | None, int]:
    """The ranked triplets held in ``dataset`` (as their pairs) and how many triplets were
    left out (incomplete, skipped or contradictory). None when no triplet is usable."""
    groups = group_triplets(dataset.queries.query_id)
    q = dataset.queries
    keep: list[tuple[str, list[int], float, dict[str, int]]] = []
    dropped = 0
    for tid, rows in groups.items():
        ranked = rank_triplet({name: float(dataset.labels[r]) for name, r in rows.items()})
        if ranked is None:
            dropped += 1
            continue
        keep.append((tid, ranked[0], ranked[1], rows))
    if not keep:
        return None, dropped
    # member m of a triplet: a = first of ab, b = second of ab, c = second of ac
    where = {0: ("ab", 0), 1: ("ab", 1), 2: ("ac", 1)}
    parts: list[list[Segments]] = [[], [], []]
    for _, order, _, rows in keep:
        for slot, m in enumerate(order):
            pair, side = where[m]
            seg = q.first if side == 0 else q.second
            parts[slot].append(seg[[rows[pair]]])
    return (
        Triplets(
            Segments.concatenate(parts[0]),
            Segments.concatenate(parts[1]),
            Segments.concatenate(parts[2]),
            np.array([k[2] for k in keep], dtype=np.float64),
            np.array([k[0] for k in keep]),
        ),
        dropped,
    )
