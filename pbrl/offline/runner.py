"""The offline runner: dataset -> preference labels -> (reward model) -> algorithm -> evaluation.

``python -m pbrl.train +exp=offline_iql_hopper`` reaches this recipe (``RECIPE``) through
``algo.kind: offline``. ``algo.name`` picks the algorithm from :data:`ALGORITHMS`; the whole
``algo`` group is its config dataclass. The runner makes the labels when the algorithm
learns from them (``algo.preference``), fits the ``reward`` group's model on them and
relabels the dataset when it learns a reward (``algo.learn_reward``), then trains and
evaluates. The summary follows the shared run contract (:class:`pbrl.run.RunSummary`),
with ``total_timesteps`` counting gradient steps, plus dataset facts and normalized scores.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter

from pbrl.checkpoint import PROGRESS
from pbrl.data import PreferenceDataset
from pbrl.data.offline import OfflineDataset, load_dataset, load_preferences, with_ties
from pbrl.envs.spec import EnvSpec
from pbrl.errors import ConfigError, closest, make_config
from pbrl.evaluation import EvalResult
from pbrl.offline import bc, cpl, dtr, iql, oppo, vpl_iql
from pbrl.offline.common import LearnedReward, OfflineAlgoConfig, OfflineTrainer, require_labels
from pbrl.rewards import REWARD_MODELS, load_reward_model, make_reward_model, reward_kind_name
from pbrl.rewards.base import RewardModel
from pbrl.rewards.dispatch import has_latent, relabel_dataset, state_reward_fn
from pbrl.run import Progress, Recipe, RunContext, label_stats, plain
from pbrl.teachers.base import Teacher, WaitPolicy, ask

C = TypeVar("C", bound=OfflineAlgoConfig)


@dataclass(frozen=True)
class OfflineAlgorithm(Generic[C]):
    """An offline algorithm: its config dataclass (the ``algo`` group's keys) and its
    ``build(config, data, labels, reward, total_steps, device, seed)``."""

    config: type[C]
    build: Callable[
        [
            C,
            OfflineDataset,
            PreferenceDataset | None,
            LearnedReward | None,
            int,
            torch.device,
            int,
        ],
        OfflineTrainer,
    ]


# algo.name -> the algorithm
log = logging.getLogger("pbrl")
ALGORITHMS: dict[str, OfflineAlgorithm[Any]] = {
    "iql": OfflineAlgorithm(iql.IQLConfig, iql.build),
    "iql_oracle": OfflineAlgorithm(iql.IQLConfig, iql.build),
    "bc": OfflineAlgorithm(bc.BCConfig, bc.build),
    "cpl": OfflineAlgorithm(cpl.CPLConfig, cpl.build),
    "oppo": OfflineAlgorithm(oppo.OPPOConfig, oppo.build),
    "dtr": OfflineAlgorithm(dtr.DTRConfig, dtr.build),
    "vpl_iql": OfflineAlgorithm(vpl_iql.VPLIQLConfig, vpl_iql.build),  # IQL on s ⊕ user latent
}


# -- labels --------------------------------------------------------------------------------


def make_labels(
    cfg: DictConfig,
    data: OfflineDataset,
    rng: np.random.Generator,
    run_dir: Path,
    teacher: Teacher | None,
    wait: WaitPolicy,
) -> PreferenceDataset:
    """The run's preference labels: a user's file (``dataset.preferences``), or scripted ones."""
    saved = run_dir / "preferences.npz"
    if saved.exists():  # a resumed run keeps its labels
        return PreferenceDataset.load(saved)
    path = cfg.dataset.get("preferences")
    length = int(cfg.feedback.segment_length)
    if path:
        try:
            prefs = load_preferences(Path(str(path)).expanduser(), data, length)
        except (ValueError, FileNotFoundError) as exc:
            raise ConfigError(f"dataset.preferences: {exc}") from exc
        if cfg.max_feedback and len(prefs) > cfg.max_feedback:
            prefs = prefs[np.arange(int(cfg.max_feedback))]
    else:
        assert teacher is not None  # asks_teacher
        # Uni-RLHF's scripted pairs, answered through the teacher protocol (a population's
        # members keep their own annotator ids)
        queries = data.sample_queries(int(cfg.max_feedback), length, rng)
        prefs = with_ties(ask(teacher, queries, wait), float(cfg.dataset.get("tie_threshold", 0.0)))
    prefs.save(saved)
    return prefs


def teacher_info(ctx: RunContext, labels: PreferenceDataset | None) -> dict[str, object] | None:
    """The summary's ``teacher``: the label file, or the teacher's config with what it
    reports about itself (as online runs), or None."""
    if labels is None:
        return None
    path = ctx.cfg.dataset.get("preferences")
    if path:
        return {"source": "file", "path": str(Path(str(path)).expanduser())}
    return ctx.teacher_summary() or plain(ctx.cfg.teacher)


# -- the learned reward --------------------------------------------------------------------


def learn_reward(
    values: Mapping[str, object],
    data: OfflineDataset,
    labels: PreferenceDataset,
    rng: np.random.Generator,
    path: Path,
    segment_length: int,
    device: torch.device,
    env: EnvSpec | None = None,
) -> tuple[LearnedReward, dict[str, float]]:
    """The ``reward`` group's model fit on the labels (or the run's saved one) and every
    transition relabeled by it; returns the fit's metrics (none for a saved model)."""
    kind = str(values.get("kind", "ensemble"))
    metrics: dict[str, float] = {}
    if path.exists():
        model = load_reward_model(path, device)
        if kind in REWARD_MODELS and reward_kind_name(model) != kind:
            raise ConfigError(
                f"{path} holds a {type(model).__name__}, but reward.kind={kind}: "
                "use a fresh run directory or the reward group it was trained with"
            )
    else:
        model = make_reward_model(values, data.obs_dim, data.act_dim, device, env)
        t0 = time.time()
        metrics = {**model.fit(labels, rng), "fit_time_s": time.time() - t0}
        model.save(path)
    rewards = relabel_dataset(model, data, segment_length)
    return LearnedReward(model, np.asarray(rewards, dtype=np.float32)), metrics


def true_reward_corr(rewards: np.ndarray, true: np.ndarray) -> float | None:
    """Correlation of relabeled and true rewards (a diagnostic, never trained on)."""
    if np.std(rewards) > 0 and np.std(true) > 0:
        return float(np.corrcoef(rewards, true)[0, 1])
    return None


# -- the run -------------------------------------------------------------------------------


def check(cfg: DictConfig) -> OfflineAlgoConfig:
    """The algorithm's config, after the checks that need no data."""
    name = str(cfg.algo.name)
    if name not in ALGORITHMS:
        raise ConfigError(
            f"unknown offline algo {name!r}{closest(name, list(ALGORITHMS))}: "
            f"choose one of {', '.join(ALGORITHMS)}"
        )
    config: OfflineAlgoConfig = make_config(ALGORITHMS[name].config, plain(cfg.algo), "algo")
    if "dataset" not in cfg or not cfg.dataset.get("id"):
        raise ConfigError(
            "offline algorithms need a dataset: add +dataset=<name> "
            "(conf/dataset) or dataset.id=<minari id>"
        )
    if config.learn_reward and not config.preference:
        raise ConfigError(
            f"algo {name} learns its reward from preference labels but algo.preference=false: "
            "set algo.preference=true, or algo.learn_reward=false for the true reward"
        )
    if config.preference and not cfg.dataset.get("preferences") and int(cfg.max_feedback) <= 0:
        raise ConfigError(
            f"algo {name} learns from preference labels but max_feedback={cfg.max_feedback}: "
            "set max_feedback > 0 (scripted labels) or dataset.preferences=FILE"
        )
    kind = str(cfg.reward.get("kind", "ensemble"))
    if config.learn_reward and config.reward_kinds and kind not in config.reward_kinds:
        raise ConfigError(
            f"algo {name} needs reward={'|'.join(config.reward_kinds)}, not reward.kind={kind}: "
            f"add reward={config.reward_kinds[0]}"
        )
    return config


def check_segment_length(data: OfflineDataset, length: int, needed: bool) -> None:
    """No window of ``length`` steps in the dataset is an error; windows from only a few of
    its episodes (the rest are shorter and were cut off, not terminated) is a warning."""
    if not needed:
        return
    ep_lengths = data.episode_lengths
    short = float(np.mean(ep_lengths < length))
    if len(data.window_starts(length)) == 0:
        raise ConfigError(
            f"feedback.segment_length={length} is longer than every episode of "
            f"{data.dataset_id} (longest {int(ep_lengths.max())} steps) that could be compared: "
            "use a shorter feedback.segment_length"
        )
    if short > 0.5:
        log.warning(
            "feedback.segment_length=%d is longer than %.0f%% of the episodes of %s "
            "(median %d steps): pairs come only from the rest, and from episodes that "
            "terminated early (padded)",
            length,
            100 * short,
            data.dataset_id,
            int(np.median(ep_lengths)),
        )


def asks_teacher(cfg: DictConfig, config: OfflineAlgoConfig) -> bool:
    """Whether the run asks a teacher: it learns from labels that no file gives."""
    return config.preference and not cfg.dataset.get("preferences")


def run(ctx: RunContext, config: OfflineAlgoConfig) -> dict[str, object]:
    """Train and evaluate one offline run from its context; writes ``summary.json``.

    A problem with the config or the data (unknown algo or dataset, malformed label file,
    wrong env) is a :class:`pbrl.errors.ConfigError` naming the problem and the fix.
    """
    cfg, run_dir, rng, device = ctx.cfg, ctx.run_dir, ctx.rng, ctx.device
    ckpt_dir = run_dir / "checkpoint"
    algorithm = ALGORITHMS[config.name]
    segment_length = int(cfg.feedback.segment_length)

    # --- data and labels -----------------------------------------------------------------
    true_data = load_dataset(str(cfg.dataset.id))
    if true_data.env_id and true_data.env_id != cfg.env.id:
        raise ConfigError(
            f"dataset {cfg.dataset.id} was collected on {true_data.env_id} "
            f"but env.id={cfg.env.id}: pick the matching env group"
        )
    check_segment_length(true_data, segment_length, config.preference)
    labels = None
    if config.preference:
        labels = require_labels(
            make_labels(cfg, true_data, rng, run_dir, ctx.teacher, ctx.wait), config.name
        )
    user = str(cfg.get("user") or "")  # VPL: whose latent the policy acts for
    if user and (labels is None or config.name != "vpl_iql"):
        raise ConfigError(f"user={user} picks an annotator's latent: it needs algo=vpl_iql")
    if user and labels is not None:
        vpl_iql.user_labels(labels, user)  # an unknown user fails before any training
    ckpt_dir.mkdir(parents=True, exist_ok=True)  # the data loaded: the run starts
    # a preference learner never sees the true reward: it is only for oracles and evaluation
    data = (
        true_data.with_rewards(np.full(len(true_data), np.nan, np.float32))
        if config.preference
        else true_data
    )

    tb_dir = run_dir / "tb"
    writer = SummaryWriter(str(tb_dir))
    writer.add_text("hyperparameters", "```\n" + OmegaConf.to_yaml(cfg) + "\n```")
    if labels is not None:
        writer.add_scalar("preferences/labels", len(labels.trainable), 0)
        writer.add_scalar("preferences/queries", len(labels), 0)
        for k, v in label_stats(labels).items():
            writer.add_scalar(f"preferences/{k}", v, 0)

    # --- the learned reward ----------------------------------------------------------------
    reward: LearnedReward | None = None
    reward_metrics: dict[str, float] = {}
    if config.learn_reward:
        assert labels is not None  # check(): learn_reward needs preference
        reward, reward_metrics = learn_reward(
            plain(cfg.reward),
            data,
            labels,
            rng,
            ckpt_dir / "reward_model.pt",
            segment_length,
            device,
            ctx.env,
        )
        corr = true_reward_corr(reward.rewards, true_data.rewards)
        if corr is not None:
            reward_metrics["true_reward_corr"] = corr
        for k, v in reward_metrics.items():
            writer.add_scalar(f"reward_model/{k}", v, 0)
        if ctx.teacher is not None and has_latent(reward.model):
            ctx.teacher.set_reward_model(reward.model)  # teacher=human: the page shows z spread
    reward_model: RewardModel | None = None if reward is None else reward.model
    reward_fn = state_reward_fn(reward_model)  # evaluation's learned return, where it has one

    # --- the algorithm -------------------------------------------------------------------
    total = int(cfg.total_timesteps)
    trainer = algorithm.build(config, data, labels, reward, total, device, int(cfg.seed))
    if isinstance(trainer, vpl_iql.VPLIQLTrainer):
        trainer.select_user(user)
    gen = torch.Generator().manual_seed(int(cfg.seed))
    start, resumed = 0, (ckpt_dir / "trainer.pt").exists()
    if resumed:
        blob = torch.load(ckpt_dir / "trainer.pt", map_location=device, weights_only=False)
        trainer.load_state_dict(blob["trainer"])
        gen.set_state(blob["generator"])
        start = int(blob["step"])

    def checkpoint(step: int) -> None:
        tmp = ckpt_dir / "trainer.pt.tmp"
        torch.save(
            {"trainer": trainer.state_dict(), "generator": gen.get_state(), "step": step}, tmp
        )
        tmp.replace(ckpt_dir / "trainer.pt")
        progress = ckpt_dir / f"{PROGRESS}.tmp"  # read by the start-of-run announcement
        progress.write_text(json.dumps({"step": step}))
        progress.replace(ckpt_dir / PROGRESS)

    evaluation = ctx.evaluation

    def eval_now(step: int, video_name: str) -> EvalResult:
        agent = trainer.agent()
        ev = evaluation.policy(agent.act, reward_fn, video_name, on_reset=agent.reset)
        writer.add_scalar("eval/true_return", ev.mean, step)
        score = true_data.normalized_score(ev.mean)
        if score is not None:
            writer.add_scalar("eval/normalized_score", float(score), step)
        d4rl = true_data.d4rl_normalized_score(ev.mean)
        if d4rl is not None:
            writer.add_scalar("eval/d4rl_normalized_score", float(d4rl), step)
        return ev

    # --- training --------------------------------------------------------------------------
    log_every = max(1, min(1000, total // 20))
    every_eval = int(cfg.eval.every)
    every_ckpt = int(cfg.checkpoint_every)
    videos: list[str] = []
    sums: dict[str, float] = {}
    t_train = time.time()
    progress = Progress(
        total,
        f"{config.name} {cfg.dataset.id}",
        initial=start,
        unit="grad steps",
        enabled=bool(cfg.progress_bar),
    )
    for step in range(start, total):
        metrics = trainer.train(trainer.sample(gen))
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + v
        if (step + 1) % log_every == 0 or step + 1 == total:
            n = (step % log_every) + 1
            for k, v in sums.items():
                writer.add_scalar(f"train/{k}", v / n, step + 1)
            writer.add_scalar(
                "time/steps_per_s", (step + 1 - start) / (time.time() - t_train), step + 1
            )
            sums = {}
        if every_ckpt > 0 and (step + 1) % every_ckpt == 0:
            checkpoint(step + 1)
        if every_eval > 0 and (step + 1) % every_eval == 0 and step + 1 < total:
            ev = eval_now(step + 1, f"eval_{step + 1:09d}.mp4")
            if ev.video:
                videos.append(ev.video)
            progress.update_to(step + 1, ret=f"{ev.mean:.0f}")
        progress.update_to(step + 1)
    progress.close()
    checkpoint(total)
    train_time = time.time() - t_train

    # --- evaluation on the true reward ----------------------------------------------------
    ev = eval_now(total, "eval.mp4")
    rand = evaluation.random()
    writer.add_scalar("eval/random_true_return", rand.mean, total)
    test_acc = None
    if reward_model is not None and evaluation.test_queries > 0:
        test_acc = evaluation.test_accuracy(
            reward_model, lambda n, r: true_data.sample_queries(n, segment_length, r)
        )
        writer.add_scalar("reward_model/test_accuracy", test_acc, total)
    users = None  # --- VPL: the policy for each annotator (or `user`), their latents inferred
    if isinstance(trainer, vpl_iql.VPLIQLTrainer):
        users = vpl_iql.evaluate_users(
            trainer,
            [user] if user else trainer.users,
            str(cfg.env.id),
            dict(ctx.env.kwargs),
            int(cfg.eval.n_episodes),
            ctx.seeds.eval,
            evaluation.video_dir,
            evaluation.video_size,
        )
        for name, res in users.items():
            for goal, rate in res["reached"].items():
                writer.add_scalar(f"eval/{name}/reached_{goal}", rate, total)
    writer.close()

    scores = true_data.normalized_score(np.asarray(ev.true_returns))
    d4rl = true_data.d4rl_normalized_score(np.asarray(ev.true_returns))
    summary = ctx.summary(
        config.name,
        total_timesteps=total,
        num_labels=0 if labels is None else len(labels.trainable),
        num_queries=0 if labels is None else len(labels),
        teacher=teacher_info(ctx, labels),
        eval_true_return_mean=ev.mean,
        eval_true_return_std=ev.std,
        eval_learned_return_mean=(
            float(np.mean(ev.learned_returns)) if reward_fn is not None else None
        ),
        random_true_return_mean=rand.mean,
        reward_model_test_accuracy=test_acc,
        videos=([ev.video] if ev.video else []) + videos,
        tensorboard_dir=str(tb_dir),
        resumed=resumed,
        extra={
            "dataset_id": str(cfg.dataset.id),
            "dataset_transitions": len(true_data),
            "eval_normalized_score_mean": None if scores is None else float(np.mean(scores)),
            "eval_normalized_score_std": None if scores is None else float(np.std(scores)),
            "eval_d4rl_normalized_score_mean": None if d4rl is None else float(np.mean(d4rl)),
            "eval_d4rl_normalized_score_std": None if d4rl is None else float(np.std(d4rl)),
            "dataset_ref_min_score": true_data.ref_min_score,
            "dataset_ref_max_score": true_data.ref_max_score,
            "reward_model": reward_metrics or None,
            "train_time_s": train_time,
            **({"users": users} if users is not None else {}),
        },
    ).write(run_dir)
    ctx.close()
    return summary


RECIPE = Recipe(check, asks_teacher, run)
