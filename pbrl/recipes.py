"""Which recipe runs a config, and the one way every run starts.

``algo.kind`` picks the recipe: ``online`` (PEBBLE, PrefPPO and their true-reward baselines),
``episodic`` (feedback first, then PPO on a frozen episode reward: RAPL) or ``offline`` (IQL,
CPL, OPPO, DTR, BC on a fixed dataset). :func:`run` checks the config once, announces the run,
builds its :class:`~pbrl.run.RunContext` once and hands both to the recipe; no recipe calls
another.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import Any

from pbrl.errors import ConfigError
from pbrl.run import Recipe, start_run

# algo.kind -> the module whose RECIPE runs it (imported on use: each pulls its own stack)
RECIPES = {
    "online": "pbrl.online.trainer",
    "episodic": "pbrl.online.episodic",
    "offline": "pbrl.offline.runner",
}


def recipe_for(cfg: Any) -> Recipe:
    kind = str(cfg.algo.get("kind", "online"))
    if kind not in RECIPES:
        raise ConfigError(f"algo.kind={kind!r}: choose one of {', '.join(RECIPES)}")
    recipe: Recipe = import_module(RECIPES[kind]).RECIPE
    return recipe


def check(cfg: Any) -> tuple[Recipe, Any]:
    """The recipe of ``cfg`` and its typed settings (every check that needs no simulation)."""
    recipe = recipe_for(cfg)
    return recipe, recipe.check(cfg)


def run(cfg: Any, run_dir: str | Path, checked: tuple[Recipe, Any] | None = None) -> dict[str, Any]:
    """Run ``cfg`` into ``run_dir`` (a fresh directory, or one to resume): its summary.
    (``python -m pbrl.train`` announces the run and checks the config before this.)"""
    run_dir = Path(run_dir)
    recipe, settings = checked if checked is not None else check(cfg)
    ctx = start_run(cfg, run_dir, recipe.asks_teacher(cfg, settings))
    return recipe.run(ctx, settings)


__all__ = ["RECIPES", "check", "recipe_for", "run"]
