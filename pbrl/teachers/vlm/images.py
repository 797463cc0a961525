"""The images a vision-language model teacher is shown: rendered from a segment's stored state.

RL-VLM-F (Wang et al. 2024) shows the VLM the last frame of each segment. Here the frames are
chosen by :class:`ImageSpec`:

* ``last`` (the paper's): the state reached by the segment's last valid action, one image;
* ``k``: ``num_frames`` states evenly spaced over the segment (first and last included), sent
  as that many separate images;
* ``strip``: the same ``num_frames`` states side by side as one image (time runs left to right).

MuJoCo segments are re-rendered from ``qpos``/``qvel`` through the process's shared renderer
of the run's env (:func:`pbrl.envs.render.shared_frames`: its ``gym.make`` arguments and the
env group's camera, ``camera:`` in ``conf/env/*.yaml``, the one the frame rewards use; e.g.
Reacher from above, where the default view shows the target a few pixels wide).
The two classic-control tasks pbrl configures (``pbrl/Pendulum-v1``,
``pbrl/MountainCarContinuous-v0``) have no MuJoCo state and gymnasium draws them with pygame,
which pbrl does not depend on: they are drawn here from the observation (which is their whole
state) with numpy, in the spirit of gymnasium's pictures (same colours and geometry).

Images are PNG bytes: what is sent, and what the answer cache hashes. An OpenGL context
belongs to one thread: use an :class:`SegmentImager` from the thread that created it.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from pbrl.data import Segments
from pbrl.envs.render import close_renderers, shared_frames
from pbrl.envs.spec import EnvSpec
from pbrl.errors import ConfigError

FRAME_MODES = ("last", "k", "strip")


@dataclass(frozen=True)
class ImageSpec:
    frames: str = "last"  # last | k | strip
    num_frames: int = 4  # frames of `k` and `strip`
    size: int = 224  # pixels per frame (square)

    def __post_init__(self) -> None:
        if self.frames not in FRAME_MODES:
            raise ConfigError(
                f"teacher.frames={self.frames!r}: choose one of {', '.join(FRAME_MODES)}"
            )
        if self.frames != "last" and not 2 <= int(self.num_frames) <= 16:
            raise ConfigError(f"teacher.num_frames={self.num_frames}: use 2..16 frames")
        if not 32 <= int(self.size) <= 2048:
            raise ConfigError(f"teacher.size={self.size}: use 32..2048 pixels")

    @property
    def images_per_segment(self) -> int:
        return int(self.num_frames) if self.frames == "k" else 1

    @property
    def frames_per_segment(self) -> int:
        return 1 if self.frames == "last" else int(self.num_frames)


def state_indices(mask_row: np.ndarray, spec: ImageSpec) -> np.ndarray:
    """Which of a segment's ``T + 1`` stored states to show. States after the episode ended
    are never shown: the last one shown is the state reached by the last valid action."""
    valid = np.flatnonzero(mask_row)
    last = int(valid[-1]) + 1 if len(valid) else 0
    if spec.frames == "last":
        return np.array([last])
    return np.round(np.linspace(0, last, int(spec.num_frames))).astype(int)


def encode_png(frame: np.ndarray) -> bytes:
    """Lossless, deterministic PNG bytes of an ``[H, W, 3]`` uint8 frame."""
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8)).save(
        out, format="PNG", compress_level=6
    )
    return out.getvalue()


# -- classic control, drawn with numpy ---------------------------------------------------------


def _fill(img: np.ndarray, inside: np.ndarray, color: tuple[int, int, int]) -> None:
    img[inside] = color


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres in world-free units: x right, y up, both in [0, 1)."""
    c = (np.arange(size) + 0.5) / size
    x, y = np.meshgrid(c, c[::-1])
    return x, y


def _segment_mask(
    x: np.ndarray, y: np.ndarray, p0: tuple[float, float], p1: tuple[float, float], width: float
) -> np.ndarray:
    px, py = x - p0[0], y - p0[1]
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    t = np.clip((px * dx + py * dy) / max(dx * dx + dy * dy, 1e-12), 0.0, 1.0)
    return (px - t * dx) ** 2 + (py - t * dy) ** 2 <= (width / 2) ** 2


def draw_pendulum(obs: np.ndarray, size: int) -> np.ndarray:
    """gymnasium's Pendulum picture: a red rod from a black pivot; θ = 0 points up."""
    theta = math.atan2(float(obs[1]), float(obs[0]))
    x, y = _grid(size)
    img = np.full((size, size, 3), 255, dtype=np.uint8)
    tip = (0.5 - 0.4 * math.sin(theta), 0.5 + 0.4 * math.cos(theta))
    _fill(img, _segment_mask(x, y, (0.5, 0.5), tip, 0.08), (204, 77, 77))
    _fill(img, (x - 0.5) ** 2 + (y - 0.5) ** 2 <= 0.025**2, (0, 0, 0))
    return img


def draw_mountain_car(obs: np.ndarray, size: int) -> np.ndarray:
    """gymnasium's MountainCar picture: the hill sin(3x), the car on it, the flag at 0.45."""
    lo, hi = -1.2, 0.6

    def height(pos: float | np.ndarray) -> np.ndarray:
        return np.sin(3 * np.asarray(pos)) * 0.45 + 0.55

    def to_px(pos: float | np.ndarray) -> np.ndarray:  # world x -> [0, 1)
        return (np.asarray(pos) - lo) / (hi - lo)

    def to_py(h: float | np.ndarray) -> np.ndarray:  # world height -> [0, 1)
        return 0.1 + 0.75 * np.asarray(h) / 1.1

    x, y = _grid(size)
    img = np.full((size, size, 3), 255, dtype=np.uint8)
    xs = np.linspace(lo, hi, 60)
    for a, b in zip(xs[:-1], xs[1:], strict=True):
        p0 = (float(to_px(a)), float(to_py(height(a))))
        p1 = (float(to_px(b)), float(to_py(height(b))))
        _fill(img, _segment_mask(x, y, p0, p1, 0.012), (0, 0, 0))
    flag_x, flag_y = float(to_px(0.45)), float(to_py(height(0.45)))
    _fill(img, _segment_mask(x, y, (flag_x, flag_y), (flag_x, flag_y + 0.12), 0.01), (0, 0, 0))
    pennant = (x >= flag_x) & (x <= flag_x + 0.06) & (y >= flag_y + 0.08) & (y <= flag_y + 0.12)
    _fill(img, pennant, (204, 204, 0))
    pos = float(np.clip(obs[0], lo, hi))
    slope = math.atan(3 * 0.45 * math.cos(3 * pos) * (0.75 / 1.1) / (1.0 / (hi - lo)))
    cx, cy = float(to_px(pos)), float(to_py(height(pos)))
    nx, ny = -math.sin(slope), math.cos(slope)  # the hill's normal: the car sits on top
    body = (cx + 0.035 * nx, cy + 0.035 * ny)
    half = (0.05 * math.cos(slope), 0.05 * math.sin(slope))
    _fill(
        img,
        _segment_mask(
            x,
            y,
            (body[0] - half[0], body[1] - half[1]),
            (body[0] + half[0], body[1] + half[1]),
            0.045,
        ),
        (0, 0, 0),
    )
    for sign in (-1, 1):  # wheels
        wx = cx + sign * 0.035 * math.cos(slope) + 0.012 * nx
        wy = cy + sign * 0.035 * math.sin(slope) + 0.012 * ny
        _fill(img, (x - wx) ** 2 + (y - wy) ** 2 <= 0.014**2, (128, 128, 128))
    return img


CLASSIC_DRAWERS: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "pbrl/Pendulum-v1": draw_pendulum,
    "Pendulum-v1": draw_pendulum,
    "pbrl/MountainCarContinuous-v0": draw_mountain_car,
    "MountainCarContinuous-v0": draw_mountain_car,
}


def check_renderable(env: EnvSpec) -> None:
    """A :class:`ConfigError` unless segments of ``env`` can be shown to a VLM."""
    env_id = env.id
    if env_id in CLASSIC_DRAWERS:
        return
    state_dims = env.state_dims
    if env.obs_dim == 0:  # a spec made by hand, not probed
        from pbrl.sim.probe import probe_env

        try:
            state_dims = probe_env(env_id, dict(env.kwargs)).state_dims
        except Exception as exc:  # an unknown id, bad kwargs: named by gymnasium
            raise ConfigError(f"teacher=vlm: cannot make {env_id!r} to render it: {exc}") from None
    if state_dims is None:
        raise ConfigError(
            f"teacher=vlm cannot render {env_id}: it re-renders MuJoCo states (qpos/qvel) or "
            f"draws {', '.join(sorted(CLASSIC_DRAWERS))}; use one of those envs"
        )


class SegmentImager:
    """Renders segments to the PNG images a VLM is shown, through the calling thread's shared
    renderer of the env (``env``'s ``gym.make`` arguments and camera; the segments name the
    env id)."""

    def __init__(self, spec: ImageSpec, env: EnvSpec | None = None) -> None:
        self.spec = spec
        self.env = env

    def _frames(self, segments: Segments, i: int) -> list[np.ndarray]:
        idx = state_indices(segments.mask[i], self.spec)
        size = int(self.spec.size)
        drawer = CLASSIC_DRAWERS.get(segments.env_id)
        if drawer is not None:
            # obs[t] is the state before action t; final_obs the state after the last valid one
            valid = np.flatnonzero(segments.mask[i])
            final = int(valid[-1]) + 1 if len(valid) else 0
            return [
                drawer(segments.final_obs[i] if t == final else segments.obs[i, t], size)
                for t in idx
            ]
        if segments.qpos is None or segments.qvel is None:
            raise ConfigError(
                f"segments of {segments.env_id or 'an unnamed env'} carry no qpos/qvel, so the "
                "VLM teacher cannot render them (it needs a MuJoCo env or a pbrl classic task)"
            )
        if not segments.env_id:
            raise ConfigError("segments carry no env_id: the VLM teacher cannot render them")
        env = self.env
        view = EnvSpec(
            segments.env_id,
            dict(env.kwargs) if env is not None else {},
            dict(env.camera) if env is not None else {},
        )
        frames = shared_frames(view, size).frames(segments.qpos[i, idx], segments.qvel[i, idx])
        return list(frames)

    def images(self, segments: Segments, i: int) -> list[bytes]:
        """PNG bytes of what is shown for segment row ``i`` (one image, or ``num_frames``)."""
        frames = self._frames(segments, i)
        if self.spec.frames == "strip":
            gap = np.full((frames[0].shape[0], 4, 3), 255, dtype=np.uint8)
            row: list[np.ndarray] = []
            for f in frames:
                row += [f, gap]
            images = [encode_png(np.concatenate(row[:-1], axis=1))]
        else:
            images = [encode_png(f) for f in frames]
        return images

    def all_images(self, segments: Segments) -> list[list[bytes]]:
        return [self.images(segments, i) for i in range(len(segments))]

    def close(self) -> None:
        """Close this thread's shared renderers (call it from a render thread of its own
        that renders no more: other users in the thread would lose theirs)."""
        close_renderers()


def render_segment_images(
    segments: Segments, spec: ImageSpec | None = None, env: EnvSpec | None = None
) -> list[list[bytes]]:
    """The images of every segment row, rendered in the calling thread with its shared
    renderer (e.g. to register an oracle score per image with the mock server)."""
    return SegmentImager(spec or ImageSpec(), env).all_images(segments)
