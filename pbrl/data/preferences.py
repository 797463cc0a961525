"""Queries, labels and the preference dataset every part of pbrl saves and loads.

Label convention (as in the papers): ``y = 0`` the first segment is preferred, ``y = 1``
the second, ``y = 0.5`` equally good, and ``SKIP`` (NaN) "can't tell": kept in the
dataset, never trained on.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, SupportsFloat, cast

import numpy as np

from pbrl.data.segments import Rows, Segments

SKIP = float("nan")
VALID_LABELS = (0.0, 0.5, 1.0)
FORMAT_VERSION = 1


LABEL_WORDS = {"left": 0.0, "first": 0.0, "right": 1.0, "second": 1.0, "equal": 0.5, "skip": SKIP}


def parse_label(value: object, strict: bool = False) -> float:
    """One label from what a person, a file or a request gives: 0 / 1 / 0.5, ``None`` or NaN
    (skip), or the words left / first / right / second / equal / skip.

    The one label validator of pbrl: :func:`check_labels`, the label store and the offline
    label files all go through it. Raises ``ValueError`` naming the value and the choices.

    ``strict``: a skip must be the word ``skip``; a missing value (``None``, NaN, an empty
    string, "nan", "null") is refused instead of read as a skip. Files leave skipped cells
    empty (the default); people's answers must say what they mean (the label store).
    """
    missing = value is None
    if isinstance(value, str):
        word = value.strip().lower()
        if word in LABEL_WORDS:
            return LABEL_WORDS[word]
        missing = word in ("", "nan", "none", "null")
    if missing:
        if strict:
            raise ValueError(_missing_label(value))
        return SKIP
    choices = STRICT_LABEL_CHOICES if strict else LABEL_CHOICES
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"invalid label {value!r}: {choices}")
    try:
        label = float(
            cast("str | SupportsFloat", value)
        )  # float() itself rejects what is not a number
    except (TypeError, ValueError):
        raise ValueError(f"invalid label {value!r}: {choices}") from None
    if math.isnan(label):
        if strict:
            raise ValueError(_missing_label(value))
        return label
    if label in VALID_LABELS:
        return label
    raise ValueError(f"invalid label {value!r}: {choices}")


def _missing_label(value: object) -> str:
    what = "label is missing (or null)" if value is None else f"label {value!r} is empty"
    return f'{what}: send left, right or equal (0, 1, 0.5), or "skip" to skip the pair'


LABEL_CHOICES = (
    "use 0 (first/left preferred), 1 (second/right preferred), 0.5 (equal) or NaN/null (skip)"
)
STRICT_LABEL_CHOICES = (
    'use left, right or equal (0, 1, 0.5), or "skip" to skip the pair (a skip must be explicit)'
)


def check_labels(labels: np.ndarray) -> np.ndarray:
    """Return ``labels`` as float64, raising a clear error for values other than 0/0.5/1/NaN."""
    labels = np.asarray(labels, dtype=np.float64)
    bad = ~(np.isnan(labels) | np.isin(labels, VALID_LABELS))
    if bad.any():
        raise ValueError(
            f"invalid preference label(s) {np.unique(labels[bad])[:5].tolist()}: {LABEL_CHOICES}"
        )
    return labels


def sigmoid(x: np.ndarray | float) -> np.ndarray:
    """Overflow-free logistic function (the Bradley–Terry link)."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))


def oracle_labels(queries: Queries) -> np.ndarray:
    """Noise-free labels by true (undiscounted) segment return, exact ties 0.5: the B-Pref
    oracle, used for every accuracy diagnostic."""
    r1, r2 = queries.first.returns(), queries.second.returns()
    return np.where(r2 > r1, 1.0, np.where(r1 > r2, 0.0, 0.5))


@dataclass
class Queries:
    """Pairs of segments to be labeled: ``first[i]`` vs ``second[i]``."""

    first: Segments
    second: Segments
    query_id: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=str))

    def __post_init__(self) -> None:
        if len(self.first) != len(self.second):
            raise ValueError("Queries: first and second must hold the same number of segments")
        if len(self.query_id) != len(self.first):
            self.query_id = np.array([uuid.uuid4().hex[:12] for _ in range(len(self.first))])

    def __len__(self) -> int:
        return len(self.first)

    def __getitem__(self, index: Rows) -> Queries:
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        return Queries(self.first[index], self.second[index], self.query_id[index])


@dataclass
class PreferenceDataset:
    """Labeled queries. Saved as one ``.npz`` file (arrays + a JSON header), losslessly."""

    queries: Queries
    labels: np.ndarray  # [N] float: 0, 1, 0.5 or NaN (skip)
    annotator: np.ndarray | None = None  # [N] str, who answered
    answered_at: np.ndarray | None = None  # [N] float, unix time of the answer

    def __post_init__(self) -> None:
        n = len(self.queries)
        self.labels = check_labels(self.labels)
        if self.labels.shape != (n,):
            raise ValueError(f"PreferenceDataset: {len(self.labels)} labels for {n} queries")
        if self.annotator is None:
            self.annotator = np.full(n, "", dtype=str)
        if self.answered_at is None:
            self.answered_at = np.full(n, time.time())

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def trainable(self) -> np.ndarray:
        """Indices of labels a reward model trains on (everything but skips)."""
        return np.flatnonzero(~np.isnan(self.labels))

    def __getitem__(self, index: Rows) -> PreferenceDataset:
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        assert self.annotator is not None and self.answered_at is not None
        return PreferenceDataset(
            self.queries[index], self.labels[index], self.annotator[index], self.answered_at[index]
        )

    @staticmethod
    def concatenate(parts: list[PreferenceDataset]) -> PreferenceDataset:
        parts = [p for p in parts if len(p)]
        if not parts:
            raise ValueError("PreferenceDataset.concatenate needs at least one non-empty part")
        queries = Queries(
            Segments.concatenate([p.queries.first for p in parts]),
            Segments.concatenate([p.queries.second for p in parts]),
            np.concatenate([p.queries.query_id for p in parts]),
        )
        return PreferenceDataset(
            queries,
            np.concatenate([p.labels for p in parts]),
            np.concatenate([_filled(p.annotator) for p in parts]),
            np.concatenate([_filled(p.answered_at) for p in parts]),
        )

    # -- files -------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str], meta: Mapping[str, object] | None = None) -> Path:
        """Write atomically (temp file + rename), so a crash never leaves half a dataset.

        ``meta``: JSON-able values stored in the same file (e.g. the online loop's counters,
        which must never disagree with the labels); read back by :meth:`load_with_meta`."""
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_suffix(".npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        header = {"format": "pbrl.preferences", "version": FORMAT_VERSION, "n": len(self)}
        if meta:
            header["meta"] = meta
        # Any: mypy would check **arrays' values against savez_compressed's allow_pickle: bool
        arrays: dict[str, Any] = {
            **self.queries.first.to_arrays("first/"),
            **self.queries.second.to_arrays("second/"),
            "query_id": self.queries.query_id.astype(str),
            "labels": self.labels,
            "annotator": np.asarray(self.annotator).astype(str),
            "answered_at": np.asarray(self.answered_at, dtype=np.float64),
            "header": np.array(json.dumps(header)),
        }
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.npz")
        os.close(fd)
        try:
            np.savez_compressed(tmp, **arrays)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

    @staticmethod
    def load(path: str | os.PathLike[str]) -> PreferenceDataset:
        return PreferenceDataset.load_with_meta(path)[0]

    @staticmethod
    def load_with_meta(path: str | os.PathLike[str]) -> tuple[PreferenceDataset, dict[str, Any]]:
        """The dataset and the ``meta`` it was saved with ({} if none)."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"preference dataset {path} does not exist")
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
            header = json.loads(str(arrays["header"]))
        except Exception as exc:
            raise ValueError(
                f"{path} is not a pbrl preference dataset (.npz written by "
                f"PreferenceDataset.save): {exc}"
            ) from exc
        if header.get("format") != "pbrl.preferences" or header.get("version", 0) > FORMAT_VERSION:
            raise ValueError(f"{path}: unsupported preference dataset header {header}")
        queries = Queries(
            Segments.from_arrays(arrays, "first/"),
            Segments.from_arrays(arrays, "second/"),
            arrays["query_id"],
        )
        data = PreferenceDataset(
            queries, arrays["labels"], arrays["annotator"], arrays["answered_at"]
        )
        return data, dict(header.get("meta", {}))


def _filled(value: np.ndarray | None) -> np.ndarray:
    """A field ``PreferenceDataset.__post_init__`` fills in (annotator, answered_at)."""
    assert value is not None
    return value
