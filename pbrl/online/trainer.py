"""The online recipe: PEBBLE (SAC) and PrefPPO (PPO), and the true-reward baselines through the
same code path, wired from a Hydra config. The only module of ``pbrl.online`` that reads a
``DictConfig``: it turns the config into typed parts and hands them to SB3 as callbacks.

Reads top to bottom: settings, environment and learned reward, agent, callbacks, learning,
evaluation, summary.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from omegaconf import DictConfig
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from pbrl.data.pool import TrajectoryPool
from pbrl.envs.spec import time_limit
from pbrl.errors import ConfigError, make_config
from pbrl.online.callbacks import (
    CheckpointCallback,
    EvalCallback,
    LearnedReturnLogger,
    ProgressCallback,
    QueryVideos,
    RewardTimeLogger,
    deterministic_policy,
)
from pbrl.online.feedback import FeedbackCallback, FeedbackSchedule
from pbrl.online.heron import (
    KEPT_FIELDS,
    TransitionFeedback,
    ValueTargetOnly,
    check_transitions,
    pool_transitions,
    replay_buffer_transitions,
)
from pbrl.online.logs import run_logger
from pbrl.online.pebble import EntropyReplayBuffer, PebbleCallback
from pbrl.online.wrappers import PreferenceVecEnv, make_pool
from pbrl.query import QuerySelector
from pbrl.rewards import REWARD_MODELS, load_reward_model, make_reward_model
from pbrl.rewards.base import RewardModel
from pbrl.rewards.dispatch import needs_labels, scores_steps, state_reward_fn, step_fields
from pbrl.run import Progress, Recipe, RunContext, plain
from pbrl.sim import make_vec_env

log = logging.getLogger("pbrl")
ALGOS: dict[str, type[BaseAlgorithm]] = {"sac": SAC, "ppo": PPO}


@dataclass
class OnlineAlgo:
    """``conf/algo/{pebble,prefppo,sac,ppo}.yaml``."""

    name: str
    sb3: str  # sac | ppo
    kind: str = "online"
    preference: bool = True  # learn the reward from preferences (else: the true reward)
    unsupervised_steps: int = 0  # PEBBLE's state-entropy pre-training before the first query
    entropy_k: int = 5  # k of the k-NN entropy estimate
    reset_critic: bool = False  # re-initialize SAC's critic after pre-training (PEBBLE)
    normalize_reward: bool = False  # SB3 VecNormalize on the (learned) reward (PrefPPO)
    normalize_obs: bool = False  # SB3 VecNormalize on the policy's observations (the reward
    # model and the trajectory pool always see raw observations)
    # SAC with a frame reward (reward=image, clip, ...): the frames of the steps taken are
    # scored this many steps at a time, in one batch (1: each step as it is taken); SAC does
    # not sample the newest, unscored steps until their batch is scored
    frame_score_every: int = 64
    learned_reward: str = "policy"  # policy | value_target: PPO's value target only, the
    # advantages from the true reward (HERON's official robotics code; pbrl.online.heron)
    kwargs: dict[str, Any] = field(default_factory=dict)  # the SB3 algorithm's arguments

    def __post_init__(self) -> None:
        if self.sb3 not in ALGOS:
            raise ConfigError(f"algo.sb3={self.sb3!r}: choose one of {', '.join(ALGOS)}")
        if self.learned_reward not in ("policy", "value_target"):
            raise ConfigError(
                f"algo.learned_reward={self.learned_reward!r}: use policy or value_target"
            )
        if int(self.frame_score_every) < 1:
            raise ConfigError(
                f"algo.frame_score_every={self.frame_score_every} must be >= 1 (1: score each "
                "step as it is taken)"
            )
        if self.learned_reward == "value_target" and self.sb3 != "ppo":
            raise ConfigError("algo.learned_reward=value_target needs PPO (algo.sb3=ppo)")


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:  # a config may be checked more than once (tests, sweeps)
    if message not in _WARNED:
        _WARNED.add(message)
        log.warning(message)


def check(cfg: DictConfig) -> tuple[OnlineAlgo, FeedbackSchedule]:
    """Typed settings of an online run, after every check that needs no simulation: a run
    that could not learn (no feedback round fits, segments longer than an episode, too few
    labels for a first reward update) is a :class:`ConfigError`."""
    if "batch_size" in cfg.feedback:  # renamed: batch_size means a gradient step's minibatch
        raise ConfigError(
            "feedback.batch_size is now feedback.queries_per_round (queries asked per round): "
            "rename it in your config"
        )
    algo = make_config(OnlineAlgo, plain(cfg.algo), "algo")
    schedule = make_config(
        FeedbackSchedule, {**plain(cfg.feedback), "max_feedback": cfg.max_feedback}, "feedback"
    )
    for key in ("n_envs", "checkpoint_every", "total_timesteps"):
        if int(cfg[key]) <= 0:
            raise ConfigError(f"{key}={cfg[key]} must be positive")
    if int(cfg.eval.every) < 0 or int(cfg.eval.n_episodes) < 1:
        raise ConfigError("eval.every must be >= 0 (0: at the end only), eval.n_episodes >= 1")
    if not algo.preference:
        return algo, schedule
    reward = plain(cfg.reward)
    kind = str(reward.pop("kind", "ensemble"))
    if kind not in REWARD_MODELS:
        raise ConfigError(f"reward.kind={kind!r}: choose one of {', '.join(REWARD_MODELS)}")
    make_config(REWARD_MODELS[kind][1], reward, "reward")
    if not scores_steps(REWARD_MODELS[kind][0]):
        raise ConfigError(
            f"reward.kind={kind} has no reward of a single step, which the online loop needs: "
            "use reward=ensemble (states) or reward=image (frames) online"
        )
    if not needs_labels(REWARD_MODELS[kind][0]):
        if schedule.max_feedback != 0:
            raise ConfigError(
                f"reward.kind={kind} is zero-shot and learns nothing from labels: set "
                "max_feedback=0 (e.g. algo=sac_zero_shot max_feedback=0)"
            )
        if algo.unsupervised_steps > 0:  # PEBBLE's first reward update ends it: none comes
            raise ConfigError(
                f"reward.kind={kind} is zero-shot, but algo.unsupervised_steps="
                f"{algo.unsupervised_steps} asks for state-entropy pre-training, which only a "
                "reward update ends: the policy would never see the reward. Set "
                "algo.unsupervised_steps=0 (an exp may set it for algo=pebble)"
            )
        return algo, schedule
    if schedule.pairs == "transitions":  # HERON's official pairs: no label budget applies
        check_transitions(schedule, int(cfg.total_timesteps))
        return algo, schedule
    try:
        QuerySelector(**plain(cfg.query))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"query: {exc}") from None
    total = int(cfg.total_timesteps)
    if schedule.max_feedback == 0:
        raise ConfigError(
            f"algo={algo.name} learns its reward from preferences but max_feedback=0: give "
            f"it a label budget, or train on the true reward (algo={algo.sb3})"
        )
    first = max(algo.unsupervised_steps, schedule.first_at)
    if first >= total:
        raise ConfigError(
            f"no feedback round fits: the first is at step {first} (algo.unsupervised_steps="
            f"{algo.unsupervised_steps}, feedback.first_at={schedule.first_at}) but "
            f"total_timesteps={total}: raise total_timesteps or lower those"
        )
    rounds = schedule.rounds(first, total)  # as FeedbackCallback holds them
    asked = min(schedule.max_feedback, rounds * schedule.queries_per_round)
    if asked < max(schedule.min_labels, 1):
        raise ConfigError(
            f"only {asked} queries fit ({rounds} rounds of {schedule.queries_per_round}) but "
            f"feedback.min_labels={schedule.min_labels} are needed before the first reward "
            "update: raise total_timesteps or feedback.queries_per_round, or lower feedback.every"
        )
    if asked < schedule.max_feedback:
        _warn_once(
            f"only {asked} of max_feedback={schedule.max_feedback} queries fit in "
            f"total_timesteps={total} ({rounds} rounds of {schedule.queries_per_round} from step "
            f"{first}, every {schedule.every})"
        )
    limit = time_limit(str(cfg.env.id), plain(cfg.env.kwargs) or {})
    if limit is not None and schedule.segment_length > limit:
        raise ConfigError(
            f"feedback.segment_length={schedule.segment_length} is longer than an episode of "
            f"{cfg.env.id} ({limit} steps): no segment could ever be cut; use "
            f"feedback.segment_length<={limit}"
        )
    return algo, schedule


def asks_teacher(cfg: DictConfig, settings: tuple[OnlineAlgo, FeedbackSchedule]) -> bool:
    """Whether the run asks a teacher (it learns its reward, and the reward needs labels)."""
    return settings[0].preference and settings[1].max_feedback > 0


def run(ctx: RunContext, settings: tuple[OnlineAlgo, FeedbackSchedule]) -> dict[str, object]:
    """The online recipe: PEBBLE/PrefPPO (or SAC/PPO on the true reward) from a context."""
    cfg, run_dir, rng, device = ctx.cfg, ctx.run_dir, ctx.rng, ctx.device
    algo, schedule = settings
    checkpoint = ctx.checkpoint
    resumed = checkpoint.complete()
    labels_only = not resumed and checkpoint.labels.exists() and algo.preference
    env_kwargs: dict[str, Any] = dict(ctx.env.kwargs)
    run_name = f"{ctx.name}_{run_dir.name}"
    video_root = ctx.video_root
    saved: dict[str, Any] = {}
    if resumed:
        saved = checkpoint.read_state()
        rng.bit_generator.state = saved["rng"]

    # --- environment, trajectory pool and learned reward ----------------------------------
    import pbrl.envs  # noqa: F401  (registers pbrl/ environments, e.g. MountainCar's factors)

    sim_device = str(device) if cfg.sim == "mujoco_warp" else "cpu"
    venv = make_vec_env(cfg.sim, cfg.env.id, cfg.n_envs, cfg.seed, device=sim_device, **env_kwargs)
    pool: TrajectoryPool | None = None
    reward_model: RewardModel | None = None
    if algo.preference:
        if resumed:
            pool = TrajectoryPool.from_file(checkpoint.dir / "pool.npz")
            pool.start_new_episodes()  # the resumed envs start fresh episodes
            reward_model = load_reward_model(checkpoint.dir / "reward_model.pt", device)
        else:
            pool = make_pool(cfg.env.id, cfg.n_envs, schedule.pool_size, env_kwargs, run_name)
            reward_model = make_reward_model(
                plain(cfg.reward), pool.obs_dim, pool.act_dim, device, env=ctx.env
            )
    # transition pairs from SAC's buffer: it keeps each step's factors and true reward
    transitions = algo.preference and schedule.pairs == "transitions"
    kept = KEPT_FIELDS if transitions and ALGOS[algo.sb3] is SAC else ()
    # SAC's buffer scores a frame reward's steps in batches (not PPO: its rollout needs each
    # step's reward; not on a device batch: scored where it lives, already batched)
    defer = (
        ALGOS[algo.sb3] is SAC
        and reward_model is not None
        and "qpos" in step_fields(reward_model)
        and algo.frame_score_every > 1
        and sim_device == "cpu"
    )
    wrapper = PreferenceVecEnv(venv, pool, reward_model, keep=kept, defer=defer)
    learned_fn = state_reward_fn(reward_model)  # evaluation's learned return, where it has one
    env: VecEnv = wrapper
    if algo.normalize_reward or algo.normalize_obs:
        if resumed:
            env = VecNormalize.load(str(checkpoint.dir / "vecnormalize.pkl"), wrapper)
        else:
            env = VecNormalize(
                wrapper,
                norm_obs=algo.normalize_obs,
                norm_reward=algo.normalize_reward,
                gamma=float(algo.kwargs.get("gamma", 0.99)),
            )

    # --- agent -----------------------------------------------------------------------------
    cls = ALGOS[algo.sb3]
    if resumed:
        model = cls.load(checkpoint.dir / "model.zip", env=env, device=device)
        if isinstance(model, SAC):
            model.load_replay_buffer(checkpoint.dir / "replay_buffer.pkl")
    else:
        extra: dict[str, Any] = {}
        if cls is SAC:
            # what the reward's kind reads beyond (obs, act), kept to relabel the buffer
            widths = {} if pool is None else pool.step_widths()
            fields = step_fields(reward_model) if reward_model is not None else ()
            fields += tuple(k for k in kept if k not in fields)
            widths = {**widths, "true_reward": 1}
            extra = {
                "replay_buffer_class": EntropyReplayBuffer,
                "replay_buffer_kwargs": {
                    "entropy_k": algo.entropy_k,
                    "step_fields": {name: widths[name] for name in fields},
                },
            }
        model = cls(
            "MlpPolicy", env, seed=cfg.seed, device=device, verbose=0, **algo.kwargs, **extra
        )
        if isinstance(model, SAC) and isinstance(model.replay_buffer, EntropyReplayBuffer):
            model.replay_buffer.intrinsic = algo.preference and algo.unsupervised_steps > 0
    if defer:
        assert isinstance(model, SAC) and isinstance(model.replay_buffer, EntropyReplayBuffer)
        model.replay_buffer.defer_scoring(wrapper, algo.frame_score_every)
    tb_dir = run_dir / "tb"
    model.set_logger(run_logger(tb_dir, int(saved["num_timesteps"]) if resumed else None))

    # --- callbacks: feedback (+ PEBBLE), checkpoints, evaluation ---------------------------
    teacher, evaluation = ctx.teacher, ctx.evaluation
    callbacks: list[BaseCallback] = []
    feedback: FeedbackCallback | None = None
    query_videos: QueryVideos | None = None
    if pool is not None and reward_model is not None and teacher is not None:
        if cfg.video.enabled:
            query_videos = QueryVideos(
                cfg.env.id,
                env_kwargs,
                video_root,
                int(cfg.video.queries_per_round),
                evaluation.video_size,
            )
        start_at = max(algo.unsupervised_steps, schedule.first_at)
        if transitions:
            buffer = model.replay_buffer if isinstance(model, SAC) else None
            source = (
                (lambda: replay_buffer_transitions(buffer))
                if isinstance(buffer, EntropyReplayBuffer)
                else (lambda: pool_transitions(pool))
            )
            feedback = TransitionFeedback(
                schedule, source, pool, reward_model, teacher, rng, start_at, checkpoint.labels
            )
        else:
            feedback = FeedbackCallback(
                schedule,
                pool,
                reward_model,
                teacher,
                QuerySelector(**plain(cfg.query)),
                rng,
                start_at=start_at,
                labels_path=checkpoint.labels,
                on_queries=query_videos,
                wait=ctx.wait,
            )
        if checkpoint.labels.exists():  # labels and counters: newer than the checkpoint
            feedback.restore(checkpoint.labels)
        elif "queries" in saved:
            feedback.state = type(feedback.state)(**{k: saved[k] for k in feedback.state_dict()})
        if labels_only:
            log.warning(
                "resuming from labels only: the run stopped before its first checkpoint "
                "(checkpoint_every=%d), so training restarts at step 0 with its %d labels "
                "(%d queries asked of max_feedback=%d)",
                int(cfg.checkpoint_every),
                feedback.num_labels,
                feedback.state.queries,
                schedule.max_feedback,
            )
        if labels_only or feedback.label_rows > int(saved.get("label_rows", 0)):
            feedback.refit()  # labels newer than the saved reward model
        callbacks.append(feedback)
        if isinstance(model, SAC):
            callbacks.append(PebbleCallback(feedback, algo.reset_critic))
    if reward_model is not None:
        callbacks.append(RewardTimeLogger(wrapper))
    if algo.learned_reward == "value_target" and algo.preference:
        callbacks.append(ValueTargetOnly())
    eval_callback = EvalCallback(evaluation, int(cfg.eval.every), reward_model, teacher)
    if "eval" in saved:
        eval_callback.load_state_dict(saved["eval"])

    def save(step: int) -> None:
        state = {
            "num_timesteps": step,
            "rng": rng.bit_generator.state,
            **(feedback.state_dict() if feedback else {}),
            "label_rows": feedback.label_rows if feedback else 0,  # what the model was fit on
            "eval": eval_callback.state_dict(),
        }
        if defer:  # the saved buffer holds every step's reward
            cast(EntropyReplayBuffer, cast(SAC, model).replay_buffer).score_pending()
        checkpoint.save(model, pool, reward_model, state)

    callbacks += [
        CheckpointCallback(int(cfg.checkpoint_every), save, last=saved.get("num_timesteps", 0)),
        eval_callback,
        LearnedReturnLogger(wrapper),
    ]
    if cfg.progress_bar:
        progress = Progress(int(cfg.total_timesteps), str(cfg.name), int(model.num_timesteps))
        callbacks.append(ProgressCallback(progress))

    # --- learning --------------------------------------------------------------------------
    remaining = int(cfg.total_timesteps) - int(saved.get("num_timesteps", 0))
    if remaining > 0:
        model.learn(
            remaining,
            callback=CallbackList(callbacks),
            reset_num_timesteps=not resumed,
        )
    if query_videos is not None:
        query_videos.close()
    if feedback is not None:
        feedback.collect_late_answers()
    save(model.num_timesteps)

    # --- evaluation on the true reward --------------------------------------------------------
    ev = evaluation.policy(
        deterministic_policy(model),
        reward_fn=learned_fn,
        video_name="eval.mp4",
    )
    rand = evaluation.random()
    test_acc = None
    length = schedule.segment_length
    if reward_model is not None and pool is not None and pool.num_steps > length:
        test_acc = evaluation.test_accuracy(
            reward_model, lambda n, g: pool.sample_queries(n, length, g)
        )
    record = model.logger.record
    record("eval/true_return", ev.mean)
    record("eval/random_true_return", rand.mean)
    if learned_fn is not None:
        record("eval/learned_return", float(np.mean(ev.learned_returns)))
    if test_acc is not None:
        record("reward_model/test_accuracy", test_acc)
    model.logger.dump(model.num_timesteps)

    summary = ctx.summary(
        algo.name,
        total_timesteps=int(model.num_timesteps),
        num_labels=feedback.num_labels if feedback else 0,
        num_queries=feedback.state.queries if feedback else 0,
        teacher=ctx.teacher_summary(),
        eval_true_return_mean=ev.mean,
        eval_true_return_std=ev.std,
        eval_learned_return_mean=float(np.mean(ev.learned_returns)) if learned_fn else None,
        random_true_return_mean=rand.mean,
        reward_model_test_accuracy=test_acc,
        # every clip of the run, those made before a resume included
        videos=([ev.video] if ev.video else [])
        + sorted(str(p) for p in video_root.glob("*.mp4") if p.name != "eval.mp4"),
        tensorboard_dir=str(tb_dir),
        resumed=resumed or labels_only,
        extra={
            "resumed_from": "checkpoint" if resumed else "labels" if labels_only else None,
            # each reward factor's mean episode total, and how many episodes the env ended
            # (e.g. MountainCar's flag reached) rather than the time limit
            "eval_factor_totals": ev.factor_means(),
            "eval_terminated_fraction": float(np.mean(ev.terminated)) if ev.terminated else None,
            "eval_mean_length": float(np.mean(ev.lengths)) if ev.lengths else None,
            # seconds this process spent choosing queries and fitting the reward model
            "reward_learning_s": feedback.reward_learning_s if feedback else None,
            # HERON's transition pairs: rankings given, pairs drawn, comparisons induced
            "transition_pairs": feedback.report()
            if isinstance(feedback, TransitionFeedback)
            else None,
        },
    ).write(run_dir)
    ctx.close()
    env.close()
    return summary


RECIPE = Recipe(check, asks_teacher, run)

__all__ = ["RECIPE", "OnlineAlgo", "check", "run"]
