"""RAPL: optimal transport, the triplet loss, triplets in the pair data model, the sweep env,
the ResNet-18 layout, bad input, tiny runs of the rapl_* exps, and (slow) alignment helps."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

import pbrl.envs  # noqa: F401  (registers pbrl/Sweep-v0)
from pbrl.data import PreferenceDataset
from pbrl.data.triplets import (
    rank_triplet,
    sample_triplets,
    triplet_queries,
    triplets_from_dataset,
)
from pbrl.envs.rollouts import collect_episodes, task_success
from pbrl.envs.spec import EnvSpec
from pbrl.envs.sweep import ZONE_Y, expert_action, sweep_reward_from_qpos
from pbrl.errors import ConfigError
from pbrl.rewards.ot import cosine_cost, ot_similarity, ot_step_rewards, sinkhorn
from pbrl.rewards.rapl import (
    RAPLConfig,
    RAPLInputError,
    RAPLReward,
    alignment_loss,
    triplet_logits,
)
from pbrl.rewards.resnet import BackboneError, drop_classifier, load_backbone, resnet18
from pbrl.teachers.triplet import TripletTeacher
from tests.conftest import segments_with_returns

CONF = Path(__file__).resolve().parent.parent / "conf"


# -- optimal transport -------------------------------------------------------------------------
def test_sinkhorn_hand_solved_2x2():
    """Uniform 2x2, C = [[0, 1], [1, 0]]: by symmetry P = [[p, q], [q, p]] with p + q = 1/2,
    and the entropic optimum has p / q = exp(1 / eps), so p = sigmoid(1 / eps) / 2."""
    cost = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    for eps in (0.5, 0.2, 1.0):
        plan = sinkhorn(cost, eps, 500)
        p = 0.5 / (1.0 + math.exp(-1.0 / eps))
        assert torch.allclose(plan, torch.tensor([[p, 0.5 - p], [0.5 - p, p]], dtype=plan.dtype))


def test_sinkhorn_unequal_marginals_matches_the_lp_solution():
    """a = (0.7, 0.3), b = (0.4, 0.6), C = [[0, 1], [1, 0]]: the transport LP's optimum sends
    0.4 of a_1 to b_1 and the rest of a_1 (0.3) to b_2 at cost 1: P = [[0.4, 0.3], [0, 0.3]]."""
    cost = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    a = torch.tensor([0.7, 0.3], dtype=torch.float64)
    b = torch.tensor([0.4, 0.6], dtype=torch.float64)
    plan = sinkhorn(cost, 0.01, 2000, a, b)
    assert torch.allclose(plan, torch.tensor([[0.4, 0.3], [0.0, 0.3]], dtype=plan.dtype), atol=1e-4)
    assert torch.allclose(plan.sum(1), a, atol=1e-6) and torch.allclose(plan.sum(0), b, atol=1e-6)


def test_sinkhorn_approaches_exact_ot_on_tiny_problems():
    """Uniform marginals, N = M: exact OT is a permutation (Birkhoff), found here by brute
    force; a small-epsilon Sinkhorn plan costs the same, and where the best permutation
    beats the runner-up clearly, it is that permutation / N."""
    gen = torch.Generator().manual_seed(0)
    clear = 0
    for n in (3, 4, 5):
        cost = torch.rand(6, n, n, generator=gen, dtype=torch.float64)
        plan = sinkhorn(cost, 0.002, 3000)
        perms = np.array(list(itertools.permutations(range(n))))  # every permutation matrix
        for k in range(len(cost)):
            sums = cost[k].numpy()[np.arange(n), perms].sum(1)
            first, second = np.sort(sums)[:2]
            best = perms[np.argmin(sums)]
            assert float((plan[k] * cost[k]).sum()) == pytest.approx(first / n, abs=2e-3)
            if (second - first) / n > 0.01:  # 5 x epsilon
                clear += 1
                exact = torch.zeros(n, n, dtype=torch.float64)
                exact[torch.arange(n), torch.as_tensor(best)] = 1.0 / n
                assert torch.allclose(plan[k], exact, atol=0.01)
    assert clear >= 10


def test_sinkhorn_batches_keep_marginals_and_stay_finite_for_tiny_epsilon():
    cost = torch.rand(2, 3, 7, 5, generator=torch.Generator().manual_seed(1))
    plan = sinkhorn(cost, 0.01, 2000)
    assert plan.shape == (2, 3, 7, 5)
    assert torch.allclose(plan.sum(-1), torch.full((2, 3, 7), 1 / 7), atol=1e-4)
    assert torch.allclose(plan.sum(-2), torch.full((2, 3, 5), 1 / 5), atol=1e-5)
    # costs 50 000 x epsilon: exp(-C / eps) underflows, the log-domain iterations do not
    assert torch.isfinite(sinkhorn(cost * 50, 1e-3, 50)).all()
    with pytest.raises(ValueError, match="epsilon"):
        sinkhorn(cost, 0.0)


def test_step_rewards_sum_to_the_similarity_and_gradients_reach_the_embeddings():
    x = torch.randn(4, 6, 8, requires_grad=True)
    y = torch.randn(4, 5, 8)
    per_step = ot_step_rewards(x, y, 0.05, "cosine")
    assert per_step.shape == (4, 6)
    assert torch.allclose(per_step.sum(-1), ot_similarity(x, y, 0.05, "cosine"))
    assert (cosine_cost(x, y) >= -1e-6).all() and (cosine_cost(x, y) <= 2 + 1e-6).all()
    ot_similarity(x, y, 0.05, "euclidean").sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    same = ot_similarity(y, y, 0.01, "cosine")  # a video matches itself best
    other = ot_similarity(y, y.flip(0), 0.01, "cosine")
    assert (same > other - 1e-6).all()


# -- the triplet loss ----------------------------------------------------------------------------
def test_triplet_loss_on_hand_values():
    """One-frame videos: the plan is [[1]], s = -||A - x||. Anchor at 0, x1 at distance 1, x2
    at distance 3: logit s(A,x1) - s(A,x2) = 2. Loss with target 1: log(1 + e^-2) = 0.126928;
    target 0.5 (equal): (log(1 + e^-2) + log(1 + e^2)) / 2 = 1.126928; x1 and x2 swapped, 1:
    log(1 + e^2) = 2.126928."""
    a = torch.zeros(1, 1, 2)
    x1 = torch.tensor([[[1.0, 0.0]]])
    x2 = torch.tensor([[[0.0, 3.0]]])
    logits = triplet_logits(a, x1, x2, 0.05, "euclidean")
    assert logits.item() == pytest.approx(2.0, abs=1e-5)
    assert alignment_loss(logits, torch.tensor([1.0])).item() == pytest.approx(0.126928, abs=1e-5)
    assert alignment_loss(logits, torch.tensor([0.5])).item() == pytest.approx(1.126928, abs=1e-5)
    swapped = triplet_logits(a, x2, x1, 0.05, "euclidean")
    assert alignment_loss(swapped, torch.tensor([1.0])).item() == pytest.approx(2.126928, abs=1e-5)


def test_triplet_logits_transport_frames_in_time():
    """Two-frame videos: anchor frames at 0 and 10, x1 at 1 and 11 (each frame 1 away from
    its partner), x2 at 3 and 13; small epsilon matches frames in order: logit 3 - 1 = 2."""
    a = torch.tensor([[[0.0], [10.0]]])
    x1 = torch.tensor([[[1.0], [11.0]]])
    x2 = torch.tensor([[[3.0], [13.0]]])
    assert triplet_logits(a, x1, x2, 0.01, "euclidean").item() == pytest.approx(2.0, abs=1e-3)


# -- triplets in the pair data model, and the scripted triplet teacher ---------------------------
def test_rank_triplet_reads_rankings_ties_and_rejects_cycles():
    assert rank_triplet({"ab": 0.0, "ac": 0.0, "bc": 0.0}) == ([0, 1, 2], 1.0)  # a > b > c
    assert rank_triplet({"ab": 1.0, "ac": 1.0, "bc": 0.0}) == ([1, 2, 0], 1.0)  # b > c > a
    assert rank_triplet({"ab": 0.0, "ac": 0.0, "bc": 0.5}) == ([0, 1, 2], 0.5)  # a > b = c
    assert rank_triplet({"ab": 0.5, "ac": 0.5, "bc": 0.5}) == ([0, 1, 2], 0.5)  # all equal
    assert rank_triplet({"ab": 0.0, "ac": 1.0, "bc": 0.0}) is None  # a > b > c > a
    assert rank_triplet({"ab": 0.0, "ac": float("nan"), "bc": 0.0}) is None  # a skip
    assert rank_triplet({"ab": 0.0, "bc": 0.0}) is None  # incomplete


def test_triplets_are_three_pairs_that_read_back_as_rankings(tmp_path):
    seg = segments_with_returns(np.array([5.0, 1.0, 3.0, 2.0, 9.0, 0.0]))
    q = triplet_queries(seg[[0, 3]], seg[[1, 4]], seg[[2, 5]], np.array(["t0", "t1"]))
    assert list(q.query_id) == ["t0:ab", "t0:ac", "t0:bc", "t1:ab", "t1:ac", "t1:bc"]
    labels = TripletTeacher(rng=np.random.default_rng(0))(q)
    assert labels.tolist() == [0.0, 0.0, 1.0, 1.0, 0.0, 0.0]  # 5 > 3 > 1; 9 > 2 > 0
    path = PreferenceDataset(q, labels).save(tmp_path / "triplets.npz")
    triplets, dropped = triplets_from_dataset(PreferenceDataset.load(path))
    assert triplets is not None and dropped == 0
    assert triplets.anchor.returns().tolist() == [5.0, 9.0]
    assert triplets.first.returns().tolist() == [3.0, 2.0]
    assert triplets.second.returns().tolist() == [1.0, 0.0]
    assert triplets.target.tolist() == [1.0, 1.0]
    # a cycle is left out
    cyc = PreferenceDataset(q, np.array([0.0, 1.0, 0.0, 1.0, 0.0, 0.0]))
    kept, dropped = triplets_from_dataset(cyc)
    assert dropped == 1 and kept is not None and kept.triplet_id.tolist() == ["t1"]


def test_triplets_go_through_the_sqlite_label_store_as_pairs(tmp_path):
    """A person answering a triplet's three pairs on the labeling page (real SQLite store):
    the collected labels read back as the same ranking."""
    from pbrl.store import LabelStore

    rng = np.random.default_rng(0)
    pool = collect_episodes("pbrl/Sweep-v0", 6, 0, rng)
    q = sample_triplets(pool, 2, rng)
    truth = TripletTeacher()(q)
    store = LabelStore(tmp_path / "labels.sqlite")
    assert store.add_queries(q, source="rapl") == list(q.query_id)
    by_id = dict(zip(q.query_id, truth, strict=True))
    while (lease := store.lease("ann")) is not None:
        store.answer(lease.lease_id, "ann", by_id[lease.query_id])
    collected = store.collect(["rapl"])
    assert collected is not None and len(collected) == 6
    got, dropped = triplets_from_dataset(collected)
    want, _ = triplets_from_dataset(PreferenceDataset(q, truth))
    assert dropped == 0 and got is not None and want is not None
    order = np.argsort(got.triplet_id)
    assert got.triplet_id[order].tolist() == sorted(want.triplet_id.tolist())
    np.testing.assert_allclose(
        got.anchor.returns()[order], want.anchor.returns()[np.argsort(want.triplet_id)]
    )
    store.close()


def test_triplet_teacher_noise_stays_consistent_and_applies_b_pref_options():
    rng = np.random.default_rng(0)
    seg = segments_with_returns(rng.normal(size=300) * 3)
    q = sample_triplets(seg, 100, rng)
    noisy = TripletTeacher(beta=0.5, eps_mistake=0.2, rng=np.random.default_rng(1))(q)
    triplets, dropped = triplets_from_dataset(PreferenceDataset(q, noisy))
    assert dropped == 0 and triplets is not None and len(triplets) == 100  # never a cycle
    oracle = TripletTeacher(rng=np.random.default_rng(1))(q)
    assert 0.5 < np.mean(noisy == oracle) < 0.95  # noisy, but informative
    tied = segments_with_returns(np.array([1.0, 1.05, 5.0]))
    tq = triplet_queries(tied[[0]], tied[[1]], tied[[2]])
    assert TripletTeacher(eps_equal=0.1)(tq).tolist() == [0.5, 1.0, 1.0]  # a = b < c
    low = segments_with_returns(np.array([0.1, 0.2, 0.3, 5.0, 6.0, 7.0]))
    lq = triplet_queries(low[[0, 3]], low[[1, 4]], low[[2, 5]])
    skipped = TripletTeacher(eps_skip=0.5)(lq)
    assert np.isnan(skipped[:3]).all() and not np.isnan(skipped[3:]).any()
    with pytest.raises(ConfigError, match="beta"):
        TripletTeacher(beta=-1.0)


# -- the sweep env ---------------------------------------------------------------------------------
def test_sweep_pushing_a_block_into_the_zone_raises_the_reward_and_the_path_does_not_matter():
    env = gym.make("pbrl/Sweep-v0")
    env.reset(seed=0)
    u = env.unwrapped
    # block 0 just below the zone with the agent under it; the others far away, low
    qpos = np.array([0.0, -0.05, 0.0, ZONE_Y - 0.08, -0.35, -0.3, 0.35, -0.3])
    u.set_state(qpos, np.zeros(u.model.nv))
    rewards, infos = [], []
    for _ in range(4):
        _, r, terminated, truncated, info = env.step(np.array([0.0, 1.0]))
        rewards.append(r)
        infos.append(info)
        assert not terminated
    assert u.block_xy[0, 1] > ZONE_Y  # pushed in
    assert infos[-1]["reward_in_zone"] == pytest.approx(1 / 3)
    assert rewards[-1] > rewards[0] and rewards[-1] == pytest.approx(
        infos[-1]["reward_in_zone"] + infos[-1]["reward_progress"]
    )
    assert sweep_reward_from_qpos(u.data.qpos) == pytest.approx(rewards[-1])
    # the agent wandering without touching a block changes nothing
    u.set_state(qpos, np.zeros(u.model.nv))
    _, r0, *_ = env.step(np.zeros(2))
    for a in ([-1.0, 0.0], [1.0, 0.0], [0.0, -1.0]):
        _, r, *_ = env.step(np.array(a))
        assert r == pytest.approx(r0)
    # episodes last max_episode_steps and the scripted sweeper solves them
    env.reset(seed=3)
    for t in range(50):
        _, _, terminated, truncated, info = env.step(expert_action(u))
    assert truncated and info["success"] == 1.0 and task_success("pbrl/Sweep-v0", u.data.qpos)


def test_sweep_and_pusher_render_from_stored_state():
    from pbrl.video import StateRenderer

    with StateRenderer("pbrl/Sweep-v0", 64, 64) as r:
        assert not r.follow  # the arena is the first body: a fixed camera
        u = r.env.unwrapped
        r.env.reset(seed=0)
        q, v = u.data.qpos.copy(), u.data.qvel.copy()
        a = r.render(q, v)
        assert np.array_equal(a, r.render(q, v))  # a function of the state alone
        zone = a[10:16, 20:44].reshape(-1, 3).mean(0)  # the green strip along the top
        assert zone[1] > zone[0] + 40 and zone[1] > zone[2] + 40
        q2 = q.copy()
        q2[2:4] = [0.0, 0.4]  # block 0 into the zone
        assert not np.array_equal(a, r.render(q2, v))
    pusher = compose_cfg("rapl_pusher").env
    with StateRenderer("Pusher-v5", 64, 64) as r:
        from pbrl.envs.render import apply_camera

        apply_camera(r, dict(pusher.camera))
        r.env.reset(seed=0)
        u = r.env.unwrapped
        q, v = u.data.qpos.copy(), u.data.qvel.copy()
        a = r.render(q, v)
        q2 = q.copy()
        q2[7:9] += 0.15  # the object moved: visible in the frame
        assert np.abs(a.astype(int) - r.render(q2, v)).sum() > 100
    assert task_success("Pusher-v5", np.r_[np.zeros(7), 0.02, 0.0, 0.0, 0.0])
    assert not task_success("Pusher-v5", np.r_[np.zeros(7), 0.3, 0.0, 0.0, 0.0])


# -- the backbone: torchvision's layout, weights files, bad input ----------------------------------
def resnet18_layout() -> dict[str, tuple[int, ...]]:
    """torchvision's resnet18 state_dict, written out from the architecture: a 7x7 stem, four
    stages of two basic blocks (64, 128, 256, 512 channels; stages 2-4 start with a strided
    block and a 1x1 downsample), the 1000-way fc."""
    layout: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 7, 7)}

    def bn(prefix: str, c: int) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            layout[f"{prefix}.{name}"] = (c,)
        layout[f"{prefix}.num_batches_tracked"] = ()

    bn("bn1", 64)
    c_in = 64
    for stage, c in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            p = f"layer{stage}.{block}"
            layout[f"{p}.conv1.weight"] = (c, c_in if block == 0 else c, 3, 3)
            bn(f"{p}.bn1", c)
            layout[f"{p}.conv2.weight"] = (c, c, 3, 3)
            bn(f"{p}.bn2", c)
            if block == 0 and stage > 1:
                layout[f"{p}.downsample.0.weight"] = (c, c_in, 1, 1)
                bn(f"{p}.downsample.1", c)
        c_in = c
    layout["fc.weight"] = (1000, 512)
    layout["fc.bias"] = (1000,)
    return layout


def test_the_backbone_is_torchvisions_resnet18_returning_the_pooled_feature():
    net = resnet18()  # imports torchvision (see pbrl.rewards.resnet on its compiled ops)
    import torchvision

    expected = resnet18_layout()
    assert type(net) is torchvision.models.ResNet
    got = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert len(expected) == 122  # torchvision's resnet18 has 122 state_dict entries
    assert list(got) == list(expected) and got == expected
    assert drop_classifier(net).eval()(torch.zeros(2, 3, 112, 112)).shape == (2, 512)


@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory) -> Path:
    """A torchvision-layout checkpoint (random weights): no pre-training in the fast tests."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("backbone") / "resnet18.pth"
    torch.save(resnet18().state_dict(), path)
    return path


def test_backbone_files_load_and_bad_ones_are_one_clear_error(tmp_path, backbone_file):
    net, info = load_backbone(backbone_file)
    assert info["source"] == "file" and len(info["sha256"]) == 16
    assert info["network"] == "torchvision.models.resnet18"
    saved = torch.load(backbone_file)
    for key, value in net.state_dict().items():  # every weight loaded; the classifier dropped
        assert torch.equal(value, saved[key]), key
    assert "fc.weight" not in net.state_dict()
    with pytest.raises(ConfigError, match="no such file"):
        RAPLConfig(backbone_weights=str(tmp_path / "missing.pth"))
    with pytest.raises(BackboneError, match="no such file"):
        load_backbone(tmp_path / "missing.pth")
    state = resnet18().state_dict()
    state.pop("layer4.1.bn2.weight")
    state["head.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "other.pth")
    with pytest.raises(BackboneError, match="missing: layer4.1.bn2.weight.*unexpected: head") as e:
        load_backbone(tmp_path / "other.pth")
    assert "\n" not in str(e.value)
    resnet34 = resnet18().state_dict()  # a state dict of the wrong shape (a wider stem)
    resnet34["conv1.weight"] = torch.zeros(32, 3, 7, 7)
    torch.save(resnet34, tmp_path / "wide.pth")
    with pytest.raises(BackboneError, match="shape: conv1.weight") as e:
        load_backbone(tmp_path / "wide.pth")
    assert "\n" not in str(e.value)
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(BackboneError, match="cannot be read") as e:
        load_backbone(tmp_path / "junk.pth")
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="renders the env's states"):
        RAPLReward(0, 0, RAPLConfig())  # the env is the run's: none given
    with pytest.raises(ConfigError, match="train_cost"):
        RAPLConfig(train_cost="manhattan")


SWEEP = EnvSpec("pbrl/Sweep-v0")  # the run's env, as the reward is handed it


def small_rapl(backbone_file: Path) -> RAPLReward:
    cfg = RAPLConfig(
        image_size=64,
        backbone_weights=str(backbone_file),
        frame_stride=25,
        epochs=3,
    )
    return RAPLReward(0, 0, cfg, env=SWEEP)


def test_rapl_reward_fits_scores_and_refuses_bad_input(tmp_path, backbone_file):
    rng = np.random.default_rng(0)
    pool = collect_episodes("pbrl/Sweep-v0", 6, 0, rng)
    model = small_rapl(backbone_file)
    with pytest.raises(
        RAPLInputError, match=r"uint8 \[B, 64, 64, 3\].*got torch.uint8 \(2, 112, 112, 3\)"
    ):
        model.encoder.frame_features(np.zeros((2, 112, 112, 3), np.uint8))
    from pbrl.errors import ConfigError
    from pbrl.rewards.dispatch import Steps, score_steps, scores_episodes, scores_steps

    assert scores_episodes(model) and not scores_steps(model)
    with pytest.raises(ConfigError, match="EpisodeReward: it has no reward of a single step"):
        score_steps(model, Steps(pool.obs[0], pool.act[0]))
    with pytest.raises(RuntimeError, match="no demonstration"):
        model.segment_returns(pool)
    q = sample_triplets(pool, 4, rng)
    prefs = PreferenceDataset(q, TripletTeacher()(q))
    before = model.head.weight.detach().clone()
    fit = model.fit(prefs, rng)
    assert fit["triplets"] == 4 and fit["epochs"] == 3 and fit["updates"] == 3
    assert not torch.equal(before, model.head.weight)
    assert model.demo_features.shape == (4, 2, 512)  # the winners, 2 frames each
    returns = model.segment_returns(pool)
    assert returns.shape == (1, 6) and torch.isfinite(returns).all()
    assert pool.qpos is not None and pool.qvel is not None
    per_step = model.episode_rewards(pool.qpos, pool.qvel)
    assert per_step.shape == (6, 50)
    np.testing.assert_allclose(per_step.sum(1), returns[0].numpy(), rtol=1e-5)
    model.save(tmp_path / "rapl.pt")
    again = RAPLReward.load(tmp_path / "rapl.pt")
    assert torch.allclose(again.segment_returns(pool), returns)


# -- episode-level relabeling in PPO ---------------------------------------------------------------
from fake_rewards import StepIndexReward  # noqa: E402


def test_episodic_relabel_writes_episode_rewards_into_the_rollout_and_recomputes_gae():
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback, CallbackList

    from pbrl.online.episodic import EpisodeRecorder, EpisodicRelabel
    from pbrl.sim import make_vec_env

    recorder = EpisodeRecorder(make_vec_env("gymnasium", "pbrl/Sweep-v0", 2, 0))
    seen: dict[str, np.ndarray] = {}

    class Peek(BaseCallback):
        def _on_step(self) -> bool:
            return True

        def _on_rollout_end(self) -> None:
            buf = self.model.rollout_buffer
            seen["rewards"] = buf.rewards.copy()
            seen["returns"] = buf.returns.copy()
            seen["values"] = buf.values.copy()
            seen["advantages"] = buf.advantages.copy()

    model = PPO("MlpPolicy", recorder, n_steps=100, batch_size=50, n_epochs=1, gamma=0.9, seed=0)
    model.learn(
        200, callback=CallbackList([EpisodicRelabel(recorder, StepIndexReward(), False), Peek()])
    )
    r = seen["rewards"]
    steps = np.tile(np.arange(1, 51), 2)[:, None]
    inner = np.ones(100, bool)
    inner[[49, 99]] = False  # episode ends: SB3 adds gamma V(s_T) at the time limit
    np.testing.assert_allclose(r[inner], np.broadcast_to(steps, r.shape)[inner], rtol=1e-6)
    assert not np.allclose(r[~inner], np.broadcast_to(steps, r.shape)[~inner])  # + bootstrap
    np.testing.assert_allclose(seen["returns"], seen["advantages"] + seen["values"], rtol=1e-5)
    # GAE from the relabeled rewards: at the step before an episode's end, delta = r - V + ...
    assert seen["advantages"][48, 0] > 40  # rewards of ~50 per step reach the advantages


# -- tiny runs of the rapl_* exps, through the trainer's hook -----------------------------------------
def compose_cfg(exp: str, overrides: list[str] | None = None):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=[f"+exp={exp}", *(overrides or [])])


@pytest.mark.parametrize(
    ("exp", "reward"),
    [
        ("rapl_sweep", "rapl"),
        ("rapl_pusher", "rapl"),
        ("rapl_paper_sweep", "rapl"),
        ("rapl_sweep", "image"),
        ("rapl_sweep", "rlhf_linear"),
    ],
)
def test_tiny_rapl_exp_runs(exp, reward, tmp_path, backbone_file):
    """Every rapl_* exp end to end (reward=image: the RLHF baseline's policy, same pipeline)."""
    from pbrl.recipes import run as run_config
    from pbrl.train import validate

    length = 50 if exp == "rapl_sweep" else 100
    if reward in ("rapl", "rlhf_linear"):
        reward_overrides = [
            f"reward.backbone_weights={backbone_file}",
            "reward.image_size=64",
            f"episodic.frame_stride={length // 2}",
            "reward.epochs=2",
            *([] if reward == "rapl" else ["reward=rlhf_linear"]),
            *(["episodic.n_frames=3", "episodic.equal_fraction=0"] if "paper" in exp else []),
        ]
    else:
        reward_overrides = ["reward=image", "reward.n_members=1", "reward.max_epochs=2"]
    cfg = compose_cfg(
        exp,
        [
            f"total_timesteps={length}",
            "n_envs=1",
            "max_feedback=2",
            f"episodic.pool_episodes={12 if 'paper' in exp else 4}",  # separated triplets
            "episodic.heldout_episodes=3",
            "++episodic.n_demos=1",  # rapl_pusher uses preferred videos: no n_demos key
            *reward_overrides,
            f"algo.kwargs.n_steps={length}",
            f"algo.kwargs.batch_size={length}",
            "algo.kwargs.n_epochs=1",
            "eval.n_episodes=1",
            "eval.random_episodes=1",
            "video.enabled=false",
            "progress_bar=false",
        ],
    )
    validate(cfg)
    summary = run_config(cfg, tmp_path)
    assert summary["algo"] == "rapl" and summary["total_timesteps"] == length
    assert summary["num_queries"] == 6  # 2 triplets = 6 pairs
    assert summary["heldout_videos"] == 3 and "heldout_spearman" in summary
    assert "heldout_within_spearman" in summary and summary["heldout_within_constant"] >= 0
    assert 0.0 <= summary["eval_success_rate"] <= 1.0
    assert (tmp_path / "preferences.npz").exists() and (tmp_path / "reward_model.pt").exists()
    if reward in ("rapl", "rlhf_linear"):
        assert summary["backbone"]["path"] == str(backbone_file.resolve())
        demos = "preferred" if exp == "rapl_pusher" else "expert x 1"
        assert summary["demos"] == (demos if reward == "rapl" else None)
    else:
        assert summary["backbone"] is None and summary["reward_kind"] == "image"


# a whole +exp=rapl_sweep run in seconds: one env, 50 steps, one PPO update, 64 px frames
TINY_RAPL_RUN = [
    "total_timesteps=50",
    "n_envs=1",
    "episodic.heldout_episodes=3",
    "episodic.n_demos=1",
    "reward.image_size=64",
    "episodic.frame_stride=25",
    "reward.epochs=2",
    "algo.kwargs.n_steps=50",
    "algo.kwargs.batch_size=50",
    "algo.kwargs.n_epochs=1",
    "eval.n_episodes=1",
    "eval.random_episodes=1",
    "video.enabled=false",
    "progress_bar=false",
]


def test_people_rank_a_rapl_runs_triplets_on_the_labeling_page(tmp_path, backbone_file):
    """teacher=human: the run puts its triplets in the label store and waits; a scripted
    person ranks each (three clips) through the page's API; the run aligns on the rankings.
    No one answering in time is one error naming the fix, never a run that learned nothing."""
    pytest.importorskip("fastapi", reason="the web stack is not installed: pip install -e .[gui]")
    from test_human_loop import ScriptedPerson, free_port

    from pbrl.gui.server import BackgroundServer
    from pbrl.recipes import run as run_config
    from pbrl.store import LabelStore

    store = tmp_path / "labels.sqlite"
    LabelStore(store)
    tiny = [
        *TINY_RAPL_RUN,
        "max_feedback=3",
        "episodic.pool_episodes=5",
        f"reward.backbone_weights={backbone_file}",
        "teacher=human",
        f"teacher.store={store}",
        "wait.poll_s=0.05",
    ]
    with BackgroundServer(store, port=free_port(), prerender=0) as server:
        person = ScriptedPerson(server.url, store)
        person.start()
        cfg = compose_cfg("rapl_sweep", [*tiny, "wait.timeout_s=120"])
        summary = run_config(cfg, tmp_path / "run")
        person.stop.set()
    assert not person.errors, person.errors
    assert len(person.answered) == 3  # three triplet leases, one ranking each
    assert summary["num_queries"] == 9 and summary["num_labels"] >= 6
    prefs = PreferenceDataset.load(tmp_path / "run" / "preferences.npz")
    triplets, dropped = triplets_from_dataset(prefs)
    assert triplets is not None and len(triplets) + dropped == 3 and len(triplets) >= 2
    answers = LabelStore(store, readonly=True).answers()
    assert len(answers) == 9 and {a["annotator"] for a in answers} == {"scripted-person"}

    # nobody ranks: one clear error after the wait, naming what to do
    cfg = compose_cfg("rapl_sweep", [*tiny, f"teacher.store={tmp_path}/empty.sqlite",
                                     "wait.timeout_s=1", "seed=3"])  # fmt: skip
    with pytest.raises(ConfigError, match="none of the 3 triplets"):
        run_config(cfg, tmp_path / "run2")


def test_a_routing_teacher_ranks_a_rapl_runs_triplets(tmp_path, backbone_file):
    """teacher=vlm_then_human in the episodic recipe, as in online and offline runs: the mock
    VLM labels the triplets' pairs it can decide; those it is unsure about go to the label
    store (nobody answers here: skipped after the wait) and the run aligns on the rest."""
    pytest.importorskip("fastapi", reason="the web stack is not installed: pip install -e .[gui]")
    pytest.importorskip("openai")
    from support.vlm import RecordingMockVLM

    from pbrl.recipes import run as run_config
    from pbrl.store import LabelStore

    store = tmp_path / "labels.sqlite"
    with RecordingMockVLM(score_rendered=True, malformed=0.3, seed=1) as vlm:
        cfg = compose_cfg("rapl_sweep", [
            "total_timesteps=50", "n_envs=1", "max_feedback=4", "episodic.pool_episodes=6",
            "episodic.heldout_episodes=3", "episodic.n_demos=1",
            f"reward.backbone_weights={backbone_file}", "reward.image_size=64",
            "episodic.frame_stride=25", "reward.epochs=2", "algo.kwargs.n_steps=50",
            "algo.kwargs.batch_size=50", "algo.kwargs.n_epochs=1", "eval.n_episodes=1",
            "eval.random_episodes=1", "video.enabled=false", "progress_bar=false",
            "teacher=vlm_then_human", f"teacher.vlm.base_url={vlm.base_url}",
            f"teacher.vlm.model={vlm.model}", "teacher.vlm.api_key_env=null",
            f"teacher.vlm.cache={tmp_path}/vlm.sqlite", "teacher.vlm.size=64",
            f"teacher.human.store={store}", "wait.timeout_s=5", "wait.poll_s=0.05",
        ])  # fmt: skip
        summary = run_config(cfg, tmp_path / "run")
    assert summary["teacher"]["_target_"] == "pbrl.teachers.vlm_human.VLMThenHuman"
    routed = summary["teacher"]["routed_to_people"]
    assert summary["num_queries"] == 12 and 0 < routed < 12  # 4 triplets = 12 pairs
    assert summary["num_labels"] == summary["teacher"]["labels_from_vlm"] > 0
    assert LabelStore(store, readonly=True).counts()["total"] == routed


def test_rapl_exp_settings_are_checked_before_any_work(backbone_file):
    from pbrl.train import validate

    weights = f"reward.backbone_weights={backbone_file}"
    bad = {
        ("algo.kwargs.n_steps=120", weights): "not a multiple of the episode length 50",
        ("reward=ensemble",): "scores states: use reward=rapl, reward=ot or reward=image",
        ("episodic.demos=best", weights): "use expert or preferred",
        ("env=pusher", weights): "no scripted expert for Pusher-v5",
        ("reward.backbone_weights=/no/such/resnet18.pth",): "no such file",
    }
    for overrides, message in bad.items():
        with pytest.raises(ConfigError, match=message):
            validate(compose_cfg("rapl_sweep", list(overrides)))


# -- slow: does alignment help? ---------------------------------------------------------------------
@pytest.mark.slow
def test_aligned_encoder_ranks_held_out_sweep_videos_better_than_the_unaligned_one(tmp_path):
    """60 triplets ranked by the oracle teacher; Spearman with the true return on 40 held-out
    videos, RAPL's aligned head vs the un-aligned backbone, same demonstrations, same
    backbone (pre-trained here, the default method)."""
    from pbrl.online.episodic import spearman
    from pbrl.rewards.rapl import VideoEncoder

    rng = np.random.default_rng(0)
    pool = collect_episodes("pbrl/Sweep-v0", 90, 0, rng)
    heldout = collect_episodes("pbrl/Sweep-v0", 40, 500, rng)
    demos = collect_episodes("pbrl/Sweep-v0", 5, 900, rng, (0.0, 0.0))
    cfg = RAPLConfig(frame_stride=5, pretrain_dir=str(tmp_path))
    encoder = VideoEncoder(cfg, env=SWEEP)
    q = sample_triplets(pool, 60, rng)
    prefs = PreferenceDataset(q, TripletTeacher()(q))
    rho = {}
    for align in (True, False):
        model = RAPLReward(0, 0, RAPLConfig(**{**cfg.__dict__, "align": align}), encoder=encoder)
        model.set_demonstrations(demos)
        model.fit(prefs, np.random.default_rng(0))
        rho[align] = spearman(model.segment_returns(heldout)[0].numpy(), heldout.returns())
    print("Spearman aligned / un-aligned:", rho)
    assert rho[True] > rho[False] + 0.1


def test_a_run_that_pretrains_the_backbone_learns_what_a_run_that_finds_it_does(tmp_path):
    """Pre-training the backbone (no file yet) leaves torch's global RNG as it was: the same
    seed gives the same triplets, reward and policy whether the backbone was made by this run
    or found from an earlier one (the first bench run of a machine used to differ)."""
    from pbrl.recipes import run as run_config

    tiny = [
        *TINY_RAPL_RUN,
        "max_feedback=2",
        "episodic.pool_episodes=4",
        f"reward.pretrain_dir={tmp_path / 'backbones'}",
        "reward.pretrain_episodes=1",
        "reward.pretrain_steps=2",
    ]
    first = run_config(compose_cfg("rapl_sweep", tiny), tmp_path / "made")
    second = run_config(compose_cfg("rapl_sweep", tiny), tmp_path / "found")
    assert len(list((tmp_path / "backbones").iterdir())) == 1  # made once, then found
    assert first["heldout_spearman"] == second["heldout_spearman"]
    assert first["eval_true_return_mean"] == second["eval_true_return_mean"]
    a = np.load(tmp_path / "made" / "preferences.npz")
    b = np.load(tmp_path / "found" / "preferences.npz")
    assert a.files == b.files
    assert [k for k in a.files if not np.array_equal(a[k], b[k])] == ["answered_at"]  # clock
