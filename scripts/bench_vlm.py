"""VLM labeling benchmark (RL-VLM-F teacher) against the local mock VLM server.

For each noise level of the mock (the probability it flips its verdict), label the same N
pairs, cut from a real random-policy rollout, through real HTTP and the ``openai`` client:

* label accuracy vs the oracle (true segment returns; pairs with equal returns left out),
* requests sent on the first pass, and the cache hit rate of a second pass over the same pairs
  (a rerun: it should send no request),
* seconds of labeling per 100 pairs (rendering + both stages, with the mock's latency),
* the unsure fraction (-1 or unparseable replies; with ``--malformed``, garbage first lines),
* the learned-reward column, which :func:`learned_reward_ratio` fills (see there).

    python scripts/bench_vlm.py                       # 200 pairs, noise 0 / 0.1 / 0.3
    python scripts/bench_vlm.py --pairs 500 --latency 0.2 --concurrency 8 --env Reacher-v5
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pbrl.data import PreferenceDataset, Queries, Segments  # noqa: E402
from pbrl.data.preferences import oracle_labels  # noqa: E402
from pbrl.online.wrappers import random_rollout_pool  # noqa: E402
from pbrl.teachers.base import WaitPolicy, ask  # noqa: E402
from pbrl.teachers.vlm import VLMTeacher  # noqa: E402
from pbrl.teachers.vlm.images import ImageSpec, render_segment_images  # noqa: E402
from pbrl.teachers.vlm.mock import MockVLM  # noqa: E402

GOALS = {
    "Reacher-v5": "the tip of the two-link robot arm touches the small red target",
    "InvertedPendulum-v5": "the pole stands straight up, balanced vertically on the cart",
}


def label_pass(
    server: MockVLM, args: argparse.Namespace, queries: Queries, cache: Path
) -> tuple[np.ndarray, dict[str, float], float]:
    teacher = VLMTeacher(
        model=server.model,
        base_url=server.base_url,
        api_key_env=None,
        goal=GOALS.get(args.env, args.goal),
        env_id=args.env,
        frames=args.frames,
        size=args.size,
        max_concurrency=args.concurrency,
        requests_per_second=args.rps,
        cache=str(cache),
        rng=np.random.default_rng(args.seed),
    )
    t0 = time.monotonic()
    labels = ask(teacher, queries, WaitPolicy(timeout_s=None, poll_s=0.01)).labels  # every pair
    wall = time.monotonic() - t0
    stats = teacher.total_stats()
    teacher.close()
    return labels, stats, wall


# The learned-reward column (issue 14, part 2): short PEBBLE-style runs on the image reward.
# ``main`` sets POLICY from the command line; policy_steps=0 leaves the column out ('-').
POLICY: dict[str, Any] = {"steps": 0, "image_size": 64, "seed": 0, "env": "Reacher-v5"}
_BASELINES: dict[str, float] = {}  # "oracle" and "random" true returns, computed once


def last_frames(segments: Segments) -> Segments:
    """Each segment cut to its last valid step: the frame the VLM was shown (``frames: last``)."""
    assert segments.qpos is not None and segments.qvel is not None
    rows = np.arange(len(segments))
    t = segments.mask.sum(1) - 1  # last valid step
    cut = lambda a: a[rows, t][:, None]  # noqa: E731
    both = lambda a: np.stack([a[rows, t], a[rows, t + 1]], 1)  # noqa: E731
    return Segments(
        obs=cut(segments.obs), act=cut(segments.act), true_reward=cut(segments.true_reward),
        mask=np.ones((len(segments), 1), bool), final_obs=segments.final_obs,
        terminated=segments.terminated, qpos=both(segments.qpos), qvel=both(segments.qvel),
        env_id=segments.env_id, run=segments.run,
    )  # fmt: skip


def image_reward_return(queries: Queries, labels: np.ndarray) -> float:
    """Mean true return of SAC trained ``POLICY['steps']`` steps on an image reward model fit
    on these labels (of the frames the VLM saw)."""
    import torch
    import yaml
    from stable_baselines3 import SAC

    from pbrl.evaluation import evaluate
    from pbrl.online.wrappers import PreferenceVecEnv
    from pbrl.rewards.image import ImageRewardConfig, ImageRewardEnsemble
    from pbrl.sim import make_vec_env

    env_id, seed, steps = POLICY["env"], int(POLICY["seed"]), int(POLICY["steps"])
    camera: dict[str, Any] = {}
    for path in (ROOT / "conf" / "env").glob("*.yaml"):  # the env group's camera, if any
        env_conf = yaml.safe_load(path.read_text())
        if env_conf.get("id") == env_id:
            camera = env_conf.get("camera") or {}
    torch.manual_seed(seed)
    data = PreferenceDataset(
        Queries(last_frames(queries.first), last_frames(queries.second)), labels
    )
    model = ImageRewardEnsemble(
        queries.first.obs.shape[-1],
        queries.first.act.shape[-1],
        ImageRewardConfig(env_id=env_id, image_size=int(POLICY["image_size"]), camera=camera,
                          max_updates=300),
    )  # fmt: skip
    model.fit(data, np.random.default_rng(seed))
    env = PreferenceVecEnv(make_vec_env("gymnasium", env_id, 1, seed), None, model)
    sac = SAC("MlpPolicy", env, learning_starts=500, batch_size=128, seed=seed, verbose=0,
              policy_kwargs={"net_arch": [128, 128]})  # fmt: skip
    sac.learn(steps)
    result = evaluate(env_id, lambda o: sac.predict(o, deterministic=True)[0], 10, seed + 1000)
    model.close()
    env.close()
    return result.mean


def learned_reward_ratio(noise: float, queries: Queries, labels: np.ndarray) -> float | None:
    """The learned-reward true-return ratio to the oracle-labeled run: SAC on the image reward
    model fit on these VLM labels, against the same run on oracle labels of the same pairs,
    each measured from a random policy's return (1 = as good as oracle labels, 0 = random):
    ``(R_vlm - R_random) / (R_oracle - R_random)``. None when ``--policy-steps 0``."""
    if not POLICY["steps"]:
        return None
    from pbrl.evaluation import evaluate

    if "oracle" not in _BASELINES:
        _BASELINES["oracle"] = image_reward_return(queries, oracle_labels(queries))
        _BASELINES["random"] = evaluate(POLICY["env"], None, 10, int(POLICY["seed"]) + 1000).mean
    vlm = image_reward_return(queries, labels)
    gain = _BASELINES["oracle"] - _BASELINES["random"]
    print(
        f"  noise {noise:g}: true return {vlm:.2f} (oracle labels {_BASELINES['oracle']:.2f}, "
        f"random policy {_BASELINES['random']:.2f})",
        flush=True,
    )
    return (vlm - _BASELINES["random"]) / gain if gain > 0 else math.nan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env", default="Reacher-v5")
    parser.add_argument("--goal", default="the robot achieves its task")
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--segment-length", type=int, default=25)
    parser.add_argument("--steps", type=int, default=5000, help="rollout steps in the pool")
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.1, 0.3])
    parser.add_argument("--latency", type=float, default=0.2, help="mock seconds per request")
    parser.add_argument("--malformed", type=float, default=0.0, help="garbage-reply fraction")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rps", type=float, default=None, help="requests per second limit")
    parser.add_argument("--frames", default="last", choices=["last", "k", "strip"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--policy-steps", type=int, default=5000,
        help="SAC steps per learned-reward run (0: no learned-reward column)",
    )  # fmt: skip
    parser.add_argument("--image-size", type=int, default=64, help="of the image reward model")
    args = parser.parse_args()
    POLICY.update(steps=args.policy_steps, image_size=args.image_size, seed=args.seed, env=args.env)

    t0 = time.monotonic()
    pool = random_rollout_pool(args.env, args.steps, args.seed)
    queries = pool.sample_queries(args.pairs, args.segment_length, np.random.default_rng(args.seed))
    oracle = oracle_labels(queries)
    print(
        f"{args.env}: {args.pairs} pairs of {args.segment_length} steps from a "
        f"{args.steps}-step random rollout ({time.monotonic() - t0:.1f} s); mock latency "
        f"{args.latency} s/request, {args.concurrency} in flight, frames={args.frames}, "
        f"size={args.size}; oracle ties: {int((oracle == 0.5).sum())}"
    )
    header = (
        "| mock noise | label accuracy vs oracle | learned-reward true-return ratio to "
        "oracle-labeled run | requests | cache hit rate (2nd pass) | requests (2nd pass) | "
        "s per 100 pairs | unsure fraction |"
    )
    rows = [header, "|---" * 8 + "|"]
    # the mock's oracle: every image the teacher will show scores as its segment's true return
    spec = ImageSpec(args.frames, size=args.size)
    shown = [
        (render_segment_images(segments, spec), segments.returns())
        for segments in (queries.first, queries.second)
    ]
    for noise in args.noise:
        with (
            tempfile.TemporaryDirectory() as tmp,
            MockVLM(
                noise=noise,
                latency_s=args.latency,
                malformed=args.malformed,
                seed=args.seed,
            ) as server,
        ):
            for images, returns in shown:
                server.register_segments(images, returns)
            cache = Path(tmp) / "vlm.sqlite"
            labels, first, _ = label_pass(server, args, queries, cache)
            sent = server.requests
            server.reset_counts()
            _, second, _ = label_pass(server, args, queries, cache)
            resent = server.requests
        decided = (oracle != 0.5) & ~np.isnan(labels)
        accuracy = float(np.mean(labels[decided] == oracle[decided])) if decided.any() else math.nan
        ratio = learned_reward_ratio(noise, queries, labels)
        rows.append(
            f"| {noise:g} | {accuracy:.3f} | {'-' if ratio is None else f'{ratio:.2f}'} | "
            f"{sent} | {second['vlm_cache_hit_rate']:.2f} | {resent} | "
            f"{first['vlm_s_per_100_pairs']:.1f} | {first['vlm_unsure_fraction']:.3f} |"
        )
    print("\n".join(rows))


if __name__ == "__main__":
    main()
