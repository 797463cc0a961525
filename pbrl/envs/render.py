"""One offscreen renderer per process, and frames of simulator states rendered once.

Everything in a run that draws stored MuJoCo states — frame rewards (image CNN, CLIP), RAPL's
and the linear-head reward's video encoder, the VLM teacher's images — renders through here:

* :func:`shared_renderer` hands out one :class:`~pbrl.video.StateRenderer` per (env id,
  ``gym.make`` arguments, size, camera) and thread (an OpenGL context belongs to the thread that
  made it), so two users of the same view in a process draw with the same renderer.
* :func:`shared_frames` hands out one :class:`FrameCache` per (env id, arguments, camera, size):
  a state rendered while stepping is served from memory to query selection, reward training,
  relabeling and the teacher, whoever asks first. It lives while someone holds it.

The env facts come from the run's :class:`~pbrl.envs.spec.EnvSpec` (id, kwargs, camera), never
from a reward's or teacher's config.

Rendering is the cost (software OpenGL here: ~1 ms a frame at 64 px), and the same states come
back again and again: a state reached online is scored as the agent steps, then appears in many
candidate query segments (windows overlap), in the labeled pairs every training epoch, and in
PEBBLE's relabeling of the replay buffer. :class:`FrameCache` keys each frame by the bytes of
its ``(qpos, qvel)`` — rendering is a function of the state alone (the renderer places the
camera from the rendered state only) — and keeps the most recently used ``capacity`` frames
(LRU) in one uint8 array. Whatever asks for frames asks for a whole batch; the misses are
rendered in one pass.
"""

from __future__ import annotations

import json
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from pbrl.data import Segments
from pbrl.envs.spec import check_camera
from pbrl.errors import ConfigError

if TYPE_CHECKING:  # MuJoCo and ffmpeg load when the first frame is rendered
    import torch

    from pbrl.data.offline import OfflineDataset
    from pbrl.envs.spec import EnvSpec
    from pbrl.video import StateRenderer


def apply_camera(renderer: StateRenderer, camera: Mapping[str, object] | None) -> None:
    """Set a renderer's free camera (before rendering; a following camera still moves its
    look-at point horizontally with the robot)."""
    cam = renderer.camera
    for key, value in check_camera(camera).items():
        if key == "lookat":
            cam.lookat[:] = value
        else:
            setattr(cam, key, value)


def reached_states(
    segments: Segments, env_id: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``rows, steps`` of every valid step of ``segments`` and the state it reached
    (``qpos[rows, steps + 1]``, ``qvel[...]``): what a frame reward renders. Segments without
    simulator states, or of another env than ``env_id``, are a ValueError."""
    if segments.qpos is None or segments.qvel is None:
        raise ValueError("segments carry no qpos/qvel: a frame reward renders them")
    if segments.env_id and segments.env_id != env_id:
        raise ValueError(f"segments are from {segments.env_id}, frames are of {env_id}")
    rows, steps = np.nonzero(segments.mask)
    return rows, steps, segments.qpos[rows, steps + 1], segments.qvel[rows, steps + 1]


class FrameCache:
    """Frames ``[S, S, 3]`` uint8 of one environment's states, rendered on demand, LRU-kept.

    ``renders`` counts frames rendered, ``hits`` frames served from the cache. Each thread
    draws with its shared renderer (:func:`shared_renderer`). Users normally get the process's
    cache of a view from :func:`shared_frames`; constructed directly it is a private one.
    """

    def __init__(
        self,
        env_id: str,
        image_size: int,
        camera: Mapping[str, object] | None = None,
        env_kwargs: Mapping[str, Any] | None = None,
        capacity: int = 20_000,
    ) -> None:
        if not env_id:
            raise ValueError("FrameCache needs the env_id whose states it renders")
        if int(image_size) <= 0 or int(capacity) < 0:
            raise ValueError("FrameCache: image_size must be positive, capacity >= 0")
        self.env_id, self.image_size = env_id, int(image_size)
        self.camera = check_camera(camera)
        self.env_kwargs = dict(env_kwargs or {})
        self.capacity = int(capacity)
        self.renders = 0
        self.hits = 0
        self._rows: OrderedDict[bytes, int] = OrderedDict()  # key -> bank row, oldest first
        self._bank: np.ndarray | None = None  # [capacity, S, S, 3], allocated on first store
        self._free: list[int] = []
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return len(self._rows)

    # -- rendering ---------------------------------------------------------------------------
    def renderer(self) -> StateRenderer:
        """This thread's shared renderer of ``env_id`` at ``image_size`` with the camera set
        (:func:`shared_renderer`)."""
        s = self.image_size
        return shared_renderer(self.env_id, self.env_kwargs, s, s, self.camera)

    def reserve(self, capacity: int) -> None:
        """Keep at least ``capacity`` frames from now on (a second user that needs more)."""
        with self._lock:
            extra = int(capacity) - self.capacity
            if extra <= 0:
                return
            if self._bank is not None:
                s = self.image_size
                bank = np.empty((int(capacity), s, s, 3), dtype=np.uint8)
                bank[: self.capacity] = self._bank
                self._bank = bank
                self._free = list(range(int(capacity) - 1, self.capacity - 1, -1)) + self._free
            self.capacity = int(capacity)

    def relabel(
        self,
        data: OfflineDataset,
        frame_reward: Callable[[np.ndarray], torch.Tensor],
        batch: int,
        what: str,
    ) -> np.ndarray:
        """``frame_reward`` of the frame of the state each transition of an offline dataset
        reached (as online), ``batch`` frames at a time, none kept; a dataset without
        ``qpos``/``qvel`` is a ConfigError naming ``what`` (e.g. "an image reward")."""
        if data.qpos is None or data.qvel is None:
            raise ConfigError(
                f"dataset {data.dataset_id} stores no qpos/qvel: its states cannot be rendered "
                f"for {what} (build datasets with scripts/make_dataset.py)"
            )
        after = data.state_index(np.arange(len(data))) + 1
        out = np.empty(len(data), dtype=np.float32)
        for i in range(0, len(after), batch):
            rows = after[i : i + batch]
            frames = self.frames(data.qpos[rows], data.qvel[rows], store=False)
            out[i : i + batch] = frame_reward(frames).cpu().numpy()
        return out

    def frames(self, qpos: np.ndarray, qvel: np.ndarray, store: bool = True) -> np.ndarray:
        """Frames ``[K, S, S, 3]`` of ``K`` states (``qpos [K, nq]``, ``qvel [K, nv]``).

        Cached frames are copied out; the others are rendered (each distinct state once) and,
        with ``store``, kept (evicting the least recently used).
        """
        qpos = np.ascontiguousarray(qpos, dtype=np.float64)
        qvel = np.ascontiguousarray(qvel, dtype=np.float64)
        if qpos.ndim != 2 or qvel.ndim != 2 or len(qpos) != len(qvel):
            raise ValueError(
                f"expected qpos [K, nq] and qvel [K, nv], got {qpos.shape} and {qvel.shape}"
            )
        s = self.image_size
        out = np.empty((len(qpos), s, s, 3), dtype=np.uint8)
        missing: dict[bytes, list[int]] = {}
        with self._lock:
            for k in range(len(qpos)):
                key = qpos[k].tobytes() + qvel[k].tobytes()
                row = self._rows.get(key)
                if row is None:
                    missing.setdefault(key, []).append(k)
                    continue
                self._rows.move_to_end(key)
                assert self._bank is not None
                out[k] = self._bank[row]
                self.hits += 1
            if not missing:
                return out
            renderer = self.renderer()
            for key, ks in missing.items():
                frame = renderer.render(qpos[ks[0]], qvel[ks[0]])
                self.renders += 1
                out[ks] = frame
                self.hits += len(ks) - 1  # repeats within the batch are not rendered again
                if store:
                    self._store(key, frame)
        return out

    def _store(self, key: bytes, frame: np.ndarray) -> None:
        if self.capacity == 0:
            return
        if self._bank is None:
            s = self.image_size
            self._bank = np.empty((self.capacity, s, s, 3), dtype=np.uint8)  # pages on touch
            self._free = list(range(self.capacity - 1, -1, -1))
        if self._free:
            row = self._free.pop()
        else:
            _, row = self._rows.popitem(last=False)  # least recently used
        self._bank[row] = frame
        self._rows[key] = row

    def segment_frames(
        self, segments: Segments, store: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """The frames of the states reached by each valid action of every segment.

        Returns ``frames [F, S, S, 3]`` (each distinct state once) and ``index [N, T]``: the
        row of ``frames`` showing the state after step ``t`` (``qpos[:, t + 1]``), -1 on
        padded steps.
        """
        rows, steps, qpos, qvel = reached_states(segments, self.env_id)
        states = np.ascontiguousarray(np.concatenate([qpos, qvel], axis=1), dtype=np.float64)
        # one row per distinct state: overlapping windows share their frames
        _, first, inverse = np.unique(states, axis=0, return_index=True, return_inverse=True)
        frames = self.frames(qpos[first], qvel[first], store=store)
        index = np.full(segments.mask.shape, -1, dtype=np.int64)
        index[rows, steps] = inverse.reshape(-1)
        return frames, index

    def close(self) -> None:
        """Drop the kept frames (the shared renderers stay: other users may draw with them;
        :func:`close_renderers` frees a thread's)."""
        with self._lock:
            self._rows.clear()
            self._bank, self._free = None, []


# -- the process's renderers and frame caches ------------------------------------------------

_renderers: dict[tuple[int, str, str, int, int, str], StateRenderer] = {}
_frames: weakref.WeakValueDictionary[tuple[str, str, int, str], FrameCache] = (
    weakref.WeakValueDictionary()
)
_registry_lock = threading.Lock()


def _key(mapping: Mapping[str, object] | None) -> str:
    return json.dumps(dict(mapping or {}), sort_keys=True, default=str)


def shared_renderer(
    env_id: str,
    env_kwargs: Mapping[str, Any] | None,
    width: int,
    height: int,
    camera: Mapping[str, object] | None = None,
) -> StateRenderer:
    """The calling thread's renderer of ``env_id`` (made with ``env_kwargs``) at ``width`` x
    ``height`` with the free-camera overrides ``camera``: the same object for every caller
    asking for the same view in this thread; made on first use."""
    from pbrl.video import StateRenderer

    cam = check_camera(camera)
    key = (threading.get_ident(), env_id, _key(env_kwargs), int(width), int(height), _key(cam))
    with _registry_lock:
        renderer = _renderers.get(key)
        if renderer is None or renderer._closed:
            renderer = StateRenderer(env_id, int(width), int(height), **dict(env_kwargs or {}))
            apply_camera(renderer, cam)
            _renderers[key] = renderer
        return renderer


def close_renderers() -> None:
    """Close the shared renderers this thread made (a thread that renders no more, e.g. a
    teacher's render thread when the teacher closes)."""
    me = threading.get_ident()
    with _registry_lock:
        mine = [k for k in _renderers if k[0] == me]
        closing = [_renderers.pop(k) for k in mine]
    for renderer in closing:
        renderer.close()


def shared_frames(env: EnvSpec, image_size: int, capacity: int = 0) -> FrameCache:
    """The process's frame cache of ``env``'s states (its id, ``gym.make`` arguments and
    camera) at ``image_size`` pixels, keeping at least ``capacity`` frames: every user of that
    view gets the same cache while one holds it, so each state is rendered once."""
    cam = check_camera(env.camera)
    key = (env.id, _key(env.kwargs), int(image_size), _key(cam))
    with _registry_lock:
        cache = _frames.get(key)
        if cache is None:
            cache = FrameCache(env.id, int(image_size), cam, env.kwargs, int(capacity))
            _frames[key] = cache
    cache.reserve(capacity)
    return cache
