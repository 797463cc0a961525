"""RAPL: a visual reward from a preference-aligned representation and optimal transport.

Tian et al. (2024), "What Matters to You? Towards Visual Representation Alignment for Robot
Learning". A frozen, pre-trained ResNet-18 (:mod:`pbrl.rewards.resnet`) embeds every frame
of a video (112 x 112 px); a linear head maps its 512-d feature to 32 dimensions. The head
is trained so that optimal transport between frame embeddings (:mod:`pbrl.rewards.ot`)
ranks videos as the person does; then the robot's reward is how well its video matches a
preferred demonstration in that embedding space.

Alignment (``fit``). Feedback is triplets of videos ranked by the person (stored as their
three pairs, :mod:`pbrl.data.triplets`). The anchor ``A`` is the most preferred video; of
the other two, ``x1`` is preferred to (or as good as) ``x2``. With the video similarity
``s(x, y) = -sum(P* o C)`` (cost ``C`` between frame embeddings, entropic OT plan ``P*``),
the Bradley–Terry probability that ``x1`` is the one closer to the anchor is

    P = e^{s(A, x1)} / (e^{s(A, x1)} + e^{s(A, x2)}) = sigmoid(s(A, x1) - s(A, x2)),

and the loss is its cross-entropy with the label ``y``: ``y = 1`` when ``x1`` was ranked
above ``x2``, ``y = 0.5`` when the person found them equal, which pulls ``P`` to 0.5 (the
equal-preference term). Index order: the reference code's form (quoted in the project's
notes as ``1 - e^{s(pos,neutral)} / (e^{s(pos,neutral)} + e^{s(pos,neg)})``, the reference
itself could not be consulted here) has the most preferred video as the anchor ("pos"), the
middle one as the video that must be closer to it ("neutral") and the least preferred as
the one that must be farther ("neg"); that is the paper's intent (the preferred video is a
proxy for the person's ideal, and a more preferred video lies closer to it) and what is
implemented. Deviation: the negative log-likelihood of ``P`` (the paper's objective) instead
of the linear ``1 - P`` of that quote. Adam (1e-3), 10 triplets a step, ``epochs`` epochs,
and the head of the epoch with the lowest validation loss is kept.

Cost. The project's notes give a Euclidean cost for the alignment loss and a cosine cost for
the reward. With a trained linear head that mismatch ranked held-out sweep videos backwards
(Spearman -0.51 at 90 triplets, against +0.58 with the cosine cost in both; Euclidean in
both: +0.45; ``docs/rapl.md``): the head is trained to make distances meaningful, and the
cosine of its output (a bias included) is not a distance it was trained on. So the loss uses
the reward's cost by default (``train_cost: cosine``); both stay configurable.

Reward. Against each preferred demonstration ``d`` (cosine cost between embeddings), the
frame at step ``t`` of the robot's video earns ``r_t = -lambda [P* C^T]_tt``; the
demonstration used is the closest one (the largest similarity). Demonstrations are given
with :meth:`RAPLReward.set_demonstrations`; without them, the most preferred video of every
labeled triplet serves as one. The reward of a step depends on the whole episode (the plan
couples every frame), so the policy is trained with episode-level relabeling
(:mod:`pbrl.online.episodic`), and ``reward``/``predict`` on single states raise TypeError.

With ``align: false`` nothing is trained: the frozen backbone's own 512-d features enter the
same transport — the un-aligned baseline of the paper.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import nn

from pbrl.data import PreferenceDataset, Segments
from pbrl.data.triplets import Triplets, triplets_from_dataset
from pbrl.envs.render import FrameCache, shared_frames
from pbrl.envs.spec import EnvSpec, saved_env
from pbrl.errors import ConfigError
from pbrl.rewards.base import NOTHING_TO_FIT, EpisodeReward, save_atomically
from pbrl.rewards.frames import kept_steps, spread_to_steps
from pbrl.rewards.ot import COSTS, ot_similarity, ot_step_rewards
from pbrl.rewards.resnet import (
    FEATURE_DIM,
    drop_classifier,
    load_backbone,
    normalize_frames,
    pretrain_backbone,
    save_backbone,
)

log = logging.getLogger("pbrl")

if TYPE_CHECKING:
    from gymnasium.envs.mujoco.mujoco_env import MujocoEnv


class RAPLInputError(ConfigError):
    """Input the RAPL reward cannot use (frames of the wrong size, segments without state)."""


@dataclass
class EncoderConfig:
    """The frozen backbone and the frames it sees (shared by RAPL and the linear-head RLHF
    baseline, :mod:`pbrl.rewards.rlhf_linear`). What it renders is the run's
    :class:`~pbrl.envs.spec.EnvSpec`; ``frame_stride``/``n_frames`` are the episodic recipe's
    (``episodic.frame_stride``, ``episodic.n_frames``: it passes them)."""

    image_size: int = 112  # square frames (RAPL: 112 x 112)
    backbone_weights: str = ""  # a torchvision resnet18 state_dict; "": pre-train one here
    pretrain_dir: str = "outputs/backbones"  # backbones pre-trained here are saved/found here
    pretrain_episodes: int = 20  # random-action episodes whose frames pre-train the backbone
    pretrain_steps: int = 100  # autoencoder steps on layer4 (pbrl.rewards.resnet)
    pretrain_batch_size: int = 16
    pretrain_seed: int = 0
    frame_stride: int = 1  # every k-th frame of a video enters the transport / the BT sum
    n_frames: int = 0  # > 0: this many frames per video, evenly spaced (overrides frame_stride)
    learning_rate: float = 1e-3
    batch_size: int = 10  # triplets per gradient step
    epochs: int = 100  # epochs per training round (the best validation epoch is kept)
    val_fraction: float = 0.2  # triplets held out to pick the epoch (none below 5 triplets)
    feature_batch: int = 64  # frames per backbone forward pass
    cache_features: int = 50_000  # backbone features kept, by simulator state (2 kB each)

    def __post_init__(self) -> None:
        for name in ("image_size", "frame_stride", "batch_size"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"reward.{name}={getattr(self, name)} must be positive")
        if self.image_size < 32:
            raise ConfigError(f"reward.image_size={self.image_size}: ResNet-18 needs >= 32 px")
        for name in ("epochs", "pretrain_steps", "pretrain_episodes", "cache_features", "n_frames"):
            if int(getattr(self, name)) < 0:
                raise ConfigError(f"reward.{name}={getattr(self, name)} must be >= 0")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"reward.val_fraction={self.val_fraction}: use 0 <= it < 1")
        if self.backbone_weights and not Path(self.backbone_weights).expanduser().is_file():
            raise ConfigError(
                f"reward.backbone_weights={self.backbone_weights}: no such file; give the path "
                "of a torchvision resnet18 state_dict (.pth), or leave it empty to pre-train "
                "a backbone here"
            )


@dataclass
class RAPLConfig(EncoderConfig):
    align: bool = True  # False: the backbone's own features, untrained (the un-aligned baseline)
    embed_dim: int = 32  # output of the trainable linear head
    epsilon: float = 0.05  # Sinkhorn's entropic regularization (relative: see relative_epsilon)
    # True: the plan is solved on the cost divided by its largest entry (epsilon relative, a
    # sharp plan); False: on the absolute cost (the official code: epsilon = 1, a diffuse plan)
    relative_epsilon: bool = True
    sinkhorn_iters: int = 100
    # cost between frame embeddings in the alignment loss: the reward's, see the module doc
    train_cost: str = "cosine"
    reward_cost: str = "cosine"  # cost between frame embeddings in the reward
    reward_scale: float = 1.0  # lambda in r_t = -lambda [P* C^T]_tt

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("embed_dim", "sinkhorn_iters"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"reward.{name}={getattr(self, name)} must be positive")
        if not self.epsilon > 0:
            raise ConfigError(f"reward.epsilon={self.epsilon} must be positive")
        for name in ("train_cost", "reward_cost"):
            if getattr(self, name) not in COSTS:
                raise ConfigError(
                    f"reward.{name}={getattr(self, name)!r}: use one of {', '.join(COSTS)}"
                )


def triplet_logits(
    anchor: torch.Tensor,
    first: torch.Tensor,
    second: torch.Tensor,
    epsilon: float,
    cost: str = "euclidean",
    n_iters: int = 100,
    relative_epsilon: bool = True,
) -> torch.Tensor:
    """``s(A, x1) - s(A, x2)`` for videos of frame embeddings ``[B, T, D]``: the logit of
    P(x1 is the one closer to the anchor), ``s = -sum(P* o C)``."""
    s = ot_similarity(
        torch.cat([anchor, anchor]),
        torch.cat([first, second]),
        epsilon,
        cost,
        n_iters,
        normalize_cost=relative_epsilon,
    )
    return s[: len(anchor)] - s[len(anchor) :]


def alignment_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """RAPL's triplet loss: the mean cross-entropy of ``P = sigmoid(logits)`` =
    e^{s(A,x1)} / (e^{s(A,x1)} + e^{s(A,x2)}) with ``target`` (1: x1 ranked above x2; 0.5:
    equally preferred, which pulls P to 0.5 — the equal-preference term)."""
    return nn.functional.binary_cross_entropy_with_logits(logits, target)


class VideoEncoder:
    """The frozen backbone and what feeds it: rendered frames of simulator states and their
    512-d features, cached by state (several reward heads may share one encoder)."""

    def __init__(
        self,
        config: EncoderConfig,
        device: str | torch.device = "cpu",
        env: EnvSpec | None = None,
    ) -> None:
        if env is None:
            raise ConfigError(
                "the RAPL video encoder renders the env's states: give it the run's env "
                "(env=EnvSpec(id, kwargs, camera); a run passes its own)"
            )
        self.config = cfg = config
        self.env = env
        self.device = torch.device(device)
        # features are what is kept (cache_features), not frames
        self.frame_cache = shared_frames(env, cfg.image_size, capacity=0)
        self.backbone, self.info = self._backbone()
        # channels-last: about 2x faster convolutions on CPUs (measured here)
        cast(Any, self.backbone).to(self.device, memory_format=torch.channels_last).eval()
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self._cache: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self.computed = 0  # features computed (not found in the cache)

    # -- the backbone ------------------------------------------------------------------------
    def pretrained_path(self) -> Path:
        """Where a backbone pre-trained here with these settings is saved."""
        cfg = self.config
        view = json.dumps(
            {
                "kwargs": self.env.kwargs,
                "camera": self.env.camera,
                "episodes": cfg.pretrain_episodes,
            },
            sort_keys=True,
            default=str,
        )
        tag = hashlib.sha256(view.encode()).hexdigest()[:8]
        env = re.sub(r"[^A-Za-z0-9]+", "_", self.env.id).strip("_")
        name = f"{env}_{cfg.image_size}px_tv_ae{cfg.pretrain_steps}_s{cfg.pretrain_seed}_{tag}.pt"
        return Path(cfg.pretrain_dir) / name

    def _backbone(self) -> tuple[nn.Module, dict[str, object]]:
        cfg = self.config
        if cfg.backbone_weights:
            return load_backbone(cfg.backbone_weights)
        path = self.pretrained_path()
        if path.is_file():
            log.info("RAPL: using the backbone pre-trained earlier, %s", path)
            return load_backbone(path)
        log.info(
            "RAPL: no reward.backbone_weights; pre-training a backbone on %s frames (%d steps)",
            self.env.id,
            cfg.pretrain_steps,
        )
        # torch's global RNG is left as it was (pre-training seeds it): a run that pre-trains
        # the backbone draws the same triplets and policy as one that finds the file
        with torch.random.fork_rng():
            frames = self.rollout_frames(cfg.pretrain_episodes, cfg.pretrain_seed)
            net, info = pretrain_backbone(
                frames, cfg.pretrain_steps, cfg.pretrain_batch_size, seed=cfg.pretrain_seed
            )
        info["env_id"] = self.env.id
        save_backbone(net, info, path)
        _, loaded = load_backbone(path)  # the record of the saved file (path, digest)
        return drop_classifier(net), loaded

    def rollout_frames(self, episodes: int, seed: int) -> np.ndarray:
        """Frames of the states of ``episodes`` random-action episodes (every
        ``frame_stride``-th state), for pre-training."""
        import gymnasium as gym

        import pbrl.envs  # noqa: F401  (registers pbrl/ environments)

        env = gym.make(self.env.id, **self.env.kwargs)
        env.action_space.seed(seed)
        data = cast("MujocoEnv", env.unwrapped).data
        qpos, qvel = [], []
        for ep in range(max(episodes, 1)):
            env.reset(seed=seed + ep)
            done, t = False, 0
            while not done:
                _, _, terminated, truncated, _ = env.step(env.action_space.sample())
                done = terminated or truncated
                if t % self.config.frame_stride == 0:
                    qpos.append(data.qpos.copy())
                    qvel.append(data.qvel.copy())
                t += 1
        env.close()
        return self.frame_cache.frames(np.array(qpos), np.array(qvel), store=False)

    # -- features ------------------------------------------------------------------------------
    def check_frames(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(frames)
        s = self.config.image_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (s, s, 3) or x.dtype != torch.uint8:
            raise RAPLInputError(
                f"RAPL frames must be uint8 [B, {s}, {s}, 3] (reward.image_size={s}), got "
                f"{x.dtype} {tuple(x.shape)}: render at {s} px or set reward.image_size"
            )
        return x

    @torch.no_grad()
    def frame_features(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Backbone features ``[B, 512]`` of frames ``[B, S, S, 3]`` uint8."""
        x = self.check_frames(frames)
        out = [
            self.backbone(normalize_frames(x[i : i + self.config.feature_batch].to(self.device)))
            for i in range(0, len(x), self.config.feature_batch)
        ]
        self.computed += len(x)
        return torch.cat(out) if out else torch.zeros(0, FEATURE_DIM, device=self.device)

    def state_features(self, qpos: np.ndarray, qvel: np.ndarray) -> torch.Tensor:
        """Features ``[K, 512]`` of simulator states (rendered and computed once each)."""
        qpos = np.ascontiguousarray(qpos, dtype=np.float64)
        qvel = np.ascontiguousarray(qvel, dtype=np.float64)
        keys = [qpos[k].tobytes() + qvel[k].tobytes() for k in range(len(qpos))]
        first_row: dict[bytes, int] = {}
        for row, k in enumerate(keys):
            if k not in self._cache:
                first_row.setdefault(k, row)
        missing = list(first_row)
        if missing:
            rows = list(first_row.values())
            frames = self.frame_cache.frames(qpos[rows], qvel[rows], store=False)
            feats = self.frame_features(frames)
            for k, f in zip(missing, feats, strict=True):
                self._cache[k] = f
            while len(self._cache) > max(self.config.cache_features, len(keys)):
                self._cache.popitem(last=False)
        for k in keys:
            self._cache.move_to_end(k)
        if not keys:
            return torch.zeros(0, FEATURE_DIM, device=self.device)
        return torch.stack([self._cache[k] for k in keys])

    def kept_steps(self, length: int) -> np.ndarray:
        """The steps of a ``length``-step video whose frames the reward sees, ending at the
        last step: ``n_frames`` evenly spaced ones, or else every ``frame_stride``-th one."""
        return kept_steps(length, self.config.frame_stride, self.config.n_frames)

    def video_features(self, segments: Segments) -> torch.Tensor:
        """Features ``[N, T', 512]`` of the states each segment reaches (``qpos[:, 1:]``;
        padded steps hold the last valid state), every ``frame_stride``-th step."""
        if segments.qpos is None or segments.qvel is None:
            raise RAPLInputError("segments carry no qpos/qvel: the RAPL reward renders them")
        if segments.env_id and segments.env_id != self.env.id:
            raise RAPLInputError(
                f"segments are from {segments.env_id}, the RAPL reward renders "
                f"{self.env.id} (env.id)"
            )
        n, t = segments.mask.shape
        steps = np.broadcast_to(np.arange(t), (n, t))
        last = np.maximum(segments.mask.sum(1) - 1, 0)
        steps = np.where(segments.mask, steps, last[:, None])[:, self.kept_steps(t)]
        rows = np.arange(n)[:, None]
        qpos = segments.qpos[rows, steps + 1].reshape(-1, segments.qpos.shape[-1])
        qvel = segments.qvel[rows, steps + 1].reshape(-1, segments.qvel.shape[-1])
        return self.state_features(qpos, qvel).reshape(n, steps.shape[1], FEATURE_DIM)

    def close(self) -> None:
        """Forget the kept features (frames and renderers are the process's)."""
        self._cache.clear()


class RAPLReward(EpisodeReward, nn.Module):
    """RAPL's aligned encoder and OT reward (``align: false``: the un-aligned baseline)."""

    # the reward of a step depends on its whole episode: see pbrl.online.episodic
    demo_features: torch.Tensor  # [K, T', 512] backbone features of the demonstrations

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        config: RAPLConfig | None = None,
        device: str | torch.device = "cpu",
        env: EnvSpec | None = None,
        encoder: VideoEncoder | None = None,
    ) -> None:
        """``env``: the env whose states are rendered (or ``encoder``'s, when one is shared)."""
        super().__init__()
        self.config = cfg = config or RAPLConfig()
        self.obs_dim, self.act_dim = int(obs_dim), int(act_dim)  # kept for the interface
        self.device = torch.device(device)
        self.encoder = encoder if encoder is not None else VideoEncoder(cfg, self.device, env)
        self.env = self.encoder.env
        self.env_id, self.image_size = self.env.id, cfg.image_size
        self.head = nn.Linear(FEATURE_DIM, cfg.embed_dim)
        self.register_buffer("demo_features", torch.zeros(0, 0, FEATURE_DIM))
        self.demos_given = False  # set_demonstrations() was called (else: preferred videos)
        self.to(self.device)
        self.optimizer = torch.optim.Adam(self.head.parameters(), lr=cfg.learning_rate)
        self.prob_batch_size = 256

    def describe(self) -> dict[str, object]:
        return {"backbone": self.backbone_info}

    @property
    def backbone_info(self) -> dict[str, object]:
        """Which backbone this reward uses (file and digest, or how it was pre-trained)."""
        return self.encoder.info

    @property
    def frame_cache(self) -> FrameCache:
        return self.encoder.frame_cache

    # -- embeddings and the reward --------------------------------------------------------------
    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """Frame embeddings: the head's output, or the features themselves (un-aligned)."""
        return self.head(features) if self.config.align else features

    def set_demonstrations(self, segments: Segments) -> None:
        """The preferred demonstrations the reward compares videos with."""
        if len(segments) == 0:
            raise RAPLInputError("set_demonstrations needs at least one segment")
        self.demo_features = self.encoder.video_features(segments).to(self.device)
        self.demos_given = True

    @torch.no_grad()
    def video_rewards(self, features: torch.Tensor) -> torch.Tensor:
        """Per-frame rewards ``[B, T']`` of videos (backbone features ``[B, T', 512]``)
        against the closest demonstration."""
        if self.demo_features.shape[0] == 0:
            raise RuntimeError(
                "the RAPL reward has no demonstration yet: call fit() on labeled triplets "
                "or set_demonstrations()"
            )
        cfg = self.config
        x = self.embed(features.to(self.device))  # [B, T', D]
        d = self.embed(self.demo_features)  # [K, M, D]
        b, k = len(x), len(d)
        xs = x[:, None].expand(b, k, *x.shape[1:])
        ds = d[None].expand(b, k, *d.shape[1:])
        per_step = ot_step_rewards(
            xs, ds, cfg.epsilon, cfg.reward_cost, cfg.sinkhorn_iters, cfg.relative_epsilon
        )
        closest = per_step.sum(-1).argmax(1)  # the largest similarity
        return cfg.reward_scale * per_step[torch.arange(b), closest]

    def segment_returns(self, segments: Segments) -> torch.Tensor:
        """Predicted returns ``[1, N]``: the per-frame rewards summed."""
        return self.video_rewards(self.encoder.video_features(segments)).sum(-1)[None]

    def episode_rewards(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        """Per-step rewards ``[B, T]`` of whole episodes with states ``qpos [B, T + 1, nq]``
        (the reset state, then the state after each step). Each kept frame's reward is spread
        evenly over the steps it stands for (itself and the skipped ones before it)."""
        b, t1, nq = qpos.shape
        t = t1 - 1
        kept = self.encoder.kept_steps(t)
        feats = self.encoder.state_features(
            qpos[:, kept + 1].reshape(-1, nq), qvel[:, kept + 1].reshape(-1, qvel.shape[-1])
        ).reshape(b, len(kept), FEATURE_DIM)
        return spread_to_steps(self.video_rewards(feats).cpu().numpy(), kept, t)

    def video_reward(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Per-frame rewards ``[T']`` of one video given as frames ``[T, S, S, 3]`` uint8."""
        feats = self.encoder.frame_features(frames)[self.encoder.kept_steps(len(frames))]
        return self.video_rewards(feats[None])[0]

    # -- alignment -------------------------------------------------------------------------------
    def triplet_logits(
        self, anchor: torch.Tensor, first: torch.Tensor, second: torch.Tensor
    ) -> torch.Tensor:
        """``s(A, x1) - s(A, x2)`` per triplet, from backbone features ``[B, T', 512]``."""
        cfg = self.config
        return triplet_logits(
            self.embed(anchor),
            self.embed(first),
            self.embed(second),
            cfg.epsilon,
            cfg.train_cost,
            cfg.sinkhorn_iters,
            cfg.relative_epsilon,
        )

    def triplet_loss(
        self, anchor: torch.Tensor, first: torch.Tensor, second: torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor:
        """:func:`alignment_loss` of triplets given as backbone features."""
        return alignment_loss(self.triplet_logits(anchor, first, second), target)

    def triplet_features(self, triplets: Triplets) -> tuple[torch.Tensor, ...]:
        enc = self.encoder
        feats = [enc.video_features(s) for s in (triplets.anchor, triplets.first, triplets.second)]
        target = torch.as_tensor(triplets.target, dtype=torch.float32, device=self.device)
        return (*(f.to(self.device) for f in feats), target)

    def _evaluate(self, t: tuple[torch.Tensor, ...], rows: np.ndarray) -> tuple[float, float]:
        with torch.no_grad():
            idx = torch.as_tensor(rows, device=self.device)
            logits = self.triplet_logits(t[0][idx], t[1][idx], t[2][idx])
            target = t[3][idx]
            loss = alignment_loss(logits, target).item()
            sure = target != 0.5
            acc = ((logits > 0) == (target > 0.5))[sure].float().mean().item()
        return float(loss), float(acc) if sure.any() else float("nan")

    def fit(self, dataset: PreferenceDataset, rng: np.random.Generator) -> dict[str, float]:
        """Align the head on every ranked triplet in ``dataset`` (``epochs`` epochs, the
        head of the best validation epoch kept); the demonstrations become the triplets'
        most preferred videos unless :meth:`set_demonstrations` gave some."""
        cfg = self.config
        triplets, dropped = triplets_from_dataset(dataset)
        if triplets is None:
            return {**NOTHING_TO_FIT, "triplets": 0, "dropped_triplets": dropped}
        if not self.demos_given:
            self.demo_features = self.encoder.video_features(triplets.anchor).to(self.device)
        t = self.triplet_features(triplets)
        n = len(triplets)
        order = rng.permutation(n)
        n_val = int(round(cfg.val_fraction * n)) if n >= 5 else 0
        val, train = order[:n_val], order[n_val:]
        out: dict[str, float] = {"triplets": n, "dropped_triplets": dropped, "epochs": 0}
        if not cfg.align or cfg.epochs == 0:
            all_loss, all_acc = self._evaluate(t, np.arange(n))
            return {**out, "loss": all_loss, "train_accuracy": all_acc, "updates": 0}
        best = (float("inf"), copy.deepcopy(self.head.state_dict()), 0)
        updates = 0
        self.train()
        for epoch in range(1, cfg.epochs + 1):
            perm = train[rng.permutation(len(train))]
            for start in range(0, len(perm), cfg.batch_size):
                idx = torch.as_tensor(perm[start : start + cfg.batch_size], device=self.device)
                loss = self.triplet_loss(t[0][idx], t[1][idx], t[2][idx], t[3][idx])
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                updates += 1
            score = self._evaluate(t, val)[0] if n_val else -epoch  # no validation: the last
            if score < best[0]:
                best = (score, copy.deepcopy(self.head.state_dict()), epoch)
        self.head.load_state_dict(best[1])
        self.eval()
        train_loss, train_acc = self._evaluate(t, train)
        out.update(loss=train_loss, train_accuracy=train_acc, epochs=cfg.epochs, updates=updates)
        out["best_epoch"] = best[2]
        if n_val:
            out["val_loss"], out["val_accuracy"] = self._evaluate(t, val)
        return out

    # -- persistence -------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Config, head, demonstrations and the record of the backbone (its file is named,
        with its digest, not copied: it is read again from there on load)."""
        save_atomically(
            {
                "kind": "rapl",
                "obs_dim": self.obs_dim,
                "act_dim": self.act_dim,
                "config": asdict(self.config),
                "env": self.env.view,
                "backbone": self.backbone_info,
                "head": self.head.state_dict(),
                "demo_features": self.demo_features.cpu(),
                "demos_given": self.demos_given,
                "optimizer": self.optimizer.state_dict(),
            },
            path,
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str | torch.device = "cpu") -> RAPLReward:
        blob: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
        env, config = saved_env(blob)
        backbone = blob["backbone"]
        if backbone.get("path"):
            config["backbone_weights"] = backbone["path"]
        model = cls(blob["obs_dim"], blob["act_dim"], RAPLConfig(**config), device, env)
        digest = model.backbone_info.get("sha256")
        if backbone.get("sha256") and digest != backbone["sha256"]:
            raise ConfigError(
                f"{path}: its backbone file {backbone.get('path')} changed since the reward "
                f"was saved (sha256 {digest} != {backbone['sha256']})"
            )
        model.head.load_state_dict(blob["head"])
        model.demo_features = blob["demo_features"].to(model.device)
        model.demos_given = bool(blob["demos_given"])
        model.optimizer.load_state_dict(blob["optimizer"])
        return model

    def close(self) -> None:
        self.encoder.close()
