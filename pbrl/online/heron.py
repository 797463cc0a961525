"""HERON as its official code runs it: pairs of single transitions from the agent's buffer.

A person ranks the reward factors once; every comparison follows from that ranking, so a pair
costs nothing and the official classic-control code (abukharin3/HERON, ``rm_mountain.py``)
compares thousands of *single transitions* drawn from the replay buffer at every reward
update, with the margin of each level taken over the whole buffer. :class:`TransitionFeedback`
does that inside the online loop (``feedback.pairs=transitions``):

* every ``feedback.every`` steps from ``feedback.first_at``, draw ``feedback.pairs_per_update``
  pairs of transitions uniformly from the buffer (both halves from it), as one-step segments;
* hand them to the teacher (HERON's ranking, or the oracle for the Bradley–Terry baseline on
  the same pairs); undecided pairs and ties are skipped;
* train the reward model on this round's decided pairs (the official code also trains on each
  round's fresh draw only) and count them: ``comparisons induced`` in the summary.
  ``max_feedback`` does not apply: there is no label budget, the ranking is given once.

The buffer is SAC's replay buffer (``EntropyReplayBuffer`` keeps each step's factor values and
true reward as ``step_fields``, whatever the reward model reads); PPO has no replay buffer, so
its pairs come from the trajectory pool (the last ``feedback.pool_size`` steps).

:class:`ValueTargetOnly` is the official robotics code's use of the learned reward: PPO's
value target is built from it while the advantages that move the policy use the true reward.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback

from pbrl.data import PreferenceDataset, Queries, Segments
from pbrl.data.pool import TrajectoryPool
from pbrl.errors import ConfigError
from pbrl.online.feedback import FeedbackCallback, FeedbackSchedule, FeedbackState
from pbrl.online.pebble import EntropyReplayBuffer
from pbrl.rewards.base import RewardModel
from pbrl.teachers.base import Teacher

KEPT_FIELDS = ("factors", "true_reward")  # what SAC's buffer keeps for transition pairs


@dataclass
class Transitions:
    """Every transition of a buffer, flat: ``obs [N, D]``, ``act [N, A]``, ``next_obs``,
    ``true_reward [N]``, ``factors [N, K]``, ``terminated [N]``."""

    obs: np.ndarray
    act: np.ndarray
    next_obs: np.ndarray
    true_reward: np.ndarray
    factors: np.ndarray
    terminated: np.ndarray
    qpos: np.ndarray | None = None  # [N, 2, nq]: the state before and after (to render)
    qvel: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.obs)

    def segments(
        self, rows: np.ndarray, factor_names: tuple[str, ...], env_id: str = "", run: str = ""
    ) -> Segments:
        """The transitions ``rows`` as one-step segments."""
        return Segments(
            obs=self.obs[rows, None].astype(np.float32),
            act=self.act[rows, None].astype(np.float32),
            true_reward=self.true_reward[rows, None].astype(np.float64),
            mask=np.ones((len(rows), 1), bool),
            final_obs=self.next_obs[rows].astype(np.float32),
            terminated=self.terminated[rows].astype(bool),
            reward_factors=self.factors[rows, None].astype(np.float32),
            qpos=None if self.qpos is None else self.qpos[rows],
            qvel=None if self.qvel is None else self.qvel[rows],
            factor_names=factor_names,
            env_id=env_id,
            run=run,
        )


def replay_buffer_transitions(buffer: EntropyReplayBuffer) -> Transitions:
    """Every transition SAC's replay buffer holds (its ``factors`` and ``true_reward`` step
    fields: :data:`KEPT_FIELDS`)."""
    missing = [k for k in KEPT_FIELDS if k not in buffer.step_fields]
    if missing:
        raise RuntimeError(
            f"transition pairs need the replay buffer to keep {', '.join(missing)}: build it "
            f"with step_fields for {', '.join(KEPT_FIELDS)} (pbrl.online.trainer does)"
        )
    n = buffer.buffer_size if buffer.full else buffer.pos
    m = n * buffer.n_envs

    def flat(x: np.ndarray) -> np.ndarray:
        return x[:n].reshape(m, -1)

    nxt = buffer.observations[1 : n + 1] if buffer.optimize_memory_usage else None
    next_obs = flat(buffer.next_observations) if nxt is None else nxt.reshape(m, -1)
    terminated = buffer.dones[:n] * (1 - buffer.timeouts[:n])
    return Transitions(
        flat(buffer.observations),
        buffer.env_actions(slice(0, n)).reshape(m, -1),  # as the env took them (pool's too)
        next_obs,
        flat(buffer.step_fields["true_reward"])[:, 0],
        flat(buffer.step_fields["factors"]),
        terminated.reshape(m) > 0,
    )


def pool_transitions(pool: TrajectoryPool) -> Transitions:
    """Every step the trajectory pool holds (PPO's stand-in for a replay buffer), with the
    simulator states before and after each where the pool records them."""
    held = np.minimum(pool.written, pool.capacity)
    envs = np.repeat(np.arange(pool.n_envs), held)
    rows = np.concatenate([np.arange(h) for h in held]) if len(held) else np.zeros(0, int)
    qpos = qvel = None
    if pool.has_state:
        qpos = np.stack([pool.qpos[envs, rows], pool.next_qpos[envs, rows]], 1)
        qvel = np.stack([pool.qvel[envs, rows], pool.next_qvel[envs, rows]], 1)
    return Transitions(
        pool.obs[envs, rows],
        pool.act[envs, rows],
        pool.next_obs[envs, rows],
        pool.reward[envs, rows].astype(np.float64),
        pool.factors[envs, rows],
        pool.terminated[envs, rows],
        qpos,
        qvel,
    )


def transition_pairs(
    steps: Transitions,
    n: int,
    rng: np.random.Generator,
    factor_names: tuple[str, ...],
    env_id: str = "",
    run: str = "",
) -> Queries:
    """``n`` pairs of two different transitions drawn uniformly from ``steps``."""
    total = len(steps)
    if total < 2:
        raise RuntimeError(f"the buffer holds {total} transitions: a pair needs two")
    first = rng.integers(total, size=n)
    second = (first + rng.integers(1, total, size=n)) % total  # never the same transition
    return Queries(
        steps.segments(first, factor_names, env_id, run),
        steps.segments(second, factor_names, env_id, run),
    )


@dataclass
class TransitionState(FeedbackState):
    """The loop's counters plus the comparisons the teacher decided (labels 0 or 1)."""

    comparisons: int = 0


class TransitionFeedback(FeedbackCallback):
    """``feedback.pairs=transitions``: each round draws ``pairs_per_update`` transition pairs
    from ``source()`` (the agent's buffer), labels them by the teacher and trains the reward
    model on the decided ones. ``state.queries`` counts pairs drawn, ``state.comparisons`` the
    pairs a label decided (``num_labels``)."""

    def __init__(
        self,
        schedule: FeedbackSchedule,
        source: Callable[[], Transitions],
        pool: TrajectoryPool,
        reward_model: RewardModel,
        teacher: Teacher,
        rng: np.random.Generator | None = None,
        start_at: int | None = None,
        labels_path: str | Path | None = None,
    ) -> None:
        super().__init__(schedule, pool, reward_model, teacher, None, rng, start_at, labels_path)
        self.state = TransitionState(next_at=self.state.next_at)
        self.source = source

    @property
    def num_labels(self) -> int:
        return int(self.state.comparisons) if isinstance(self.state, TransitionState) else 0

    def restore(self, path: str | Path) -> None:
        self.dataset, meta = PreferenceDataset.load_with_meta(path)
        if not len(self.dataset):
            self.dataset = None
        self.state = TransitionState(**meta["feedback"])

    def _on_step(self) -> bool:
        if self.num_timesteps >= self.state.next_at:
            self.feedback_round()
            while self.state.next_at <= self.num_timesteps:
                self.state.next_at += self.schedule.every
        return True

    def feedback_round(self) -> None:
        """Draw pairs from the buffer, label them by the ranking, train on the decided ones."""
        t0 = time.time()
        steps = self.source()
        if len(steps) < 2:
            self.logger.record("preferences/deferred", "buffer holds < 2 transitions")
            return
        names = self.pool.factor_names
        self.teacher.set_factor_spread(names, steps.factors.std(0))
        queries = transition_pairs(
            steps, self.schedule.pairs_per_update, self.rng, names, self.pool.env_id, self.pool.run
        )
        self.state.queries += len(queries)
        self.state.rounds += 1
        self.teacher.submit(queries)
        new = self.teacher.collect()
        if new is None:
            return
        decided = np.isin(new.labels, (0.0, 1.0))
        assert isinstance(self.state, TransitionState)
        self.state.comparisons += int(decided.sum())
        self.dataset = None  # each round trains on its own draw (labels cost nothing)
        self.reward_learning_s += time.time() - t0
        self.learn_from(new[np.flatnonzero(decided)] if decided.any() else None, queries)

    def report(self) -> dict[str, Any]:
        """Counts for ``summary.json`` (``extra.transition_pairs``)."""
        return {
            "rankings_given": 1 if "ranking" in self.teacher.describe() else 0,
            "pairs_drawn": int(self.state.queries),
            "comparisons_induced": self.num_labels,
            "reward_updates": int(self.state.updates),
            "pairs_per_update": int(self.schedule.pairs_per_update),
        }

    def state_dict(self) -> dict[str, Any]:
        return asdict(self.state)


def check_transitions(schedule: FeedbackSchedule, total_timesteps: int) -> None:
    """A transition-pair run must reach its first round; ``max_feedback`` does not apply."""
    if schedule.first_at >= total_timesteps:
        raise ConfigError(
            f"feedback.first_at={schedule.first_at} is not below total_timesteps="
            f"{total_timesteps}: no transition round fits; lower feedback.first_at"
        )


# -- the official robotics code's PPO: the learned reward as the value target only ------------


class ValueTargetOnly(BaseCallback):
    """After each PPO rollout: the value target (``returns``) stays the learned reward's GAE
    return; the advantages that move the policy are recomputed from the *true* reward with the
    same value estimates (abukharin3/HERON's robotics code; the paper describes the learned
    reward driving the policy, pbrl's default)."""

    def __init__(self) -> None:
        super().__init__()
        self.true_rewards: list[np.ndarray] = []

    def _on_rollout_start(self) -> None:
        self.true_rewards = []

    def _on_step(self) -> bool:
        infos = self.locals["infos"]
        self.true_rewards.append(np.array([float(i["true_reward"]) for i in infos]))
        return True

    def _on_rollout_end(self) -> None:
        buffer = self.locals["rollout_buffer"]
        assert isinstance(buffer, RolloutBuffer), "the value-target variant runs on PPO"
        if len(self.true_rewards) != buffer.buffer_size:
            return
        rewards = np.stack(self.true_rewards).astype(np.float32)
        last_values = self.locals["values"]
        dones = self.locals["dones"]
        buffer.advantages = gae_advantages(
            rewards,
            buffer.values,
            buffer.episode_starts,
            last_values.detach().cpu().numpy().flatten()
            if isinstance(last_values, torch.Tensor)
            else np.asarray(last_values).flatten(),
            np.asarray(dones, np.float32),
            buffer.gamma,
            buffer.gae_lambda,
        )


def gae_advantages(
    rewards: np.ndarray,
    values: np.ndarray,
    episode_starts: np.ndarray,
    last_values: np.ndarray,
    dones: np.ndarray,
    gamma: float,
    lam: float,
) -> np.ndarray:
    """GAE(λ) advantages ``[T, E]`` as SB3's ``RolloutBuffer.compute_returns_and_advantage``."""
    t_len = len(rewards)
    adv = np.zeros_like(rewards)
    last = np.zeros(rewards.shape[1], np.float32)
    for t in reversed(range(t_len)):
        if t == t_len - 1:
            nonterminal, next_values = 1.0 - dones, last_values
        else:
            nonterminal, next_values = 1.0 - episode_starts[t + 1], values[t + 1]
        delta = rewards[t] + gamma * next_values * nonterminal - values[t]
        last = delta + gamma * lam * nonterminal * last
        adv[t] = last
    return adv
