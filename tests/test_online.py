"""Online loop: relabeling, early termination, every experiment at a tiny budget, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import compose_exp
from hydra import compose, initialize_config_dir

from pbrl.recipes import run as run_config
from pbrl.train import CONF_DIR

EXPS = sorted(p.stem for p in (CONF_DIR / "exp").glob("*.yaml"))


def _runs_unattended_online(name: str) -> bool:
    """Online experiments with a scripted teacher. Human, VLM and offline ones have their own
    tests (a VLM needs an endpoint: tests/test_vlm_teacher.py serves a mock one), and so do
    CLIP's, which need weights (tests/test_clip_reward.py uses a small stand-in encoder)."""
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"+exp={name}"])
    return (
        cfg.algo.get("kind", "online") == "online"
        and not any(t in cfg.teacher._target_ for t in ("human", "vlm"))
        and cfg.reward.kind != "clip"
    )


ONLINE_EXPS = [e for e in EXPS if _runs_unattended_online(e)]
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", EXPS)
def test_every_experiment_composes(name):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"+exp={name}"])
    assert cfg.name == name


@pytest.mark.parametrize("name", ONLINE_EXPS)
def test_every_online_experiment_runs_tiny(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # HalfCheetah runs swap in a cheaper env, except HERON's: its ranking names HalfCheetah's
    # reward factors
    faster = "halfcheetah" in name and not name.startswith("heron")
    cfg = compose_exp(name, ["env.id=InvertedPendulum-v5"] if faster else [])
    summary = run_config(cfg, tmp_path / "run")
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    for key in (
        "exp",
        "algo",
        "env_id",
        "seed",
        "total_timesteps",
        "num_labels",
        "eval_true_return_mean",
        "eval_true_return_std",
        "random_true_return_mean",
        "reward_model_test_accuracy",
        "wall_time_s",
        "peak_rss_mb",
        "videos",
        "tensorboard_dir",
    ):
        assert key in summary
    assert summary["total_timesteps"] >= 300
    assert list(Path(summary["tensorboard_dir"]).glob("events.out.tfevents.*"))
    if cfg.algo.preference:
        assert summary["num_labels"] > 0 and summary["reward_model_test_accuracy"] is not None
        assert (tmp_path / "run" / "checkpoint" / "preferences.npz").exists()
    else:
        assert summary["num_labels"] == 0 and summary["reward_model_test_accuracy"] is None
    for video in summary["videos"]:
        assert Path(video).stat().st_size > 0


@pytest.mark.parametrize("sim", ["gymnasium", "mujoco_batch"])
def test_early_terminating_env_pads_segments(sim, tmp_path, monkeypatch):
    """Hopper falls within a few steps under a random policy: segments get padded, not lost,
    and the stored terminal simulator state is the one the final observation came from."""
    monkeypatch.chdir(tmp_path)
    cfg = compose_exp(
        "pebble_walker2d",
        [
            "env=hopper",
            "feedback.segment_length=50",
            "video.enabled=false",
            f"sim={sim}",
            "n_envs=2",
        ],
    )
    summary = run_config(cfg, tmp_path / "run")
    from pbrl.data import PreferenceDataset

    ds = PreferenceDataset.load(tmp_path / "run" / "checkpoint" / "preferences.npz")
    first = ds.queries.first
    assert (~first.mask.all(1)).any(), "expected some segments cut short by a fall"
    assert first.terminated[~first.mask.all(1)].all()
    assert summary["num_labels"] == len(ds.trainable)
    # Hopper's observation is qpos[1:] and qvel (clipped): check it against the stored state.
    last = first.mask.sum(1)  # index of the state after the last valid action
    rows = np.arange(len(first))
    np.testing.assert_allclose(first.final_obs[:, :5], first.qpos[rows, last, 1:], atol=1e-5)
    np.testing.assert_allclose(first.obs[:, 0, :5], first.qpos[:, 0, 1:], atol=1e-5)


@pytest.mark.parametrize("sim", ["mujoco_batch", "mujoco_warp"])
def test_prefppo_runs_on_batched_backends(sim, tmp_path, monkeypatch):
    """PrefPPO end to end on a batched backend (Warp on its CPU device: the device-side
    reward path of the wrapper, reading ``last_obs_torch``)."""
    if sim == "mujoco_warp":
        pytest.importorskip("mujoco_warp")
        os.environ.setdefault("WARP_CACHE_PATH", os.path.expanduser("~/.cache/pbrl-warp"))
    monkeypatch.chdir(tmp_path)
    cfg = compose_exp(
        "prefppo_halfcheetah", [f"sim={sim}", "n_envs=4", "video.enabled=false", "device=cpu"]
    )
    summary = run_config(cfg, tmp_path / "run")
    assert summary["num_labels"] > 0 and summary["total_timesteps"] >= 300
    from pbrl.data import PreferenceDataset

    ds = PreferenceDataset.load(tmp_path / "run" / "checkpoint" / "preferences.npz")
    assert ds.queries.first.qpos is not None and ds.queries.first.qpos.shape[-1] == 9


def test_relabeling_makes_buffer_rewards_equal_model_outputs(tmp_path, monkeypatch):
    from pbrl.online import pebble

    seen = {}
    original = pebble.EntropyReplayBuffer.relabel

    def spy(buffer, model):
        original(buffer, model)
        n = buffer.pos
        obs = buffer.observations[:n].reshape(n * buffer.n_envs, -1)
        act = buffer.actions[:n].reshape(n * buffer.n_envs, -1)
        seen["max_err"] = float(
            np.abs(buffer.rewards[:n].reshape(-1) - model.predict(obs, act)).max()
        )
        seen["n"] = n

    monkeypatch.setattr(pebble.EntropyReplayBuffer, "relabel", spy)
    monkeypatch.chdir(tmp_path)
    run_config(compose_exp("quickstart", ["video.enabled=false"]), tmp_path / "run")
    assert seen["n"] > 0 and seen["max_err"] < 1e-6


def run_cli(*args: str, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "MUJOCO_GL": "egl", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pbrl.train", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        **kw,
    )


@pytest.mark.parametrize(
    "args,needle",
    [
        (["+exp=nope"], "unknown exp 'nope': choose one of"),
        (["+exp=quickstart", "env=marsrover"], "unknown env 'marsrover': choose one of"),
        (["+exp=quickstart", "env.id=Nope-v9"], "unknown env id 'Nope-v9'"),
        (["+exp=quickstart", "teacher.beta=-1"], "teacher.beta=-1.0 is invalid"),
        (["+exp=quickstart", "teacher.eps_mistake=2"], "teacher.eps_mistake=2 is invalid"),
        (["+exp=quickstart", "sim=mujoco_batch"], "does not implement 'Reacher-v5'"),
    ],
)
def test_bad_input_gives_one_clear_line(args, needle, tmp_path):
    out = run_cli(*args, f"hydra.run.dir={tmp_path}", cwd=tmp_path, timeout=120)
    assert out.returncode == 2
    lines = [ln for ln in out.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], out.stderr


def test_resume_after_kill_keeps_labels_and_step_count(tmp_path):
    """Kill a run (SIGKILL) after its first checkpoint, resume it, and check continuity."""
    run_dir = tmp_path / "run"
    args = [
        "+exp=quickstart",
        f"hydra.run.dir={run_dir}",
        "total_timesteps=100000",
        "checkpoint_every=800",
        "video.enabled=false",
        "progress_bar=false",
        "algo.kwargs.batch_size=32",
        "eval.n_episodes=1",
        "eval.random_episodes=1",
    ]
    env = {**os.environ, "MUJOCO_GL": "egl", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pbrl.train", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    state = run_dir / "checkpoint" / "state.json"
    deadline = time.time() + 240
    while time.time() < deadline and not (
        state.exists() and json.loads(state.read_text())["queries"] > 0
    ):
        time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert state.exists(), "no checkpoint was written before the deadline"
    saved = json.loads(state.read_text())
    from pbrl.data import PreferenceDataset

    labels_before = PreferenceDataset.load(run_dir / "checkpoint" / "preferences.npz")
    assert saved["num_timesteps"] >= 800 and len(labels_before) == saved["queries"]

    target = saved["num_timesteps"] + 400
    out = run_cli(
        f"resume={run_dir}",
        f"total_timesteps={target}",
        f"hydra.run.dir={tmp_path / 'resume_log'}",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["resumed"] and summary["total_timesteps"] == target
    after = PreferenceDataset.load(run_dir / "checkpoint" / "preferences.npz")
    n = len(labels_before)
    assert len(after) >= n
    np.testing.assert_array_equal(after.queries.query_id[:n], labels_before.queries.query_id)
    np.testing.assert_array_equal(after.labels[:n], labels_before.labels)
    assert summary["num_labels"] == len(after.trainable)
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["total_timesteps"] == target


@pytest.mark.slow
def test_pebble_oracle_learns_quickstart(tmp_path):
    """The quickstart (PEBBLE + oracle on Reacher, 300 labels) must beat a random policy
    clearly: at least half of the random policy's cost recovered."""
    out = run_cli(
        "+exp=quickstart",
        f"hydra.run.dir={tmp_path / 'run'}",
        "video.enabled=false",
        "progress_bar=false",
        cwd=tmp_path,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    random = summary["random_true_return_mean"]
    assert summary["eval_true_return_mean"] > random + 0.5 * abs(random)
    assert summary["reward_model_test_accuracy"] > 0.8


def test_hand_wired_run_from_the_readme(tmp_path, monkeypatch):
    """The hand-wired PEBBLE run (no Hydra) of docs/library.md, which the README links to,
    executed as written: labels arrive, the reward model trains, the replay buffer is
    relabeled with it."""
    root = Path(__file__).resolve().parent.parent
    assert "(docs/library.md)" in (root / "README.md").read_text()
    page = (root / "docs" / "library.md").read_text()
    block = page.split("<!-- hand-wired example -->\n```python\n", 1)[1].split("```", 1)[0]
    wiring = [
        line
        for line in block.splitlines()
        if line.strip() and not line.startswith(("from ", "import "))
    ]
    assert len(wiring) <= 15  # the bound, as formatted by ruff
    monkeypatch.chdir(tmp_path)
    scope: dict = {"STEPS": 1500}
    exec(compile(block, "docs/library.md", "exec"), scope)
    feedback, sac, reward = scope["feedback"], scope["sac"], scope["reward"]
    assert feedback.state.queries == 50 and feedback.num_labels > 0
    assert feedback.state.updates >= 2 and sac.num_timesteps == 1500
    buf = sac.replay_buffer
    n = buf.pos
    expected = reward.predict(buf.observations[:n, 0], buf.actions[:n, 0])
    np.testing.assert_allclose(buf.rewards[:n, 0], expected, atol=1e-5)
    assert not buf.intrinsic  # pre-training ended at the first reward update
