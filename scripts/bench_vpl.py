"""Personalized rewards on the two-goal task: VPL against Bradley–Terry on pooled labels and
Bradley–Terry per user (an oracle that knows who is who), and VPL's active queries.

Two annotators of ``pbrl/TwoGoal-v0`` (a population teacher): ``alice`` prefers segments
closer to goal a, ``bob`` closer to goal b. Each labels ``--labels`` random pairs of 10-step
segments of a dataset built here (scripted goal seeking to either goal plus exploration). Per
seed and method:

* ``disagree_acc``: the user's accuracy on held-out pairs the two users label differently (for
  VPL under the latent inferred from 16 of that user's labels; BT-pooled has one reward for
  both; BT-per-user each user's own);
* ``goal_rate``: the fraction of evaluation episodes of the offline IQL policy that end at that
  user's goal (VPL: one policy on s ⊕ z, z inferred from the user's 16 labels; BT-pooled: one
  policy for both; BT-per-user: a policy per user); ``goal_any``: the fraction that are at it
  at some step (maze2d-style success);
* ``labels``: the user's labels.

``queries.json``: VPL's held-out accuracy per user at growing label budgets, labels chosen
uniformly or by ``vpl_info`` (information about the user's latent, from their posterior).

    python scripts/bench_vpl.py --quick --out runs/vpl_quick      # one seed, ~15 min idle
    python scripts/bench_vpl.py --seeds 0 1 2 --out runs/vpl

Finished (method, seed) runs are kept in ``<out>/runs/`` and reused on a rerun with the same
settings; ``<out>/vpl.json`` and ``<out>/queries.json`` are rewritten from them.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _bench beside it
import _bench  # noqa: E402

from pbrl.data import PreferenceDataset  # noqa: E402
from pbrl.data.offline import OfflineDataset, load_dataset  # noqa: E402
from pbrl.offline import iql, vpl_iql  # noqa: E402
from pbrl.offline.common import LearnedReward  # noqa: E402
from pbrl.query import select_for_user  # noqa: E402
from pbrl.rewards import RewardEnsemble, RewardModelConfig, VPLConfig, VPLReward  # noqa: E402
from pbrl.rewards.dispatch import relabel_dataset  # noqa: E402
from pbrl.teachers.population import PopulationTeacher  # noqa: E402

ENV_ID = "pbrl/TwoGoal-v0"
USERS = {"alice": "goal_a", "bob": "goal_b"}  # annotator -> the goal (factor) they want
METHODS = ("vpl", "bt_pooled", "bt_per_user")
SELECTIONS = ("uniform", "vpl_info")
SEGMENT = 10


@dataclasses.dataclass
class Settings:
    labels: int = 400  # labels per user
    test_pairs: int = 1000  # held-out pairs (both users label them)
    dataset_size: int = 20_000  # transitions of the goals dataset
    vpl_hidden: int = 128
    vpl_updates: int = 1500
    bt_hidden: int = 128
    iql_steps: int = 8000
    iql_hidden: int = 256
    iql_reward_scale: str = "none"  # conf/algo/vpl_iql.yaml's; "returns" was the earlier setting
    eval_episodes: int = 20
    query_budgets: tuple[int, ...] = (16, 32, 64, 128)  # labels per user at each measurement
    query_updates: int = 400  # VPL gradient steps after each added batch (warm start)
    query_candidates: int = 10  # candidates drawn per query kept


QUICK = Settings(
    labels=200,
    test_pairs=600,
    dataset_size=10_000,
    vpl_hidden=64,
    vpl_updates=600,
    bt_hidden=64,
    iql_steps=6000,
    iql_hidden=128,
    eval_episodes=10,
    query_budgets=(16, 32, 64),
    query_updates=250,
)


def population(seed: int) -> PopulationTeacher:
    members = [{"id": u, "weights": {g: 1.0}} for u, g in USERS.items()]
    return PopulationTeacher(members, rng=np.random.default_rng([seed, 1]))


def dataset(out: Path, s: Settings) -> OfflineDataset:
    """The goals dataset, built once into ``<out>/minari``."""
    os.environ["MINARI_DATASETS_PATH"] = str(out / "minari")
    did = f"bench/twogoal/goals-v{s.dataset_size}"
    if not (out / "minari" / "bench" / "twogoal" / f"goals-v{s.dataset_size}").exists():
        make = _bench.make_dataset()
        cfg = make.parse_args(
            ["--env", "twogoal", "--kinds", "goals", "--namespace", "bench"]
            + ["--version", str(s.dataset_size), "--size", str(s.dataset_size), "--overwrite"]
        )
        make.build(cfg)
    return load_dataset(did)


# -- labels ----------------------------------------------------------------------------------


def user_pairs(
    data: OfflineDataset, pop: PopulationTeacher, n: int, seed: int
) -> PreferenceDataset:
    """``n`` random pairs per user, each labeled by that user."""
    rng = np.random.default_rng([seed, 2])
    parts = [pop.label(data.sample_queries(n, SEGMENT, rng), annotator=u) for u in USERS]
    return PreferenceDataset.concatenate(parts)


def disagreeing(
    data: OfflineDataset, pop: PopulationTeacher, n: int, seed: int
) -> dict[str, PreferenceDataset]:
    """Held-out pairs both users label, kept where their labels differ (both decided)."""
    q = data.sample_queries(n, SEGMENT, np.random.default_rng([seed, 3]))
    labels = {u: pop.label(q, annotator=u).labels for u in USERS}
    a, b = labels.values()
    rows = np.flatnonzero((a != b) & np.isin(a, (0.0, 1.0)) & np.isin(b, (0.0, 1.0)))
    return {
        u: PreferenceDataset(q[rows], y[rows], np.full(len(rows), u)) for u, y in labels.items()
    }


def of_user(labels: PreferenceDataset, user: str) -> PreferenceDataset:
    return labels[np.flatnonzero(labels.annotator == user)]


# -- models and policies ---------------------------------------------------------------------


def fit_vpl(labels: PreferenceDataset, s: Settings, seed: int, updates: int) -> VPLReward:
    torch.manual_seed(seed)
    model = VPLReward(4, 2, VPLConfig(hidden=s.vpl_hidden, updates=updates))
    model.fit(labels, np.random.default_rng([seed, 4]))
    return model


def fit_bt(labels: PreferenceDataset, s: Settings, seed: int) -> RewardEnsemble:
    torch.manual_seed(seed)
    model = RewardEnsemble(4, 2, RewardModelConfig(hidden=s.bt_hidden, use_action=False))
    model.fit(labels, np.random.default_rng([seed, 5]))
    return model


def iql_config(s: Settings) -> vpl_iql.VPLIQLConfig:
    # conf/algo/vpl_iql.yaml's settings (expectile 0.7, β 3, γ 0.95, rewards unscaled in
    # [0, 1]), for every method alike
    return vpl_iql.VPLIQLConfig(hidden=s.iql_hidden, reward_scale=s.iql_reward_scale)


def train(trainer: Any, steps: int, seed: int) -> Any:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        trainer.train(trainer.sample(gen))
    return trainer


def goal_rates(agent: Any, user: str, s: Settings, seed: int) -> dict[str, float]:
    """The fraction of episodes that end at the user's goal (``goal_rate``) and that reach it
    at some step (``goal_any``, maze2d's success)."""
    ev = vpl_iql.rollout_user(agent, ENV_ID, {}, s.eval_episodes, 10_000 + seed)
    return {"goal_rate": ev.reached[USERS[user]], "goal_any": ev.reached_any[USERS[user]]}


def run_method(method: str, data: OfflineDataset, seed: int, s: Settings) -> dict[str, Any]:
    pop = population(seed)
    labels = user_pairs(data, pop, s.labels, seed)
    test = disagreeing(data, pop, s.test_pairs, seed)
    hidden = data.with_rewards(np.full(len(data), np.nan, np.float32))
    dev = torch.device("cpu")
    cfg = iql_config(s)
    out: dict[str, Any] = {}
    if method == "vpl":
        model = fit_vpl(labels, s, seed, s.vpl_updates)
        reward = LearnedReward(model, relabel_dataset(model, hidden, SEGMENT))
        trainer = train(
            vpl_iql.build(cfg, hidden, labels, reward, s.iql_steps, dev, seed), s.iql_steps, seed
        )
        for u in USERS:
            z = trainer.latent(u)  # from 16 of u's labels, as the policy acts
            out[u] = {
                "disagree_acc": model.user_accuracy(test[u], z),
                **goal_rates(trainer.agent_for(u), u, s, seed),
            }
    elif method == "bt_pooled":
        model = fit_bt(labels, s, seed)
        reward = LearnedReward(model, relabel_dataset(model, hidden, SEGMENT))
        trainer = train(
            iql.build(cfg, hidden, labels, reward, s.iql_steps, dev, seed), s.iql_steps, seed
        )
        for u in USERS:
            out[u] = {
                "disagree_acc": model.accuracy(test[u]),
                **goal_rates(trainer.agent(), u, s, seed),
            }
    else:
        for u in USERS:
            mine = of_user(labels, u)
            model = fit_bt(mine, s, seed)
            reward = LearnedReward(model, relabel_dataset(model, hidden, SEGMENT))
            trainer = train(
                iql.build(cfg, hidden, mine, reward, s.iql_steps, dev, seed), s.iql_steps, seed
            )
            out[u] = {
                "disagree_acc": model.accuracy(test[u]),
                **goal_rates(trainer.agent(), u, s, seed),
            }
    for u in USERS:
        out[u]["labels"] = int(np.sum(labels.annotator == u))
    return out


def run_queries(selection: str, data: OfflineDataset, seed: int, s: Settings) -> dict[str, Any]:
    """VPL's held-out accuracy per user at each budget, labels picked by ``selection``."""
    pop = population(seed)
    test = disagreeing(data, pop, s.test_pairs, seed)
    rng = np.random.default_rng([seed, 6])
    size = VPLConfig().context_size
    first = s.query_budgets[0]
    labels = {u: pop.label(data.sample_queries(first, SEGMENT, rng), annotator=u) for u in USERS}
    model = fit_vpl(PreferenceDataset.concatenate(list(labels.values())), s, seed, s.vpl_updates)
    model.config.updates = s.query_updates
    out: dict[str, Any] = {}
    for budget in s.query_budgets:
        if budget > first:
            for u in USERS:
                k = budget - len(labels[u])
                if selection == "uniform":
                    q = data.sample_queries(k, SEGMENT, rng)
                else:
                    cand = data.sample_queries(k * s.query_candidates, SEGMENT, rng)
                    q = cand[select_for_user(model, cand, labels[u], k, rng)]
                labels[u] = PreferenceDataset.concatenate([labels[u], pop.label(q, annotator=u)])
            model.fit(PreferenceDataset.concatenate(list(labels.values())), rng)
        out[str(budget)] = {
            u: model.user_accuracy(
                test[u], model.infer(vpl_iql.context_set(labels[u], u, size, rng))
            )
            for u in USERS
        }
    return out


# -- driver ----------------------------------------------------------------------------------


def cached(path: Path, settings: dict[str, Any], fn: Any) -> Any:
    """``fn()``'s result, or the one saved at ``path`` by a run with the same settings."""
    if path.exists():
        blob = json.loads(path.read_text())
        if blob.get("settings") == settings:
            print(f"reusing {path}", flush=True)
            return blob["result"]
    t0 = time.time()
    result = fn()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"settings": settings, "result": result, "time_s": time.time() - t0}))
    tmp.replace(path)
    print(f"wrote {path} ({time.time() - t0:.0f} s)", flush=True)
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one seed, smaller budgets (~15 min)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default 0 1 2)")
    p.add_argument("--out", default="runs/vpl", help="output folder")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--selections", nargs="+", default=list(SELECTIONS), choices=SELECTIONS)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    s = QUICK if args.quick else Settings()
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    out = Path(args.out)
    data = dataset(out, s)
    settings = dataclasses.asdict(s)
    settings["query_budgets"] = list(s.query_budgets)
    results: dict[str, Any] = {m: {} for m in args.methods}
    queries: dict[str, Any] = {q: {} for q in args.selections}
    for seed in seeds:
        for m in args.methods:
            results[m][str(seed)] = cached(
                out / "runs" / f"{m}_s{seed}.json",
                settings,
                functools.partial(run_method, m, data, seed, s),
            )
        for q in args.selections:
            queries[q][str(seed)] = cached(
                out / "runs" / f"queries_{q}_s{seed}.json",
                settings,
                functools.partial(run_queries, q, data, seed, s),
            )
    (out / "vpl.json").write_text(json.dumps(results, indent=2))
    (out / "queries.json").write_text(json.dumps(queries, indent=2))
    print(table(results, queries))
    return {"vpl": results, "queries": queries}


def table(results: dict[str, Any], queries: dict[str, Any]) -> str:
    lines = [
        "| method | user | disagree_acc | goal_rate | goal_any | labels |",
        "|---|---|---|---|---|---|",
    ]

    def cell(xs: list[float], fmt: str) -> str:
        return f"{np.mean(xs):{fmt}} ({', '.join(f'{x:.2f}' for x in xs)})"

    for m, by_seed in results.items():
        for u in USERS:
            acc = [r[u]["disagree_acc"] for r in by_seed.values()]
            goal = [r[u]["goal_rate"] for r in by_seed.values()]
            anyg = [r[u].get("goal_any", float("nan")) for r in by_seed.values()]
            n = [r[u]["labels"] for r in by_seed.values()]
            lines.append(
                f"| {m} | {u} | {cell(acc, '.3f')} | {cell(goal, '.2f')} | {cell(anyg, '.2f')} "
                f"| {n[0]} |"
            )
    lines += [
        "",
        "| selection | labels per user | " + " | ".join(USERS) + " |",
        "|---|---|---|---|",
    ]
    for q, by_seed in queries.items():
        budgets = next(iter(by_seed.values()), {})
        for b in budgets:
            accs = [np.mean([r[b][u] for r in by_seed.values()]) for u in USERS]
            lines.append(f"| {q} | {b} | " + " | ".join(f"{a:.3f}" for a in accs) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("MUJOCO_GL", "egl")
    main()
