"""HERON benchmark: a ranking of reward factors vs Bradley–Terry on the true return vs the
true (engineered) reward, same algorithm, same label budget.

    python scripts/bench_heron.py --tasks mountaincar hopper --seeds 0 1 2 [--out DIR]
        [--steps mountaincar=20000 hopper=200000] [--frames]

Variants per task (every run is one ``python -m pbrl.train`` process, read back from its
``summary.json``; finished runs are reused, so the benchmark resumes):

* ``HERON``: ``+exp=heron_<task>`` (the task's ranking, ``conf/teacher/heron_<task>.yaml``);
* ``BT true return``: the same run with ``teacher=oracle`` (partial-return labels);
* ``true reward``: the same algorithm on the env's reward, no labels;
* Hopper also runs a second ranking, ``ctrl > survive > forward`` ("save energy first"),
  the steerability check: its factor totals should move towards less control cost.

MountainCarContinuous runs PEBBLE/SAC (the exp's RL Zoo settings). Hopper runs PrefPPO / PPO
(8 envs): SAC at 200k steps takes ~1.5 h per run on a 2-core machine, PPO ~5 min.

Prints one markdown table per task: true return, MountainCar's goal-reached fraction (episodes
the env ended at the flag), each reward factor's mean episode total, labels used, the fraction
of pairs decided at each ranking level, and wall time. ``--frames`` writes, per variant, a
strip of frames from its evaluation video (``<out>/frames/<task>_<variant>_seed<s>.png``).
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

DEFAULT_STEPS = {"mountaincar": 20_000, "hopper": 200_000}
PPO = ["n_envs=8", "feedback.first_at=4096"]


def variants(task: str) -> dict[str, list[str]]:
    if task == "mountaincar":
        return {
            "HERON": [],
            "BT true return": ["teacher=oracle"],
            "true reward": ["algo=sac", "max_feedback=0"],
        }
    if task == "hopper":
        return {
            "HERON": ["algo=prefppo", *PPO],
            "HERON ctrl first": [
                "algo=prefppo",
                *PPO,
                "teacher.ranking=[ctrl,survive,forward]",
                "teacher.sigma=[0.5,1.0,1.0]",
            ],
            "BT true return": ["algo=prefppo", *PPO, "teacher=oracle"],
            "true reward": ["algo=ppo", "n_envs=8", "max_feedback=0"],
        }
    raise SystemExit(f"unknown task {task!r}: use mountaincar or hopper")


def run(task: str, name: str, overrides: list[str], seed: int, steps: int, out: Path) -> dict:
    run_dir = out / "runs" / f"{task}_{name.replace(' ', '_')}_seed{seed}"
    summary = run_dir / "summary.json"
    if summary.exists():
        return json.loads(summary.read_text())
    cmd = [
        sys.executable,
        "-m",
        "pbrl.train",
        f"+exp=heron_{task}",
        f"seed={seed}",
        f"total_timesteps={steps}",
        f"hydra.run.dir={run_dir}",
        "progress_bar=false",
        "video.queries_per_round=0",
        f"video.root={out / 'videos'}",
        "eval.n_episodes=10",
        f"checkpoint_every={10 * steps}",
        *overrides,
    ]
    print(f"[bench] {task} {name} seed {seed}: {' '.join(cmd[3:])}", flush=True)
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    with (out / "bench.log").open("a") as log:
        subprocess.run(cmd, check=True, cwd=ROOT, env=env, stdout=log, stderr=log)
    return json.loads(summary.read_text())


def frame_strip(video: str, path: Path, n: int = 6) -> None:
    """``n`` evenly spaced frames of an evaluation video, side by side, as a PNG."""
    import imageio.v3 as iio

    frames = iio.imread(video)
    picks = frames[np.linspace(0, len(frames) - 1, n).astype(int)]
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, np.concatenate(list(picks), axis=1))


def fmt(values: list[float], spec: str = ".0f") -> str:
    vals = [v for v in values if v is not None and np.isfinite(v)]
    if not vals:
        return "-"
    per = " / ".join(format(v, spec) for v in vals)
    return f"{per} (mean {format(float(np.mean(vals)), spec)})" if len(vals) > 1 else per


def table(task: str, results: dict[str, list[dict]]) -> str:
    factors = sorted(
        {f for runs in results.values() for r in runs for f in r["eval_factor_totals"]}
    )
    head = [
        "variant",
        "true return",
        *(f"{f} total" for f in factors),
        "labels",
        "decided by level",
        "wall s",
    ]
    if task == "mountaincar":
        head.insert(2, "goal reached")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, runs in results.items():
        cells = [name, fmt([r["eval_true_return_mean"] for r in runs])]
        if task == "mountaincar":
            cells.append(fmt([r["eval_terminated_fraction"] for r in runs], ".2f"))
        cells += [fmt([r["eval_factor_totals"].get(f) for r in runs], ".1f") for f in factors]
        cells.append(fmt([r["num_labels"] for r in runs]))
        levels: dict[str, list[float]] = {}
        for r in runs:
            for level, frac in ((r["teacher"] or {}).get("decided_by_level") or {}).items():
                levels.setdefault(level, []).append(frac)
        cells.append(
            ", ".join(f"{k} {np.mean(v):.2f}" for k, v in levels.items()) if levels else "-"
        )
        cells.append(fmt([r["wall_time_s"] for r in runs]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=["mountaincar", "hopper"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", nargs="*", default=[], help="task=steps, e.g. hopper=100000")
    p.add_argument("--only", nargs="*", default=None, help="variant names to run")
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench_heron")
    p.add_argument("--frames", action="store_true", help="write eval-video frame strips")
    args = p.parse_args()
    steps = dict(DEFAULT_STEPS)
    for item in args.steps:
        task, _, n = item.partition("=")
        steps[task] = int(n)
    args.out.mkdir(parents=True, exist_ok=True)
    report = []
    for task in args.tasks:
        results: dict[str, list[dict]] = {}
        for seed in args.seeds:  # interleaved: every variant of a seed before the next seed
            for name, overrides in variants(task).items():
                if args.only and name not in args.only:
                    continue
                r = run(task, name, overrides, seed, steps[task], args.out)
                results.setdefault(name, []).append(r)
                if args.frames and r.get("videos"):
                    strip = args.out / "frames" / f"{task}_{name.replace(' ', '_')}_seed{seed}.png"
                    video = Path(r["videos"][0])
                    frame_strip(str(video if video.is_absolute() else ROOT / video), strip)
        text = f"### {task}, {steps[task]} steps, seeds {args.seeds}\n\n{table(task, results)}\n"
        print(text, flush=True)
        report.append(text)
    (args.out / "table.md").write_text("\n".join(report))


if __name__ == "__main__":
    main()
