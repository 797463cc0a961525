"""The VLM teacher (RL-VLM-F labeling) against a real local HTTP server through the real
``openai`` client: prompts and parsing, agreement with the oracle, identical pairs, the
answer cache, retries with backoff, the concurrency cap and rate limit, asynchronous answers,
the start-up probe, and a tiny online run."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import queue
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import TINY, with_overrides
from hydra import compose, initialize_config_dir
from PIL import Image
from support.vlm import RecordingMockVLM

from pbrl.data import Queries
from pbrl.data.pool import TrajectoryPool
from pbrl.data.preferences import oracle_labels
from pbrl.envs.spec import EnvSpec
from pbrl.errors import ConfigError
from pbrl.online.wrappers import random_rollout_pool
from pbrl.run import build_teacher
from pbrl.teachers.base import WaitPolicy, ask, wait_for
from pbrl.teachers.vlm import (
    VLMTeacher,
    analysis_messages,
    answer_label,
    label_messages,
    parse_answer,
)
from pbrl.teachers.vlm.images import ImageSpec, SegmentImager, render_segment_images
from pbrl.teachers.vlm.mock import main as mock_main
from pbrl.train import CONF_DIR

pytest.importorskip("openai")

ROOT = Path(__file__).resolve().parent.parent
GOAL = "the tip of the robot arm touches the red target ball"


@pytest.fixture(scope="module")
def reacher_pool() -> TrajectoryPool:
    return random_rollout_pool("Reacher-v5", 300)


def queries_from(pool: TrajectoryPool, n: int, seed: int = 0) -> Queries:
    return pool.sample_queries(n, 10, np.random.default_rng(seed))


@pytest.fixture
def vlm():
    with RecordingMockVLM(score_rendered=True) as server:
        yield server


def make_teacher(server: RecordingMockVLM, tmp_path: Path, **kwargs) -> VLMTeacher:
    settings = {
        "model": server.model,
        "base_url": server.base_url,
        "api_key_env": None,
        "goal": GOAL,
        "env": EnvSpec("Reacher-v5"),
        "size": 64,
        "cache": str(tmp_path / "vlm.sqlite"),
        "max_concurrency": 4,
        "requests_per_second": None,
        "backoff_s": 0.02,
        **kwargs,
    }
    return VLMTeacher(**settings)


def wait_all(teacher: VLMTeacher, timeout: float = 30.0):
    """Collect until every submitted pair is answered (the run's ``wait.for_round``)."""
    got, timed_out = wait_for(teacher, WaitPolicy(all_asked=True, timeout_s=timeout, poll_s=0.02))
    assert not timed_out and teacher.outstanding() == 0, "answers did not arrive in time"
    assert teacher.pairs_done == teacher.submitted
    return got


def label(teacher: VLMTeacher, queries: Queries, timeout: float = 60.0) -> np.ndarray:
    """Synchronous labeling: every pair's label, in order (NaN: skipped)."""
    return ask(teacher, queries, WaitPolicy(timeout_s=timeout, poll_s=0.02)).labels


def by_id(data) -> dict[str, float]:
    return dict(zip(data.queries.query_id.tolist(), data.labels.tolist(), strict=True))


# -- prompts and parsing -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "answer"),
    [
        ("0", 0),
        ("1", 1),
        ("-1", -1),
        ("  1  \nbecause Image 2 is closer", 1),
        ("\n0\n", 0),
        ("1.", -1),
        ("**1**", -1),
        ("Image 2", -1),
        ("The answer is: 1\n1", -1),  # only the first line counts
        ("2", -1),
        ("01", -1),
        ("-0", -1),
        ("+1", -1),
        ("", -1),
        (None, -1),
        ("1 0", -1),
    ],
)
def test_parse_answer(reply, answer):
    assert parse_answer(reply) == answer


def test_answer_labels_follow_pbrl_convention():
    assert answer_label(0) == 0.0 and answer_label(1) == 1.0 and math.isnan(answer_label(-1))


def test_prompts_carry_goal_images_and_analysis():
    spec = ImageSpec("k", num_frames=3)
    msgs = analysis_messages("reach the ball", [b"a1", b"a2", b"a3"], [b"b1", b"b2", b"b3"], spec)
    parts = msgs[0]["content"]
    kinds = [p["type"] for p in parts]
    assert kinds == ["text"] + ["image_url"] * 3 + ["text"] + ["image_url"] * 3 + ["text"]
    assert "Image 1" in parts[0]["text"] and "Image 2" in parts[4]["text"]
    assert "The goal is: reach the ball" in parts[-1]["text"]
    assert parts[1]["image_url"]["url"].startswith("data:image/png;base64,")
    text = label_messages("reach the ball", "Image 2 is closer.")[0]["content"]
    assert isinstance(text, str) and "Image 2 is closer." in text and "reach the ball" in text
    assert "0 if the goal is better achieved in Image 1" in text and "-1" in text


# -- labels over real HTTP -----------------------------------------------------------------------


def test_labels_agree_with_oracle_at_noise_0(reacher_pool, tmp_path):
    queries = queries_from(reacher_pool, 16)
    with RecordingMockVLM() as server:  # scores registered by hand, from the true returns
        teacher = make_teacher(server, tmp_path, size=224)
        server.register_segments(teacher.segment_images(queries.first), queries.first.returns())
        server.register_segments(teacher.segment_images(queries.second), queries.second.returns())
        labels = label(teacher, queries)
        stats = teacher.stats()
        teacher.close()
    oracle = oracle_labels(queries)
    decided = oracle != 0.5
    assert decided.sum() >= 12
    np.testing.assert_array_equal(labels[decided], oracle[decided])
    assert server.stage_requests == {1: 16, 2: 16}
    assert all(b["temperature"] == 0 for b in server.bodies)
    first = next(b for b in server.bodies if not isinstance(b["messages"][0]["content"], str))
    png = next(p for p in first["messages"][0]["content"] if p["type"] == "image_url")
    import base64

    image = Image.open(io.BytesIO(base64.b64decode(png["image_url"]["url"].split(",")[1])))
    assert image.size == (224, 224)
    assert GOAL in first["messages"][0]["content"][-1]["text"]
    assert stats["vlm_accuracy"] == 1.0 and stats["vlm_requests"] == 32
    assert stats["vlm_tokens"] > 0 and stats["vlm_unsure_fraction"] == 0.0


def test_noise_flips_labels(reacher_pool, tmp_path):
    queries = queries_from(reacher_pool, 12, seed=1)
    with RecordingMockVLM(noise=1.0, score_rendered=True) as server:
        teacher = make_teacher(server, tmp_path)
        labels = label(teacher, queries)
        teacher.close()
    oracle = oracle_labels(queries)
    decided = oracle != 0.5
    np.testing.assert_array_equal(labels[decided], 1 - oracle[decided])


def test_malformed_replies_are_unsure_and_skipped(reacher_pool, tmp_path):
    queries = queries_from(reacher_pool, 6)
    with RecordingMockVLM(malformed=1.0, score_rendered=True) as server:
        teacher = make_teacher(server, tmp_path, price_per_1k_tokens=0.5)
        labels = label(teacher, queries)
        stats = teacher.stats()
        teacher.close()
    assert np.isnan(labels).all()
    assert stats["vlm_unsure_fraction"] == 1.0 and stats["vlm_requests"] == 12
    assert stats["vlm_cost"] == pytest.approx(stats["vlm_tokens"] / 1000 * 0.5)


def test_identical_images_are_skipped_without_a_request(reacher_pool, vlm, tmp_path):
    queries = queries_from(reacher_pool, 5)
    same = Queries(queries.first, queries.first)
    teacher = make_teacher(vlm, tmp_path)
    teacher.submit(same)
    data = wait_all(teacher)
    stats = teacher.stats()
    teacher.close()
    assert len(data) == 5 and np.isnan(data.labels).all()
    assert (data.annotator == "vlm").all()
    assert vlm.requests == 0 and stats["vlm_identical"] == 5


def test_rerun_is_answered_from_the_cache(reacher_pool, vlm, tmp_path):
    queries = queries_from(reacher_pool, 8)
    first = make_teacher(vlm, tmp_path)
    labels = label(first, queries)
    # committed per answer: another connection sees every answer before the teacher closes
    rows = sqlite3.connect(tmp_path / "vlm.sqlite").execute("SELECT COUNT(*) FROM answers")
    assert rows.fetchone()[0] == 16
    first.close()
    assert vlm.requests == 16
    vlm.reset_counts()
    again = make_teacher(vlm, tmp_path)
    labels_again = label(again, queries)
    stats = again.stats()
    again.close()
    assert vlm.requests == 0
    np.testing.assert_array_equal(labels, labels_again)
    assert stats["vlm_cache_hits"] == 16 and stats["vlm_cache_hit_rate"] == 1.0
    other_goal = make_teacher(vlm, tmp_path, goal="a different goal")  # other prompts: asked
    label(other_goal, queries[:2])
    other_goal.close()
    assert vlm.requests == 4


# -- retries, timeouts, cap, rate ----------------------------------------------------------------


def test_backoff_on_429_then_success(reacher_pool, vlm, tmp_path):
    queries = queries_from(reacher_pool, 1)
    teacher = make_teacher(
        vlm, tmp_path, backoff_s=0.05, max_retries=5, rng=np.random.default_rng(0)
    )
    vlm.fail_next(3, status=429)
    t0 = time.monotonic()
    labels = label(teacher, queries)
    spent = time.monotonic() - t0
    stats = teacher.stats()
    teacher.close()
    assert not np.isnan(labels).any()
    assert vlm.errors_sent == 3 and vlm.requests == 5  # 3 refused, then both stages
    assert stats["vlm_retries"] == 3 and stats["vlm_failed"] == 0
    assert spent >= 0.05 + 0.1 + 0.2  # exponential: 0.05, 0.1, 0.2 s (plus jitter)


def test_retry_after_header_is_honoured(reacher_pool, vlm, tmp_path):
    queries = queries_from(reacher_pool, 1)
    teacher = make_teacher(vlm, tmp_path, backoff_s=0.01)
    vlm.fail_next(1, status=503, retry_after=0.4)
    t0 = time.monotonic()
    labels = label(teacher, queries)
    spent = time.monotonic() - t0
    teacher.close()
    assert not np.isnan(labels).any() and spent >= 0.4


def test_give_up_after_max_retries_skips_and_counts(reacher_pool, vlm, tmp_path):
    queries = queries_from(reacher_pool, 3)
    teacher = make_teacher(vlm, tmp_path, max_retries=2, max_concurrency=1)
    vlm.fail_next(3 * 3, status=500)  # every attempt of the three pairs' first stage
    teacher.submit(queries)
    data = wait_all(teacher)
    stats = teacher.stats()
    assert len(data) == 3 and np.isnan(data.labels).all()
    assert stats["vlm_failed"] == 3 and stats["vlm_retries"] == 6 and vlm.requests == 9
    # the teacher still works afterwards, and failures were not cached
    labels = label(teacher, queries)
    teacher.close()
    assert not np.isnan(labels).any() and vlm.requests == 9 + 6


def test_timeouts_are_retried_then_given_up(reacher_pool, tmp_path):
    queries = queries_from(reacher_pool, 1)
    with RecordingMockVLM(latency_s=0.6, score_rendered=True) as server:
        teacher = make_teacher(server, tmp_path, timeout_s=0.15, max_retries=1)
        labels = label(teacher, queries)
        stats = teacher.stats()
        teacher.close()
    assert np.isnan(labels).all() and stats["vlm_failed"] == 1 and stats["vlm_retries"] == 1


def test_non_retryable_error_is_not_retried(reacher_pool, vlm, tmp_path):
    queries = queries_from(reacher_pool, 2)
    teacher = make_teacher(vlm, tmp_path, max_retries=5, max_concurrency=1)
    vlm.fail_next(1, status=400)
    labels = label(teacher, queries)
    stats = teacher.stats()
    teacher.close()
    assert np.isnan(labels).sum() == 1 and stats["vlm_retries"] == 0 and stats["vlm_failed"] == 1


def test_concurrency_cap_is_never_exceeded(reacher_pool, tmp_path):
    queries = queries_from(reacher_pool, 12)
    with RecordingMockVLM(latency_s=0.1, score_rendered=True) as server:
        teacher = make_teacher(server, tmp_path, max_concurrency=3)
        label(teacher, queries)
        teacher.close()
    assert server.requests == 24
    assert server.max_in_flight == 3  # reached, never exceeded


def test_rate_limit_spaces_requests(reacher_pool, vlm, tmp_path):
    queries = queries_from(reacher_pool, 5)
    teacher = make_teacher(vlm, tmp_path, requests_per_second=20.0)
    t0 = time.monotonic()
    label(teacher, queries)
    spent = time.monotonic() - t0
    teacher.close()
    assert vlm.requests == 10 and spent >= 9 / 20


# -- asynchronous answers ------------------------------------------------------------------------


def test_submit_returns_at_once_and_late_answers_come_through_collect(reacher_pool, tmp_path):
    first, second = queries_from(reacher_pool, 4, seed=2), queries_from(reacher_pool, 4, seed=3)
    with RecordingMockVLM(latency_s=0.3, score_rendered=True) as server:
        teacher = make_teacher(server, tmp_path)
        t0 = time.monotonic()
        teacher.submit(first)
        assert time.monotonic() - t0 < 0.2
        assert teacher.collect() is None  # nothing answered yet, and collect never waits
        assert teacher.outstanding() == 4
        t0 = time.monotonic()  # a policy that never waits returns at once, timed out
        assert wait_for(teacher, WaitPolicy(min_labels=1, timeout_s=0)) == (None, True)
        assert time.monotonic() - t0 < 0.5  # a pair takes 0.6 s
        teacher.submit(second)
        assert teacher.outstanding() == 8
        got = wait_all(teacher)
        teacher.close()
    assert len(got) == 8
    labels = by_id(got)
    for q in (first, second):
        oracle = oracle_labels(q)
        for qid, o in zip(q.query_id.tolist(), oracle.tolist(), strict=True):
            if o != 0.5:
                assert labels[qid] == o


def test_a_wait_for_min_labels_returns_once_they_exist(reacher_pool, tmp_path):
    queries = queries_from(reacher_pool, 4)
    with RecordingMockVLM(latency_s=0.1, score_rendered=True) as server:
        teacher = make_teacher(server, tmp_path, max_concurrency=1)
        teacher.submit(queries)
        policy = WaitPolicy(min_labels=2, timeout_s=30, poll_s=0.02)
        got, timed_out = wait_for(teacher, policy)  # blocks until two usable labels exist
        assert not timed_out and got is not None and len(got.trainable) >= 2
        assert teacher.pairs_done < 4  # ...and no longer: the rest arrive later
        assert teacher.outstanding() == 4 - len(got)
        # labels the run already has count: with two in hand, a round does not wait (a wait
        # would sleep poll_s at least)
        t0 = time.monotonic()
        slow_poll = WaitPolicy(min_labels=2, timeout_s=30, poll_s=2.0)
        more, timed_out = wait_for(teacher, slow_poll, had=len(got.trainable))
        assert not timed_out and time.monotonic() - t0 < 1.0
        rest = wait_all(teacher)
        teacher.close()
    assert len(got) + (0 if more is None else len(more)) + len(rest) == 4


def test_unanswered_pairs_are_skips_with_a_warning_and_arrive_later(reacher_pool, tmp_path):
    queries = queries_from(reacher_pool, 2)
    with RecordingMockVLM(latency_s=0.8, score_rendered=True) as server:
        teacher = make_teacher(server, tmp_path)
        t0 = time.monotonic()
        with pytest.warns(RuntimeWarning, match="2 of 2 queries unanswered") as caught:
            labels = ask(teacher, queries, WaitPolicy(timeout_s=0.2, poll_s=0.02)).labels
        assert time.monotonic() - t0 < 1.2  # gave up after the policy's time (a pair: 1.6 s)
        assert np.isnan(labels).all() and len(labels) == 2
        assert server.base_url in str(caught[0].message)  # where answers were expected
        late = wait_all(teacher)  # the answers still come, through collect
        teacher.close()
    assert sorted(late.queries.query_id.tolist()) == sorted(queries.query_id.tolist())
    oracle = oracle_labels(queries)
    decided = oracle != 0.5
    got = np.array([by_id(late)[q] for q in queries.query_id.tolist()])
    np.testing.assert_array_equal(got[decided], oracle[decided])


# -- the start-up probe --------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _probe_error(**kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        VLMTeacher(goal=GOAL, probe_timeout_s=5, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_probe_failures_are_one_config_error(monkeypatch):
    port = _closed_port()
    message = _probe_error(model="m", base_url=f"http://127.0.0.1:{port}/v1", api_key_env=None)
    assert "cannot reach" in message and str(port) in message
    with RecordingMockVLM(api_key="right-key") as server:
        monkeypatch.setenv("PBRL_TEST_VLM_KEY", "wrong-key")
        message = _probe_error(
            model=server.model, base_url=server.base_url, api_key_env="PBRL_TEST_VLM_KEY"
        )
        assert "401" in message and "key" in message
        monkeypatch.setenv("PBRL_TEST_VLM_KEY", "right-key")
        message = _probe_error(
            model="no-such-model", base_url=server.base_url, api_key_env="PBRL_TEST_VLM_KEY"
        )
        assert "no-such-model" in message and server.model in message
        VLMTeacher(  # the right key and model pass
            model=server.model, base_url=server.base_url, goal=GOAL, api_key_env="PBRL_TEST_VLM_KEY"
        ).close()
    monkeypatch.delenv("PBRL_TEST_VLM_UNSET", raising=False)
    message = _probe_error(model="m", api_key_env="PBRL_TEST_VLM_UNSET")
    assert "PBRL_TEST_VLM_UNSET" in message and "not set" in message


def run_train(argv: list[str], monkeypatch) -> None:
    """``python -m pbrl.train ARGV``, in this process (a mock server here is reachable and its
    ``score_rendered`` sees the teacher's images)."""
    import runpy

    monkeypatch.setattr(sys, "argv", ["pbrl.train", *argv])
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        with warnings.catch_warnings():  # runpy: pbrl.train is imported already (harmless)
            warnings.filterwarnings("ignore", "'pbrl.train' found in sys.modules", RuntimeWarning)
            runpy.run_module("pbrl.train", run_name="__main__", alter_sys=True)
    finally:  # Hydra configured logging for the run (a file in its run dir): undo it
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(level)


def test_train_reports_an_unreachable_endpoint_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    port = _closed_port()
    argv = ["+exp=quickstart", "teacher=vlm", f"teacher.base_url=http://127.0.0.1:{port}/v1"]
    with pytest.raises(SystemExit) as info:
        run_train([*argv, "teacher.api_key_env=null", f"hydra.run.dir={tmp_path}/run"], monkeypatch)
    assert info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("pbrl.train: error: cannot reach")
    assert not (tmp_path / "run").exists()  # a run that never started leaves nothing behind


# -- frames, environments, config ----------------------------------------------------------------


@pytest.mark.parametrize("frames", ["k", "strip"])
def test_frame_modes(reacher_pool, vlm, tmp_path, frames):
    queries = queries_from(reacher_pool, 4)
    teacher = make_teacher(vlm, tmp_path, frames=frames, num_frames=3, size=48)
    labels = label(teacher, queries)
    teacher.close()
    oracle = oracle_labels(queries)
    np.testing.assert_array_equal(labels[oracle != 0.5], oracle[oracle != 0.5])
    import base64

    body = next(b for b in vlm.bodies if not isinstance(b["messages"][0]["content"], str))
    urls = [p["image_url"]["url"] for p in body["messages"][0]["content"] if "image_url" in p]
    sizes = {Image.open(io.BytesIO(base64.b64decode(u.split(",")[1]))).size for u in urls}
    if frames == "k":
        assert len(urls) == 6 and sizes == {(48, 48)}
    else:
        assert len(urls) == 2 and sizes == {(3 * 48 + 2 * 4, 48)}


def test_camera_from_the_env_group(reacher_pool, vlm, tmp_path):
    queries = queries_from(reacher_pool, 2)
    top_down = {"distance": 0.55, "elevation": -90, "azimuth": 90, "lookat": [0, 0, 0]}
    above_env = EnvSpec("Reacher-v5", camera=top_down)
    default, above = make_teacher(vlm, tmp_path), make_teacher(vlm, tmp_path, env=above_env)
    assert above.camera == above_env.camera and default.camera == {}
    assert default.segment_images(queries.first) != above.segment_images(queries.first)
    default.close()
    above.close()
    with pytest.raises(ConfigError, match="env.camera"):
        make_teacher(vlm, tmp_path, env=EnvSpec("Reacher-v5", camera={"zoom": 2.0}))


def test_classic_control_is_drawn_from_observations(vlm, tmp_path):
    pool = random_rollout_pool("pbrl/Pendulum-v1", 200)
    queries = queries_from(pool, 6)
    images = render_segment_images(queries.first, ImageSpec(size=64))
    assert len(images) == 6 and all(len(i) == 1 for i in images)
    teacher = make_teacher(vlm, tmp_path, env=EnvSpec("pbrl/Pendulum-v1"), goal="upright")
    labels = label(teacher, queries)
    teacher.close()
    oracle = oracle_labels(queries)
    np.testing.assert_array_equal(labels[oracle != 0.5], oracle[oracle != 0.5])


def test_config_has_a_goal_for_every_configured_env():
    goals = yaml.safe_load((CONF_DIR / "teacher" / "vlm.yaml").read_text())["goals"]
    for path in (CONF_DIR / "env").glob("*.yaml"):
        env_id = yaml.safe_load(path.read_text())["id"]
        assert len(goals.get(env_id) or "") > 10, f"conf/teacher/vlm.yaml: no goal for {env_id}"
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=["env=pendulum", "teacher=vlm", "teacher.probe=false",
                       "teacher.api_key_env=null"],
        )  # fmt: skip
    teacher = build_teacher(cfg, np.random.default_rng(0))  # the run's env: its goal
    assert teacher.goal == goals["pbrl/Pendulum-v1"] and teacher.cache_path is not None
    assert teacher.env_id == "pbrl/Pendulum-v1" and "env_id" not in cfg.teacher
    teacher.close()
    with pytest.raises(ConfigError, match="teacher.goal"):  # an env without a goal
        VLMTeacher(model="m", goals=goals, env=EnvSpec("Swimmer-v5"), probe=False, api_key_env=None)


def test_score_rendered_scores_this_process_renders_only_while_the_server_runs(reacher_pool):
    """tests/support's RecordingMockVLM(score_rendered=True) wraps SegmentImager.images while
    it runs and restores it when it stops: the package carries no observer hook."""
    queries = queries_from(reacher_pool, 2)
    spec = ImageSpec(size=48)
    original = SegmentImager.images
    with RecordingMockVLM(score_rendered=True) as server:
        assert SegmentImager.images is not original
        images = render_segment_images(queries.first, spec)
        for row, shown in enumerate(images):
            score = float(queries.first.returns()[row])
            assert all(server._scores[hashlib.sha256(b).hexdigest()] == score for b in shown)
    assert SegmentImager.images is original
    with RecordingMockVLM() as plain:  # score_rendered off: nothing is registered
        render_segment_images(queries.second, spec)
        assert not plain._scores and SegmentImager.images is original


# -- the mock command (trying teacher=vlm without a key) ------------------------------------------


def test_the_mock_command_serves_until_stopped_and_prints_a_train_line(reacher_pool, tmp_path):
    """``python -m pbrl.teachers.vlm.mock`` (docs/vlm.md): the line it prints names an endpoint
    that answers, and its overrides build a teacher there whose labels are decided (the
    command's mock ranks images without an oracle, never "no difference")."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pbrl.teachers.vlm.mock", "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout or []], daemon=True).start()
    seen: list[str] = []
    try:
        while not seen or "python -m pbrl.train" not in seen[-1]:
            try:
                seen.append(lines.get(timeout=120))
            except queue.Empty:
                pytest.fail(f"no train line within 120 s; printed: {seen}")
        argv = seen[-1].split()
        assert argv[:4] == ["python", "-m", "pbrl.train", "+exp=vlm_pebble_reacher"]
        settings = dict(a.split("=", 1) for a in argv[4:])
        assert settings["teacher.api_key_env"] == "null"
        base_url = settings["teacher.base_url"]
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
        with urllib.request.urlopen(f"{base_url}/models", timeout=30) as answer:
            served = [m["id"] for m in json.load(answer)["data"]]
        assert served == [settings["teacher.model"]]

        overrides = [*argv[3:], f"teacher.cache={tmp_path / 'vlm.sqlite'}", "teacher.size=64"]
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=overrides)
        teacher = build_teacher(cfg, np.random.default_rng(0))  # probes the mock
        try:
            labels = label(teacher, queries_from(reacher_pool, 6))
        finally:
            teacher.close()
        assert set(labels.tolist()) <= {0.0, 1.0}, labels
    finally:
        proc.terminate()  # SIGTERM stops it as Ctrl-C does
        assert proc.wait(timeout=60) == 0
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{base_url}/models", timeout=5)


def test_the_mock_command_names_a_busy_port(capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert mock_main(["--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


# -- online --------------------------------------------------------------------------------------


# conftest's tiny online budget, smaller: feedback rounds at steps 100 and 200, few gradient
# steps (this tests the wiring)
TINY_ONLINE = with_overrides(
    TINY,
    [
        "total_timesteps=250",
        "max_feedback=8",
        "video.enabled=false",
        "algo.unsupervised_steps=100",
        "algo.kwargs.learning_starts=200",
        "algo.kwargs.buffer_size=2000",
        "algo.kwargs.batch_size=32",
    ],
)


def test_tiny_online_run_with_the_vlm_teacher(vlm, tmp_path, monkeypatch):
    """python -m pbrl.train +exp=quickstart teacher=vlm teacher.base_url=<mock> (tiny budget)."""
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    run_train(
        [
            "+exp=quickstart",
            *TINY_ONLINE,
            "teacher=vlm",
            f"teacher.base_url={vlm.base_url}",
            f"teacher.model={vlm.model}",
            "teacher.api_key_env=null",
            f"teacher.cache={tmp_path}/vlm.sqlite",
            "teacher.size=64",
            f"hydra.run.dir={run}",
        ],
        monkeypatch,
    )
    summary = json.loads((run / "summary.json").read_text())
    assert summary["num_queries"] == 8 and summary["num_labels"] > 0
    assert summary["teacher"]["_target_"] == "pbrl.teachers.vlm.VLMTeacher"
    assert summary["teacher"]["goal"].startswith("the tip of the two-link robot arm")
    assert 0 < summary["teacher"]["totals"]["vlm_requests"] <= vlm.requests  # more may follow
    assert vlm.model_requests == 1  # one probe: a run builds its teacher once
    # each label took both stages; answers still in flight when the run ended are dropped
    assert vlm.stage_requests[1] >= vlm.stage_requests[2] >= summary["num_labels"]
    assert "HTTP Request" not in (run / "train.log").read_text()  # no line per request
    text = "".join(p.read_text() for p in (run / "tb").rglob("*.csv"))
    assert "preferences/vlm_requests" in text and "preferences/vlm_accuracy" in text


@pytest.mark.slow
def test_pebble_learns_from_noisy_vlm_labels(tmp_path, monkeypatch):
    """The quickstart (PEBBLE on Reacher-v5, 300 queries) with the mock VLM flipping 10% of its
    verdicts, labels arriving asynchronously: the state-based reward model still learns, and
    the policy beats a random one clearly (at least half of the random policy's cost
    recovered), as the oracle-labeled quickstart must."""
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    with RecordingMockVLM(noise=0.1, score_rendered=True, seed=1) as server:
        run_train(
            [
                "+exp=quickstart",
                "teacher=vlm",
                f"teacher.base_url={server.base_url}",
                f"teacher.model={server.model}",
                "teacher.api_key_env=null",
                f"teacher.cache={tmp_path}/vlm.sqlite",
                "teacher.size=64",
                "teacher.requests_per_second=null",
                "video.enabled=false",
                "progress_bar=false",
                f"hydra.run.dir={run}",
            ],
            monkeypatch,
        )
    summary = json.loads((run / "summary.json").read_text())
    totals = summary["teacher"]["totals"]
    assert 0.82 <= totals["vlm_accuracy"] <= 0.97  # 10% flipped, ~300 labels
    assert summary["num_labels"] >= 250
    random = summary["random_true_return_mean"]
    assert summary["eval_true_return_mean"] > random + 0.5 * abs(random)
    assert summary["reward_model_test_accuracy"] > 0.8
