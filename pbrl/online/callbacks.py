"""The online loop's other SB3 callbacks: periodic evaluation (with videos), checkpoints,
and the learned return of training episodes."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecNormalize

from pbrl.data import Queries
from pbrl.evaluation import Policy
from pbrl.online.wrappers import PreferenceVecEnv
from pbrl.rewards.base import RewardModel
from pbrl.rewards.dispatch import state_reward_fn
from pbrl.run import Evaluation, Progress
from pbrl.teachers.base import Teacher

if TYPE_CHECKING:
    from pbrl.video import StateRenderer


def deterministic_policy(model: BaseAlgorithm) -> Policy:
    """The policy's deterministic action for raw env observations (normalized as in training
    when a VecNormalize normalizes observations)."""
    venv = model.get_env()
    normalize = venv.normalize_obs if isinstance(venv, VecNormalize) and venv.norm_obs else None

    def act(obs: np.ndarray) -> np.ndarray:
        x = normalize(obs) if normalize is not None else obs
        return np.asarray(model.predict(x, deterministic=True)[0])

    return act


class EvalCallback(BaseCallback):
    """Every ``every`` env steps: the deterministic policy's true (and learned) return on
    fresh episodes, and its video; an asynchronous teacher is shown the newest video."""

    def __init__(
        self,
        evaluation: Evaluation,
        every: int,
        reward_model: RewardModel | None = None,
        teacher: Teacher | None = None,
    ) -> None:
        super().__init__()
        self.evaluation, self.every = evaluation, int(every)
        self.reward_fn = state_reward_fn(reward_model)  # a learned return where the kind has one
        self.teacher = teacher
        self.last = 0
        self.videos: list[str] = []

    def _on_step(self) -> bool:
        if self.every > 0 and self.num_timesteps - self.last >= self.every:
            self.evaluate()
        return True

    def evaluate(self) -> None:
        self.last = self.num_timesteps
        ev = self.evaluation.policy(
            deterministic_policy(self.model),
            reward_fn=self.reward_fn,
            video_name=f"eval_{self.num_timesteps:09d}.mp4",
        )
        self.logger.record("eval/true_return", ev.mean)
        if self.reward_fn is not None:
            self.logger.record("eval/learned_return", float(np.mean(ev.learned_returns)))
        if ev.video:
            self.videos.append(ev.video)
            if self.teacher is not None:  # the labeling page shows the newest
                self.teacher.show_eval_video(ev.video, step=self.num_timesteps, true_return=ev.mean)

    def state_dict(self) -> dict[str, int]:
        return {"last": self.last}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.last = int(state["last"])


class CheckpointCallback(BaseCallback):
    """Calls ``save(num_timesteps)`` every ``every`` env steps."""

    def __init__(self, every: int, save: Callable[[int], None], last: int = 0) -> None:
        super().__init__()
        if every <= 0:
            raise ValueError(f"checkpoint_every={every} must be positive")
        self.every, self.save, self.last = int(every), save, int(last)

    def _on_step(self) -> bool:
        if self.num_timesteps - self.last >= self.every:
            self.save(self.num_timesteps)
            self.last = self.num_timesteps
        return True


class LearnedReturnLogger(BaseCallback):
    """``rollout/ep_learned_rew_mean``: training episodes' return under the learned reward
    (``rollout/ep_rew_mean`` stays the true return)."""

    def __init__(self, wrapper: PreferenceVecEnv) -> None:
        super().__init__()
        self.wrapper = wrapper

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        if self.wrapper.learned_episode_returns:
            mean = float(np.mean(self.wrapper.learned_episode_returns))
            self.logger.record("rollout/ep_learned_rew_mean", mean)


class RewardTimeLogger(BaseCallback):
    """``time/reward_steps_per_s``: steps scored by the learned reward per second spent scoring
    them while stepping (rendering included for a frame reward), and ``time/reward_s``: that
    time in total."""

    def __init__(self, wrapper: PreferenceVecEnv) -> None:
        super().__init__()
        self.wrapper = wrapper

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        if self.wrapper.reward_s > 0:
            self.logger.record(
                "time/reward_steps_per_s", self.wrapper.scored / self.wrapper.reward_s
            )
            self.logger.record("time/reward_s", self.wrapper.reward_s)


class QueryVideos:
    """Side-by-side clips of the first ``per_round`` queries of each feedback round (an
    ``on_queries`` hook of :class:`~pbrl.online.feedback.FeedbackCallback`), re-rendered
    from the segments' simulator state."""

    def __init__(
        self,
        env_id: str,
        env_kwargs: Mapping[str, object],
        folder: Path,
        per_round: int = 2,
        size: tuple[int, int] = (240, 240),
    ) -> None:
        self.env_id, self.env_kwargs, self.folder = env_id, env_kwargs, Path(folder)
        self.per_round, self.size = int(per_round), size
        self.renderer: StateRenderer | None = None
        self.videos: list[str] = []

    def __call__(self, queries: Queries, round_: int) -> None:
        if self.per_round <= 0 or queries.first.qpos is None:
            return
        from pbrl.envs.render import shared_renderer
        from pbrl.video import clip_fps, segment_frames, side_by_side, write_video

        if self.renderer is None:  # the process's renderer of this view (pbrl.envs.render)
            w, h = self.size
            self.renderer = shared_renderer(self.env_id, self.env_kwargs, w, h)
        renderer = self.renderer
        for j in range(min(self.per_round, len(queries))):
            frames = side_by_side(
                segment_frames(queries.first, j, renderer),
                segment_frames(queries.second, j, renderer),
            )
            path = self.folder / f"round{round_:03d}_query_{queries.query_id[j]}.mp4"
            # the env's render_fps (an env without one: a ValueError saying so)
            self.videos.append(str(write_video(frames, path, fps=clip_fps(None, renderer))))

    def close(self) -> None:
        self.renderer = None  # shared: other users of the view keep it


class ProgressCallback(BaseCallback):
    """Env steps as :class:`pbrl.run.Progress` (a bar on a terminal, else a periodic line),
    with the latest training episodes' true return beside it."""

    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self.progress = progress

    def _on_step(self) -> bool:
        info = self.model.ep_info_buffer
        if info and self.n_calls % 500 == 0:
            ret = float(np.mean([ep["r"] for ep in info]))
            self.progress.update_to(self.num_timesteps, ep_return=f"{ret:.1f}")
        else:
            self.progress.update_to(self.num_timesteps)
        return True

    def _on_training_end(self) -> None:
        self.progress.close()
