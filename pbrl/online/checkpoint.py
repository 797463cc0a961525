"""A run's ``checkpoint/`` directory, replaced whole and atomically.

Each checkpoint is written into ``checkpoint.new/`` and ``state.json`` goes in last, marking
it complete; then the old directory is renamed away, the new one into place, and the old one
deleted. A kill at any moment leaves either the previous or the new checkpoint complete, and
:meth:`Checkpoint.recover` finishes (or undoes) an interrupted switch before a resume reads it.

The labels file (``preferences.npz``: labels plus the feedback counters) is rewritten after
every feedback round, between checkpoints, so it is usually newer than the rest; each new
checkpoint carries the latest copy over.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from stable_baselines3 import SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecNormalize

from pbrl.data.pool import TrajectoryPool
from pbrl.rewards.base import RewardModel

LABELS = "preferences.npz"
STATE = "state.json"


class Checkpoint:
    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / "checkpoint"
        self.new = self.run_dir / "checkpoint.new"
        self.old = self.run_dir / "checkpoint.old"

    @property
    def labels(self) -> Path:
        return self.dir / LABELS

    def complete(self, folder: Path | None = None) -> bool:
        return ((folder or self.dir) / STATE).exists()

    def recover(self) -> None:
        """Finish a switch a kill interrupted: keep the newest complete directory."""
        if not self.dir.exists():
            for candidate in (self.new, self.old):
                if self.complete(candidate):
                    candidate.rename(self.dir)
                    break
        for leftover in (self.new, self.old):
            if leftover.exists():
                shutil.rmtree(leftover)

    def save(
        self,
        model: BaseAlgorithm,
        pool: TrajectoryPool | None,
        reward_model: RewardModel | None,
        state: dict[str, Any],
    ) -> None:
        """Everything a resumed run needs, with the generators' states in ``state.json``."""
        if self.new.exists():
            shutil.rmtree(self.new)
        self.new.mkdir(parents=True)
        model.save(self.new / "model.zip")
        if isinstance(model, SAC):
            model.save_replay_buffer(self.new / "replay_buffer.pkl")
        venv = model.get_env()
        if isinstance(venv, VecNormalize):
            venv.save(str(self.new / "vecnormalize.pkl"))
        if pool is not None:
            pool.save(self.new / "pool.npz")
        if reward_model is not None:
            reward_model.save(self.new / "reward_model.pt")
        if self.labels.exists():
            shutil.copy2(self.labels, self.new / LABELS)
        blob = {**state, "torch_rng": torch.get_rng_state().tolist()}
        (self.new / STATE).write_text(json.dumps(blob))
        if self.dir.exists():
            self.dir.rename(self.old)
        self.new.rename(self.dir)
        if self.old.exists():
            shutil.rmtree(self.old)

    def read_state(self) -> dict[str, Any]:
        state: dict[str, Any] = json.loads((self.dir / STATE).read_text())
        torch.set_rng_state(torch.tensor(state.pop("torch_rng"), dtype=torch.uint8))
        return state
