"""CLIP zero-shot rewards (VLM-RM, Rocamonde et al. 2023): a reward from rendered frames and
a sentence, with no labels.

A frame's CLIP image embedding ``x`` (L2-normalised) is compared with the *goal* ``g``, the
mean of the normalised embeddings of the goal prompts ("a humanoid robot kneeling"). Goal-
baseline regularisation adds baseline prompts ("a humanoid robot"), averaged alike into
``b``: with ``d = g - b`` the projection ``P = α d dᵀ / ‖d‖² + (1 - α) I`` keeps, for
``α = 1``, only the component of ``x - g`` along the goal-baseline direction, and for
``α = 0`` all of it. The reward is ``R = 1 - ½ ‖(x - g) P‖²``; for ``α = 0`` and one goal
prompt it equals the cosine similarity ``cos(x, g)`` (``x`` and ``g`` are unit vectors).

The model is fixed: ``fit`` learns nothing. Frames are preprocessed the way the CLIP model
expects (resize, crop or pad, scale, normalise) in torch, on the whole batch, on the model's
device. The encoder is an open_clip model loaded from a local checkpoint (no download at run
time), or any object with ``encode_image`` and ``encode_text`` plus a tokenizer, passed in.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from pbrl.data import PreferenceDataset, Segments
from pbrl.data.offline import OfflineDataset
from pbrl.envs.render import FrameCache, shared_frames
from pbrl.envs.spec import EnvSpec, saved_env
from pbrl.errors import ConfigError
from pbrl.rewards.base import NOTHING_TO_FIT, FrameReward, ZeroShot, save_atomically
from pbrl.rewards.resnet import import_torchvision

# The normalisation of OpenAI's CLIP, which open_clip uses for its LAION models too; an
# encoder that says otherwise (open_clip's ``visual.preprocess_cfg``) wins.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

FRAMES_IN_MEMORY = 1024  # rendered frames held at once when scoring segments

WEIGHTS_HINT = (
    "on a machine with internet: huggingface-cli download laion/CLIP-ViT-B-32-laion2B-s34B-b79K "
    "open_clip_pytorch_model.bin --local-dir clip (or the repository of another model), then "
    "reward.checkpoint=clip/open_clip_pytorch_model.bin reward.model=ViT-B-32"
)


class ClipEncoder(Protocol):
    """What the reward needs of a CLIP model (open_clip's ``CLIP`` has both methods)."""

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, S, S]`` normalised pixels -> ``[B, D]`` embeddings (any norm)."""
        ...

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokenizer output ``[P, L]`` -> ``[P, D]`` embeddings (any norm)."""
        ...


Tokenizer = Callable[[list[str]], torch.Tensor]


# -- preprocessing -----------------------------------------------------------------------


@dataclass(frozen=True)
class Preprocess:
    """How a CLIP model wants its images (open_clip's ``PreprocessCfg`` at inference)."""

    size: tuple[int, int] = (224, 224)  # (height, width) the encoder takes
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD
    interpolation: str = "bicubic"  # bicubic | bilinear
    resize_mode: str = "shortest"  # shortest: scale + centre crop; longest: scale + pad;
    # squash: stretch to size
    fill: int = 0  # pad value (0..255) for resize_mode=longest

    def __post_init__(self) -> None:
        if self.interpolation not in ("bicubic", "bilinear"):
            raise ValueError(f"interpolation {self.interpolation!r}: use bicubic or bilinear")
        if self.resize_mode not in ("shortest", "longest", "squash"):
            raise ValueError(f"resize_mode {self.resize_mode!r}: use shortest, longest, squash")

    @classmethod
    def of(cls, encoder: object) -> Preprocess:
        """The encoder's own settings: open_clip's ``visual.preprocess_cfg`` (or its older
        ``image_size``/``image_mean``/``image_std`` attributes); CLIP's defaults otherwise."""
        visual = getattr(encoder, "visual", encoder)
        cfg = dict(getattr(visual, "preprocess_cfg", None) or {})
        size = cfg.get("size", getattr(visual, "image_size", 224))
        mean = cfg.get("mean") or getattr(visual, "image_mean", None) or CLIP_MEAN
        std = cfg.get("std") or getattr(visual, "image_std", None) or CLIP_STD
        hw = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
        interpolation = str(cfg.get("interpolation", "bicubic"))
        return cls(
            size=hw,
            mean=tuple(float(m) for m in mean),
            std=tuple(float(s) for s in std),
            # open_clip's "random" (training only) means bicubic at inference
            interpolation="bilinear" if interpolation == "bilinear" else "bicubic",
            resize_mode=str(cfg.get("resize_mode", "shortest")),
            fill=int(cfg.get("fill_color", 0)),
        )


def check_frames(frames: torch.Tensor) -> None:
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames [B, H, W, 3], got shape {tuple(frames.shape)}")
    if frames.dtype != torch.uint8:
        raise ValueError(f"expected uint8 frames (0..255), got {frames.dtype}")


def preprocess(frames: torch.Tensor, pp: Preprocess) -> torch.Tensor:
    """``[B, H, W, 3]`` uint8 -> ``[B, 3, *pp.size]`` float32, normalised, on the frames'
    device: what open_clip's inference transform does to one PIL image, for a whole batch.

    Resizing is antialiased (as PIL's) and the result is rounded and clamped to 0..255 before
    scaling, as the PIL image the reference transform would produce; expect differences of
    about one grey level from PIL's resampler, not more.
    """
    check_frames(frames)
    b, h, w, _ = frames.shape
    th, tw = pp.size
    x = frames.permute(0, 3, 1, 2).float()  # [B, 3, H, W], 0..255
    if pp.resize_mode == "squash":
        new = (th, tw)
    else:
        # keep the aspect ratio; the side that sets the scale (the shorter one relative to
        # the target for "shortest", the longer for "longest") matches exactly, the other
        # is truncated, as torchvision's Resize does
        by_height = (th / h >= tw / w) == (pp.resize_mode == "shortest")
        new = (th, int(w * th / h)) if by_height else (int(h * tw / w), tw)
    if new != (h, w):
        x = nn.functional.interpolate(
            x, size=new, mode=pp.interpolation, align_corners=False, antialias=True
        )
        x = x.round().clamp(0.0, 255.0)
    x = _crop_or_pad(x, th, tw, float(pp.fill))
    mean = torch.tensor(pp.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(pp.std, device=x.device).view(1, 3, 1, 1)
    return (x / 255.0 - mean) / std


def _crop_or_pad(x: torch.Tensor, th: int, tw: int, fill: float) -> torch.Tensor:
    """Centre crop (or pad with ``fill``) ``[B, C, H, W]`` to ``[B, C, th, tw]``."""
    h, w = x.shape[-2:]
    if h < th or w < tw:
        ph, pw = max(th - h, 0), max(tw - w, 0)
        x = nn.functional.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=fill)
        h, w = x.shape[-2:]
    top = int(round((h - th) / 2.0))  # torchvision's CenterCrop offsets
    left = int(round((w - tw) / 2.0))
    return x[..., top : top + th, left : left + tw]


# -- the reward ----------------------------------------------------------------------------


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def projection(goal: torch.Tensor, baseline: torch.Tensor | None, alpha: float) -> torch.Tensor:
    """``P = α d dᵀ / ‖d‖² + (1 - α) I`` with ``d = goal - baseline`` (``[D, D]``)."""
    eye = torch.eye(goal.shape[-1], device=goal.device, dtype=goal.dtype)
    if alpha == 0.0:
        return eye
    if baseline is None:
        raise ConfigError(
            f"reward.alpha={alpha} needs baseline prompts (reward.baseline_prompts): the "
            "projection is onto the goal-baseline direction; or set reward.alpha=0"
        )
    d = goal - baseline
    norm2 = float(d.pow(2).sum())
    if norm2 < 1e-12:
        raise ConfigError(
            "reward.goal_prompts and reward.baseline_prompts give the same CLIP embedding, so "
            "there is no goal-baseline direction: make the prompts differ, or set reward.alpha=0"
        )
    return alpha * torch.outer(d, d) / norm2 + (1.0 - alpha) * eye


def vlm_rm_reward(x: torch.Tensor, goal: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
    """``R = 1 - ½ ‖(x̂ - g) P‖²`` for image embeddings ``x [B, D]`` (normalised here)."""
    y = (unit(x.float()) - goal) @ proj
    return 1.0 - 0.5 * y.pow(2).sum(-1)


@dataclass
class ClipRewardConfig:
    """``conf/reward/clip.yaml``."""

    model: str = "ViT-B-32"  # open_clip model name (open_clip.list_models())
    checkpoint: str = ""  # local open_clip weights file, e.g. open_clip_pytorch_model.bin
    goal_prompts: list[str] = field(default_factory=list)
    baseline_prompts: list[str] = field(default_factory=list)
    alpha: float = 0.5  # goal-baseline regularisation: 0 = plain cosine similarity
    image_size: int = 224  # frames are rendered square, this many pixels
    batch_size: int = 64  # frames per encoder pass
    cache_frames: int = 0  # rendered frames kept for segment_returns (LRU; 150 kB at 224 px)

    def __post_init__(self) -> None:
        self.goal_prompts = _prompts(self.goal_prompts, "goal_prompts")
        self.baseline_prompts = _prompts(self.baseline_prompts, "baseline_prompts")
        if not self.goal_prompts:
            raise ConfigError(
                "reward.goal_prompts is empty: describe the goal, e.g. "
                "reward.goal_prompts='[a humanoid robot kneeling]'"
            )
        if not 0.0 <= float(self.alpha) <= 1.0:
            raise ConfigError(f"reward.alpha={self.alpha} must be in [0, 1]")
        self.alpha = float(self.alpha)
        if self.alpha > 0 and not self.baseline_prompts:
            raise ConfigError(
                f"reward.alpha={self.alpha} needs reward.baseline_prompts (e.g. "
                "'[a humanoid robot]'), or set reward.alpha=0 for the plain CLIP reward"
            )
        for name in ("image_size", "batch_size"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"reward.{name}={getattr(self, name)} must be positive")
        if self.cache_frames < 0:
            raise ConfigError(f"reward.cache_frames={self.cache_frames} must be >= 0")


def _prompts(value: str | Iterable[object] | None, name: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    out = [str(p).strip() for p in value]
    if any(not p for p in out):
        raise ConfigError(f"reward.{name} has an empty prompt: {list(value)}")
    return out


def load_open_clip(
    name: str, checkpoint: str, device: str | torch.device = "cpu"
) -> tuple[ClipEncoder, Tokenizer]:
    """An open_clip model and its tokenizer, weights from a local file (never downloaded)."""
    if not checkpoint:
        raise ConfigError(
            f"reward.checkpoint is not set: CLIP weights come from a local file; {WEIGHTS_HINT}"
        )
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise ConfigError(f"reward.checkpoint={checkpoint}: no such file; {WEIGHTS_HINT}")
    try:
        import_torchvision("reward=clip needs open_clip: pip install 'pbrl[clip]'")
        import open_clip  # the optional clip extra
    except Exception as exc:  # ImportError, or torchvision failing to load its operators
        raise ConfigError(
            f"reward=clip needs open_clip, which could not be imported ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}): pip install 'pbrl[clip]' (it "
            "brings torchvision; use the torchvision build that matches your torch)"
        ) from None
    if name not in open_clip.list_models():
        raise ConfigError(
            f"reward.model={name!r} is not an open_clip model: e.g. ViT-B-32, ViT-L-14, "
            "ViT-bigG-14 (open_clip.list_models() lists all)"
        )
    try:
        # create_model, not create_model_and_transforms: the PIL transforms are not used
        # (frames are preprocessed in torch, in batches); the settings they would use are
        # on model.visual.preprocess_cfg.
        model = open_clip.create_model(name, pretrained=str(path), device=device)
    except (RuntimeError, KeyError, ValueError, OSError) as exc:
        raise ConfigError(
            f"reward.checkpoint={checkpoint} could not be loaded as open_clip {name} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}): check "
            "that reward.model names the checkpoint's architecture"
        ) from None
    model.eval()
    return model, open_clip.get_tokenizer(name)


class ClipReward(ZeroShot, FrameReward, nn.Module):
    """VLM-RM: a fixed reward ``R(frame)`` from a CLIP model and goal/baseline prompts.

    A zero-shot frame reward: ``frame_reward(frames)`` scores rendered frames;
    ``segment_returns`` renders each segment's states after every action (``qpos[:, 1:]``)
    and sums their rewards over valid steps, so query selection and accuracy work unchanged.
    """

    prob_batch_size = 256  # segments per preference_probs pass (rendered in smaller parts)
    goal: torch.Tensor  # buffers
    baseline: torch.Tensor
    proj: torch.Tensor

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        config: ClipRewardConfig,
        device: str | torch.device = "cpu",
        env: EnvSpec | None = None,
        *,
        encoder: ClipEncoder | None = None,
        tokenizer: Tokenizer | None = None,
    ) -> None:
        """``obs_dim``/``act_dim`` are unused (the factory's signature). ``env``: the env
        whose states it renders (its id, ``gym.make`` arguments and camera; without it the
        model scores frames only). ``encoder`` and ``tokenizer`` replace open_clip (both or
        neither); otherwise ``config.model`` is loaded from ``config.checkpoint``."""
        super().__init__()
        self.config = cfg = config
        self.env = env
        self.obs_dim, self.act_dim = int(obs_dim), int(act_dim)
        self.device = torch.device(device)
        self.env_id = env.id if env is not None else ""
        self.image_size = int(cfg.image_size)
        if (encoder is None) != (tokenizer is None):
            raise TypeError("pass both encoder and tokenizer, or neither (open_clip)")
        if encoder is None or tokenizer is None:
            encoder, tokenizer = load_open_clip(cfg.model, cfg.checkpoint, self.device)
        self.encoder = encoder  # a submodule when it is an nn.Module (moves with .to())
        if isinstance(encoder, nn.Module):
            encoder.to(self.device).eval()
            encoder.requires_grad_(False)
        self.pp = Preprocess.of(encoder)
        with torch.no_grad():
            goal = unit(self._text(tokenizer, cfg.goal_prompts)).mean(0)
            baseline = (
                unit(self._text(tokenizer, cfg.baseline_prompts)).mean(0)
                if cfg.baseline_prompts
                else None
            )
        self.register_buffer("goal", goal)
        self.register_buffer("baseline", goal.clone() if baseline is None else baseline)
        self.register_buffer("proj", projection(goal, baseline, cfg.alpha))
        # renders the states it scores; keeps cache_frames of them (0 by default: CLIP's
        # frames are large, 150 kB at 224 px, and a zero-shot run rarely scores a state twice)
        self.frames: FrameCache | None = None
        if env is not None:
            self.frames = shared_frames(env, cfg.image_size, cfg.cache_frames)

    def _text(self, tokenizer: Tokenizer, prompts: Sequence[str]) -> torch.Tensor:
        tokens = tokenizer(list(prompts))
        tokens = tokens.to(self.device) if isinstance(tokens, torch.Tensor) else tokens
        return self.encoder.encode_text(tokens).float()

    # -- rewards -----------------------------------------------------------------------------
    @torch.no_grad()
    def embed(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Unit image embeddings ``[B, D]`` of ``[B, H, W, 3]`` uint8 frames."""
        frames = torch.as_tensor(frames)
        check_frames(frames)
        out = []
        for i in range(0, len(frames), self.config.batch_size):
            chunk = frames[i : i + self.config.batch_size].to(self.device)
            out.append(unit(self.encoder.encode_image(preprocess(chunk, self.pp)).float()))
        if not out:
            return torch.zeros(0, self.goal.shape[0], device=self.device)
        return torch.cat(out)

    @torch.no_grad()
    def frame_reward(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``[B, H, W, 3]`` uint8 frames (any device) -> reward ``[B]`` on the model's device."""
        return vlm_rm_reward(self.embed(frames), self.goal, self.proj)

    @property
    def frame_cache(self) -> FrameCache:
        """The renderer of this reward's frames (keeps ``cache_frames`` of them: 0 by default)."""
        if self.frames is None:
            raise ValueError(
                "ClipReward was given no env: pass env=EnvSpec(...) (a run passes its own)"
            )
        return self.frames

    # -- segments ----------------------------------------------------------------------------
    @property
    def camera(self) -> dict[str, object]:
        """Free-camera overrides the frames are rendered with (the env's)."""
        return dict(self.env.camera) if self.env is not None else {}

    @property
    def env_kwargs(self) -> dict[str, object]:
        """The env's ``gym.make`` arguments for rendering."""
        return dict(self.env.kwargs) if self.env is not None else {}

    @torch.no_grad()
    def segment_returns(self, segments: Segments) -> torch.Tensor:
        """Summed frame rewards ``[1, N]`` of the states reached by each valid action.

        Segments are rendered a few at a time (about ``FRAMES_IN_MEMORY`` frames: 150 MB at
        224 px), each distinct state once."""
        frames_cache = self.frames
        if frames_cache is None:
            raise ValueError(
                "ClipReward was given no env: pass env=EnvSpec(...) (a run passes its own)"
            )
        n, t = segments.mask.shape
        out = torch.zeros(n, device=self.device)
        rows_per_pass = max(1, FRAMES_IN_MEMORY // max(t, 1))
        for start in range(0, n, rows_per_pass):
            rows = np.arange(start, min(start + rows_per_pass, n))
            part = segments if len(rows) == n else segments[rows]
            frames, index = frames_cache.segment_frames(part)
            per_frame = self.frame_reward(frames)
            per_step = torch.zeros(index.shape, device=self.device)
            valid = index >= 0
            per_step[torch.as_tensor(valid, device=self.device)] = per_frame[
                torch.as_tensor(index[valid], device=self.device)
            ]
            out[start : start + len(rows)] = per_step.sum(-1)
        return out[None]

    @torch.no_grad()
    def relabel(self, data: OfflineDataset, length: int = 0) -> np.ndarray:
        """Reward of every transition of an offline dataset: the frame reward of the state it
        reached (as online). ``length`` is unused (a frame needs no context)."""
        if self.frames is None:
            raise ValueError(
                "ClipReward was given no env: pass env=EnvSpec(...) (a run passes its own)"
            )
        return self.frames.relabel(data, self.frame_reward, self.config.batch_size, "a CLIP reward")

    # -- the rest of RewardModel ----------------------------------------------------------------
    def fit(self, dataset: PreferenceDataset, rng: np.random.Generator) -> dict[str, float]:
        """Nothing to learn (zero-shot): no epochs, NaN loss and accuracy."""
        return dict(NOTHING_TO_FIT)

    def close(self) -> None:
        """Nothing to free: frames and renderers are the process's (pbrl.envs.render)."""

    def save(self, path: str | os.PathLike[str]) -> None:
        """The config only (the weights stay in ``config.checkpoint``), and the goal
        embedding, so a reload with other weights is caught."""
        blob = {
            "kind": "clip",
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "config": asdict(self.config),
            "env": None if self.env is None else self.env.view,
            "goal": self.goal.cpu(),
        }
        save_atomically(blob, path)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        device: str | torch.device = "cpu",
        *,
        encoder: ClipEncoder | None = None,
        tokenizer: Tokenizer | None = None,
    ) -> ClipReward:
        blob: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
        env, values = saved_env(blob)
        config = ClipRewardConfig(**values)
        model = cls(
            blob["obs_dim"], blob["act_dim"], config, device, env,
            encoder=encoder, tokenizer=tokenizer,
        )  # fmt: skip
        saved = blob["goal"].to(model.device)
        cos = float(torch.dot(unit(saved), unit(model.goal)))
        if not math.isclose(cos, 1.0, abs_tol=1e-3):
            raise ConfigError(
                f"{path}: the CLIP weights now give another goal embedding (cosine {cos:.3f} "
                f"with the saved one): reward.checkpoint={config.checkpoint} is not the file "
                "this run started with"
            )
        return model


__all__ = [
    "ClipEncoder",
    "ClipReward",
    "ClipRewardConfig",
    "Preprocess",
    "load_open_clip",
    "preprocess",
    "projection",
    "vlm_rm_reward",
]
