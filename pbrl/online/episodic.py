"""Policies on episode-level rewards (RAPL's optimal-transport reward), and the RAPL run.

An OT reward is a function of the whole episode: the transport plan couples every frame of
the robot's video with the demonstration's, so a step's reward is known only once its
episode is complete. PPO fits that exactly when every rollout holds whole episodes:

* episodes have a fixed length ``L`` (no early termination; checked) and PPO's ``n_steps``
  is a multiple of ``L``, so the sub-envs' episodes tile each rollout;
* :class:`EpisodeRecorder` (a VecEnv wrapper) records the simulator state of every step and
  hands PPO a reward of 0 (the true reward goes to ``info["true_reward"]``; SB3's Monitor
  inside still logs the true return);
* :class:`EpisodicRelabel` (a callback), at the end of each rollout, renders each finished
  episode, writes the reward model's per-step rewards into the rollout buffer (added to
  what is there: SB3's bootstrap ``gamma V(s_T)`` at time-limit truncations) and recomputes
  returns and advantages (GAE) before PPO's update.

:func:`run` is the episodic recipe behind ``python -m pbrl.train +exp=rapl_sweep``
(``algo.kind: episodic``, picked by :mod:`pbrl.recipes`). It reads top to bottom: behaviour videos,
triplets ranked by the teacher, the reward aligned on them, its Spearman correlation with
the true return on held-out videos, PPO on the learned reward, evaluation (true return and
task success), ``summary.json``. Feedback is collected once, before the policy learns, as in
the paper (the encoder is aligned offline, then frozen).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import gymnasium as gym
import numpy as np
from gymnasium.envs.mujoco.mujoco_env import MujocoEnv
from omegaconf import DictConfig
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.running_mean_std import RunningMeanStd
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper, VecNormalize
from stable_baselines3.common.vec_env.base_vec_env import VecEnvStepReturn

from pbrl.data import PreferenceDataset
from pbrl.data.triplets import new_triplet_ids, sample_triplets
from pbrl.envs.rollouts import EXPERTS, collect_episodes, task_success
from pbrl.envs.spec import time_limit
from pbrl.errors import ConfigError, make_config
from pbrl.online.callbacks import (
    CheckpointCallback,
    Policy,
    ProgressCallback,
    deterministic_policy,
)
from pbrl.online.logs import run_logger
from pbrl.rewards import REWARD_MODELS, load_reward_model, make_reward_model
from pbrl.rewards.base import RewardModel
from pbrl.rewards.dispatch import (
    episode_rewards,
    scores_episodes,
    set_demonstrations,
    uses_demonstrations,
)
from pbrl.run import Progress, Recipe, RunContext, plain
from pbrl.sim import make_vec_env
from pbrl.teachers.base import ask

log = logging.getLogger("pbrl")


# -- settings ------------------------------------------------------------------------------------
@dataclass
class EpisodicAlgo:
    """``conf/algo/rapl.yaml``: PPO with episode-level relabeling."""

    name: str = "rapl"
    sb3: str = "ppo"
    kind: str = "episodic"
    preference: bool = True
    normalize_obs: bool = True  # SB3 VecNormalize on the policy's observations
    normalize_reward: bool = True  # divide the learned reward by its running std
    kwargs: dict[str, Any] = field(default_factory=dict)  # stable_baselines3.PPO arguments

    def __post_init__(self) -> None:
        if self.sb3 != "ppo":
            raise ConfigError(
                f"algo.sb3={self.sb3!r}: episode-level rewards are relabeled in PPO's rollout "
                "buffer; use algo.sb3=ppo"
            )


@dataclass
class EpisodicSettings:
    """``episodic:`` block of the rapl_* exps: the videos the feedback and evaluation use."""

    pool_episodes: int = 60  # behaviour episodes the triplets are drawn from
    heldout_episodes: int = 30  # other episodes: Spearman of learned vs true return
    eps_min: float = 0.0  # per episode, a step is random with probability U(eps_min, eps_max),
    eps_max: float = 1.0  # the env's scripted expert's otherwise (random only without one)
    demos: str = "expert"  # expert: n_demos expert episodes | preferred: triplets' winners
    n_demos: int = 5
    frame_stride: int = 1  # every k-th frame enters the OT reward (passed to the reward)
    # -- RAPL paper settings (issue 23) --
    n_frames: int = 0  # > 0: this many evenly spaced frames instead (passed to the reward)
    triplet_min_gap: float = 0.0  # > 0: triplets' returns differ pairwise by >= this x range
    equal_fraction: float = 0.0  # share of equal triplets (ranked all equal by the teacher)

    def __post_init__(self) -> None:
        if self.pool_episodes < 3 or self.heldout_episodes < 2:
            raise ConfigError(
                "episodic.pool_episodes must be >= 3 (a triplet) and episodic.heldout_episodes "
                ">= 2 (a correlation)"
            )
        if not 0.0 <= self.eps_min <= self.eps_max <= 1.0:
            raise ConfigError("episodic: use 0 <= eps_min <= eps_max <= 1")
        if self.demos not in ("expert", "preferred"):
            raise ConfigError(f"episodic.demos={self.demos!r}: use expert or preferred")
        if self.n_demos < 1 or self.frame_stride < 1:
            raise ConfigError("episodic.n_demos and episodic.frame_stride must be >= 1")
        if self.n_frames < 0 or self.triplet_min_gap < 0 or not 0 <= self.equal_fraction <= 1:
            raise ConfigError(
                "episodic: use n_frames >= 0, triplet_min_gap >= 0, 0 <= equal_fraction <= 1"
            )


def fixed_episode_length(env_id: str, env_kwargs: Mapping[str, object]) -> int:
    """The env's time limit: every episode's length (the env never terminates earlier)."""
    limit = time_limit(env_id, env_kwargs)
    if limit is None:
        raise ConfigError(
            f"{env_id} has no time limit: episode-level rewards need fixed-length episodes "
            "(set env.kwargs.max_episode_steps)"
        )
    return int(limit)


def check(cfg: DictConfig) -> tuple[EpisodicAlgo, EpisodicSettings]:
    """Typed settings of an episodic (RAPL) run, after every check without simulation."""
    algo = make_config(EpisodicAlgo, plain(cfg.algo), "algo")
    settings = make_config(EpisodicSettings, plain(cfg.get("episodic")), "episodic")
    for key in ("n_envs", "total_timesteps", "max_feedback"):
        if int(cfg[key]) <= 0:
            raise ConfigError(f"{key}={cfg[key]} must be positive (max_feedback: triplets)")
    reward = plain(cfg.reward)
    kind = str(reward.pop("kind", ""))
    cls = REWARD_MODELS[kind][0] if kind in REWARD_MODELS else None
    if cls is None or not scores_episodes(cls):
        raise ConfigError(
            f"algo={algo.name} trains on rewards of rendered episodes; reward.kind={kind!r} "
            "scores states: use reward=rapl, reward=ot or reward=image"
        )
    make_config(REWARD_MODELS[kind][1], reward, "reward")
    env_id = str(cfg.env.id)
    length = fixed_episode_length(env_id, plain(cfg.env.kwargs) or {})
    n_steps = int(algo.kwargs.get("n_steps", 2048))
    if n_steps % length:
        raise ConfigError(
            f"algo.kwargs.n_steps={n_steps} is not a multiple of the episode length {length} "
            f"of {env_id}: a rollout must hold whole episodes (e.g. n_steps={length * 4})"
        )
    if uses_demonstrations(cls) and settings.demos == "expert" and env_id not in EXPERTS:
        raise ConfigError(
            f"episodic.demos=expert but pbrl has no scripted expert for {env_id} (it has for "
            f"{', '.join(EXPERTS)}): use episodic.demos=preferred"
        )
    return algo, settings


# -- the VecEnv wrapper and the relabeling callback ---------------------------------------------
class _SimState(Protocol):
    def sim_state(self) -> tuple[np.ndarray, np.ndarray]: ...


class EpisodeRecorder(VecEnvWrapper):
    """Records every sub-env's simulator states; PPO sees reward 0 until relabeling."""

    def __init__(self, venv: VecEnv) -> None:
        super().__init__(venv)
        self._states: list[list[tuple[np.ndarray, np.ndarray]]] = []
        self.finished: list[tuple[int, np.ndarray, np.ndarray, float]] = []  # env, qpos, qvel, R
        self._true = np.zeros(self.num_envs)

    def _sim(self) -> tuple[np.ndarray, np.ndarray]:
        return cast(_SimState, self.venv).sim_state()

    def reset(self) -> np.ndarray:
        obs = cast(np.ndarray, self.venv.reset())
        qpos, qvel = self._sim()
        self._states = [[(qpos[e].copy(), qvel[e].copy())] for e in range(self.num_envs)]
        self._true[:] = 0.0
        return obs

    def step_wait(self) -> VecEnvStepReturn:
        obs, reward, dones, infos = self.venv.step_wait()
        qpos, qvel = self._sim()
        self._true += reward
        for e in range(self.num_envs):
            infos[e]["true_reward"] = float(reward[e])
            if not dones[e]:
                self._states[e].append((qpos[e].copy(), qvel[e].copy()))
                continue
            if not infos[e].get("TimeLimit.truncated", False):
                raise RuntimeError(
                    "an episode terminated early: episode-level relabeling needs fixed-length "
                    "episodes"
                )
            self._states[e].append((infos[e]["terminal_qpos"], infos[e]["terminal_qvel"]))
            states = self._states[e]
            self.finished.append(
                (
                    e,
                    np.stack([s[0] for s in states]),
                    np.stack([s[1] for s in states]),
                    float(self._true[e]),
                )
            )
            self._states[e] = [(qpos[e].copy(), qvel[e].copy())]  # the auto-reset state
            self._true[e] = 0.0
        return obs, np.zeros_like(reward), dones, infos


class EpisodicRelabel(BaseCallback):
    """At each rollout's end: the learned rewards of its (whole) episodes into PPO's
    rollout buffer, then returns and advantages recomputed."""

    def __init__(
        self,
        recorder: EpisodeRecorder,
        reward: RewardModel,
        normalize: bool = True,
        frames: tuple[int, int] = (1, 0),
    ) -> None:
        super().__init__()
        self.recorder, self.reward, self.normalize = recorder, reward, normalize
        self.frames = frames  # (frame_stride, n_frames): which frames a frame reward scores
        self.scale = RunningMeanStd(shape=())
        self.relabel_s = 0.0

    def _on_step(self) -> bool:
        return True

    def state_dict(self) -> dict[str, float]:
        s = self.scale
        return {"mean": float(s.mean), "var": float(s.var), "count": float(s.count)}

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        self.scale.mean = np.asarray(state["mean"], dtype=np.float64)
        self.scale.var = np.asarray(state["var"], dtype=np.float64)
        self.scale.count = float(state["count"])

    def _on_rollout_end(self) -> None:
        t0 = time.time()
        buffer = cast(PPO, self.model).rollout_buffer
        n_steps, n_envs = buffer.rewards.shape
        done = self.recorder.finished
        self.recorder.finished = []
        by_env: dict[int, list[int]] = {}
        for i, (e, *_rest) in enumerate(done):
            by_env.setdefault(e, []).append(i)
        length = done[0][1].shape[0] - 1 if done else 0
        if (
            not done
            or any(len(v) * length != n_steps for v in by_env.values())
            or (len(by_env) != n_envs)
        ):
            raise RuntimeError(
                "a rollout does not hold whole episodes: n_steps must be a multiple of the "
                "episode length and the episodes must start with the rollout"
            )
        qpos = np.stack([d[1] for d in done])
        qvel = np.stack([d[2] for d in done])
        learned = episode_rewards(self.reward, qpos, qvel, self.frames)  # [episodes, L]
        if self.normalize:
            self.scale.update(learned.reshape(-1))
            learned = (learned - self.scale.mean) / np.sqrt(self.scale.var + 1e-8)
        for e, rows in by_env.items():
            buffer.rewards[:, e] += np.concatenate([learned[i] for i in rows])
        loc = self.locals
        buffer.compute_returns_and_advantage(last_values=loc["values"], dones=loc["dones"])
        self.relabel_s += time.time() - t0
        record = self.logger.record
        record("rollout/learned_ep_return", float(learned.sum(1).mean()))
        record("rollout/true_ep_return", float(np.mean([d[3] for d in done])))
        record("time/relabel_total_s", self.relabel_s)


# -- evaluation helpers -------------------------------------------------------------------------
def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties); nan if either is constant."""

    def ranks(v: np.ndarray) -> np.ndarray:
        v = np.asarray(v, dtype=np.float64)
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=np.float64)
        for value in np.unique(v):  # ties share their mean rank
            same = v == value
            r[same] = r[same].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


@dataclass
class WithinSpearman:
    """Spearman correlation of learned and true per-step rewards within each trajectory (over
    its time steps), averaged over trajectories: RAPL's metric. A row where either reward is
    constant has no rank correlation: it is counted (``constant``), not averaged in."""

    mean: float  # over the rows with a correlation (nan if none)
    std: float
    per_row: np.ndarray  # [n], nan for constant rows
    constant: int  # rows left out: the learned or the true reward constant over time

    @property
    def counted(self) -> int:
        return int(np.isfinite(self.per_row).sum())


def within_spearman(learned: np.ndarray, true: np.ndarray) -> WithinSpearman:
    """:class:`WithinSpearman` of per-step rewards ``learned [n, T]`` and ``true [n, T]``."""
    learned, true = np.asarray(learned, dtype=np.float64), np.asarray(true, dtype=np.float64)
    if learned.shape != true.shape or learned.ndim != 2:
        raise ValueError(f"within_spearman: shapes {learned.shape} and {true.shape}: need [n, T]")
    per_row = np.array([spearman(x, y) for x, y in zip(learned, true, strict=True)])
    ok = np.isfinite(per_row)
    mean = float(per_row[ok].mean()) if ok.any() else float("nan")
    std = float(per_row[ok].std()) if ok.any() else float("nan")
    return WithinSpearman(mean, std, per_row, int((~ok).sum()))


def success_rate(
    env_id: str,
    env_kwargs: Mapping[str, Any],
    policy: Policy,
    n_episodes: int,
    seed: int,
) -> float:
    """Fraction of episodes whose final state solves the task (``task_success``)."""
    env = gym.make(env_id, **env_kwargs)
    wins = 0
    for ep in range(n_episodes):
        obs, _ = env.reset(seed=seed + ep)
        done = False
        while not done:
            obs, _, terminated, truncated, _ = env.step(policy(obs))
            done = terminated or truncated
        wins += bool(task_success(env_id, cast(MujocoEnv, env.unwrapped).data.qpos))
    env.close()
    return wins / max(n_episodes, 1)


# -- the RAPL run ---------------------------------------------------------------------------------
def asks_teacher(cfg: DictConfig, settings: tuple[EpisodicAlgo, EpisodicSettings]) -> bool:
    return True  # the triplets are ranked before the policy learns


def _ask_triplets(ctx: RunContext, settings: EpisodicSettings) -> PreferenceDataset:
    """Behaviour episodes, triplets cut from them, ranked by the teacher (saved at once)."""
    saved = ctx.run_dir / "preferences.npz"
    if saved.exists():  # a resumed run keeps the rankings it was given
        return PreferenceDataset.load(saved)
    env, rng, teacher = ctx.env, ctx.rng, ctx.teacher
    assert teacher is not None  # asks_teacher
    eps = (settings.eps_min, settings.eps_max)
    pool = collect_episodes(
        env.id, settings.pool_episodes, ctx.seeds.seed, rng, eps, dict(env.kwargs), ctx.name
    )
    n = int(ctx.cfg.max_feedback)
    queries = sample_triplets(
        pool,
        n,
        rng,
        new_triplet_ids(n, rng),
        settings.triplet_min_gap,
        settings.equal_fraction,
        0.5 * float(ctx.cfg.teacher.get("equal_gap", 0.0)),  # inside the teacher's tie threshold
    )
    # teacher=human: the triplets go to the label store and this waits (wait.timeout_s) until
    # people have ranked them on the labeling page
    prefs = ask(teacher, queries, ctx.wait)
    prefs.save(saved)
    if not len(prefs.trainable):
        raise ConfigError(
            f"none of the {n} triplets was ranked: nothing to learn a reward from (the rankings "
            f"asked are kept in {saved}). With teacher=human, rank them on the labeling page "
            "(label_page.serve=true, or python -m pbrl.label serve --store ...) and raise "
            "wait.timeout_s (null: wait until all are ranked), then resume"
        )
    return prefs


def run(ctx: RunContext, settings: tuple[EpisodicAlgo, EpisodicSettings]) -> dict[str, object]:
    """The episodic recipe (RAPL): triplets ranked first, the reward aligned on them and
    frozen, then PPO on it, relabeled per episode. Resumes from the labels, the reward, or
    the last PPO checkpoint, whichever the run reached."""
    cfg, rng, device, env = ctx.cfg, ctx.rng, ctx.device, ctx.env
    algo, episodic = settings
    seed = ctx.seeds.seed
    checkpoint = ctx.checkpoint
    state: dict[str, Any] = checkpoint.read_state() if checkpoint.complete() else {}
    prefs = _ask_triplets(ctx, episodic)
    frames = (episodic.frame_stride, episodic.n_frames)  # the frames every reward sees

    # --- the reward: demonstrations, alignment, held-out correlation ---------------------------
    if state:  # aligned before the kill: the checkpoint holds it
        rng.bit_generator.state = state["rng"]
        reward_model = load_reward_model(checkpoint.dir / "reward_model.pt", device)
        fit, rho = state["reward_fit"], float(state["heldout_spearman"])
        within = state["heldout_within"]
        with_demos = uses_demonstrations(reward_model)
    else:
        video = {"frame_stride": episodic.frame_stride, "n_frames": episodic.n_frames}
        reward_model = make_reward_model(
            plain(cfg.reward), env.obs_dim, env.act_dim, device, env, video=video
        )
        # a per-frame reward (reward=image) is trained on the triplets' pairs, needs no demos
        with_demos = uses_demonstrations(reward_model)
        if with_demos and episodic.demos == "expert":
            demos = collect_episodes(
                env.id, episodic.n_demos, seed + 50_000, rng, (0.0, 0.0), dict(env.kwargs), ctx.name
            )
            set_demonstrations(reward_model, demos)
        fit = reward_model.fit(prefs, rng)
        eps = (episodic.eps_min, episodic.eps_max)
        heldout = collect_episodes(
            env.id, episodic.heldout_episodes, seed + 100_000, rng, eps, dict(env.kwargs), ctx.name
        )
        predicted = reward_model.segment_returns(heldout).mean(0).cpu().numpy()
        rho = spearman(predicted, heldout.returns())
        # the paper's metric: learned vs true per-step rewards within each held-out video
        assert heldout.qpos is not None and heldout.qvel is not None
        w = within_spearman(
            episode_rewards(reward_model, heldout.qpos, heldout.qvel, frames), heldout.true_reward
        )
        within = {"mean": w.mean, "constant": w.constant, "counted": w.counted}
        log.info(
            "reward: Spearman %.3f with the true return on %d held-out videos; within-video "
            "Spearman %.3f (%d videos; %d with a constant reward left out)",
            rho, len(heldout), w.mean, w.counted, w.constant,
        )  # fmt: skip
    reward_model.save(ctx.run_dir / "reward_model.pt")

    # --- the policy: PPO on the learned reward, relabeled per episode --------------------------
    venv = make_vec_env("gymnasium", env.id, int(cfg.n_envs), seed, **env.kwargs)
    recorder = EpisodeRecorder(venv)
    policy_env: VecEnv = recorder
    if state:
        model = PPO.load(checkpoint.dir / "model.zip", env=None, device=device)
        if algo.normalize_obs:
            policy_env = VecNormalize.load(str(checkpoint.dir / "vecnormalize.pkl"), recorder)
        model.set_env(policy_env)
    else:
        if algo.normalize_obs:
            policy_env = VecNormalize(recorder, norm_obs=True, norm_reward=False)
        model = PPO("MlpPolicy", policy_env, seed=seed, device=device, verbose=0, **algo.kwargs)
    tb_dir = ctx.run_dir / "tb"
    model.set_logger(run_logger(tb_dir, int(state["num_timesteps"]) if state else None))
    relabel = EpisodicRelabel(recorder, reward_model, algo.normalize_reward, frames)
    if state:
        relabel.load_state_dict(state["relabel"])

    def save(step: int) -> None:
        extra = {"rng": rng.bit_generator.state, "reward_fit": fit, "heldout_spearman": rho,
                 "heldout_within": within}  # fmt: skip
        checkpoint.save(model, None, reward_model, {"num_timesteps": step, **extra,
                                                     "relabel": relabel.state_dict()})  # fmt: skip

    done = int(state.get("num_timesteps", 0))
    if not state:
        save(0)  # the aligned reward survives a kill during PPO
    callbacks: list[BaseCallback] = [
        relabel,
        CheckpointCallback(int(cfg.checkpoint_every), save, last=done),
    ]
    if cfg.progress_bar:
        callbacks.append(ProgressCallback(Progress(int(cfg.total_timesteps), ctx.name, done)))
    if int(cfg.total_timesteps) > done:
        model.learn(
            int(cfg.total_timesteps) - done,
            callback=CallbackList(callbacks),
            reset_num_timesteps=not state,
        )
    save(int(model.num_timesteps))

    # --- evaluation on the true reward ---------------------------------------------------------
    act = deterministic_policy(model)
    ev = ctx.evaluation.policy(act, video_name="eval.mp4")
    rand = ctx.evaluation.random()
    success = success_rate(env.id, dict(env.kwargs), act, int(cfg.eval.n_episodes), ctx.seeds.eval)
    record = model.logger.record
    record("eval/true_return", ev.mean)
    record("eval/success_rate", success)
    record("eval/random_true_return", rand.mean)
    record("reward_model/heldout_spearman", rho)
    record("reward_model/heldout_within_spearman", within["mean"])
    model.logger.dump(model.num_timesteps)

    summary = ctx.summary(
        algo.name,
        total_timesteps=int(model.num_timesteps),
        num_labels=len(prefs.trainable),  # pairs derived from the ranked triplets
        num_queries=len(prefs),
        teacher=ctx.teacher_summary(),
        eval_true_return_mean=ev.mean,
        eval_true_return_std=ev.std,
        eval_learned_return_mean=None,
        random_true_return_mean=rand.mean,
        reward_model_test_accuracy=None,
        videos=[ev.video] if ev.video else [],
        tensorboard_dir=str(tb_dir),
        resumed=bool(state),
        extra={
            "reward_kind": str(cfg.reward.kind),
            "backbone": reward_model.describe().get("backbone"),
            "triplets_asked": int(cfg.max_feedback),
            "pairs_derived": len(prefs),
            "reward_fit": fit,
            "heldout_spearman": rho,
            "heldout_within_spearman": within["mean"],  # the paper's: over each video's steps
            "heldout_within_constant": within["constant"],
            "heldout_videos": int(episodic.heldout_episodes),
            "demos": None
            if not with_demos
            else f"expert x {episodic.n_demos}"
            if episodic.demos == "expert"
            else "preferred",
            "eval_success_rate": success,
        },
    ).write(ctx.run_dir)
    policy_env.close()
    reward_model.close()
    ctx.close()
    return summary


RECIPE = Recipe(check, asks_teacher, run)

__all__ = [
    "EpisodeRecorder",
    "EpisodicAlgo",
    "EpisodicRelabel",
    "EpisodicSettings",
    "RECIPE",
    "check",
    "run",
    "spearman",
    "within_spearman",
]
