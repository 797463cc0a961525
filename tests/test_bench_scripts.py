"""The benchmark scripts' plumbing, with real (tiny) runs: bench_peers and bench_online reuse
finished runs and rerun crashed ones; bench_sim's GPU path on a machine without CUDA."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def load_script(name: str):  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(ROOT / "scripts"))  # as when the script runs: _bench beside it
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the path of a machine without CUDA")
def test_bench_sim_gpu_path_without_cuda() -> None:
    proc = subprocess.run(
        [sys.executable, "scripts/bench_sim.py", "--gpu"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines() == [
        "bench_sim --gpu: no CUDA device here (torch.cuda.is_available() is False); skipped"
    ]


def test_bench_peers_reuses_finished_runs(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    bench = load_script("bench_peers")
    args = ["--only", "SB3 PPO-true", "--seeds", "0", "--steps", "256", "--out", str(tmp_path)]
    result = tmp_path / "SB3_PPO-true_seed0.json"
    result.write_text('{"variant": "SB3 PPO-true", "seed": 0, "wall')  # a killed run's half
    (tmp_path / "SB3_PPO-true_seed0.log").write_text("a killed run's log")
    bench.main(args)  # reruns it, from scratch
    record = json.loads(result.read_text())
    assert record["settings"]["steps"] == 256 and record["wall_s"] > 0
    assert "killed" not in (tmp_path / "SB3_PPO-true_seed0.log").read_text()
    stamp = result.stat().st_mtime_ns
    capsys.readouterr()
    bench.main(args)  # finished: read back
    assert result.stat().st_mtime_ns == stamp
    assert f"reusing {result}" in capsys.readouterr().out
    assert f"{record['wall_s']:.0f}" in (tmp_path / "table.md").read_text()
    runs = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert [(r["variant"], r["seed"], r["wall_s"]) for r in runs] == [
        ("SB3 PPO-true", 0, record["wall_s"])
    ]
    with pytest.raises(SystemExit, match="other settings"):  # never mixed into one table
        bench.main([*args[:-4], "--steps", "512", "--out", str(tmp_path)])
    assert result.stat().st_mtime_ns == stamp


def test_bench_online_reuses_finished_runs(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    bench = load_script("bench_online")
    args = ["--only", "SAC-true", "--steps", "300", "--seeds", "0", "--out", str(tmp_path)]
    run_dir = tmp_path / "HalfCheetah-v5_300" / "SAC-true_seed0"
    (run_dir / "tb").mkdir(parents=True)  # what a killed run leaves: no summary.json
    (run_dir / "tb" / "events.out.tfevents.0.stale").write_text("stale")
    bench.main(args)  # reruns it, from scratch
    assert not (run_dir / "tb" / "events.out.tfevents.0.stale").exists()
    summary = run_dir / "summary.json"
    stamp = summary.stat().st_mtime_ns
    capsys.readouterr()
    bench.main(args)  # finished: read back
    assert summary.stat().st_mtime_ns == stamp
    assert f"reusing {run_dir}" in capsys.readouterr().out
    runs = json.loads((tmp_path / "HalfCheetah-v5_300" / "runs.json").read_text())
    (run,) = runs["SAC-true"]
    assert run["seed"] == 0 and run["curve"] == {"300": run["eval_true_return_mean"]}
    with pytest.raises(SystemExit, match="other settings"):
        bench.main([*args, "--labels", "10", "--eval-every", "100"])


def test_replay_image_rounds_scores_each_setting(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "scripts/replay_image_rounds.py",
            "--rounds",
            "2",
            "--per-round",
            "40",
            "--report",
            "1",
            "2",
            "--pool-steps",
            "1500",
            "--set",
            "cap2:max_updates=2",
            "px64:image_size=64,max_updates=1",
            "--out",
            str(tmp_path),
        ],  # fmt: skip
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "replay_image_rounds.json").read_text())["results"]
    assert set(results) == {"cap2", "px64"}
    for name, cap in (("cap2", 2), ("px64", 1)):
        rows = results[name]
        assert [r["labels"] for r in rows] == [40, 80]
        assert 0 < rows[0]["updates"] <= cap and rows[1]["updates"] <= 2 * cap
        for r in rows:
            assert 0.0 <= r["held_out_accuracy"] <= 1.0 and -1 <= r["near_target_spearman"] <= 1
    assert "| cap2 |" in proc.stdout and "| px64 |" in proc.stdout
