"""Building datasets with scripts/make_dataset.py, and every offline experiment end to end
with a tiny budget on a tiny dataset built here."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from pbrl.data.offline import load_dataset
from pbrl.recipes import run as run_config

pytest.importorskip("minari", reason="offline datasets need the `offline` extra (minari[hdf5])")

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
# VLM-labeled exps need an endpoint: tests/test_image_reward.py runs them with the mock VLM
OFFLINE_EXPS = sorted(
    p.stem for p in (CONF / "exp").glob("offline_*.yaml") if not p.stem.startswith("offline_vlm")
)
TINY = "pbrl-tiny"

# Shrink every network so an experiment runs in seconds (keys exist in each algo's yaml).
TINY_ALGO = {
    "iql": ["algo.batch_size=32", "algo.hidden=32"],
    "iql_oracle": ["algo.batch_size=32", "algo.hidden=32"],
    "bc": ["algo.batch_size=32", "algo.hidden=32"],
    "cpl": ["algo.batch_size=8", "algo.hidden=32", "algo.bc_steps=4", "algo.bc_coeff=0.5"],
    "oppo": [
        "algo.encoder_embed=16",
        "algo.encoder_layers=1",
        "algo.encoder_heads=2",
        "algo.policy_embed=16",
        "algo.policy_layers=1",
        "algo.context=5",
        "algo.batch_size=8",
        "algo.dataset_segments=8",
    ],
    "dtr": [
        "algo.embed_dim=16",
        "algo.n_layers=1",
        "algo.n_heads=2",
        "algo.context=5",
        "algo.batch_size=8",
        "algo.ema_start=2",
        "algo.ema_every=1",
        "algo.critic_hidden=32",
    ],
}
TINY_REWARD = {  # reward.kind -> overrides (reward.max_epochs is in TINY_RUN)
    "ensemble": [],
    "transformer": ["reward.embed_dim=16", "reward.n_heads=2"],
}
TINY_RUN = [
    "dataset=tiny",
    "++env.kwargs.max_episode_steps=60",
    "total_timesteps=12",
    "max_feedback=16",
    "feedback.segment_length=10",
    "eval.n_episodes=1",
    "eval.random_episodes=1",
    "eval.test_queries=16",
    "eval.every=6",
    "checkpoint_every=6",
    "video.enabled=false",
    "progress_bar=false",
    "reward.max_epochs=2",
]
SUMMARY_KEYS = {
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
    "eval_normalized_score_mean",
    "eval_normalized_score_std",
    "dataset_id",
    "num_queries",
}


def load_script(name: str):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while it is executed
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A tiny store with every dataset kind for Hopper (seconds of SAC)."""
    root = tmp_path_factory.mktemp("minari")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(root))
        make = load_script("make_dataset")
        cfg = make.parse_args(["--preset", "tiny", "--namespace", TINY, "--env", "hopper"])
        written = make.build(cfg)
        yield root, written


def test_make_dataset_round_trip(store) -> None:  # type: ignore[no-untyped-def]
    root, written = store
    assert sorted(written) == sorted(
        f"{TINY}/hopper/{k}-v0"
        for k in ("random", "medium", "medium-replay", "expert", "medium-expert")
    )
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        sets = {k.split("/")[-1][:-3]: load_dataset(k) for k in written}
    finally:
        os.environ.pop("MINARI_DATASETS_PATH")
    mr, med, exp, me = sets["medium-replay"], sets["medium"], sets["expert"], sets["medium-expert"]
    info = mr.metadata["pbrl"]
    # medium-replay is SAC's own experience up to the medium checkpoint
    assert len(mr) == info["medium_step"]
    assert len(med) == len(exp) == 400 and len(sets["random"]) == 400
    # medium-expert = medium then expert, episode for episode
    np.testing.assert_array_equal(
        me.observations, np.concatenate([med.observations, exp.observations])
    )
    assert me.num_episodes == med.num_episodes + exp.num_episodes
    for d in sets.values():
        assert d.env_id == "Hopper-v5" and d.has_state
        assert d.ref_min_score == pytest.approx(info["random_return"])
        assert d.metadata["d4rl_ref_min_score"] == pytest.approx(-20.272305)
        # every episode ends in exactly one terminal or timeout, never both
        ends = d.episode_starts[1:] - 1
        assert (d.terminals[ends] ^ d.timeouts[ends]).all()
        assert d.terminals.sum() + d.timeouts.sum() == d.num_episodes
        # Hopper's observation is qpos[1:] and qvel of the state before the action
        s = d.state_index(np.arange(len(d)))
        np.testing.assert_allclose(d.observations[:, :5], d.qpos[s, 1:], atol=1e-5)
    assert sets["random"].ref_max_score == pytest.approx(info["expert_return"])
    if info["expert_return"] <= info["random_return"]:  # the tiny preset's "expert" is none
        assert sets["random"].normalized_score(100.0) is None


def compose_exp(exp: str, extra: list[str]):  # type: ignore[no-untyped-def]
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"+exp={exp}", *extra])
        small = [*TINY_ALGO[cfg.algo.name], *TINY_REWARD[cfg.reward.kind]]
        return compose("config", overrides=[f"+exp={exp}", *extra, *small])


@pytest.mark.parametrize("exp", OFFLINE_EXPS)
def test_offline_experiment_runs(exp: str, store, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    root, _ = store
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    cfg = compose_exp(exp, [*TINY_RUN, f"dataset.id={TINY}/hopper/medium-replay-v0"])
    assert cfg.algo.kind == "offline"
    summary = run_config(cfg, tmp_path)
    assert SUMMARY_KEYS <= set(summary)
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert summary["total_timesteps"] == 12 and summary["exp"] == exp
    assert np.isfinite(summary["eval_true_return_mean"])
    data = load_dataset(f"{TINY}/hopper/medium-replay-v0")
    has_expert = data.ref_max_score is not None and data.ref_max_score > data.ref_min_score
    score = summary["eval_normalized_score_mean"]
    assert np.isfinite(score) if has_expert else score is None
    assert summary["eval_d4rl_normalized_score_mean"] is not None
    assert list(Path(summary["tensorboard_dir"]).glob("events.out.tfevents.*"))
    assert (tmp_path / "checkpoint" / "trainer.pt").exists()
    needs_labels = bool(cfg.algo.preference)
    assert (summary["num_labels"] > 0) == needs_labels
    assert (tmp_path / "preferences.npz").exists() == needs_labels
    has_reward_model = bool(cfg.algo.get("learn_reward", False))
    assert (summary["reward_model_test_accuracy"] is not None) == has_reward_model


def test_resume_continues_from_the_checkpoint(store, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    root, _ = store
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    first = run_config(compose_exp("offline_tiny", TINY_RUN), tmp_path)
    assert not first["resumed"]
    labels = (tmp_path / "preferences.npz").read_bytes()
    again = run_config(
        compose_exp("offline_tiny", [*TINY_RUN[:2], "total_timesteps=18", *TINY_RUN[3:]]), tmp_path
    )
    assert again["resumed"] and again["total_timesteps"] == 18
    assert (tmp_path / "preferences.npz").read_bytes() == labels  # same labels, not new ones


def test_train_cli(store, tmp_path) -> None:  # type: ignore[no-untyped-def]
    root, _ = store
    env = {**os.environ, "MINARI_DATASETS_PATH": str(root), "OMP_NUM_THREADS": "1"}
    base = [
        sys.executable,
        "-m",
        "pbrl.train",
        "+exp=offline_tiny",
        "algo=bc",
        "total_timesteps=5",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    ok = subprocess.run(base, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["algo"] == "bc"
    said = ok.stdout + ok.stderr  # the first line of every run: where, on what, how much
    assert "run offline_" in said and "gradient steps" in said and "starting fresh" in said
    bad = subprocess.run(
        [*base, "dataset.id=pbrl-tiny/hopper/nothing-v0"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2
    assert (
        "pbrl.train: error: dataset 'pbrl-tiny/hopper/nothing-v0' is not in the local" in bad.stderr
    )
    assert "Traceback" not in bad.stderr


def test_labels_from_a_file(store, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    root, _ = store
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    make_prefs = load_script("make_preferences")
    npz = make_prefs.main(
        [
            "--dataset",
            f"{TINY}/hopper/medium-replay-v0",
            "--out",
            str(tmp_path / "labels.npz"),
            "--num-queries",
            "12",
            "--segment-length",
            "10",
            "--tie-threshold",
            "0.5",
            "--eps-mistake",
            "0.1",
            "--index-csv",
            str(tmp_path / "labels.csv"),
        ]
    )
    for path in (npz, tmp_path / "labels.csv"):
        run_dir = tmp_path / path.suffix[1:]
        cfg = compose_exp("offline_tiny", [*TINY_RUN, "algo=cpl", f"dataset.preferences={path}"])
        summary = run_config(cfg, run_dir)
        assert summary["teacher"]["source"] == "file" and summary["num_queries"] == 12


def test_a_fake_state_reward_drives_the_offline_recipe(store, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The offline recipe relabels the dataset through the reward's declared kind: a fake
    state reward (the first observation coordinate) is what IQL trains on."""
    from fake_rewards import FakeConfig, FirstObsReward
    from omegaconf import OmegaConf

    from pbrl.rewards import REWARD_MODELS

    root, _ = store
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    monkeypatch.setitem(REWARD_MODELS, "fake_state", (FirstObsReward, FakeConfig))
    cfg = compose_exp(
        "offline_iql_hopper", [*TINY_RUN, f"dataset.id={TINY}/hopper/medium-replay-v0"]
    )
    cfg.reward = OmegaConf.create({"kind": "fake_state"})
    summary = run_config(cfg, tmp_path)
    assert summary["reward_model"]["epochs"] == 0  # the fake's fit ran, on real labels
    assert summary["num_labels"] > 0 and summary["eval_learned_return_mean"] is not None
    assert summary["reward_model"]["true_reward_corr"] != 0
    from pbrl.checkpoint import Checkpoint

    # what a resume announces: the trainer's last step and the labels held
    assert Checkpoint(tmp_path).progress() == (12, summary["num_labels"])


def test_the_offline_recipe_wired_by_hand(store, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """docs/architecture.md's hand-wired offline run, executed as written on the tiny set."""
    doc = (ROOT / "docs" / "architecture.md").read_text()
    block = doc.split("<!-- hand-wired offline -->\n```python\n", 1)[1].split("```", 1)[0]
    wiring = [
        ln for ln in block.splitlines() if ln.strip() and not ln.startswith(("from ", "import "))
    ]
    assert len(wiring) <= 15
    root, _ = store
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    scope: dict = {"STEPS": 5, "DATASET": f"{TINY}/hopper/medium-replay-v0"}
    exec(compile(block, "docs/architecture.md", "exec"), scope)
    data, learned = scope["data"], scope["learned"]
    assert learned.rewards.shape == (len(data),) and np.isfinite(learned.rewards).all()
    assert len(scope["labels"].trainable) > 0


def test_an_offline_run_repeats_exactly(store, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The same seed, the same labels, reward and policy: the same summary figures."""
    root, _ = store
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    keys = ("eval_true_return_mean", "num_labels", "reward_model_test_accuracy", "reward_model")
    runs = []
    for i in range(2):
        cfg = compose_exp(
            "offline_iql_hopper", [*TINY_RUN, f"dataset.id={TINY}/hopper/medium-replay-v0"]
        )
        summary = run_config(cfg, tmp_path / f"r{i}")
        runs.append({k: summary[k] for k in keys})
    runs[0]["reward_model"].pop("fit_time_s"), runs[1]["reward_model"].pop("fit_time_s")
    assert runs[0] == runs[1]
