"""The online loop with a reward on rendered frames (RL-VLM-F: PEBBLE + SAC on the state-based
policy, the reward from images): any :class:`~pbrl.rewards.base.FrameReward`
(``inputs == "frames"``: the CNN ensemble of :mod:`pbrl.rewards.image`, the CLIP reward).

The policy, the trajectory pool and the teacher see what they see in a state-based run; only
the reward differs. ``run_online`` swaps in the pieces of this module where it would call the
reward model on ``(obs, act)``:

* :class:`FrameRewardVecEnv` (a VecEnv wrapper under ``PreferenceVecEnv``): after each
  step it renders the state each env reached (the terminal state where an episode ended and
  the env reset), all envs in one batch, scores the frames, and puts that state in ``info``
  (``frame_qpos``/``frame_qvel``). ``PreferenceVecEnv`` hands the policy those rewards
  through :attr:`FrameRewardVecEnv.step_reward`, so its recording, learned-return logging
  and device handling stay one code path.
* :class:`FrameReplayBuffer`: SAC's replay buffer (PEBBLE's state entropy included) also
  keeps the simulator state whose frame gave each transition's reward — a few floats where
  a frame would take kilobytes — so :class:`FramePebbleCallback` can relabel the whole
  buffer after each reward update by rendering those states again. The reward model's
  :class:`~pbrl.rewards.frame_cache.FrameCache` serves the recent ones without rendering.
* :class:`FrameFeedbackCallback`: the feedback loop, with the learned/true reward
  correlation computed on frames.

Every piece takes its frames from :func:`frames_for` (the model's own cache, or one made for
it once), so a state rendered while stepping is not rendered again for query selection,
training or relabeling while it is in the cache.
"""

from __future__ import annotations

import time
import weakref
from typing import Any, cast

import numpy as np
import torch
from stable_baselines3 import SAC
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvStepReturn

from pbrl.data import PreferenceDataset, Segments
from pbrl.errors import ConfigError
from pbrl.online.feedback import FeedbackCallback
from pbrl.online.pebble import EntropyReplayBuffer, PebbleCallback, reset_critic
from pbrl.online.wrappers import sim_state
from pbrl.rewards.base import FrameReward
from pbrl.rewards.frame_cache import FrameCache

_CACHES: weakref.WeakKeyDictionary[Any, FrameCache] = weakref.WeakKeyDictionary()


def frames_for(model: FrameReward) -> FrameCache:
    """The frame cache a frame reward is scored through: its own ``frame_cache`` when it has
    one, else one made for it on first use (it keeps nothing: ``capacity=0``, every frame is
    rendered; frames of a 224 px model would take 150 kB each), rendered with the model's
    ``camera`` and ``env_kwargs`` when it has them."""
    own = getattr(model, "frame_cache", None)
    if isinstance(own, FrameCache):
        return own
    cache = _CACHES.get(model)
    if cache is None:
        cache = _CACHES[model] = FrameCache(
            model.env_id,
            model.image_size,
            getattr(model, "camera", None),
            getattr(model, "env_kwargs", None),
            capacity=0,
        )
    return cache


def score_states(
    model: FrameReward, qpos: np.ndarray, qvel: np.ndarray, batch: int = 1024
) -> np.ndarray:
    """Frame reward ``[K]`` (float32) of ``K`` simulator states, rendered in batches."""
    cache = frames_for(model)
    out = np.empty(len(qpos), dtype=np.float32)
    for i in range(0, len(qpos), batch):
        frames = cache.frames(qpos[i : i + batch], qvel[i : i + batch])
        out[i : i + batch] = model.frame_reward(torch.from_numpy(frames)).float().cpu().numpy()
    return out


class FrameRewardVecEnv(VecEnvWrapper):
    """Renders and scores, after every step, the state each env reached.

    The rewards of the last step are in ``step_rewards``; :attr:`step_reward` shows them to
    ``PreferenceVecEnv`` as a reward model. ``frames`` and ``seconds`` count the frames scored
    and the time spent rendering and scoring them (``time/frames_per_s``).
    """

    def __init__(self, venv: VecEnv, model: FrameReward) -> None:
        super().__init__(venv)
        if sim_state(venv) is None:
            raise ConfigError(
                f"reward.kind={type(model).__name__} scores rendered frames of the simulator "
                "state, which this env does not expose: use a MuJoCo env (e.g. env=reacher)"
            )
        self.model = model
        self.step_rewards = np.zeros(self.num_envs, dtype=np.float32)
        self.frames, self.seconds = 0, 0.0
        self.step_reward = StepReward(self)

    def reset(self) -> Any:
        return self.venv.reset()

    def step_wait(self) -> VecEnvStepReturn:
        obs, reward, dones, infos = self.venv.step_wait()
        t0 = time.perf_counter()
        state = sim_state(self.venv)
        assert state is not None  # checked in __init__
        qpos, qvel = state[0].copy(), state[1].copy()
        for j in np.flatnonzero(dones):  # the env reset: its episode ended in this state
            if "terminal_qpos" in infos[j]:
                qpos[j], qvel[j] = infos[j]["terminal_qpos"], infos[j]["terminal_qvel"]
        self.step_rewards = score_states(self.model, qpos, qvel)
        for i, info in enumerate(infos):
            info["frame_qpos"], info["frame_qvel"] = qpos[i], qvel[i]
        self.frames += self.num_envs
        self.seconds += time.perf_counter() - t0
        return obs, reward, dones, infos


class StepReward:
    """The frame reward of the step just taken, behind the state-reward interface that
    ``PreferenceVecEnv`` calls (``predict``/``reward`` on the step's batch); everything else
    is the frame reward's own."""

    markovian = True

    def __init__(self, env: FrameRewardVecEnv) -> None:
        self.env = env
        self.model = env.model
        self.device = env.model.device

    def _current(self, n: int) -> np.ndarray:
        if n != len(self.env.step_rewards):
            raise TypeError(
                f"{type(self.model).__name__} is a frame reward: only the step just taken "
                "has a reward here (use frame_reward on rendered frames)"
            )
        return self.env.step_rewards

    def predict(self, obs: np.ndarray, act: np.ndarray) -> np.ndarray:
        return self._current(len(obs))

    def reward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self._current(len(obs)), device=self.device)

    def fit(self, dataset: PreferenceDataset, rng: np.random.Generator) -> dict[str, float]:
        return self.model.fit(dataset, rng)

    def segment_returns(self, segments: Segments) -> torch.Tensor:
        return self.model.segment_returns(segments)

    def preference_probs(self, first: Segments, second: Segments) -> np.ndarray:
        return self.model.preference_probs(first, second)

    def accuracy(self, dataset: PreferenceDataset) -> float:
        return self.model.accuracy(dataset)

    def save(self, path: Any) -> None:
        self.model.save(path)


class FrameReplayBuffer(EntropyReplayBuffer):
    """PEBBLE's replay buffer, also holding the simulator state whose frame gave each
    transition's reward (``info["frame_qpos"]``/``["frame_qvel"]`` of
    :class:`FrameRewardVecEnv`)."""

    def __init__(self, *args: Any, state_dims: tuple[int, int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        nq, nv = (int(d) for d in state_dims)
        self.frame_qpos = np.zeros((self.buffer_size, self.n_envs, nq))
        self.frame_qvel = np.zeros((self.buffer_size, self.n_envs, nv))

    def add(
        self,
        obs: np.ndarray,
        next_obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        done: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        if any("frame_qpos" not in info for info in infos):
            raise RuntimeError("FrameReplayBuffer needs a FrameRewardVecEnv under the agent")
        self.frame_qpos[self.pos] = np.stack([info["frame_qpos"] for info in infos])
        self.frame_qvel[self.pos] = np.stack([info["frame_qvel"] for info in infos])
        super().add(obs, next_obs, action, reward, done, infos)

    def relabel(self, model: FrameReward) -> None:
        """Replace every stored reward with the frame reward of its stored state."""
        n = self.buffer_size if self.full else self.pos
        if n == 0:
            return
        nq, nv = self.frame_qpos.shape[-1], self.frame_qvel.shape[-1]
        rewards = score_states(
            model, self.frame_qpos[:n].reshape(-1, nq), self.frame_qvel[:n].reshape(-1, nv)
        )
        self.rewards[:n] = rewards.reshape(n, self.n_envs)


def sac_buffer(entropy_k: int, state_dims: tuple[int, int]) -> dict[str, Any]:
    """SAC's ``replay_buffer_class`` and ``replay_buffer_kwargs`` for a frame reward."""
    return {
        "replay_buffer_class": FrameReplayBuffer,
        "replay_buffer_kwargs": {"entropy_k": entropy_k, "state_dims": tuple(state_dims)},
    }


class FramePebbleCallback(PebbleCallback):
    """:class:`~pbrl.online.pebble.PebbleCallback` for a frame reward: the buffer is relabeled
    from its stored states (:meth:`FrameReplayBuffer.relabel`)."""

    def on_reward_update(self) -> None:
        model = self.model
        assert isinstance(model, SAC), "PEBBLE runs on SAC"
        buffer = model.replay_buffer
        if not isinstance(buffer, FrameReplayBuffer):
            raise RuntimeError("a frame reward needs SAC's replay_buffer_class=FrameReplayBuffer")
        buffer.relabel(cast(FrameReward, self.feedback.reward_model))
        if buffer.intrinsic:
            buffer.intrinsic = False  # end of unsupervised pre-training
            if self.reset_critic:
                reset_critic(model)


class FrameFeedbackCallback(FeedbackCallback):
    """The feedback loop for a frame reward: ``reward_model/true_reward_corr`` compares the
    frame reward of the state each step reached with that step's true reward."""

    def reward_correlation(self, n: int = 4096) -> float:
        held = min(self.pool.num_steps, n)
        length = self.schedule.segment_length
        if held < 2 or held < length:
            return float("nan")
        segs = self.pool.sample_segments(max(1, held // length), length, self.rng)
        assert segs.qpos is not None and segs.qvel is not None  # FrameRewardVecEnv checked
        rows, steps = np.nonzero(segs.mask)
        model = cast(FrameReward, self.reward_model)
        pred = score_states(model, segs.qpos[rows, steps + 1], segs.qvel[rows, steps + 1])
        true = segs.true_reward[rows, steps]
        if true.std() > 0 and pred.std() > 0:
            return float(np.corrcoef(pred, true)[0, 1])
        return 0.0


class FrameRewardLogger(BaseCallback):
    """``time/frames_per_s``: frames rendered and scored per second spent on them while
    stepping, and ``time/frame_reward_s``: that time in total."""

    def __init__(self, env: FrameRewardVecEnv) -> None:
        super().__init__()
        self.env = env

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        if self.env.seconds > 0:
            self.logger.record("time/frames_per_s", self.env.frames / self.env.seconds)
            self.logger.record("time/frame_reward_s", self.env.seconds)
