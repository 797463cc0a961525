"""RAPL benchmark: how well each learned visual reward follows the true reward, as the paper
measures it.

For each task (the ``rapl_sweep`` / ``rapl_pusher`` exps: env, reward and teacher settings
come from those configs; ``--preset paper`` switches to the paper's settings,
``reward=rapl_paper teacher=triplet_paper``), on one set of behaviour videos:

1. triplets of videos ranked by the scripted teacher from the true reward;
2. four rewards from the same triplets and the same frames of each video:
   * ``rapl``: the ResNet-18 head aligned on the triplets, OT reward against demonstrations;
   * ``rlhf_linear``: the paper's RLHF baseline, the same frozen backbone with a linear
     scalar head trained with Bradley-Terry on the pairs each triplet implies;
   * ``rlhf_cnn``: pbrl's image CNN reward (``reward=image``) trained end to end on the same
     pairs (a stronger baseline than the paper's);
   * ``ot``: the same OT reward on the frozen backbone's own features (un-aligned);
3. on ``--heldout`` other videos of mixed quality, each reward's per-step values against the
   true per-step reward:
   * ``within`` (the paper's metric, the default): Spearman's rank correlation over the time
     steps of each video, averaged over the videos; a video whose learned or true reward is
     constant over time has none and is counted apart (``constant``), not averaged in as 0;
   * ``across``: one score per video (the per-step rewards summed) against its true return,
     correlated over the videos.

Per env and seed, ``<out>/<env>/seed<k>/per_step.npz`` holds ``true [n, T]`` and one
``[n, T]`` array per method (``rapl``, ``rlhf_linear``, ``rlhf_cnn``, ``ot``) at the
``T`` frames the rewards see (``steps``: their step indices), and ``result.json`` the
numbers; a finished env/seed with the same settings is read back instead of run again.

    python scripts/bench_rapl.py --quick                       # sweep, seed 0, small pool
    python scripts/bench_rapl.py --envs sweep pusher --seeds 0 1 2
    python scripts/bench_rapl.py --preset paper --out outputs/bench_rapl_paper

The backbone used (a file given with ``--backbone``, or one pre-trained here) is recorded
with every result; ``--set`` passes more Hydra overrides to the exps. Writes
``<out>/rapl_bench.json`` and ``<out>/rapl_bench.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import fields
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
from pbrl.envs.spec import EnvSpec  # noqa: E402
from pbrl.errors import make_config  # noqa: E402
from pbrl.online.episodic import EpisodicSettings, spearman, within_spearman  # noqa: E402
from pbrl.rewards.image import ImageRewardConfig, ImageRewardEnsemble  # noqa: E402
from pbrl.rewards.rapl import EncoderConfig, RAPLConfig, RAPLReward, VideoEncoder  # noqa: E402
from pbrl.rewards.rlhf_linear import LinearHeadReward, LinearRewardConfig  # noqa: E402

log = logging.getLogger("bench_rapl")
METHODS = ("rapl", "rlhf_linear", "rlhf_cnn", "ot")
PRESETS = {
    "pbrl": [],  # the exps as they are (reward=rapl: relative epsilon, 10 frames, 100 triplets)
    # the paper's: absolute-cost OT (epsilon 1), 45 frames, 150 well-separated triplets of
    # which 50 are equal ones, 6 demonstrations (conf/exp/rapl_paper_sweep.yaml holds the same)
    "paper": [
        "reward=rapl_paper",
        "teacher=triplet_paper",
        "max_feedback=150",
        "++episodic.n_demos=6",
        "++episodic.n_frames=45",
        "++episodic.triplet_min_gap=0.15",
        "++episodic.equal_fraction=0.33",
    ],
}


def exp_config(env: str, overrides: list[str]) -> Any:
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[f"+exp=rapl_{env}", *overrides])


def plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True)


def strided(segments: Segments, kept: np.ndarray) -> Segments:
    """The videos as the rewards see them: only the steps ``kept`` (their states after the
    step), for the image CNN, which scores every step of what it is given."""
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


def scores(per_step: dict[str, np.ndarray], true_returns: np.ndarray) -> dict[str, Any]:
    """Both metrics of every method's per-step rewards (``per_step["true"]``: the truth)."""
    true_flat = np.ptp(per_step["true"], axis=1) == 0
    out: dict[str, Any] = {"true_constant": int(true_flat.sum())}
    for m in METHODS:
        w = within_spearman(per_step[m], per_step["true"])
        out[m] = {
            "within": w.mean,
            "within_std": w.std,
            "within_videos": w.counted,
            "constant": w.constant,
            "across": spearman(per_step[m].sum(1), true_returns),
        }
    return out


def bench_env(env: str, args: argparse.Namespace, seed: int, run_dir: Path) -> dict[str, Any]:
    t_start = time.time()
    overrides = [f"seed={seed}", f"reward.pretrain_dir={args.pretrain_dir}"]
    overrides += PRESETS[args.preset] + list(args.set)
    if args.backbone:
        overrides.append(f"reward.backbone_weights={args.backbone}")
    cfg = exp_config(env, overrides)
    env_id, env_kwargs = str(cfg.env.id), plain(cfg.env.kwargs) or {}
    settings = make_config(EpisodicSettings, plain(cfg.episodic), "episodic")
    reward_values = plain(cfg.reward)
    reward_values.pop("kind")
    # the frames of a video the rewards see are the episodic recipe's, as in a run
    reward_values.update(frame_stride=settings.frame_stride, n_frames=settings.n_frames)
    rapl_cfg = make_config(RAPLConfig, reward_values, "reward")
    view = EnvSpec(env_id, env_kwargs, plain(cfg.env.get("camera", {})) or {})
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    n_triplets = int(args.triplets or cfg.max_feedback)

    # --- videos ---------------------------------------------------------------------------
    t0 = time.time()
    eps = (settings.eps_min, settings.eps_max)
    pool = collect_episodes(env_id, args.pool, seed * 1000, rng, eps, env_kwargs)
    heldout = collect_episodes(env_id, args.heldout, seed * 1000 + 500, rng, eps, env_kwargs)
    demos = None
    if settings.demos == "expert":
        demos = collect_episodes(
            env_id, settings.n_demos, seed * 1000 + 900, rng, (0, 0), env_kwargs
        )
    t_videos = time.time() - t0

    # --- the backbone (loaded, or pre-trained here once and saved) ------------------------
    t0 = time.time()
    encoder = VideoEncoder(rapl_cfg, env=view)
    t_backbone = time.time() - t0

    # --- triplets ranked by the scripted teacher ------------------------------------------
    teacher = instantiate(cfg.teacher, rng=np.random.default_rng(seed + 1))
    ids = new_triplet_ids(n_triplets, rng)
    queries = sample_triplets(
        pool,
        n_triplets,
        rng,
        ids,
        settings.triplet_min_gap,
        settings.equal_fraction,
        0.5 * float(cfg.teacher.get("equal_gap", 0.0)),
    )
    labels = teacher(queries)
    prefs = PreferenceDataset(queries, labels)
    kept = encoder.kept_steps(pool.length)
    image_prefs = PreferenceDataset(
        type(queries)(
            strided(queries.first, kept), strided(queries.second, kept), queries.query_id
        ),
        labels,
    )
    heldout_s = strided(heldout, kept)
    heldout_feats = encoder.video_features(heldout)
    per_step: dict[str, np.ndarray] = {"true": heldout.true_reward[:, kept].astype(np.float64)}
    fits: dict[str, Any] = {}
    seconds: dict[str, float] = {"videos": round(t_videos, 1), "backbone": round(t_backbone, 1)}

    # --- RAPL -----------------------------------------------------------------------------
    t0 = time.time()
    torch.manual_seed(seed)  # each model starts from the same seed, whatever ran before
    rapl = RAPLReward(0, 0, rapl_cfg, encoder=encoder)
    if demos is not None:
        rapl.set_demonstrations(demos)
    fits["rapl"] = rapl.fit(prefs, np.random.default_rng(seed))
    per_step["rapl"] = rapl.video_rewards(heldout_feats).cpu().numpy()
    seconds["rapl"] = round(time.time() - t0, 1)

    # --- un-aligned OT on the same demonstrations (the triplets' winners without experts) --
    t0 = time.time()
    flat = RAPLReward(
        0, 0, make_config(RAPLConfig, {**reward_values, "align": False}, "reward"), encoder=encoder
    )
    if demos is not None:
        flat.set_demonstrations(demos)
    else:
        flat.fit(prefs, np.random.default_rng(seed))
    per_step["ot"] = flat.video_rewards(heldout_feats).cpu().numpy()
    seconds["ot"] = round(time.time() - t0, 1)

    # --- the paper's RLHF: frozen backbone + linear scalar head, BT on the pairs ----------
    t0 = time.time()
    torch.manual_seed(seed)
    shared = {
        f.name: reward_values[f.name] for f in fields(EncoderConfig) if f.name in reward_values
    }
    shared.pop("batch_size", None)  # counts pairs here: the default, RAPL's 10 triplets' pairs
    linear = LinearHeadReward(0, 0, LinearRewardConfig(**shared), encoder=encoder)
    fits["rlhf_linear"] = linear.fit(prefs, np.random.default_rng(seed))
    with torch.no_grad():
        per_step["rlhf_linear"] = linear.video_rewards(heldout_feats).cpu().numpy()
    seconds["rlhf_linear"] = round(time.time() - t0, 1)

    # --- pbrl's image CNN trained end to end on the same pairs and frames -----------------
    t0 = time.time()
    torch.manual_seed(seed)
    image = ImageRewardEnsemble(0, 0, ImageRewardConfig(**args.image), env=view)
    fits["rlhf_cnn"] = image.fit(image_prefs, np.random.default_rng(seed))
    with torch.no_grad():
        per_step["rlhf_cnn"] = image.segment_rewards(heldout_s).mean(0).cpu().numpy()
    seconds["rlhf_cnn"] = round(time.time() - t0, 1)
    image.close()

    per_step = {k: np.asarray(v, dtype=np.float64) for k, v in per_step.items()}
    np.savez_compressed(run_dir / "per_step.npz", steps=kept, **per_step)
    assert heldout.qpos is not None
    seconds["total"] = round(time.time() - t_start, 1)
    out: dict[str, Any] = {
        "env_id": env_id,
        "env_kwargs": env_kwargs,
        "seed": seed,
        "preset": args.preset,
        "pool_videos": len(pool),
        "heldout_videos": len(heldout),
        "frames_per_video": len(kept),
        "triplets": n_triplets,
        "teacher": teacher.stats(),
        "demos": f"expert x {len(demos)}" if demos is not None else "preferred (triplet winners)",
        "ot": {"epsilon": rapl_cfg.epsilon, "relative_epsilon": rapl_cfg.relative_epsilon},
        "overrides": overrides,
        "true_return_heldout": [float(heldout.returns().min()), float(heldout.returns().max())],
        "heldout_success_fraction": float(task_success(env_id, heldout.qpos[:, -1]).mean()),
        "backbone": encoder.info,
        "scores": scores(per_step, heldout.returns()),
        "fits": {
            m: {k: f.get(k) for k in ("val_accuracy", "train_accuracy", "best_epoch", "epochs")}
            for m, f in fits.items()
        },
        "features_computed": encoder.computed,
        "seconds": seconds,
    }
    encoder.close()
    log.info("%s seed %d: %s", env, seed, out["scores"])
    return out


def signature(args: argparse.Namespace, env: str, seed: int) -> dict[str, Any]:
    """What a finished env/seed was run with: rerun only when it differs."""
    keys = ("preset", "pool", "heldout", "triplets", "backbone", "image", "set")
    return {"env": env, "seed": seed, **{k: getattr(args, k) for k in keys}}


def fmt(values: list[float]) -> str:
    v = np.array(values, dtype=float)
    v = v[np.isfinite(v)]
    if not len(v):
        return "-"
    return f"{v.mean():.2f}" + (f" ± {v.std():.2f}" if len(v) > 1 else "")


def table(results: list[dict[str, Any]], metric: str) -> str:
    names = {"rapl": "RAPL", "rlhf_linear": "RLHF linear", "rlhf_cnn": "RLHF CNN", "ot": "OT"}
    head = " | ".join(names[m] for m in METHODS)
    lines = [
        f"Spearman ({metric}), mean ± std over seeds; RAPL / RLHF linear per seed",
        "",
        f"| env | seeds | {head} | RAPL / RLHF linear | per seed (RAPL, RLHF linear) | constant rows |",
        "|---|---:|" + "---:|" * len(METHODS) + "---:|---|---|",
    ]
    by_env: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_env.setdefault(r["env_id"], []).append(r)
    for env_id, runs in by_env.items():
        cells = [fmt([run["scores"][m][metric] for run in runs]) for m in METHODS]
        rapl = np.array([run["scores"]["rapl"][metric] for run in runs], dtype=float)
        lin = np.array([run["scores"]["rlhf_linear"][metric] for run in runs], dtype=float)
        ratio = f"{np.nanmean(rapl) / np.nanmean(lin):.2f}" if np.nanmean(lin) else "-"
        seeds = ", ".join(
            f"s{run['seed']}: {a:.2f} / {b:.2f}" for run, a, b in zip(runs, rapl, lin, strict=True)
        )
        n_rows = sum(run["heldout_videos"] for run in runs)
        flat = sum(run["scores"]["true_constant"] for run in runs)
        const = f"{n_rows} videos, true reward constant in {flat}; left out: " + ", ".join(
            f"{m} {sum(run['scores'][m]['constant'] for run in runs)}" for m in METHODS
        )
        lines.append(
            f"| {env_id} | {len(runs)} | {' | '.join(cells)} | {ratio} | {seeds} | {const} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--envs", nargs="+", default=["sweep", "pusher"], choices=["sweep", "pusher"])
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="default 0 1 2 (quick: 0)")
    p.add_argument("--preset", default="pbrl", choices=list(PRESETS))
    p.add_argument("--metric", default="within", choices=["within", "across"])
    p.add_argument("--triplets", type=int, default=0, help="0: the exp's max_feedback")
    p.add_argument("--pool", type=int, default=120, help="behaviour videos triplets come from")
    p.add_argument("--heldout", type=int, default=60, help="videos the correlation is measured on")
    p.add_argument("--quick", action="store_true", help="sweep only, seed 0, a smaller pool")
    p.add_argument("--backbone", default="", help="a torchvision resnet18 state_dict")
    p.add_argument("--pretrain-dir", default="outputs/backbones")
    p.add_argument(
        "--image",
        type=json.loads,
        default={
            "n_members": 1,
            "image_size": 64,
            "batch_size": 16,
            "max_epochs": 50,
            "max_updates": 150,
        },
        help="RLHF CNN settings (JSON, ImageRewardConfig fields)",
    )
    p.add_argument("--set", nargs="*", default=[], help="Hydra overrides for the exps")
    p.add_argument("--out", default="")
    # one thread: two spin-wait on each other on a busy machine (the fit ran 50x slower)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    if args.quick:
        args.envs = ["sweep"] if "--envs" not in sys.argv else args.envs
        args.pool, args.heldout = min(args.pool, 60), max(min(args.heldout, 50), 50)
        args.triplets = args.triplets or 60
    args.seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    out = Path(args.out or f"outputs/bench_rapl/{args.preset}{'_quick' if args.quick else ''}")
    results = []
    for env in args.envs:
        for seed in args.seeds:
            run_dir = out / env / f"seed{seed}"
            run_dir.mkdir(parents=True, exist_ok=True)
            done, sig = run_dir / "result.json", signature(args, env, seed)
            if done.is_file() and (run_dir / "per_step.npz").is_file():
                old = json.loads(done.read_text())
                if old.get("signature") == sig:
                    log.info("%s seed %d: finished earlier, read from %s", env, seed, done)
                    results.append(old)
                    continue
            result = {**bench_env(env, args, seed, run_dir), "signature": sig}
            done.write_text(json.dumps(result, indent=2, default=str))
            results.append(result)
    (out / "rapl_bench.json").write_text(json.dumps(results, indent=2, default=str))
    md = "\n\n".join(
        table(results, m) for m in (args.metric, *({"within", "across"} - {args.metric}))
    )
    (out / "rapl_bench.md").write_text(md + "\n")
    print(md)
    for r in results:
        print(f"{r['env_id']} seed {r['seed']}: backbone {r['backbone']}, seconds {r['seconds']}")


if __name__ == "__main__":
    main()
