"""Online preference-based RL on SB3: PEBBLE (SAC) and PrefPPO (PPO), plus the true-reward
baselines through the same code path. Reads top to bottom: environment, reward model,
agent, feedback schedule, learning, evaluation, summary.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import configure
from stable_baselines3.common.utils import get_device, set_random_seed
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from pbrl.data import PreferenceDataset, Queries
from pbrl.data.pool import TrajectoryPool
from pbrl.data.preferences import oracle_labels
from pbrl.evaluation import evaluate, peak_rss_mb
from pbrl.online.pebble import EntropyReplayBuffer, relabel_buffer, reset_critic
from pbrl.online.wrappers import PreferenceVecEnv, reward_factor_names
from pbrl.query import QuerySelector
from pbrl.rewards import RewardEnsemble, RewardModelConfig
from pbrl.sim import make_vec_env

ALGOS = {"sac": SAC, "ppo": PPO}


def probe_env(env_id: str, env_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Shapes, reward-factor names and simulator-state sizes of an env, from one step."""
    env = gym.make(env_id, **env_kwargs)
    env.reset(seed=0)
    _, _, _, _, info = env.step(env.action_space.sample())
    data = getattr(env.unwrapped, "data", None)
    out = {
        "obs_dim": int(np.prod(env.observation_space.shape)),
        "act_dim": int(np.prod(env.action_space.shape)),
        "factor_names": reward_factor_names(info),
        "state_dims": (len(data.qpos), len(data.qvel)) if data is not None else None,
    }
    env.close()
    return out


class FeedbackCallback(BaseCallback):
    """The feedback schedule: every ``every`` steps, select queries from the trajectory pool,
    ask the teacher, retrain the reward model and (off-policy) relabel the replay buffer."""

    def __init__(
        self,
        cfg: DictConfig,
        run_dir: Path,
        pool: TrajectoryPool,
        wrapper: PreferenceVecEnv,
        reward_model: RewardEnsemble | None,
        teacher: Any,
        selector: QuerySelector,
        rng: np.random.Generator,
        state: dict[str, Any],
    ) -> None:
        super().__init__()
        self.cfg, self.run_dir, self.pool, self.wrapper = cfg, run_dir, pool, wrapper
        self.reward_model, self.teacher, self.selector, self.rng = (
            reward_model,
            teacher,
            selector,
            rng,
        )
        self.state = state  # next_feedback_at, queries, last_checkpoint, round
        self.dataset: PreferenceDataset | None = None
        self.renderer: Any = None
        self.videos: list[str] = []
        if (run_dir / "checkpoint" / "preferences.npz").exists():
            self.dataset = PreferenceDataset.load(run_dir / "checkpoint" / "preferences.npz")

    @property
    def num_labels(self) -> int:
        return 0 if self.dataset is None else len(self.dataset.trainable)

    def _on_rollout_end(self) -> None:
        if self.wrapper.learned_episode_returns:
            self.logger.record(
                "rollout/ep_learned_rew_mean", float(np.mean(self.wrapper.learned_episode_returns))
            )

    def _on_step(self) -> bool:
        fb = self.cfg.feedback
        if (
            self.reward_model is not None
            and self.num_timesteps >= self.state["next_feedback_at"]
            and self.state["queries"] < self.cfg.max_feedback
        ):
            self.feedback_round()
            self.state["next_feedback_at"] = self.num_timesteps + fb.every
        if self.num_timesteps - self.state["last_checkpoint"] >= self.cfg.checkpoint_every:
            self.checkpoint()
        every = int(self.cfg.eval.every)
        if every > 0 and self.num_timesteps - self.state.get("last_eval", 0) >= every:
            self.periodic_eval()
        return True

    def periodic_eval(self) -> None:
        """True (and learned) return of the current policy, and its latest video."""
        self.state["last_eval"] = self.num_timesteps
        video = None
        if self.cfg.video.enabled:
            video = Path(self.state["video_dir"]) / f"eval_{self.num_timesteps:09d}.mp4"
        ev = evaluate(
            self.cfg.env.id,
            lambda o: self.model.predict(o, deterministic=True)[0],
            int(self.cfg.eval.n_episodes),
            self.cfg.seed + 10_000,
            reward_fn=self.reward_model.predict if self.reward_model else None,
            video_path=video,
            video_size=(self.cfg.video.width, self.cfg.video.height),
            env_kwargs=dict(self.cfg.env.kwargs),
        )
        self.logger.record("eval/true_return", ev.mean)
        if self.reward_model is not None:
            self.logger.record("eval/learned_return", float(np.mean(ev.learned_returns)))
        if ev.video:
            self.videos.append(ev.video)
            self.state["latest_eval_video"] = ev.video
            if hasattr(self.teacher, "show_eval_video"):  # the labeling page shows the newest
                self.teacher.show_eval_video(ev.video, step=self.num_timesteps, true_return=ev.mean)

    def feedback_round(self) -> None:
        """Select queries from the pool, ask the teacher, learn from what it answered."""
        fb = self.cfg.feedback
        n = int(min(fb.batch_size, self.cfg.max_feedback - self.state["queries"]))
        try:
            queries = self.selector(
                lambda k: self.pool.sample_queries(k, fb.segment_length, self.rng),
                n,
                self.reward_model if self.state["round"] > 0 else None,
                self.rng,
            )
        except RuntimeError as exc:  # too little data yet: try again next time
            self.logger.record("preferences/deferred", str(exc), exclude=("tensorboard", "csv"))
            return
        self.state["queries"] += n
        self.state["round"] += 1
        if hasattr(self.teacher, "submit"):  # asynchronous teacher (people): answers come later
            self.teacher.submit(queries)
            new = self.teacher.collect()
        else:
            new = PreferenceDataset(
                queries, self.teacher(queries), np.full(n, type(self.teacher).__name__)
            )
        self.write_query_videos(queries)
        self.learn_from(new)

    def collect_late_answers(self) -> None:
        """Answers an asynchronous teacher received after the last round, before evaluation."""
        if self.reward_model is not None and hasattr(self.teacher, "collect"):
            self.learn_from(self.teacher.collect())

    def learn_from(self, new: PreferenceDataset | None) -> None:
        """Add new labels, retrain the reward model and relabel the replay buffer."""
        assert self.reward_model is not None
        t0 = time.time()
        if new is not None and len(new):
            self.dataset = (
                new if self.dataset is None else PreferenceDataset.concatenate([self.dataset, new])
            )
            self.dataset.save(self.run_dir / "checkpoint" / "preferences.npz")
        if self.dataset is None or self.num_labels < self.cfg.feedback.min_labels:
            return  # too few labels to train on yet
        metrics = self.reward_model.fit(self.dataset, self.rng)
        if isinstance(self.model, SAC):
            relabel_buffer(self.model.replay_buffer, self.reward_model)  # type: ignore[arg-type]
            buffer = self.model.replay_buffer
            if isinstance(buffer, EntropyReplayBuffer) and buffer.intrinsic:
                buffer.intrinsic = False  # end of unsupervised pre-training
                if self.cfg.algo.reset_critic:
                    reset_critic(self.model)

        log = self.logger.record
        log("preferences/labels", self.num_labels)
        log("preferences/queries", self.state["queries"])
        if new is not None and len(new):
            labels, oracle = new.labels, oracle_labels(new.queries)
            decided = ~np.isnan(labels)
            log("preferences/skipped_fraction", float(np.mean(~decided)))
            log("preferences/tie_fraction", float(np.mean(labels == 0.5)))
            if decided.any():
                log(
                    "preferences/oracle_agreement",
                    float(np.mean(labels[decided] == oracle[decided])),
                )
        log("reward_model/loss", metrics["loss"])
        log("reward_model/train_accuracy", metrics["train_accuracy"])
        log("reward_model/epochs", metrics["epochs"])
        log("reward_model/true_reward_corr", self.reward_correlation())
        log("time/reward_learning_s", time.time() - t0)

    def reward_correlation(self, n: int = 4096) -> float:
        """Pearson correlation of learned and true per-step reward on recent data."""
        assert self.reward_model is not None
        held = min(self.pool.num_steps, n)
        if held < 2:
            return float("nan")
        segs = self.pool.sample_segments(
            max(1, held // self.cfg.feedback.segment_length),
            self.cfg.feedback.segment_length,
            self.rng,
        )
        pred = self.reward_model.predict(segs.obs[segs.mask], segs.act[segs.mask])
        true = segs.true_reward[segs.mask]
        return float(np.corrcoef(pred, true)[0, 1]) if true.std() > 0 and pred.std() > 0 else 0.0

    def write_query_videos(self, queries: Queries) -> None:
        vcfg = self.cfg.video
        if not vcfg.enabled or vcfg.queries_per_round <= 0 or queries.first.qpos is None:
            return
        from pbrl.video import StateRenderer, segment_frames, side_by_side, write_video

        if self.renderer is None:
            self.renderer = StateRenderer(
                self.cfg.env.id, width=vcfg.width, height=vcfg.height, **self.cfg.env.kwargs
            )
        folder = Path(self.state["video_dir"])
        for j in range(min(int(vcfg.queries_per_round), len(queries))):
            frames = side_by_side(
                segment_frames(queries.first, j, self.renderer),
                segment_frames(queries.second, j, self.renderer),
            )
            path = folder / f"round{self.state['round']:03d}_query_{queries.query_id[j]}.mp4"
            self.videos.append(str(write_video(frames, path, fps=self.renderer.fps)))

    def checkpoint(self) -> None:
        save_checkpoint(
            self.run_dir,
            self.model,
            self.pool,
            self.reward_model,
            self.state,
            self.rng,
            self.num_timesteps,
        )
        self.state["last_checkpoint"] = self.num_timesteps

    def _on_training_end(self) -> None:
        if self.renderer is not None:
            self.renderer.close()


def save_checkpoint(
    run_dir: Path,
    model: BaseAlgorithm,
    pool: TrajectoryPool | None,
    reward_model: RewardEnsemble | None,
    state: dict[str, Any],
    rng: np.random.Generator,
    num_timesteps: int,
) -> None:
    """Everything a resumed run needs; ``state.json`` is written last, marking it complete."""
    ckpt = run_dir / "checkpoint"
    ckpt.mkdir(parents=True, exist_ok=True)
    model.save(ckpt / "model.zip")
    if isinstance(model, SAC):
        model.save_replay_buffer(ckpt / "replay_buffer.pkl")
    venv = model.get_env()
    if isinstance(venv, VecNormalize):
        venv.save(str(ckpt / "vecnormalize.pkl"))
    if pool is not None:
        pool.save(ckpt / "pool.npz")
    if reward_model is not None:
        reward_model.save(ckpt / "reward_model.pt")
    blob = {
        **state,
        "num_timesteps": num_timesteps,
        "rng": rng.bit_generator.state,
        "torch_rng": torch.get_rng_state().tolist(),
    }
    tmp = ckpt / "state.json.tmp"
    tmp.write_text(json.dumps(blob))
    tmp.replace(ckpt / "state.json")


def run_online(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    t_start = time.time()
    run_dir = Path(run_dir)
    ckpt = run_dir / "checkpoint"
    resumed = (ckpt / "state.json").exists()
    if cfg.torch_threads > 0:
        torch.set_num_threads(int(cfg.torch_threads))
    set_random_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = get_device(cfg.device)
    algo = cfg.algo
    env_kwargs = OmegaConf.to_container(cfg.env.kwargs, resolve=True) or {}
    info = probe_env(cfg.env.id, env_kwargs)  # type: ignore[arg-type]
    run_name = f"{cfg.name}_{run_dir.name}"
    state: dict[str, Any] = {
        "next_feedback_at": max(int(algo.unsupervised_steps), int(cfg.feedback.first_at)),
        "queries": 0,
        "round": 0,
        "last_checkpoint": 0,
        "video_dir": str(Path(cfg.video.root) / run_name),
    }
    if resumed:
        saved = json.loads((ckpt / "state.json").read_text())
        rng.bit_generator.state = saved.pop("rng")
        torch.set_rng_state(torch.tensor(saved.pop("torch_rng"), dtype=torch.uint8))
        state.update(saved)

    # --- environment, trajectory pool and learned reward ----------------------------------
    sim_device = str(device) if cfg.sim == "mujoco_warp" else "cpu"
    venv = make_vec_env(cfg.sim, cfg.env.id, cfg.n_envs, cfg.seed, device=sim_device, **env_kwargs)  # type: ignore[arg-type]
    pool = reward_model = None
    if algo.preference:
        pool = TrajectoryPool(
            cfg.n_envs,
            cfg.feedback.pool_size,
            info["obs_dim"],
            info["act_dim"],
            info["factor_names"],
            info["state_dims"],
            cfg.env.id,
            run_name,
        )
        reward_model = RewardEnsemble(
            info["obs_dim"], info["act_dim"], RewardModelConfig(**cfg.reward), device
        )
        if resumed:
            pool.load(ckpt / "pool.npz")
            pool.start_new_episodes()  # the resumed envs start fresh episodes
            reward_model = RewardEnsemble.load(ckpt / "reward_model.pt", device)
    wrapper = PreferenceVecEnv(venv, pool, reward_model)
    env: VecEnv = wrapper
    if algo.normalize_reward:
        env = (
            VecNormalize.load(str(ckpt / "vecnormalize.pkl"), wrapper)
            if resumed
            else VecNormalize(
                wrapper,
                norm_obs=False,
                norm_reward=True,
                gamma=float(algo.kwargs.get("gamma", 0.99)),
            )
        )

    # --- agent -----------------------------------------------------------------------------
    kwargs = OmegaConf.to_container(algo.kwargs, resolve=True)
    assert isinstance(kwargs, dict)
    cls = ALGOS[algo.sb3]
    if resumed:
        model = cls.load(ckpt / "model.zip", env=env, device=device)
        if isinstance(model, SAC):
            model.load_replay_buffer(ckpt / "replay_buffer.pkl")
    else:
        extra: dict[str, Any] = {}
        if cls is SAC:
            extra = {
                "replay_buffer_class": EntropyReplayBuffer,
                "replay_buffer_kwargs": {"entropy_k": int(algo.entropy_k)},
            }
        model = cls("MlpPolicy", env, seed=cfg.seed, device=device, verbose=0, **kwargs, **extra)
        if isinstance(model, SAC) and isinstance(model.replay_buffer, EntropyReplayBuffer):
            model.replay_buffer.intrinsic = bool(algo.preference and algo.unsupervised_steps > 0)
    tb_dir = run_dir / "tb"
    model.set_logger(configure(str(tb_dir), ["tensorboard", "csv"]))

    # --- feedback schedule and learning --------------------------------------------------------
    teacher = instantiate(cfg.teacher, rng=np.random.default_rng(rng.integers(2**63)))
    selector = QuerySelector(**cfg.query)
    callback = FeedbackCallback(
        cfg,
        run_dir,
        pool,
        wrapper,
        reward_model,
        teacher,  # type: ignore[arg-type]
        selector,
        rng,
        state,
    )
    remaining = int(cfg.total_timesteps) - int(state.get("num_timesteps", 0))
    if remaining > 0:
        model.learn(
            remaining,
            callback=callback,
            progress_bar=bool(cfg.progress_bar),
            reset_num_timesteps=not resumed,
        )
    callback.collect_late_answers()
    callback.checkpoint()

    # --- evaluation on the true reward --------------------------------------------------------
    def policy(obs: np.ndarray) -> np.ndarray:
        return model.predict(obs, deterministic=True)[0]

    video_dir = Path(state["video_dir"])
    ev = evaluate(
        cfg.env.id,
        policy,
        int(cfg.eval.n_episodes),
        cfg.seed + 10_000,
        reward_fn=reward_model.predict if reward_model else None,
        video_path=video_dir / "eval.mp4" if cfg.video.enabled else None,
        video_size=(cfg.video.width, cfg.video.height),
        env_kwargs=env_kwargs,
    )  # type: ignore[arg-type]
    rand = evaluate(
        cfg.env.id, None, int(cfg.eval.random_episodes), cfg.seed + 20_000, env_kwargs=env_kwargs
    )  # type: ignore[arg-type]
    test_acc = None
    if (
        reward_model is not None
        and pool is not None
        and pool.num_steps > cfg.feedback.segment_length
    ):
        test_q = pool.sample_queries(
            int(cfg.eval.test_queries),
            cfg.feedback.segment_length,
            np.random.default_rng(cfg.seed + 30_000),
        )
        test_acc = reward_model.accuracy(PreferenceDataset(test_q, oracle_labels(test_q)))
    log = model.logger.record
    log("eval/true_return", ev.mean)
    log("eval/random_true_return", rand.mean)
    if reward_model is not None:
        log("eval/learned_return", float(np.mean(ev.learned_returns)))
    if test_acc is not None:
        log("reward_model/test_accuracy", test_acc)
    model.logger.dump(model.num_timesteps)

    summary = {
        "exp": cfg.name,
        "algo": algo.name,
        "env_id": cfg.env.id,
        "seed": int(cfg.seed),
        "total_timesteps": int(model.num_timesteps),
        "num_labels": callback.num_labels,
        "num_queries": int(state["queries"]),
        "teacher": OmegaConf.to_container(cfg.teacher, resolve=True) if algo.preference else None,
        "eval_true_return_mean": ev.mean,
        "eval_true_return_std": ev.std,
        "eval_learned_return_mean": float(np.mean(ev.learned_returns)) if reward_model else None,
        "random_true_return_mean": rand.mean,
        "reward_model_test_accuracy": test_acc,
        "wall_time_s": time.time() - t_start,
        "peak_rss_mb": peak_rss_mb(),
        "videos": ([ev.video] if ev.video else []) + callback.videos,
        "tensorboard_dir": str(tb_dir),
        "resumed": resumed,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    if hasattr(teacher, "close"):
        teacher.close()  # e.g. stops a labeling page served from this process
    env.close()
    return summary
