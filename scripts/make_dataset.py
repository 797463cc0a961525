"""Build D4RL-style offline datasets on gymnasium's v5 MuJoCo envs, as local Minari datasets.

Recipe (D4RL, Fu et al. 2020): train SAC on the true reward; *expert* = the final policy
(``--expert-checkpoint best``: the best-scoring checkpoint, for short budgets whose last
checkpoint may be a dip), *medium* = the first checkpoint reaching about one third of the expert's return (as a
fraction of the way from random to expert), *medium-replay* = every transition SAC saw up to
that checkpoint (its replay buffer), *medium-expert* = medium + expert, *random* = uniform
random actions. Rollouts sample the stochastic policy. Terminals and timeouts are recorded
apart, and ``qpos``/``qvel`` of every step go into the episode ``infos`` so any segment can
be re-rendered for labeling. Each dataset stores the random and expert reference returns
measured here (Minari's ``ref_min_score``/``ref_max_score``) and D4RL's for the robot.

    python scripts/make_dataset.py --env hopper walker2d            # small, ~10 min per env here
    python scripts/make_dataset.py --env hopper --preset full       # D4RL sizes (1M steps each)
    python scripts/make_dataset.py --env twogoal --kinds goals      # VPL's two-goal task, seconds

*goals* (pbrl/TwoGoal-v0 only, no SAC): each episode heads for goal a or goal b (40% each,
after up to 15 random steps) with a noisy scripted controller, or explores at random (20%);
the reward factors of both goals are stored per step (``infos``), so any user's preference
can label its segments.

Dataset ids: ``{namespace}/{env}/{kind}-v{version}``, e.g. ``pbrl/hopper/medium-replay-v0``;
``MINARI_DATASETS_PATH`` chooses the store. pbrl loads these and downloaded ones
(``minari download mujoco/hopper/medium-v0``) the same way.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pbrl.envs  # noqa: E402, F401  (registers pbrl/ environments)
from pbrl.data.offline import Episode, d4rl_reference, minari_root, save_minari  # noqa: E402

ENV_IDS = {
    "hopper": "Hopper-v5",
    "walker2d": "Walker2d-v5",
    "halfcheetah": "HalfCheetah-v5",
    "ant": "Ant-v5",
    "twogoal": "pbrl/TwoGoal-v0",
}
SAC_KINDS = ("random", "medium", "medium-replay", "expert", "medium-expert")
KINDS = (*SAC_KINDS, "goals")
GOAL_ENVS = ("pbrl/TwoGoal-v0",)  # envs with a scripted goal-seeking behaviour (kind goals)


def arg(default: Any, help: str) -> Any:  # noqa: A002
    return field(default=default, metadata={"help": help})


@dataclass
class BuildConfig:
    env: list[str] = arg(("hopper",), "robots (hopper, walker2d, halfcheetah, ant) or gym ids")
    kinds: list[str] = arg(SAC_KINDS, "datasets to write: " + ", ".join(KINDS))
    namespace: str = arg("pbrl", "Minari namespace of the dataset ids")
    version: int = arg(0, "dataset version (the -vN suffix)")
    seed: int = arg(0, "seed of SAC, the rollouts and the environments")
    # behavior policy (SAC, stable-baselines3 defaults otherwise)
    sac_steps: int = arg(60_000, "SAC training steps (D4RL: 1M)")
    learning_starts: int = arg(5_000, "uniform random steps before SAC updates start")
    checkpoint_every: int = arg(5_000, "SAC steps between policy checkpoints (medium candidates)")
    eval_episodes: int = arg(5, "stochastic-policy episodes to score each checkpoint")
    medium_fraction: float = arg(1 / 3, "medium = first checkpoint this far from random to expert")
    expert_checkpoint: str = arg(
        "final", "expert = the final (D4RL) or the best-scoring checkpoint"
    )
    # dataset sizes
    size: int = arg(50_000, "transitions per rollout dataset: medium, expert (D4RL: 1M)")
    random_size: int = arg(50_000, "transitions of the random dataset (D4RL: 1M)")
    max_episode_steps: int = arg(1000, "time limit of an episode")
    # reference returns
    ref_episodes: int = arg(10, "expert-policy episodes for the expert reference return")
    random_ref_episodes: int = arg(100, "random-policy episodes for the random reference return")
    # machinery
    threads: int = arg(1, "torch threads")
    device: str = arg("cpu", "torch device of SAC")
    overwrite: bool = arg(False, "replace datasets that already exist")
    policy_dir: str = arg("", "also save the medium and expert SAC policies here (.zip)")
    progress_bar: bool = arg(True, "show progress bars")


PRESETS: dict[str, dict[str, Any]] = {
    "small": {},
    # D4RL's sizes; hours of CPU time per robot.
    "full": {
        "sac_steps": 1_000_000,
        "learning_starts": 10_000,
        "checkpoint_every": 10_000,
        "size": 1_000_000,
        "random_size": 1_000_000,
        "ref_episodes": 100,
    },
    # For tests: seconds. Its SAC trains 400 steps: its "expert" is no expert (it scores about
    # as a random policy), so its datasets give no normalized score.
    "tiny": {
        "sac_steps": 400,
        "learning_starts": 200,
        "checkpoint_every": 200,
        "eval_episodes": 1,
        "size": 400,
        "random_size": 400,
        "max_episode_steps": 100,
        "ref_episodes": 2,
        "random_ref_episodes": 3,
        "progress_bar": False,
    },
}


def warn_if_no_expert(env_id: str, random_return: float, expert_return: float | None) -> None:
    """One line when the "expert" scores no better than a random policy (too few SAC steps,
    as in the tiny preset): scores normalized against it would run backwards, and pbrl gives
    none for its datasets (:meth:`pbrl.data.offline.OfflineDataset.normalized_score`)."""
    if expert_return is not None and expert_return <= random_return:
        print(
            f"[{env_id}] warning: the expert policy (return {expert_return:.1f}) is no better "
            f"than random ({random_return:.1f}): no normalized scores for these datasets; "
            "raise --sac-steps for a real expert",
            flush=True,
        )


def dataset_id(cfg: BuildConfig, env: str, kind: str) -> str:
    short = env.split("-")[0].split("/")[-1].lower()
    return f"{cfg.namespace}/{short}/{kind}-v{cfg.version}"


# -- recording -----------------------------------------------------------------------------


class EpisodeRecorder(gym.Wrapper):
    """Records every transition with the simulator state, split into :class:`Episode`\\ s."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.episodes: list[Episode] = []
        self.total_steps = 0
        self._new()

    def _new(self) -> None:
        self._obs: list[np.ndarray] = []
        self._act: list[np.ndarray] = []
        self._rew: list[float] = []
        self._qpos: list[np.ndarray] = []
        self._qvel: list[np.ndarray] = []
        self._factors: list[dict[str, float]] = []  # info["reward_<name>"] of each step

    def _state(self) -> None:
        data = self.env.unwrapped.data  # type: ignore[attr-defined]
        self._qpos.append(data.qpos.copy())
        self._qvel.append(data.qvel.copy())

    def reset(self, **kwargs: Any):  # type: ignore[no-untyped-def]
        if self._act:  # reset before the episode ended: it was cut off
            self._close(terminated=False)
        self._new()
        obs, info = self.env.reset(**kwargs)
        self._obs.append(np.asarray(obs).copy())
        self._state()
        return obs, info

    def step(self, action):  # type: ignore[no-untyped-def]
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._act.append(np.asarray(action, dtype=np.float32).copy())
        self._rew.append(float(reward))
        self._factors.append({k: float(v) for k, v in info.items() if k.startswith("reward_")})
        self._obs.append(np.asarray(obs).copy())
        self._state()
        self.total_steps += 1
        if terminated or truncated:
            self._close(bool(terminated))
        return obs, reward, terminated, truncated, info

    def _close(self, terminated: bool) -> None:
        n = len(self._act)
        term = np.zeros(n, bool)
        trunc = np.zeros(n, bool)
        (term if terminated else trunc)[-1] = True
        names = tuple(sorted(self._factors[0]))
        factors = np.array([[f[k] for k in names] for f in self._factors]) if names else None
        self.episodes.append(
            Episode(
                np.stack(self._obs),
                np.stack(self._act),
                np.asarray(self._rew),
                term,
                trunc,
                np.stack(self._qpos),
                np.stack(self._qvel),
                factors,
                names,
            )
        )
        self._new()

    def steps_until(self, t: int) -> list[Episode]:
        """The first ``t`` recorded transitions; an episode cut at ``t`` ends in a timeout."""
        out, used = [], 0
        current = []
        if self._act:  # the episode in progress
            n = len(self._act)
            current = [
                Episode(
                    np.stack(self._obs),
                    np.stack(self._act),
                    np.asarray(self._rew),
                    np.zeros(n, bool),
                    np.eye(n, dtype=bool)[-1],
                    np.stack(self._qpos),
                    np.stack(self._qvel),
                )
            ]
        for ep in self.episodes + current:
            if used + len(ep) <= t:
                out.append(ep)
                used += len(ep)
                continue
            k = t - used
            if k > 0:
                trunc = np.zeros(k, bool)
                trunc[-1] = True
                out.append(
                    Episode(
                        ep.observations[: k + 1],
                        ep.actions[:k],
                        ep.rewards[:k],
                        np.zeros(k, bool),
                        trunc,
                        ep.qpos[: k + 1],  # type: ignore[index]
                        ep.qvel[: k + 1],
                    )
                )  # type: ignore[index]
            break
        return out


def rollout(
    env_id: str,
    policy: Any,
    n_steps: int,
    seed: int,
    max_episode_steps: int,
    desc: str = "",
    progress: bool = True,
) -> list[Episode]:
    """``n_steps`` transitions of ``policy`` (None = uniform random); the last episode is cut."""
    from tqdm import tqdm

    env = EpisodeRecorder(gym.make(env_id, max_episode_steps=max_episode_steps))
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    ep = 0
    for _ in tqdm(range(n_steps), desc=desc, disable=not progress, mininterval=5):
        act = env.action_space.sample() if policy is None else policy(obs)
        obs, _, terminated, truncated, _ = env.step(act)
        if terminated or truncated:
            ep += 1
            obs, _ = env.reset(seed=seed + ep)
    if env._act:
        env._close(terminated=False)  # the cut-off episode: a timeout
    env.close()
    return env.episodes


def episode_returns(
    env_id: str, policy: Any, n: int, seed: int, max_episode_steps: int
) -> list[float]:
    env = gym.make(env_id, max_episode_steps=max_episode_steps)
    env.action_space.seed(seed)
    out = []
    for i in range(n):
        obs, _ = env.reset(seed=seed + i)
        done, ret = False, 0.0
        while not done:
            obs, r, term, trunc, _ = env.step(
                env.action_space.sample() if policy is None else policy(obs)
            )
            ret, done = ret + float(r), term or trunc
        out.append(ret)
    env.close()
    return out


# -- the behavior policy -------------------------------------------------------------------


def train_sac(cfg: BuildConfig, env_id: str) -> tuple[Any, EpisodeRecorder, list[dict[str, Any]]]:
    """SAC on the true reward; checkpoints (actor weights and score) every ``checkpoint_every``."""
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback

    recorder = EpisodeRecorder(gym.make(env_id, max_episode_steps=cfg.max_episode_steps))
    model = SAC(
        "MlpPolicy",
        recorder,
        seed=cfg.seed,
        device=cfg.device,
        verbose=0,
        learning_starts=cfg.learning_starts,
        buffer_size=max(cfg.sac_steps, 1),
    )
    checkpoints: list[dict[str, Any]] = []

    def score(i: int) -> float:
        return float(
            np.mean(
                episode_returns(
                    env_id,
                    stochastic(model),
                    cfg.eval_episodes,
                    cfg.seed + 1000 * (i + 1),
                    cfg.max_episode_steps,
                )
            )
        )

    class Checkpoints(BaseCallback):
        def _on_step(self) -> bool:
            if (
                self.num_timesteps % cfg.checkpoint_every == 0
                or self.num_timesteps == cfg.sac_steps
            ):
                ret = score(len(checkpoints))
                checkpoints.append(
                    {
                        "step": self.num_timesteps,
                        "return": ret,
                        "actor": copy.deepcopy(model.policy.actor.state_dict()),
                    }
                )
                print(f"[{env_id}] SAC step {self.num_timesteps}: return {ret:.1f}", flush=True)
            return True

    model.learn(cfg.sac_steps, callback=Checkpoints(), progress_bar=cfg.progress_bar)
    return model, recorder, checkpoints


def stochastic(model: Any) -> Any:
    def act(obs: np.ndarray) -> np.ndarray:
        return model.predict(obs, deterministic=False)[0]

    return act


def choose_medium(
    checkpoints: list[dict[str, Any]], random_return: float, fraction: float, expert: float
) -> dict[str, Any]:
    """The first checkpoint at least ``fraction`` of the way from the random to the expert return."""
    target = random_return + fraction * (expert - random_return)
    for c in checkpoints:
        if c["return"] >= target:
            return c
    return min(checkpoints, key=lambda c: abs(c["return"] - target))


# -- main ----------------------------------------------------------------------------------


def build(cfg: BuildConfig) -> dict[str, str]:
    """Build every requested dataset; returns ``{dataset_id: path}``."""
    torch.set_num_threads(cfg.threads)
    unknown = sorted(set(cfg.kinds) - set(KINDS))
    if unknown:
        raise SystemExit(f"make_dataset: unknown kind(s) {unknown}: choose from {', '.join(KINDS)}")
    written: dict[str, str] = {}
    for env_name in cfg.env:
        env_id = ENV_IDS.get(env_name.lower(), env_name)
        if env_id not in gym.registry:
            raise SystemExit(
                f"make_dataset: unknown env {env_name!r}: use one of "
                f"{', '.join(ENV_IDS)} or a registered gymnasium id"
            )
        written.update(build_env(cfg, env_id))
    return written


def goal_episodes(cfg: BuildConfig, env_id: str) -> list[Episode]:
    """The *goals* behaviour: ``cfg.size`` transitions of episodes that head for one goal or
    the other (after a random prefix) with a noisy controller, or explore at random."""
    from pbrl.envs.twogoal import GOALS, goal_seeking_action

    env = EpisodeRecorder(gym.make(env_id))
    rng = np.random.default_rng(cfg.seed)
    goals = list(GOALS.values())
    steps, ep = 0, 0
    while steps < cfg.size:
        obs, _ = env.reset(seed=cfg.seed + ep)
        u = rng.random()
        goal = None if u < 0.2 else goals[int(u >= 0.6)]
        prefix = int(rng.integers(0, 16))
        done, t = False, 0
        while not done and steps < cfg.size:
            act = goal_seeking_action(obs, None if t < prefix else goal, rng)
            obs, _, term, trunc, _ = env.step(act)
            done, t, steps = term or trunc, t + 1, steps + 1
        ep += 1
    if env._act:
        env._close(terminated=False)  # the cut-off episode: a timeout
    env.close()
    return env.episodes


def build_env(cfg: BuildConfig, env_id: str) -> dict[str, str]:
    t0 = time.time()
    if "goals" in cfg.kinds:
        if env_id not in GOAL_ENVS or len(cfg.kinds) > 1:
            raise SystemExit(
                f"make_dataset: --kinds goals is the scripted two-goal behaviour of "
                f"{', '.join(GOAL_ENVS)} alone (use --env twogoal --kinds goals)"
            )
        return write_goals(cfg, env_id, t0)
    rand_ret = float(
        np.mean(
            episode_returns(
                env_id, None, cfg.random_ref_episodes, cfg.seed + 7, cfg.max_episode_steps
            )
        )
    )
    info: dict[str, Any] = {
        "builder": "scripts/make_dataset.py",
        "behavior": "SB3 SAC",
        "config": dataclasses.asdict(cfg),
        "random_return": rand_ret,
    }
    datasets: dict[str, list[Episode]] = {}
    expert_ret = None
    if set(cfg.kinds) - {"random"}:
        model, recorder, ckpts = train_sac(cfg, env_id)
        if cfg.expert_checkpoint not in ("final", "best"):
            raise SystemExit("make_dataset: --expert-checkpoint must be final or best")
        expert = (
            max(ckpts, key=lambda c: c["return"]) if cfg.expert_checkpoint == "best" else ckpts[-1]
        )
        model.policy.actor.load_state_dict(expert["actor"])
        medium = choose_medium(ckpts, rand_ret, cfg.medium_fraction, expert["return"])
        expert_actor = copy.deepcopy(model.policy.actor.state_dict())
        expert_ret = float(
            np.mean(
                episode_returns(
                    env_id,
                    stochastic(model),
                    cfg.ref_episodes,
                    cfg.seed + 11,
                    cfg.max_episode_steps,
                )
            )
        )
        info.update(
            expert_return=expert_ret,
            expert_step=expert["step"],
            medium_step=medium["step"],
            medium_checkpoint_return=medium["return"],
            checkpoints=[{"step": c["step"], "return": c["return"]} for c in ckpts],
        )
        print(
            f"[{env_id}] random {rand_ret:.1f}, expert {expert_ret:.1f}, medium = step "
            f"{medium['step']} (return {medium['return']:.1f})",
            flush=True,
        )
        if cfg.policy_dir:
            Path(cfg.policy_dir).mkdir(parents=True, exist_ok=True)
            short = env_id.split("-")[0].lower()
            model.save(Path(cfg.policy_dir) / f"{short}_expert.zip")
        if "expert" in cfg.kinds or "medium-expert" in cfg.kinds:
            datasets["expert"] = rollout(
                env_id,
                stochastic(model),
                cfg.size,
                cfg.seed + 101,
                cfg.max_episode_steps,
                f"{env_id} expert",
                cfg.progress_bar,
            )
        if "medium-replay" in cfg.kinds:
            datasets["medium-replay"] = recorder.steps_until(medium["step"])
        if "medium" in cfg.kinds or "medium-expert" in cfg.kinds:
            model.policy.actor.load_state_dict(medium["actor"])
            if cfg.policy_dir:
                model.save(Path(cfg.policy_dir) / f"{env_id.split('-')[0].lower()}_medium.zip")
            datasets["medium"] = rollout(
                env_id,
                stochastic(model),
                cfg.size,
                cfg.seed + 202,
                cfg.max_episode_steps,
                f"{env_id} medium",
                cfg.progress_bar,
            )
            model.policy.actor.load_state_dict(expert_actor)
        if "medium-expert" in cfg.kinds:
            datasets["medium-expert"] = datasets["medium"] + datasets["expert"]
    if "random" in cfg.kinds:
        datasets["random"] = rollout(
            env_id,
            None,
            cfg.random_size,
            cfg.seed + 303,
            cfg.max_episode_steps,
            f"{env_id} random",
            cfg.progress_bar,
        )

    written = {}
    d4rl = d4rl_reference(env_id)
    warn_if_no_expert(env_id, rand_ret, expert_ret)
    for kind in cfg.kinds:
        episodes = datasets[kind]
        did = dataset_id(cfg, env_id, kind)
        rets = [e.ret for e in episodes]
        meta = {
            **info,
            "kind": kind,
            "episodes": len(episodes),
            "transitions": int(sum(len(e) for e in episodes)),
            "terminals": int(sum(e.terminations[-1] for e in episodes)),
            "episode_return_mean": float(np.mean(rets)),
        }
        path = save_minari(
            did,
            episodes,
            env_id,
            ref_min_score=rand_ret,
            ref_max_score=expert_ret if expert_ret is not None else None,
            metadata=meta,
            algorithm_name="SB3 SAC" if kind != "random" else "uniform random",
            description=f"D4RL-style {kind} dataset on {env_id} built by pbrl "
            f"(scripts/make_dataset.py, SAC {cfg.sac_steps} steps)",
            overwrite=cfg.overwrite,
        )
        written[did] = str(path)
        d4 = (
            ""
            if d4rl is None
            else f", D4RL-normalized {100 * (np.mean(rets) - d4rl[0]) / (d4rl[1] - d4rl[0]):.1f}"
        )
        print(
            f"[{env_id}] wrote {did}: {meta['transitions']} transitions, {len(episodes)} episodes, "
            f"mean episode return {np.mean(rets):.1f}{d4}",
            flush=True,
        )
    print(f"[{env_id}] done in {time.time() - t0:.0f} s; store: {minari_root()}", flush=True)
    return written


def write_goals(cfg: BuildConfig, env_id: str, t0: float) -> dict[str, str]:
    episodes = goal_episodes(cfg, env_id)
    did = dataset_id(cfg, env_id, "goals")
    rets = [e.ret for e in episodes]
    meta = {
        "builder": "scripts/make_dataset.py",
        "behavior": "scripted goal seeking (40% goal a, 40% goal b, 20% random)",
        "config": dataclasses.asdict(cfg),
        "kind": "goals",
        "episodes": len(episodes),
        "transitions": int(sum(len(e) for e in episodes)),
        "episode_return_mean": float(np.mean(rets)),
    }
    path = save_minari(
        did,
        episodes,
        env_id,
        metadata=meta,
        algorithm_name="scripted goal seeking",
        description=f"two-goal dataset on {env_id} built by pbrl (scripts/make_dataset.py)",
        overwrite=cfg.overwrite,
    )
    print(
        f"[{env_id}] wrote {did}: {meta['transitions']} transitions, {len(episodes)} episodes "
        f"in {time.time() - t0:.0f} s; store: {minari_root()}",
        flush=True,
    )
    return {did: str(path)}


def parse_args(argv: list[str] | None = None) -> BuildConfig:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="small",
        help="size preset; explicit options override it",
    )
    for f in dataclasses.fields(BuildConfig):
        name = "--" + f.name.replace("_", "-")
        if f.type in ("list[str]",):
            parser.add_argument(name, nargs="+", default=None, help=f.metadata["help"])
        elif f.type == "bool":
            parser.add_argument(
                name, action=argparse.BooleanOptionalAction, default=None, help=f.metadata["help"]
            )
        else:
            caster = {"int": int, "float": float, "str": str}[str(f.type)]
            parser.add_argument(name, type=caster, default=None, help=f.metadata["help"])
    ns = vars(parser.parse_args(argv))
    values = {**PRESETS[ns.pop("preset")], **{k: v for k, v in ns.items() if v is not None}}
    return BuildConfig(**values)


def main(argv: list[str] | None = None) -> None:
    cfg = parse_args(argv)
    written = build(cfg)
    print(json.dumps(written, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("MUJOCO_GL", "egl")
    main()
