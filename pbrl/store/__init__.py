"""The SQLite label store shared by the trainer, the labeling page and ``pbrl.label``.

``from pbrl.store import LabelStore``; the package's modules hold one concern each
(:mod:`~pbrl.store.core` says which).
"""

from pbrl.store.codec import decode_pair, encode_pair, oracle_label
from pbrl.store.core import LabelStore
from pbrl.store.datasets import AGGREGATES, Aggregate, aggregate_labels
from pbrl.store.errors import (
    BadInput,
    Conflict,
    LeaseExpired,
    NotAStore,
    NotFound,
    NotWritable,
    StoreError,
    check_writable,
)
from pbrl.store.records import (
    ANNOTATOR,
    QUERY_ID,
    RUN_NAME,
    SUGGESTION_WORDS,
    Answer,
    Lease,
    Ranking,
    RunInfo,
    Suggestion,
    check_annotator,
    factor_name,
    parse_label,
)
from pbrl.store.schema import SCHEMA_VERSION
from pbrl.store.triplets import (
    MEMBERS,
    PAIR_NAMES,
    RANKS_HELP,
    labels_ranks,
    ranking_labels,
    triplet_of,
    triplet_pairs,
)

__all__ = [
    "AGGREGATES",
    "ANNOTATOR",
    "MEMBERS",
    "PAIR_NAMES",
    "QUERY_ID",
    "RANKS_HELP",
    "RUN_NAME",
    "SCHEMA_VERSION",
    "SUGGESTION_WORDS",
    "Aggregate",
    "Answer",
    "BadInput",
    "Conflict",
    "LabelStore",
    "Lease",
    "LeaseExpired",
    "NotAStore",
    "NotFound",
    "NotWritable",
    "Ranking",
    "RunInfo",
    "StoreError",
    "Suggestion",
    "aggregate_labels",
    "check_annotator",
    "check_writable",
    "decode_pair",
    "encode_pair",
    "factor_name",
    "labels_ranks",
    "oracle_label",
    "parse_label",
    "ranking_labels",
    "triplet_of",
    "triplet_pairs",
]
