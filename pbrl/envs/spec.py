"""The environment as every part of a run sees it, made once from the ``env`` config group.

Rewards on rendered frames need the env id, its ``gym.make`` arguments and the camera;
teachers need the reward factors; recipes need the sizes and the episode length. A run builds
one :class:`EnvSpec` (one probe step of the env) and hands it to each part, so no config group
interpolates another group's env details.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pbrl.errors import ConfigError

CAMERA_KEYS = ("distance", "elevation", "azimuth", "lookat")


def check_camera(camera: Mapping[str, Any] | None, where: str = "env.camera") -> dict[str, object]:
    """Free-camera overrides as a plain dict; unknown keys or a malformed ``lookat`` raise
    ``ValueError`` naming them."""
    out = dict(camera or {})
    unknown = sorted(set(out) - set(CAMERA_KEYS))
    if unknown:
        raise ValueError(
            f"{where}: unknown key(s) {', '.join(unknown)}: use {', '.join(CAMERA_KEYS)}"
        )
    if "lookat" in out:
        lookat = [float(v) for v in out["lookat"]]
        if len(lookat) != 3:
            raise ValueError(f"{where}.lookat={out['lookat']} needs 3 numbers [x, y, z]")
        out["lookat"] = lookat
    for key in ("distance", "elevation", "azimuth"):
        if key in out:
            out[key] = float(out[key])
    return out


def _json(values: Mapping[str, object] | None) -> str:
    return json.dumps(dict(values or {}), sort_keys=True, default=str)


def time_limit(env_id: str, kwargs: Mapping[str, Any] | None = None) -> int | None:
    """The env's time limit in steps (``max_episode_steps``, the kwargs' over the registry's),
    or None; ``env_id`` must be registered."""
    import gymnasium as gym

    import pbrl.envs  # noqa: F401  (registers pbrl/ environments)

    limit = (kwargs or {}).get("max_episode_steps", gym.spec(env_id).max_episode_steps)
    return None if limit is None else int(limit)


_probed: dict[tuple[str, str, str], EnvSpec] = {}  # EnvSpec.of's, by its arguments


@dataclass(frozen=True)
class EnvSpec:
    """What rewards, teachers and recipes know of the run's env. ``EnvSpec(id, kwargs,
    camera)`` alone (no probe) is enough for a reward or teacher that renders states; a run
    makes the full one with :meth:`of`."""

    id: str
    kwargs: dict[str, Any] = field(default_factory=dict)  # gym.make arguments
    camera: dict[str, object] = field(default_factory=dict)  # free-camera overrides for frames
    obs_dim: int = 0
    act_dim: int = 0
    factor_names: tuple[str, ...] = ()  # reward factors in ``info`` (``reward_*``)
    state_dims: tuple[int, int] | None = None  # (nq, nv) of a MuJoCo env, else None
    episode_limit: int | None = None  # the time limit in steps, None without one

    def __post_init__(self) -> None:
        if not self.id:
            raise ConfigError("EnvSpec needs an env id (env.id)")
        try:
            camera = check_camera(self.camera)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        object.__setattr__(self, "camera", camera)
        object.__setattr__(self, "kwargs", dict(self.kwargs or {}))

    @property
    def view(self) -> dict[str, object]:
        """What a renderer needs (``id``, ``kwargs``, ``camera``), as saved with a model."""
        return {"id": self.id, "kwargs": dict(self.kwargs), "camera": dict(self.camera)}

    @classmethod
    def of(
        cls,
        env_id: str,
        kwargs: Mapping[str, Any] | None = None,
        camera: Mapping[str, object] | None = None,
    ) -> EnvSpec:
        """Probe ``env_id`` (one step) for its sizes, factors, state and time limit; once per
        process for the same arguments (the teacher's spec is the run's)."""
        import gymnasium as gym

        import pbrl.envs  # noqa: F401  (registers pbrl/ environments)
        from pbrl.sim.probe import probe_env

        key = (env_id, _json(kwargs), _json(camera))
        if key in _probed:
            return _probed[key]
        kw = dict(kwargs or {})
        if env_id not in gym.registry:
            raise ConfigError(f"unknown env id {env_id!r} (env.id): see conf/env for choices")
        info = probe_env(env_id, kw)
        spec = _probed[key] = cls(
            id=env_id,
            kwargs=kw,
            camera=dict(camera or {}),
            obs_dim=info.obs_dim,
            act_dim=info.act_dim,
            factor_names=info.factor_names,
            state_dims=info.state_dims,
            episode_limit=time_limit(env_id, kw),
        )
        return spec

    @classmethod
    def from_config(cls, env: Mapping[str, Any]) -> EnvSpec:
        """From the ``env`` group as plain values (``id``, ``kwargs``, optional ``camera``)."""
        return cls.of(str(env["id"]), env.get("kwargs") or {}, env.get("camera") or {})


def saved_env(blob: Mapping[str, Any]) -> tuple[EnvSpec | None, dict[str, Any]]:
    """The env a saved model rendered (its ``env`` entry: id, kwargs, camera; None without
    one) and its ``config`` without env facts. Files saved while the config still held them
    (``env_id``, ``env_kwargs``, ``camera``) read the same."""
    config = dict(blob["config"])
    old = {k: config.pop(k) for k in ("env_id", "env_kwargs", "camera") if k in config}
    view = blob.get("env") or {
        "id": old.get("env_id") or "",
        "kwargs": old.get("env_kwargs") or {},
        "camera": old.get("camera") or {},
    }
    if not view["id"]:
        return None, config
    return EnvSpec(str(view["id"]), dict(view["kwargs"]), dict(view["camera"])), config
