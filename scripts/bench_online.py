"""Online benchmark: SAC on the true reward vs PEBBLE (oracle and "mistake 0.1" teachers).

Every run goes through ``python -m pbrl.train`` (one child process each, run one after the
other so they do not compete for cores) and is read back from its ``summary.json``.

    python scripts/bench_online.py --steps 50000 --seeds 0 1 [--labels 1000] [--env HalfCheetah-v5]

Prints a markdown table: final true return (mean ± std over seeds), its ratio to SAC-true
measured from a random policy's return (``(R - R_random) / (R_SAC - R_random)``, so negative
early-training returns compare sensibly), wall time and its ratio to SAC-true, peak memory;
and writes it as CSV/markdown under --out. Finished runs are reused, so it resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def variants(steps: int, labels: int) -> dict[str, list[str]]:
    unsup = min(9000, steps // 10)
    rounds = 10
    every = max(1000, (steps - unsup) // (rounds + 1))
    pebble = [
        "algo=pebble",
        f"max_feedback={labels}",
        f"algo.unsupervised_steps={unsup}",
        f"feedback.every={every}",
        f"feedback.batch_size={max(1, labels // rounds)}",
        f"feedback.first_at={unsup}",
    ]
    return {
        "SAC-true": ["algo=sac", "max_feedback=0"],
        "PEBBLE-oracle": [*pebble, "teacher=oracle"],
        "PEBBLE-mistake0.1": [*pebble, "teacher=mistake"],
        # before the faster default: B-Pref's 3 x 256 reward ensemble
        "PEBBLE-oracle-bpref-net": [*pebble, "teacher=oracle", "reward=ensemble"],
    }


def run(name: str, overrides: list[str], out: Path, seed: int, env_id: str, steps: int) -> dict:
    run_dir = out / f"{name}_seed{seed}"
    summary = run_dir / "summary.json"
    if summary.exists():  # resumable benchmark: finished runs are reused
        return json.loads(summary.read_text())
    cmd = [
        sys.executable,
        "-m",
        "pbrl.train",
        "+exp=pebble_halfcheetah",
        f"env.id={env_id}",
        f"seed={seed}",
        f"total_timesteps={steps}",
        f"hydra.run.dir={run_dir}",
        "progress_bar=false",
        "video.queries_per_round=0",
        "eval.n_episodes=5",
        f"checkpoint_every={10 * steps}",
        f"algo.kwargs.buffer_size={steps}",
        *overrides,
    ]
    print(f"[bench] {name} seed {seed}: {' '.join(cmd[2:])}", flush=True)
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    subprocess.run(cmd, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    return json.loads(summary.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=50_000, help="env steps per run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--labels", type=int, default=1000, help="max_feedback for PEBBLE")
    p.add_argument("--env", default="HalfCheetah-v5")
    p.add_argument("--only", nargs="*", help="subset of variants to run")
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench_online")
    args = p.parse_args()

    results: dict[str, list[dict]] = {}
    chosen = {
        k: v
        for k, v in variants(args.steps, args.labels).items()
        if not args.only or k in args.only
    }
    for seed in args.seeds:  # interleaved: every variant of a seed before the next seed
        for name, overrides in chosen.items():
            results.setdefault(name, []).append(
                run(
                    name,
                    overrides,
                    args.out / f"{args.env}_{args.steps}",
                    seed,
                    args.env,
                    args.steps,
                )
            )

    base = results.get("SAC-true")
    base_ret = np.mean([r["eval_true_return_mean"] for r in base]) if base else float("nan")
    all_runs = [r for runs in results.values() for r in runs]
    random_ret = float(np.mean([r["random_true_return_mean"] for r in all_runs]))
    base_time = np.mean([r["wall_time_s"] for r in base]) if base else float("nan")
    header = (
        "| variant | seeds | labels | true return | ratio to SAC-true (from random) | wall time s | "
        "wall-time ratio | reward learning s | peak RSS MB | reward-model test acc |"
    )
    lines = [
        f"{args.env}, {args.steps} steps per run; random policy return {random_ret:.1f}",
        "",
        header,
        "|" + "---|" * 10,
    ]
    rows = []
    for name, runs in results.items():
        ret = np.array([r["eval_true_return_mean"] for r in runs])
        wall = np.array([r["wall_time_s"] for r in runs])
        acc = [r["reward_model_test_accuracy"] for r in runs if r["reward_model_test_accuracy"]]
        row = {
            "variant": name,
            "seeds": len(runs),
            "labels": int(np.mean([r["num_labels"] for r in runs])),
            "return_mean": ret.mean(),
            "return_std": ret.std(),
            "return_ratio": (ret.mean() - random_ret) / (base_ret - random_ret),
            "wall_s": wall.mean(),
            "wall_ratio": wall.mean() / base_time,
            "reward_learning_s": float(np.mean([r.get("reward_learning_s") or 0.0 for r in runs])),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "test_acc": float(np.mean(acc)) if acc else float("nan"),
        }
        rows.append(row)
        lines.append(
            f"| {name} | {row['seeds']} | {row['labels']} | {ret.mean():.1f} ± {ret.std():.1f} | "
            f"{row['return_ratio']:.2f} | {row['wall_s']:.0f} | {row['wall_ratio']:.2f} | "
            f"{row['reward_learning_s']:.0f} | "
            f"{row['peak_rss_mb']:.0f} | {row['test_acc']:.3f} |"
        )
    table = "\n".join(lines)
    print(table)
    out = args.out / f"{args.env}_{args.steps}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table + "\n")
    import csv

    with open(out / "table.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
