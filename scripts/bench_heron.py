"""HERON benchmark, one table per command (docs/heron.md):

    python scripts/bench_heron.py mountaincar [--seeds 0 1 2 3 4] [--out DIR] [--quick]
    python scripts/bench_heron.py hopper      [--steps 300000]
    python scripts/bench_heron.py steer

Every run is one ``python -m pbrl.train`` process read back from its ``summary.json``;
finished runs are reused, so a rerun resumes. Each table prints per-seed rows and mean ± std
per variant, and is written to ``<out>/<table>.md`` with ``<out>/heron.json`` beside it (every
table measured so far, per seed). ``--quick`` runs seed 0 at shorter budgets (MountainCar 20k
steps, Hopper 50k): the same table, as a check of the wiring, in minutes. ``--jobs`` runs
that many runs at a time (default 2, one per core); BT with HERON's comparisons waits for
HERON's run of its seed, whose comparison count it copies.

* ``mountaincar`` (SAC, RL Zoo settings, 50k steps): the true reward; HERON as the official
  code runs it (``+exp=heron_mountaincar``: transition pairs from the replay buffer); BT on
  partial return over transition pairs, as many comparisons as HERON induced; BT on partial
  return with 400 labels of 50-step segments; HERON with the ranking reversed
  (action > goal); pbrl's variant in which the learned reward is a small per-step cost
  (``+exp=heron_mountaincar_costs``), with the official and the reversed ranking. Columns: goal rate over 20 evaluation episodes, true return, mean action²
  per step, comparisons used, wall time.
* ``hopper`` (PPO, 8 envs, official ranking forward > survive > ctrl, σ (0.1, 0.2, 0.5) over
  the buffer): the true reward; HERON with the learned reward driving the policy (the paper);
  HERON with the learned reward as the value target only (the official code); BT on partial
  return with 1000 segment labels.
* ``steer`` (Hopper, PPO): the official ranking against ``ctrl > survive > forward``: the
  factor totals should move the ranked way.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402

STEPS = {"mountaincar": 50_000, "hopper": 300_000, "steer": 300_000}
QUICK_STEPS = {"mountaincar": 20_000, "hopper": 50_000, "steer": 50_000}
PPO = ["n_envs=8"]
BT_TRANSITIONS = ["teacher=oracle", "reward=small", "reward.max_epochs=1"]
REVERSED = ["teacher.ranking=[action,goal]", "teacher.sigma=[1.0,0.0]"]
COSTS = "HERON, steps cost (pbrl variant)"
COSTS_REVERSED = "HERON, steps cost, reversed"
# the paper compares trajectories: HERON's labels on 400 segment pairs, as BT gets
SEGMENTS = "HERON, 400 segment labels (paper: trajectories)"
SEGMENTS_REVERSED = "HERON, 400 segment labels, reversed"
SEGMENT_LABELS = [
    "feedback.pairs=segments",
    "max_feedback=400",
    "feedback.every=2000",
    "feedback.queries_per_round=50",
]


def variants(table: str) -> dict[str, tuple[str, list[str]]]:
    """Variant name -> (exp, overrides)."""
    if table == "mountaincar":
        return {
            "true reward": ("sac_true_reward_mountaincar", []),
            "HERON (official)": ("heron_mountaincar", []),
            "BT, same comparisons": ("heron_mountaincar", BT_TRANSITIONS),
            "BT, 400 segment labels": (
                "heron_mountaincar",
                ["teacher=oracle", "reward=small", *SEGMENT_LABELS],
            ),
            "HERON reversed (action > goal)": ("heron_mountaincar", REVERSED),
            COSTS: ("heron_mountaincar_costs", []),
            COSTS_REVERSED: ("heron_mountaincar_costs", REVERSED),
            SEGMENTS: ("heron_mountaincar_segments", []),
            SEGMENTS_REVERSED: ("heron_mountaincar_segments", REVERSED),
        }
    if table == "hopper":
        return {
            "true reward": ("heron_hopper", [*PPO, "algo=ppo", "max_feedback=0"]),
            "HERON (paper: reward drives the policy)": ("heron_hopper", PPO),
            "HERON (code: value target only)": (
                "heron_hopper",
                [*PPO, "algo=prefppo_value_target"],
            ),
            "BT, 1000 segment labels": (
                "heron_hopper",
                [*PPO, "teacher=oracle", "reward=small", "feedback.pairs=segments"],
            ),
            "HERON, 1000 segment labels (paper: trajectories)": ("heron_hopper_segments", PPO),
        }
    if table == "steer":
        return {
            "HERON (paper: reward drives the policy)": ("heron_hopper", PPO),  # = hopper's run
            "HERON ctrl > survive > forward": (
                "heron_hopper",
                [*PPO, "teacher.ranking=[ctrl,survive,forward]", "teacher.sigma=[0.5,0.2,0.1]"],
            ),
        }
    raise SystemExit(f"unknown table {table!r}: use mountaincar, hopper or steer")


def run(
    table: str, name: str, exp: str, overrides: list[str], seed: int, steps: int, out: Path
) -> dict[str, Any]:
    task = "mountaincar" if table == "mountaincar" else "hopper"
    run_dir = out / "runs" / f"{task}_{steps}_{_bench.slug(name)}_seed{seed}"
    summary = run_dir / "summary.json"
    if summary.exists():
        return dict(json.loads(summary.read_text()))
    cmd = [
        sys.executable,
        "-m",
        "pbrl.train",
        f"+exp={exp}",
        f"seed={seed}",
        f"total_timesteps={steps}",
        f"hydra.run.dir={run_dir}",
        "progress_bar=false",
        "video.enabled=false",
        f"eval.n_episodes={20 if task == 'mountaincar' else 10}",
        f"checkpoint_every={steps}",
        *overrides,
    ]
    print(f"[bench] {table} | {name} | seed {seed}: {' '.join(cmd[3:])}", flush=True)
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    with (out / "bench.log").open("a") as log:
        subprocess.run(cmd, check=True, cwd=ROOT, env=env, stdout=log, stderr=log)
    return dict(json.loads(summary.read_text()))


def metrics(table: str, r: dict[str, Any]) -> dict[str, float | None]:
    """One run's row: what the table reports."""
    extra = r  # summary.json holds a run's extra fields at the top level
    totals = extra.get("eval_factor_totals") or {}
    pairs = extra.get("transition_pairs")
    row: dict[str, float | None] = {"true return": r["eval_true_return_mean"]}
    if table == "mountaincar":
        length = extra.get("eval_mean_length") or 0
        row["goal rate"] = extra.get("eval_terminated_fraction")
        # the action factor is -0.1 a² per step: mean a² = -10 x its total / episode length
        row["mean action²"] = -10.0 * totals.get("action", 0.0) / length if length else None
    else:
        for f in ("forward", "survive", "ctrl"):
            row[f"{f} total"] = totals.get(f)
    row["comparisons"] = float(pairs["comparisons_induced"] if pairs else r["num_labels"])
    row["wall s"] = r["wall_time_s"]
    return row


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None or not math.isfinite(v) else format(v, spec)


SPECS = {"goal rate": ".2f", "mean action²": ".2g", "true return": ".1f", "comparisons": ".0f"}


def render(table: str, rows: dict[str, list[tuple[int, dict[str, float | None]]]]) -> str:
    cols = list(next(iter(rows.values()))[0][1]) if rows else []
    head = ["variant", "seed", *cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, runs in rows.items():
        for seed, row in runs:
            cells = [fmt(row[c], SPECS.get(c, ".1f")) for c in cols]
            lines.append(f"| {name} | {seed} | " + " | ".join(cells) + " |")
        if len(runs) > 1:
            cells = []
            for c in cols:
                vals = [v for _, row in runs if (v := row[c]) is not None and math.isfinite(v)]
                spec = SPECS.get(c, ".1f")
                cells.append(
                    f"{format(np.mean(vals), spec)} ± {format(np.std(vals), spec)}" if vals else "-"
                )
            lines.append(f"| **{name}** | mean ± std | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(table: str, means: dict[str, dict[str, float]]) -> list[str]:
    """The issue's targets, checked against the means."""
    out: list[str] = []
    if table == "mountaincar":
        true, heron = means.get("true reward", {}), means.get("HERON (official)", {})
        bt, rev = (
            means.get("BT, same comparisons", {}),
            means.get("HERON reversed (action > goal)", {}),
        )
        checks = [
            ("true-reward SAC reaches the flag in >= 80% of episodes", true.get("goal rate"), 0.8),
        ]
        for text, value, target in checks:
            if value is not None:
                ok = value >= target
                out.append(f"- {text}: {value:.2f} -> {'met' if ok else 'NOT met'}")
        if heron and bt:
            ok = heron["goal rate"] >= bt["goal rate"]
            tie = heron["goal rate"] == bt["goal rate"] == 0
            out.append(
                f"- HERON goal rate >= BT's with the same comparisons: {heron['goal rate']:.2f} "
                f"vs {bt['goal rate']:.2f} -> "
                + ("not shown (neither reaches the flag)" if tie else "met" if ok else "NOT met")
            )
        seg, bt400 = means.get(SEGMENTS, {}), means.get("BT, 400 segment labels", {})
        if seg and bt400:
            ok = seg["goal rate"] >= bt400["goal rate"]
            out.append(
                f"- HERON's goal rate on segments >= BT's with the same 400 segment labels: "
                f"{seg['goal rate']:.2f} vs {bt400['goal rate']:.2f} -> {'met' if ok else 'NOT met'}"
            )
        costs, costs_rev = means.get(COSTS, {}), means.get(COSTS_REVERSED, {})
        # each reward setup: ranked near the true reward's goal rate, reversed in the valley
        for name, ranked, rev_name, reversed_ in (
            ("HERON", heron, "reversed ranking", rev),
            (COSTS, costs, COSTS_REVERSED, costs_rev),
            (SEGMENTS, seg, SEGMENTS_REVERSED, means.get(SEGMENTS_REVERSED, {})),
        ):
            if ranked and true:
                target = 0.8 * true["goal rate"]
                ok = ranked["goal rate"] >= target and true["goal rate"] > 0
                out.append(
                    f"- {name} goal rate >= 0.8x the true reward's: {ranked['goal rate']:.2f} vs "
                    f"{target:.2f} -> {'met' if ok else 'NOT met'}"
                )
            if reversed_:
                ok = reversed_["goal rate"] <= 0.1
                out.append(
                    f"- {rev_name} stays in the valley (goal rate <= 0.1): "
                    f"{reversed_['goal rate']:.2f} -> {'met' if ok else 'NOT met'}"
                )
    elif table == "hopper":
        true = means.get("true reward", {}).get("true return")
        for name in (
            "HERON (paper: reward drives the policy)",
            "HERON (code: value target only)",
            "HERON, 1000 segment labels (paper: trajectories)",
        ):
            h = means.get(name, {}).get("true return")
            if true and h is not None:
                out.append(
                    f"- {name} >= 0.9x the true reward's return: {h:.0f} vs {0.9 * true:.0f} "
                    f"({h / true:.2f}x) -> {'met' if h >= 0.9 * true else 'NOT met'}"
                )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("table", choices=["mountaincar", "hopper", "steer"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--steps", type=int, default=None, help="env steps per run")
    p.add_argument("--quick", action="store_true", help="seed 0, shorter budgets")
    p.add_argument("--only", nargs="*", default=None, help="variant names to run")
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench_heron")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (one core each)")
    args = p.parse_args()
    seeds = [0] if args.quick else args.seeds
    steps = args.steps or (QUICK_STEPS if args.quick else STEPS)[args.table]
    args.out.mkdir(parents=True, exist_ok=True)
    chosen = {n: v for n, v in variants(args.table).items() if not args.only or n in args.only}
    results: dict[tuple[str, int], dict[str, Any]] = {}

    def one(name: str, seed: int, extra: tuple[str, ...] = ()) -> None:
        exp, overrides = chosen[name]
        results[name, seed] = run(
            args.table, name, exp, [*overrides, *extra], seed, steps, args.out
        )

    # every variant but BT-with-HERON's-comparisons first (--jobs at a time), then that one
    first = [(n, s) for s in seeds for n in chosen if n != "BT, same comparisons"]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(lambda job: one(*job), first))
    if "BT, same comparisons" in chosen:
        for seed in seeds:
            heron = results.get(("HERON (official)", seed))
            if heron is None:
                continue
            pairs = heron.get("transition_pairs") or {}
            per = math.ceil(pairs["comparisons_induced"] / max(int(pairs["reward_updates"]), 1))
            one("BT, same comparisons", seed, (f"feedback.pairs_per_update={max(per, 1)}",))
    rows: dict[str, list[tuple[int, dict[str, float | None]]]] = {}
    for name in chosen:
        for seed in seeds:
            if (name, seed) in results:
                rows.setdefault(name, []).append((seed, metrics(args.table, results[name, seed])))
    means = {
        name: {
            c: float(np.mean([v for _, row in runs if (v := row[c]) is not None]))
            for c in runs[0][1]
            if any(row[c] is not None for _, row in runs)
        }
        for name, runs in rows.items()
    }
    title = f"### {args.table}, {steps} steps, seeds {seeds}"
    text = f"{title}\n\n{render(args.table, rows)}\n\n" + "\n".join(verdict(args.table, means))
    print(text, flush=True)
    (args.out / f"{args.table}.md").write_text(text + "\n")
    path = args.out / "heron.json"
    saved = json.loads(path.read_text()) if path.exists() else {}
    saved[args.table] = {
        "steps": steps,
        "seeds": seeds,
        "runs": {name: [{"seed": s, **row} for s, row in runs] for name, runs in rows.items()},
        "means": means,
    }
    path.write_text(json.dumps(saved, indent=2))


if __name__ == "__main__":
    main()
