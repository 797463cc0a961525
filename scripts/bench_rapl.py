"""RAPL benchmark: how well each learned visual reward ranks held-out videos.

For each task (the ``rapl_sweep`` / ``rapl_pusher`` exps: env, reward and teacher settings
come from those configs), on one set of behaviour videos:

1. triplets of videos ranked by the scripted teacher from the true reward (the largest
   budget drawn once; a smaller budget is its first triplets);
2. three rewards learned from the same triplets, at each budget:
   * RAPL: the ResNet-18 head aligned on the triplets, OT reward against demonstrations;
   * RLHF image reward: pbrl's CNN reward (``reward=image``) trained with Bradley-Terry on
     the three pairs each triplet implies (on the same frames RAPL sees: every
     ``frame_stride``-th frame of a video);
   * un-aligned OT: the same OT reward on the frozen backbone's own features;
3. Spearman's rank correlation of each reward's episode return with the true return on
   held-out videos (the paper: 0.59 RAPL vs 0.38 RLHF on its Franka task).

    python scripts/bench_rapl.py --envs sweep pusher --budgets 10 30 90 --seeds 0

The policies' true success rate comes from the exps themselves (``python -m pbrl.train
+exp=rapl_sweep`` reports ``eval_success_rate``). The backbone used (a file given with
``--backbone``, or one pre-trained here) is recorded with the results; ``--set`` passes more
Hydra overrides to the exp (e.g. ``--set reward.pretrain_steps=50``). Writes
``<out>/rapl_bench.json`` and ``<out>/rapl_bench.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

os.environ.setdefault("MUJOCO_GL", "egl")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from pbrl.data import PreferenceDataset, Segments  # noqa: E402
from pbrl.data.triplets import new_triplet_ids, sample_triplets  # noqa: E402
from pbrl.envs.rollouts import collect_episodes, task_success  # noqa: E402
from pbrl.errors import make_config  # noqa: E402
from pbrl.online.episodic import spearman  # noqa: E402
from pbrl.rewards.image import ImageRewardConfig, ImageRewardEnsemble  # noqa: E402
from pbrl.rewards.rapl import RAPLConfig, RAPLReward, VideoEncoder  # noqa: E402

log = logging.getLogger("bench_rapl")


def exp_config(env: str, overrides: list[str]) -> Any:
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[f"+exp=rapl_{env}", *overrides])


def plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True)


def strided(segments: Segments, kept: np.ndarray) -> Segments:
    """The videos as RAPL sees them: only the steps ``kept`` (their states after the step)."""
    assert segments.qpos is not None and segments.qvel is not None
    t = len(kept)
    return Segments(
        obs=segments.obs[:, kept],
        act=segments.act[:, kept],
        true_reward=segments.true_reward[:, kept],
        mask=np.ones((len(segments), t), bool),
        final_obs=segments.final_obs,
        terminated=segments.terminated,
        qpos=np.concatenate([segments.qpos[:, :1], segments.qpos[:, kept + 1]], 1),
        qvel=np.concatenate([segments.qvel[:, :1], segments.qvel[:, kept + 1]], 1),
        env_id=segments.env_id,
    )


def rho(model: Any, heldout: Segments) -> float:
    return spearman(model.segment_returns(heldout).mean(0).cpu().numpy(), heldout.returns())


def bench_env(env: str, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    t_start = time.time()
    overrides = [f"seed={seed}", f"reward.pretrain_dir={args.pretrain_dir}", *args.set]
    if args.backbone:
        overrides.append(f"reward.backbone_weights={args.backbone}")
    cfg = exp_config(env, overrides)
    env_id, env_kwargs = str(cfg.env.id), plain(cfg.env.kwargs) or {}
    reward_values = plain(cfg.reward)
    reward_values.pop("kind")
    rapl_cfg = make_config(RAPLConfig, reward_values, "reward")
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)

    # --- videos ---------------------------------------------------------------------------
    t0 = time.time()
    eps = (float(cfg.episodic.eps_min), float(cfg.episodic.eps_max))
    pool = collect_episodes(env_id, args.pool, seed * 1000, rng, eps, env_kwargs)
    heldout = collect_episodes(env_id, args.heldout, seed * 1000 + 500, rng, eps, env_kwargs)
    demos = None
    if cfg.episodic.demos == "expert":
        demos = collect_episodes(env_id, args.demos, seed * 1000 + 900, rng, (0, 0), env_kwargs)
    t_videos = time.time() - t0

    # --- the backbone (loaded, or pre-trained here once and saved) ------------------------
    t0 = time.time()
    encoder = VideoEncoder(rapl_cfg)
    t_backbone = time.time() - t0

    # --- triplets ranked by the scripted teacher ------------------------------------------
    teacher = instantiate(cfg.teacher, rng=np.random.default_rng(seed + 1))
    n_max = max(args.budgets)
    queries = sample_triplets(pool, n_max, rng, new_triplet_ids(n_max, rng))
    labels = teacher(queries)
    kept = encoder.kept_steps(pool.length)
    image_queries = type(queries)(
        strided(queries.first, kept), strided(queries.second, kept), queries.query_id
    )
    heldout_s = strided(heldout, kept)

    assert heldout.qpos is not None
    final_states = heldout.qpos[:, -1]
    out: dict[str, Any] = {
        "env_id": env_id,
        "seed": seed,
        "pool_videos": len(pool),
        "heldout_videos": len(heldout),
        "frames_per_video": len(kept),
        "demos": f"expert x {len(demos)}" if demos is not None else "preferred (triplet winners)",
        "true_return_heldout": [float(heldout.returns().min()), float(heldout.returns().max())],
        "heldout_success_fraction": float(task_success(env_id, final_states).mean()),
        "backbone": encoder.info,
        "seconds": {"videos": round(t_videos, 1), "backbone": round(t_backbone, 1)},
        "budgets": {},
    }
    unaligned_cfg = make_config(RAPLConfig, {**reward_values, "align": False}, "reward")
    rows: dict[int, dict[str, Any]] = {}
    for k in sorted(args.budgets):
        rows_k = np.arange(3 * k)  # the first k triplets (their three pairs each)
        prefs = PreferenceDataset(queries[rows_k], labels[rows_k])
        row: dict[str, Any] = {}
        # RAPL
        t0 = time.time()
        torch.manual_seed(seed)  # each model starts from the same seed, whatever ran before
        rapl = RAPLReward(0, 0, rapl_cfg, encoder=encoder)
        if demos is not None:
            rapl.set_demonstrations(demos)
        fit = rapl.fit(prefs, np.random.default_rng(seed))
        row["rapl"] = rho(rapl, heldout)
        row["rapl_fit"] = {
            key: fit.get(key) for key in ("val_accuracy", "train_accuracy", "best_epoch")
        }
        row["rapl_s"] = round(time.time() - t0, 1)
        # un-aligned OT on the same demonstrations (the triplets' winners without experts)
        t0 = time.time()
        flat = RAPLReward(0, 0, unaligned_cfg, encoder=encoder)
        if demos is not None:
            flat.set_demonstrations(demos)
        else:
            flat.fit(prefs, np.random.default_rng(seed))
        row["unaligned_ot"] = rho(flat, heldout)
        row["unaligned_s"] = round(time.time() - t0, 1)
        # RLHF image reward on the pairs the triplets imply, same frames
        t0 = time.time()
        image_values = {
            "env_id": env_id,
            "env_kwargs": env_kwargs,
            "camera": plain(cfg.env.get("camera", {})) or {},
            **args.image,
        }
        torch.manual_seed(seed)
        image = ImageRewardEnsemble(0, 0, ImageRewardConfig(**image_values))
        image_prefs = PreferenceDataset(image_queries[rows_k], labels[rows_k])
        image_fit = image.fit(image_prefs, np.random.default_rng(seed))
        row["rlhf_image"] = rho(image, heldout_s)
        row["rlhf_fit"] = {key: image_fit.get(key) for key in ("train_accuracy", "epochs")}
        row["rlhf_s"] = round(time.time() - t0, 1)
        image.close()
        rows[k] = row
        log.info("%s seed %d, %d triplets: %s", env, seed, k, row)
    out["budgets"] = rows
    out["seconds"]["total"] = round(time.time() - t_start, 1)
    out["features_computed"] = encoder.computed
    encoder.close()
    return out


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| env | triplets | RAPL | RLHF image | un-aligned OT | seeds |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    by_env: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_env.setdefault(r["env_id"], []).append(r)
    for env_id, runs in by_env.items():
        for k in sorted(runs[0]["budgets"], key=int):
            cells = []
            for key in ("rapl", "rlhf_image", "unaligned_ot"):
                v = np.array([run["budgets"][k][key] for run in runs], dtype=float)
                cells.append(f"{v.mean():.2f}" + (f" ± {v.std():.2f}" if len(v) > 1 else ""))
            lines.append(f"| {env_id} | {k} | {' | '.join(cells)} | {len(runs)} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--envs", nargs="+", default=["sweep", "pusher"], choices=["sweep", "pusher"])
    p.add_argument("--budgets", nargs="+", type=int, default=[10, 30, 90])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--pool", type=int, default=90, help="behaviour videos triplets come from")
    p.add_argument("--heldout", type=int, default=40, help="videos the correlation is measured on")
    p.add_argument("--demos", type=int, default=5, help="expert demonstrations (sweep)")
    p.add_argument("--backbone", default="", help="a torchvision resnet18 state_dict")
    p.add_argument("--pretrain-dir", default="outputs/backbones")
    p.add_argument(
        "--image",
        type=json.loads,
        default={"n_members": 1, "batch_size": 16, "max_epochs": 50, "max_updates": 150},
        help="RLHF image reward settings (JSON, ImageRewardConfig fields)",
    )
    p.add_argument("--set", nargs="*", default=[], help="Hydra overrides for the exps")
    p.add_argument("--out", default="outputs/bench_rapl")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = [bench_env(env, args, seed) for env in args.envs for seed in args.seeds]
    (out / "rapl_bench.json").write_text(json.dumps(results, indent=2, default=str))
    md = table(results)
    (out / "rapl_bench.md").write_text(md + "\n")
    print(md)
    for r in results:
        print(f"{r['env_id']} seed {r['seed']}: backbone {r['backbone']}, seconds {r['seconds']}")


if __name__ == "__main__":
    main()
