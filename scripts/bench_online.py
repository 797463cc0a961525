"""Online benchmark: SAC on the true reward vs PEBBLE (oracle and "mistake 0.1" teachers).

Every run goes through ``python -m pbrl.train`` (one child process each, run one after the
other so they do not compete for cores) and is read back from its ``summary.json``.

    python scripts/bench_online.py [--steps 50000] [--seeds 0 1 2] [--labels 1000] [--env HalfCheetah-v5]
    python scripts/bench_online.py --quick     # seed 0, 20k steps, SAC-true and the best PEBBLE

Prints a markdown table: final true return (mean ± std over seeds), its ratio to SAC-true
measured from a random policy's return (``(R - R_random) / (R_SAC - R_random)``, so negative
early-training returns compare sensibly), wall time and its ratio to SAC-true, peak memory; then the feedback-efficiency curve (true
return at every ``--eval-every`` steps, per seed) and each run's row, and writes them as
CSV/markdown/JSON under --out.

Finished runs are reused (``scripts/_bench.py``): a run whose ``summary.json`` exists and
whose Hydra overrides equal this command's is read back, a run that crashed or was killed
is rerun from scratch, and one made with other settings stops the script. So a table can be
completed seed by seed: ``--seeds 0``, later ``--seeds 1``, then ``--seeds 0 1 2`` only reads.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BEST = "PEBBLE-oracle-linear-unsup0-norm"  # the best measured at 50k (docs/performance.md)


def variants(steps: int, labels: int) -> dict[str, list[str]]:
    def pebble_with(unsup: int, rounds: int = 10, first_at: int | None = None) -> list[str]:
        first_at = unsup if first_at is None else first_at
        every = max(1000, (steps - first_at) // (rounds + 1))
        return [
            "algo=pebble",
            f"max_feedback={labels}",
            f"algo.unsupervised_steps={unsup}",
            f"feedback.every={every}",
            f"feedback.queries_per_round={max(1, labels // rounds)}",
            f"feedback.first_at={first_at}",
        ]

    pebble = pebble_with(min(9000, steps // 10))
    return {
        "SAC-true": ["algo=sac", "max_feedback=0"],
        "PEBBLE-oracle": [*pebble, "teacher=oracle"],
        "PEBBLE-mistake0.1": [*pebble, "teacher=mistake"],
        # before the faster default: B-Pref's 3 x 256 reward ensemble
        "PEBBLE-oracle-bpref-net": [*pebble, "teacher=oracle", "reward=ensemble"],
        # per-step rewards without B-Pref's tanh (which saturates beyond the labeled speeds)
        "PEBBLE-oracle-linear": [*pebble, "teacher=oracle", "reward.output=linear"],
        # linear, no state-entropy phase (so no critic reset): the first query at SAC's
        # learning_starts; B-Pref's 9k unsupervised steps are ~1% of its 1M-step runs, 10% here
        "PEBBLE-oracle-linear-unsup0": [
            *pebble_with(0, first_at=1000),
            "teacher=oracle",
            "reward.output=linear",
        ],
        # the same in 20 rounds of 50 labels (the reward follows the policy's new states sooner)
        "PEBBLE-oracle-linear-unsup0-rounds20": [
            *pebble_with(0, rounds=20, first_at=1000),
            "teacher=oracle",
            "reward.output=linear",
        ],
        # no pre-training, the reward standardized after each round (reward.normalize): the
        # raw scale grows ~14x over the rounds, so SAC's entropy term outweighs it early
        "PEBBLE-oracle-linear-unsup0-norm": [
            *pebble_with(0, first_at=1000),
            "teacher=oracle",
            "reward.output=linear",
            "reward.normalize=true",
        ],
        # B-Pref's settings (tanh output, 5k state-entropy steps, critic reset) + normalize
        "PEBBLE-oracle-norm": [*pebble, "teacher=oracle", "reward.normalize=true"],
        # PEBBLE's SAC starts its entropy temperature at 0.1 (SB3's "auto" starts at 1.0)
        "PEBBLE-oracle-temp0.1": [*pebble, "teacher=oracle", "+algo.kwargs.ent_coef=auto_0.1"],
        # a shorter state-entropy phase: B-Pref's 9k steps are ~1% of its 1M-step runs
        "PEBBLE-oracle-linear-unsup2k": [
            *pebble_with(min(2000, steps // 10)),
            "teacher=oracle",
            "reward.output=linear",
        ],
        # queries cut from the last 20k steps only (B-Pref keeps its last 100 episodes: 100k)
        "PEBBLE-oracle-linear-pool20k": [
            *pebble,
            "teacher=oracle",
            "reward.output=linear",
            "feedback.pool_size=20000",
        ],
    }


def run(
    name: str,
    overrides: list[str],
    out: Path,
    seed: int,
    env_id: str,
    steps: int,
    eval_every: int,
) -> dict:
    """The run's ``summary.json`` (reused when finished with these overrides), plus its
    evaluation curve as ``curve``: ``{env step: true return}``."""
    run_dir = out / f"{name}_seed{seed}"
    settings = [
        "+exp=pebble_halfcheetah",
        f"env.id={env_id}",
        f"seed={seed}",
        f"total_timesteps={steps}",
        "progress_bar=false",
        "video.queries_per_round=0",
        "eval.n_episodes=5",
        f"checkpoint_every={10 * steps}",
        f"algo.kwargs.buffer_size={steps}",
        "video.enabled=false",
        f"eval.every={eval_every}",
        *overrides,
    ]
    summary = _bench.read_json(run_dir / "summary.json")
    hydra_overrides = run_dir / ".hydra" / "overrides.yaml"  # what Hydra saved of the command
    stored = yaml.safe_load(hydra_overrides.read_text()) if hydra_overrides.exists() else None
    if not _bench.finished(summary, settings, stored, run_dir):
        _bench.clear(run_dir)  # a crashed or killed run starts again from scratch
        cmd = [sys.executable, "-m", "pbrl.train", f"hydra.run.dir={run_dir}", *settings]
        print(f"[bench] {name} seed {seed}: {' '.join(cmd[2:])}", flush=True)
        env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
        subprocess.run(cmd, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
        summary = json.loads((run_dir / "summary.json").read_text())
    assert summary is not None
    return {**summary, "seed": seed, "curve": curve(run_dir, eval_every, summary)}


def curve(run_dir: Path, every: int, summary: dict) -> dict[int, float]:
    """True return at each evaluation during training, from the run's TensorBoard log, and
    the final one from its summary. SB3 writes a logged value at its next log dump (SAC:
    every 4 episodes), so a value logged at step s is the evaluation made at
    ``s // every * every`` (evaluations are ``every`` >= one dump interval apart)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points: dict[int, float] = {}
    for events in sorted((run_dir / "tb").glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if "eval/true_return" in acc.Tags()["scalars"]:
            for e in acc.Scalars("eval/true_return"):
                if every > 0 and e.step // every * every > 0:
                    points[e.step // every * every] = float(e.value)
    points[int(summary["total_timesteps"])] = float(summary["eval_true_return_mean"])
    return dict(sorted(points.items()))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=None, help="env steps per run (50k; quick 20k)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2 (quick: 0)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="seed 0, 20k steps, SAC-true and the best PEBBLE setting measured "
        f"({BEST}) unless --only says otherwise (~10 min on one core): the same tables",
    )
    p.add_argument("--labels", type=int, default=1000, help="max_feedback for PEBBLE")
    p.add_argument("--env", default="HalfCheetah-v5")
    p.add_argument("--only", nargs="*", help="subset of variants to run")
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench_online")
    p.add_argument(
        "--eval-every",
        type=int,
        default=None,
        help="env steps between evaluations during training (the feedback-efficiency curve); "
        "default steps // 5",
    )
    args = p.parse_args(argv)
    args.steps = args.steps or (20_000 if args.quick else 50_000)
    args.seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    if args.quick and not args.only:
        args.only = ["SAC-true", BEST]
    eval_every = args.eval_every if args.eval_every is not None else args.steps // 5

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
                    eval_every,
                )
            )

    base = results.get("SAC-true")
    base_ret = np.mean([r["eval_true_return_mean"] for r in base]) if base else float("nan")
    all_runs = [r for runs in results.values() for r in runs]
    random_ret = float(np.mean([r["random_true_return_mean"] for r in all_runs]))
    base_time = np.mean([r["wall_time_s"] for r in base]) if base else float("nan")
    header = (
        "| variant | seeds | labels | true return | return / SAC-true's | ratio to SAC-true "
        "(from random) | wall time s | wall-time ratio | reward learning s | peak RSS MB | "
        "reward-model test acc |"
    )
    lines = [
        f"{args.env}, {args.steps} steps per run; random policy return {random_ret:.1f}",
        "",
        header,
        "|" + "---|" * 11,
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
            "return_over_sac": ret.mean() / base_ret,
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
            f"{row['return_over_sac']:.2f} | {row['return_ratio']:.2f} | {row['wall_s']:.0f} | {row['wall_ratio']:.2f} | "
            f"{row['reward_learning_s']:.0f} | "
            f"{row['peak_rss_mb']:.0f} | {row['test_acc']:.3f} |"
        )
    lines += per_seed(results) + efficiency(results)
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
    _bench.write_json(out / "runs.json", results)


def per_seed(results: dict[str, list[dict]]) -> list[str]:
    """One row per run; wall-time ratio against SAC-true of the same seed."""
    sac = {r["seed"]: r for r in results.get("SAC-true", [])}
    lines = [
        "",
        "| variant | seed | true return | wall time s | over SAC-true (same seed) | "
        "reward learning s | test acc |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        for r in runs:
            base = sac.get(r["seed"])
            ratio = f"{r['wall_time_s'] / base['wall_time_s']:.2f}x" if base else "-"
            acc = r["reward_model_test_accuracy"]
            lines.append(
                f"| {name} | {r['seed']} | {r['eval_true_return_mean']:.1f} | "
                f"{r['wall_time_s']:.0f} | {ratio} | {r.get('reward_learning_s') or 0:.0f} | "
                f"{'-' if acc is None else format(acc, '.3f')} |"
            )
    return lines


def efficiency(results: dict[str, list[dict]]) -> list[str]:
    """The feedback-efficiency curve: true return at each evaluation step, mean over seeds
    (per seed in brackets)."""
    steps = sorted({s for runs in results.values() for r in runs for s in r["curve"]})
    lines = [
        "",
        "| variant | " + " | ".join(f"return at {s // 1000}k" for s in steps) + " |",
        "|---|" + "---|" * len(steps),
    ]
    for name, runs in results.items():
        cells = []
        for s in steps:
            vals = [r["curve"][s] for r in runs if s in r["curve"]]
            each = " / ".join(f"{v:.0f}" for v in vals)
            cells.append(f"{np.mean(vals):.0f} ({each})" if vals else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


if __name__ == "__main__":
    main()
