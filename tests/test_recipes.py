"""The run skeleton: one recipe per run kind, picked from ``algo.kind``; a fake reward of each
declared kind drives the recipe that can use it; the episodic recipe resumes after a kill."""

from __future__ import annotations

import csv
import pickle

import numpy as np
import pytest
from conftest import compose_exp
from fake_rewards import FakeConfig, FirstObsReward, MeanPixelReward, StepIndexReward
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pbrl import recipes
from pbrl.envs.spec import EnvSpec
from pbrl.errors import ConfigError
from pbrl.rewards import REWARD_MODELS
from pbrl.rewards.dispatch import Steps, score_steps
from pbrl.train import CONF_DIR


@pytest.fixture
def fakes(monkeypatch):
    """Fake rewards registered as reward kinds ``fake_state``, ``fake_frame``, ``fake_episode``."""
    for kind, cls in {
        "fake_state": FirstObsReward,
        "fake_frame": MeanPixelReward,
        "fake_episode": StepIndexReward,
    }.items():
        monkeypatch.setitem(REWARD_MODELS, kind, (cls, FakeConfig))


def compose_plain(name: str, extra: list[str] = ()):  # noqa: ANN201
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=[f"+exp={name}", *extra])


def test_the_recipe_comes_from_algo_kind():
    for exp, module in [
        ("quickstart", "pbrl.online.trainer"),
        ("rapl_sweep", "pbrl.online.episodic"),
        ("offline_tiny", "pbrl.offline.runner"),
    ]:
        assert recipes.recipe_for(compose_plain(exp)).run.__module__ == module
    cfg = compose_plain("quickstart")
    OmegaConf.update(cfg, "algo.kind", "bandit", force_add=True)
    with pytest.raises(ConfigError, match="algo.kind='bandit': choose one of online"):
        recipes.recipe_for(cfg)


def only_kind(cfg, kind: str):  # noqa: ANN201
    """``cfg`` with its reward group replaced by ``{kind: ...}`` (a fake takes no settings)."""
    cfg.reward = OmegaConf.create({"kind": kind})
    return cfg


@pytest.mark.parametrize(
    ("exp", "kind"), [("quickstart", "fake_state"), ("vlm_pebble_reacher", "fake_frame")]
)
def test_a_fake_step_reward_drives_the_online_recipe(exp, kind, fakes, tmp_path, monkeypatch):
    """PEBBLE with a state or a frame reward: SAC's buffer holds the fake's reward of every
    stored transition (relabeled after each update), whatever the kind reads."""
    monkeypatch.chdir(tmp_path)
    cfg = only_kind(compose_exp(exp, ["teacher=oracle", "video.enabled=false"]), kind)
    summary = recipes.run(cfg, tmp_path / "run")
    assert summary["total_timesteps"] == 300 and summary["num_labels"] > 0
    with open(tmp_path / "run" / "checkpoint" / "replay_buffer.pkl", "rb") as fh:
        buffer = pickle.load(fh)
    n = buffer.pos
    fields = {k: v[:n, 0] for k, v in buffer.step_fields.items()}
    model = REWARD_MODELS[kind][0](0, 0, FakeConfig(), env=EnvSpec(str(cfg.env.id)))
    expected = score_steps(
        model, Steps(buffer.observations[:n, 0], buffer.actions[:n, 0], **fields)
    )
    np.testing.assert_allclose(buffer.rewards[:n, 0], expected, rtol=1e-5, atol=1e-6)
    assert np.ptp(expected) > 0  # the check is not vacuous


def test_a_fake_episode_reward_drives_the_episodic_recipe(fakes, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = only_kind(compose_plain("rapl_sweep", EPISODIC), "fake_episode")
    summary = recipes.run(cfg, tmp_path / "run")
    assert summary["total_timesteps"] == 100 and summary["reward_kind"] == "fake_episode"
    assert summary["triplets_asked"] == 2 and summary["pairs_derived"] == 6
    logged = list(csv.DictReader((tmp_path / "run" / "tb" / "progress.csv").open()))
    learned = [
        float(r["rollout/learned_ep_return"]) for r in logged if r.get("rollout/learned_ep_return")
    ]
    # StepIndexReward's episodes are all alike; normalized ((r - running mean) / running std)
    # each one's learned return is the sum of its centered steps: 0 up to rounding
    assert learned and np.allclose(learned, 0.0, atol=1e-3), learned


EPISODIC = [
    "total_timesteps=100",
    "n_envs=1",
    "max_feedback=2",
    "checkpoint_every=50",
    "episodic.pool_episodes=4",
    "episodic.heldout_episodes=3",
    "episodic.n_demos=1",
    "algo.kwargs.n_steps=50",
    "algo.kwargs.batch_size=50",
    "algo.kwargs.n_epochs=1",
    "eval.n_episodes=1",
    "eval.random_episodes=1",
    "video.enabled=false",
    "progress_bar=false",
]


def test_a_teacher_that_never_answers_ends_the_run_with_its_queries_kept(tmp_path, monkeypatch):
    """No label within wait.timeout_s: the run stops with one message naming the setting and
    how to go on; the queries asked are saved with the counters (a resume asks no more)."""
    from pbrl.data import PreferenceDataset
    from pbrl.teachers.base import TeacherTimeout

    monkeypatch.chdir(tmp_path)
    cfg = compose_exp(
        "quickstart", ["video.enabled=false", "wait.timeout_s=0.3", "wait.poll_s=0.05"]
    )
    cfg.teacher = OmegaConf.create({"_target_": "fake_rewards.Silent", "answers": 0})
    with pytest.raises(TeacherTimeout, match=r"gave no usable label in 0 s \(wait.timeout_s\)"):
        recipes.run(cfg, tmp_path / "run")
    labels, meta = PreferenceDataset.load_with_meta(
        tmp_path / "run" / "checkpoint" / "preferences.npz"
    )
    assert len(labels) == 0 and meta["feedback"]["queries"] == 4  # the first round's, kept


def test_a_teacher_that_stops_answering_warns_once_and_training_goes_on(tmp_path, monkeypatch):
    """Some labels, then silence: the first wait that times out warns; later rounds do not
    wait again (the run finishes on the labels it has)."""
    monkeypatch.chdir(tmp_path)
    cfg = compose_exp("quickstart", ["video.enabled=false", "wait.timeout_s=0.5", "wait.poll_s=0.05",
                                     "feedback.min_labels=6"])  # fmt: skip
    cfg.teacher = OmegaConf.create({"_target_": "fake_rewards.Silent", "answers": 3})
    with pytest.warns(RuntimeWarning, match="training continues on the labels it has") as seen:
        summary = recipes.run(cfg, tmp_path / "run")
    waits = [w for w in seen if "training continues" in str(w.message)]
    # rounds at steps 100 and 200 (none at the last step): 8 queries, 3 answered
    assert len(waits) == 1 and summary["num_labels"] == 3 and summary["num_queries"] == 8


def doc_block(marker: str) -> str:
    doc = (CONF_DIR.parent / "docs" / "architecture.md").read_text()
    return doc.split(f"<!-- {marker} -->\n```python\n", 1)[1].split("```", 1)[0]


def wiring_statements(block: str) -> int:
    """Statements of a block, imports left out (as formatted by ruff: one per line)."""
    return sum(
        1
        for line in block.splitlines()
        if line.strip() and not line.startswith(("from ", "import "))
    )


def test_the_episodic_recipe_wired_by_hand(tmp_path, monkeypatch):
    """docs/architecture.md's hand-wired RAPL-style run, executed as written: triplets ranked,
    a frame reward fit on them, PPO trained on it relabeled per episode."""
    block = doc_block("hand-wired episodic")
    assert wiring_statements(block) <= 15
    monkeypatch.chdir(tmp_path)
    scope: dict = {"STEPS": 100}
    exec(compile(block, "docs/architecture.md", "exec"), scope)
    ranked, ppo = scope["ranked"], scope["ppo"]
    assert len(ranked) == 12 and len(ranked.trainable) > 0  # 4 triplets, 3 pairs each
    assert ppo.num_timesteps == 100
