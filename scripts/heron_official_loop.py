"""The official HERON MountainCar loop, re-written in a few lines, to see what it does.

pbrl's ``+exp=heron_mountaincar`` runs the official *ranking and pair source* inside pbrl's
SAC (RL Zoo settings, relabeled buffer). This script instead follows the official
classic-control script's own loop (abukharin3/HERON, ``ClassicControl/cleanrl/rm_mountain.py``
with ``scripts/mountain.sh``; read for its settings, not copied), so that the paper's
MountainCar result can be checked with its own agent:

* DDPG (one critic, 256-256 ReLU nets, tanh actor), lr 1e-3 (the script's flag), γ 0.99,
  τ 0.005, batch 256, policy and target update every 2nd step, Gaussian noise 0.1,
  5000 uniform-random steps first, 15 000 steps in all;
* the learned reward ``r(position, velocity, done, a²)`` of the *pre-step* observation, taken
  from the reward model of that moment when the step is made and never recomputed;
* factors ``[done, a²]``; ``done`` is gym 0.23's (a time-limit end counts too); the critic
  bootstraps through time-limit ends (SB3's ``handle_timeout_termination``);
* every 400 steps after step 1000: 16 batches of 16 states drawn with replacement from the
  whole history; all 120 pairs of a batch compared level by level (``done``: any
  difference decides; ``a²``: lower is better by more than σ × its std over the whole
  history); one Adam step (1e-3) on the mean Bradley–Terry loss of a batch's decided pairs.

Reports, per seed, how many training episodes reached the flag and the deterministic
policy's goal rate and true return over 20 episodes at the end.

    python scripts/heron_official_loop.py --seeds 0 1 2 [--ranking reversed] [--out F.json]

``--ranking reversed`` puts a² first; ``--ranking true`` trains DDPG on the env's reward
(the official ``ddpg_mountain_baseline.py``'s role).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from torch import nn


def mlp(n_in: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(n_in, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, n_out)
    )


def heron_loss(
    model: nn.Module, x: torch.Tensor, f: torch.Tensor, sigma: torch.Tensor, order: list[int]
) -> torch.Tensor | None:
    """Mean BT loss over the decided pairs (i, j), j < i, of one batch; None if none decide.

    Level 0 of ``order`` decides any difference, the next needs a gap over its sigma;
    factor 0 (done) is higher-better, factor 1 (a²) lower-better."""
    r = model(x).squeeze(-1)
    sign = torch.tensor([1.0, -1.0])
    g = f * sign  # higher is better for both columns now
    i, j = torch.tril_indices(len(x), len(x), offset=-1)
    label = torch.full((len(i),), float("nan"))  # 1: i preferred, 0: j preferred
    for level, k in enumerate(order):
        gap = g[i, k] - g[j, k]
        margin = 0.0 if level == 0 else float(sigma[k])
        open_ = torch.isnan(label)
        label[open_ & (gap > margin)] = 1.0
        label[open_ & (-gap > margin)] = 0.0
    keep = ~torch.isnan(label)
    if not keep.any():
        return None
    logit = r[i[keep]] - r[j[keep]]
    return nn.functional.binary_cross_entropy_with_logits(logit, label[keep])


def run(seed: int, ranking: str, steps: int = 15_000, starts: int = 5_000) -> dict[str, float]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    env = gym.make("MountainCarContinuous-v0")
    actor = nn.Sequential(mlp(2, 1), nn.Tanh())
    critic = mlp(3, 1)
    actor_t, critic_t = nn.Sequential(mlp(2, 1), nn.Tanh()), mlp(3, 1)
    actor_t.load_state_dict(actor.state_dict())
    critic_t.load_state_dict(critic.state_dict())
    opt_a = torch.optim.Adam(actor.parameters(), lr=1e-3)
    opt_c = torch.optim.Adam(critic.parameters(), lr=1e-3)
    rm = mlp(4, 1)
    opt_rm = torch.optim.Adam(rm.parameters(), lr=1e-3)
    order = [1, 0] if ranking == "reversed" else [0, 1]

    obs_b = np.zeros((steps, 2), np.float32)
    next_b = np.zeros((steps, 2), np.float32)
    act_b = np.zeros((steps, 1), np.float32)
    rew_b = np.zeros(steps, np.float32)
    term_b = np.zeros(steps, np.float32)
    inputs = np.zeros((steps, 4), np.float32)  # [position, velocity, done, a²]

    obs, _ = env.reset(seed=seed)
    goals, episodes, rm_updates = 0, 0, 0
    for t in range(steps):
        if t < starts:
            a = rng.uniform(-1, 1, size=1).astype(np.float32)
        else:
            with torch.no_grad():
                a = actor(torch.as_tensor(obs)).numpy()
            a = np.clip(a + rng.normal(0, 0.1, size=1), -1, 1).astype(np.float32)
        nxt, true_r, term, trunc, _ = env.step(a)
        inputs[t] = [obs[0], obs[1], float(term or trunc), a[0] ** 2]
        if t > 1000 and t % 400 == 0 and ranking != "true":
            x, f = torch.as_tensor(inputs[: t + 1]), torch.as_tensor(inputs[: t + 1, 2:])
            sigma = f.std(0)
            for _ in range(16):
                idx = torch.as_tensor(rng.integers(0, t + 1, size=16))
                loss = heron_loss(rm, x[idx], f[idx], sigma, order)
                if loss is not None:
                    opt_rm.zero_grad()
                    loss.backward()
                    opt_rm.step()
            rm_updates += 1
        if ranking == "true":
            rew_b[t] = true_r
        else:
            with torch.no_grad():
                rew_b[t] = float(rm(torch.as_tensor(inputs[t])))
        obs_b[t], next_b[t], act_b[t], term_b[t] = obs, nxt, a, float(term)
        goals += int(term)
        if term or trunc:
            episodes += 1
            obs, _ = env.reset()
        else:
            obs = nxt
        if t > starts:
            idx = rng.integers(0, t + 1, size=256)
            o, n, ac = map(torch.as_tensor, (obs_b[idx], next_b[idx], act_b[idx]))
            r, d = torch.as_tensor(rew_b[idx]), torch.as_tensor(term_b[idx])
            with torch.no_grad():
                q_next = critic_t(torch.cat([n, actor_t(n)], 1)).squeeze(-1)
                target = r + (1 - d) * 0.99 * q_next
            c_loss = nn.functional.mse_loss(critic(torch.cat([o, ac], 1)).squeeze(-1), target)
            opt_c.zero_grad()
            c_loss.backward()
            opt_c.step()
            if t % 2 == 0:
                a_loss = -critic(torch.cat([o, actor(o)], 1)).mean()
                opt_a.zero_grad()
                a_loss.backward()
                opt_a.step()
                with torch.no_grad():
                    for net, tgt in ((actor, actor_t), (critic, critic_t)):
                        for p, q in zip(net.parameters(), tgt.parameters(), strict=True):
                            q.mul_(0.995).add_(0.005 * p)

    reached, returns, push = 0, [], []
    for k in range(20):
        o, _ = env.reset(seed=10_000 + k)
        total, done, a2 = 0.0, False, []
        while not done:
            with torch.no_grad():
                a = actor(torch.as_tensor(o)).numpy()
            o, r, term, trunc, _ = env.step(a)
            total += float(r)
            a2.append(float(a[0] ** 2))
            done = term or trunc
            reached += int(term)
        returns.append(total)
        push.append(float(np.mean(a2)))
    return {
        "seed": seed,
        "training_episodes": episodes,
        "training_goals": goals,
        "eval_goal_rate": reached / 20,
        "eval_true_return": float(np.mean(returns)),
        "eval_mean_action2": float(np.mean(push)),
        "reward_updates": rm_updates,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--ranking", choices=["official", "reversed", "true"], default="official")
    p.add_argument("--steps", type=int, default=15_000)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    for seed in args.seeds:
        t0 = time.time()
        row = run(seed, args.ranking, args.steps)
        row["wall_s"] = round(time.time() - t0, 1)
        rows.append(row)
        print(json.dumps({"ranking": args.ranking, **row}), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"ranking": args.ranking, "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
