"""Scripted preference labels for an offline dataset (Uni-RLHF protocol, B-Pref noise).

``N`` queries of two ``L``-step segments, each cut from a single episode of the dataset,
labeled by a B-Pref scripted teacher on the summed true reward, 0.5 where the returns differ
by at most the tie threshold (Uni-RLHF on MuJoCo: 2000 queries, L = 200, threshold 10).
Written as a pbrl preference dataset (``.npz``, segments with qpos/qvel so the labeling
page can re-render them) and, with ``--index-csv``, as the index form a labeling tool or a
person can edit (columns ``start_1,start_2,length,label,annotator``).

    python scripts/make_preferences.py --dataset pbrl/hopper/medium-replay-v0 --out labels.npz
    python -m pbrl.train +exp=offline_cpl_hopper dataset.preferences=labels.npz
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pbrl.data.offline import load_dataset, save_preference_index, scripted_preferences  # noqa: E402
from pbrl.data.preferences import oracle_labels  # noqa: E402
from pbrl.teachers import ScriptedTeacher  # noqa: E402


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--dataset", required=True, help="Minari dataset id")
    p.add_argument("--out", type=Path, required=True, help="output .npz")
    p.add_argument("--num-queries", type=int, default=2000)
    p.add_argument("--segment-length", type=int, default=200)
    p.add_argument(
        "--tie-threshold",
        type=float,
        default=10.0,
        help="label 0.5 when |R1 - R2| <= this (0: off)",
    )
    p.add_argument("--beta", type=float, default=math.inf, help="B-Pref rationality (inf: oracle)")
    p.add_argument("--gamma", type=float, default=1.0, help="B-Pref myopia")
    p.add_argument("--eps-mistake", type=float, default=0.0)
    p.add_argument("--eps-skip", type=float, default=0.0)
    p.add_argument("--eps-equal", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--index-csv", type=Path, default=None, help="also write the index form here")
    a = p.parse_args(argv)
    data = load_dataset(a.dataset)
    rng = np.random.default_rng(a.seed)
    teacher = ScriptedTeacher(
        beta=a.beta,
        gamma=a.gamma,
        eps_mistake=a.eps_mistake,
        eps_skip=a.eps_skip,
        eps_equal=a.eps_equal,
        rng=np.random.default_rng(rng.integers(2**63)),
    )
    prefs = scripted_preferences(
        data, a.num_queries, a.segment_length, teacher, rng, a.tie_threshold
    )
    path = prefs.save(a.out)
    labels = prefs.labels
    decided = ~np.isnan(labels)
    agree = (
        float(np.mean(labels[decided] == oracle_labels(prefs.queries)[decided]))
        if decided.any()
        else float("nan")
    )
    print(
        f"{path}: {len(prefs)} queries of {a.segment_length} steps from {a.dataset}; "
        f"ties {np.mean(labels == 0.5):.1%}, skipped {np.mean(~decided):.1%}, "
        f"agreement with the noise-free oracle {agree:.1%}"
    )
    if a.index_csv:
        print(f"index form: {save_preference_index(a.index_csv, prefs, data)}")
    return path


if __name__ == "__main__":
    main()
