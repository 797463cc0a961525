"""The image reward's online rounds, replayed offline: gradient steps against quality.

What ``vlm_pebble_reacher`` does each feedback round, with the labels of a scripted oracle on
single frames of Reacher-v5 (control cost off: the reward is minus the fingertip's distance to
the target): 100 new pairs of random-policy states, then one ``ImageRewardEnsemble.fit`` on
every label so far. After chosen rounds each setting's model is scored on

* held-out accuracy: 500 fresh pairs of random-policy states (ties left out);
* near-target Spearman: the rank correlation of the reward with minus the distance over the
  states within 0.1 of the target (the states whose order decides whether the policy reaches
  it; docs/image_reward.md);

and the seconds the fits took. One process, one thread, settings one after another.

    python scripts/replay_image_rounds.py [--rounds 14] [--report 3 7 14]
        [--set u150:max_updates=150 u50:max_updates=50 px64u50:image_size=64,max_updates=50]
        [--out D]

writes ``D/replay_image_rounds.json`` (each setting's rows) beside the printed table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import torch
import yaml
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _bench import parse_setting  # noqa: E402

from pbrl.data import PreferenceDataset  # noqa: E402
from pbrl.data.preferences import oracle_labels  # noqa: E402
from pbrl.envs.spec import EnvSpec  # noqa: E402
from pbrl.online.wrappers import random_rollout_pool  # noqa: E402
from pbrl.rewards.image import ImageRewardConfig, ImageRewardEnsemble  # noqa: E402

ENV = "Reacher-v5"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=14, help="rounds of --per-round labels")
    p.add_argument("--per-round", type=int, default=100)
    p.add_argument("--report", type=int, nargs="+", default=[3, 7, 14])
    p.add_argument("--pool-steps", type=int, default=20000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--set",
        nargs="+",
        default=["u150:max_updates=150", "u50:max_updates=50", "u30:max_updates=30"],
    )
    p.add_argument("--out", type=Path, default=Path("outputs/replay_image_rounds"))
    args = p.parse_args()
    torch.set_num_threads(1)
    camera = yaml.safe_load((ROOT / "conf" / "env" / "reacher.yaml").read_text()).get("camera")
    spec = EnvSpec(ENV, {"reward_control_weight": 0.0}, camera or {})
    rng = np.random.default_rng(args.seed)
    # the pool's true reward is the distance term alone: the env's control cost is off
    pool = random_rollout_pool(ENV, args.pool_steps, args.seed, spec.kwargs)
    train = pool.sample_queries(args.rounds * args.per_round, 1, rng)
    labels = oracle_labels(train)
    test = pool.sample_queries(500, 1, rng)
    held_out = PreferenceDataset(test, oracle_labels(test))
    near = pool.sample_segments(4000, 1, rng)
    near = near[np.flatnonzero(-near.true_reward[:, 0] < 0.1)]
    decided = int(np.isin(held_out.labels, (0.0, 1.0)).sum())
    print(f"{len(near)} near-target states, {decided} decided test pairs", flush=True)

    results: dict[str, list[dict[str, float]]] = {}
    for text in args.set:
        name, values = parse_setting(text)
        torch.manual_seed(args.seed)
        model = ImageRewardEnsemble(
            train.first.obs.shape[-1], train.first.act.shape[-1],
            ImageRewardConfig(**values), env=spec,
        )  # fmt: skip
        fit_rng = np.random.default_rng(args.seed)
        rows, fit_s, updates = [], 0.0, 0
        for r in range(1, args.rounds + 1):
            k = r * args.per_round
            t0 = time.perf_counter()
            info = model.fit(PreferenceDataset(train[:k], labels[:k]), fit_rng)
            fit_s += time.perf_counter() - t0
            updates += int(info["updates"])
            if r not in args.report:
                continue
            acc = model.accuracy(held_out)  # ties left out
            with torch.no_grad():
                score = model.state_rewards(near.qpos[:, 1], near.qvel[:, 1])
            rho = float(spearmanr(score, near.true_reward[:, 0]).statistic)
            rows.append({"round": r, "labels": k, "held_out_accuracy": acc,
                         "near_target_spearman": rho, "fit_s": fit_s, "updates": updates})  # fmt: skip
            print(f"{name} round {r}: accuracy {acc:.3f}, near-target Spearman {rho:.3f}, "
                  f"{updates} updates, fit {fit_s:.1f} s", flush=True)  # fmt: skip
        results[name] = rows
        model.close()

    head = "| setting | " + " | ".join(f"after {r} rounds (acc / Spearman)" for r in args.report)
    print("\n" + head + " | gradient steps | fit s |")
    print("|---" * (len(args.report) + 3) + "|")
    for name, rows in results.items():
        cells = " | ".join(
            f"{x['held_out_accuracy']:.3f} / {x['near_target_spearman']:.3f}" for x in rows
        )
        print(f"| {name} | {cells} | {rows[-1]['updates']} | {rows[-1]['fit_s']:.0f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "replay_image_rounds.json").write_text(
        json.dumps({"settings": args.set, "seed": args.seed, "results": results}, indent=2)
    )


if __name__ == "__main__":
    main()
