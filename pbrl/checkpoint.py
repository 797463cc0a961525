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
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from stable_baselines3 import SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecNormalize

from pbrl.data import PreferenceDataset
from pbrl.data.pool import TrajectoryPool
from pbrl.errors import ConfigError, fault_point
from pbrl.rewards.base import RewardModel

LABELS = "preferences.npz"
STATE = "state.json"
PROGRESS = "progress.json"  # an offline run's step, written beside its trainer.pt


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
        state: Mapping[str, object],
    ) -> None:
        """An SB3 agent's checkpoint (its replay buffer and VecNormalize statistics included),
        the pool and the reward model, with the generators' states in ``state.json``."""

        def write(folder: Path) -> None:
            model.save(folder / "model.zip")
            fault_point("checkpoint_write")  # tests: a kill while the checkpoint is half written
            if isinstance(model, SAC):
                model.save_replay_buffer(folder / "replay_buffer.pkl")
            venv = model.get_env()
            if isinstance(venv, VecNormalize):
                venv.save(str(folder / "vecnormalize.pkl"))
            if pool is not None:
                pool.save(folder / "pool.npz")
            if reward_model is not None:
                reward_model.save(folder / "reward_model.pt")

        self.save_with(write, state)

    def save_with(self, write: Callable[[Path], None], state: Mapping[str, object]) -> None:
        """A checkpoint whose files ``write(folder)`` puts in ``folder``, with ``state`` (and
        torch's generator state) in ``state.json``; the labels file is carried over."""
        if self.new.exists():
            shutil.rmtree(self.new)
        self.new.mkdir(parents=True)
        write(self.new)
        if self.labels.exists():
            shutil.copy2(self.labels, self.new / LABELS)
        files = {f.name: _fingerprint(f) for f in sorted(self.new.iterdir()) if f.name != LABELS}
        blob = {**state, "torch_rng": torch.get_rng_state().tolist(), "files": files}
        (self.new / STATE).write_text(json.dumps(blob))
        fault_point("checkpoint_switch")  # tests: a kill between the two renames
        if self.dir.exists():
            self.dir.rename(self.old)
        fault_point("checkpoint_renamed")
        self.new.rename(self.dir)
        if self.old.exists():
            shutil.rmtree(self.old)

    def verify(self) -> None:
        """A :class:`ConfigError` naming the first damaged file: every file must match the
        size and CRC recorded when it was written; the labels file must load."""
        try:
            state = json.loads((self.dir / STATE).read_text())
            files = state["files"]
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"{self.dir / STATE} is damaged ({_why(exc)}): {DAMAGED}") from None
        for name, expected in files.items():
            path = self.dir / name
            if not path.exists() or _fingerprint(path) != list(expected):
                raise ConfigError(f"{path} is truncated or corrupt: {DAMAGED}")
        if self.labels.exists():
            try:
                PreferenceDataset.load_with_meta(self.labels)
            except (OSError, ValueError, KeyError) as exc:
                raise ConfigError(
                    f"{self.labels} is damaged ({_why(exc)}): this run cannot be resumed; "
                    "start a new run"
                ) from None

    def progress(self) -> tuple[int, int] | None:
        """``(step, labels)`` a resume continues from, read without loading anything heavy:
        the checkpoint's step and the trainable labels in the newest labels file (None when
        there is neither)."""
        step, labels, found = 0, 0, False
        if self.complete():
            state = json.loads((self.dir / STATE).read_text())
            step, found = int(state.get("num_timesteps", state.get("step", 0))), True
        elif (self.dir / PROGRESS).exists():  # an offline run's trainer checkpoint
            step, found = int(json.loads((self.dir / PROGRESS).read_text())["step"]), True
        for path in (self.labels, self.run_dir / LABELS):
            if path.exists():
                labels, found = len(PreferenceDataset.load(path).trainable), True
                break
        return (step, labels) if found else None

    def read_state(self) -> dict[str, Any]:  # JSON values, as saved
        self.verify()
        state: dict[str, Any] = json.loads((self.dir / STATE).read_text())
        torch.set_rng_state(torch.tensor(state.pop("torch_rng"), dtype=torch.uint8))
        state.pop("files")
        return state


DAMAGED = (
    "this run cannot be resumed; start a new run (the labels in checkpoint/preferences.npz "
    "stay usable, e.g. by an offline run)"
)


def _why(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__


def _fingerprint(path: Path) -> list[int]:
    """``[size, crc32]`` of a file, read in 1 MiB blocks."""
    crc = 0
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            crc = zlib.crc32(block, crc)
    return [path.stat().st_size, crc]
