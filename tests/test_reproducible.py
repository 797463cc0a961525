"""The same seed gives the same summary figures on CPU, for each kind of run (tiny budgets).
(Offline: tests/test_offline_runs.py. What cannot be deterministic is listed in the README.)"""

from __future__ import annotations

from conftest import compose_exp
from test_recipes import EPISODIC, compose_plain

from pbrl import recipes

FIGURES = (
    "eval_true_return_mean",
    "eval_learned_return_mean",
    "random_true_return_mean",
    "num_labels",
    "num_queries",
    "reward_model_test_accuracy",
)


def figures(summary: dict) -> dict:
    return {k: summary.get(k) for k in (*FIGURES, "heldout_spearman", "eval_success_rate")}


def test_an_online_run_repeats_exactly(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = [
        figures(recipes.run(compose_exp("quickstart", ["video.enabled=false"]), tmp_path / f"r{i}"))
        for i in range(2)
    ]
    assert runs[0] == runs[1]
    assert runs[0]["num_labels"] > 0  # a run that learned from labels, not a trivial one


def test_an_episodic_run_repeats_exactly(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    extra = [*EPISODIC, "reward=image", "reward.n_members=1", "reward.max_epochs=2"]
    runs = [
        figures(recipes.run(compose_plain("rapl_sweep", extra), tmp_path / f"r{i}"))
        for i in range(2)
    ]
    assert runs[0] == runs[1]
    assert runs[0]["heldout_spearman"] is not None
