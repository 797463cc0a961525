"""Where query pairs for people come from, outside a live training run.

* :func:`queries_from_run`: a ``pbrl.train`` run directory. Pairs are sampled uniformly
  from its trajectory pool (``checkpoint/pool.npz``: the most recent ``feedback.pool_size``
  environment steps, simulator state included), cut to ``feedback.segment_length`` steps
  with the same rules as training (windows never cross an episode end). The pool's array
  shapes and metadata come from the file itself; the environment's arguments, the segment
  length and the run name from the run's ``config.yaml``.
* :func:`queries_from_file`: a pbrl preference dataset ``.npz`` (labels are ignored).
* :func:`queries_from_env`: random-policy rollouts of a MuJoCo environment (to try the page).
* :func:`queries_from_dataset`: a local Minari dataset (``scripts/make_dataset.py`` or
  ``minari download``) that recorded the simulator state (``qpos``/``qvel`` in its episode
  ``infos``). Pairs are sampled as offline preference labels are (Uni-RLHF: each segment
  from one episode); the environment's id and arguments come from the dataset.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pbrl.data import PreferenceDataset, Queries
from pbrl.data.pool import TrajectoryPool


class SourceError(ValueError):
    """A run directory or file that cannot provide queries (the message says what to do)."""


def _run_config(run_dir: Path) -> Any:
    from omegaconf import OmegaConf

    path = run_dir / "config.yaml"
    if not path.exists():
        raise SourceError(
            f"{run_dir} has no config.yaml: pass the directory of a pbrl.train run "
            "(it holds config.yaml and checkpoint/)"
        )
    return OmegaConf.load(path)


def load_run_pool(run_dir: str | Path) -> tuple[TrajectoryPool, dict[str, Any]]:
    """The trajectory pool saved by a run, and ``env_id``, ``env_kwargs``, ``segment_length``,
    ``run`` from its config."""
    from omegaconf import OmegaConf

    run_dir = Path(run_dir).expanduser().resolve()
    cfg = _run_config(run_dir)
    pool_path = run_dir / "checkpoint" / "pool.npz"
    if not pool_path.exists():
        raise SourceError(
            f"{pool_path} does not exist: the run has not written a checkpoint yet "
            "(one is written every checkpoint_every steps and at the end), or its "
            "algorithm keeps no trajectory pool (true-reward baselines)"
        )
    kwargs = cfg.env.get("kwargs")
    env_kwargs = (
        OmegaConf.to_container(kwargs, resolve=True) if kwargs is not None else None
    ) or {}
    run = f"{cfg.get('name', 'run')}_{run_dir.name}"
    try:
        pool = TrajectoryPool.from_file(pool_path)
    except (ValueError, OSError, KeyError) as exc:
        raise SourceError(f"{pool_path} cannot be read: {exc}") from None
    if not pool.has_state:
        raise SourceError(f"{pool_path} holds no simulator state: its clips cannot be rendered")
    info = {
        "env_id": str(cfg.env.id),
        "env_kwargs": env_kwargs,
        "run": run,
        "segment_length": int(cfg.feedback.segment_length),
    }
    return pool, info


def queries_from_run(
    run_dir: str | Path, n: int, seed: int = 0, segment_length: int | None = None
) -> tuple[Queries, dict[str, Any]]:
    pool, info = load_run_pool(run_dir)
    length = int(segment_length or info["segment_length"])
    try:
        queries = pool.sample_queries(int(n), length, np.random.default_rng(seed))
    except RuntimeError as exc:
        raise SourceError(str(exc)) from None
    return queries, info


def queries_from_file(path: str | Path) -> tuple[Queries, dict[str, Any]]:
    try:
        data = PreferenceDataset.load(path)
    except (ValueError, FileNotFoundError) as exc:
        raise SourceError(str(exc)) from None
    q = data.queries
    if q.first.qpos is None or q.second.qpos is None:
        raise SourceError(
            f"{path}: its segments carry no simulator state (qpos/qvel), so they "
            "cannot be rendered for people"
        )
    return q, {
        "env_id": q.first.env_id,
        "env_kwargs": {},
        "run": q.first.run,
        "segment_length": q.first.length,
    }


def queries_from_env(
    env_id: str,
    n: int,
    segment_length: int = 50,
    seed: int = 0,
    env_kwargs: dict[str, Any] | None = None,
    steps: int | None = None,
) -> tuple[Queries, dict[str, Any]]:
    """``n`` pairs from random-action rollouts (enough steps for ``2 n`` windows)."""
    import gymnasium as gym

    import pbrl.envs  # noqa: F401  (registers pbrl/ environments)

    env_kwargs = dict(env_kwargs or {})
    try:
        env = gym.make(env_id, **env_kwargs)
    except Exception as exc:
        raise SourceError(f"cannot make environment {env_id!r}: {exc}") from None
    data = getattr(env.unwrapped, "data", None)
    if data is None:
        raise SourceError(f"{env_id} is not a MuJoCo environment: its clips cannot be rendered")
    steps = int(steps or max(4 * n * segment_length, 2000))
    obs_shape, act_shape = env.observation_space.shape or (), env.action_space.shape or ()
    pool = TrajectoryPool(
        1,
        steps,
        int(np.prod(obs_shape)),
        int(np.prod(act_shape)),
        (),
        (len(data.qpos), len(data.qvel)),
        env_id,
        "random",
    )
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    for _ in range(steps):
        qpos, qvel = data.qpos.copy(), data.qvel.copy()
        act = env.action_space.sample()
        next_obs, reward, terminated, truncated, _ = env.step(act)
        pool.add(
            obs[None],
            np.asarray(act)[None],
            np.array([reward]),
            next_obs[None],
            np.array([terminated]),
            np.array([truncated]),
            qpos=qpos[None],
            qvel=qvel[None],
            next_qpos=data.qpos.copy()[None],
            next_qvel=data.qvel.copy()[None],
        )
        obs = env.reset()[0] if terminated or truncated else next_obs
    env.close()
    try:
        queries = pool.sample_queries(int(n), int(segment_length), np.random.default_rng(seed))
    except RuntimeError as exc:
        raise SourceError(str(exc)) from None
    return queries, {
        "env_id": env_id,
        "env_kwargs": env_kwargs,
        "run": "random",
        "segment_length": int(segment_length),
    }


# Arguments the clip renderer sets itself: never taken from a dataset's environment spec.
_RENDER_KWARGS = ("render_mode", "width", "height", "camera_id", "camera_name")


def dataset_env_kwargs(metadata: dict[str, Any]) -> dict[str, Any]:
    """The environment's constructor arguments recorded in a Minari dataset's ``env_spec``."""
    spec = metadata.get("env_spec")
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError:
            spec = None
    kwargs = spec.get("kwargs") if isinstance(spec, dict) else None
    if not isinstance(kwargs, dict):
        return {}
    return {k: v for k, v in kwargs.items() if k not in _RENDER_KWARGS}


def queries_from_dataset(
    dataset_id: str, n: int, segment_length: int = 50, seed: int = 0
) -> tuple[Queries, dict[str, Any]]:
    """``n`` pairs of ``segment_length``-step segments from a local Minari dataset."""
    try:
        from pbrl.data.offline import load_dataset
    except ImportError as exc:  # minari is an optional extra
        raise SourceError(
            f"--from-dataset needs Minari ({exc}): pip install -e '.[offline]'"
        ) from None
    data = load_dataset(dataset_id)  # DatasetNotFoundError says how to build or download it
    if not data.has_state:
        raise SourceError(
            f"dataset {dataset_id} recorded no simulator state (qpos/qvel in its episode "
            "infos), so its clips cannot be rendered: build one with scripts/make_dataset.py, "
            "which records it"
        )
    if not data.env_id:
        raise SourceError(
            f"dataset {dataset_id} names no environment: its clips cannot be rendered"
        )
    queries = data.sample_queries(int(n), int(segment_length), np.random.default_rng(seed))
    return queries, {
        "env_id": data.env_id,
        "env_kwargs": dataset_env_kwargs(data.metadata),
        "run": dataset_id,
        "segment_length": int(segment_length),
    }
