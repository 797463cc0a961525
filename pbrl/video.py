"""Render MuJoCo states to frames and write browser-playable videos.

Segments store the simulator state (``qpos``/``qvel``) of every step, so a clip can be
re-rendered long after the environment that produced it is gone: :class:`StateRenderer`
owns its own environment, sets each stored state and renders it. The labeling page uses it
to show query pairs; :func:`record_episode` writes evaluation videos with the same camera.

Rendering is software OpenGL on headless machines (``import pbrl`` sets ``MUJOCO_GL=egl``);
:func:`fast_render_quality` makes it several times faster at no visible cost for small clips.
An OpenGL context belongs to one thread: use a renderer from the thread that created it
(:func:`get_renderer` caches one per thread).
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import gymnasium as gym
import imageio_ffmpeg
import mujoco
import numpy as np

from pbrl.data.segments import Segments

if TYPE_CHECKING:
    from gymnasium.envs.mujoco.mujoco_env import MujocoEnv
    from gymnasium.envs.mujoco.mujoco_rendering import OffScreenViewer

Codec = Literal["h264", "vp9"]
Frames = np.ndarray | Sequence[np.ndarray]

_CODECS: dict[str, tuple[str, str, list[str]]] = {
    # codec -> (ffmpeg encoder, container, encoder options)
    "h264": ("libx264", "mp4", ["-preset", "veryfast", "-crf", "23", "-movflags", "+faststart"]),
    "vp9": (
        "libvpx-vp9",
        "webm",
        ["-crf", "38", "-b:v", "0", "-deadline", "realtime", "-cpu-used", "8", "-row-mt", "1"],
    ),
}


def fast_render_quality(model: mujoco.MjModel) -> None:
    """Cheaper shadows and no multisampling (~3.5x faster software rendering).

    Takes effect only when the rendering context is created: call before the first render.
    """
    model.vis.quality.shadowsize = 1024
    model.vis.quality.offsamples = 0


def _translates(model: mujoco.MjModel) -> bool:
    """Whether the first robot body moves through the world (free or slide root joint)."""
    if model.nbody < 2 or model.body_jntnum[1] == 0:
        return False
    joint_type = int(model.jnt_type[model.body_jntadr[1]])
    return joint_type in (int(mujoco.mjtJoint.mjJNT_FREE), int(mujoco.mjtJoint.mjJNT_SLIDE))


class StateRenderer:
    """Renders stored simulator states of one gymnasium MuJoCo environment.

    ``camera_id=None`` uses the environment's default free camera; with ``follow`` (the
    default for robots that move through the world) the camera's look-at point follows the
    robot's centre of mass horizontally, so late parts of an episode stay in view. The
    camera is a function of the rendered state only, never of what was rendered before.
    An integer ``camera_id`` selects a camera of the model (``follow`` is then ignored).
    """

    def __init__(
        self,
        env_id: str,
        width: int = 240,
        height: int = 240,
        camera_id: int | None = None,
        follow: bool | None = None,
        **env_kwargs: Any,
    ) -> None:
        self.env_id = env_id
        self.width, self.height = int(width), int(height)
        self.env = gym.make(
            env_id,
            render_mode="rgb_array",
            width=self.width,
            height=self.height,
            camera_id=camera_id,
            **env_kwargs,
        )
        self._mj = cast("MujocoEnv", self.env.unwrapped)
        fast_render_quality(self._mj.model)
        # A fixed seed makes the default camera (placed at the first rendered state) the same
        # for every renderer of this environment.
        self.env.reset(seed=0)
        self.env.render()  # creates the OpenGL context and the camera
        # render() above created it (gymnasium types the attribute as None until then)
        self._viewer = cast("OffScreenViewer", self._mj.mujoco_renderer.viewer)
        if follow is None:
            follow = _translates(self._mj.model)
        self.follow = bool(follow) and camera_id is None
        fps = self.env.metadata.get("render_fps")
        self.fps: float | None = float(fps) if fps else None
        self._closed = False

    @property
    def model(self) -> mujoco.MjModel:
        """The renderer's own MuJoCo model (its visual settings, e.g. geom colours, may be
        changed: the renderer only sets states and draws them)."""
        return self._mj.model

    @property
    def camera(self) -> mujoco.MjvCamera:
        """The camera drawn from (``distance``, ``elevation``, ``azimuth``, ``lookat``)."""
        return self._viewer.cam

    @property
    def nq(self) -> int:
        return int(self._mj.model.nq)

    @property
    def nv(self) -> int:
        return int(self._mj.model.nv)

    def frame(self) -> np.ndarray:
        """Render the environment's current state (``self.env`` stepped live): ``[H, W, 3]``.

        Runs ``mj_forward`` first: after ``mj_step`` MuJoCo's body positions lag ``qpos`` by
        one physics substep, and the frame must show the state a segment stores. This does
        not change the simulation (checked bit-for-bit on HalfCheetah, Hopper, Ant, Humanoid).
        """
        mujoco.mj_forward(self._mj.model, self._mj.data)
        return self._draw()

    def _draw(self) -> np.ndarray:
        if self._closed:
            raise RuntimeError("StateRenderer is closed")
        self._viewer.make_context_current()  # another renderer may own the current context
        if self.follow:
            self._viewer.cam.lookat[:2] = self._mj.data.subtree_com[1, :2]
        return np.ascontiguousarray(self.env.render(), dtype=np.uint8)

    def render(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        """Set the simulator state (runs ``mj_forward``) and render it: ``[H, W, 3]`` uint8."""
        qpos = np.asarray(qpos, dtype=np.float64)
        qvel = np.asarray(qvel, dtype=np.float64)
        if qpos.shape != (self.nq,) or qvel.shape != (self.nv,):
            raise ValueError(
                f"{self.env_id}: expected qpos ({self.nq},) and qvel ({self.nv},), "
                f"got {qpos.shape} and {qvel.shape}"
            )
        self._mj.set_state(qpos, qvel)
        return self._draw()

    def render_sequence(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        """Render ``K`` states (``qpos [K, nq]``, ``qvel [K, nv]``): ``[K, H, W, 3]`` uint8."""
        if len(qpos) != len(qvel):
            raise ValueError(f"{len(qpos)} qpos rows but {len(qvel)} qvel rows")
        frames = np.empty((len(qpos), self.height, self.width, 3), dtype=np.uint8)
        for k in range(len(qpos)):
            frames[k] = self.render(qpos[k], qvel[k])
        return frames

    def close(self) -> None:
        """Free the GL resources (with this renderer's context current) and close the env.

        Gymnasium leaves the ``MjrContext`` to the garbage collector, whose ``mjr_freeContext``
        then runs in whatever context is current and deletes another renderer's framebuffers
        (it renders black from then on). Freeing it here, in its own context, avoids that.
        """
        if self._closed:
            return
        self._closed = True
        try:
            self._viewer.make_context_current()
            self._viewer.con.free()
        finally:
            self.env.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: EGL may already be gone
            pass

    def __enter__(self) -> StateRenderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# (thread, env_id, width, height, camera_id) -> its renderer
_cache: dict[tuple[int, str, int, int, int | None], StateRenderer] = {}
_cache_lock = threading.Lock()


def get_renderer(
    env_id: str, width: int = 240, height: int = 240, camera_id: int | None = None
) -> StateRenderer:
    """A cached :class:`StateRenderer` per (thread, env_id, size, camera)."""
    key = (threading.get_ident(), env_id, int(width), int(height), camera_id)
    with _cache_lock:
        renderer = _cache.get(key)
        if renderer is None or renderer._closed:
            renderer = _cache[key] = StateRenderer(env_id, width, height, camera_id)
        return renderer


def close_renderers() -> None:
    """Close every cached renderer created by this thread."""
    me = threading.get_ident()
    with _cache_lock:
        for key in [k for k in _cache if k[0] == me]:
            _cache.pop(key).close()


# -- segments ----------------------------------------------------------------------------


def segment_frames(segments: Segments, i: int, renderer: StateRenderer) -> np.ndarray:
    """The ``T + 1`` frames of segment row ``i``: ``[T + 1, H, W, 3]`` uint8.

    States after the episode ended (``mask`` False) are not rendered: the state reached by
    the last valid action is held instead, so every clip of a batch has the same length.
    """
    if segments.qpos is None or segments.qvel is None:
        raise ValueError("segments carry no qpos/qvel: they cannot be re-rendered")
    if segments.env_id and segments.env_id != renderer.env_id:
        raise ValueError(f"segments are from {segments.env_id}, renderer is {renderer.env_id}")
    valid = np.flatnonzero(segments.mask[i])
    shown = int(valid[-1]) + 2 if len(valid) else 1  # states 0..last valid step + 1
    frames = renderer.render_sequence(segments.qpos[i, :shown], segments.qvel[i, :shown])
    return _hold_last(frames, segments.length + 1)


def _hold_last(frames: np.ndarray, length: int) -> np.ndarray:
    if len(frames) >= length:
        return frames
    pad = np.repeat(frames[-1:], length - len(frames), axis=0)
    return np.concatenate([frames, pad])


def side_by_side(
    frames_a: Frames, frames_b: Frames, gap: int = 8, gap_value: int = 255
) -> np.ndarray:
    """Two clips next to each other, separated by ``gap`` columns of ``gap_value``.

    The shorter clip holds its last frame; both clips must have the same frame height.
    """
    a, b = _as_frames(frames_a), _as_frames(frames_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"frame heights differ: {a.shape[1]} and {b.shape[1]}")
    length = max(len(a), len(b))
    a, b = _hold_last(a, length), _hold_last(b, length)
    sep = np.full((length, a.shape[1], gap, 3), gap_value, dtype=np.uint8)
    return np.concatenate([a, sep, b], axis=2)


def write_segment_video(
    segments: Segments,
    i: int,
    path: str | os.PathLike[str],
    renderer: StateRenderer,
    fps: float | None = None,
    codec: Codec = "h264",
) -> Path:
    """Write the clip of segment row ``i`` (at the env's ``render_fps`` unless given)."""
    frames = segment_frames(segments, i, renderer)
    return write_video(frames, path, fps=clip_fps(fps, renderer), codec=codec)


def write_pair_video(
    first: Segments,
    second: Segments,
    i: int,
    path: str | os.PathLike[str],
    renderer: StateRenderer,
    fps: float | None = None,
    codec: Codec = "h264",
    gap: int = 8,
) -> Path:
    """Write query pair ``i`` as one video: ``first[i]`` on the left, ``second[i]`` right."""
    frames = side_by_side(
        segment_frames(first, i, renderer), segment_frames(second, i, renderer), gap=gap
    )
    return write_video(frames, path, fps=clip_fps(fps, renderer), codec=codec)


def clip_fps(fps: float | None, renderer: StateRenderer) -> float:
    """The clip's frame rate: ``fps`` if given, else the env's ``render_fps`` (ValueError if none)."""
    if fps is not None:
        return float(fps)
    if renderer.fps is None:
        raise ValueError(f"{renderer.env_id} declares no render_fps: pass fps")
    return renderer.fps


# -- encoding ----------------------------------------------------------------------------


def _as_frames(frames: Frames) -> np.ndarray:
    array = np.asarray(frames)
    if array.ndim != 4 or array.shape[-1] != 3 or len(array) == 0:
        raise ValueError(f"expected frames [K, H, W, 3] with K > 0, got shape {array.shape}")
    if array.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames, got {array.dtype}")
    return array


def write_video(
    frames: Frames, path: str | os.PathLike[str], fps: float, codec: Codec = "h264"
) -> Path:
    """Encode ``[K, H, W, 3]`` uint8 frames as H.264 MP4 or VP9 WebM (yuv420p); return path.

    Odd frame sizes are padded by one edge row/column (yuv420p needs even sizes). The file is
    written under a temporary name in the same folder and then renamed, so readers never see
    a partial video and a failed write leaves any previous file untouched.
    """
    if codec not in _CODECS:
        raise ValueError(f"unknown codec {codec!r}: use one of {sorted(_CODECS)}")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    array = _as_frames(frames)
    _, h, w, _ = array.shape
    if h % 2 or w % 2:
        array = np.pad(array, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    encoder, container, options = _CODECS[codec]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        writer = imageio_ffmpeg.write_frames(
            tmp,
            (array.shape[2], array.shape[1]),
            fps=fps,
            codec=encoder,
            pix_fmt_out="yuv420p",
            quality=None,
            macro_block_size=1,
            ffmpeg_log_level="error",
            output_params=[*options, "-f", container],
        )
        writer.send(None)  # start ffmpeg
        for frame in array:
            writer.send(np.ascontiguousarray(frame))
        writer.close()
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a web server may read the video
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


# -- evaluation videos -------------------------------------------------------------------


def record_episode(
    env_id: str,
    policy_fn: Callable[[np.ndarray], np.ndarray],
    seed: int,
    path: str | os.PathLike[str],
    max_steps: int = 1000,
    width: int = 240,
    height: int = 240,
    fps: float | None = None,
    codec: Codec = "h264",
    **env_kwargs: Any,
) -> tuple[float, Path]:
    """Run one episode with ``policy_fn(obs) -> action`` and write its video.

    Renders the reset state and the state after every step (at most ``max_steps`` steps, or
    fewer if the environment's time limit ends the episode first). Returns the episode's
    return and the video path.
    """
    with StateRenderer(env_id, width, height, **env_kwargs) as renderer:
        env = renderer.env
        obs, _ = env.reset(seed=seed)
        frames = [renderer.frame()]
        total = 0.0
        for _ in range(max_steps):
            obs, reward, terminated, truncated, _ = env.step(policy_fn(obs))
            total += float(reward)
            frames.append(renderer.frame())
            if terminated or truncated:
                break
        out = write_video(np.stack(frames), path, fps=clip_fps(fps, renderer), codec=codec)
    return total, out
