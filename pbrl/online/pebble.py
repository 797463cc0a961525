"""PEBBLE's pieces on top of SB3's SAC (Lee et al. 2021), used unchanged otherwise.

* Unsupervised pre-training: while ``intrinsic`` is on, the replay buffer returns the
  k-NN state-entropy reward ||s' - s'_(k)|| of each sampled next state against the states in
  the buffer, divided by its running std — computed at sample time, as in PEBBLE.
* After each reward-model update the whole buffer is relabeled with the new reward.
* After pre-training the critic is re-initialized (the actor keeps its exploration skill).
* A frame reward's steps can be scored in batches (:meth:`EntropyReplayBuffer.defer_scoring`):
  the buffer stores a placeholder and scores the newest steps ``every`` at a time (their frames
  rendered and scored in one batch instead of one forward pass per step); until then SAC does
  not sample them. PEBBLE's relabeling scores them with the rest.

:class:`PebbleCallback` does the last two after every reward-model update of a
:class:`~pbrl.online.feedback.FeedbackCallback` (place it after that one in a ``CallbackList``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import SAC
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.running_mean_std import RunningMeanStd
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.vec_env import VecNormalize

from pbrl.online.feedback import FeedbackCallback
from pbrl.online.wrappers import PreferenceVecEnv
from pbrl.rewards.base import RewardModel
from pbrl.rewards.dispatch import Steps, score_steps

SCORED_FIELDS = ("qpos", "qvel", "factors")  # the Steps fields a reward may read


def knn_distance(
    x: torch.Tensor, reference: torch.Tensor, k: int, chunk: int = 8192
) -> torch.Tensor:
    """Distance from each row of ``x`` to its ``k``-th nearest row of ``reference``.

    ``x`` is assumed to be contained in ``reference`` (distance 0 to itself), so the k-th
    neighbour is the (k+1)-th smallest distance, as in PEBBLE's estimator.
    """
    kk = min(k + 1, len(reference))
    best = None
    for i in range(0, len(reference), chunk):
        d = torch.cdist(x, reference[i : i + chunk])
        best = d if best is None else torch.cat([best, d], dim=1)
        best = torch.topk(best, min(kk, best.shape[1]), dim=1, largest=False).values
    assert best is not None
    return best[:, -1]


class EntropyReplayBuffer(ReplayBuffer):
    """SB3 replay buffer with an optional PEBBLE state-entropy reward at sample time, that
    relabels its transitions with a reward model (:meth:`relabel`).

    ``step_fields`` maps what the reward's kind reads beyond ``(obs, act)`` to its width (e.g.
    ``{"qpos": nq, "qvel": nv}`` for a frame reward: the state each step reached), taken from
    the ``step_<field>`` entries ``PreferenceVecEnv`` puts in each step's info."""

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        device: torch.device | str = "auto",
        n_envs: int = 1,
        optimize_memory_usage: bool = False,
        handle_timeout_termination: bool = True,
        *,
        entropy_k: int = 5,
        step_fields: dict[str, int] | None = None,
    ) -> None:
        super().__init__(
            buffer_size,
            observation_space,
            action_space,
            device,
            n_envs,
            optimize_memory_usage,
            handle_timeout_termination,
        )
        self.intrinsic = False
        self.scorer: PreferenceVecEnv | None = None  # set by defer_scoring; not pickled
        self.score_every = 1
        self.pending = 0  # the newest positions stored with a placeholder reward
        self.entropy_k = entropy_k
        self.entropy_stats = RunningMeanStd(shape=())
        self.step_fields = {
            name: np.zeros((self.buffer_size, self.n_envs, int(width)), dtype=np.float64)
            for name, width in (step_fields or {}).items()
        }

    def add(
        self,
        obs: np.ndarray,
        next_obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        done: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        for name, column in self.step_fields.items():
            key = f"step_{name}"
            if any(key not in info for info in infos):
                raise RuntimeError(
                    f"the replay buffer keeps {key} for relabeling, but the env did not report "
                    "it: put a PreferenceVecEnv with the reward model under the agent"
                )
            column[self.pos] = np.stack([info[key] for info in infos])
        super().add(obs, next_obs, action, reward, done, infos)
        if self.scorer is not None:
            self.pending = min(self.pending + 1, self.buffer_size)
            if self.pending >= self.score_every:
                self.score_pending()

    # -- scoring a frame reward's steps in batches --------------------------------------------
    def defer_scoring(self, scorer: PreferenceVecEnv, every: int) -> None:
        """Score the steps stored from now on ``every`` positions at a time, through
        ``scorer`` (the ``PreferenceVecEnv(defer=True)`` that stepped them: it times the
        scoring and keeps the learned episode returns). Call again after loading a saved
        buffer: the scorer is not saved with it."""
        self.scorer, self.score_every = scorer, max(1, int(every))

    def _positions(self, count: int) -> np.ndarray:
        """The newest ``count`` positions, oldest first."""
        return np.arange(self.pos - count, self.pos) % self.buffer_size

    def _steps(self, rows: np.ndarray | slice, count: int) -> Steps:
        """What a reward reads of the ``count`` transitions at positions ``rows`` (every env,
        flat; a slice reads without copying)."""
        n = count * self.n_envs
        fields = {
            k: v[rows].reshape(n, -1) for k, v in self.step_fields.items() if k in SCORED_FIELDS
        }
        return Steps(
            self.observations[rows].reshape(n, -1), self.env_actions(rows).reshape(n, -1), **fields
        )

    def env_actions(self, rows: np.ndarray | slice) -> np.ndarray:
        """The actions at ``rows`` as the env received them. SB3's SAC stores a box action
        rescaled to [-1, 1]; the reward model was fit on the pool's segments, which hold the
        env's action (InvertedPendulum's is in [-3, 3]), so a relabel reads it unscaled."""
        act = self.actions[rows]
        space = self.action_space
        if not isinstance(space, spaces.Box) or not np.isfinite([space.low, space.high]).all():
            return act  # SB3 stores these as taken
        low, high = space.low.astype(np.float64), space.high.astype(np.float64)
        return (low + 0.5 * (act + 1.0) * (high - low)).astype(np.float32)

    def score_pending(self) -> None:
        """Score the steps stored with a placeholder. While the state-entropy reward is on,
        nothing reads them (the first reward update relabels every step): they stay
        unscored, and their episodes' learned returns unknown."""
        if not self.pending or self.scorer is None:
            return
        rows = self._positions(self.pending)
        self.pending = 0
        if self.intrinsic:
            nan = np.full((len(rows), self.n_envs), np.nan)
            self.scorer.add_scored(nan, self.dones[rows].astype(bool))
            return
        scores = self.scorer.score(self._steps(rows, len(rows))).reshape(len(rows), self.n_envs)
        self.rewards[rows] = scores
        self.scorer.add_scored(scores, self.dones[rows].astype(bool))

    def sample(self, batch_size: int, env: VecNormalize | None = None) -> ReplayBufferSamples:
        """SB3's uniform sample over the scored positions (the newest ``pending`` steps wait
        for their batch to be scored)."""
        stored = self.buffer_size if self.full else self.pos
        if not self.pending or self.optimize_memory_usage:
            return super().sample(batch_size, env)
        if self.pending >= stored:
            self.score_pending()
            return super().sample(batch_size, env)
        rows = np.random.randint(0, stored - self.pending, size=batch_size)  # noqa: NPY002 (SB3 draws from the global RNG its seed sets)
        if self.full:
            rows = (self.pos + rows) % self.buffer_size  # oldest first, the pending left out
        return self._get_samples(rows, env)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["scorer"] = None  # the env wrapper stays with its run; defer_scoring reattaches
        return state

    def relabel(self, model: RewardModel) -> None:
        """Replace every stored reward with the reward model's reward of that transition."""
        n = self.buffer_size if self.full else self.pos
        if n == 0:
            return
        # what a reward reads (SCORED_FIELDS); others (true_reward) are kept for HERON
        self.rewards[:n] = score_steps(model, self._steps(slice(0, n), n)).reshape(n, self.n_envs)
        if self.pending and self.scorer is not None:  # scored with the rest just now
            rows = self._positions(self.pending)
            self.scorer.add_scored(self.rewards[rows], self.dones[rows].astype(bool))
        self.pending = 0

    def _get_samples(
        self, batch_inds: np.ndarray, env: VecNormalize | None = None
    ) -> ReplayBufferSamples:
        samples = super()._get_samples(batch_inds, env)
        if not self.intrinsic:
            return samples
        n = self.buffer_size if self.full else self.pos
        states = torch.as_tensor(
            self.observations[:n].reshape(n * self.n_envs, -1),
            device=samples.next_observations.device,
            dtype=torch.float32,
        )
        with torch.no_grad():
            dist = knn_distance(
                samples.next_observations.float().flatten(1), states, self.entropy_k
            )
        self.entropy_stats.update(dist.cpu().numpy())
        reward = dist / float(np.sqrt(self.entropy_stats.var) + 1e-8)
        return samples._replace(rewards=reward.reshape(-1, 1).to(samples.rewards.dtype))


def reset_critic(model: SAC) -> None:
    """Re-initialize SAC's twin critic, its target and its optimizer."""
    for module in model.critic.modules():
        reset = getattr(module, "reset_parameters", None)
        if reset is not None and module is not model.critic:
            reset()
    model.critic_target.load_state_dict(model.critic.state_dict())
    optimizer = model.critic.optimizer
    model.critic.optimizer = type(optimizer)(model.critic.parameters(), **optimizer.defaults)


class PebbleCallback(BaseCallback):
    """After each reward-model update of ``feedback``: relabel SAC's replay buffer with the new
    reward; after the first one, end the state-entropy pre-training (and, with
    ``reset_critic``, re-initialize the critic)."""

    def __init__(self, feedback: FeedbackCallback, reset_critic: bool = True) -> None:
        super().__init__()
        self.feedback, self.reset_critic = feedback, reset_critic
        self.seen_updates = feedback.state.updates

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        # After SB3 stored the step on which the reward model changed, before SAC trains:
        # relabeling in _on_step would leave that one transition with the old reward.
        if self.feedback.state.updates != self.seen_updates:
            self.seen_updates = self.feedback.state.updates
            self.on_reward_update()

    def on_reward_update(self) -> None:
        model = self.model
        assert isinstance(model, SAC), "PEBBLE runs on SAC"
        buffer = model.replay_buffer
        if not isinstance(buffer, EntropyReplayBuffer):
            raise RuntimeError("PEBBLE relabels its own replay buffer: EntropyReplayBuffer")
        buffer.relabel(self.feedback.reward_model)
        if buffer.intrinsic:
            buffer.intrinsic = False  # end of unsupervised pre-training
            if self.reset_critic:
                reset_critic(model)
