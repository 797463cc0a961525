"""Offline preference-based RL benchmark: method x dataset, normalized score over seeds.

Every run is ``python -m pbrl.train +exp=offline_<method>_hopper dataset=<name> env=<robot>``
with the shared small budget below, so the table measures exactly what the experiment
configs run. IQL on the true reward (the oracle) runs in the same sweep. Preference methods
with the same seed see the same scripted labels; DTR reuses the reward ensemble trained for
preference IQL with the same labels and seed (both specify the same MLP ensemble).

    MINARI_DATASETS_PATH=... python scripts/bench_offline.py --out bench_offline
    python scripts/bench_offline.py --out bench_offline --collect   # table from finished runs
    python scripts/bench_offline.py --quick --out bench_offline_quick  # minutes: wall times

Runs whose ``summary.json`` exists are skipped, so an interrupted benchmark resumes. Wall
time is reported per run and as the ratio to IQL-oracle's on the same dataset, seed and
gradient steps (each run's process wall time, start-up and evaluation included; DTR's reuses
preference IQL's reward model, so neither IQL-oracle's nor DTR's includes reward learning).

``--quick`` checks the wiring and measures the wall-time ratios in minutes: every method on
the tiny Hopper dataset (built into ``<out>/minari`` on first use, seconds of SAC), seed 0,
2,000 gradient steps, 100 queries of 25 steps, 2 evaluation episodes, one run at a time (so
the ratios compare runs under the same load). Its scores mean nothing (the tiny dataset has
no expert).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _bench beside it
import _bench  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("iql_oracle", "bc", "iql", "pt_iql", "cpl", "oppo", "dtr")
LABELS = {
    "iql_oracle": "IQL (true reward, oracle)",
    "bc": "BC",
    "iql": "MLP-ensemble reward + IQL",
    "pt_iql": "Preference Transformer + IQL",
    "cpl": "CPL",
    "oppo": "OPPO",
    "dtr": "DTR",
}


def common_overrides(a: argparse.Namespace) -> list[str]:
    return [
        f"total_timesteps={a.steps}",
        f"max_feedback={a.queries}",
        f"feedback.segment_length={a.segment_length}",
        f"dataset.tie_threshold={a.tie_threshold}",
        f"eval.n_episodes={a.eval_episodes}",
        "eval.every=0",
        f"checkpoint_every={a.steps}",
        "eval.test_queries=500",
        "video.enabled=false",
        "progress_bar=false",
        f"reward.max_epochs={a.reward_epochs}",
    ]


def method_overrides(method: str, a: argparse.Namespace) -> list[str]:
    """Smaller transformers than the papers' (CPU budget); the MLP methods keep theirs."""
    small = {
        "pt_iql": ["reward.embed_dim=64", "reward.n_heads=2"],  # reward.max_epochs: common
        "cpl": ["algo.hidden=256", "algo.batch_size=16", f"algo.bc_steps={a.steps // 5}"],
        "oppo": [
            "algo.encoder_embed=64",
            "algo.encoder_layers=1",
            "algo.encoder_heads=2",
            "algo.policy_embed=64",
            "algo.policy_layers=1",
            "algo.context=10",
            "algo.batch_size=16",
            "algo.dataset_segments=16",
        ],
        "dtr": [
            "algo.embed_dim=64",
            "algo.n_layers=1",
            "algo.n_heads=1",
            "algo.context=10",
            "algo.batch_size=32",
            "algo.critic_layers=2",
        ],
    }
    return small.get(method, [])


def robot(dataset: str) -> str:
    return "hopper" if dataset == "tiny" else dataset.split("_")[0]


QUICK = {
    "datasets": ["tiny"],
    "seeds": [0],
    "steps": 2000,
    "queries": 100,
    "segment_length": 25,
    "tie_threshold": 0.5,  # conf/dataset/tiny.yaml's
    "eval_episodes": 2,
    "jobs": 1,
}


def tiny_dataset(out: Path) -> None:
    """The tiny Hopper medium-replay dataset in ``<out>/minari`` (built once, seconds)."""
    store = out / "minari"
    os.environ["MINARI_DATASETS_PATH"] = str(store)  # the runs inherit it
    if (store / "pbrl-tiny" / "hopper" / "medium-replay-v0").exists():
        return
    make = _bench.make_dataset()
    cfg = make.parse_args(
        ["--preset", "tiny", "--namespace", "pbrl-tiny", "--env", "hopper"]
        + ["--kinds", "medium-replay"]
    )
    make.build(cfg)


def run_one(method: str, dataset: str, seed: int, a: argparse.Namespace, out: Path) -> Path:
    run_dir = out / dataset / method / f"seed{seed}"
    if (run_dir / "summary.json").exists():
        return run_dir
    if method == "dtr":  # reuse the labels and reward ensemble of preference IQL
        src = out / dataset / "iql" / f"seed{seed}"
        if (src / "checkpoint" / "reward_model.pt").exists():
            (run_dir / "checkpoint").mkdir(parents=True, exist_ok=True)
            shutil.copy(src / "preferences.npz", run_dir / "preferences.npz")
            shutil.copy(
                src / "checkpoint" / "reward_model.pt", run_dir / "checkpoint" / "reward_model.pt"
            )
    cmd = [
        sys.executable,
        "-m",
        "pbrl.train",
        f"+exp=offline_{method}_hopper",
        f"env={robot(dataset)}",
        f"dataset={dataset}",
        f"seed={seed}",
        f"hydra.run.dir={run_dir}",
        *common_overrides(a),
        *method_overrides(method, a),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(run_dir / "log.txt", "w") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    status = (
        "ok" if proc.returncode == 0 else f"FAILED ({proc.returncode}, see {run_dir / 'log.txt'})"
    )
    print(
        f"{time.strftime('%H:%M:%S')} {dataset:24s} {method:10s} seed {seed}: {status} "
        f"in {time.time() - t0:.0f} s",
        flush=True,
    )
    return run_dir


def collect(out: Path, datasets: list[str], methods: list[str]) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for d in datasets:
        for m in methods:
            runs = [
                json.loads(p.read_text()) for p in sorted((out / d / m).glob("seed*/summary.json"))
            ]
            if runs:
                rows[f"{d}/{m}"] = runs
    return rows


def oracle_ratio(rows: dict[str, Any], datasets: list[str], method: str) -> float | None:
    """Mean over the runs of ``method`` of its wall time over IQL-oracle's on the same
    dataset and seed (same gradient steps: one benchmark's runs share them)."""
    ratios = []
    for d in datasets:
        oracle = {r["seed"]: r["wall_time_s"] for r in rows.get(f"{d}/iql_oracle", [])}
        ratios += [
            r["wall_time_s"] / oracle[r["seed"]]
            for r in rows.get(f"{d}/{method}", [])
            if r["seed"] in oracle
        ]
    return float(np.mean(ratios)) if ratios else None


def fmt(values: list[float]) -> str:
    return f"{np.mean(values):.1f} ± {np.std(values):.1f}" if values else "—"


def table(out: Path, datasets: list[str], methods: list[str]) -> str:
    rows = collect(out, datasets, methods)
    if not rows:
        return "no finished runs"
    lines = []
    # dataset facts, from any run on it
    lines.append("| dataset | Minari id | transitions | random return | expert return |")
    lines.append("|---|---|---|---|---|")
    for d in datasets:
        any_run = next((r[0] for k, r in rows.items() if k.startswith(d + "/")), None)
        if any_run:
            lines.append(
                f"| {d} | {any_run['dataset_id']} | {any_run['dataset_transitions']} | "
                f"{any_run['dataset_ref_min_score']:.1f} | {any_run['dataset_ref_max_score']:.1f} |"
            )
    for key, title in (
        (
            "eval_normalized_score_mean",
            "normalized score vs the dataset's own random/expert returns",
        ),
        ("eval_d4rl_normalized_score_mean", "normalized score vs D4RL's reference returns"),
    ):
        lines += [
            "",
            f"**{title}** (mean ± std over seeds of each seed's mean over evaluation episodes)",
            "",
        ]
        lines.append(
            "| method | "
            + " | ".join(datasets)
            + " | average | wall time / run | wall time / IQL-oracle's |"
        )
        lines.append("|---|" + "---|" * (len(datasets) + 3))
        for m in methods:
            cells, means, walls = [], [], []
            for d in datasets:
                runs = rows.get(f"{d}/{m}", [])
                vals = [r[key] for r in runs if r.get(key) is not None]
                cells.append(f"{fmt(vals)} (n={len(vals)})" if vals else "—")
                if vals:
                    means.append(float(np.mean(vals)))
                walls += [r["wall_time_s"] for r in runs]
            avg = f"{np.mean(means):.1f}" if len(means) == len(datasets) else "—"
            wall = f"{np.mean(walls) / 60:.1f} min" if walls else "—"
            ratio = oracle_ratio(rows, datasets, m)
            lines.append(
                f"| {LABELS.get(m, m)} | "
                + " | ".join(cells)
                + f" | {avg} | {wall} | {'—' if ratio is None else f'{ratio:.2f}x'} |"
            )
    acc = []
    for m in methods:
        vals = [
            r["reward_model_test_accuracy"]
            for d in datasets
            for r in rows.get(f"{d}/{m}", [])
            if r.get("reward_model_test_accuracy") is not None
        ]
        if vals:
            acc.append(f"{LABELS.get(m, m)}: {np.mean(vals):.3f}")
    if acc:
        lines += [
            "",
            "Reward-model accuracy on 500 held-out oracle-labeled pairs: " + "; ".join(acc),
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--datasets",
        nargs="+",
        default=["hopper_medium_replay", "walker2d_medium_replay", "hopper_medium_expert"],
        help="conf/dataset names",
    )
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=5_000, help="gradient steps per run")
    p.add_argument("--queries", type=int, default=500, help="scripted queries per run")
    p.add_argument("--segment-length", type=int, default=50)
    p.add_argument(
        "--tie-threshold",
        type=float,
        default=2.5,
        help="Uni-RLHF's 10 for 200 steps, scaled to the segment length",
    )
    p.add_argument("--reward-epochs", type=int, default=30, help="cap on reward-model epochs")
    p.add_argument("--eval-episodes", type=int, default=5)
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel (one thread each)")
    p.add_argument("--out", type=Path, default=Path("bench_offline"))
    p.add_argument("--collect", action="store_true", help="only print the table of finished runs")
    p.add_argument(
        "--quick",
        action="store_true",
        help="minutes: every method on the tiny Hopper dataset, seed 0, 2k steps, one at a time",
    )
    a = p.parse_args(argv)
    if a.quick:
        for k, v in QUICK.items():
            setattr(a, k, v)
    a.out.mkdir(parents=True, exist_ok=True)
    if a.quick:
        tiny_dataset(a.out.resolve())
    if not a.collect:
        t0 = time.time()
        # one job per (dataset, seed, method); preference IQL then DTR in one job (shared model)
        jobs: list[list[tuple[str, str, int]]] = []
        for d in a.datasets:
            for s in a.seeds:
                chain = [m for m in ("iql", "dtr") if m in a.methods]
                if chain:
                    jobs.append([(m, d, s) for m in chain])
                jobs += [[(m, d, s)] for m in a.methods if m not in chain]
        # longest first: sequence models, then the rest
        cost = {"dtr": 4, "iql": 4, "oppo": 3, "pt_iql": 2}
        jobs.sort(key=lambda j: -sum(cost.get(m, 1) for m, _, _ in j))
        print(f"{len(jobs)} jobs, {a.jobs} at a time; runs in {a.out}", flush=True)
        with ThreadPoolExecutor(a.jobs) as pool:
            list(pool.map(lambda job: [run_one(m, d, s, a, a.out) for m, d, s in job], jobs))
        print(f"benchmark wall time: {(time.time() - t0) / 60:.1f} min", flush=True)
    text = table(a.out, a.datasets, a.methods)
    (a.out / "results.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
