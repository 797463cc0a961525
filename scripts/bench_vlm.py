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

``--timing`` measures instead what image rewards cost the RL loop (issue 26): four runs of the
online recipe in this one process, each through ``pbrl.recipes.run`` on Reacher-v5 with
``vlm_pebble_reacher``'s settings, and writes ``D/timing.json`` with each run's wall time
divided by SAC-true's (the true reward, nothing rendered):

* ``sac_true_render``: SAC-true that also renders the state every step reached, as a frame
  reward's run does (84 px, the env's camera, through the shared frame cache);
* ``image_pebble``: PEBBLE on the learned image reward (``reward=image``), labels from the
  scripted oracle (a VLM's latency is the teacher's, not the reward's);
* ``clip``: SAC on the CLIP zero-shot reward (``reward=clip``) with a randomly initialized
  ViT-B-32 saved locally (no weights are downloaded); without open_clip the entry says why.
  A ViT-B-32 scores ~10-20 frames a second on one CPU core, so ``--clip-steps`` (``--quick``:
  1500) can make its run shorter than the others: it is then divided by a SAC-true run of
  its own length (``sac_true_clip_steps``), made in the same invocation.

    python scripts/bench_vlm.py --timing --quick --out outputs/bench_vlm_timing   # <= 10 min
    python scripts/bench_vlm.py --timing --run-steps 25000 --out D                # the exp's length
"""

from __future__ import annotations

import argparse
import json
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
from pbrl.envs.spec import EnvSpec  # noqa: E402
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
        env=EnvSpec(args.env),
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
        ImageRewardConfig(image_size=int(POLICY["image_size"]), max_updates=300),
        env=EnvSpec(env_id, camera=camera),
    )
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


# -- --timing: the image rewards' cost against SAC-true (issue 26) ----------------------------


def timing_config(steps: int, seed: int, extra: list[str]) -> Any:
    """``vlm_pebble_reacher`` at ``steps`` env steps (labels scaled with them: the exp asks
    1400 in 25k steps), teacher oracle, evaluation cut to two episodes and no mid-run
    checkpoint or video, so the runs differ only in the reward."""
    from hydra import compose, initialize_config_dir

    labels = max(100, round(0.056 * steps) // 100 * 100)
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose(
            "config",
            overrides=[
                "+exp=vlm_pebble_reacher", "teacher=oracle", f"total_timesteps={steps}",
                f"max_feedback={labels}", f"seed={seed}", "video.enabled=false",
                "progress_bar=false", f"checkpoint_every={10 * steps}", "eval.n_episodes=2",
                "eval.random_episodes=2", "eval.test_queries=0", "torch_threads=1", *extra,
            ],
        )  # fmt: skip


def rendering_vec_env(image_size: int) -> Any:
    """``PreferenceVecEnv`` that also renders the state each step reached (84 px, the env's
    camera, through the process's frame cache, as a frame reward's run keeps it) and uses
    the frame for nothing: SAC-true plus the rendering an image reward cannot do without."""
    from pbrl.envs.render import shared_frames
    from pbrl.online.wrappers import PreferenceVecEnv

    class RenderingVecEnv(PreferenceVecEnv):
        frames: Any = None
        rendered = 0

        def step_wait(self) -> Any:
            obs, reward, dones, infos = super().step_wait()
            if RenderingVecEnv.frames is None:
                env = POLICY["env_spec"]
                RenderingVecEnv.frames = shared_frames(env, image_size, 20_000)
            qpos, qvel = self._reached(dones, infos)  # type: ignore[misc]
            RenderingVecEnv.frames.frames(qpos, qvel)
            RenderingVecEnv.rendered += len(qpos)
            return obs, reward, dones, infos

    return RenderingVecEnv


def timed_run(name: str, cfg: Any, out: Path) -> tuple[float, dict[str, Any]]:
    from pbrl import recipes

    print(f"[timing] {name}: {int(cfg.total_timesteps)} steps ...", flush=True)
    t0 = time.perf_counter()
    summary = recipes.run(cfg, out / name)
    wall = time.perf_counter() - t0
    print(f"[timing] {name}: {wall:.1f} s (true return {summary['eval_true_return_mean']:.2f})",
          flush=True)  # fmt: skip
    return wall, summary


def last_times(run_dir: Path) -> dict[str, float]:
    """The run's last logged ``time/*`` figures (tb/progress.csv)."""
    import csv

    rows = list(csv.DictReader((run_dir / "tb" / "progress.csv").open()))
    out: dict[str, float] = {}
    for row in rows:
        out.update({k: float(v) for k, v in row.items() if k.startswith("time/") and v})
    return out


def clip_weights(out: Path) -> tuple[Path | None, str]:
    """A randomly initialized open_clip ViT-B-32 saved under ``out`` (no download), or None
    and why not."""
    try:
        from pbrl.rewards.resnet import import_torchvision

        import_torchvision("open_clip needs torchvision: pip install 'pbrl[clip]'")
        import open_clip
    except Exception as exc:  # ImportError, or its torchvision operators failing to load
        return None, f"not measured: open_clip does not import here ({type(exc).__name__}: {exc})"
    import torch

    path = out / "clip_vit_b32_random_init.bin"
    if not path.exists():
        torch.manual_seed(0)
        torch.save(open_clip.create_model("ViT-B-32", pretrained=None).state_dict(), path)
    return path, "ViT-B-32, randomly initialized (no weights here): the cost, not the reward"


def timing(args: argparse.Namespace) -> dict[str, Any]:
    """The four runs, one after another in this process; ``D/timing.json``."""
    import yaml

    import pbrl.online.trainer as trainer

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = args.run_steps or (6000 if args.quick else 25000)
    env_conf = yaml.safe_load((ROOT / "conf" / "env" / "reacher.yaml").read_text())
    POLICY["env_spec"] = EnvSpec("Reacher-v5", {"reward_control_weight": 0.0},
                                 env_conf.get("camera") or {})  # fmt: skip
    load = os.getloadavg()
    walls: dict[str, float] = {}
    notes: dict[str, Any] = {}
    walls["sac_true"], _ = timed_run("sac_true", timing_config(steps, args.seed, ["algo=sac"]), out)
    plain_env = trainer.PreferenceVecEnv
    renderer = rendering_vec_env(84)
    trainer.PreferenceVecEnv = renderer  # type: ignore[misc]
    try:
        cfg = timing_config(steps, args.seed, ["algo=sac"])
        walls["sac_true_render"], _ = timed_run("sac_true_render", cfg, out)
    finally:
        trainer.PreferenceVecEnv = plain_env  # type: ignore[misc]
    notes["sac_true_render"] = {"frames_rendered": renderer.rendered}
    walls["image_pebble"], summary = timed_run(
        "image_pebble", timing_config(steps, args.seed, []), out
    )
    notes["image_pebble"] = {"labels": summary["num_labels"], **last_times(out / "image_pebble")}
    weights, why = clip_weights(out)
    clip: float | str
    clip_steps = args.clip_steps or (1500 if args.quick else steps)
    if weights is None:
        clip = why
    else:
        if clip_steps != steps:  # CLIP's own baseline, of its length
            walls["sac_true_clip_steps"], _ = timed_run(
                "sac_true_clip_steps", timing_config(clip_steps, args.seed, ["algo=sac"]), out
            )
        cfg = timing_config(clip_steps, args.seed, [
            # the exp's image-reward setting (max_updates) is no CLIP key
            "algo=sac_zero_shot", "reward=clip", "~reward.max_updates", "max_feedback=0",
            "algo.unsupervised_steps=0",  # the exp's PEBBLE pre-training; CLIP needs none
            "reward.model=ViT-B-32",
            f"reward.checkpoint={weights}", "reward.image_size=224",
            "reward.goal_prompts=[a robot arm whose tip touches the red dot]",
            "reward.baseline_prompts=[a robot arm and a red dot]",
        ])  # fmt: skip
        walls["clip"], _ = timed_run("clip", cfg, out)
        clip = walls["clip"] / walls.get("sac_true_clip_steps", walls["sac_true"])
        notes["clip"] = {"steps": clip_steps, "weights": why}
    base = walls["sac_true"]
    result: dict[str, Any] = {
        "sac_true_render": walls["sac_true_render"] / base,
        "image_pebble": walls["image_pebble"] / base,
        "clip": clip,
        "image_pebble_over_sac_true_render": walls["image_pebble"] / walls["sac_true_render"],
        "wall_s": walls,
        "steps": steps,
        "seed": args.seed,
        "load_avg_before": [round(x, 2) for x in load],
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        "notes": notes,
    }
    (out / "timing.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


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
    parser.add_argument(
        "--timing", action="store_true",
        help="time SAC-true, SAC-true + rendering, image PEBBLE and CLIP: D/timing.json",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="--timing: 6000 steps a run")
    parser.add_argument("--run-steps", type=int, default=0, help="--timing: env steps a run")
    parser.add_argument(
        "--clip-steps", type=int, default=0,
        help="--timing: env steps of the CLIP run (default: --run-steps; --quick: 1500)",
    )  # fmt: skip
    parser.add_argument("--out", default="outputs/bench_vlm_timing", help="--timing: folder D")
    args = parser.parse_args()
    if args.timing:
        timing(args)
        return
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
