"""Sweeps on real launchers: a 2x2 multirun through submitit_local, then the summary table."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = [
    "total_timesteps=300",
    "max_feedback=8",
    "progress_bar=false",
    "feedback.every=100",
    "feedback.first_at=100",
    "feedback.queries_per_round=4",
    "feedback.segment_length=10",
    "algo.unsupervised_steps=100",
    "algo.kwargs.learning_starts=50",
    "algo.kwargs.buffer_size=1000",
    "algo.kwargs.batch_size=32",
    "eval.n_episodes=1",
    "eval.random_episodes=1",
    "eval.test_queries=10",
    "reward.max_epochs=2",
    "video.enabled=false",
]


@pytest.mark.parametrize(
    "launcher", ["submitit_local", pytest.param("joblib", marks=pytest.mark.slow)]
)
def test_two_by_two_sweep_produces_four_summaries_and_a_table(launcher, tmp_path):
    pytest.importorskip(
        "hydra_plugins.hydra_submitit_launcher"
        if launcher == "submitit_local"
        else "hydra_plugins.hydra_joblib_launcher"
    )
    sweep = tmp_path / "sweep"
    extra = (
        ["hydra.launcher.timeout_min=10", "hydra.launcher.cpus_per_task=1"]
        if launcher == "submitit_local"
        else ["hydra.launcher.n_jobs=2"]
    )
    env = {**os.environ, "MUJOCO_GL": "egl", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pbrl.train",
            "-m",
            "+exp=quickstart",
            "seed=0,1",
            "teacher=oracle,mistake",
            f"hydra/launcher={launcher}",
            f"hydra.sweep.dir={sweep}",
            *extra,
            *TINY,
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summaries = sorted(sweep.rglob("summary.json"))
    assert len(summaries) == 4, out.stdout[-2000:]

    table = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "sweep_summary.py"), str(sweep)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert table.returncode == 0, table.stderr
    rows = list(csv.DictReader(open(sweep / "summary.csv")))
    assert len(rows) == 4
    assert {r["seed"] for r in rows} == {"0", "1"}
    md = (sweep / "summary.md").read_text()
    assert md.count("teacher=oracle") >= 1 and md.count("teacher=mistake") >= 1
    assert (sweep / "summary.png").stat().st_size > 1000
