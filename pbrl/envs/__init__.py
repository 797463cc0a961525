"""Environments pbrl ships, registered with gymnasium under the ``pbrl/`` namespace.

Importing ``pbrl.envs`` registers them; ``gym.make("pbrl.envs:pbrl/Delivery-v0")`` does it
for you.
"""

from gymnasium.envs.registration import register

register(
    id="pbrl/Delivery-v0",
    entry_point="pbrl.envs.delivery:DeliveryEnv",
    max_episode_steps=200,
)

# Classic-control tasks with their reward factors in ``info`` (pbrl.envs.factors; HERON).
register(
    id="pbrl/MountainCarContinuous-v0",
    entry_point="pbrl.envs.factors:mountain_car",
    max_episode_steps=999,
)
register(
    id="pbrl/Pendulum-v1",
    entry_point="pbrl.envs.factors:pendulum",
    max_episode_steps=200,
)

# A planar agent sweeps blocks into a goal zone (pbrl.envs.sweep; RAPL's visual task).
register(
    id="pbrl/Sweep-v0",
    entry_point="pbrl.envs.sweep:SweepEnv",
    max_episode_steps=50,
)

# A point mass and two goals that different users prefer (pbrl.envs.twogoal; VPL's task).
register(
    id="pbrl/TwoGoal-v0",
    entry_point="pbrl.envs.twogoal:TwoGoalEnv",
    max_episode_steps=50,
)
