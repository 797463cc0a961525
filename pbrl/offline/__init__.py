"""Offline preference-based RL: one readable module per algorithm.

* :mod:`pbrl.offline.iql` — IQL on the true reward (oracle) or on a reward learned from
  preferences (the ``reward`` group: MLP ensemble or Preference Transformer);
* :mod:`pbrl.offline.cpl` — Contrastive Preference Learning (no reward model, no RL);
* :mod:`pbrl.offline.oppo` — OPPO (hindsight preference embedding, contextual policy, z*);
* :mod:`pbrl.offline.dtr` — DTR (normalized reward ensemble, decision transformer + twin Q);
* :mod:`pbrl.offline.bc` — behavior cloning.

``pbrl.offline.runner.RECIPE`` is what ``python -m pbrl.train`` runs for ``algo.kind: offline``;
:data:`ALGORITHMS` maps ``algo.name`` to each algorithm's config dataclass and ``build``.
Problems with the config or the data are :class:`pbrl.errors.ConfigError`.
"""

from __future__ import annotations

from pbrl.offline.runner import ALGORITHMS, OfflineAlgorithm

__all__ = ["ALGORITHMS", "OfflineAlgorithm"]
