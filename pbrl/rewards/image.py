"""An ensemble of small CNN reward models on rendered frames, trained with Bradley–Terry.

RL-VLM-F (Wang et al. 2024) learns the reward from images: a vision-language model compares
two rendered frames, and an ensemble of 3 CNNs ``r̂(o)`` is trained on its labels with the
Bradley–Terry model, then drives PEBBLE + SAC on the state-based policy. This is that
model, as a :class:`~pbrl.rewards.base.FrameReward`:

* ``frame_reward(frames)`` scores frames ``[B, S, S, 3]`` uint8 (the member mean); the
  online loop calls it with the frame of the state reached after each step.
* A segment's score is the sum of ``r̂`` over the frames of the states reached by its valid
  actions (``qpos[:, 1:]``), so P(second ≻ first) = sigmoid(Σ r̂(second) − Σ r̂(first)) as
  for the state ensemble. RL-VLM-F compares single images; with
  ``feedback.segment_length=1`` this is exactly its loss, longer segments give B-Pref's
  partial-return model on frames.
* Each member trains on its own shuffling of the labels (B-Pref); rounds run by
  :func:`~pbrl.rewards.base.fit_epochs`. Per-frame output linear by default, where B-Pref's
  state ensemble (and RL-VLM-F, built on it) bounds it with ``tanh``: on Reacher, tanh
  pressed the rewards of all states near the target together (``output: tanh`` restores it).

Frames come from the process's :class:`~pbrl.envs.render.FrameCache` of the run's env view
(:func:`~pbrl.envs.render.shared_frames`: the env id, its ``gym.make`` arguments and camera
from the :class:`~pbrl.envs.spec.EnvSpec` the model is given), which the online loop renders
into as it steps, so the states of query segments, labeled pairs and the replay buffer are
rendered once. Scores are kept per model version (:class:`ScoreMemo`): a state scored by the
current model — the replay buffer after a relabel, query candidates drawn from it — is not
scored again until the model changes; misses are scored in batches of ``score_batch``.
Pixels are scaled to [-0.5, 0.5].

Image size: 84 px by default (DQN's and DrQ's). On Reacher-v5 with 1000 oracle-labeled pairs
of single frames it needed fewer gradient steps than 64 px (held-out accuracy 0.80 against
0.67-0.70 after 320 steps, 0.86 against 0.83-0.85 after 960) at about twice the cost per frame.
The spatial soft-argmax head (``head: keypoints``: the (x, y) of each feature map's mass,
Levine et al. 2016) generalized better than flattening the feature map (held-out 0.71 against
0.64 after 960 steps at the same learning rate), and DrQ's random shifts added more. Measured
settings: docs/image_reward.md. Give the task's camera (``camera``) so the scene fills the
frame: Reacher's default view is oblique and far, its target a pixel wide; ``conf/env/reacher.yaml``
sets a top-down one (the camera is the env group's, ``env.camera``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from pbrl.data import PreferenceDataset, Segments
from pbrl.data.offline import OfflineDataset
from pbrl.envs.render import FrameCache, reached_states, shared_frames
from pbrl.envs.spec import EnvSpec, saved_env
from pbrl.errors import ConfigError
from pbrl.rewards.base import (
    NOTHING_TO_FIT,
    FrameReward,
    fit_epochs,
    save_atomically,
    trainable_pairs,
)

if TYPE_CHECKING:
    from torch.nn.modules.module import _IncompatibleKeys


@dataclass
class ImageRewardConfig:
    """The model's settings; what it renders (env id, ``gym.make`` arguments, camera) is the
    run's :class:`~pbrl.envs.spec.EnvSpec`, given to the model."""

    image_size: int = 84  # frames are square, this many pixels
    n_members: int = 3  # ensemble size (RL-VLM-F, B-Pref: 3)
    channels: list[int] = field(default_factory=lambda: [16, 32])  # conv layers' widths
    kernels: list[int] = field(default_factory=lambda: [8, 3])
    strides: list[int] = field(default_factory=lambda: [4, 1])
    hidden: int = 128  # units of the fully connected layer after the convolutions
    # "flatten": the feature map into the hidden layer (the DQN/PEBBLE image encoder);
    # "keypoints": a spatial soft-argmax per channel, the (x, y) of each feature map's mass
    head: str = "keypoints"
    # per-frame "linear" or "tanh" (B-Pref's state ensemble: rewards in [-1, 1]; measured on
    # Reacher, tanh squeezes the states near the goal together: docs/image_reward.md)
    output: str = "linear"
    # training frames shifted by up to this many pixels (DrQ's pad-and-crop; 0: off)
    augment_shift: int = 4
    learning_rate: float = 3e-3
    batch_size: int = 64  # labeled pairs per gradient step
    max_epochs: int = 50  # cap on epochs per training round
    acc_threshold: float = 0.97  # stop a round once train accuracy exceeds this
    max_updates: int | None = None  # cap on gradient steps per round (None: no cap)
    weight_decay: float = 0.0
    cache_frames: int = 20_000  # rendered frames kept (LRU; 21 kB each at 84 px)
    score_batch: int = 2048  # frames per forward pass when scoring

    def __post_init__(self) -> None:
        if self.head not in ("flatten", "keypoints"):
            raise ConfigError(f"reward.head={self.head!r}: use 'flatten' or 'keypoints'")
        if self.output not in ("tanh", "linear"):
            raise ConfigError(f"reward.output={self.output!r}: use 'tanh' or 'linear'")
        layers = (len(self.channels), len(self.kernels), len(self.strides))
        if len(set(layers)) != 1 or layers[0] == 0:
            raise ConfigError(
                "reward.channels, reward.kernels and reward.strides need one entry per conv "
                f"layer (got {layers[0]}, {layers[1]} and {layers[2]})"
            )
        for name in ("image_size", "n_members", "hidden", "batch_size", "score_batch"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"reward.{name}={getattr(self, name)} must be positive")
        if self.cache_frames < 0:
            raise ConfigError(f"reward.cache_frames={self.cache_frames} must be >= 0")
        self.channels = [int(c) for c in self.channels]
        self.kernels = [int(k) for k in self.kernels]
        self.strides = [int(s) for s in self.strides]


def renders(env: EnvSpec | None, what: str) -> EnvSpec:
    """``env``, or a ConfigError saying that ``what`` renders the env's states."""
    if env is None:
        raise ConfigError(
            f"{what} renders the env's states: give it the run's env (env=EnvSpec(id, kwargs, "
            "camera); a run passes its own)"
        )
    return env


class ScoreMemo:
    """Scores ``[E]`` per state (the bytes of its ``qpos``/``qvel``), valid for one model
    version: a state already scored by the current version is not scored again; a new
    version forgets them all."""

    def __init__(self) -> None:
        self.version = -1
        self.scores: dict[bytes, np.ndarray] = {}
        self.hits = 0
        self.scored = 0

    LIMIT = 1_000_000  # states kept per version (about 100 B each); then it starts over

    def lookup(self, version: int, keys: list[bytes]) -> tuple[list[np.ndarray | None], int]:
        if version != self.version or len(self.scores) > self.LIMIT:
            self.version, self.scores = version, {}
        got = [self.scores.get(k) for k in keys]
        found = sum(g is not None for g in got)
        self.hits += found
        return got, len(keys) - found


def conv_net(cfg: ImageRewardConfig) -> nn.Sequential:
    """One member: convolutions, a hidden layer, one output per frame ``[B, 3, S, S] -> [B, 1]``."""
    layers: list[nn.Module] = []
    c_in, size = 3, cfg.image_size
    for c, k, s in zip(cfg.channels, cfg.kernels, cfg.strides, strict=True):
        size = (size - k) // s + 1
        if size <= 0:
            raise ConfigError(
                f"reward.image_size={cfg.image_size} is too small for the conv layers "
                f"(kernels {cfg.kernels}, strides {cfg.strides}): raise image_size or shrink them"
            )
        layers += [nn.Conv2d(c_in, c, k, s), nn.LeakyReLU()]
        c_in = c
    if cfg.head == "keypoints":
        layers[-1:] = [SpatialSoftArgmax(size)]  # no activation: the softmax takes logits
        n_features = 2 * c_in
    else:
        layers.append(nn.Flatten())
        n_features = c_in * size * size
    return nn.Sequential(
        *layers,
        nn.Linear(n_features, cfg.hidden),
        nn.LeakyReLU(),
        nn.Linear(cfg.hidden, 1),
    )


class SpatialSoftArgmax(nn.Module):
    """``[B, C, H, W]`` feature maps -> ``[B, 2C]``: the expected (x, y) in [-1, 1] of each
    channel under a softmax over its positions (Levine et al. 2016's keypoint layer)."""

    grid: torch.Tensor

    def __init__(self, size: int) -> None:
        super().__init__()
        lin = torch.linspace(-1.0, 1.0, size)
        y, x = torch.meshgrid(lin, lin, indexing="ij")
        self.register_buffer("grid", torch.stack([x.reshape(-1), y.reshape(-1)], 1))  # [HW, 2]
        self.log_temperature = nn.Parameter(torch.zeros(()))  # learned sharpness (Levine et al.)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        # times exp(-log t) rather than over exp(log t): the same sharpness, a cheaper backward
        logits = x.reshape(b, c, -1) * torch.exp(-self.log_temperature)
        weights = torch.softmax(logits, dim=-1)  # [B, C, HW]
        return (weights @ self.grid).reshape(b, 2 * c)


def random_shift(x: torch.Tensor, pad: int, channels_last: bool = False) -> torch.Tensor:
    """Each image of ``x`` (``[B, C, S, S]``, or ``[B, S, S, C]`` with ``channels_last``, any
    dtype) shifted by up to ``pad`` pixels in x and y, edges replicated (DrQ, Kostrikov et al.
    2020): pixel ``(r, c)`` of the result is pixel ``(r + dy - pad, c + dx - pad)``, clamped to
    the image, of the original."""
    b, s = x.shape[0], x.shape[1 if channels_last else 2]
    dx, dy = torch.randint(0, 2 * pad + 1, (2, b), device=x.device)
    base = torch.arange(s, device=x.device)
    rows = (base + dy[:, None] - pad).clamp_(0, s - 1)  # [B, S]
    cols = (base + dx[:, None] - pad).clamp_(0, s - 1)
    h, w = (0, 1) if channels_last else (1, 2)  # an image's row and column dims
    # two row/column selections per image: on a CPU faster than padding the batch and
    # copying windows, and ~20x faster than gathering every pixel by index
    out = torch.empty_like(x)
    for i in range(b):
        out[i] = x[i].index_select(h, rows[i]).index_select(w, cols[i])
    return out


class ImageRewardEnsemble(FrameReward, nn.Module):
    """The image reward ensemble; ``frame_reward`` is the member mean the policy is trained on."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        config: ImageRewardConfig | None = None,
        device: str | torch.device = "cpu",
        env: EnvSpec | None = None,
    ) -> None:
        super().__init__()
        self.config = cfg = config or ImageRewardConfig()
        self.env = renders(env, "the image reward")
        self.obs_dim, self.act_dim = int(obs_dim), int(act_dim)  # kept for the interface
        self.env_id, self.image_size = self.env.id, cfg.image_size
        self.nets = nn.ModuleList(conv_net(cfg) for _ in range(cfg.n_members))
        self.device = torch.device(device)
        self.to(self.device)
        self.optimizer = torch.optim.Adam(
            self.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay
        )
        self._frames = shared_frames(self.env, cfg.image_size, cfg.cache_frames)
        self.version = 0  # bumped by every change of the weights (fit, load): scores expire
        self.memo = ScoreMemo()

    @property
    def frame_cache(self) -> FrameCache:
        return self._frames

    @property
    def camera(self) -> dict[str, object]:
        return self.env.camera

    # -- scoring -----------------------------------------------------------------------------
    def _pixels(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(frames)
        s = self.image_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (s, s, 3) or x.dtype != torch.uint8:
            raise ValueError(
                f"expected uint8 frames [B, {s}, {s}, 3], got {x.dtype} {tuple(x.shape)}"
            )
        return x.to(self.device).permute(0, 3, 1, 2).float().div_(255.0).sub_(0.5)  # in place

    def _member(self, e: int, x: torch.Tensor) -> torch.Tensor:
        r = self.nets[e](x).squeeze(-1)
        return torch.tanh(r) if self.config.output == "tanh" else r

    def members(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Per-member rewards ``[E, B]`` of frames ``[B, S, S, 3]`` uint8."""
        out = []
        step = self.config.score_batch
        for i in range(0, len(frames), step):
            x = self._pixels(frames[i : i + step])
            out.append(torch.stack([self._member(e, x) for e in range(len(self.nets))]))
        if not out:
            return torch.zeros(len(self.nets), 0, device=self.device)
        return torch.cat(out, dim=1)

    @torch.no_grad()
    def frame_reward(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Ensemble-mean reward ``[B]`` of frames ``[B, S, S, 3]`` uint8 (any device)."""
        self.eval()
        return self.members(frames).mean(0)

    @torch.no_grad()
    def state_members(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        """Per-member rewards ``[E, K]`` of the frames of ``K`` states: states the current
        version scored already come from the memo; the others are rendered (through the
        frame cache) and scored in batches of ``score_batch``."""
        qpos = np.ascontiguousarray(qpos, dtype=np.float64)
        qvel = np.ascontiguousarray(qvel, dtype=np.float64)
        keys = [qpos[k].tobytes() + qvel[k].tobytes() for k in range(len(qpos))]
        got, n_missing = self.memo.lookup(self.version, keys)
        if n_missing:
            # each state once, however often it is asked for (a sample drawn with replacement)
            first: dict[bytes, int] = {}
            for k, g in enumerate(got):
                if g is None:
                    first.setdefault(keys[k], k)
            todo = list(first.values())
            step = self.config.score_batch
            self.eval()
            for i in range(0, len(todo), step):
                rows = todo[i : i + step]
                frames = self.frame_cache.frames(qpos[rows], qvel[rows])
                scores = self.members(frames).float().cpu().numpy()  # [E, B]
                for j, k in enumerate(rows):
                    self.memo.scores[keys[k]] = scores[:, j]
            self.memo.scored += len(todo)
        out = np.empty((len(self.nets), len(keys)), dtype=np.float32)
        for k, g in enumerate(got):
            out[:, k] = self.memo.scores[keys[k]] if g is None else g
        return out

    def state_rewards(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        """Ensemble-mean reward ``[K]`` of the frames of ``K`` states (:meth:`state_members`)."""
        return self.state_members(qpos, qvel).mean(0)

    @torch.no_grad()
    def segment_rewards(self, segments: Segments) -> torch.Tensor:
        """Per-member reward ``[E, N, T]`` of the state reached by each step (0 where padded)."""
        rows, steps, qpos, qvel = reached_states(segments, self.env_id)
        per_step = torch.as_tensor(self.state_members(qpos, qvel), device=self.device)
        out = torch.zeros(len(self.nets), *segments.mask.shape, device=self.device)
        out[:, torch.as_tensor(rows), torch.as_tensor(steps)] = per_step
        return out

    def segment_returns(self, segments: Segments) -> torch.Tensor:
        """Predicted returns ``[E, N]``: per-frame rewards summed over valid steps."""
        return self.segment_rewards(segments).sum(-1)

    def relabel(self, data: OfflineDataset, length: int = 0) -> np.ndarray:
        """Reward of every transition of an offline dataset: ``r̂`` of the frame of the state
        it reached (as online). ``length`` is unused (a frame needs no context)."""
        cache = self.frame_cache
        return cache.relabel(data, self.frame_reward, self.config.score_batch, "an image reward")

    # -- training ----------------------------------------------------------------------------
    def fit(self, dataset: PreferenceDataset, rng: np.random.Generator) -> dict[str, float]:
        """One training round (:func:`~pbrl.rewards.base.fit_epochs`) on every trainable label;
        each member trains on its own shuffling of the labels."""
        cfg = self.config
        data = trainable_pairs(dataset)
        if data is None:
            return dict(NOTHING_TO_FIT)
        q = data.queries
        n = len(data)
        frames, index = self.frame_cache.segment_frames(Segments.concatenate([q.first, q.second]))
        pairs = torch.as_tensor(np.stack([index[:n], index[n:]], axis=1))  # [N, 2, T]
        bank = torch.as_tensor(frames)  # [F, S, S, 3] uint8, on the CPU
        y = torch.as_tensor(data.labels, device=self.device, dtype=torch.float32)
        e = cfg.n_members
        self.train()
        self.version += 1  # the weights change: scores of the old version expire
        return fit_epochs(
            n,
            cfg.batch_size,
            cfg.max_epochs,
            cfg.acc_threshold,
            permute=lambda: np.stack([rng.permutation(n) for _ in range(e)]),  # [E, N]
            step=lambda rows: self._step(bank, pairs, y, torch.as_tensor(rows)),
            max_updates=cfg.max_updates,
        )

    def _step(
        self, bank: torch.Tensor, pairs: torch.Tensor, y: torch.Tensor, rows: torch.Tensor
    ) -> tuple[float, float, float]:
        losses, correct, decided = [], 0.0, 0.0
        for e in range(len(self.nets)):
            idx = pairs[rows[e]]  # [B, 2, T] rows of the bank, -1 where padded
            valid = idx >= 0
            frames = bank[idx[valid]]  # [N, S, S, 3] uint8
            if self.config.augment_shift > 0:  # shifted as bytes: 4x less to move than floats
                frames = random_shift(frames, self.config.augment_shift, channels_last=True)
            x = self._pixels(frames)
            r = self._member(e, x)
            per_step = torch.zeros(idx.shape, device=self.device)
            per_step[valid.to(self.device)] = r
            ret = per_step.sum(-1)  # [B, 2]
            logits = ret[:, 1] - ret[:, 0]
            target = y[rows[e].to(self.device)]
            losses.append(nn.functional.binary_cross_entropy_with_logits(logits, target))
            sure = (target != 0.5).float()
            correct += (((logits > 0).float() == target).float() * sure).sum().item()
            decided += sure.sum().item()
        loss = torch.stack(losses).sum()  # each member's gradient is its own mean loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.item() / len(losses), correct, decided

    def load_state_dict(
        self, state: Mapping[str, object], strict: bool = True, assign: bool = False
    ) -> _IncompatibleKeys:
        """As ``nn.Module``'s; the weights change, so kept scores expire."""
        out = super().load_state_dict(state, strict, assign)
        self.version += 1
        return out

    # -- persistence -------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        save_atomically(
            {
                "kind": "image",
                "obs_dim": self.obs_dim,
                "act_dim": self.act_dim,
                "config": asdict(self.config),
                "env": self.env.view,
                "state": self.state_dict(),
                "optimizer": self.optimizer.state_dict(),
            },
            path,
        )

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], device: str | torch.device = "cpu"
    ) -> ImageRewardEnsemble:
        blob: dict[str, Any] = torch.load(path, map_location=device, weights_only=False)
        env, values = saved_env(blob)
        config = ImageRewardConfig(**values)
        model = cls(blob["obs_dim"], blob["act_dim"], config, device, env)
        model.load_state_dict(blob["state"])
        model.optimizer.load_state_dict(blob["optimizer"])
        return model

    def close(self) -> None:
        """Forget the kept scores (the frames and renderers are the process's, shared)."""
        self.memo = ScoreMemo()
