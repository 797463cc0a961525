"""How sure a personalized reward (``reward=vpl``) is about each annotator's latent ``z``.

A run with ``reward=vpl`` and ``teacher=human`` announces its fitted reward model in the label
store (meta ``latent_reward``: the saved model's path; :meth:`HumanTeacher.set_reward_model`).
VPL's encoder is amortized: the posterior q(z | an annotator's labels) needs no refit, so the
page can show it after every answer. The spread is the mean over the latent's dimensions of
the posterior's standard deviation: 1.0 is the prior N(0, I) (nothing known), smaller is
surer. Answers whose segments the model cannot read (another env or segment length) give no
spread, and the page shows none.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from pbrl.errors import ConfigError
from pbrl.rewards.base import LatentReward, trainable_pairs
from pbrl.store import LabelStore, StoreError

log = logging.getLogger("pbrl.label")
META_KEY = "latent_reward"


class LatentSpread:
    """Each annotator's posterior spread under the store's announced latent reward model."""

    def __init__(self, store: LabelStore) -> None:
        self.store = store
        self._model: LatentReward | None = None
        self._key: tuple[str, int] | None = None
        self._warned: set[str] = set()

    def model(self) -> LatentReward | None:
        """The announced model, reloaded when its file changes (None: none announced)."""
        path = self.store.meta().get(META_KEY)
        if not path or not Path(path).is_file():
            self._model, self._key = None, None
            return None
        key = (path, Path(path).stat().st_mtime_ns)
        if key != self._key:
            from pbrl.rewards import load_reward_model
            from pbrl.rewards.dispatch import as_latent, has_latent

            loaded = load_reward_model(Path(path), "cpu")
            if not has_latent(loaded):
                self._warn(path, f"{path} holds no latent reward (reward=vpl): no z spread")
                self._model, self._key = None, key
                return None
            self._model, self._key = as_latent(loaded), key
        return self._model

    def _warn(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message)

    def __call__(self, annotator: str | None) -> dict[str, Any] | None:
        """``{"spread": s, "labels": n}`` for ``annotator`` (n: their decided labels), or None
        without an announced latent model or an annotator."""
        if not annotator:
            return None
        model = self.model()
        if model is None:
            return None
        try:
            data = self.store.annotator_labels(annotator)
            pairs = None if data is None else trainable_pairs(data)
            if pairs is None:
                return {"spread": 1.0, "labels": 0}  # the prior
            _, log_var = model.posterior(pairs)
        except (ConfigError, StoreError, ValueError, RuntimeError) as exc:  # unreadable segments
            self._warn(f"read:{annotator}", f"no z spread for {annotator!r}: {exc}")
            return None
        spread = float(np.mean(np.exp(0.5 * np.asarray(log_var, dtype=np.float64))))
        return {"spread": round(spread, 4), "labels": len(pairs)}
