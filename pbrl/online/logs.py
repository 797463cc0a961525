"""SB3's TensorBoard and CSV outputs, made to continue a resumed run instead of restarting it.

A run resumed from a checkpoint at step ``S`` re-runs the steps after ``S`` that the killed
process had already logged: TensorBoard events from ``S`` on are purged (``purge_step``) and
CSV rows past ``S`` dropped, so neither holds a step twice; earlier rows are kept.
"""

from __future__ import annotations

import csv
from pathlib import Path

from stable_baselines3.common.logger import CSVOutputFormat, Logger, TensorBoardOutputFormat
from torch.utils.tensorboard import SummaryWriter

STEP = "time/total_timesteps"


class ContinuedTensorBoard(TensorBoardOutputFormat):
    def __init__(self, folder: str, purge_step: int | None = None) -> None:
        self.writer = SummaryWriter(log_dir=folder, purge_step=purge_step)
        self._is_closed = False


class ContinuedCSV(CSVOutputFormat):
    def __init__(self, filename: str, keep_until: int | None = None) -> None:
        path = Path(filename)
        rows: list[dict[str, str]] = []
        keys: list[str] = []
        if keep_until is not None and path.exists():
            with path.open(newline="") as fh:
                reader = csv.DictReader(fh)
                keys = list(reader.fieldnames or [])
                for row in reader:
                    step = row.get(STEP) or ""
                    if not step or float(step) <= keep_until:
                        rows.append(row)
        super().__init__(filename)  # truncates the file: the kept rows are written back
        self.keys = keys
        if keys:
            writer = csv.DictWriter(self.file, fieldnames=keys, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
            self.file.flush()


def run_logger(folder: Path, resume_step: int | None = None) -> Logger:
    """TensorBoard + ``progress.csv`` in ``folder``; ``resume_step``: continue a run."""
    folder.mkdir(parents=True, exist_ok=True)
    return Logger(
        str(folder),
        [
            ContinuedTensorBoard(str(folder), resume_step),
            ContinuedCSV(str(folder / "progress.csv"), resume_step),
        ],
    )
