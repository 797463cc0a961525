"""CLIP zero-shot rewards (VLM-RM): the reward math against hand-computed projections, the
torch preprocessing against PIL, bad input, and the whole pipeline on real MuJoCo frames with
a small randomly initialised CLIP-shaped model (no CLIP weights are reachable here)."""

from __future__ import annotations

import zlib
from dataclasses import asdict

import gymnasium as gym
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn

from pbrl.data import PreferenceDataset, Queries, Segments
from pbrl.data.offline import Episode, OfflineDataset
from pbrl.envs.spec import EnvSpec
from pbrl.errors import ConfigError, make_config
from pbrl.rewards import REWARD_MODELS, load_reward_model, make_reward_model
from pbrl.rewards import clip as clip_module
from pbrl.rewards.clip import (
    CLIP_MEAN,
    CLIP_STD,
    ClipReward,
    ClipRewardConfig,
    Preprocess,
    load_open_clip,
    preprocess,
    projection,
    vlm_rm_reward,
)
from pbrl.train import CONF_DIR
from pbrl.video import StateRenderer

CLIP_EXPS = ["clip_humanoid_kneeling", "clip_reacher"]


# -- a small CLIP-shaped model ---------------------------------------------------------------


class TinyClip(nn.Module):
    """Randomly initialised, CLIP-shaped: a conv image tower and an embedding-bag text tower
    into one ``dim``-dimensional space; takes ``image_size`` square inputs."""

    def __init__(self, dim: int = 32, image_size: int = 32, vocab: int = 4096, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.visual = nn.Sequential(
            nn.Conv2d(3, 8, 5, stride=2),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(64, dim),
        )
        self.visual.image_size = image_size  # where open_clip keeps it
        self.text = nn.EmbeddingBag(vocab, dim, mode="mean", padding_idx=0)
        self.vocab = vocab

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.text(tokens)

    def tokenize(self, prompts: list[str], length: int = 8) -> torch.Tensor:
        out = torch.zeros(len(prompts), length, dtype=torch.long)
        for i, p in enumerate(prompts):
            ids = [1 + zlib.crc32(w.encode()) % (self.vocab - 1) for w in p.lower().split()]
            out[i, : len(ids[:length])] = torch.tensor(ids[:length])
        return out


REACHER = EnvSpec("Reacher-v5")  # the run's env, as the reward is handed it


def tiny_reward(
    config: ClipRewardConfig, seed: int = 0, env: EnvSpec | None = REACHER, **kw
) -> ClipReward:
    enc = TinyClip(seed=seed, **kw)
    return ClipReward(0, 0, config, "cpu", env, encoder=enc, tokenizer=enc.tokenize)


def config(**kw) -> ClipRewardConfig:
    values = {
        "goal_prompts": ["a robot arm touching the ball"],
        "baseline_prompts": ["a robot arm"],
        "alpha": 0.5,
        "image_size": 48,
        "batch_size": 16,
    }
    return ClipRewardConfig(**{**values, **kw})


class TableClip(nn.Module):
    """Text embeddings from a table; an image's embedding is its mean colour (mean 0, std 1
    preprocessing), so rewards of plain-coloured frames can be computed by hand."""

    def __init__(self, table: dict[str, list[float]]):
        super().__init__()
        self.prompts = list(table)
        self.table = torch.tensor([table[p] for p in self.prompts])
        self.visual = nn.Module()
        self.visual.preprocess_cfg = {"size": 8, "mean": (0, 0, 0), "std": (1, 1, 1)}

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        return torch.tensor([self.prompts.index(p) for p in prompts])

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.table[tokens]

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean((2, 3))


def plain(rgb: tuple[int, int, int], n: int = 1, size: int = 8) -> torch.Tensor:
    return torch.tensor(rgb, dtype=torch.uint8).expand(n, size, size, 3).contiguous()


# -- the reward math ------------------------------------------------------------------------


def test_projection_reward_against_hand_values():
    # g = e1, b = e2: d = (1, -1, 0), |d|^2 = 2; x = e3, so x - g = (-1, 0, 1).
    g, b = torch.tensor([1.0, 0, 0]), torch.tensor([0.0, 1, 0])
    x = torch.tensor([[0.0, 0, 1]])
    # alpha = 1: (x-g)P = ((x-g).d / |d|^2) d = -1/2 (1, -1, 0); |.|^2 = 1/2 -> R = 3/4
    assert vlm_rm_reward(x, g, projection(g, b, 1.0)).item() == pytest.approx(0.75)
    # alpha = 0: |x - g|^2 = 2 -> R = 0 = cos(x, g)
    assert vlm_rm_reward(x, g, projection(g, b, 0.0)).item() == pytest.approx(0.0)
    # alpha = 1/2: (x-g)P = 1/2 (-1/2, 1/2, 0) + 1/2 (-1, 0, 1) = (-3/4, 1/4, 1/2);
    # |.|^2 = 9/16 + 1/16 + 4/16 = 7/8 -> R = 1 - 7/16
    assert vlm_rm_reward(x, g, projection(g, b, 0.5)).item() == pytest.approx(9 / 16)
    # x is normalised first: a longer x along e3 scores the same
    assert vlm_rm_reward(5 * x, g, projection(g, b, 0.5)).item() == pytest.approx(9 / 16)
    # P is the matrix of the formula
    p = projection(g, b, 0.25)
    d = (g - b).numpy()
    hand = 0.25 * np.outer(d, d) / 2 + 0.75 * np.eye(3)
    np.testing.assert_allclose(p.numpy(), hand, atol=1e-7)


def test_alpha_zero_is_cosine_similarity_and_alpha_one_projects_onto_d():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50, 16, generator=gen)
    g = torch.nn.functional.normalize(torch.randn(16, generator=gen), dim=0)
    b = torch.nn.functional.normalize(torch.randn(16, generator=gen), dim=0)
    cos = torch.nn.functional.cosine_similarity(x, g[None], dim=-1)
    torch.testing.assert_close(vlm_rm_reward(x, g, projection(g, b, 0.0)), cos)
    # alpha = 1: P = d dT / |d|^2, only the component of x - g along d counts
    p = projection(g, b, 1.0)
    d = (g - b) / (g - b).norm()
    torch.testing.assert_close(d @ p, d)
    ortho = torch.randn(16, generator=gen)
    ortho -= (ortho @ d) * d
    torch.testing.assert_close(ortho @ p, torch.zeros(16), atol=1e-6, rtol=0)
    xn = x / x.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(vlm_rm_reward(x, g, p), 1 - 0.5 * ((xn - g) @ d) ** 2)


def test_model_averages_normalised_prompt_embeddings():
    # "red" is not a unit vector: it is normalised before the mean; g is not renormalised.
    table = {"red": [2.0, 0, 0], "green": [0, 1.0, 0], "blue": [0, 0, 3.0]}
    enc = TableClip(table)
    cfg = config(goal_prompts=["red", "green"], baseline_prompts=["blue"], alpha=0.5)
    model = ClipReward(0, 0, cfg, encoder=enc, tokenizer=enc.tokenize)
    torch.testing.assert_close(model.goal, torch.tensor([0.5, 0.5, 0]))
    torch.testing.assert_close(model.baseline, torch.tensor([0.0, 0, 1]))
    # A pure red frame: x = (1, 0, 0); x - g = (1/2, -1/2, 0); d = (1/2, 1/2, -1),
    # (x - g).d = 0, so (x - g)P = 1/2 (x - g) -> |.|^2 = 1/8 -> R = 15/16.
    assert model.frame_reward(plain((255, 0, 0))).item() == pytest.approx(15 / 16)
    # A pure blue frame: x - g = (-1/2, -1/2, 1) = -d: (x - g)P = -d, |d|^2 = 3/2 -> R = 1/4
    assert model.frame_reward(plain((0, 0, 255))).item() == pytest.approx(1 / 4)
    # with one goal prompt and alpha = 0 the reward is the cosine similarity
    cos_model = ClipReward(
        0,
        0,
        config(goal_prompts=["red"], baseline_prompts=[], alpha=0.0),
        encoder=enc,
        tokenizer=enc.tokenize,
    )
    frame = plain((200, 100, 0))
    x = torch.tensor([200.0, 100.0, 0]) / 255
    expected = torch.nn.functional.cosine_similarity(x, torch.tensor([1.0, 0, 0]), dim=0)
    assert cos_model.frame_reward(frame).item() == pytest.approx(expected.item(), abs=1e-6)


def test_batches_give_the_values_of_one_by_one():
    model = tiny_reward(config(batch_size=3))
    frames = torch.randint(0, 256, (7, 40, 40, 3), dtype=torch.uint8)
    together = model.frame_reward(frames)
    alone = torch.cat([model.frame_reward(frames[i : i + 1]) for i in range(7)])
    assert together.shape == (7,) and together.dtype == torch.float32
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)
    assert together.std() > 0  # the random encoder still tells frames apart
    np_frames = frames.numpy()  # numpy frames are accepted too
    torch.testing.assert_close(model.frame_reward(np_frames), together)
    assert model.frame_reward(frames[:0]).shape == (0,)


# -- preprocessing ------------------------------------------------------------------------


def test_preprocess_shape_dtype_and_normalisation():
    pp = Preprocess(size=(32, 32))
    out = preprocess(torch.full((5, 64, 48, 3), 128, dtype=torch.uint8), pp)
    assert out.shape == (5, 3, 32, 32) and out.dtype == torch.float32
    # a constant frame stays constant through resizing: (v/255 - mean)/std per channel
    expected = (128 / 255 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(out[0, :, 10, 10], expected)
    torch.testing.assert_close(out.amax((0, 2, 3)), out.amin((0, 2, 3)))


@pytest.mark.parametrize("shape", [(100, 100), (240, 240), (60, 90)])
def test_preprocess_matches_pil_bicubic_and_centre_crop(shape):
    """open_clip's inference transform: PIL bicubic resize of the shorter side, centre crop,
    scale, normalise. On noise, the worst case, the torch version agrees to a fraction of a
    grey level on average (PIL rounds to 8 bits between its two passes: a few levels at most)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    got = preprocess(torch.from_numpy(frame[None]), Preprocess(size=(32, 32)))[0]
    got_pixels = (got.permute(1, 2, 0).numpy() * CLIP_STD + np.array(CLIP_MEAN)) * 255
    h, w = shape
    nh, nw = (32, int(32 * w / h)) if h <= w else (int(32 * h / w), 32)
    pil = np.asarray(Image.fromarray(frame).resize((nw, nh), Image.BICUBIC), np.float64)
    top, left = round((nh - 32) / 2), round((nw - 32) / 2)
    ref = pil[top : top + 32, left : left + 32]
    diff = np.abs(got_pixels - ref)
    assert diff.mean() < 0.25 and diff.max() <= 6.01


def test_preprocess_resize_modes_crop_pad_and_squash():
    frame = torch.zeros(1, 20, 40, 3, dtype=torch.uint8)
    frame[:, :, 20:] = 255  # left half black, right half white
    flat = Preprocess(size=(10, 10), mean=(0, 0, 0), std=(1, 1, 1))
    crop = preprocess(frame, flat)[0, 0]  # shortest: 10 x 20, centre 10 columns
    assert crop[:, 0].max() == 0 and crop[:, -1].min() == 1
    pad = preprocess(
        frame,
        Preprocess(size=(10, 10), mean=(0,) * 3, std=(1,) * 3, resize_mode="longest", fill=255),
    )
    assert pad.shape == (1, 3, 10, 10)
    assert pad[0, 0, 0].min() == 1 and pad[0, 0, -1].min() == 1  # padded rows: fill
    assert pad[0, 0, 5, 0] == 0  # image rows: the black left half
    squash = preprocess(
        frame, Preprocess(size=(10, 10), mean=(0,) * 3, std=(1,) * 3, resize_mode="squash")
    )
    assert squash[0, 0, :, 0].max() == 0 and squash[0, 0, :, -1].min() == 1


def test_preprocess_settings_come_from_the_encoder():
    enc = TinyClip(image_size=40)
    assert Preprocess.of(enc) == Preprocess(size=(40, 40))
    enc.visual.preprocess_cfg = {
        "size": (24, 32),
        "mean": (0.5,) * 3,
        "std": (0.25,) * 3,
        "interpolation": "bilinear",
        "resize_mode": "squash",
    }
    pp = Preprocess.of(enc)
    assert pp.size == (24, 32) and pp.mean == (0.5,) * 3 and pp.interpolation == "bilinear"
    assert preprocess(plain((0, 0, 0), 2, 16), pp).shape == (2, 3, 24, 32)


# -- bad input ----------------------------------------------------------------------------


def test_missing_or_unset_checkpoint_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no such file.*huggingface-cli download"):
        ClipReward(0, 0, config(checkpoint=str(tmp_path / "nope.bin")))
    with pytest.raises(ConfigError, match="reward.checkpoint is not set"):
        make_reward_model({"kind": "clip", **asdict(config())}, 3, 1, env=REACHER)


def test_open_clip_missing_is_one_clear_error(tmp_path, monkeypatch):
    weights = tmp_path / "open_clip_pytorch_model.bin"
    weights.write_bytes(b"\0")
    monkeypatch.setitem(__import__("sys").modules, "open_clip", None)  # import fails
    with pytest.raises(ConfigError, match=r"needs open_clip.*pip install 'pbrl\[clip\]'"):
        load_open_clip("ViT-B-32", str(weights))


@pytest.mark.parametrize(
    "frames, needle",
    [
        (torch.zeros(2, 8, 8, dtype=torch.uint8), r"\[B, H, W, 3\]"),
        (torch.zeros(2, 8, 8, 4, dtype=torch.uint8), r"\[B, H, W, 3\]"),
        (torch.zeros(8, 8, 3, dtype=torch.uint8), r"\[B, H, W, 3\]"),
        (torch.zeros(2, 8, 8, 3), "uint8"),
    ],
)
def test_frames_of_the_wrong_shape_or_type(frames, needle):
    model = tiny_reward(config())
    with pytest.raises(ValueError, match=needle):
        model.frame_reward(frames)


@pytest.mark.parametrize(
    "values, needle",
    [
        ({"alpha": 1.5}, r"alpha=1.5 must be in \[0, 1\]"),
        ({"baseline_prompts": []}, "needs reward.baseline_prompts"),
        ({"goal_prompts": []}, "goal_prompts is empty"),
        ({"goal_prompts": ["ok", " "]}, "empty prompt"),
        ({"image_size": 0}, "image_size=0 must be positive"),
        ({"camera": {}}, "unknown reward key.*camera"),  # the camera is the env's
    ],
)
def test_bad_settings_are_config_errors(values, needle):
    with pytest.raises(ConfigError, match=needle):
        make_config(ClipRewardConfig, {**asdict(config()), **values}, "reward")


@pytest.mark.parametrize(
    "camera, needle",
    [({"zoom": 2}, "env.camera: unknown key.*zoom"), ({"lookat": [0, 1]}, "needs 3 numbers")],
)
def test_a_bad_env_camera_is_a_config_error(camera, needle):
    with pytest.raises(ConfigError, match=needle):
        EnvSpec("Reacher-v5", camera=camera)


def test_identical_goal_and_baseline_prompts_are_a_config_error():
    with pytest.raises(ConfigError, match="same CLIP embedding"):
        tiny_reward(config(goal_prompts=["a robot"], baseline_prompts=["a robot"]))
    tiny_reward(config(goal_prompts=["a robot"], baseline_prompts=["a robot"], alpha=0.0))


def test_a_zero_shot_frame_reward_by_kind_and_half_injection_is_a_type_error():
    from pbrl.rewards.base import FrameReward, ZeroShot, kind_of
    from pbrl.rewards.dispatch import Steps, needs_labels, score_steps

    model = tiny_reward(config())
    assert kind_of(model) is FrameReward and isinstance(model, ZeroShot)
    assert not needs_labels(model)
    with pytest.raises(ConfigError, match="scores rendered frames of the simulator state"):
        score_steps(model, Steps(np.zeros((2, 3)), np.zeros((2, 1))))  # no state to render
    with pytest.raises(TypeError, match="both encoder and tokenizer"):
        ClipReward(0, 0, config(), encoder=TinyClip())


# -- the pipeline on real MuJoCo frames -------------------------------------------------------


def rollout_segments(env_id: str, n: int, t: int, seed: int = 0) -> Segments:
    """``n`` windows of ``t`` random-policy steps with their MuJoCo states (last row: the
    last two steps padded)."""
    env = gym.make(env_id)
    env.reset(seed=seed)
    env.action_space.seed(seed)
    u = env.unwrapped
    nq, nv = u.model.nq, u.model.nv
    qpos = np.zeros((n, t + 1, nq))
    qvel = np.zeros((n, t + 1, nv))
    obs = np.zeros((n, t, env.observation_space.shape[0]), np.float32)
    act = np.zeros((n, t, env.action_space.shape[0]), np.float32)
    for i in range(n):
        qpos[i, 0], qvel[i, 0] = u.data.qpos, u.data.qvel
        for k in range(t):
            act[i, k] = env.action_space.sample()
            o, *_ = env.step(act[i, k])
            obs[i, k] = o
            qpos[i, k + 1], qvel[i, k + 1] = u.data.qpos, u.data.qvel
    env.close()
    mask = np.ones((n, t), bool)
    mask[-1, -2:] = False
    return Segments(
        obs=obs,
        act=act,
        true_reward=np.zeros((n, t)),
        mask=mask,
        final_obs=obs[:, -1],
        terminated=np.zeros(n, bool),
        qpos=qpos,
        qvel=qvel,
        env_id=env_id,
    )


def test_segment_returns_sum_rendered_frame_rewards_over_valid_steps(monkeypatch):
    segs = rollout_segments("Reacher-v5", n=3, t=4)
    model = tiny_reward(config(image_size=48, batch_size=5))
    returns = model.segment_returns(segs)
    assert returns.shape == (1, 3)
    monkeypatch.setattr(clip_module, "FRAMES_IN_MEMORY", 8)  # two segments a pass
    torch.testing.assert_close(model.segment_returns(segs), returns)
    # by hand: render the state after each valid action, score, sum
    with StateRenderer("Reacher-v5", 48, 48) as r:
        for i in range(3):
            steps = np.flatnonzero(segs.mask[i])
            frames = r.render_sequence(segs.qpos[i, steps + 1], segs.qvel[i, steps + 1])
            expected = model.frame_reward(torch.from_numpy(frames)).sum()
            assert returns[0, i].item() == pytest.approx(expected.item(), abs=1e-4)
    assert len(set(np.round(returns[0].numpy(), 5))) == 3  # the states differ, so do scores
    # padded steps count 0, whatever state they hold
    segs.qpos[-1, -1] += 1.0
    torch.testing.assert_close(model.segment_returns(segs), returns)
    # ...and valid ones count
    segs.qpos[0, 2] += 0.5
    assert model.segment_returns(segs)[0, 0] != returns[0, 0]
    # preference_probs / accuracy work through segment_returns
    q = Queries(segs[[0, 1]], segs[[1, 2]])
    probs = model.preference_probs(q.first, q.second)
    expected = torch.sigmoid(returns[0, [1, 2]] - model.segment_returns(segs)[0, [0, 1]])
    assert probs.shape == (1, 2)
    np.testing.assert_allclose(probs[0], expected.numpy(), atol=1e-5)
    labels = (probs[0] > 0.5).astype(float)
    assert model.accuracy(PreferenceDataset(q, labels)) == 1.0
    assert model.accuracy(PreferenceDataset(q, 1 - labels)) == 0.0
    model.close()


def test_offline_relabel_scores_the_state_each_transition_reached():
    segs = rollout_segments("Reacher-v5", n=3, t=4)[[0, 1]]  # two unpadded windows
    episodes = [
        Episode(
            observations=np.concatenate([segs.obs[i], segs.final_obs[i][None]]),
            actions=segs.act[i],
            rewards=np.zeros(4),
            terminations=np.zeros(4, bool),
            truncations=np.array([False, False, False, True]),
            qpos=segs.qpos[i],
            qvel=segs.qvel[i],
        )
        for i in range(2)
    ]
    data = OfflineDataset.from_episodes(episodes, env_id="Reacher-v5")
    model = tiny_reward(config(batch_size=3))
    rewards = model.relabel(data)
    assert rewards.shape == (8,) and rewards.dtype == np.float32
    per_episode = rewards.reshape(2, 4).sum(1)
    np.testing.assert_allclose(per_episode, model.segment_returns(segs)[0].numpy(), atol=1e-4)
    data.qpos = None
    with pytest.raises(ConfigError, match="no qpos/qvel"):
        model.relabel(data)


def test_segments_must_carry_states_of_the_same_env():
    segs = rollout_segments("Reacher-v5", n=1, t=2)
    model = tiny_reward(config(), env=EnvSpec("InvertedPendulum-v5"))
    with pytest.raises(ValueError, match="from Reacher-v5"):
        model.segment_returns(segs)
    segs.qpos = None
    with pytest.raises(ValueError, match="no qpos/qvel"):
        tiny_reward(config()).segment_returns(segs)


def test_camera_settings_reach_the_renderer():
    camera = {"distance": 3.0, "elevation": -10, "lookat": [0, 0, 1.0]}
    model = tiny_reward(config(image_size=32), env=EnvSpec("Humanoid-v5", camera=camera))
    assert model.camera == {"distance": 3.0, "elevation": -10.0, "lookat": [0.0, 0.0, 1.0]}
    assert model.frames is not None
    r = model.frames.renderer()
    assert r.camera.distance == 3.0 and r.camera.elevation == -10 and r.camera.lookat[2] == 1.0
    segs = rollout_segments("Humanoid-v5", n=1, t=1)
    frame = r.render(segs.qpos[0, 1], segs.qvel[0, 1])
    with StateRenderer("Humanoid-v5", 32, 32) as default:  # distance 4, looking at z = 2
        other = default.render(segs.qpos[0, 1], segs.qvel[0, 1])
    assert np.abs(frame.astype(int) - other).mean() > 5
    model.close()


def test_fit_is_a_no_op_and_save_load_round_trips(tmp_path):
    segs = rollout_segments("Reacher-v5", n=2, t=3)
    model = tiny_reward(config())
    before = model.segment_returns(segs)
    data = PreferenceDataset(Queries(segs[[0]], segs[[1]]), np.array([1.0]))
    metrics = model.fit(data, np.random.default_rng(0))
    assert metrics["epochs"] == 0 and np.isnan(metrics["loss"])
    torch.testing.assert_close(model.segment_returns(segs), before)
    path = tmp_path / "reward_model.pt"
    model.save(path)
    assert path.stat().st_size < 10_000  # the config, not the weights
    enc = TinyClip(seed=0)
    again = ClipReward.load(path, encoder=enc, tokenizer=enc.tokenize)
    assert again.config == model.config
    torch.testing.assert_close(again.segment_returns(segs), before)
    other = TinyClip(seed=1)  # other weights: another goal embedding
    with pytest.raises(ConfigError, match="another goal embedding"):
        ClipReward.load(path, encoder=other, tokenizer=other.tokenize)
    # the generic loader knows the kind (and asks open_clip for the weights)
    with pytest.raises(ConfigError, match="reward.checkpoint is not set"):
        load_reward_model(path)


# -- configs --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CLIP_EXPS)
def test_clip_experiments_compose_into_valid_reward_configs(name, tmp_path):
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"\0")
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"+exp={name}", f"reward.checkpoint={weights}"])
    assert cfg.name == name and cfg.reward.kind == "clip"
    values = OmegaConf.to_container(cfg.reward, resolve=True)
    values.pop("kind")
    settings = make_config(ClipRewardConfig, values, "reward")
    env = EnvSpec.from_config(OmegaConf.to_container(cfg.env, resolve=True))
    reward = tiny_reward(settings, env=env)
    assert reward.env_id == cfg.env.id and settings.goal_prompts
    # frames are rendered with the env group's camera and gym.make arguments
    assert reward.camera == OmegaConf.to_container(cfg.env.camera) != {}
    assert reward.env_kwargs == OmegaConf.to_container(cfg.env.kwargs)
    assert cfg.max_feedback == 0  # zero-shot: no labels
    if name == "clip_humanoid_kneeling":
        assert cfg.env.id == "Humanoid-v5" and cfg.algo.sb3 == "sac"
        assert settings.goal_prompts == ["a humanoid robot kneeling"]
        assert settings.baseline_prompts == ["a humanoid robot"]
        assert reward.env_kwargs == {"terminate_when_unhealthy": False}


def test_humanoid_episodes_have_fixed_length():
    """terminate_when_unhealthy=false (the exp's env.kwargs): a fallen humanoid goes on."""
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["+exp=clip_humanoid_kneeling"])
    kwargs = OmegaConf.to_container(cfg.env.kwargs)
    env = gym.make("Humanoid-v5", **kwargs)
    env.reset(seed=0)
    env.action_space.seed(0)
    heights = []
    for _ in range(300):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        heights.append(env.unwrapped.data.qpos[2])
        assert not terminated and not truncated
    assert min(heights) < 1.0  # it fell (the default env would have terminated there)
    env.close()


def test_reward_group_registers_clip():
    assert REWARD_MODELS["clip"] == (ClipReward, ClipRewardConfig)
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["reward=clip", "env=reacher"])
    values = OmegaConf.to_container(cfg.reward, resolve=True)
    assert "env_id" not in values and values["checkpoint"] == ""  # the env is the run's
    with pytest.raises(ConfigError, match="goal_prompts is empty"):
        make_reward_model(values, 3, 1, env=REACHER)


# -- online -----------------------------------------------------------------------------------


class InjectedClip(ClipReward):
    """``reward=clip`` with the small random encoder, for runs built from a config."""

    scored: list[tuple[int, ...]] = []  # shapes of the frame batches scored (class-wide)

    def __init__(self, obs_dim, act_dim, config, device="cpu", env=None, **_):
        enc = TinyClip()
        super().__init__(obs_dim, act_dim, config, device, env, encoder=enc, tokenizer=enc.tokenize)

    def frame_reward(self, frames):
        InjectedClip.scored.append(tuple(frames.shape))
        return super().frame_reward(frames)


TINY_ONLINE = [
    "+exp=clip_reacher",
    "total_timesteps=300",
    "progress_bar=false",
    "checkpoint_every=100000",
    "video.enabled=false",
    "eval.n_episodes=1",
    "eval.random_episodes=1",
    "eval.test_queries=4",
    "feedback.segment_length=10",
    "feedback.pool_size=5000",
    "reward.image_size=32",
    "algo.kwargs.learning_starts=50",
    "algo.kwargs.buffer_size=2000",
    "algo.kwargs.batch_size=32",
]


def run_tiny(tmp_path, monkeypatch, extra: list[str]) -> dict:
    from pbrl.recipes import run as run_config

    monkeypatch.setitem(REWARD_MODELS, "clip", (InjectedClip, ClipRewardConfig))
    monkeypatch.chdir(tmp_path)
    InjectedClip.scored = []
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[*TINY_ONLINE, *extra])
    summary = run_config(cfg, tmp_path / "run")
    assert summary["total_timesteps"] >= 300
    assert summary["reward_model_test_accuracy"] is not None  # segment_returns on the pool
    online = [s for s in InjectedClip.scored if s[1:] == (32, 32, 3)]
    assert sum(s[0] for s in online) >= 300  # the state after every step was scored
    saved = tmp_path / "run" / "checkpoint" / "reward_model.pt"
    assert saved.stat().st_size < 10_000  # the config, not the weights
    return summary


def test_a_label_budget_for_a_zero_shot_reward_is_one_error(tmp_path, monkeypatch):
    """Labels would be asked and thrown away: the trainer refuses before any work."""
    from pbrl.errors import ConfigError
    from pbrl.recipes import check as check_config

    monkeypatch.setitem(REWARD_MODELS, "clip", (InjectedClip, ClipRewardConfig))
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[*TINY_ONLINE, "max_feedback=8"])
    with pytest.raises(ConfigError, match="zero-shot.*max_feedback=0"):
        check_config(cfg)


def test_pretraining_before_a_zero_shot_reward_is_one_error(monkeypatch):
    """PEBBLE's state-entropy phase ends at the first reward update, which a zero-shot reward
    never has: the policy would train on the entropy bonus to the end (an exp written for
    algo=pebble sets unsupervised_steps; switching to sac_zero_shot keeps it)."""
    from pbrl.errors import ConfigError
    from pbrl.recipes import check as check_config

    monkeypatch.setitem(REWARD_MODELS, "clip", (InjectedClip, ClipRewardConfig))
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[*TINY_ONLINE, "algo.unsupervised_steps=100"])
    with pytest.raises(ConfigError, match="zero-shot.*algo.unsupervised_steps=0"):
        check_config(cfg)


def test_zero_shot_online_run_asks_for_no_labels(tmp_path, monkeypatch):
    """The exp as written: max_feedback=0, no teacher asked."""
    summary = run_tiny(tmp_path, monkeypatch, [])
    assert summary["num_labels"] == 0 and summary["num_queries"] == 0


class SideClip(nn.Module):
    """A CLIP stand-in that sees one thing: on which side of the frame Reacher's (blue) arm
    is. Image embedding = (arm pixels in the left half, in the right half); the prompts
    "the arm points left" = (1, 0) and "the arm" = (1, 1)."""

    PROMPTS = {"the arm points left": [1.0, 0.0], "the arm": [1.0, 1.0]}

    def __init__(self, size: int = 48):
        super().__init__()
        self.visual = nn.Module()
        self.visual.preprocess_cfg = {"size": size, "mean": (0, 0, 0), "std": (1, 1, 1)}

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        return torch.tensor([self.PROMPTS[p] for p in prompts])

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens.float()

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        arm = (x[:, 2] - x[:, 0] > 0.12).float()  # RGB in [0, 1]: blue well above red
        half = x.shape[-1] // 2
        return torch.stack([arm[..., :half].sum((1, 2)), arm[..., half:].sum((1, 2))], -1) + 1e-3


@pytest.mark.slow
def test_sac_learns_what_the_goal_prompt_describes():
    """Zero-shot end to end: SAC on Reacher-v5 whose only reward is the VLM-RM score of the
    frame of each state reached, from an encoder that sees where the arm is, against "the arm
    points left" (baseline "the arm", alpha 0.5). The trained policy holds the arm to the left:
    its mean frame reward per step beats a random policy's clearly (measured: 0.87 vs 0.48
    after 10k steps, ~6 min on 2 busy cores)."""
    from stable_baselines3 import SAC

    from pbrl.online.wrappers import PreferenceVecEnv
    from pbrl.rewards.dispatch import Steps, score_steps
    from pbrl.sim import make_vec_env

    torch.manual_seed(0)
    camera = {"distance": 0.55, "elevation": -90, "azimuth": 90, "lookat": [0, 0, 0]}
    cfg = config(
        goal_prompts=["the arm points left"],
        baseline_prompts=["the arm"],
        alpha=0.5,
        image_size=48,
    )
    enc = SideClip()
    env = EnvSpec("Reacher-v5", camera=camera)
    model = ClipReward(0, 0, cfg, env=env, encoder=enc, tokenizer=enc.tokenize)

    # the reward sees the arm's side: left 1, up or down 1/sqrt(2), right ~0.1
    def score_states(model, qpos, qvel):
        return score_steps(model, Steps(np.zeros((len(qpos), 0)), qpos[:, :0], qpos, qvel))

    poses = np.zeros((3, 4))
    poses[:, 0] = [np.pi, np.pi / 2, 0.0]
    left, up, right = score_states(model, poses, np.zeros((3, 4)))
    assert left > 0.99 and abs(up - 2**-0.5) < 0.05 and right < 0.2

    def mean_frame_reward(act, episodes: int = 5) -> float:
        env = gym.make("Reacher-v5")
        out = []
        for e in range(episodes):
            obs, _ = env.reset(seed=100 + e)
            qpos, qvel = [], []
            for _ in range(50):
                obs, *_ = env.step(act(obs))
                qpos.append(env.unwrapped.data.qpos.copy())
                qvel.append(env.unwrapped.data.qvel.copy())
            out.append(score_states(model, np.array(qpos), np.array(qvel)).mean())
        env.close()
        return float(np.mean(out))

    rng = np.random.default_rng(0)
    random = mean_frame_reward(lambda obs: rng.uniform(-1, 1, 2))
    env = PreferenceVecEnv(make_vec_env("gymnasium", "Reacher-v5", 1, 0), None, model)  # zero-shot
    sac = SAC(
        "MlpPolicy",
        env,
        seed=0,
        learning_starts=500,
        batch_size=128,
        policy_kwargs={"net_arch": [64, 64]},
    )
    sac.learn(10_000)
    assert env.scored >= 10_000  # every step's frame was scored
    trained = mean_frame_reward(lambda obs: sac.predict(obs, deterministic=True)[0])
    assert trained > 0.75 and trained > random + 0.2, (trained, random)


# -- open_clip itself (runs where it imports) -----------------------------------------------


def _open_clip():
    try:
        from pbrl.rewards.resnet import import_torchvision

        import_torchvision()  # torchvision's compiled ops may not load beside this torch
        import open_clip
    except Exception as exc:  # ImportError, or torchvision's operators failing to load
        pytest.skip(f"open_clip does not import here ({type(exc).__name__}: {str(exc)[:120]})")
    return open_clip


def test_random_init_open_clip_runs_the_pipeline(tmp_path):
    open_clip = _open_clip()
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    pp = Preprocess.of(model)
    assert pp.size == (224, 224) and pp.mean == pytest.approx(CLIP_MEAN)
    cfg = config(image_size=64, batch_size=4)
    reward = ClipReward(0, 0, cfg, env=REACHER, encoder=model, tokenizer=tokenizer)
    segs = rollout_segments("Reacher-v5", n=2, t=3)
    returns = reward.segment_returns(segs)
    assert returns.shape == (1, 2) and torch.isfinite(returns).all()
    # the real loader: weights from a local file
    weights = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(model.state_dict(), weights)
    loaded = ClipReward(
        0, 0, config(image_size=64, batch_size=4, checkpoint=str(weights)), env=REACHER
    )
    torch.testing.assert_close(loaded.segment_returns(segs), returns, atol=1e-4, rtol=0)
    with pytest.raises(ConfigError, match="not an open_clip model"):
        load_open_clip("ViT-Nope", str(weights))


def test_humanoid_frames_render_at_the_configured_size():
    segs = rollout_segments("Humanoid-v5", n=1, t=2)
    model = tiny_reward(config(image_size=40), env=EnvSpec("Humanoid-v5"))
    assert model.frames is not None and model.frames.renderer().width == 40 == model.image_size
    assert model.segment_returns(segs).shape == (1, 1)
    model.close()
