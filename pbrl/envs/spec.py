"""The environment as every part of a run sees it, made once from the ``env`` config group.

Rewards on rendered frames need the env id, its ``gym.make`` arguments and the camera;
teachers need the reward factors; recipes need the sizes and the episode length. A run builds
one :class:`EnvSpec` (one probe step of the env) and hands it to each part, so no config group
interpolates another group's env details.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pbrl.errors import ConfigError


def time_limit(env_id: str, kwargs: Mapping[str, Any] | None = None) -> int | None:
    """The env's time limit in steps (``max_episode_steps``, the kwargs' over the registry's),
    or None; ``env_id`` must be registered."""
    import gymnasium as gym

    import pbrl.envs  # noqa: F401  (registers pbrl/ environments)

    limit = (kwargs or {}).get("max_episode_steps", gym.spec(env_id).max_episode_steps)
    return None if limit is None else int(limit)


@dataclass(frozen=True)
class EnvSpec:
    id: str
    kwargs: dict[str, Any] = field(default_factory=dict)  # gym.make arguments
    camera: dict[str, Any] = field(default_factory=dict)  # free-camera overrides for frames
    obs_dim: int = 0
    act_dim: int = 0
    factor_names: tuple[str, ...] = ()  # reward factors in ``info`` (``reward_*``)
    state_dims: tuple[int, int] | None = None  # (nq, nv) of a MuJoCo env, else None
    episode_limit: int | None = None  # the time limit in steps, None without one

    @classmethod
    def of(
        cls,
        env_id: str,
        kwargs: Mapping[str, Any] | None = None,
        camera: Mapping[str, Any] | None = None,
    ) -> EnvSpec:
        """Probe ``env_id`` (one step) for its sizes, factors, state and time limit."""
        import gymnasium as gym

        import pbrl.envs  # noqa: F401  (registers pbrl/ environments)
        from pbrl.sim.probe import probe_env

        kw = dict(kwargs or {})
        if env_id not in gym.registry:
            raise ConfigError(f"unknown env id {env_id!r} (env.id): see conf/env for choices")
        info = probe_env(env_id, kw)
        return cls(
            id=env_id,
            kwargs=kw,
            camera=dict(camera or {}),
            obs_dim=info.obs_dim,
            act_dim=info.act_dim,
            factor_names=info.factor_names,
            state_dims=info.state_dims,
            episode_limit=time_limit(env_id, kw),
        )

    @classmethod
    def from_config(cls, env: Mapping[str, Any]) -> EnvSpec:
        """From the ``env`` group as plain values (``id``, ``kwargs``, optional ``camera``)."""
        return cls.of(str(env["id"]), env.get("kwargs") or {}, env.get("camera") or {})
