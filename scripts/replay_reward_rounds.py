"""Replay a run's reward-learning rounds offline: gradient steps vs held-out accuracy.

Reads the labels of finished online runs (``<run>/checkpoint/preferences.npz``, in the order
they were collected) and retrains the reward model round by round exactly as the run did
(``--round`` new labels per round, each round a ``fit`` on every label so far), once per
setting. Each run's model is scored on pairs from the *other* runs (other policies' data, so
a harder held-out set than a run's own test queries).

    python scripts/replay_reward_rounds.py RUN_DIR [RUN_DIR ...] [--round 100]
        [--set bpref: cap50:max_updates=50 cap30:max_updates=30]

Prints, per setting: the gradient steps each run took, held-out accuracy per run and its mean,
and the final train accuracy. The reward net is ``reward=small`` (3 x 2 x 64) unless a setting
says otherwise (``hidden=256,n_layers=3``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from _bench import parse_setting

from pbrl.data import PreferenceDataset
from pbrl.rewards.ensemble import RewardEnsemble, RewardModelConfig

BASE = {"hidden": 64, "n_layers": 2}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--round", type=int, default=100, help="labels added per round")
    p.add_argument("--test", type=int, default=600, help="held-out pairs per run")
    p.add_argument(
        "--set",
        nargs="+",
        default=[
            "bpref:",
            "cap100:max_updates=100",
            "cap50:max_updates=50",
            "cap30:max_updates=30",
        ],
    )
    args = p.parse_args()
    if len(args.runs) < 2:
        p.error("give at least two runs: each is tested on the others' pairs")
    torch.set_num_threads(1)
    labels = [PreferenceDataset.load(r / "checkpoint" / "preferences.npz") for r in args.runs]
    obs_dim = labels[0].queries.first.obs.shape[-1]
    act_dim = labels[0].queries.first.act.shape[-1]
    for name, values in map(parse_setting, args.set):
        steps, held_out, train_acc = [], [], []
        for i, train in enumerate(labels):
            rng = np.random.default_rng(0)
            others = PreferenceDataset.concatenate([d for j, d in enumerate(labels) if j != i])
            test = others[rng.choice(len(others), min(args.test, len(others)), replace=False)]
            model = RewardEnsemble(obs_dim, act_dim, RewardModelConfig(**{**BASE, **values}))
            updates = 0
            for k in range(args.round, len(train) + args.round, args.round):
                updates += int(model.fit(train[np.arange(min(k, len(train)))], rng)["updates"])
            steps.append(updates)
            held_out.append(model.accuracy(test))
            train_acc.append(model.accuracy(train))
        print(
            f"{name:>8}: gradient steps {steps} (mean {np.mean(steps):.0f}), held-out accuracy "
            f"{np.round(held_out, 3).tolist()} (mean {np.mean(held_out):.3f}), "
            f"train accuracy {np.mean(train_acc):.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
