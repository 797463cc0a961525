"""Fault injection: a training run killed (SIGKILL) at the worst moments resumes to an intact
end — every counter checked: env steps, labels == queries <= max_feedback, the feedback
schedule, logs, videos — and damaged checkpoints or bad settings fail with one line.

Kills come from ``PBRL_FAULT=<point>:<n>`` (``pbrl.errors.fault_point``): the process
SIGKILLs itself the n-th time it reaches the point, so each test hits the moment it names.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pbrl.data import PreferenceDataset

# Reacher (50-step episodes): rounds of 10 queries at steps 400, 800, ..., 2000 (50 queries),
# checkpoints every 600 steps, 2400 steps in all.
TOTAL, EVERY, FIRST, BATCH, MAX_FEEDBACK = 2400, 400, 400, 10, 50
ARGS = [
    "+exp=quickstart",
    f"total_timesteps={TOTAL}",
    f"max_feedback={MAX_FEEDBACK}",
    f"feedback.every={EVERY}",
    f"feedback.first_at={FIRST}",
    f"feedback.queries_per_round={BATCH}",
    "feedback.segment_length=25",
    "algo.unsupervised_steps=400",
    "algo.kwargs.learning_starts=200",
    "algo.kwargs.batch_size=32",
    "algo.kwargs.policy_kwargs.net_arch=[32,32]",
    "reward.hidden=32",
    "reward.max_epochs=5",
    "checkpoint_every=600",
    "eval.n_episodes=1",
    "eval.random_episodes=1",
    "eval.test_queries=20",
    "video.enabled=false",
    "progress_bar=false",
]


def train(*args: str, cwd: Path, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "MUJOCO_GL": "egl", "OMP_NUM_THREADS": "1"}
    env.pop("PBRL_FAULT", None)
    if fault:
        env["PBRL_FAULT"] = fault
    return subprocess.run(
        [sys.executable, "-m", "pbrl.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def killed(out: subprocess.CompletedProcess) -> bool:
    return out.returncode == -signal.SIGKILL


def check_finished(run: Path, resumed_from: str = "checkpoint") -> dict:
    """The end state every interrupted-and-resumed run must reach."""
    summary = json.loads((run / "summary.json").read_text())
    assert summary["total_timesteps"] == TOTAL
    assert summary["resumed"] and summary["resumed_from"] == resumed_from
    labels, meta = PreferenceDataset.load_with_meta(run / "checkpoint" / "preferences.npz")
    fb = meta["feedback"]
    assert len(labels) == fb["queries"] == summary["num_queries"] == MAX_FEEDBACK
    assert summary["num_labels"] == len(labels.trainable)
    assert len(set(labels.queries.query_id)) == len(labels)  # no pair asked twice
    assert fb["rounds"] == MAX_FEEDBACK // BATCH
    assert (fb["next_at"] - FIRST) % EVERY == 0  # the schedule stayed on its grid
    assert not (run / "checkpoint.new").exists() and not (run / "checkpoint.old").exists()
    return summary


def csv_steps(run: Path) -> list[int]:
    with (run / "tb" / "progress.csv").open() as fh:
        return [
            int(float(r["time/total_timesteps"]))
            for r in csv.DictReader(fh)
            if r.get("time/total_timesteps")
        ]


def tensorboard_steps(run: Path, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


def test_kill_during_a_feedback_round_resumes_without_asking_twice(tmp_path):
    """Killed with round 3's answers in hand but not saved: the resume asks round 3 again
    (its counters were not saved either) and ends at exactly max_feedback."""
    run = tmp_path / "run"
    out = train(*ARGS, f"hydra.run.dir={run}", cwd=tmp_path, fault="feedback_round:3")
    assert killed(out), out.stderr[-2000:]
    assert f"dir {run}" in out.stderr + out.stdout and "starting fresh" in out.stderr + out.stdout
    before, meta = PreferenceDataset.load_with_meta(run / "checkpoint" / "preferences.npz")
    assert len(before) == meta["feedback"]["queries"] == 2 * BATCH
    out = train(f"resume={run}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    said = out.stderr + out.stdout  # announced first: the checkpoint's step, the labels held
    assert re.search(rf"resuming from step [1-9]\d*, labels {len(before.trainable)}\b", said)
    check_finished(run)
    after = PreferenceDataset.load(run / "checkpoint" / "preferences.npz")
    np.testing.assert_array_equal(after.queries.query_id[: len(before)], before.queries.query_id)
    assert not (tmp_path / "outputs").exists()  # the resume wrote no stray run directory
    assert "summary:" in (run / "train.log").read_text()  # logged into the run's own folder


def test_kill_while_a_checkpoint_is_written_keeps_the_previous_one(tmp_path):
    """Killed with the 2nd checkpoint half written: the 1st (step 600) is intact, the
    labels are newer; the resume refits on them, keeps the logs' earlier rows without
    repeating a step, and lists the videos made before the kill."""
    run = tmp_path / "run"
    args = [
        *ARGS,
        "video.enabled=true",
        "video.width=48",
        "video.height=48",
        "video.queries_per_round=1",
    ]
    out = train(*args, f"hydra.run.dir={run}", cwd=tmp_path, fault="checkpoint_write:2")
    assert killed(out), out.stderr[-2000:]
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert state["num_timesteps"] == 600 and (run / "checkpoint.new").exists()
    rows_before = csv_steps(run)
    assert rows_before and max(rows_before) > 600  # the killed run logged past its checkpoint
    out = train(f"resume={run}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = check_finished(run)
    steps = csv_steps(run)
    assert steps == sorted(set(steps)), "a step was logged twice"
    assert [s for s in rows_before if s <= 600] == [s for s in steps if s <= 600]
    tb_steps = tensorboard_steps(run, "rollout/ep_rew_mean")
    assert tb_steps == sorted(set(tb_steps)), "TensorBoard holds a step twice"
    rounds = sorted(Path(v).name for v in summary["videos"] if "round" in Path(v).name)
    assert [r[:8] for r in rounds] == [f"round{i:03d}" for i in range(1, 6)]


def test_kill_between_the_renames_of_a_checkpoint_switch(tmp_path):
    run = tmp_path / "run"
    out = train(*ARGS, f"hydra.run.dir={run}", cwd=tmp_path, fault="checkpoint_renamed:2")
    assert killed(out), out.stderr[-2000:]
    assert not (run / "checkpoint").exists()  # the worst moment: neither in place
    out = train(f"resume={run}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    check_finished(run)


def test_kill_before_the_first_checkpoint_resumes_from_the_labels(tmp_path):
    run = tmp_path / "run"
    args = [*ARGS, "checkpoint_every=100000"]
    out = train(*args, f"hydra.run.dir={run}", cwd=tmp_path, fault="feedback_saved:2")
    assert killed(out), out.stderr[-2000:]
    assert not (run / "checkpoint" / "state.json").exists()
    out = train(f"resume={run}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "resuming from labels only" in out.stdout + out.stderr
    check_finished(run, resumed_from="labels")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("finished")
    out = train(*ARGS, f"hydra.run.dir={root / 'run'}", "total_timesteps=1200", cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    return root / "run"


@pytest.mark.parametrize(
    "name",
    [
        "state.json",
        "pool.npz",
        "replay_buffer.pkl",
        "reward_model.pt",
        "preferences.npz",
        "model.zip",
    ],
)
@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_checkpoint_file_is_named_and_nothing_is_rewritten(
    finished_run, name, damage, tmp_path
):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    path = run / "checkpoint" / name
    blob = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(blob[: len(blob) // 2])
    else:
        blob[len(blob) // 2] ^= 0xFF
        path.write_bytes(bytes(blob))
    config = (run / "config.yaml").read_bytes()
    out = train(f"resume={run}", "total_timesteps=1800", cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("pbrl.train: error:")]
    assert len(errors) == 1 and name in errors[0], out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert (run / "config.yaml").read_bytes() == config


@pytest.mark.parametrize(
    "args,needle",
    [
        ([], "no experiment given"),
        (["+exp=quickstart", "total_timestep=100"], "did you mean total_timesteps?"),
        (["+exp=quickstart", "n_envs=0"], "n_envs=0 must be positive"),
        (["+exp=quickstart", "device=tpu"], "device='tpu' is unknown"),
        (["+exp=quickstart", "seed=abc"], "seed='abc' must be an integer"),
        (["+exp=quickstart", "+reward.n_member=3"], "did you mean n_members?"),
        (["+exp=quickstart", "feedback.segment_length=0"], "segment_length=0 must be positive"),
        (["+exp=quickstart", "feedback.segment_length=80"], "longer than an episode"),
        (
            ["+exp=quickstart", "feedback.queries_per_round=0"],
            "queries_per_round=0 must be positive",
        ),
        (["+exp=quickstart", "+feedback.batch_size=5"], "is now feedback.queries_per_round"),
        (["+exp=quickstart", "feedback.every=-5"], "every=-5 must be positive"),
        (["+exp=quickstart", "checkpoint_every=0"], "checkpoint_every=0 must be positive"),
        (["+exp=quickstart", "max_feedback=0"], "max_feedback=0"),
        (["+exp=pebble_halfcheetah", "total_timesteps=3000"], "no feedback round fits"),
        (["+exp=human_quickstart", "teacher.store=/dev/null/labels.sqlite"], "teacher.store:"),
    ],
)
def test_bad_settings_fail_in_one_line_and_leave_no_run_directory(args, needle, tmp_path):
    out = train(*args, cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("pbrl.train: error:") and needle in lines[-1], out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "outputs").exists()


def test_cuda_without_a_gpu_is_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    for exp in ("quickstart", "offline_tiny"):
        out = train(f"+exp={exp}", "device=cuda", cwd=tmp_path)
        assert out.returncode == 2 and "no CUDA device" in out.stderr, out.stderr[-2000:]


EPISODIC = [
    "+exp=rapl_sweep",
    "reward=image",
    "reward.n_members=1",
    "reward.max_epochs=2",
    "total_timesteps=150",
    "n_envs=1",
    "max_feedback=2",
    "checkpoint_every=50",
    "episodic.pool_episodes=4",
    "episodic.heldout_episodes=3",
    "algo.kwargs.n_steps=50",
    "algo.kwargs.batch_size=50",
    "algo.kwargs.n_epochs=1",
    "eval.n_episodes=1",
    "eval.random_episodes=1",
    "video.enabled=false",
    "progress_bar=false",
]


def test_the_episodic_recipe_resumes_after_a_kill(tmp_path):
    """RAPL's recipe killed while writing its third checkpoint (steps 0, 50, then 100): the
    resume keeps the ranked triplets and the aligned reward (not asked or fit again), says
    where it resumes, and trains PPO from step 50 to the end."""
    run = tmp_path / "run"
    out = train(*EPISODIC, f"hydra.run.dir={run}", cwd=tmp_path, fault="checkpoint_write:3")
    assert killed(out), out.stderr[-2000:]
    labels = PreferenceDataset.load(run / "preferences.npz")
    before = tmp_path / "reward_before.pt"
    before.write_bytes((run / "checkpoint" / "reward_model.pt").read_bytes())
    out = train(f"resume={run}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "resuming from step 50, labels" in out.stderr + out.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed"] and summary["total_timesteps"] == 150
    again = PreferenceDataset.load(run / "preferences.npz")
    np.testing.assert_array_equal(again.queries.query_id, labels.queries.query_id)
    from pbrl.rewards import load_reward_model

    old, new = load_reward_model(before), load_reward_model(run / "checkpoint" / "reward_model.pt")
    for a, b in zip(old.state_dict().values(), new.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # the reward stayed frozen: not fit again
    assert csv_steps(run)[-1] == 150
