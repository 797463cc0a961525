"""Agreement: per-annotator counts, agreement between annotators, with the scripted oracle
and with a VLM's suggestions (``python -m pbrl.label stats``)."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, TypedDict

import numpy as np

from pbrl.store.answers import AnswersMixin
from pbrl.store.datasets import aggregate_labels
from pbrl.store.records import py_label
from pbrl.store.suggestions import SuggestionsMixin


class Agreement(TypedDict):
    """How often two label sources agree: the fraction of ``n`` compared pairs (None: none)."""

    n: int
    agreement: float | None


class AnnotatorStats(TypedDict):
    answers: int
    left: int
    right: int
    equal: int
    skip: int
    median_seconds: float | None  # from showing a pair to its answer
    oracle: Agreement
    others: Agreement


class VlmHumanStats(TypedDict):
    suggestions: int
    unsure: int
    answered_by_people: int
    both_decided: int
    agree: int
    agreement: float | None
    vlm_vs_oracle: Agreement


class StoreStats(TypedDict):
    """What ``LabelStore.stats`` reports (``python -m pbrl.label stats``, ``/api/stats``)."""

    progress: dict[str, int]  # LabelStore.counts()
    annotators: dict[str, AnnotatorStats]
    pairwise: dict[str, Agreement]  # "<one> | <two>" -> their agreement
    inter_annotator: Agreement
    aggregate: str
    aggregated_vs_oracle: Agreement
    oracle_known: int
    vlm_human: VlmHumanStats


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


class StatsMixin(AnswersMixin, SuggestionsMixin):
    # StoreStats once gui/server.py's /api/stats handler declares it (its plain dict return type
    # refuses a TypedDict)
    def stats(self, aggregate: str = "majority") -> dict[str, Any]:
        """Progress, per-annotator counts, agreement between annotators and with the oracle.

        Agreement is the fraction of identical labels (skips excluded) on queries both sides
        answered; ``oracle`` is the scripted noise-free label, known when segments carry a true
        reward. ``None`` where there is nothing to compare.
        """
        rows = self.answers()
        by_query: dict[str, dict[str, float]] = defaultdict(dict)
        oracle: dict[str, float | None] = {}
        per: dict[str, dict[str, int]] = {}
        seconds: dict[str, list[float]] = defaultdict(list)
        for a in rows:
            label = py_label(a["label"])
            by_query[a["query_id"]][a["annotator"]] = label
            oracle[a["query_id"]] = a["oracle"]
            s = per.setdefault(
                a["annotator"], {"answers": 0, "left": 0, "right": 0, "equal": 0, "skip": 0}
            )
            s["answers"] += 1
            s[{0.0: "left", 1.0: "right", 0.5: "equal"}.get(label, "skip")] += 1
            seconds[a["annotator"]].append(a["answered_at"] - a["shown_at"])
        names = sorted(per)

        def rate(pairs: list[tuple[float, float]]) -> Agreement:
            n = len(pairs)
            return {"n": n, "agreement": (sum(_same(x, y) for x, y in pairs) / n) if n else None}

        annotators: dict[str, AnnotatorStats] = {}
        for name in names:
            s = per[name]
            vs_oracle = [
                (lab[name], o)
                for q, lab in by_query.items()
                if name in lab and not math.isnan(lab[name]) and (o := oracle[q]) is not None
            ]
            vs_others = [
                (lab[name], lab[other])
                for lab in by_query.values()
                if name in lab
                for other in lab
                if other != name and not math.isnan(lab[name]) and not math.isnan(lab[other])
            ]
            took = seconds[name]
            annotators[name] = {
                "answers": s["answers"],
                "left": s["left"],
                "right": s["right"],
                "equal": s["equal"],
                "skip": s["skip"],
                "median_seconds": float(np.median(took)) if took else None,
                "oracle": rate(vs_oracle),
                "others": rate(vs_others),
            }
        pairwise: dict[str, Agreement] = {}
        for i, one in enumerate(names):
            for two in names[i + 1 :]:
                both = [
                    (lab[one], lab[two])
                    for lab in by_query.values()
                    if one in lab
                    and two in lab
                    and not math.isnan(lab[one])
                    and not math.isnan(lab[two])
                ]
                if both:
                    pairwise[f"{one} | {two}"] = rate(both)
        all_pairs = [
            (lab[x], lab[y])
            for lab in by_query.values()
            for x in lab
            for y in lab
            if x < y and not math.isnan(lab[x]) and not math.isnan(lab[y])
        ]
        aggregated = [
            (aggregate_labels(list(lab.values()), aggregate), oracle[q])
            for q, lab in by_query.items()
        ]
        vs_oracle = [(x, o) for x, o in aggregated if not math.isnan(x) and o is not None]
        out: StoreStats = {
            "progress": self.counts(),
            "annotators": annotators,
            "pairwise": pairwise,
            "inter_annotator": rate(all_pairs),
            "aggregate": aggregate,
            "aggregated_vs_oracle": rate(vs_oracle),
            "oracle_known": sum(o is not None for o in oracle.values()),
            "vlm_human": self._vlm_human(by_query, oracle, aggregate),
        }
        return dict(out)

    def _vlm_human(
        self,
        by_query: dict[str, dict[str, float]],
        oracle: dict[str, float | None],
        aggregate: str,
    ) -> VlmHumanStats:
        """VLM suggestions against people's answers, per pair (people's answers aggregated).

        ``agreement``: among pairs where the VLM's suggestion and the people's label are both
        decided (not unsure / skip), the fraction with the same label; ``n`` is that count.
        """
        suggested = {s.query_id: s for s in self.suggestions()}
        answered = [q for q in suggested if q in by_query]
        both: list[tuple[float, float]] = []
        vlm_vs_oracle: list[tuple[float, float]] = []
        for q, s in suggested.items():
            o = oracle[q] if q in oracle else self._oracle_of(q)
            if not math.isnan(s.label) and o is not None:
                vlm_vs_oracle.append((s.label, o))
            if q in by_query and not math.isnan(s.label):
                person = aggregate_labels(list(by_query[q].values()), aggregate)
                if not math.isnan(person):
                    both.append((s.label, person))
        agree = sum(_same(x, y) for x, y in both)
        return {
            "suggestions": len(suggested),
            "unsure": sum(math.isnan(s.label) for s in suggested.values()),
            "answered_by_people": len(answered),
            "both_decided": len(both),
            "agree": agree,
            "agreement": agree / len(both) if both else None,
            "vlm_vs_oracle": {
                "n": len(vlm_vs_oracle),
                "agreement": (
                    sum(_same(x, y) for x, y in vlm_vs_oracle) / len(vlm_vs_oracle)
                    if vlm_vs_oracle
                    else None
                ),
            },
        }

    def _oracle_of(self, query_id: str) -> float | None:
        row = self._conn().execute("SELECT oracle FROM queries WHERE id=?", (query_id,)).fetchone()
        return None if row is None or row["oracle"] is None else float(row["oracle"])
