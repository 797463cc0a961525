"""RAPL's policy table: PPO on each learned visual reward against PPO on the true reward.

    python scripts/bench_rapl_policy.py [--seeds 0 1 2] [--steps 150000] [--out DIR]
    python scripts/bench_rapl_policy.py --quick          # seed 0, 60k steps: the same table

The one-block sweep task (``env=sweep``), the RAPL run's PPO settings for every row
(``algo=rapl``: 16 envs, n_steps 200, batch 100; the true-reward row is
``scripts/sweep_true_ppo.py``, the same PPO on the env's reward). The learned rewards come
from the same ``max_feedback`` oracle-ranked triplets per seed (``+exp=rapl_sweep``):

* ``RAPL``: the aligned encoder's OT reward against 5 scripted-expert demonstrations;
* ``RLHF linear``: the paper's baseline, the same frozen backbone with a linear scalar head
  (``reward=rlhf_linear``);
* ``RLHF CNN``: pbrl's CNN image reward trained end to end on the same pairs
  (``reward=image`` with the benchmark's settings).

Columns: success rate and true return of the deterministic policy over 20 evaluation
episodes, the fraction of those episodes that end with the agent itself in the goal zone
(learned rewards only: a reward that pays for the agent going up shows here), the reward's
within-trajectory and across-video Spearman on the run's held-out
videos, wall time. Every run is one process; a finished run (its ``summary.json``) is reused
when the bench is rerun, so a table can be completed in parts. The table is printed and
written to ``<out>/policy.md``, the per-seed rows and means to ``<out>/policy.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench  # noqa: E402

IMAGE = [
    "reward=image",
    "reward.n_members=1",
    "reward.image_size=64",
    "reward.batch_size=16",
    "reward.max_updates=150",
]
VARIANTS: dict[str, list[str] | None] = {
    "true reward": None,  # scripts/sweep_true_ppo.py
    "RAPL": [],
    "RLHF linear": ["reward=rlhf_linear"],
    "RLHF CNN": IMAGE,
}
COLUMNS = (
    "success",
    "true return",
    "agent in zone",
    "within Spearman",
    "across Spearman",
    "wall s",
)


def agent_in_zone(run_dir: Path) -> float:
    """Of the run's final policy (its checkpoint), the fraction of evaluation episodes that
    end with the *agent* in the goal zone (``sweep_true_ppo.evaluate``)."""
    import gymnasium as gym
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize
    from sweep_true_ppo import evaluate

    model = PPO.load(run_dir / "checkpoint" / "model.zip", device="cpu")
    norm = VecNormalize.load(
        str(run_dir / "checkpoint" / "vecnormalize.pkl"),
        DummyVecEnv([lambda: gym.make("pbrl/Sweep-v0", n_objects=1)]),
    )
    return evaluate(model, norm)["agent_in_zone"]


def run(name: str, seed: int, steps: int, out: Path) -> dict[str, float | None]:
    """One run's row, from its result file (the run is made first when it is missing)."""
    run_dir = out / "runs" / f"{_bench.slug(name)}_{steps}_seed{seed}"
    overrides = VARIANTS[name]
    result = run_dir / ("true.json" if overrides is None else "summary.json")
    if _bench.read_json(result) is None:
        _bench.clear(run_dir)
        run_dir.mkdir(parents=True)
        if overrides is None:
            cmd = [
                f"{ROOT}/scripts/sweep_true_ppo.py",
                f"--steps={steps}",
                f"--seed={seed}",
                f"--every={steps}",
                f"--out={result}",
            ]
        else:
            cmd = [
                "-m",
                "pbrl.train",
                "+exp=rapl_sweep",
                f"seed={seed}",
                f"total_timesteps={steps}",
                f"hydra.run.dir={run_dir}",
                "progress_bar=false",
                "video.enabled=false",
                "eval.n_episodes=20",
                *overrides,
            ]
        print(f"[bench] {name} | seed {seed}: {' '.join(cmd)}", flush=True)
        env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
        with (run_dir / "bench.log").open("a") as log:
            started = time.time()
            subprocess.run(
                [sys.executable, *cmd], check=True, cwd=ROOT, env=env, stdout=log, stderr=log
            )
            wall = time.time() - started
        if overrides is None:  # the script's own figure excludes start-up; keep the process's
            data = json.loads(result.read_text())
            _bench.write_json(result, {**data, "wall_time_s": wall})
    else:
        print(f"[bench] reusing {result}", flush=True)
    r = json.loads(result.read_text())
    if overrides is None:
        last = r["evaluations"][-1]
        return {
            "success": last["success"],
            "true return": last["true_return"],
            "agent in zone": None,
            "within Spearman": None,
            "across Spearman": None,
            "wall s": r["wall_time_s"],
        }
    return {
        "success": r.get("eval_success_rate"),
        "true return": r["eval_true_return_mean"],
        "agent in zone": agent_in_zone(run_dir),
        "within Spearman": r.get("heldout_within_spearman"),
        "across Spearman": r.get("heldout_spearman"),
        "wall s": r["wall_time_s"],
    }


def fmt(v: float | None) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=None, help="PPO steps per run (150k; quick 60k)")
    p.add_argument("--quick", action="store_true", help="seed 0, 60k steps")
    p.add_argument("--only", nargs="*", default=None, help="variant names to run")
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench_rapl_policy")
    args = p.parse_args()
    seeds = [0] if args.quick else args.seeds
    steps = args.steps or (60_000 if args.quick else 150_000)
    chosen = [n for n in VARIANTS if not args.only or n in args.only]
    done = {(n, s): run(n, s, steps, args.out) for s in seeds for n in chosen}  # seed by seed
    rows = {n: [(s, done[n, s]) for s in seeds] for n in chosen}

    lines = ["| reward | seed | " + " | ".join(COLUMNS) + " |", "|" + "---|" * (len(COLUMNS) + 2)]
    means: dict[str, dict[str, float]] = {}
    for name, runs in rows.items():
        for seed, row in runs:
            lines.append(f"| {name} | {seed} | " + " | ".join(fmt(row[c]) for c in COLUMNS) + " |")
        values = {c: [v for _, row in runs if (v := row[c]) is not None] for c in COLUMNS}
        means[name] = {c: float(np.mean(vals)) for c, vals in values.items() if vals}
        if len(runs) > 1:
            cells = [
                f"{np.mean(vals):.2f} ± {np.std(vals):.2f}" if vals else "-"
                for vals in values.values()
            ]
            lines.append(f"| **{name}** | mean ± std | " + " | ".join(cells) + " |")
    checks = []
    true, rapl, lin = (means.get(n, {}) for n in ("true reward", "RAPL", "RLHF linear"))
    if "success" in true:
        ok = true["success"] >= 0.8
        checks.append(
            f"- true-reward PPO success >= 0.8: {true['success']:.2f} -> {'met' if ok else 'NOT met'}"
        )
    if "success" in rapl and "success" in lin:
        ok, tie = rapl["success"] >= lin["success"], rapl["success"] == lin["success"] == 0
        checks.append(
            f"- RAPL's policy success >= RLHF linear's: {rapl['success']:.2f} vs "
            f"{lin['success']:.2f} -> "
            + ("not shown (neither succeeds)" if tie else "met" if ok else "NOT met")
        )
    text = f"### sweep (one block), PPO {steps} steps, seeds {seeds}\n\n" + "\n".join(
        lines + [""] + checks
    )
    print(text, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "policy.md").write_text(text + "\n")
    _bench.write_json(
        args.out / "policy.json",
        {
            "steps": steps,
            "seeds": seeds,
            "runs": {n: [{"seed": s, **row} for s, row in runs] for n, runs in rows.items()},
            "means": means,
        },
    )


if __name__ == "__main__":
    main()
