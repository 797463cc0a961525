"""One offscreen renderer per process (pbrl.envs.render), env facts from the run's EnvSpec
(no config group interpolates the env group), and the image reward's per-version scores."""

from __future__ import annotations

import re
import threading

import numpy as np
import pytest
import torch
from torch import nn

from pbrl.data import PreferenceDataset
from pbrl.data.preferences import oracle_labels
from pbrl.envs.render import shared_frames, shared_renderer
from pbrl.envs.spec import EnvSpec
from pbrl.online.wrappers import random_rollout_pool
from pbrl.rewards import make_reward_model
from pbrl.rewards.image import ImageRewardConfig, ImageRewardEnsemble, random_shift
from pbrl.teachers.vlm.images import ImageSpec, SegmentImager
from pbrl.train import CONF_DIR

TOP_DOWN = {"distance": 0.55, "elevation": -90.0, "azimuth": 90.0, "lookat": [0.0, 0.0, 0.0]}
REACHER = EnvSpec("Reacher-v5", camera=TOP_DOWN)


@pytest.fixture(scope="module")
def pool():  # noqa: ANN201
    return random_rollout_pool("Reacher-v5", 120)


def test_two_users_of_a_view_draw_with_the_same_renderer(pool):
    """Two image rewards, the VLM teacher's imager and a video writer asking for the same
    view in this thread get one renderer (and the rewards one frame cache)."""
    a = ImageRewardEnsemble(10, 2, ImageRewardConfig(image_size=32, n_members=1), env=REACHER)
    b = make_reward_model({"kind": "image", "image_size": 32, "n_members": 1}, 10, 2, env=REACHER)
    assert a.frame_cache is b.frame_cache  # a state one renders, the other reads
    renderer = a.frame_cache.renderer()
    assert b.frame_cache.renderer() is renderer
    assert shared_renderer("Reacher-v5", {}, 32, 32, TOP_DOWN) is renderer
    assert renderer.camera.distance == pytest.approx(0.55)  # the env's camera, applied once
    # the VLM teacher's images at that size come through the same renderer and cache
    q = pool.sample_queries(2, 3, np.random.default_rng(0))
    renders = a.frame_cache.renders
    SegmentImager(ImageSpec(size=32), REACHER).images(q.first, 0)
    assert a.frame_cache.renders == renders + 1 and shared_frames(REACHER, 32) is a.frame_cache
    # another view (size, camera or gym.make arguments) is another renderer
    assert shared_renderer("Reacher-v5", {}, 32, 32) is not renderer
    assert shared_renderer("Reacher-v5", {"reward_control_weight": 0.0}, 32, 32, TOP_DOWN) is not (
        renderer
    )
    # an OpenGL context belongs to one thread: another thread gets its own
    other: list = []
    thread = threading.Thread(
        target=lambda: other.append(shared_renderer("Reacher-v5", {}, 32, 32, TOP_DOWN))
    )
    thread.start()
    thread.join()
    assert other and other[0] is not renderer
    # a model's close() leaves the shared renderer to its other users
    a.close()
    assert not renderer._closed and b.frame_cache.renderer() is renderer


def test_frames_of_the_shared_renderer_are_a_fresh_renderers(pool):
    from pbrl.envs.render import apply_camera
    from pbrl.video import StateRenderer

    qpos, qvel = pool.next_qpos[0, :5], pool.next_qvel[0, :5]
    shared = shared_frames(REACHER, 32).frames(qpos, qvel)
    with StateRenderer("Reacher-v5", 32, 32) as fresh:
        apply_camera(fresh, TOP_DOWN)
        np.testing.assert_array_equal(shared, fresh.render_sequence(qpos, qvel))


def test_no_config_group_interpolates_the_env():
    """Rewards and teachers take env facts from the run's EnvSpec: conf/reward and
    conf/teacher name no ${env.*}, no other group's keys (oc.select), no env id."""
    for group in ("reward", "teacher"):
        for path in sorted((CONF_DIR / group).glob("*.yaml")):
            text = path.read_text()
            assert not re.search(r"\$\{(oc\.select:)?\s*(env|episodic)\.", text), path
            assert not re.search(r"^(env_id|env_kwargs|camera):", text, re.M), path


@pytest.mark.parametrize(
    "overrides",
    [
        ["+exp=vlm_pebble_reacher", "teacher.probe=false", "teacher.api_key_env=null"],
        ["+exp=heron_hopper"],
        ["+exp=quickstart", "teacher=human"],
    ],
)
def test_the_teacher_is_given_the_runs_env(overrides, tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir

    from pbrl.run import build_teacher, plain

    monkeypatch.chdir(tmp_path)
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    spec = EnvSpec.from_config(plain(cfg.env))
    assert EnvSpec.from_config(plain(cfg.env)) is spec  # probed once per process
    teacher = build_teacher(cfg, np.random.default_rng(0))
    try:
        if "vlm" in overrides[0]:
            assert teacher.env is spec and teacher.camera == spec.camera != {}
            assert teacher.goal.startswith("the tip of the two-link robot arm")
        elif "heron" in overrides[0]:
            assert teacher.env is spec and teacher.check_factors(spec.factor_names)
        else:
            assert teacher.env_kwargs == spec.kwargs
    finally:
        teacher.close()


def test_scores_are_kept_per_model_version(pool):
    """A state scored by the current model is not scored again; a fit (a new version)
    scores it again, in batches, from the frames already rendered."""
    model = ImageRewardEnsemble(
        10, 2, ImageRewardConfig(image_size=32, max_epochs=2, score_batch=7), env=REACHER
    )
    qpos, qvel = pool.next_qpos[0, :20], pool.next_qvel[0, :20]
    first = model.state_rewards(qpos, qvel)
    frames = model.frame_cache.frames(qpos, qvel)
    np.testing.assert_allclose(first, model.frame_reward(frames).numpy(), rtol=1e-5, atol=1e-6)
    assert model.memo.scored == 20
    np.testing.assert_array_equal(model.state_rewards(qpos[::-1], qvel[::-1]), first[::-1])
    assert model.memo.scored == 20 and model.memo.hits == 20  # nothing scored again
    renders = model.frame_cache.renders
    q = pool.sample_queries(10, 1, np.random.default_rng(1))
    model.fit(PreferenceDataset(q, oracle_labels(q)), np.random.default_rng(1))
    after = model.state_rewards(qpos, qvel)
    assert model.memo.scored == 40  # the new version scored them again
    np.testing.assert_allclose(after, model.frame_reward(frames).numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(after, first)
    assert model.frame_cache.renders - renders <= 20  # only the pairs' own new states


def test_random_shift_is_the_gather_it_replaces():
    """The per-image slice copy gives exactly the pixel gather DrQ's shift is defined by."""

    def gather(x: torch.Tensor, pad: int) -> torch.Tensor:
        b, _, s, _ = x.shape
        padded = nn.functional.pad(x, (pad, pad, pad, pad), mode="replicate")
        dx, dy = torch.randint(0, 2 * pad + 1, (2, b))
        rows = (dy[:, None] + torch.arange(s)[None])[:, None, :, None]
        cols = (dx[:, None] + torch.arange(s)[None])[:, None, None, :]
        return padded[torch.arange(b)[:, None, None, None], torch.arange(3)[None, :, None, None],
                      rows, cols]  # fmt: skip

    x = torch.rand(16, 3, 20, 20)
    torch.manual_seed(3)
    expected = gather(x, 4)
    torch.manual_seed(3)
    torch.testing.assert_close(random_shift(x, 4), expected, rtol=0, atol=0)
    # frames as stored ([B, S, S, 3] bytes), shifted before they become floats: the same draw
    frames = (x * 255).to(torch.uint8)  # [B, 3, S, S]
    torch.manual_seed(3)
    expected = gather(frames.float(), 4)
    torch.manual_seed(3)
    shifted = random_shift(frames.permute(0, 2, 3, 1).contiguous(), 4, channels_last=True)
    torch.testing.assert_close(shifted.permute(0, 3, 1, 2).float(), expected, rtol=0, atol=0)
