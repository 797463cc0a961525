"""Env-steps/s of each simulation backend, against raw ``mujoco.batch`` stepping.

    python scripts/bench_sim.py [--env HalfCheetah-v5] [--sizes 8 64 256] [--repeats 9]

Then end to end: PrefPPO steps/s (SB3 PPO with pbrl's trainer settings, learned reward from a
reward ensemble, trajectory pool recording) on each backend at one batch size.

The GPU path, one command on a CUDA machine with MuJoCo Warp (``pip install -e ".[warp]"``):

    python scripts/bench_sim.py --gpu [--gpu-sizes 1024 4096 16384 65536] [--out gpu.json]

prints (and writes as JSON with ``--out``) MuJoCo Warp env-steps/s at each ``nworld`` (device
tensors in and out: ``step_torch``), then the wall time of PrefPPO (PPO) and PEBBLE (SAC)
learning through pbrl's ``PreferenceVecEnv`` on the Warp batch with the learned reward on the
batch's device against the same run with the reward model on the CPU (observations copied
over each step). Without CUDA it prints one line saying so and exits 0; ``--gpu-dry-run``
runs the same code on the CPU (``mujoco_batch``, tiny sizes) to check it, numbers meaningless.

Rows: raw ``mujoco.batch`` (ctrl write + ``step(nstep=frame_skip)``, no env logic: the limit),
the ``mujoco_batch`` and ``mujoco_warp`` backends, the ``gymnasium`` backend (SB3 DummyVecEnv
over Monitor), and gymnasium's own SyncVectorEnv. Every method gets the same pre-drawn
actions. The methods take turns within each repeat (in a rotating order) so that the load of
a shared machine hits all alike; every rate is the median over repeats, and ratios are
between those medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
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


def main(argv: list[str] | None = None) -> None:
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
    gpu = parser.add_argument_group("GPU path (--gpu)")
    gpu.add_argument("--gpu", action="store_true", help="measure the CUDA path (see above)")
    gpu.add_argument(
        "--gpu-dry-run",
        action="store_true",
        help="run the GPU path's code on the CPU at tiny sizes, to check it (numbers meaningless)",
    )
    gpu.add_argument("--gpu-sizes", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    gpu.add_argument("--gpu-e2e-size", type=int, default=1024, help="nworld of the PrefPPO runs")
    gpu.add_argument(
        "--gpu-e2e-steps", type=int, default=262_144, help="env steps of each PrefPPO run"
    )
    gpu.add_argument("--gpu-sac-size", type=int, default=64, help="nworld of the PEBBLE runs")
    gpu.add_argument(
        "--gpu-sac-steps", type=int, default=65_536, help="env steps of each PEBBLE (SAC) run"
    )
    gpu.add_argument("--out", help="write the GPU path's results to this JSON file")
    args = parser.parse_args(argv)
    if args.gpu or args.gpu_dry_run:
        gpu_path(args)
        return

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

    torch.set_num_threads(1)  # as pbrl.train does (torch_threads=1)
    wall, done = learn_wall("ppo", sim, env_id, n, steps, "cpu", "cpu")
    return done / wall


def learn_wall(
    algo: str,
    sim: str,
    env_id: str,
    n: int,
    steps: int,
    device: str,
    reward_device: str,
) -> tuple[float, int]:
    """Seconds and env steps of ``algo`` ("ppo": PrefPPO's PPO, "sac": PEBBLE's SAC) learning
    ``steps`` env steps on a learned reward (a reward ensemble on ``reward_device``) through
    pbrl's ``PreferenceVecEnv`` and trajectory pool; the simulator and the policy on
    ``device``. On a device-side batch (MuJoCo Warp) the reward reads the observations where
    they live and moves them to ``reward_device`` when that differs."""
    import torch
    from stable_baselines3 import PPO, SAC
    from stable_baselines3.common.vec_env import VecNormalize

    from pbrl.data.pool import TrajectoryPool
    from pbrl.online.wrappers import PreferenceVecEnv
    from pbrl.rewards import RewardEnsemble

    venv = make_vec_env(sim, env_id, n, seed=0, device=device if sim == "mujoco_warp" else "cpu")
    obs_dim, act_dim = venv.observation_space.shape[0], venv.action_space.shape[0]
    qpos, qvel = venv.sim_state()
    pool_rows = max(100_000, min(steps, 2_000_000))
    pool = TrajectoryPool(n, pool_rows, obs_dim, act_dim, (), (qpos.shape[1], qvel.shape[1]))
    reward = RewardEnsemble(obs_dim, act_dim, device=reward_device)
    wrapped = PreferenceVecEnv(venv, pool, reward)
    torch.manual_seed(0)
    model: PPO | SAC
    if algo == "ppo":
        env = VecNormalize(wrapped, norm_obs=False, norm_reward=True)
        model = PPO(
            "MlpPolicy",
            env,
            n_steps=max(1, 4096 // n),
            batch_size=max(64, n * max(1, 4096 // n) // 32),
            n_epochs=10,
            policy_kwargs={"net_arch": [64, 64]},
            device=device,
            seed=0,
        )
    else:
        env = wrapped
        model = SAC(
            "MlpPolicy",
            env,
            buffer_size=steps + n,
            learning_starts=min(1000, steps // 2),
            batch_size=256,
            policy_kwargs={"net_arch": [256, 256]},
            device=device,
            seed=0,
        )
    start = time.perf_counter()
    model.learn(steps)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    done = int(model.num_timesteps)
    env.close()
    return wall, done


def synced(step: Stepper) -> Stepper:
    """``step``, returning once the GPU has finished it."""
    import torch

    def run(action: np.ndarray) -> object:
        out = step(action)
        torch.cuda.synchronize()
        return out

    return run


def gpu_path(args: argparse.Namespace) -> None:
    """Warp env-steps/s per nworld, then PrefPPO/PEBBLE with the learned reward on the
    batch's device vs the CPU; one line and exit 0 without CUDA."""
    import torch

    dry = args.gpu_dry_run
    if not dry and not torch.cuda.is_available():
        print("bench_sim --gpu: no CUDA device here (torch.cuda.is_available() is False); skipped")
        return
    if dry:
        sim, device, sizes = "mujoco_batch", "cpu", [8, 16]
        ppo_size, ppo_steps, sac_size, sac_steps = 8, 2048, 8, 1024
        print("bench_sim --gpu-dry-run: the GPU path's code on the CPU; numbers meaningless")
    else:
        try:
            import warp as wp
        except ImportError:
            print("bench_sim --gpu: MuJoCo Warp is not installed (pip install -e '.[warp]')")
            sys.exit(1)
        wp.config.log_level = wp.LOG_WARNING
        wp.config.quiet = True
        sim, device, sizes = "mujoco_warp", "cuda", args.gpu_sizes
        ppo_size, ppo_steps = args.gpu_e2e_size, args.gpu_e2e_steps
        sac_size, sac_steps = args.gpu_sac_size, args.gpu_sac_steps
    torch.set_num_threads(1)
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"{args.env} on {sim} ({name}), median of {args.repeats} x >= {args.min_time}s")
    results: dict = {"env": args.env, "sim": sim, "device": name, "env_steps_per_s": {}}
    low, high = make_task(args.env).model.actuator_ctrlrange.T
    for n in sizes:
        venv = make_vec_env(
            sim, args.env, n, seed=0, device=device if sim == "mujoco_warp" else "cpu"
        )
        venv.reset()
        gen = torch.Generator(device="cpu").manual_seed(0)
        lo, hi = torch.as_tensor(low), torch.as_tensor(high)
        actions = (lo + (hi - lo) * torch.rand((16, n, len(low)), generator=gen)).float()
        stepper: Stepper = venv.step
        acts: object = actions.numpy()
        if sim == "mujoco_warp":  # device tensors in and out, as a device-side learner uses it
            stepper, acts = synced(venv.step_torch), actions.to(device)  # type: ignore[attr-defined]
        for i in range(3):  # warm-up (Warp compiles and loads its kernels here)
            stepper(acts[i])
        rates = [measure(stepper, acts, args.min_time) for _ in range(args.repeats)]  # type: ignore[arg-type]
        results["env_steps_per_s"][n] = statistics.median(rates)
        print(f"nworld={n:<8} {results['env_steps_per_s'][n]:>16,.0f} env-steps/s", flush=True)
        venv.close()
        del venv
    rows = []
    for algo, label, e2e_size, steps in (
        ("ppo", "PrefPPO", ppo_size, ppo_steps),
        ("sac", "PEBBLE", sac_size, sac_steps),
    ):
        for where in ("batch", "cpu"):
            reward_device = device if where == "batch" else "cpu"
            wall, done = learn_wall(algo, sim, args.env, e2e_size, steps, device, reward_device)
            rows.append(
                {
                    "method": label,
                    "reward_on": f"{where} ({reward_device})",
                    "nworld": e2e_size,
                    "env_steps": done,
                    "wall_s": wall,
                    "steps_per_s": done / wall,
                }
            )
            print(
                f"{label:<8} nworld={e2e_size} reward on {where} ({reward_device}): "
                f"{wall:8.1f} s for {done:,} env steps ({done / wall:,.0f}/s)",
                flush=True,
            )
    for label in ("PrefPPO", "PEBBLE"):
        on_batch, on_cpu = (r["wall_s"] for r in rows if r["method"] == label)
        print(f"{label}: reward on the CPU / on the batch's device = {on_cpu / on_batch:.2f}x")
    results["learned_reward"] = rows
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
