"""The offline runner: dataset -> preference labels -> (reward model) -> algorithm -> evaluation.

``python -m pbrl.train +exp=offline_iql_hopper`` reaches :func:`run_offline` through
``algo.kind: offline``. The summary follows the online runs' contract (``summary.json``),
with ``total_timesteps`` counting gradient steps, plus normalized scores.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from pbrl.data import PreferenceDataset
from pbrl.data.offline import OfflineDataset, load_dataset, load_preferences, scripted_preferences
from pbrl.data.preferences import oracle_labels
from pbrl.evaluation import evaluate, peak_rss_mb
from pbrl.offline.common import C, OfflineTrainer, evaluate_agent, make_config

# algo.name -> module with build(ctx) -> OfflineTrainer
ALGORITHMS = {
    "iql": "pbrl.offline.iql",
    "iql_oracle": "pbrl.offline.iql",
    "pt_iql": "pbrl.offline.iql",
    "bc": "pbrl.offline.bc",
    "cpl": "pbrl.offline.cpl",
    "oppo": "pbrl.offline.oppo",
    "dtr": "pbrl.offline.dtr",
}
# keys of conf/algo/*.yaml that are the runner's, not the algorithm config's
RUNNER_KEYS = ("name", "kind", "preferences", "module", "transformer")


class OfflineConfigError(ValueError):
    """A user-facing problem with an offline run's config or data."""


@dataclass
class OfflineContext:
    """Everything an algorithm's ``build`` may use. ``data`` carries NaN rewards for
    algorithms that learn from preferences: the true reward is only for oracles."""

    cfg: DictConfig
    data: OfflineDataset
    true_data: OfflineDataset
    prefs: PreferenceDataset | None
    run_dir: Path
    device: torch.device
    rng: np.random.Generator
    writer: SummaryWriter
    total_steps: int
    reward_model: Any = None
    reward_metrics: dict[str, float] = field(default_factory=dict)

    def algo_config(self, cls: type[C]) -> C:
        algo = OmegaConf.to_container(self.cfg.algo, resolve=True)
        assert isinstance(algo, dict)
        values = {str(k): v for k, v in algo.items() if k not in RUNNER_KEYS}
        return make_config(cls, values, "algo")

    def true_rewards(self) -> np.ndarray:
        return self.true_data.rewards

    def require_prefs(self) -> PreferenceDataset:
        if self.prefs is None or len(self.prefs.trainable) == 0:
            raise OfflineConfigError(
                f"algo {self.cfg.algo.name} needs preference labels: set "
                "algo.preferences: true and max_feedback > 0"
            )
        return self.prefs

    # -- reward models -----------------------------------------------------------------------
    def reward_ensemble(self) -> Any:
        """The MLP ensemble (``reward`` config group) trained on the labels, cached in the run."""
        from pbrl.rewards import RewardEnsemble, RewardModelConfig

        path = self.run_dir / "checkpoint" / "reward_model.pt"
        if path.exists():
            self.reward_model = RewardEnsemble.load(path, self.device)
            return self.reward_model
        cfg = make_config(RewardModelConfig, OmegaConf.to_container(self.cfg.reward), "reward")  # type: ignore[arg-type]
        model = RewardEnsemble(self.data.obs_dim, self.data.act_dim, cfg, self.device)
        self._fit(model)
        model.save(path)
        self.reward_model = model
        return model

    def preference_transformer(self) -> Any:
        from pbrl.rewards.transformer import PreferenceTransformer, PreferenceTransformerConfig

        path = self.run_dir / "checkpoint" / "reward_model.pt"
        if path.exists():
            self.reward_model = PreferenceTransformer.load(path, self.device)
            return self.reward_model
        values = OmegaConf.to_container(self.cfg.algo.get("transformer", {}), resolve=True)
        model = PreferenceTransformer(
            self.data.obs_dim,
            self.data.act_dim,
            make_config(
                PreferenceTransformerConfig,
                values,  # type: ignore[arg-type]
                "algo.transformer",
            ),
            self.device,
        )
        self._fit(model)
        model.save(path)
        self.reward_model = model
        return model

    def _fit(self, model: Any) -> None:
        t0 = time.time()
        metrics = model.fit(self.require_prefs(), self.rng)
        self.reward_metrics = {**metrics, "fit_time_s": time.time() - t0}
        for k, v in self.reward_metrics.items():
            self.writer.add_scalar(f"reward_model/{k}", v, 0)

    def learned_rewards(self, kind: str) -> np.ndarray:
        """Every transition relabeled by a reward model learned from the labels."""
        if kind == "ensemble":
            rewards = self.reward_ensemble().predict(self.data.observations, self.data.actions)
        elif kind == "transformer":
            rewards = self.preference_transformer().relabel(
                self.data, int(self.cfg.feedback.segment_length)
            )
        else:
            raise OfflineConfigError(
                f"unknown learned reward {kind!r}: use ensemble or transformer"
            )
        self.note_learned_rewards(rewards)
        return np.asarray(rewards, dtype=np.float32)

    def note_learned_rewards(self, rewards: np.ndarray) -> None:
        """Log how well relabeled rewards track the true ones (a diagnostic, never trained on)."""
        true = self.true_data.rewards
        if np.std(rewards) > 0 and np.std(true) > 0:
            corr = float(np.corrcoef(rewards, true)[0, 1])
            self.reward_metrics["true_reward_corr"] = corr
            self.writer.add_scalar("reward_model/true_reward_corr", corr, 0)

    def reward_fn(self) -> Any:
        """Per-step learned reward for evaluation logs (Markovian models only), or None."""
        from pbrl.rewards import RewardEnsemble

        return self.reward_model.predict if isinstance(self.reward_model, RewardEnsemble) else None


# -- labels --------------------------------------------------------------------------------


def make_labels(
    cfg: DictConfig, data: OfflineDataset, rng: np.random.Generator, run_dir: Path
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
            raise OfflineConfigError(f"dataset.preferences: {exc}") from exc
        if cfg.max_feedback and len(prefs) > cfg.max_feedback:
            prefs = prefs[np.arange(int(cfg.max_feedback))]
    else:
        teacher = instantiate(cfg.teacher, rng=np.random.default_rng(rng.integers(2**63)))
        prefs = scripted_preferences(
            data,
            int(cfg.max_feedback),
            length,
            teacher,
            rng,
            float(cfg.dataset.get("tie_threshold", 0.0)),
        )
    prefs.save(saved)
    return prefs


# -- the run -------------------------------------------------------------------------------


def run_offline(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    t_start = time.time()
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoint"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    algo = cfg.algo
    if algo.name not in ALGORITHMS:
        raise OfflineConfigError(
            f"unknown offline algo {algo.name!r}: choose one of {', '.join(ALGORITHMS)}"
        )
    if "dataset" not in cfg or not cfg.dataset.get("id"):
        raise OfflineConfigError(
            "offline algorithms need a dataset: add +dataset=<name> "
            "(conf/dataset) or dataset.id=<minari id>"
        )
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = torch.device(
        "cuda"
        if cfg.device == "auto" and torch.cuda.is_available()
        else ("cpu" if cfg.device == "auto" else cfg.device)
    )
    env_kwargs = OmegaConf.to_container(cfg.env.kwargs, resolve=True) or {}

    # --- data and labels ---------------------------------------------------------------------
    true_data = load_dataset(cfg.dataset.id)
    if true_data.env_id and true_data.env_id != cfg.env.id:
        raise OfflineConfigError(
            f"dataset {cfg.dataset.id} was collected on {true_data.env_id} "
            f"but env.id={cfg.env.id}: pick the matching env group"
        )
    prefs = None
    if algo.get("preferences", False):
        prefs = make_labels(cfg, true_data, rng, run_dir)
    data = (
        true_data
        if not algo.get("preferences", False)
        else true_data.with_rewards(np.full(len(true_data), np.nan, np.float32))
    )

    tb_dir = run_dir / "tb"
    writer = SummaryWriter(str(tb_dir))
    writer.add_text("hyperparameters", "```\n" + OmegaConf.to_yaml(cfg) + "\n```")
    if prefs is not None:
        labels = prefs.labels
        writer.add_scalar("preferences/labels", len(prefs.trainable), 0)
        writer.add_scalar("preferences/tie_fraction", float(np.mean(labels == 0.5)), 0)
        writer.add_scalar("preferences/skipped_fraction", float(np.mean(np.isnan(labels))), 0)
        decided = ~np.isnan(labels)
        if decided.any():
            agree = np.mean(labels[decided] == oracle_labels(prefs.queries)[decided])
            writer.add_scalar("preferences/oracle_agreement", float(agree), 0)

    # --- the algorithm -------------------------------------------------------------------------
    import importlib

    total = int(cfg.total_timesteps)
    ctx = OfflineContext(cfg, data, true_data, prefs, run_dir, device, rng, writer, total)
    trainer: OfflineTrainer = importlib.import_module(ALGORITHMS[algo.name]).build(ctx)
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

    video_dir = Path(cfg.video.root) / f"{cfg.name}_{run_dir.name}"
    video_size = (int(cfg.video.width), int(cfg.video.height))

    def eval_now(step: int, n: int, video: Path | None) -> Any:
        ev = evaluate_agent(
            cfg.env.id,
            trainer.agent(),
            n,
            int(cfg.seed) + 10_000,
            env_kwargs,  # type: ignore[arg-type]
            ctx.reward_fn(),
            video,
            video_size,
        )
        writer.add_scalar("eval/true_return", ev.mean, step)
        score = true_data.normalized_score(ev.mean)
        if score is not None:
            writer.add_scalar("eval/normalized_score", float(score), step)
        d4rl = true_data.d4rl_normalized_score(ev.mean)
        if d4rl is not None:
            writer.add_scalar("eval/d4rl_normalized_score", float(d4rl), step)
        return ev

    log_every = max(1, min(1000, total // 20))
    every_eval = int(cfg.eval.every)
    every_ckpt = int(cfg.checkpoint_every)
    videos: list[str] = []
    sums: dict[str, float] = {}
    t_train = time.time()
    bar = tqdm(
        range(start, total),
        desc=f"{algo.name} {cfg.dataset.id}",
        initial=start,
        total=total,
        disable=not cfg.progress_bar,
        mininterval=2,
    )
    for step in bar:
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
            vid = video_dir / f"eval_{step + 1:09d}.mp4" if cfg.video.enabled else None
            ev = eval_now(step + 1, int(cfg.eval.n_episodes), vid)
            if ev.video:
                videos.append(ev.video)
            bar.set_postfix(ret=f"{ev.mean:.0f}")
    bar.close()
    checkpoint(total)
    train_time = time.time() - t_train

    # --- evaluation on the true reward ------------------------------------------------------
    ev = eval_now(
        total, int(cfg.eval.n_episodes), video_dir / "eval.mp4" if cfg.video.enabled else None
    )
    rand = evaluate(
        cfg.env.id,
        None,
        int(cfg.eval.random_episodes),
        int(cfg.seed) + 20_000,
        env_kwargs=env_kwargs,
    )  # type: ignore[arg-type]
    writer.add_scalar("eval/random_true_return", rand.mean, total)
    test_acc = None
    if ctx.reward_model is not None and int(cfg.eval.test_queries) > 0:
        test_q = true_data.sample_queries(
            int(cfg.eval.test_queries),
            int(cfg.feedback.segment_length),
            np.random.default_rng(int(cfg.seed) + 30_000),
        )
        test_acc = float(
            ctx.reward_model.accuracy(PreferenceDataset(test_q, oracle_labels(test_q)))
        )
        writer.add_scalar("reward_model/test_accuracy", test_acc, total)
    writer.close()

    scores = true_data.normalized_score(np.asarray(ev.true_returns))
    d4rl = true_data.d4rl_normalized_score(np.asarray(ev.true_returns))
    summary = {
        "exp": cfg.name,
        "algo": algo.name,
        "env_id": cfg.env.id,
        "seed": int(cfg.seed),
        "total_timesteps": total,
        "num_labels": 0 if prefs is None else len(prefs.trainable),
        "num_queries": 0 if prefs is None else len(prefs),
        "teacher": (
            None
            if prefs is None
            else ("file" if cfg.dataset.get("preferences") else cfg.teacher._target_.split(".")[-1])
        ),
        "dataset_id": cfg.dataset.id,
        "dataset_transitions": len(true_data),
        "eval_true_return_mean": ev.mean,
        "eval_true_return_std": ev.std,
        "eval_learned_return_mean": (
            float(np.mean(ev.learned_returns)) if ctx.reward_fn() is not None else None
        ),
        "eval_normalized_score_mean": None if scores is None else float(np.mean(scores)),
        "eval_normalized_score_std": None if scores is None else float(np.std(scores)),
        "eval_d4rl_normalized_score_mean": None if d4rl is None else float(np.mean(d4rl)),
        "eval_d4rl_normalized_score_std": None if d4rl is None else float(np.std(d4rl)),
        "dataset_ref_min_score": true_data.ref_min_score,
        "dataset_ref_max_score": true_data.ref_max_score,
        "random_true_return_mean": rand.mean,
        "reward_model_test_accuracy": test_acc,
        "reward_model": ctx.reward_metrics or None,
        "wall_time_s": time.time() - t_start,
        "train_time_s": train_time,
        "peak_rss_mb": peak_rss_mb(),
        "videos": ([ev.video] if ev.video else []) + videos,
        "tensorboard_dir": str(tb_dir),
        "resumed": resumed,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
