"""The one user-facing error type, and building typed settings from config values.

Every problem a user can fix (a bad setting, a missing dataset, a malformed label file) is a
:class:`ConfigError` raised where the input enters; each entry point (``pbrl.train``,
``pbrl.label``, ``python -m pbrl.regret``) catches it once and prints it as one line.
"""

from __future__ import annotations

import difflib
import os
import signal
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from typing import TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A user-facing problem with settings or input: the message names it and the fix."""


def closest(name: str, choices: list[str] | tuple[str, ...] | set[str]) -> str:
    """`` (did you mean X?)`` for the nearest valid name, or an empty string."""
    match = closest_name(name, choices)
    return f" (did you mean {match}?)" if match else ""


def closest_name(name: str, choices: list[str] | tuple[str, ...] | set[str]) -> str | None:
    """The valid name nearest to ``name``, or None when none is near."""
    match = difflib.get_close_matches(name, sorted(choices), n=1, cutoff=0.6)
    return match[0] if match else None


# an optional extra -> the command that installs it
INSTALL = {
    "gui": "pip install -e '.[gui]'",
    "sweep": "pip install -e '.[sweep]'",
    "ray": "pip install -e '.[ray]'",
    "offline": "pip install -e '.[offline]'",
    "vlm": "pip install -e '.[vlm]'",
    "clip": "pip install -e '.[clip]'",
    "warp": "pip install mujoco-warp",
}


def require_extra(extra: str, modules: tuple[str, ...], what: str) -> None:
    """A :class:`ConfigError` naming the install command when one of ``modules`` (the
    optional ``extra``'s packages) cannot be imported; ``what`` is the feature that needs it."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            package = "MuJoCo Warp" if extra == "warp" else f"the {extra} extra"
            raise ConfigError(
                f"{what} needs {package} ({name} is not installed): {INSTALL[extra]}"
            ) from None


def make_config(cls: type[T], values: Mapping[str, object] | None, where: str) -> T:
    """``cls(**values)`` for a settings dataclass; an unknown key is a :class:`ConfigError`
    that names it, the closest valid key and all valid keys (``where`` is the config path)."""
    assert is_dataclass(cls)
    names = {f.name for f in fields(cls)}
    values = dict(values or {})
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(
            f"unknown {where} key(s) {', '.join(unknown)}{closest(unknown[0], names)}: "
            f"{cls.__name__} takes {', '.join(sorted(names))}"
        )
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def fault_point(name: str) -> None:
    """Fault injection for tests: ``PBRL_FAULT=<name>[:<n>]`` kills this process (SIGKILL) the
    ``n``-th time (default 1st) execution reaches the named point. A no-op otherwise."""
    spec = os.environ.get("PBRL_FAULT")
    if not spec:
        return
    target, _, nth = spec.partition(":")
    if target != name:
        return
    _FAULT_COUNTS[name] = _FAULT_COUNTS.get(name, 0) + 1
    if _FAULT_COUNTS[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


_FAULT_COUNTS: dict[str, int] = {}
