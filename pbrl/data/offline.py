"""Offline datasets: Minari storage, flat transition arrays, segments and preference labels.

A dataset is a list of episodes. pbrl reads any Minari dataset by id (``minari download
mujoco/hopper/medium-v0`` elsewhere, or one built here by ``scripts/make_dataset.py``) into
one :class:`OfflineDataset` of flat transition arrays, with episode boundaries, terminals and
timeouts kept apart, and — when the dataset stores them in its ``infos`` — the simulator
states (``qpos``/``qvel``) so any segment can be re-rendered for human or VLM labeling.

Preference labels for a dataset follow the Uni-RLHF protocol (:func:`scripted_preferences`):
``N`` queries of two length-``L`` segments, each cut from a single episode, labeled by a
B-Pref scripted teacher on the summed true reward, with an absolute tie threshold. Labels a
user brings are read by :func:`load_preferences` (formats in its docstring).
"""

from __future__ import annotations

import csv
import json
import os
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypedDict, Unpack

import numpy as np

from pbrl.data.preferences import LABEL_CHOICES, PreferenceDataset, Queries, parse_label
from pbrl.data.segments import Segments
from pbrl.errors import ConfigError

# D4RL's reference returns (random, expert), from the mujoco-py (v2) environments.
D4RL_REF_SCORES: dict[str, tuple[float, float]] = {
    "hopper": (-20.272305, 3234.3),
    "halfcheetah": (-280.178953, 12135.0),
    "walker2d": (1.629008, 4592.3),
    "ant": (-325.6, 3879.7),
}


def d4rl_reference(env_id: str) -> tuple[float, float] | None:
    """D4RL's (random, expert) returns for an env or dataset id naming the robot, or None."""
    for token in re.split(r"[/\-_]", env_id.lower()):
        if token in D4RL_REF_SCORES:
            return D4RL_REF_SCORES[token]
    return None


def normalized_score(returns: np.ndarray | float, ref_min: float, ref_max: float) -> np.ndarray:
    """D4RL's normalized score: 0 = random, 100 = expert."""
    return 100.0 * (np.asarray(returns, dtype=np.float64) - ref_min) / (ref_max - ref_min)


class DatasetNotFoundError(FileNotFoundError, ConfigError):
    """A dataset id that is not in the local Minari store."""


@dataclass
class Episode:
    """One episode as collected: ``T`` transitions and ``T + 1`` observations/states."""

    observations: np.ndarray  # [T + 1, D]
    actions: np.ndarray  # [T, A]
    rewards: np.ndarray  # [T]
    terminations: np.ndarray  # [T] bool (only the last can be True)
    truncations: np.ndarray  # [T] bool (time limit or end of collection; only the last)
    qpos: np.ndarray | None = None  # [T + 1, nq]
    qvel: np.ndarray | None = None  # [T + 1, nv]
    factors: np.ndarray | None = None  # [T, K] reward factors the env reported per step
    factor_names: tuple[str, ...] = ()  # their info keys (``reward_<name>``)

    def __len__(self) -> int:
        return len(self.rewards)

    @property
    def ret(self) -> float:
        return float(np.sum(self.rewards))


class DatasetMeta(TypedDict, total=False):
    """:meth:`OfflineDataset.from_episodes`' keyword arguments: the dataset's own facts."""

    dataset_id: str
    env_id: str
    ref_min_score: float | None
    ref_max_score: float | None
    metadata: dict[str, object]


@dataclass
class OfflineDataset:
    """Transitions of all episodes, concatenated in episode order.

    ``qpos``/``qvel`` hold ``T_e + 1`` states per episode (before each action, then the
    final state), so they are indexed by :meth:`state_index`, not by transition index.
    """

    observations: np.ndarray  # [N, D] float32
    actions: np.ndarray  # [N, A] float32
    rewards: np.ndarray  # [N] float32 (true reward; learners that must not see it relabel)
    next_observations: np.ndarray  # [N, D]
    terminals: np.ndarray  # [N] bool: the episode terminated after this transition
    timeouts: np.ndarray  # [N] bool: the episode was cut (time limit, end of the data)
    episode_starts: np.ndarray  # [E + 1] int offsets; episode e is [starts[e], starts[e+1])
    qpos: np.ndarray | None = None  # [N + E, nq]
    qvel: np.ndarray | None = None  # [N + E, nv]
    dataset_id: str = ""
    env_id: str = ""
    ref_min_score: float | None = None  # the dataset's own random return
    ref_max_score: float | None = None  # the dataset's own expert return
    metadata: dict[str, object] = field(default_factory=dict)  # JSON values from the file
    factors: np.ndarray | None = None  # [N, K] reward factors (info["reward_<name>"]), if any
    factor_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.rewards)
        self.terminals = self.terminals.astype(bool)
        self.timeouts = self.timeouts.astype(bool)
        self.episode_starts = np.asarray(self.episode_starts, dtype=np.int64)
        if self.episode_starts[0] != 0 or self.episode_starts[-1] != n:
            raise ValueError("OfflineDataset.episode_starts must run from 0 to the number of steps")
        lengths = np.diff(self.episode_starts)
        if (lengths <= 0).any():
            raise ValueError("OfflineDataset: empty episode")
        self.episode_of = np.repeat(np.arange(len(lengths)), lengths)
        self.step_in_episode = np.arange(n) - self.episode_starts[self.episode_of]
        if self.qpos is not None and len(self.qpos) != n + len(lengths):
            raise ValueError("OfflineDataset.qpos needs T + 1 states per episode")
        if self.factors is not None and self.factors.shape != (n, len(self.factor_names)):
            raise ValueError("OfflineDataset.factors needs one row per step, one name per column")

    # -- construction --------------------------------------------------------------------
    @staticmethod
    def from_episodes(episodes: Sequence[Episode], **meta: Unpack[DatasetMeta]) -> OfflineDataset:
        if not episodes:
            raise ValueError("OfflineDataset.from_episodes needs at least one episode")
        has_state = all(e.qpos is not None and e.qvel is not None for e in episodes)
        names = episodes[0].factor_names
        has_factors = bool(names) and all(
            e.factors is not None and e.factor_names == names for e in episodes
        )
        f32 = np.float32
        return OfflineDataset(
            observations=np.concatenate([e.observations[:-1] for e in episodes]).astype(f32),
            actions=np.concatenate([e.actions for e in episodes]).astype(f32),
            rewards=np.concatenate([e.rewards for e in episodes]).astype(f32),
            next_observations=np.concatenate([e.observations[1:] for e in episodes]).astype(f32),
            terminals=np.concatenate([e.terminations for e in episodes]),
            timeouts=np.concatenate([e.truncations for e in episodes]),
            episode_starts=np.concatenate([[0], np.cumsum([len(e) for e in episodes])]),
            # With has_state the filters keep every episode (they only narrow the type).
            qpos=np.concatenate([e.qpos for e in episodes if e.qpos is not None])
            if has_state
            else None,
            qvel=np.concatenate([e.qvel for e in episodes if e.qvel is not None])
            if has_state
            else None,
            factors=np.concatenate([e.factors for e in episodes if e.factors is not None]).astype(
                f32
            )
            if has_factors
            else None,
            factor_names=names if has_factors else (),
            **meta,
        )

    def with_rewards(self, rewards: np.ndarray) -> OfflineDataset:
        """A copy sharing every array but the rewards (relabeling by a reward model)."""
        rewards = np.asarray(rewards, dtype=np.float32).reshape(-1)
        if rewards.shape != self.rewards.shape:
            raise ValueError(
                f"with_rewards: {rewards.shape} rewards for {self.rewards.shape} steps"
            )
        return replace(self, rewards=rewards, metadata=dict(self.metadata))

    # -- shape ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.rewards)

    @property
    def num_episodes(self) -> int:
        return len(self.episode_starts) - 1

    @property
    def obs_dim(self) -> int:
        return int(self.observations.shape[1])

    @property
    def act_dim(self) -> int:
        return int(self.actions.shape[1])

    @property
    def episode_lengths(self) -> np.ndarray:
        return np.diff(self.episode_starts)

    @property
    def has_state(self) -> bool:
        return self.qpos is not None and self.qvel is not None

    def state_index(self, i: np.ndarray) -> np.ndarray:
        """Row of ``qpos``/``qvel`` holding the state before transition ``i``."""
        return np.asarray(i) + self.episode_of[np.asarray(i)]

    def episode_returns(self, rewards: np.ndarray | None = None) -> np.ndarray:
        r = self.rewards if rewards is None else rewards
        return np.add.reduceat(np.asarray(r, dtype=np.float64), self.episode_starts[:-1])

    def episode(self, e: int) -> Episode:
        s, t = int(self.episode_starts[e]), int(self.episode_starts[e + 1])
        obs = np.concatenate([self.observations[s:t], self.next_observations[t - 1 : t]])
        qpos = qvel = None
        if self.qpos is not None and self.qvel is not None:
            qpos, qvel = self.qpos[s + e : t + e + 1], self.qvel[s + e : t + e + 1]
        return Episode(
            obs,
            self.actions[s:t],
            self.rewards[s:t],
            self.terminals[s:t],
            self.timeouts[s:t],
            qpos,
            qvel,
            None if self.factors is None else self.factors[s:t],
            self.factor_names if self.factors is not None else (),
        )

    # -- scores --------------------------------------------------------------------------
    def normalized_score(self, returns: np.ndarray | float) -> np.ndarray | None:
        """Score against the dataset's own random/expert returns (None if it has none)."""
        if self.ref_min_score is None or self.ref_max_score is None:
            return None
        if self.ref_max_score <= self.ref_min_score:  # an "expert" no better than random
            return None
        return normalized_score(returns, self.ref_min_score, self.ref_max_score)

    def d4rl_normalized_score(self, returns: np.ndarray | float) -> np.ndarray | None:
        """Score against D4RL's reference returns for this robot (None if none are known)."""
        ref = d4rl_reference(self.env_id)
        return None if ref is None else normalized_score(returns, *ref)

    # -- segments ------------------------------------------------------------------------
    def window_starts(self, length: int) -> np.ndarray:
        """Global start indices of every window of ``length`` steps inside one episode.

        An episode that *terminated* in fewer than ``length`` steps gives one padded window
        (``mask`` False after the termination: its true return is comparable, the robot
        fell). A shorter episode that was only cut off (timeout, end of data) gives none.
        """
        starts, lengths = self.episode_starts[:-1], self.episode_lengths
        ends = self.episode_starts[1:]
        full = lengths >= length
        counts = np.where(full, lengths - length + 1, 0)
        padded = ~full & self.terminals[ends - 1]
        counts = counts + padded
        first = np.repeat(starts, counts)
        offset = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        return first + offset

    def segments(self, starts: np.ndarray, length: int) -> Segments:
        """Windows of ``length`` steps from the given global starts (padded after a termination)."""
        starts = np.asarray(starts, dtype=np.int64)
        if starts.size and (starts.min() < 0 or starts.max() >= len(self)):
            raise IndexError(f"segment start out of range [0, {len(self)})")
        ep = self.episode_of[starts]
        ep_end = self.episode_starts[ep + 1]
        idx = starts[:, None] + np.arange(length)[None]
        mask = idx < ep_end[:, None]
        last = np.minimum(idx, (ep_end - 1)[:, None])[:, -1]
        if not (mask.all(1) | self.terminals[last]).all():
            raise ValueError(
                f"a segment of {length} steps runs past the end of an episode that "
                "did not terminate (use OfflineDataset.window_starts)"
            )
        fill = np.where(mask, idx, last[:, None])
        qpos = qvel = None
        if self.qpos is not None and self.qvel is not None:
            # States 0..T of the window; after the episode ended its final state is held.
            # Episode e's T_e + 1 states are rows starts[e] + e ... starts[e + 1] + e.
            steps = np.minimum(starts[:, None] + np.arange(length + 1), ep_end[:, None])
            sidx = steps + ep[:, None]
            qpos, qvel = self.qpos[sidx], self.qvel[sidx]
        factors = None
        if self.factors is not None:
            factors = np.where(mask[..., None], self.factors[fill], 0.0).astype(np.float32)
        return Segments(
            obs=self.observations[fill],
            act=self.actions[fill],
            true_reward=np.where(mask, self.rewards[fill], 0.0).astype(np.float32),
            mask=mask,
            final_obs=self.next_observations[last],
            terminated=self.terminals[last],
            qpos=qpos,
            qvel=qvel,
            reward_factors=factors,
            factor_names=self.factor_names if factors is not None else (),
            episode=ep,
            start=self.step_in_episode[starts],
            env_id=self.env_id,
            run=self.dataset_id,
        )

    def sample_starts(self, n: int, length: int, rng: np.random.Generator) -> np.ndarray:
        valid = self.window_starts(length)
        if valid.size == 0:
            raise ValueError(
                f"dataset {self.dataset_id!r} has no episode of {length} steps or "
                "that terminated: use a shorter segment length"
            )
        return valid[rng.integers(len(valid), size=n)]

    def sample_queries(self, n: int, length: int, rng: np.random.Generator) -> Queries:
        """``n`` pairs of segments, each from a single episode (Uni-RLHF's sampling)."""
        return Queries(
            self.segments(self.sample_starts(n, length, rng), length),
            self.segments(self.sample_starts(n, length, rng), length),
        )


# -- Minari ------------------------------------------------------------------------------


def minari_root() -> Path:
    return Path(os.environ.get("MINARI_DATASETS_PATH", Path.home() / ".minari" / "datasets"))


def save_minari(
    dataset_id: str,
    episodes: Sequence[Episode],
    env_id: str,
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
    metadata: Mapping[str, object] | None = None,
    description: str = "",
    algorithm_name: str = "",
    overwrite: bool = False,
) -> Path:
    """Write ``episodes`` as a local Minari dataset (simulator states go in ``infos``).

    ``metadata`` is stored under the ``pbrl`` key of Minari's metadata; the D4RL reference
    returns for the robot, when known, are stored next to the dataset's own.
    """
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    if dataset_id in minari.list_local_datasets():
        if not overwrite:
            raise FileExistsError(
                f"Minari dataset {dataset_id} already exists in {minari_root()}: "
                "pass overwrite=True (--overwrite) or bump the version"
            )
        minari.delete_dataset(dataset_id)
    buffers = []
    for i, ep in enumerate(episodes):
        infos: dict[str, np.ndarray] | None = None
        if ep.qpos is not None and ep.qvel is not None:
            infos = {"qpos": np.asarray(ep.qpos), "qvel": np.asarray(ep.qvel)}
        if ep.factors is not None and infos is not None:
            # infos hold T + 1 rows (the reset's, then each step's): the reset has no factor
            for k, name in enumerate(ep.factor_names):
                infos[name] = np.concatenate([[0.0], ep.factors[:, k]])
        buffers.append(
            EpisodeBuffer(
                id=i,
                observations=np.asarray(ep.observations),
                actions=np.asarray(ep.actions),
                rewards=np.asarray(ep.rewards, dtype=np.float64),
                terminations=np.asarray(ep.terminations, dtype=bool),
                truncations=np.asarray(ep.truncations, dtype=bool),
                infos=infos,
            )
        )
    with warnings.catch_warnings():  # Minari nags about unset author/email/permalink
        warnings.filterwarnings(
            "ignore", message=".*(author|code_permalink|eval_env|algorithm_name|description).*"
        )
        dataset = minari.create_dataset_from_buffers(
            dataset_id,
            buffers,
            env=env_id,
            algorithm_name=algorithm_name or None,
            ref_min_score=ref_min_score,
            ref_max_score=ref_max_score,
            description=description or None,
            author="pbrl",
        )
    extra: dict[str, object] = {"pbrl": metadata or {}}
    ref = d4rl_reference(env_id)
    if ref is not None:
        extra["d4rl_ref_min_score"], extra["d4rl_ref_max_score"] = ref
    dataset.storage.update_metadata(extra)
    return Path(dataset.storage.data_path).parent


# Namespaces of the datasets scripts/make_dataset.py builds for pbrl's configs (conf/dataset/):
# its default and the seconds-sized smoke-test preset. They exist only where they were built.
PBRL_NAMESPACES: dict[str, tuple[str, ...]] = {"pbrl": (), "pbrl-tiny": ("--preset", "tiny")}
_PBRL_ID = re.compile(r"^(?P<ns>[^/]+)/(?P<env>[^/]+)/(?P<kind>[a-z-]+)-v(?P<version>\d+)$")


def make_dataset_command(dataset_id: str) -> str | None:
    """The ``scripts/make_dataset.py`` command that builds ``dataset_id``, for ids in pbrl's
    own namespaces (:data:`PBRL_NAMESPACES`); None for any other id."""
    m = _PBRL_ID.match(dataset_id)
    if m is None or m["ns"] not in PBRL_NAMESPACES:
        return None
    args = [*PBRL_NAMESPACES[m["ns"]], "--env", m["env"], "--kinds", m["kind"]]
    if m["ns"] != "pbrl":
        args += ["--namespace", m["ns"]]
    if m["version"] != "0":
        args += ["--version", m["version"]]
    return "python scripts/make_dataset.py " + " ".join(args)


def load_dataset(dataset_id: str) -> OfflineDataset:
    """Read a Minari dataset from the local store into flat arrays.

    Raises :class:`DatasetNotFoundError` naming where pbrl looked and how to get the data.
    """
    import minari

    try:
        ds = minari.load_dataset(dataset_id)
    except FileNotFoundError as exc:
        local = sorted(minari.list_local_datasets())
        build = make_dataset_command(dataset_id)
        how = (
            f"Build it here with `{build}` (pbrl's datasets are not on Minari's server)"
            if build
            else f"Build one with scripts/make_dataset.py, or download it with "
            f"`minari download {dataset_id}`"
        )
        raise DatasetNotFoundError(
            f"dataset {dataset_id!r} is not in the local Minari store {minari_root()} "
            f"(MINARI_DATASETS_PATH). {how}. Local datasets: {', '.join(local) or 'none'}"
        ) from exc
    except ValueError as exc:  # malformed id
        raise DatasetNotFoundError(
            f"dataset id {dataset_id!r} is invalid: {exc} (expected e.g. mujoco/hopper/medium-v0)"
        ) from exc
    episodes = []
    for ep in ds.iterate_episodes():
        if not isinstance(ep.observations, np.ndarray):
            raise ValueError(f"dataset {dataset_id}: only flat Box observations are supported")
        infos = ep.infos or {}
        qpos, qvel = infos.get("qpos"), infos.get("qvel")
        n = len(ep.rewards)
        if qpos is None or qvel is None or len(qpos) != n + 1:
            qpos = qvel = None
        names = tuple(sorted(k for k in infos if k.startswith("reward_")))
        factors = None  # infos' factors hold T + 1 rows: the reset's (none), then each step's
        if names and all(len(infos[k]) == n + 1 for k in names):
            factors = np.stack([np.asarray(infos[k])[1:] for k in names], -1)
        trunc = np.asarray(ep.truncations, dtype=bool).copy()
        term = np.asarray(ep.terminations, dtype=bool)
        if not (term[-1] or trunc[-1]):
            trunc[-1] = True  # an episode the collector stopped: treat as cut off
        episodes.append(
            Episode(
                np.asarray(ep.observations),
                np.asarray(ep.actions).reshape(n, -1),
                np.asarray(ep.rewards),
                term,
                trunc,
                qpos,
                qvel,
                factors,
                names if factors is not None else (),
            )
        )
    meta = ds.storage.metadata
    env_spec = ds.spec.env_spec
    return OfflineDataset.from_episodes(
        episodes,
        dataset_id=dataset_id,
        env_id=env_spec.id if env_spec is not None else "",
        ref_min_score=_opt_float(meta.get("ref_min_score")),
        ref_max_score=_opt_float(meta.get("ref_max_score")),
        metadata={k: v for k, v in meta.items() if isinstance(v, (str, int, float, dict, list))},
    )


def _opt_float(x: float | str | None) -> float | None:
    return None if x is None else float(x)


# -- preference labels -------------------------------------------------------------------


def scripted_preferences(
    data: OfflineDataset,
    num_queries: int,
    segment_length: int,
    teacher: Callable[[Queries], np.ndarray],
    rng: np.random.Generator,
    tie_threshold: float = 0.0,
    annotator: str = "",
) -> PreferenceDataset:
    """Uni-RLHF's scripted labels: ``num_queries`` random pairs of single-episode segments,
    labeled by ``teacher`` (a B-Pref :class:`~pbrl.teachers.ScriptedTeacher`), then 0.5
    wherever the true segment returns differ by at most ``tie_threshold`` (Uni-RLHF: 10 on
    MuJoCo with 200-step segments; 0 disables). Skips stay skips.
    """
    queries = data.sample_queries(num_queries, segment_length, rng)
    labels = np.asarray(teacher(queries), dtype=np.float64)
    name = annotator or type(teacher).__name__
    return with_ties(PreferenceDataset(queries, labels, np.full(num_queries, name)), tie_threshold)


def with_ties(prefs: PreferenceDataset, tie_threshold: float) -> PreferenceDataset:
    """Uni-RLHF's ties: 0.5 wherever the true segment returns differ by at most
    ``tie_threshold`` (0 disables); skips stay skips, annotators are kept."""
    if tie_threshold <= 0:
        return prefs
    q = prefs.queries
    close = np.abs(q.first.returns() - q.second.returns()) <= tie_threshold
    labels = np.where(close & ~np.isnan(prefs.labels), 0.5, prefs.labels)
    return PreferenceDataset(q, labels, prefs.annotator, prefs.answered_at)


INDEX_COLUMNS = ("start_1", "start_2", "label")


def load_preferences(
    path: str | os.PathLike[str], data: OfflineDataset, segment_length: int | None = None
) -> PreferenceDataset:
    """Preference labels a user brings, for the dataset ``data``.

    Accepted files:

    * a pbrl preference dataset (``.npz`` written by :meth:`PreferenceDataset.save`, e.g. by
      ``scripts/make_preferences.py`` or the labeling page): used as is;
    * an *index file* (``.csv``, ``.json`` or ``.npz``) naming windows of the dataset, one
      query per row, with columns ``start_1``, ``start_2`` (global transition indices in the
      dataset's episode order, as in D4RL/Uni-RLHF label files) — or ``episode_1``,
      ``step_1``, ``episode_2``, ``step_2`` — and ``label`` (0 first preferred, 1 second,
      0.5 equal, empty/NaN skip); optional ``length`` per row (else ``segment_length``) and
      ``annotator``. JSON is a list of row objects or an object of equal-length columns.

    Errors name the file, the row and what to fix.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"preference file {path} does not exist")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as f:
            is_pbrl = "header" in f.files
            cols = {} if is_pbrl else {k: f[k] for k in f.files}
        if is_pbrl:
            prefs = PreferenceDataset.load(path)
            if prefs.queries.first.obs.shape[-1] != data.obs_dim:
                raise ValueError(
                    f"{path}: segments have observation size "
                    f"{prefs.queries.first.obs.shape[-1]}, dataset "
                    f"{data.dataset_id} has {data.obs_dim}"
                )
            return prefs
    elif path.suffix == ".csv":
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        cols = {k: np.array([r[k] for r in rows]) for k in (rows[0].keys() if rows else [])}
    elif path.suffix == ".json":
        blob = json.loads(path.read_text())
        if isinstance(blob, list):
            keys = blob[0].keys() if blob else []
            cols = {k: np.array([r.get(k) for r in blob], dtype=object) for k in keys}
        else:
            cols = {k: np.asarray(v, dtype=object) for k, v in blob.items()}
    else:
        raise ValueError(
            f"{path}: unknown preference file type {path.suffix!r}; use a pbrl "
            ".npz, or an index file (.csv/.json/.npz) with columns "
            f"{', '.join(INDEX_COLUMNS)}"
        )
    return _from_index(cols, data, segment_length, path)


def _from_index(
    cols: dict[str, np.ndarray], data: OfflineDataset, segment_length: int | None, path: Path
) -> PreferenceDataset:
    def col(name: str, dtype: type) -> np.ndarray:
        values = cols[name]
        out = np.empty(len(values), dtype=np.float64)
        for i, v in enumerate(values):
            try:
                out[i] = (
                    float("nan") if v is None or str(v).strip() in ("", "nan", "None") else float(v)
                )
            except ValueError as exc:
                raise ValueError(
                    f"{path}: row {i}: column {name!r} has {v!r}, not a number"
                ) from exc
        return out.astype(dtype) if dtype is not float else out

    need: tuple[str, ...]
    if "episode_1" in cols:
        need = ("episode_1", "step_1", "episode_2", "step_2", "label")
    else:
        need = INDEX_COLUMNS
    missing = [c for c in need if c not in cols]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {', '.join(missing)}; an index file needs "
            "start_1, start_2, label (or episode_1, step_1, episode_2, step_2, label)"
        )
    if "episode_1" in cols:
        starts = []
        for k in ("1", "2"):
            ep, step = col(f"episode_{k}", int), col(f"step_{k}", int)
            if ep.min(initial=0) < 0 or ep.max(initial=0) >= data.num_episodes:
                raise ValueError(f"{path}: episode_{k} out of range [0, {data.num_episodes})")
            starts.append(data.episode_starts[ep] + step)
        s1, s2 = starts
    else:
        s1, s2 = col("start_1", int), col("start_2", int)
    labels = np.empty(len(s1))
    for i, v in enumerate(cols["label"]):
        try:
            labels[i] = parse_label(v)
        except ValueError:
            raise ValueError(
                f"{path}: row {i}: invalid preference label {v!r}: {LABEL_CHOICES}"
            ) from None
    if "length" in cols:
        lengths = col("length", int)
    elif segment_length:
        lengths = np.full(len(s1), int(segment_length))
    else:
        raise ValueError(
            f"{path}: no 'length' column: pass the segment length (feedback.segment_length)"
        )
    valid = {int(L): set(data.window_starts(int(L)).tolist()) for L in np.unique(lengths)}
    for i, (a, b, L) in enumerate(zip(s1, s2, lengths, strict=True)):
        for s in (a, b):
            if int(s) not in valid[int(L)]:
                raise ValueError(
                    f"{path}: row {i}: a {L}-step window starting at transition {s} "
                    f"does not lie inside one episode of {data.dataset_id} "
                    f"({len(data)} transitions)"
                )
    parts = []
    for L in np.unique(lengths):
        rows = np.flatnonzero(lengths == L)
        q = Queries(data.segments(s1[rows], int(L)), data.segments(s2[rows], int(L)))
        ann = np.asarray(cols["annotator"])[rows].astype(str) if "annotator" in cols else None
        parts.append(PreferenceDataset(q, labels[rows], ann))
    if len(parts) > 1:
        raise ValueError(f"{path}: rows with different segment lengths; split the file")
    return parts[0]


def save_preference_index(
    path: str | os.PathLike[str], prefs: PreferenceDataset, data: OfflineDataset
) -> Path:
    """Write the index form (CSV) of labels whose segments come from ``data``."""
    path = Path(path)
    q = prefs.queries
    s1 = data.episode_starts[q.first.episode] + q.first.start
    s2 = data.episode_starts[q.second.episode] + q.second.start
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["start_1", "start_2", "length", "label", "annotator"])
        annotator = prefs.annotator
        assert annotator is not None  # set in PreferenceDataset.__post_init__
        for a, b, y, who in zip(s1, s2, prefs.labels, annotator, strict=True):
            w.writerow([int(a), int(b), q.first.length, "" if np.isnan(y) else y, who])
    return path
