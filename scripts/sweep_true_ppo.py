"""PPO on the sweep task's true reward, with the RAPL run's PPO settings: the task check.

The RAPL exps' policy learner is PPO (``conf/algo/rapl.yaml`` with ``rapl_sweep``'s 16 envs,
``n_steps`` 200, batch 100, 10 epochs, lr 3e-4, a [64, 64] net, observations normalized). Trained here on the
env's own reward, it shows the task can be solved at that budget; the learned rewards'
policies (``python -m pbrl.train +exp=rapl_sweep``) are compared with it.

    python scripts/sweep_true_ppo.py --steps 150000 --seed 0

Prints the deterministic policy's success rate and true return on 20 evaluation episodes
(reset seeds 10000..10019) every ``--every`` steps, and the wall time (``--out F.json``: also
written to F).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pbrl.envs  # noqa: E402,F401  (registers pbrl/Sweep-v0)
from pbrl.envs.sweep import ZONE_Y  # noqa: E402


def train(
    steps: int, seed: int, n_objects: int = 1, every: int = 50_000, n_envs: int = 16
) -> list[dict[str, Any]]:
    """PPO on the true reward; the evaluation after every ``every`` steps."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    kwargs = {"n_objects": n_objects}
    venv = VecNormalize(
        make_vec_env("pbrl/Sweep-v0", n_envs, seed=seed, env_kwargs=kwargs),
        norm_obs=True,
        norm_reward=False,
    )
    model = PPO(
        "MlpPolicy",
        venv,
        seed=seed,
        n_steps=200,
        batch_size=100,
        n_epochs=10,
        learning_rate=3e-4,
        gamma=0.99,
        gae_lambda=0.95,
        policy_kwargs={"net_arch": [64, 64]},
        verbose=0,
    )
    started, out = time.time(), []
    for done in range(every, steps + 1, every):
        model.learn(every, reset_num_timesteps=False)
        ev = evaluate(model, venv, n_objects)
        row = {
            "steps": done,
            "success": ev["success"],
            "true_return": ev["true_return"],
            "wall_s": round(time.time() - started, 1),
        }
        out.append(row)
        print(json.dumps(row), flush=True)
    return out


def evaluate(model: Any, venv: Any, n_objects: int = 1, episodes: int = 20) -> dict[str, float]:
    """The deterministic policy on ``episodes`` episodes (reset seeds 10000..): success rate,
    mean true return, and the fraction of episodes that end with the *agent itself* in the
    goal zone (a reward that pays for the agent going up, not the block, shows there).
    ``venv`` is the policy's ``VecNormalize`` (its observation statistics)."""
    env = gym.make("pbrl/Sweep-v0", n_objects=n_objects)
    wins, inside, returns = 0.0, 0, []
    for ep in range(episodes):
        obs, _ = env.reset(seed=10_000 + ep)
        total, over, info = 0.0, False, {}
        while not over:
            act, _ = model.predict(venv.normalize_obs(obs), deterministic=True)
            obs, r, terminated, truncated, info = env.step(act)
            total += float(r)
            over = terminated or truncated
        wins += float(info["success"])
        inside += int(env.unwrapped.agent_xy[1] >= ZONE_Y)  # type: ignore[attr-defined]
        returns.append(total)
    env.close()
    return {
        "success": wins / episodes,
        "true_return": float(np.mean(returns)),
        "agent_in_zone": inside / episodes,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-objects", type=int, default=1)
    p.add_argument("--every", type=int, default=50_000)
    p.add_argument("--n-envs", type=int, default=16, help="as +exp=rapl_sweep")
    p.add_argument("--out", type=Path, default=None, help="write the evaluations here (JSON)")
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = train(args.steps, args.seed, args.n_objects, args.every, args.n_envs)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"seed": args.seed, "evaluations": rows}, indent=1))


if __name__ == "__main__":
    main()
