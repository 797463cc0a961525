"""Segment pairs as blobs: a query's two segments (simulator state included) in one ``.npz``."""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from pbrl.data.preferences import Queries, oracle_labels
from pbrl.data.segments import Segments


def encode_pair(first: Segments, second: Segments) -> bytes:
    buf = io.BytesIO()
    arrays: dict[str, Any] = {**first.to_arrays("first/"), **second.to_arrays("second/")}
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def decode_pair(blob: bytes) -> tuple[Segments, Segments]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    return Segments.from_arrays(arrays, "first/"), Segments.from_arrays(arrays, "second/")


def blob_factor_names(blob: bytes) -> tuple[str, ...]:
    """The reward-factor names of a stored pair, without decoding its arrays."""
    with np.load(io.BytesIO(blob), allow_pickle=False) as f:
        if "first/factor_names" not in f.files:
            return ()
        return tuple(str(x) for x in f["first/factor_names"].tolist())


def oracle_label(first: Segments, second: Segments) -> float | None:
    """The scripted oracle's label for one pair (as the trainer's diagnostics compute it),
    or None when the segments carry no true reward (e.g. an offline dataset without one)."""
    if not (np.any(first.true_reward) or np.any(second.true_reward)):
        return None
    return float(oracle_labels(Queries(first, second))[0])
