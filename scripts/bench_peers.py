"""Side by side with the best peer: pbrl's PrefPPO against imitation's preference comparisons,
each against plain PPO on the true reward, in one run.

    python scripts/bench_peers.py [--seeds 0 1 2 3 4 | --quick] [--steps 200000]
        [--comparisons 1000] [--imitation-python PATH | --venv DIR] [--out bench_peers]
        [--prefppo-set K=V ...]

writes ``<out>/table.md`` and ``<out>/results.json`` (every run's record).

Per seed, four runs, interleaved so machine load falls on all alike, each timed as a whole
process (start-up and evaluation included):

* pbrl PrefPPO: ``python -m pbrl.train +exp=prefppo_halfcheetah`` (oracle teacher);
* pbrl PPO-true: ``+exp=ppo_true_reward_halfcheetah`` (the same pipeline, true reward);
* imitation ``PreferenceComparisons`` (PPO agent, synthetic gatherer, ``BasicRewardNet``
  with ``RunningNorm``, random fragmenter, fragments of 50 steps, 20 iterations, hyperbolic
  query schedule, ``BasicRewardTrainer`` 3 epochs), in its own virtual environment;
* SB3 PPO-true with SB3's defaults (``n_steps`` 256 per env).

All use 8 environments, the same env steps and the same number of comparisons, and score
the final policy by 5 deterministic episodes on the true reward. imitation pins gymnasium
0.29 / SB3 2.2, so it runs HalfCheetah-v4 (pbrl and SB3-here run v5: same dynamics and
reward terms, a newer MuJoCo model file); the table says so.

imitation's environment: ``--venv DIR`` (default ``~/.cache/pbrl/imitation-venv``) is created
on first use with ``python -m venv DIR && DIR/bin/pip install "torch>=2.8,<2.14" imitation
"gymnasium[mujoco]"`` (about 2 minutes); or pass an existing interpreter with
``--imitation-python``.

Finished runs are reused (``scripts/_bench.py``): each run's record
``<out>/<variant>_seed<seed>.json`` (written whole, with the settings that made it) is read
back instead of rerun; a run that crashed or was killed has none and reruns from scratch; a
record made with other settings (steps, comparisons, ``--prefppo-set``) stops the script.
So a 5-seed table can be made in parts: ``--seeds 0 1``, later ``--seeds 2 3 4``, then
``--seeds 0 1 2 3 4`` only reads and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
N_ENVS = 8
EVAL_EPISODES = 5

IMITATION_JOB = r"""
import json, sys, time
import numpy as np
import torch
from stable_baselines3 import PPO
from imitation.algorithms import preference_comparisons as pc
from imitation.rewards.reward_nets import BasicRewardNet
from imitation.util.networks import RunningNorm
from imitation.util.util import make_vec_env
import gymnasium as gym

seed, steps, comparisons, n_envs, episodes = (int(a) for a in sys.argv[1:6])
torch.set_num_threads(1)
rng = np.random.default_rng(seed)
venv = make_vec_env("HalfCheetah-v4", rng=rng, n_envs=n_envs)
net = BasicRewardNet(venv.observation_space, venv.action_space, normalize_input_layer=RunningNorm)
agent = PPO("MlpPolicy", venv, seed=seed, n_steps=256, batch_size=64, learning_rate=3e-4,
            n_epochs=10, verbose=0)
trainer = pc.PreferenceComparisons(
    pc.AgentTrainer(agent, net, venv, rng=rng),
    net,
    num_iterations=20,
    fragmenter=pc.RandomFragmenter(rng=rng, warning_threshold=0),
    preference_gatherer=pc.SyntheticGatherer(rng=rng),
    reward_trainer=pc.BasicRewardTrainer(pc.PreferenceModel(net), pc.CrossEntropyRewardLoss(),
                                         rng=rng, epochs=3),
    fragment_length=50,
    initial_comparison_frac=0.1,
    query_schedule="hyperbolic",
)
trainer.train(total_timesteps=steps, total_comparisons=comparisons)
env = gym.make("HalfCheetah-v4")
"""

SB3_JOB = r"""
import json, sys
import gymnasium as gym
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env

seed, steps, n_envs, episodes = (int(a) for a in sys.argv[1:5])
torch.set_num_threads(1)
venv = make_vec_env("HalfCheetah-v5", n_envs=n_envs, seed=seed)
agent = PPO("MlpPolicy", venv, seed=seed, n_steps=256, verbose=0)  # SB3's defaults otherwise
agent.learn(steps)
env = gym.make("HalfCheetah-v5")
"""

# Appended to both jobs: the final policy's true return over deterministic episodes.
EVALUATE = r"""
returns = []
for ep in range(episodes):
    obs, _ = env.reset(seed=seed + 10_000 + ep)
    done, ret = False, 0.0
    while not done:
        act, _ = agent.predict(obs, deterministic=True)
        obs, r, term, trunc, _ = env.step(act)
        ret += float(r)
        done = term or trunc
    returns.append(ret)
print("RESULT " + json.dumps({"returns": returns}))
"""

VARIANTS = ("pbrl PrefPPO", "pbrl PPO-true", "imitation PC", "SB3 PPO-true")


def imitation_python(args: argparse.Namespace) -> str:
    if args.imitation_python:
        return str(args.imitation_python)
    venv = Path(args.venv).expanduser()
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"[bench] creating imitation's environment in {venv} (about 2 minutes)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "-q",
                "torch>=2.8,<2.14",
                "imitation",
                "gymnasium[mujoco]",
            ],
            check=True,
        )
    return str(python)


def job_env() -> dict[str, str]:
    return {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "OMP_NUM_THREADS": "1"}


def timed(cmd: list[str], log: Path) -> tuple[float, str]:
    t0 = time.time()
    with log.open("w") as fh:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=job_env(), stdout=subprocess.PIPE, stderr=fh, text=True
        )
    wall = time.time() - t0
    log.write_text(log.read_text() + proc.stdout)
    if proc.returncode != 0:
        raise SystemExit(f"[bench] failed ({proc.returncode}): {' '.join(cmd)}; see {log}")
    return wall, proc.stdout


def run_one(
    variant: str, seed: int, args: argparse.Namespace, out: Path, py_imitation: str
) -> dict:
    result = out / f"{variant.replace(' ', '_')}_seed{seed}.json"
    log = result.with_suffix(".log")
    run_dir = out / "runs" / f"{variant.replace(' ', '_')}_seed{seed}"
    settings = settings_of(variant, args)
    record = _bench.read_json(result)
    if _bench.finished(record, settings, (record or {}).get("settings"), result):
        assert record is not None
        return record
    _bench.clear(result, log, run_dir)  # what a crashed or killed run left: rerun from scratch
    steps, comps = str(args.steps), str(args.comparisons)
    if variant.startswith("pbrl"):
        exp = "prefppo_halfcheetah" if "Pref" in variant else "ppo_true_reward_halfcheetah"
        cmd = [
            sys.executable,
            "-m",
            "pbrl.train",
            f"+exp={exp}",
            f"seed={seed}",
            f"total_timesteps={steps}",
            f"n_envs={N_ENVS}",
            f"hydra.run.dir={run_dir}",
            "progress_bar=false",
            "video.enabled=false",
            f"eval.n_episodes={EVAL_EPISODES}",
            f"checkpoint_every={10 * args.steps}",
        ]
        if "Pref" in variant:
            cmd += [f"max_feedback={comps}", *args.prefppo_set]
        wall, _ = timed(cmd, log)
        summary = json.loads((run_dir / "summary.json").read_text())
        ret = summary["eval_true_return_mean"]
        extra = {
            "labels": summary["num_labels"],
            "test_accuracy": summary["reward_model_test_accuracy"],
            "reward_learning_s": summary.get("reward_learning_s"),
        }
    else:
        if variant.startswith("imitation"):
            job, python = IMITATION_JOB, py_imitation
            argv = [str(seed), steps, comps, str(N_ENVS), str(EVAL_EPISODES)]
        else:
            job, python = SB3_JOB, sys.executable
            argv = [str(seed), steps, str(N_ENVS), str(EVAL_EPISODES)]
        script = out / f"_{variant.split()[0].lower()}_job.py"
        script.write_text(job + EVALUATE)
        wall, stdout = timed([python, str(script), *argv], log)
        line = next(x for x in stdout.splitlines() if x.startswith("RESULT "))
        ret = float(np.mean(json.loads(line[7:])["returns"]))
        extra = {}
    record = {"variant": variant, "seed": seed, "wall_s": wall, "return": ret, **extra}
    record["settings"] = settings
    _bench.write_json(result, record)
    print(f"[bench] {variant} seed {seed}: {wall:.0f} s, return {ret:.0f}", flush=True)
    return record


def settings_of(variant: str, args: argparse.Namespace) -> dict:
    """What a run's result depends on besides its variant and seed."""
    settings = {
        "steps": args.steps,
        "comparisons": args.comparisons,
        "n_envs": N_ENVS,
        "eval_episodes": EVAL_EPISODES,
    }
    if variant == "pbrl PrefPPO":
        settings["prefppo_set"] = list(args.prefppo_set)
    if variant == "SB3 PPO-true" or variant == "pbrl PPO-true":
        del settings["comparisons"]
    return settings


def table(records: list[dict], seeds: list[int]) -> str:
    by = {(r["variant"], r["seed"]): r for r in records}
    own_base = {
        "pbrl PrefPPO": "pbrl PPO-true",
        "pbrl PPO-true": "pbrl PPO-true",
        "imitation PC": "SB3 PPO-true",
        "SB3 PPO-true": "SB3 PPO-true",
    }
    env = {"imitation PC": "HalfCheetah-v4"}
    lines = ["| | " + " | ".join(VARIANTS) + " |", "|---" * (len(VARIANTS) + 1) + "|"]

    def row(name: str, cell) -> None:
        lines.append(f"| {name} | " + " | ".join(cell(v) for v in VARIANTS) + " |")

    def per_seed(v: str, fmt, key) -> str:
        vals = [key(by[(v, s)]) for s in seeds if (v, s) in by]
        return " / ".join(fmt(x) for x in vals)

    row("env", lambda v: env.get(v, "HalfCheetah-v5"))
    row("wall s (per seed)", lambda v: per_seed(v, lambda x: f"{x:.0f}", lambda r: r["wall_s"]))

    def overhead(v: str) -> str:
        ratios = [
            by[(v, s)]["wall_s"] / by[(own_base[v], s)]["wall_s"]
            for s in seeds
            if (v, s) in by and (own_base[v], s) in by
        ]
        if not ratios:
            return ""
        return " / ".join(f"{x:.2f}x" for x in ratios) + f" (median {np.median(ratios):.2f}x)"

    row("wall over own PPO-true (PrefPPO: pbrl's, imitation: SB3's)", overhead)

    def returns(v: str) -> str:
        vals = [by[(v, s)]["return"] for s in seeds if (v, s) in by]
        if not vals:
            return ""
        return (
            " / ".join(f"{x:.0f}" for x in vals)
            + f" (mean {np.mean(vals):.0f}, median {np.median(vals):.0f})"
        )

    row("final true return (per seed; mean, median)", returns)

    def pbrl_only(key: str, fmt: str) -> Callable[[str], str]:
        def cell(v: str) -> str:
            vals = [by[(v, s)].get(key) for s in seeds if (v, s) in by]
            return " / ".join(format(x, fmt) for x in vals if x is not None)

        return cell

    row("reward learning s (pbrl)", pbrl_only("reward_learning_s", ".0f"))
    row("reward-model test accuracy (pbrl)", pbrl_only("test_accuracy", ".3f"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0-4 (quick: 0)")
    p.add_argument(
        "--quick", action="store_true", help="seed 0 only (~7 min on one core): the same table"
    )
    p.add_argument("--steps", type=int, default=200_000, help="env steps per run")
    p.add_argument("--comparisons", type=int, default=1000, help="labels for both PbRL methods")
    p.add_argument("--only", nargs="*", choices=VARIANTS, help="a subset of the four")
    p.add_argument("--imitation-python", help="an interpreter that has imitation installed")
    p.add_argument(
        "--venv",
        default="~/.cache/pbrl/imitation-venv",
        help="imitation's virtual environment (created if missing)",
    )
    p.add_argument(
        "--prefppo-set",
        nargs="*",
        default=[],
        help="more Hydra overrides for pbrl PrefPPO (e.g. reward.max_updates=null); give such "
        "runs their own --out (finished runs are reused)",
    )
    p.add_argument("--out", default="bench_peers")
    args = p.parse_args(argv)
    args.seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2, 3, 4])
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    variants = args.only or list(VARIANTS)
    py_imitation = imitation_python(args) if "imitation PC" in variants else ""
    records = []
    for seed in args.seeds:  # interleaved: each seed runs all four before the next seed
        for variant in variants:
            records.append(run_one(variant, seed, args, out, py_imitation))
    text = table(records, args.seeds)
    (out / "table.md").write_text(text + "\n")
    _bench.write_json(out / "results.json", {"seeds": args.seeds, "runs": records})
    print(text)


if __name__ == "__main__":
    main()
