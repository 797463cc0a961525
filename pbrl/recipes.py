"""Which recipe runs a config, and the one way every run starts.

``algo.kind`` picks the recipe: ``online`` (PEBBLE, PrefPPO and their true-reward baselines),
``episodic`` (feedback first, then PPO on a frozen episode reward: RAPL) or ``offline`` (IQL,
CPL, OPPO, DTR, BC on a fixed dataset). :func:`run` checks the config once, announces the run,
builds its :class:`~pbrl.run.RunContext` once and hands both to the recipe; no recipe calls
another.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from pbrl.errors import ConfigError
from pbrl.run import Recipe, build_teacher, check_label_page, start_run, teacher_rng
from pbrl.teachers.base import Teacher

# algo.kind -> the module whose RECIPE runs it (imported on use: each pulls its own stack)
RECIPES = {
    "online": "pbrl.online.trainer",
    "episodic": "pbrl.online.episodic",
    "offline": "pbrl.offline.runner",
}


def recipe_for(cfg: DictConfig) -> Recipe:
    kind = str(cfg.algo.get("kind", "online"))
    if kind not in RECIPES:
        raise ConfigError(f"algo.kind={kind!r}: choose one of {', '.join(RECIPES)}")
    recipe: Recipe = import_module(RECIPES[kind]).RECIPE
    return recipe


@dataclass(frozen=True)
class Checked:
    """A config that passed every check without simulation: its recipe, the recipe's typed
    settings, and the teacher (built once, here, so a bad teacher setting fails first)."""

    recipe: Recipe
    settings: Any
    teacher: Teacher | None


def check(cfg: DictConfig) -> Checked:
    """The recipe of ``cfg``, its typed settings and its teacher (when the run asks one)."""
    recipe = recipe_for(cfg)
    settings = recipe.check(cfg)
    asks = recipe.asks_teacher(cfg, settings)
    teacher = build_teacher(cfg, teacher_rng(int(cfg.seed))) if asks else None
    check_label_page(cfg, teacher)
    return Checked(recipe, settings, teacher)


def run(cfg: DictConfig, run_dir: str | Path, checked: Checked | None = None) -> dict[str, object]:
    """Run ``cfg`` into ``run_dir`` (a fresh directory, or one to resume): its summary.
    (``python -m pbrl.train`` announces the run and checks the config before this.)"""
    run_dir = Path(run_dir)
    checked = checked if checked is not None else check(cfg)
    ctx = start_run(cfg, run_dir, checked.teacher)
    try:
        return checked.recipe.run(ctx, checked.settings)
    finally:
        ctx.close()  # a no-op after a recipe's own close; on an error, stops the page


__all__ = ["RECIPES", "Checked", "check", "recipe_for", "run"]
