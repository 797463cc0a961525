"""Env-steps/s of each simulation backend, against raw ``mujoco.batch`` stepping.

    python scripts/bench_sim.py [--env HalfCheetah-v5] [--sizes 8 64 256] [--repeats 9]

Then end to end: PrefPPO steps/s (SB3 PPO with pbrl's trainer settings, learned reward from a
reward ensemble, trajectory pool recording) on each backend at one batch size.

Rows: raw ``mujoco.batch`` (ctrl write + ``step(nstep=frame_skip)``, no env logic: the limit),
the ``mujoco_batch`` and ``mujoco_warp`` backends, the ``gymnasium`` backend (SB3 DummyVecEnv
over Monitor), and gymnasium's own SyncVectorEnv. Every method gets the same pre-drawn
actions. The methods take turns within each repeat (in a rotating order) so that the load of
a shared machine hits all alike; every rate is the median over repeats, and ratios are
between those medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import gymnasium as gym
import mujoco
import mujoco.batch
import numpy as np

os.environ.setdefault("WARP_CACHE_PATH", os.path.expanduser("~/.cache/pbrl-warp"))

from pbrl.sim import make_vec_env  # noqa: E402
from pbrl.sim.tasks import make_task  # noqa: E402

Stepper = Callable[[np.ndarray], object]


def raw_batch(env_id: str, n: int, threads: int) -> Stepper:
    """The limit: batch physics with a ctrl write, nothing else."""
    task = make_task(env_id)
    batch = mujoco.batch.Batch(task.model, n, threads)
    ctrl = batch.bind("ctrl")
    batch.reset()

    def step(action: np.ndarray) -> None:
        ctrl[:] = action
        batch.step(nstep=task.frame_skip)

    return step


def vec_env(sim: str, env_id: str, n: int, threads: int) -> Stepper:
    venv = make_vec_env(sim, env_id, n, seed=0, num_threads=threads)
    venv.reset()
    return venv.step


def sync_vector_env(env_id: str, n: int, threads: int) -> Stepper:
    envs = gym.vector.SyncVectorEnv([lambda: gym.make(env_id) for _ in range(n)])
    envs.reset(seed=0)
    return envs.step


def measure(step: Stepper, actions: np.ndarray, min_time: float) -> float:
    """Env-steps/s over at least ``min_time`` seconds (and at least 3 batch steps)."""
    n = actions.shape[1]
    count, start = 0, time.perf_counter()
    while True:
        step(actions[count % len(actions)])
        count += 1
        elapsed = time.perf_counter() - start
        if count >= 3 and elapsed >= min_time:
            return count * n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="HalfCheetah-v5")
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 64, 256])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--min-time", type=float, default=0.2, help="seconds per measurement")
    parser.add_argument("--threads", type=int, default=0, help="mujoco.batch threads (0: all)")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["raw_batch", "mujoco_batch", "mujoco_warp", "gymnasium", "SyncVectorEnv"],
    )
    parser.add_argument(
        "--warp-max-size", type=int, default=256, help="skip mujoco_warp above this size"
    )
    parser.add_argument("--e2e-size", type=int, default=64, help="n_envs of the PrefPPO run")
    parser.add_argument("--e2e-steps", type=int, default=32768, help="env steps of the PrefPPO run")
    args = parser.parse_args()

    try:
        import warp as wp

        wp.config.log_level = wp.LOG_WARNING
        wp.config.quiet = True
        has_warp = True
    except ImportError:
        has_warp = False

    makers: dict[str, Callable[[str, int, int], Stepper]] = {
        "raw_batch": raw_batch,
        "mujoco_batch": lambda e, n, t: vec_env("mujoco_batch", e, n, t),
        "mujoco_warp": lambda e, n, t: vec_env("mujoco_warp", e, n, 0),
        "gymnasium": lambda e, n, t: vec_env("gymnasium", e, n, 0),
        "SyncVectorEnv": sync_vector_env,
    }
    label = {"gymnasium": "gymnasium (DummyVecEnv)", "SyncVectorEnv": "gym SyncVectorEnv"}
    print(f"{args.env}, {os.cpu_count()} CPUs, median of {args.repeats} x >= {args.min_time}s")
    results: dict[tuple[str, int], float] = {}
    ratios: dict[tuple[str, str, int], float] = {}
    for n in args.sizes:
        methods = [
            m
            for m in args.methods
            if not (m == "mujoco_warp" and (not has_warp or n > args.warp_max_size))
        ]
        steppers = {m: makers[m](args.env, n, args.threads) for m in methods}
        low, high = make_task(args.env).model.actuator_ctrlrange.T
        rng = np.random.default_rng(0)
        actions = rng.uniform(low, high, (16, n, len(low))).astype(np.float32)
        for step in steppers.values():  # warm-up (Warp loads its kernels here)
            for i in range(3):
                step(actions[i])
        samples: dict[str, list[float]] = {m: [] for m in methods}
        for r in range(args.repeats):
            for m in methods[r % len(methods) :] + methods[: r % len(methods)]:
                samples[m].append(measure(steppers[m], actions, args.min_time))
        for m in methods:
            results[m, n] = statistics.median(samples[m])
        for m in methods:
            for ref in ("raw_batch", "gymnasium"):
                if ref in samples:
                    ratios[m, ref, n] = results[m, n] / results[ref, n]

    header = f"{'method':<26}" + "".join(f"{'n=' + str(n):>18}" for n in args.sizes)
    print(header)
    for m in args.methods:
        cells = []
        for n in args.sizes:
            rate, ratio = results.get((m, n)), ratios.get((m, "raw_batch", n))
            if rate is None:
                cells.append(f"{'-':>18}")
            elif ratio is None or m == "raw_batch":
                cells.append(f"{rate:>18,.0f}")
            else:
                cells.append(f"{f'{rate:,.0f} ({ratio:.2f}x)':>18}")
        print(f"{label.get(m, m):<26}" + "".join(cells))
    for n in args.sizes:
        ratio = ratios.get(("mujoco_batch", "gymnasium", n))
        if ratio is not None:
            print(f"n={n}: mujoco_batch / gymnasium DummyVecEnv = {ratio:.2f}x")

    if args.e2e_steps > 0:
        print(f"\nPrefPPO end to end, n_envs={args.e2e_size}, {args.e2e_steps} env steps")
        sims = [
            m
            for m in ("gymnasium", "mujoco_batch", "mujoco_warp")
            if m in args.methods and (m != "mujoco_warp" or has_warp)
        ]
        rates = {m: prefppo_rate(m, args.env, args.e2e_size, args.e2e_steps) for m in sims}
        for m, rate in rates.items():
            print(
                f"{label.get(m, m):<26}{rate:>12,.0f} steps/s  "
                f"({rate / rates['gymnasium']:.2f}x gymnasium)"
            )


def prefppo_rate(sim: str, env_id: str, n: int, steps: int) -> float:
    """Steps/s of PPO on a learned reward through pbrl's wrapper stack (as pbrl.train builds it)."""
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecNormalize

    from pbrl.data.pool import TrajectoryPool
    from pbrl.online.wrappers import PreferenceVecEnv
    from pbrl.rewards import RewardEnsemble

    venv = make_vec_env(sim, env_id, n, seed=0)
    obs_dim, act_dim = venv.observation_space.shape[0], venv.action_space.shape[0]
    qpos, qvel = venv.sim_state()
    pool = TrajectoryPool(n, 100_000, obs_dim, act_dim, (), (qpos.shape[1], qvel.shape[1]))
    env = VecNormalize(
        PreferenceVecEnv(venv, pool, RewardEnsemble(obs_dim, act_dim)),
        norm_obs=False,
        norm_reward=True,
    )
    torch.manual_seed(0)
    torch.set_num_threads(1)  # as pbrl.train does (torch_threads=1)
    model = PPO(
        "MlpPolicy",
        env,
        n_steps=max(1, 4096 // n),
        batch_size=64,
        n_epochs=10,
        policy_kwargs={"net_arch": [64, 64]},
        device="cpu",
        seed=0,
    )
    start = time.perf_counter()
    model.learn(steps)
    rate = model.num_timesteps / (time.perf_counter() - start)
    env.close()
    return rate


if __name__ == "__main__":
    main()
