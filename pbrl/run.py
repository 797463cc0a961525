"""The run contract online and offline runs share: seeding and device, evaluation on the
true reward (with a random-policy baseline and held-out reward-model accuracy), label
statistics, and ``summary.json``.

A run directory holds ``config.yaml``, ``summary.json``, ``tb/`` (TensorBoard + CSV) and
``checkpoint/``; videos go to ``<video.root>/<name>_<run dir name>/``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from pbrl.checkpoint import Checkpoint
from pbrl.data import PreferenceDataset, Queries
from pbrl.data.preferences import oracle_labels
from pbrl.envs.spec import EnvSpec
from pbrl.errors import ConfigError
from pbrl.evaluation import EvalResult, Policy, evaluate, peak_rss_mb
from pbrl.rewards.base import RewardModel
from pbrl.teachers.base import Teacher, WaitPolicy, checked_teacher

if TYPE_CHECKING:
    from tqdm import tqdm

    from pbrl.gui.server import BackgroundServer

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class RunSeeds:
    """Every seed a run derives from its one ``seed``; evaluation never reuses a training
    env's seed."""

    seed: int

    @property
    def eval(self) -> int:  # evaluation episodes of the policy
        return self.seed + 10_000

    @property
    def random(self) -> int:  # the random-policy baseline's episodes
        return self.seed + 20_000

    @property
    def test_queries(self) -> int:  # held-out pairs for the reward model's test accuracy
        return self.seed + 30_000


def plain(node: object) -> Any:
    """A config node as plain containers, interpolations resolved ({} for None)."""
    return OmegaConf.to_container(node, resolve=True) if node is not None else {}


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise ConfigError(f"device={name!r} is unknown: choose one of {', '.join(DEVICES)}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"device={name} but this machine has no CUDA device: use device=auto or device=cpu"
        )
    return torch.device(name)


def setup(
    seed: int, device: str, torch_threads: int = 0
) -> tuple[np.random.Generator, torch.device]:
    """Seed Python, numpy and torch from ``seed``; set torch's intra-op threads (0 keeps
    torch's default); return the run's generator and its device."""
    from stable_baselines3.common.utils import set_random_seed

    if torch_threads > 0:
        torch.set_num_threads(int(torch_threads))
    set_random_seed(int(seed))
    return np.random.default_rng(int(seed)), resolve_device(device)


def label_stats(prefs: PreferenceDataset) -> dict[str, float]:
    """``preferences/*`` figures of a batch of labels: skipped and tied fractions, and
    agreement with the noise-free oracle where it decided."""
    labels = prefs.labels
    decided = ~np.isnan(labels)
    out = {
        "skipped_fraction": float(np.mean(~decided)),
        "tie_fraction": float(np.mean(labels == 0.5)),
    }
    if decided.any():
        oracle = oracle_labels(prefs.queries)
        out["oracle_agreement"] = float(np.mean(labels[decided] == oracle[decided]))
    return out


@dataclass
class Evaluation:
    """Evaluation settings of a run: the policy on the true reward (optionally with a video
    and its learned return), the random baseline, the reward model's held-out accuracy."""

    env_id: str
    env_kwargs: dict[str, Any]
    seeds: RunSeeds
    n_episodes: int = 5
    random_episodes: int = 5
    test_queries: int = 500
    video_dir: Path | None = None  # None: no videos
    video_size: tuple[int, int] = (240, 240)

    def policy(
        self,
        act: Policy,
        reward_fn: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
        video_name: str | None = None,
        on_reset: Callable[[], None] | None = None,
    ) -> EvalResult:
        video = (
            None if self.video_dir is None or video_name is None else self.video_dir / video_name
        )
        return evaluate(
            self.env_id,
            act,
            self.n_episodes,
            self.seeds.eval,
            reward_fn=reward_fn,
            video_path=video,
            video_size=self.video_size,
            env_kwargs=self.env_kwargs,
            on_reset=on_reset,
        )

    def random(self) -> EvalResult:
        return evaluate(
            self.env_id, None, self.random_episodes, self.seeds.random, env_kwargs=self.env_kwargs
        )

    def test_accuracy(
        self, model: RewardModel, sample: Callable[[int, np.random.Generator], Queries]
    ) -> float:
        """Agreement with the oracle on ``test_queries`` fresh pairs from ``sample(n, rng)``."""
        queries = sample(self.test_queries, np.random.default_rng(self.seeds.test_queries))
        return float(model.accuracy(PreferenceDataset(queries, oracle_labels(queries))))


@dataclass
class RunSummary:
    """``summary.json``: the same fields, of the same types, for every run."""

    exp: str
    algo: str
    env_id: str
    seed: int
    total_timesteps: int  # env steps online, gradient steps offline
    num_labels: int  # trainable labels (skips excluded)
    num_queries: int  # queries asked (or read from a label file)
    teacher: dict[str, object] | None  # the teacher's config, {"source": "file", ...}, or None
    eval_true_return_mean: float
    eval_true_return_std: float
    eval_learned_return_mean: float | None
    random_true_return_mean: float
    reward_model_test_accuracy: float | None
    videos: list[str]
    tensorboard_dir: str
    resumed: bool
    started_at: float = field(default_factory=time.time)
    extra: dict[str, object] = field(default_factory=dict)  # what a kind of run adds

    def write(self, run_dir: Path) -> dict[str, object]:
        out = asdict(self)
        extra, started = out.pop("extra"), out.pop("started_at")
        out.update(extra)
        out["wall_time_s"] = time.time() - started
        out["peak_rss_mb"] = peak_rss_mb()
        tmp = run_dir / "summary.json.tmp"
        tmp.write_text(json.dumps(out, indent=2))
        tmp.replace(run_dir / "summary.json")
        return out


class Progress:
    """One progress style for every long loop: a tqdm bar on a terminal, else a plain line
    (``pbrl`` logger) every ``every_fraction`` of the work or ``every_s`` seconds."""

    def __init__(
        self,
        total: int,
        desc: str,
        initial: int = 0,
        unit: str = "steps",
        enabled: bool = True,
        every_fraction: float = 0.1,
        every_s: float = 60.0,
    ) -> None:
        import sys

        self.total, self.desc, self.unit, self.enabled = int(total), desc, unit, enabled
        self.n = self.start = int(initial)
        self.t0 = self.last_t = time.time()
        self.every_n = max(1, int(self.total * every_fraction))
        self.every_s, self.last_n = every_s, self.n
        self.postfix: dict[str, object] = {}
        self.bar: tqdm | None = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, initial=self.n, desc=desc, unit=unit, mininterval=1.0)

    def update_to(self, n: int, **postfix: object) -> None:
        """Progress is ``n`` of ``total``; ``postfix`` values are shown beside it."""
        n = min(int(n), self.total)
        self.postfix.update(postfix)
        if self.bar is not None:
            self.bar.update(n - self.n)
            if postfix:
                self.bar.set_postfix(self.postfix, refresh=False)
        elif self.enabled:
            now = time.time()
            if n - self.last_n >= self.every_n or now - self.last_t >= self.every_s:
                self._line(n, now)
        self.n = n

    def _line(self, n: int, now: float) -> None:
        import logging

        rate = (n - self.start) / max(now - self.t0, 1e-9)
        eta = (self.total - n) / rate if rate > 0 else float("nan")
        extra = "".join(f", {k} {v}" for k, v in self.postfix.items())
        logging.getLogger("pbrl").info(
            "%s: %d/%d %s (%.0f%%), %.0f %s/s, eta %.0f s%s",
            self.desc,
            n,
            self.total,
            self.unit,
            100.0 * n / max(self.total, 1),
            rate,
            self.unit,
            eta,
            extra,
        )
        self.last_n, self.last_t = n, now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.n != self.last_n:
            self._line(self.n, time.time())


# -- the run context: what every recipe starts from ------------------------------------------


@dataclass
class RunContext:
    """Built once per run by :func:`start_run` (after the config was checked): the run's
    directory, seeds and generator, device, environment, checkpoint, teacher and evaluation.
    A recipe (``pbrl.online.trainer``, ``pbrl.online.episodic``, ``pbrl.offline.runner``) takes
    it with its typed settings and reads top to bottom from there."""

    cfg: DictConfig  # the validated config (recipes read their own groups from it)
    run_dir: Path
    name: str
    seeds: RunSeeds
    rng: np.random.Generator
    device: torch.device
    env: EnvSpec
    checkpoint: Checkpoint
    teacher: Teacher | None  # None when the run asks no teacher
    wait: WaitPolicy  # how long the run waits for answers (the ``wait`` group)
    evaluation: Evaluation
    video_root: Path
    started: float = field(default_factory=time.time)
    page: BackgroundServer | None = None  # the labeling page, when this run serves it

    def summary(self, algo: str, **values: Any) -> RunSummary:
        """A :class:`RunSummary` with this run's identity filled in."""
        return RunSummary(
            exp=self.name,
            algo=algo,
            env_id=self.env.id,
            seed=self.seeds.seed,
            started_at=self.started,
            **values,
        )

    def teacher_summary(self) -> dict[str, object] | None:
        """The summary's ``teacher``: its config with what it reports about itself."""
        if self.teacher is None:
            return None
        return {**plain(self.cfg.teacher), **self.teacher.describe()}

    def close(self) -> None:
        """Stop the labeling page and close the teacher (once; :func:`pbrl.recipes.run` also
        calls it when a recipe fails)."""
        if self.page is not None:
            self.page.stop()
            self.page = None
        if self.teacher is not None:
            self.teacher.close()
            self.teacher = None


@dataclass(frozen=True)
class Recipe:
    """One kind of run (``algo.kind``): ``check(cfg)`` turns the config into typed settings
    (every check that needs no simulation; a bad value is a :class:`ConfigError`),
    ``asks_teacher(cfg, settings)`` says whether the run needs a teacher, and
    ``run(ctx, settings)`` trains, evaluates and writes the summary."""

    check: Callable[[DictConfig], Any]  # -> the recipe's typed settings
    asks_teacher: Callable[[DictConfig, Any], bool]
    run: Callable[[RunContext, Any], dict[str, object]]


def build_teacher(cfg: DictConfig, rng: np.random.Generator) -> Teacher:
    """The ``teacher`` group's teacher, given the run's env (:meth:`Teacher.use_env`); a bad
    setting is a :class:`ConfigError` naming its cause."""
    from hydra.utils import instantiate

    try:
        teacher = checked_teacher(instantiate(cfg.teacher, rng=rng))
        teacher.use_env(EnvSpec.from_config(plain(cfg.env)))
    except Exception as exc:
        cause: BaseException = exc
        while cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, ConfigError):
            raise cause from None
        raise ConfigError(str(cause)) from exc
    return teacher


def check_label_page(cfg: DictConfig, teacher: Teacher | None) -> None:
    """``label_page.serve=true`` needs a teacher that asks people and an address the page may
    bind (a token off loopback): checked before anything slow."""
    page = cfg.get("label_page") or {}
    if not page.get("serve", False):
        return
    if teacher is None or teacher.label_store() is None:
        name = cfg.teacher.get("_target_", "?").rsplit(".", 1)[-1] if teacher else "none"
        raise ConfigError(
            f"label_page.serve=true, but this run's teacher ({name}) asks no people: use "
            "teacher=human or teacher=vlm_then_human, or drop label_page.serve"
        )
    from pbrl.gui.server import check_bind

    try:
        check_bind(str(page.get("host", "127.0.0.1")), page.get("token"))
    except ValueError as exc:
        raise ConfigError(f"label_page: {exc}") from None


def serve_label_page(cfg: DictConfig, teacher: Teacher | None) -> BackgroundServer | None:
    """The labeling page for the teacher's label store, served from a thread of this process
    when ``label_page.serve=true`` (else people run ``python -m pbrl.label serve``)."""
    page = cfg.get("label_page") or {}
    store = teacher.label_store() if teacher is not None else None
    if not page.get("serve", False) or store is None or teacher is None:
        return None
    from pbrl.gui.server import BackgroundServer
    from pbrl.store import LabelStore

    LabelStore(store).close()  # the page opens an existing store: create it now, as people
    # may open the page before the first round
    server = BackgroundServer(
        store, str(page.get("host", "127.0.0.1")), int(page.get("port", 8000)), page.get("token")
    ).start()
    teacher.show_page(server.url)
    logging.getLogger("pbrl").info("labeling page: %s/", server.url)
    return server


def wait_policy(cfg: DictConfig) -> WaitPolicy:
    """The run's ``wait`` group (how long to wait for teachers that answer later)."""
    w = cfg.get("wait") or {}
    timeout = w.get("timeout_s", 600.0)
    return WaitPolicy(
        timeout_s=None if timeout is None else float(timeout),
        poll_s=float(w.get("poll_s", 1.0)),
        all_asked=bool(w.get("for_round", False)),
    )


def budget(cfg: DictConfig) -> str:
    """What a run will spend, read off its config: steps and labels."""
    kind = str(cfg.algo.get("kind", "online"))
    steps = f"{int(cfg.total_timesteps)} {'gradient' if kind == 'offline' else 'env'} steps"
    if not cfg.algo.get("preference", True):
        return f"{steps}, true reward (no labels)"
    unit = "triplets" if kind == "episodic" else "queries"
    return f"{steps}, {int(cfg.max_feedback)} {unit}"


def announce(cfg: DictConfig, run_dir: Path, resuming: bool = False) -> None:
    """The first line of every run, before anything slow: where it writes, on which device,
    its budget, and whether it resumes (from which step, with how many labels)."""
    from pbrl.checkpoint import Checkpoint

    progress = Checkpoint(run_dir).progress() if resuming else None
    device = str(cfg.device)
    if device == "auto":  # torch is imported already: asking it costs nothing
        device = f"auto ({'cuda' if torch.cuda.is_available() else 'cpu'})"
    state = (
        f"resuming from step {progress[0]}, labels {progress[1]}"
        if progress is not None
        else "starting fresh"
    )
    logging.getLogger("pbrl").info(
        "run %s: dir %s, device %s, budget %s; %s", cfg.name, run_dir, device, budget(cfg), state
    )


def teacher_rng(seed: int) -> np.random.Generator:
    """The teacher's generator: seeded by the first draw of the run's (:func:`start_run`)."""
    return np.random.default_rng(np.random.default_rng(seed).integers(2**63))


def start_run(cfg: DictConfig, run_dir: Path, teacher: Teacher | None) -> RunContext:
    """The context of a run whose config was checked (its teacher built then, with
    :func:`teacher_rng`): seeds everything from ``cfg.seed``, probes the env once, recovers
    the checkpoint directory and sets up evaluation."""
    run_dir = Path(run_dir)
    started = time.time()
    rng, device = setup(int(cfg.seed), str(cfg.device), int(cfg.get("torch_threads", 0)))
    rng.integers(2**63)  # the teacher's seed (teacher_rng): the first draw, as always
    env = EnvSpec.from_config(plain(cfg.env))
    checkpoint = Checkpoint(run_dir)
    checkpoint.recover()
    name = str(cfg.name)
    video_root = Path(cfg.video.root) / f"{name}_{run_dir.name}"
    seeds = RunSeeds(int(cfg.seed))
    evaluation = Evaluation(
        env.id,
        dict(env.kwargs),
        seeds,
        int(cfg.eval.n_episodes),
        int(cfg.eval.random_episodes),
        int(cfg.eval.get("test_queries", 0)),
        video_root if cfg.video.enabled else None,
        (int(cfg.video.width), int(cfg.video.height)),
    )
    return RunContext(
        cfg, run_dir, name, seeds, rng, device, env, checkpoint, teacher, wait_policy(cfg),
        evaluation, video_root, started, serve_label_page(cfg, teacher),
    )  # fmt: skip
