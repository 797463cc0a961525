"""Online preference-based RL on stable-baselines3: the learned reward enters through a
VecEnv wrapper, the feedback schedule and PEBBLE's relabeling run as SB3 callbacks.

Wiring a run by hand (no Hydra)::

    pool = make_pool("Reacher-v5", n_envs=1, capacity=20_000)
    model = RewardEnsemble(pool.obs_dim, pool.act_dim)
    env = PreferenceVecEnv(venv, pool, model)
    sac = SAC("MlpPolicy", env, replay_buffer_class=EntropyReplayBuffer)
    feedback = FeedbackCallback(FeedbackSchedule(every=1000, max_feedback=200), pool, model,
                                ScriptedTeacher())
    sac.learn(10_000, callback=CallbackList([feedback, PebbleCallback(feedback)]))

(docs/library.md's example, run by ``tests/test_online.py``).
"""

from pbrl.online.callbacks import CheckpointCallback, EvalCallback, LearnedReturnLogger, QueryVideos
from pbrl.online.feedback import FeedbackCallback, FeedbackSchedule, FeedbackState
from pbrl.online.pebble import EntropyReplayBuffer, PebbleCallback
from pbrl.online.wrappers import PreferenceVecEnv, make_pool

__all__ = [
    "CheckpointCallback",
    "EntropyReplayBuffer",
    "EvalCallback",
    "FeedbackCallback",
    "FeedbackSchedule",
    "FeedbackState",
    "LearnedReturnLogger",
    "PebbleCallback",
    "PreferenceVecEnv",
    "QueryVideos",
    "make_pool",
]
